"""The fused C++ train-mode kernels (qfx/nn/_fused_quant.cpp) against the tensor-op path they replace.

Every test runs the same computation twice, once on the fused path and once inside ``tensor_op_path()`` (the code
that ran before the fused kernels existed), and requires identical values: forward outputs, input gradients,
binary-point gradients, BatchNorm running statistics, and whole training runs (parameters after several Adam steps).
"""
from __future__ import annotations

import copy
import math
import shutil
import weakref

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES
from qfx.nn import QFXConfig, _fused, quantize_model
from qfx.nn.layers import QBatchNorm1d, QBatchNorm2d, QLinear, QReLU
from qfx.nn.quant import FixedQuant, fake_quant, fused_status, link_chains, quantize_pair, tensor_op_path


@pytest.fixture(scope="module", autouse=True)
def ext():
    if shutil.which("g++") is None:
        pytest.skip("g++ not found: the fused kernels cannot be built (train mode uses the tensor-op path)")
    mod = _fused.wait(timeout=1200)
    assert mod is not None, _fused.status()  # g++ is there: a failed build is a bug
    assert fused_status() == "fused C++ kernels"
    return mod


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    """Equal values (NaN equal to NaN; the sign of a zero is not compared)."""
    if a is None or b is None:
        return a is None and b is None
    return (a.shape == b.shape and torch.equal(a.isnan(), b.isnan())
            and torch.equal(a.nan_to_num(0.5), b.nan_to_num(0.5)))


def run_quant(q: FixedQuant, x: torch.Tensor, g: torch.Tensor, fused: bool):
    q.zero_grad(set_to_none=True)
    xr = x.clone().requires_grad_(True)
    if fused:
        y = q(xr)
    else:
        with tensor_op_path():
            y = q(xr)
    y.backward(g)
    return y.detach(), xr.grad, q.int_bits_param.grad, y.grad_fn


SPECIAL = [0.0, -0.0, 0.5, -0.5, 1.5, -2.5, float("inf"), float("-inf"), float("nan"), 3e38, -3e38, 1e-40, 2.0**-149]


@st.composite
def quant_case(draw):
    width = draw(st.integers(1, 24))
    signed = draw(st.booleans())
    rounding = draw(st.sampled_from(ROUNDING_MODES))
    overflow = draw(st.sampled_from(OVERFLOW_MODES))
    khot = draw(st.sampled_from([None, None, 1, 2, 3]))
    shape = draw(st.sampled_from([(5,), (3, 4), (4, 3, 2, 2), (2, 3, 5), (6, 1), (64, 16, 8, 8)]))
    per_channel = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    scale_exp = draw(st.integers(-14, 14))
    ties = draw(st.booleans())
    specials = draw(st.booleans())
    ib_centre = draw(st.floats(-12, 12))
    return width, signed, rounding, overflow, khot, shape, per_channel, seed, scale_exp, ties, specials, ib_centre


@SETTINGS
@given(quant_case())
def test_fixedquant_fused_equals_tensor_op_path(case):
    width, signed, rounding, overflow, khot, shape, per_channel, seed, scale_exp, ties, specials, ib = case
    gen = torch.Generator().manual_seed(seed)
    q = FixedQuant(width, None, signed, rounding, overflow, per_channel_axis=0 if per_channel else None,
                   num_channels=shape[0] if per_channel else None, khot=khot)
    with torch.no_grad():  # binary points near and off the integers (0.5 ties round half to even)
        q.int_bits_param.copy_(torch.round((torch.randn(q.int_bits_param.shape, generator=gen) * 4 + ib) * 2) / 2)
    x = torch.randn(shape, generator=gen) * 2.0**scale_exp
    if ties:  # many values exactly on rounding ties and on the grid
        x = torch.round(x * 2.0**(width - ib + 1)) / 2.0**(width - ib + 1)
    if specials:
        flat = x.view(-1)
        for i, v in enumerate(SPECIAL[: flat.numel()]):
            flat[(i * 7) % flat.numel()] = v
    g = torch.randn(shape, generator=gen)
    yf, gxf, gpf, fn = run_quant(q, x, g, True)
    yt, gxt, gpt, _ = run_quant(q, x, g, False)
    assert fn.name().endswith("::FQ>"), fn.name()  # the fused node really ran
    assert same(yf, yt)
    assert same(gxf, gxt)
    assert same(gpf, gpt)


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from(ROUNDING_MODES), st.sampled_from(OVERFLOW_MODES),
       st.booleans(), st.sampled_from([None, 2]), st.booleans())
def test_pair_fused_equals_tensor_op_path(seed, rounding, overflow, per_channel, khot, grad_b):
    gen = torch.Generator().manual_seed(seed)
    qa = FixedQuant(6, None, True, rounding, overflow, per_channel_axis=0 if per_channel else None,
                    num_channels=4 if per_channel else None, khot=khot)
    qb = FixedQuant(12, None, seed % 2 == 0, "RND", overflow)
    with torch.no_grad():
        qa.int_bits_param.copy_(torch.randn(qa.int_bits_param.shape, generator=gen) * 2)
        qb.int_bits_param.fill_(float(seed % 7) - 3)
    a0, b0 = torch.randn(4, 3, 3, 3, generator=gen), torch.randn(4, generator=gen) * 4
    ga, gb = torch.randn(4, 3, 3, 3, generator=gen), torch.randn(4, generator=gen)

    def go(fused: bool):
        a, b = a0.clone().requires_grad_(), b0.clone().requires_grad_(grad_b)
        qa.zero_grad(set_to_none=True)
        qb.zero_grad(set_to_none=True)
        if fused:
            ya, yb = quantize_pair(qa, a, qb, b)
        else:
            with tensor_op_path():
                ya, yb = quantize_pair(qa, a, qb, b)
        torch.autograd.backward([ya, yb], [ga, gb])
        return [ya.detach(), yb.detach(), a.grad, b.grad, qa.int_bits_param.grad, qb.int_bits_param.grad]

    for u, v in zip(go(True), go(False)):
        assert same(u, v)


def test_pair_with_unused_output_and_functional_fake_quant():
    qa, qb = FixedQuant(8, 1), FixedQuant(8, 3)
    a, b = torch.randn(5, 7, requires_grad=True), torch.randn(7, requires_grad=True)
    ya, yb = quantize_pair(qa, a, qb, b)
    ya.sum().backward()  # yb unused: its gradient counts as zeros
    assert same(b.grad, torch.zeros(7)) or b.grad is None
    p = torch.tensor([2.0, 3.0, -1.0], requires_grad=True)
    x = torch.randn(3, 5, requires_grad=True)
    y1 = fake_quant(x, p, 6, rounding="RND_INF", overflow="SAT_SYM", shape=(-1, 1))
    y1.sum().backward()
    g1 = (x.grad.clone(), p.grad.clone())
    x.grad = p.grad = None
    with tensor_op_path():
        y2 = fake_quant(x, p, 6, rounding="RND_INF", overflow="SAT_SYM", shape=(-1, 1))
    y2.sum().backward()
    assert same(y1, y2) and same(g1[0], x.grad) and same(g1[1], p.grad)


def test_fallbacks_compute_the_same():
    q = FixedQuant(8, 2)
    x = torch.randn(6, 4).t()  # not contiguous: tensor-op path
    y = q(x)
    with tensor_op_path():
        assert same(y, q(x))
    xd = torch.randn(5, dtype=torch.float64)  # float64: tensor-op path
    assert q(xd).dtype == torch.float64


@SETTINGS
@given(st.integers(0, 2**31 - 1), st.sampled_from(ROUNDING_MODES), st.sampled_from(["SAT", "SAT_SYM", "SAT_ZERO"]),
       st.integers(2, 16), st.integers(2, 12), st.booleans())
def test_chain_equals_two_quantizers(seed, rounding, overflow, w1, w2, use_y1):
    from qfx.nn.quant import quantize_chain, _take_chained

    gen = torch.Generator().manual_seed(seed)
    q1 = FixedQuant(w1, None, True, rounding, overflow)
    q2 = FixedQuant(w2, None, False, rounding, "SAT")
    with torch.no_grad():
        q1.int_bits_param.fill_(float(seed % 5))
        q2.int_bits_param.fill_(float(seed % 3))
    x0 = torch.randn(8, 33, generator=gen) * 4
    g2, g1 = torch.randn(8, 33, generator=gen), torch.randn(8, 33, generator=gen)

    def go(fused: bool):
        x = x0.clone().requires_grad_()
        q1.zero_grad(set_to_none=True)
        q2.zero_grad(set_to_none=True)
        if fused:
            y1 = quantize_chain(q1, x, q2)
            y2 = q2(y1)  # takes the chained result
        else:
            with tensor_op_path():
                y1 = q1(x)
                y2 = q2(y1)
        outs, grads = [y2], [g2]
        if use_y1:
            outs.append(y1)
            grads.append(g1)
        torch.autograd.backward(outs, grads)
        return [y1.detach(), y2.detach(), x.grad, q1.int_bits_param.grad, q2.int_bits_param.grad]

    for u, v in zip(go(True), go(False)):
        assert same(u, v)
    assert _take_chained(q2, x0) is None


def test_chain_only_for_the_same_unmodified_tensor():
    from qfx.nn.quant import quantize_chain

    q1, q2 = FixedQuant(8, 2), FixedQuant(8, 1, signed=False)
    x = torch.randn(4, 9)
    y1 = quantize_chain(q1, x, q2)
    other = y1.clone()
    with tensor_op_path():
        expect = q2(other)
    assert same(q2(other), expect)  # a different tensor: computed, not the stashed one
    y1 = quantize_chain(q1, x, q2)
    y1.mul_(2)  # modified in place after the chain ran
    with tensor_op_path():
        expect = q2(y1)
    assert same(q2(y1), expect)


def bn_case(ndim: int, per_channel: bool, out: bool, chain: bool, momentum, seed: int):
    gen = torch.Generator().manual_seed(seed)
    c = 5
    shape = {2: (16, c), 3: (6, c, 7), 4: (4, c, 3, 5)}[ndim]
    cls = QBatchNorm2d if ndim == 4 else QBatchNorm1d
    bn = cls(c, momentum=momentum, per_channel=per_channel, out_width=8 if out else None)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=gen))
        bn.bias.copy_(torch.randn(c, generator=gen))
        for q in bn.quantizers().values():
            q.int_bits_param.copy_(torch.randint(-1, 4, q.int_bits_param.shape, generator=gen).float())
    relu = QReLU()
    with torch.no_grad():
        relu.out_quant.int_bits_param.fill_(2.0)
    seq = nn.Sequential(bn, relu)
    if chain:
        assert link_chains(seq) == (1 if out else 0)
    x = torch.randn(shape, generator=gen) * 3
    x = torch.round(x * 16) / 16  # like a quantized conv output
    if seed % 3 == 0:
        x = torch.randn(shape, generator=gen) * 3  # arbitrary floats: products not exact
    g = torch.randn(shape, generator=gen)
    return seq, x, g


@pytest.mark.parametrize("ndim", [2, 3, 4])
@pytest.mark.parametrize("per_channel", [True, False])
@pytest.mark.parametrize("out,chain", [(True, True), (True, False), (False, False)])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_train_fused_equals_tensor_op_path(ndim, per_channel, out, chain, momentum):
    for seed in range(3):
        seq, x0, g = bn_case(ndim, per_channel, out, chain, momentum, seed)
        seq2 = copy.deepcopy(seq)
        res = []
        for model, fused in ((seq, True), (seq2, False)):
            x = x0.clone().requires_grad_()
            for step in range(2):  # two steps: running statistics and num_batches_tracked move
                model.zero_grad(set_to_none=True)
                x.grad = None
                if fused:
                    y = model(x)
                else:
                    with tensor_op_path():
                        y = model(x)
                y.backward(g)
            if fused:
                assert "BNTrain" in copy.deepcopy(model)[0](x).grad_fn.name()  # the fused node really ran
            grads = {n: p.grad for n, p in model.named_parameters()}
            res.append((y.detach(), x.grad, grads, {k: v.clone() for k, v in model.state_dict().items()}))
        (ya, gxa, pa, sa), (yb, gxb, pb, sb) = res
        assert same(ya, yb)
        assert same(gxa, gxb)
        assert set(pa) == set(pb)
        for n in pa:
            assert same(pa[n], pb[n]), n
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


def test_batchnorm_output_used_twice():
    """BN output read by the linked ReLU and by a second consumer: gradients still add up as before."""
    seq, x0, g = bn_case(4, True, True, True, 0.1, 1)
    seq2 = copy.deepcopy(seq)
    outs = []
    for model, fused in ((seq, True), (seq2, False)):
        x = x0.clone().requires_grad_()
        bn, relu = model[0], model[1]
        ctx = tensor_op_path() if not fused else None
        if ctx:
            ctx.__enter__()
        h = bn(x)
        y = relu(h) * 2 + h
        if ctx:
            ctx.__exit__(None, None, None)
        y.backward(g)
        outs.append([y.detach(), x.grad] + [p.grad for p in model.parameters()])
    for u, v in zip(*outs):
        assert same(u, v)


def test_link_chains_is_not_a_submodule_and_survives_deepcopy():
    m = nn.Sequential(QLinear(4, 3), QReLU(), QLinear(3, 2))
    keys = set(m.state_dict())
    assert link_chains(m) == 1
    assert set(m.state_dict()) == keys
    assert len(list(m.modules())) == len(list(copy.deepcopy(m).modules()))
    m2 = copy.deepcopy(m)
    assert m2[0].__dict__["_qfx_next"] is m2[1]


@pytest.mark.parametrize("kind", ["mlp", "cnn", "rescnn"])
@pytest.mark.parametrize("bits,khot,per_channel", [(8, None, False), (4, 2, True), (3, None, False)])
def test_training_runs_are_bit_identical(kind, bits, khot, per_channel):
    from qfx.data import load_digits_split
    from qfx.models import DigitsCNN, digits_mlp
    from qfx.nn.train import make_optimizer

    xtr, ytr, _, _ = load_digits_split()
    torch.manual_seed(0)
    if kind == "mlp":
        fm = digits_mlp()
    elif kind == "cnn":
        fm = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                           nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64, 10))
    else:
        fm = DigitsCNN(4)
    cfg = QFXConfig(weight_width=bits, bias_width=2 * bits, act_width=bits, bn_width=bits, khot=khot,
                    per_channel=per_channel)
    m0 = quantize_model(fm, cfg, xtr[:256])
    runs = []
    for fused in (True, False):
        m = copy.deepcopy(m0)
        opt = make_optimizer(m, 1e-2, 5e-2)
        lossf = nn.CrossEntropyLoss()
        losses = []
        for i in range(6):
            xb, yb = xtr[i * 64:(i + 1) * 64], ytr[i * 64:(i + 1) * 64]
            opt.zero_grad(set_to_none=True)
            if fused:
                loss = lossf(m(xb), yb)
            else:
                with tensor_op_path():
                    loss = lossf(m(xb), yb)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        runs.append((losses, m.state_dict()))
    (la, sa), (lb, sb) = runs
    assert la == lb
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_status_and_switch(monkeypatch):
    monkeypatch.setenv("QFX_FUSED", "0")
    assert not _fused.enabled()
    monkeypatch.setenv("QFX_FUSED", "1")
    assert _fused.enabled()
    with tensor_op_path():
        assert "tensor-op" in fused_status()
    assert fused_status() == "fused C++ kernels"


def test_weakref_and_math_sanity():
    # guards for helpers the fused path relies on
    t = torch.zeros(1)
    assert weakref.ref(t)() is t
    assert math.isclose(float(torch.tensor(math.log(2.0), dtype=torch.float32)), 0.6931471824645996)


def test_one_adam_group_when_hyperparameters_match():
    """make_optimizer merges the binary points into the main group when lr and weight decay coincide: the same
    updates as two groups with equal settings."""
    from qfx.models import digits_mlp
    from qfx.nn.train import make_optimizer

    torch.manual_seed(0)
    m0 = quantize_model(digits_mlp(), QFXConfig(weight_width=6, act_width=6), torch.rand(64, 64))
    ma, mb = copy.deepcopy(m0), copy.deepcopy(m0)
    oa = make_optimizer(ma, 3e-3)
    assert len(oa.param_groups) == 1
    ib = [m.int_bits_param for m in mb.modules() if isinstance(m, FixedQuant) and m.int_bits_param.requires_grad]
    rest = [p for p in mb.parameters() if all(p is not q for q in ib)]
    ob = torch.optim.Adam([{"params": rest, "weight_decay": 0.0}, {"params": ib, "weight_decay": 0.0}], lr=3e-3,
                          fused=True)
    assert len(make_optimizer(mb, 3e-3, 1e-2).param_groups) == 2
    x, y = torch.rand(64, 64), torch.randint(0, 10, (64,))
    for _ in range(4):
        for m, o in ((ma, oa), (mb, ob)):
            o.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            o.step()
    for (k, a), b in zip(ma.state_dict().items(), mb.state_dict().values()):
        assert torch.equal(a, b), k


def test_failed_build_falls_back_and_is_remembered(tmp_path):
    """A compiler that fails: train mode keeps the tensor-op path (one warning, a status line naming the log), and
    the failure is cached so the next process does not compile again."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, CXX="/bin/false", QFX_CACHE_DIR=str(tmp_path), QFX_FUSED="1")
    code = ("import warnings; warnings.simplefilter('ignore')\n"
            "import torch; from qfx.nn import _fused; from qfx.nn.quant import FixedQuant\n"
            "print(_fused.wait(), '|', _fused.status())\n"
            "print(FixedQuant(8, 2)(torch.tensor([0.3])).tolist())\n")  # step 2**-6: 0.3 -> 19/64
    for attempt in range(2):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        first, second = out.stdout.splitlines()[:2]
        assert first.startswith("None | tensor-op path (fused kernels unavailable") and "build.log" in first
        assert ("to retry" in first) == (attempt == 1)
        assert second == "[0.296875]"  # 19/64


# ------------------------------------------------------------------ conv -> BatchNorm: one node (conv_bn_train)
def conv_bn_case(rounding: str, overflow: str, relu: bool, momentum, seed: int):
    from qfx.nn.layers import QConv2d

    gen = torch.Generator().manual_seed(seed)
    conv = QConv2d(3, 5, 3, padding=1, bias=seed % 2 == 0, weight_width=6, out_width=7, rounding=rounding,
                   overflow=overflow)
    bn = QBatchNorm2d(5, momentum=momentum, rounding=rounding, overflow=overflow, per_channel=seed % 3 != 0)
    mods = [conv, bn] + ([QReLU()] if relu else [])
    seq = nn.Sequential(*mods)
    with torch.no_grad():
        for q in [m for m in seq.modules() if isinstance(m, FixedQuant)]:
            q.int_bits_param.copy_(torch.randint(-1, 3, q.int_bits_param.shape, generator=gen).float())
        conv.out_quant.int_bits_param.fill_(float(seed % 3))  # some outputs saturate / wrap
        bn.weight.copy_(torch.randn(5, generator=gen))
        bn.bias.copy_(torch.randn(5, generator=gen))
    assert link_chains(copy.deepcopy(seq)) == (1 if relu else 0)  # opt-in
    assert link_chains(seq, conv_bn=True) == (2 if relu else 1)
    assert seq[0].__dict__["_qfx_bn"] is seq[1]
    x = torch.round(torch.randn(4, 3, 6, 7, generator=gen) * 32) / 16
    g = torch.randn(4, 5, 6, 7, generator=gen)
    return seq, x, g


@pytest.mark.parametrize("mode", range(len(ROUNDING_MODES)))
@pytest.mark.parametrize("relu,momentum", [(True, 0.1), (False, None)])
def test_conv_bn_one_node_equals_tensor_op_path(mode, relu, momentum):
    """Conv output quantizer folded into the BatchNorm node: forward values, every gradient (input, weights, binary
    points of conv, BN and ReLU) and the running statistics equal the two-node tensor-op path bit for bit, over
    every rounding mode and every overflow mode."""
    rounding = ROUNDING_MODES[mode]
    for seed in range(3):
        overflow = OVERFLOW_MODES[(mode + seed) % len(OVERFLOW_MODES)]
        seq, x0, g = conv_bn_case(rounding, overflow, relu, momentum, seed)
        seq2 = copy.deepcopy(seq)
        res = []
        for model, fused in ((seq, True), (seq2, False)):
            x = x0.clone().requires_grad_()
            for _ in range(3):  # running statistics and num_batches_tracked move
                model.zero_grad(set_to_none=True)
                x.grad = None
                if fused:
                    y = model(x)
                else:
                    with tensor_op_path():
                        y = model(x)
                y.backward(g)
            grads = {n: p.grad for n, p in model.named_parameters()}
            res.append((y.detach(), x.grad, grads, {k: v.clone() for k, v in model.state_dict().items()}))
        (ya, gxa, pa, sa), (yb, gxb, pb, sb) = res
        assert same(ya, yb) and same(gxa, gxb)
        assert set(pa) == set(pb)
        for n in pa:
            assert same(pa[n], pb[n]), (n, overflow, seed)
        assert pa["0.out_quant.int_bits_param"] is not None
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k


def test_conv_bn_one_node_really_runs_and_conv_alone_changes_nothing():
    seq, x, g = conv_bn_case("RND", "SAT", True, 0.1, 1)
    conv, bn = seq[0], seq[1]
    state = {k: v.clone() for k, v in bn.state_dict().items()}
    h = conv(x)  # the conv on its own: its quantized output, the BN's running statistics untouched
    assert "BNTrain" in h.grad_fn.name()
    for k, v in bn.state_dict().items():
        assert torch.equal(v, state[k]), k
    with tensor_op_path():
        ref = conv(x)
    assert same(h.detach(), ref.detach())
    # the BN called on another tensor does not take the conv's result
    other = h.detach() + 1
    with tensor_op_path():
        want = copy.deepcopy(bn)(other)
    assert same(bn(other).detach(), want.detach())
    assert bn.num_batches_tracked.item() == 1


def test_conv_output_read_twice_gradients_add():
    """The conv's quantized output feeds the BN and a second consumer: its gradients sum before the conv output
    quantizer's backward, as with two fused nodes (the conv unlinked). The tensor-op path is not the reference here:
    there the BN's input gradient is two autograd terms (statistics, apply) that the engine adds to the third in its
    own order, while the fused BN node adds its two first (a last-bit difference, as before this merge)."""
    for seed in range(3):
        seq, x0, g = conv_bn_case("RND_CONV", OVERFLOW_MODES[seed], True, 0.1, seed)
        seq2 = copy.deepcopy(seq)
        del seq2[0].__dict__["_qfx_bn"]
        outs = []
        for model in (seq, seq2):
            x = x0.clone().requires_grad_()
            h = model[0](x)
            assert ("BNTrain" in h.grad_fn.name()) == (model is seq)
            y = model[2](model[1](h)) * 3 + h
            y.backward(g)
            outs.append([y.detach(), x.grad] + [p.grad for p in model.parameters()]
                        + list(model.state_dict().values()))
        for u, v in zip(*outs):
            assert same(u, v)


def test_pow2_exact_equals_exp2():
    """The powers of two the tensor-op path builds off the CPU (``pow2_exact``) are the CPU's exp2 values."""
    from qfx.nn.quant import pow2_exact

    e = torch.arange(-126, 128, dtype=torch.float32)
    assert torch.equal(pow2_exact(e), torch.exp2(e))
    assert torch.equal(pow2_exact(e.reshape(2, -1)), torch.exp2(e).reshape(2, -1))
    assert pow2_exact(torch.tensor([float("nan")])).isnan().all()
    assert not torch.equal(pow2_exact(e), torch.exp2(e + 1))


@pytest.mark.parametrize("k", [2, 3])
def test_max_pool_fused_equals_aten(k):
    """The fused max pooling (non-overlapping windows) against F.max_pool2d: values (signed zeros included), input
    gradients, on ties (quantized values, ReLU zeros), NaN, -inf windows and sizes that leave a remainder."""
    from qfx.nn.layers import QMaxPool2d

    gen = torch.Generator().manual_seed(k)
    x = torch.round(torch.randn(6, 3, 3 * k + 1, 2 * k + 2, generator=gen) * 2).clamp_min(0) / 2  # many ties
    x[0, 0, 0, 0] = float("nan")
    x[0, 1, :k, :k] = float("-inf")
    x[1, 0, :k, :k] = -0.0
    x[1, 0, 0, 1] = 0.0
    x[2, 2, :k, :k] = torch.tensor([float("nan")] * (k * k)).reshape(k, k)
    g = torch.randn(6, 3, (3 * k + 1) // k, (2 * k + 2) // k, generator=gen)
    g[1, 0, 0, 0] = -0.0
    pool = QMaxPool2d(k)
    res = []
    for fused in (True, False):
        xr = x.clone().requires_grad_()
        if fused:
            y = pool(xr)
            assert "MaxPool" in y.grad_fn.name() and "WithIndices" not in y.grad_fn.name()
        else:
            with tensor_op_path():
                y = pool(xr)
        y.backward(g)
        res.append((y.detach(), xr.grad))
    (ya, ga), (yb, gb) = res
    assert same(ya, yb) and same(ga, gb)
    assert torch.equal(torch.signbit(ya), torch.signbit(yb)) and torch.equal(torch.signbit(ga), torch.signbit(gb))

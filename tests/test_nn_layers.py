"""qfx.nn layers: exact mode vs a direct Python-int/Fraction computation, IR nodes vs exact mode (through the IR
interpreter), and train-mode fake quantization vs exact mode where float32 is exact."""
from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
import torch

import qfx.nn as qn
from qfx.fixed.format import OVERFLOW_MODES, ROUNDING_MODES, FxFormat
from qfx.ir import Graph, TensorSpec, run
from test_nn_ref import code_range, khot_code, quant_code

TWO = Fraction(2)


def _fmt_t(f: FxFormat) -> tuple:
    return (f.width, f.int_bits, f.signed, f.rounding, f.overflow)


def _rand_fmt(rng, wmin=2, wmax=7, signed=None) -> FxFormat:
    w = int(rng.integers(wmin, wmax + 1))
    s = bool(rng.integers(0, 2)) if signed is None else signed
    return FxFormat(w, int(rng.integers(-2, w + 2)), s, "TRN", "WRAP")


def _rand_input(rng, shape, f: FxFormat) -> tuple[np.ndarray, torch.Tensor]:
    codes = rng.integers(f.min_code, f.max_code, size=(3,) + tuple(shape), endpoint=True, dtype=np.int64)
    return codes, torch.from_numpy(f.from_int(codes))


def _frac(a: np.ndarray) -> np.ndarray:
    out = np.empty(a.shape, dtype=object)
    for i, v in np.ndenumerate(a):
        out[i] = Fraction(float(v))
    return out


def _qv(arr: np.ndarray, fmt: tuple, khot: int | None = None) -> np.ndarray:
    out = np.empty(arr.shape, dtype=object)
    w, i = fmt[0], fmt[1]
    lo, hi = code_range(w, fmt[2])
    for idx, v in np.ndenumerate(arr):
        c = quant_code(v, fmt)
        if khot:
            c = khot_code(c, khot, lo, hi)
        out[idx] = Fraction(c) * TWO ** (i - w)
    return out


def _set_ib(q: qn.FixedQuant, rng, lo: int, hi: int) -> None:
    with torch.no_grad():
        q.int_bits_param.copy_(torch.from_numpy(rng.integers(lo, hi + 1, size=q.int_bits_param.shape).astype(np.float32)))


def _weights_q(layer, w: np.ndarray) -> np.ndarray:
    """Reference quantized weights (Fractions), channel by channel, K-hot projected."""
    q = layer.weight_quant
    fmts = q.formats()
    out = np.empty(w.shape, dtype=object)
    for o in range(w.shape[0]):
        f = fmts[o] if q.per_channel else fmts[0]
        out[o] = _qv(_frac(w[o]), _fmt_t(f), q.khot)
    return out


def _modes(rng) -> dict:
    return dict(rounding=str(rng.choice(ROUNDING_MODES)), overflow=str(rng.choice(OVERFLOW_MODES)))


# ------------------------------------------------------------------ cases: (module, [input fmts/shapes], reference)
def case_linear(rng):
    n, m = int(rng.integers(1, 7)), int(rng.integers(1, 6))
    bias = bool(rng.integers(0, 2))
    k = None if rng.random() < 0.5 else int(rng.integers(1, 3))
    layer = qn.QLinear(n, m, bias, weight_width=int(rng.integers(2, 7)), bias_width=int(rng.integers(2, 9)),
                       out_width=int(rng.integers(2, 9)), per_channel=bool(rng.integers(0, 2)), khot=k, **_modes(rng))
    for q in layer.quantizers().values():
        _set_ib(q, rng, -2, 4)
    fx = _rand_fmt(rng)

    def ref(x):
        wq = _weights_q(layer, layer.weight.detach().numpy())
        bq = _qv(_frac(layer.bias.detach().numpy()), _fmt_t(layer.bias_quant.fmt)) if bias else [0] * m
        s = np.empty((x.shape[0], m), dtype=object)
        for b in range(x.shape[0]):
            for o in range(m):
                s[b, o] = sum((x[b, i] * wq[o, i] for i in range(n)), Fraction(0)) + bq[o]
        return _qv(s, _fmt_t(layer.out_fmt))

    return layer, [((n,), fx)], ref


def case_conv(rng):
    c, o = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    st, pd = (int(rng.integers(1, 3)), int(rng.integers(1, 3))), (int(rng.integers(0, 2)), int(rng.integers(0, 2)))
    h, w = int(rng.integers(kh, 6)), int(rng.integers(kw, 6))
    bias = bool(rng.integers(0, 2))
    k = None if rng.random() < 0.5 else int(rng.integers(1, 3))
    layer = qn.QConv2d(c, o, (kh, kw), st, pd, bias=bias, weight_width=int(rng.integers(2, 6)),
                       bias_width=int(rng.integers(2, 9)), out_width=int(rng.integers(2, 9)),
                       per_channel=bool(rng.integers(0, 2)), khot=k, **_modes(rng))
    for q in layer.quantizers().values():
        _set_ib(q, rng, -2, 3)
    fx = _rand_fmt(rng, 2, 5)

    def ref(x):
        wq = _weights_q(layer, layer.weight.detach().numpy())
        bq = _qv(_frac(layer.bias.detach().numpy()), _fmt_t(layer.bias_quant.fmt)) if bias else [0] * o
        nb = x.shape[0]
        xp = np.full((nb, c, h + 2 * pd[0], w + 2 * pd[1]), Fraction(0), dtype=object)
        xp[:, :, pd[0]:pd[0] + h, pd[1]:pd[1] + w] = x
        ho, wo = (h + 2 * pd[0] - kh) // st[0] + 1, (w + 2 * pd[1] - kw) // st[1] + 1
        y = np.empty((nb, o, ho, wo), dtype=object)
        for b, oc, i, j in itertools.product(range(nb), range(o), range(ho), range(wo)):
            win = xp[b, :, i * st[0]:i * st[0] + kh, j * st[1]:j * st[1] + kw]
            y[b, oc, i, j] = sum((a * ww for a, ww in zip(win.reshape(-1), wq[oc].reshape(-1))), Fraction(0)) + bq[oc]
        return _qv(y, _fmt_t(layer.out_fmt))

    return layer, [((c, h, w), fx)], ref


def case_bn(rng):
    c = int(rng.integers(1, 4))
    two_d = bool(rng.integers(0, 2))
    cls = qn.QBatchNorm2d if two_d else qn.QBatchNorm1d
    layer = cls(c, scale_width=int(rng.integers(2, 8)), shift_width=int(rng.integers(2, 8)),
                out_width=int(rng.integers(2, 9)), per_channel=bool(rng.integers(0, 2)), **_modes(rng))
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.normal(size=c).astype(np.float32)))
        layer.bias.copy_(torch.from_numpy(rng.normal(size=c).astype(np.float32)))
        layer.running_mean.copy_(torch.from_numpy(rng.normal(size=c).astype(np.float32)))
        layer.running_var.copy_(torch.from_numpy(rng.uniform(0.2, 3, size=c).astype(np.float32)))
    for q in layer.quantizers().values():
        _set_ib(q, rng, -1, 3)
    layer.eval()
    shape = (c, 2, 3) if two_d else (c,)

    def ref(x):
        scale, shift = (t.detach().numpy() for t in layer.scale_shift())
        sq, hq = layer.scale_quant, layer.shift_quant
        fs = [sq.formats()[i if sq.per_channel else 0] for i in range(c)]
        fh = [hq.formats()[i if hq.per_channel else 0] for i in range(c)]
        y = np.empty(x.shape, dtype=object)
        for ch in range(c):
            s = _qv(_frac(scale[ch:ch + 1]), _fmt_t(fs[ch]))[0]
            h = _qv(_frac(shift[ch:ch + 1]), _fmt_t(fh[ch]))[0]
            for idx in np.ndindex(x[:, ch].shape):
                full = (idx[0], ch) + idx[1:]
                y[full] = x[full] * s + h
        return _qv(y, _fmt_t(layer.out_fmt))

    return layer, [(shape, _rand_fmt(rng))], ref


def case_relu(rng):
    layer = qn.QReLU(out_width=int(rng.integers(2, 9)), out_signed=bool(rng.integers(0, 2)), **_modes(rng))
    _set_ib(layer.out_quant, rng, -1, 4)
    return layer, [((4, 2), _rand_fmt(rng))], lambda x: _qv(np.vectorize(lambda v: max(v, 0), otypes=[object])(x),
                                                            _fmt_t(layer.out_fmt))


def case_clipped_relu(rng):
    cap = float(rng.choice([6.0, 1.5, 0.75, 3.25, 0.3125]))
    layer = qn.QClippedReLU(cap, out_width=int(rng.integers(4, 12)), **_modes(rng))
    _set_ib(layer.out_quant, rng, 1, 4)
    capf = Fraction(cap)
    w = int(rng.integers(3, 9))  # an input range that exceeds the cap, on or off the cap's grid
    fx = FxFormat(w, int(np.ceil(np.log2(cap))) + 1 + int(rng.integers(0, 3)), True)
    return layer, [((6,), fx)], lambda x: _qv(
        np.vectorize(lambda v: min(max(v, 0), capf), otypes=[object])(x), _fmt_t(layer.out_fmt))


def case_add(rng):
    layer = qn.QAdd(out_width=int(rng.integers(2, 9)), **_modes(rng))
    _set_ib(layer.out_quant, rng, -1, 5)
    return layer, [((2, 3), _rand_fmt(rng)), ((2, 3), _rand_fmt(rng))], lambda a, b: _qv(a + b, _fmt_t(layer.out_fmt))


def _pool_ref(x, k, st, pd, reduce):
    nb, c, h, w = x.shape
    ho, wo = (h + 2 * pd[0] - k[0]) // st[0] + 1, (w + 2 * pd[1] - k[1]) // st[1] + 1
    y = np.empty((nb, c, ho, wo), dtype=object)
    for b, ch, i, j in itertools.product(range(nb), range(c), range(ho), range(wo)):
        vals = []
        for di, dj in itertools.product(range(k[0]), range(k[1])):
            r, s = i * st[0] + di - pd[0], j * st[1] + dj - pd[1]
            vals.append(x[b, ch, r, s] if 0 <= r < h and 0 <= s < w else None)
        y[b, ch, i, j] = reduce(vals)
    return y


def case_maxpool(rng):
    k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    pd = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
    quant = bool(rng.integers(0, 2))
    layer = qn.QMaxPool2d(k, None, pd, out_width=int(rng.integers(2, 9)) if quant else None, **_modes(rng))
    if quant:
        _set_ib(layer.out_quant, rng, -1, 4)
    fx = _rand_fmt(rng)

    def ref(x):
        y = _pool_ref(x, k, k, pd, lambda v: max(a for a in v if a is not None))
        return _qv(y, _fmt_t(layer.out_fmt)) if quant else y

    return layer, [((2, 4, 5), fx)], ref


def case_avgpool(rng):
    k = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    st = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    pd = (int(rng.integers(0, k[0] // 2 + 1)), int(rng.integers(0, k[1] // 2 + 1)))
    layer = qn.QAvgPool2d(k, st, pd, recip_width=int(rng.integers(4, 12)), out_width=int(rng.integers(2, 9)),
                          **_modes(rng))
    _set_ib(layer.out_quant, rng, -1, 4)
    n = k[0] * k[1]
    if n & (n - 1) == 0:
        recip = Fraction(1, n)
    else:  # 1/n rounded half up to recip_width fractional bits
        rw = layer.recip_fmt.width
        recip = Fraction((2 ** (rw + 1) + n) // (2 * n), 2 ** rw)

    def ref(x):
        y = _pool_ref(x, k, st, pd, lambda v: sum((a for a in v if a is not None), Fraction(0)) * recip)
        return _qv(y, _fmt_t(layer.out_fmt))

    return layer, [((2, 4, 5), _rand_fmt(rng))], ref


def case_flatten(rng):
    return qn.QFlatten(), [((2, 2, 3), _rand_fmt(rng))], lambda x: x.reshape(x.shape[0], -1)


CASES = {f.__name__[5:]: f for f in (case_linear, case_conv, case_bn, case_relu, case_clipped_relu, case_add,
                                    case_maxpool, case_avgpool, case_flatten)}


def _check_case(name: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    layer, ins, ref = CASES[name](rng)
    layer.eval()
    inputs = [_rand_input(rng, shape, f) for shape, f in ins]
    qn.set_mode(layer, "exact")
    y = layer(*[t for _, t in inputs])
    assert y.dtype == torch.float64
    expect = ref(*[_frac(t.numpy()) for _, t in inputs])
    got = _frac(y.numpy())
    assert got.shape == expect.shape
    bad = [(i, g, e) for (i, g), e in zip(np.ndenumerate(got), expect.reshape(-1)) if g != e]
    assert not bad, f"{name} seed {seed}: {len(bad)} mismatches, first {bad[:3]}"
    # IR nodes through the golden interpreter reproduce the exact-mode output
    specs = [TensorSpec(f"x{i}", shape, f) for i, (shape, f) in enumerate(ins)]
    items = layer.ir_nodes("layer", specs, "y")
    assert items and items[-1][0].output == "y" and items[-1][1].name == "y"
    for node, spec in items:
        assert node.source == "layer" and (node.name == "layer" or node.name.startswith("layer."))
        assert spec.name == "y" or spec.name.startswith("y.")
    tensors = {s.name: s for s in specs} | {s.name: s for _, s in items}
    g = Graph("t", tuple(s.name for s in specs), ("y",), tensors, tuple(n for n, _ in items)).validate()
    if len(specs) == 1:
        codes = run(g, inputs[0][0])
    else:
        codes = run(g, {s.name: c for s, (c, _) in zip(specs, inputs)})
    out_spec = tensors["y"]
    assert codes.shape[1:] == out_spec.shape == tuple(y.shape[1:])
    np.testing.assert_array_equal(out_spec.fmt.from_int(codes), y.numpy())
    if layer.out_fmt is not None:
        assert out_spec.fmt == layer.out_fmt


@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_mode_and_ir_nodes_match_reference(name):
    for seed in range(12):
        _check_case(name, seed)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CASES))
def test_exact_mode_and_ir_nodes_match_reference_many(name):
    for seed in range(12, 200):
        _check_case(name, seed)


# ------------------------------------------------------------------ train mode == exact mode
def _train_vs_exact(model: torch.nn.Module, x: torch.Tensor) -> None:
    model.eval()
    with qn.mode(model, "train"):
        yt = model(x).detach().double()
    with qn.mode(model, "exact"):
        ye = model(x)
    torch.testing.assert_close(yt, ye, rtol=0, atol=0)


@pytest.mark.parametrize("seed", range(6))
def test_train_mode_equals_exact_mode_small_formats(seed):
    # small widths keep every float32 sum exact (accumulators well under 24 bits), so the fake-quantized float32
    # forward must agree bit for bit with the integer path
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    kw = dict(**_modes(rng))
    kw["overflow"] = str(rng.choice(["SAT", "SAT_SYM", "SAT_ZERO", "WRAP"]))
    k = None if seed % 2 else 2
    model = torch.nn.Sequential(
        qn.QuantInput(6, 1, signed=False),
        qn.QConv2d(1, 3, 3, padding=1, weight_width=5, bias_width=8, out_width=6, khot=k, per_channel=True, **kw),
        qn.QBatchNorm2d(3, scale_width=5, shift_width=6, out_width=6, **kw),
        qn.QReLU(out_width=5, **kw),
        qn.QAvgPool2d(2, out_width=6, **kw),
        qn.QMaxPool2d(2, padding=1),
        qn.QFlatten(),
        qn.QLinear(3 * 3 * 3, 4, weight_width=5, bias_width=8, out_width=7, khot=k, **kw),
        qn.QClippedReLU(1.5, out_width=6, **kw),
    )
    x = torch.rand(16, 1, 8, 8)
    qn.calibrate(model, x)
    _train_vs_exact(model, x)


def test_shift_add_terms_and_accumulator_format():
    torch.manual_seed(0)
    layer = qn.QLinear(4, 3, weight_width=6, khot=2)
    layer.weight_quant.calibrate(layer.weight, "max")
    terms = layer.shift_add_terms()
    w = layer.weight_quant(layer.weight).detach().numpy()
    assert terms.shape == w.shape
    for idx, t in np.ndenumerate(terms):
        assert len(t) <= 2
        assert sum(Fraction(s) * TWO ** k for s, k in t) == Fraction(float(w[idx]))
    fin = FxFormat(8, 1, False)
    acc = layer.accumulator_format(fin)
    codes, fw = layer.weight_codes()
    b, fb = layer.bias_codes()
    # bounds by direct interval arithmetic with Python ints
    f = max(fin.frac_bits + fw.frac_bits, fb.frac_bits)
    lo = hi = None
    for o in range(3):
        terms_ = [sorted((int(c) * fin.min_code, int(c) * fin.max_code)) for c in codes[o]]
        l = sum(t[0] for t in terms_) * 2 ** (f - fin.frac_bits - fw.frac_bits) + int(b[o]) * 2 ** (f - fb.frac_bits)
        h = sum(t[1] for t in terms_) * 2 ** (f - fin.frac_bits - fw.frac_bits) + int(b[o]) * 2 ** (f - fb.frac_bits)
        lo, hi = (l, h) if lo is None else (min(lo, l), max(hi, h))
    assert acc.frac_bits == f and acc.min_code <= lo and hi <= acc.max_code
    assert not FxFormat(acc.width - 1, acc.int_bits - 1).min_code <= lo or not hi <= FxFormat(acc.width - 1, acc.int_bits - 1).max_code


def test_exact_mode_rejects_wide_or_bad_values():
    from qfx.errors import BadInputError, FormatError

    layer = qn.QReLU(out_width=None)
    qn.set_mode(layer, "exact")
    with pytest.raises(BadInputError):
        layer(torch.tensor([float("nan")], dtype=torch.float64))
    with pytest.raises(FormatError):
        layer(torch.tensor([2.0 ** 60 + 2.0 ** 0, 2.0 ** -10], dtype=torch.float64))
    with pytest.raises(BadInputError):
        qn.set_mode(layer, "fast")

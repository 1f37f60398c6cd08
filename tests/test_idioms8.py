"""Eighth pass of everyday idioms: tensors the model holds read in forward (an input normalization by buffers,
layer scales through ``.view(1, -1, 1, 1)`` / ``[:, None, None]``, ``F.linear`` / ``F.conv2d`` with the model's
parameters, ``x @ self.W`` and ``x @ self.W.t()``), ``torch.add(x, y, alpha=k)``, GLU, RMSNorm (module,
functional and hand-written, ``rsqrt(v + eps)`` as one table), ``torch.einsum`` in the forms attention and
pooling code write, and resizing beyond integer factors (bilinear with align_corners=True, any size, non-integer
and downscaling factors, nearest to any size: QResize2d). Train mode == exact mode == interpreter ==
onnxruntime on the qfx ONNX, g++ C simulation and Verilator; what stays refused is refused in one line."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.errors import UnsupportedError
from qfx.nn.op_layers import QResize2d, resize_matrix

from models.harness import csim_agrees, exact_check, square_loss_steps

CFG = dict(weight_width=8, act_width=8)


def _onnx_agrees(g, x) -> None:
    from qfx.ir import run
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.runtime import run_onnx_codes

    codes = np.asarray(g.tensor(g.inputs[0]).fmt.to_int(x.double().numpy()), dtype=np.int64)
    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes), run(g, codes))


def _agrees(f: nn.Module, x: torch.Tensor, tol: float | None = 0.2, steps: int = 2):
    """Quantize ``f``, check it follows the float model (before training, relative max error ``tol``), train a
    few steps, and check train == exact == interpreter == onnxruntime. Returns (quantized model, IR graph)."""
    q = qfx.quantize_model(f, qfx.QFXConfig(**CFG), calib_data=x)
    if tol is not None:
        q.eval()
        with torch.no_grad():
            want, got = f(x), q(x)
        err = float((got - want).abs().max() / want.abs().max())
        assert err < tol, err
    square_loss_steps(q, x, steps)
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    _onnx_agrees(g, x)
    return q, g


def _ops(g) -> list[str]:
    return [n.op.value for n in g.nodes]


# ---------------------------------------------------------------------------------------------- held tensors
class HeldTensors(nn.Module):
    """What custom layers do with the tensors they hold: normalize the input by buffers, conv with their own
    weight through F.conv2d, scale channels by a parameter viewed as (1, C, 1, 1) and as [:, None, None], and
    finish with F.linear and x @ W.t() on their own parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.25, -0.5]).view(1, 2, 1, 1))
        self.register_buffer("std", torch.tensor([0.5, 2.0]).view(1, 2, 1, 1))
        self.weight = nn.Parameter(torch.randn(4, 2, 3, 3) * 0.3)
        self.bias = nn.Parameter(torch.randn(4) * 0.1)
        self.gamma = nn.Parameter(torch.full((4,), 0.5) + torch.randn(4) * 0.1)
        self.beta = nn.Parameter(torch.randn(4) * 0.1)
        self.fc_w = nn.Parameter(torch.randn(6, 64) * 0.1)
        self.fc_b = nn.Parameter(torch.zeros(6))
        self.out_w = nn.Parameter(torch.randn(3, 6) * 0.3)

    def forward(self, x):
        h = F.conv2d((x - self.mean) / self.std, self.weight, self.bias, padding=1)
        h = F.relu(h * self.gamma.view(1, -1, 1, 1) + self.beta[:, None, None])
        h = F.relu(F.linear(F.max_pool2d(h, 2).flatten(1), self.fc_w, self.fc_b))
        return h @ self.out_w.t()


def test_tensors_the_model_holds_convert_as_layers():
    torch.manual_seed(1)
    x = torch.randn(64, 2, 8, 8)
    f = HeldTensors()
    q, g = _agrees(f, x)
    ops = _ops(g)
    assert ops.count("conv2d") == 1 and ops.count("dense") == 2, ops
    assert ops.count("scale_shift") >= 3, ops  # (x - mean) * (1 / std), * gamma, + beta
    # the model's own parameters are trained (no stray float copies left behind)
    names = {n for n, _ in q.named_parameters()}
    assert not {"net.weight", "net.fc_w", "net.out_w"} & names, names
    assert "net.conv2d_layer.weight" in names and "net.gamma" in names, names
    assert any(isinstance(b, torch.Tensor) and b.shape == (1, 2, 1, 1) for _, b in q.named_buffers())


class MatrixParameter(nn.Module):
    """x @ W with W (in, out) on tokens: a dense layer with W transposed."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 8)
        self.W = nn.Parameter(torch.randn(8, 4) * 0.3)

    def forward(self, x):
        return (F.relu(self.a(x)) @ self.W).mean(1)


def test_matrix_parameter_on_the_right_is_a_dense_layer():
    torch.manual_seed(2)
    x = torch.randn(48, 5, 8)
    _, g = _agrees(MatrixParameter(), x)
    assert _ops(g).count("conv2d") == 2  # Linear on tokens: a 1x1 conv between transposes


def test_parameter_on_the_left_and_division_by_a_parameter_stay_refused_in_one_line():
    class Left(MatrixParameter):
        def forward(self, x):
            return (self.W.t() @ self.a(x).transpose(1, 2)).mean(1)

    class DivParam(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.t = nn.Linear(8, 4), nn.Parameter(torch.ones(4))

        def forward(self, x):
            return self.a(x) / self.t

    for m, x in ((Left(), torch.randn(8, 5, 8)), (DivParam(), torch.randn(8, 8))):
        with pytest.raises(UnsupportedError) as ei:
            qfx.quantize_model(m, qfx.QFXConfig(), calib_data=x)
        assert "\n" not in str(ei.value)


# ---------------------------------------------------------------------------------------------- GLU, RMSNorm
class GatedNorms(nn.Module):
    """A gated 1-D conv (nn.GLU and F.glu), torch.add with alpha, RMSNorm as a module, as F.rms_norm and written
    by hand (LLaMA style: x * rsqrt(mean(x ** 2) + eps) * weight)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(3, 8, 3, padding=1), nn.Conv1d(4, 8, 3, padding=1)
        self.glu = nn.GLU(1)
        self.a = nn.Linear(4, 6)
        self.n1 = nn.RMSNorm(6)
        self.w = nn.Parameter(torch.ones(6) + 0.1 * torch.randn(6))
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = self.glu(self.c1(x))
        h = torch.add(h, F.glu(self.c2(h), 1), alpha=0.5)  # (N, 4, L)
        t = self.n1(self.a(h.transpose(1, 2)))  # tokens (N, L, 6)
        t = F.rms_norm(t, (6,), eps=1e-5) + t
        t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * self.w
        return self.head(t.mean(1))


def test_glu_alpha_and_rms_norms():
    torch.manual_seed(3)
    x = torch.randn(64, 3, 10)
    _, g = _agrees(GatedNorms(), x, tol=0.25)
    fns = [n.attrs.get("fn") for n in g.nodes if n.op.value == "lut"]
    # the eps inside each rsqrt table (a separate add would round it away at 8 bits)
    assert any(f.startswith("rsqrt(1.19") for f in fns) and "rsqrt(1e-05)" in fns and "rsqrt(1e-06)" in fns, fns
    assert fns.count("sigmoid") == 2, fns


# ---------------------------------------------------------------------------------------------- einsum
class Einsums(nn.Module):
    """Attention and pooling written with einsum: scores "bhqd,bhkd->bhqk", weighted sum "bhqk,bhkd->bhqd",
    a permute "bnc->bcn", a sum "bnc->bc", a per-token dot product "bnc,bnc->bn"."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.head = nn.Linear(8 + 8 + 5, 3)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = (t.view(b, n, 2, 4).transpose(1, 2) for t in (self.q(x), self.k(x), self.v(x)))
        att = torch.softmax(torch.einsum("bhqd,bhkd->bhqk", q, k) * 0.5, -1)
        y = torch.einsum("bhqk,bhkd->bhqd", att, v).transpose(1, 2).reshape(b, n, 8)
        pooled = torch.einsum("bnc->bcn", y).mean(2)
        summed = torch.einsum("bnc->bc", y) * 0.2
        dots = torch.einsum("bnc,bnc->bn", self.q(x), self.k(x)) * 0.1
        return self.head(torch.cat([pooled, summed, dots], 1))


def test_einsum_forms_become_matmuls_permutes_and_sums():
    torch.manual_seed(4)
    x = torch.randn(48, 5, 8)
    _, g = _agrees(Einsums(), x, tol=0.25)
    ops = _ops(g)
    assert ops.count("matmul") == 2 and "softmax" in ops, ops


def test_einsum_outside_the_forms_stays_refused_in_one_line():
    class Trace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 16)

        def forward(self, x):
            return torch.einsum("bii->b", self.a(x).view(-1, 4, 4)).unsqueeze(1)

    with pytest.raises(UnsupportedError) as ei:
        qfx.quantize_model(Trace(), qfx.QFXConfig(), calib_data=torch.randn(8, 4))
    assert "\n" not in str(ei.value) and "einsum" in str(ei.value)


# ---------------------------------------------------------------------------------------------- resizing
RESIZES = [dict(scale_factor=2, mode="bilinear", align_corners=True),
           dict(size=(11, 13), mode="bilinear", align_corners=False),
           dict(size=(11, 13), mode="bilinear", align_corners=True),
           dict(scale_factor=1.5, mode="bilinear"),
           dict(scale_factor=0.5, mode="bilinear"),
           dict(scale_factor=1.7, mode="bilinear", recompute_scale_factor=True),
           dict(size=(12, 5)),
           dict(size=(12, 5), mode="nearest-exact"),
           dict(scale_factor=2.5, mode="nearest")]


@pytest.mark.parametrize("kw", RESIZES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_resize_layer_follows_torch_interpolate(kw):
    """Without an output quantizer QResize2d is torch's interpolate up to its 16-bit weights (exactly for
    nearest)."""
    torch.manual_seed(5)
    x = torch.randn(2, 3, 7, 9)
    ref = F.interpolate(x, **kw)
    size = kw.get("size")
    m = QResize2d(size, None if size is not None else kw["scale_factor"], kw.get("mode", "nearest"),
                  bool(kw.get("align_corners")), recompute=bool(kw.get("recompute_scale_factor")), out_width=None)
    y = m(x)
    assert y.shape == ref.shape
    tol = 0.0 if "nearest" in kw.get("mode", "nearest") else 1e-4
    assert float((y - ref).abs().max()) <= tol


def test_resize_matrices_rows_sum_to_one_and_align_the_corners():
    m = resize_matrix(5, 9, "linear", "align_corners")
    np.testing.assert_allclose(m.sum(1), 1.0)
    assert m[0, 0] == 1 and m[-1, -1] == 1 and m[4, 2] == 1  # corners and the exact middle sample
    d = resize_matrix(8, 4, "linear", "half_pixel", 0.5)  # downscaling by 2: the mean of each pair
    np.testing.assert_allclose(d, np.kron(np.eye(4), [[0.5, 0.5]]))


class Decoder(nn.Module):
    """A segmentation decoder's resizes: UpsamplingBilinear2d (align_corners=True), back to the skip's odd size
    (bilinear, align_corners=False), a nearest resize to a fixed size, a bilinear downscale."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(2, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.up = nn.UpsamplingBilinear2d(scale_factor=2)
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, x):
        skip = F.relu(self.c1(x))  # (N, 4, 7, 7)
        h = F.relu(self.c2(F.max_pool2d(skip, 2)))  # (N, 4, 3, 3)
        h = F.interpolate(self.up(h), size=skip.shape[2:], mode="bilinear", align_corners=False) + skip
        h = F.interpolate(h, size=(5, 6)) + F.interpolate(h, scale_factor=(0.75, 0.86), mode="bilinear")
        return self.head(h).flatten(1)


@pytest.fixture(scope="module")
def decoder():
    torch.manual_seed(6)
    x = torch.randn(48, 2, 7, 7)
    q, g = _agrees(Decoder(), x, tol=0.25)
    return q, g, x


def test_decoder_resizes_agree_everywhere(decoder):
    _, g, _ = decoder
    ops = _ops(g)
    assert ops.count("transpose") >= 8 and ops.count("conv2d") >= 3 + 6, ops


@pytest.mark.gxx
def test_decoder_resizes_csim(decoder, tmp_path):
    q, _, x = decoder
    csim_agrees(q, x, tmp_path / "hls", 32)


@pytest.mark.gxx
def test_held_tensors_glu_norms_einsum_and_statistics_csim(tmp_path):
    torch.manual_seed(7)
    for i, (f, x) in enumerate(((HeldTensors(), torch.randn(32, 2, 8, 8)), (GatedNorms(), torch.randn(32, 3, 10)),
                                (Einsums(), torch.randn(32, 5, 8)), (Statistics(), torch.randn(32, 2, 6, 6)),
                                (UnevenPools(), torch.randn(32, 2, 9, 9)))):
        q = qfx.quantize_model(f, qfx.QFXConfig(**CFG), calib_data=x)
        csim_agrees(q, x, tmp_path / f"hls{i}", 24)


@pytest.mark.verilator
def test_resizes_and_held_tensors_rtl_cosim(decoder, tmp_path):
    """The separable resizes (transposes and 1x1 convs over H and W) and a model's held tensors in RTL: one
    Verilator build for both projects, with stalls, 0 mismatches."""
    from qfx.backends import rtl
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.sim.cosim import run_cosim_many

    torch.manual_seed(8)
    x = torch.randn(32, 2, 8, 8)
    held = qfx.quantize_model(HeldTensors(), qfx.QFXConfig(**CFG), calib_data=x)
    dirs = []
    for name, g in (("decoder", decoder[1]), ("held", exact_check(held, x)[0])):
        g = dataclasses.replace(run_flow(g, DEFAULT_FLOW).graph, name=f"i8_{name}")
        rtl.write_project(g, tmp_path / name)
        dirs.append(tmp_path / name)
    for rep in run_cosim_many(dirs, n_vectors=24, seed=5, work_dir=tmp_path / "w"):
        assert rep.ok and rep.mismatches == 0 and rep.received, (rep.top, rep.mismatches, rep.received)


def test_resize_weight_rows_sum_to_exactly_one():
    from qfx.nn.op_layers import resize_weights

    for n_in, n_out, rule in ((5, 9, "align_corners"), (7, 11, "half_pixel"), (3, 10, "asymmetric")):
        k, kf = resize_weights(resize_matrix(n_in, n_out, "linear", rule))
        assert (k.sum(1) == 1 << kf.frac_bits).all() and (k >= 0).all()


# ---------------------------------------------------------------------------------------------- norms, stats
class Statistics(nn.Module):
    """Normalizations beyond LayerNorm(n) and GroupNorm of (N, C, H, W): InstanceNorm1d and GroupNorm of (N, C, L),
    LayerNorm over (C, L), (C, H, W) and (H, W); variance and standard deviation over per-sample dims (Bessel's
    correction, unbiased=False, correction=0); F.threshold and nn.Threshold; x.repeat over channels and width."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.i1, self.g1 = nn.Conv1d(2, 4, 3), nn.InstanceNorm1d(4, affine=True), nn.GroupNorm(2, 4)
        self.l1 = nn.LayerNorm([4, 12])
        self.c2 = nn.Conv2d(2, 3, 3)
        self.l2, self.l3 = nn.LayerNorm([3, 4, 4]), nn.LayerNorm([4, 4], elementwise_affine=False)
        self.t = nn.Threshold(0.1, -0.25)
        self.head = nn.Linear(3 * 48 + 4 + 3 + 3 + 3 * 4 * 12, 5)

    def forward(self, x):
        s = x[:, :, :, 0].contiguous()  # (N, 2, 6) -> conv1d below on a longer sequence
        seq = self.c1(torch.cat([s, s, s[:, :, :2]], 2))  # (N, 4, 12)
        a = self.l1(self.g1(F.relu(self.i1(seq))))
        h = self.c2(x)  # (N, 3, 4, 4)
        b = self.l2(h).flatten(1)
        c = self.t(self.l3(h)).flatten(1)
        stats = [seq.var(2, keepdim=False), torch.std(h, dim=(2, 3), unbiased=False),
                 h.var(dim=-1, correction=0).mean(-1), F.threshold(h, 0.0, 0.5).repeat(1, 1, 1, 3).flatten(1)]
        return self.head(torch.cat([a.flatten(1), b, c] + stats, 1))


def test_normalizations_statistics_threshold_repeat():
    torch.manual_seed(9)
    x = torch.randn(64, 2, 6, 6)
    f = Statistics()
    _, g = _agrees(f, x, tol=0.25)
    fns = [n.attrs.get("fn") for n in g.nodes if n.op.value == "lut"]
    assert sum(fn.startswith("select_gt") for fn in fns) == 2 and "sqrt" in fns, fns


def test_training_through_sqrt_of_a_zero_variance_stays_finite():
    """A standard deviation that rounds to 0 (equal features): sqrt'(0) = inf must not make the gradients NaN."""
    class Spread(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 4), nn.Linear(1, 2)

        def forward(self, x):
            return self.b(self.a(x).std(1, keepdim=True)) + torch.rsqrt(self.a(x).pow(2).mean(1, keepdim=True))

    torch.manual_seed(11)
    x = torch.randn(64, 6)
    x[::2] = 0.0  # every other sample: equal features, zero spread
    q = qfx.quantize_model(Spread(), qfx.QFXConfig(**CFG), calib_data=x)
    square_loss_steps(q, x, 3)
    assert all(torch.isfinite(p).all() for p in q.parameters())
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0


# ---------------------------------------------------------------------------------------------- uneven pools
POOLS = [dict(kernel_size=3, stride=2, ceil_mode=True), dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
         dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
         dict(kernel_size=2, stride=2, ceil_mode=True, count_include_pad=False),
         dict(kernel_size=3, stride=1, padding=1, divisor_override=5),
         dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 0), ceil_mode=True)]


@pytest.mark.parametrize("kw", POOLS, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_pool_matrices_follow_torch_avg_pool(kw):
    from qfx.nn.op_layers import QAvgPoolMatrix

    x = torch.randn(2, 3, 7, 9)
    m = QAvgPoolMatrix(kw["kernel_size"], kw.get("stride"), kw.get("padding", 0), kw.get("ceil_mode", False),
                       kw.get("count_include_pad", True), kw.get("divisor_override"), out_width=None)
    ref, y = F.avg_pool2d(x, **kw), m(x)
    assert y.shape == ref.shape and float((y - ref).abs().max()) < 1e-4


@pytest.mark.parametrize("size", [(3, 5), (6, 6), (10, 12), (1, 4)])
def test_area_matrices_follow_adaptive_avg_pool(size):
    x = torch.randn(2, 3, 7, 9)
    y = QResize2d(size, None, "area", out_width=None)(x)
    assert float((y - F.adaptive_avg_pool2d(x, size)).abs().max()) < 1e-4


class UnevenPools(nn.Module):
    """Pools whose windows vary: an adaptive average pool to a size that does not divide the input (AlexNet's
    (6, 6) on a small map), interpolate(mode='area'), ceil_mode and count_include_pad=False average pools."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv2d(2, 4, 3)  # (N, 4, 7, 7)
        self.adapt = nn.AdaptiveAvgPool2d((3, 5))
        self.pool = nn.AvgPool2d(3, 2, ceil_mode=True)
        self.head = nn.Linear(4 * (15 + 9 + 16 + 16), 3)

    def forward(self, x):
        h = F.relu(self.c(x))
        parts = [self.adapt(h), self.pool(h), F.avg_pool2d(h, 3, 2, 1, count_include_pad=False),
                 F.interpolate(h, size=(4, 4), mode="area")]
        return self.head(torch.cat([p.flatten(1) for p in parts], 1))


def test_uneven_pools_agree_everywhere(tmp_path):
    torch.manual_seed(12)
    x = torch.randn(48, 2, 9, 9)
    q, g = _agrees(UnevenPools(), x, tol=0.2)
    assert _ops(g).count("transpose") >= 12


class FlipCumsum(nn.Module):
    """Test-time-augmentation style flips (width, both spatial dims, channels) and cumulative sums over channels
    and tokens: slices and concats, prefix sums."""

    def __init__(self) -> None:
        super().__init__()
        self.c, self.a = nn.Conv2d(2, 3, 3), nn.Linear(6, 4)
        self.head = nn.Linear(3 * 36 * 3 + 3 * 4, 2)

    def forward(self, x):
        h = self.c(x)  # (N, 3, 6, 6)
        flips = torch.cat([(h + h.flip(3)).flatten(1), torch.flip(h, dims=(2, 3)).flatten(1),
                           torch.cumsum(h.flip(1), 1).flatten(1)], 1)
        tokens = self.a(h.mean(3))  # (N, 3, 4)
        return self.head(torch.cat([flips, tokens.cumsum(dim=1).flatten(1)], 1))


def test_flip_and_cumsum_are_slices_and_prefix_sums():
    torch.manual_seed(13)
    x = torch.randn(48, 2, 8, 8)
    _, g = _agrees(FlipCumsum(), x, tol=0.2)
    assert "concat" in _ops(g)


def test_a_layer_called_again_on_the_same_input_is_one_tensor():
    """torch.where(self.c(x) > 0, self.c(x), 0.1 * self.c(x)): the three calls are one tensor, so the selection is
    one table of it (a hand-written leaky ReLU), trained once."""
    class Leaky(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c, self.head = nn.Conv2d(2, 3, 3), nn.Linear(3 * 36, 2)

        def forward(self, x):
            return self.head(torch.where(self.c(x) > 0, self.c(x), 0.1 * self.c(x)).flatten(1))

    torch.manual_seed(14)
    x = torch.randn(48, 2, 8, 8)
    _, g = _agrees(Leaky(), x)
    assert _ops(g).count("conv2d") == 1 and any(
        str(n.attrs.get("fn", "")).startswith("select_gt") for n in g.nodes), _ops(g)


def test_tied_weights_read_through_f_linear_keep_the_layer_that_owns_them():
    """A language-model head tied to its embedding (``F.linear(h, self.emb.weight)``): the embedding keeps its
    weight, the head gets a layer of its own holding the same values."""
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.mix = nn.Embedding(12, 6), nn.Linear(6, 6)

        def forward(self, x):
            return F.linear(torch.tanh(self.mix(self.emb(x))), self.emb.weight).mean(1)

    torch.manual_seed(15)
    f = Tied()
    x = torch.randint(0, 12, (48, 5))
    q = qfx.quantize_model(f, qfx.QFXConfig(**CFG), calib_data=x)
    q.eval()
    with torch.no_grad():
        assert float((q(x) - f(x)).abs().max() / f(x).abs().max()) < 0.1
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0

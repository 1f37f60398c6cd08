"""Sixth pass of everyday idioms. Sub-pixel convolution (ESPCN-style super-resolution, space-to-depth stems):
``nn.PixelShuffle``, ``nn.PixelUnshuffle``, ``F.pixel_shuffle`` / ``F.pixel_unshuffle`` convert to ``QPixelShuffle``
(reshape, transpose, reshape in the IR: wires); reductions over the last dim of (N, C, H, W) (``x.mean(-1)``,
``x.amax(-1, keepdim=True)``, ``x.sum(dim=-1)``: a (1, W) window per row). Train mode == exact mode == interpreter ==
onnxruntime on the qfx ONNX, and C simulation."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
from qfx.errors import UnsupportedError
from qfx.nn.extra_layers import QPixelShuffle

from models.harness import csim_agrees, exact_check, square_loss_steps


class SubPixel(nn.Module):
    """A space-to-depth stem, a conv, an ESPCN-style sub-pixel upsampling head."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.PixelUnshuffle(2)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1)
        self.up = nn.PixelShuffle(2)

    def forward(self, x):
        h = F.relu(self.c1(self.down(x)))
        return self.up(self.c2(h)) + F.pixel_shuffle(F.pixel_unshuffle(x, 2), 2)


@pytest.fixture(scope="module")
def subpixel():
    torch.manual_seed(4)
    x = torch.randn(48, 2, 6, 8)
    q = qfx.quantize_model(SubPixel(), qfx.QFXConfig(weight_width=7, act_width=7), calib_data=x)
    return square_loss_steps(q, x, 2), x


def test_pixel_shuffle_train_exact_interpreter_onnxruntime_agree(subpixel):
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.runtime import run_onnx_codes

    q, x = subpixel
    assert sum(isinstance(m, QPixelShuffle) for m in q.modules()) == 4
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    assert g.tensor(g.outputs[0]).shape == (2, 6, 8)
    ops = [n.op.value for n in g.nodes]
    assert ops.count("transpose") == 4 and "reshape" in ops
    codes = np.asarray(g.tensor(g.inputs[0]).fmt.to_int(x.double().numpy()), dtype=np.int64)
    from qfx.ir import run

    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes), run(g, codes))
    with torch.no_grad():  # the wires move values exactly as torch does
        xs = torch.randn(2, 8, 3, 5)
        assert torch.equal(QPixelShuffle(2)(xs), F.pixel_shuffle(xs, 2))
        assert torch.equal(QPixelShuffle(2, inverse=True)(F.pixel_shuffle(xs, 2)), xs)


def test_pixel_shuffle_bad_factor_refused():
    with pytest.raises(UnsupportedError, match="positive integer factor"):
        QPixelShuffle(0)


@pytest.mark.gxx
def test_pixel_shuffle_csim(subpixel, tmp_path):
    q, x = subpixel
    csim_agrees(q, x, tmp_path / "hls", 32)


class RowReductions(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c, self.f, self.g = nn.Conv2d(2, 3, 1), nn.Linear(15, 2), nn.Linear(5, 2)

    def forward(self, x):
        h = self.c(x)  # (N, 3, 5, 4)
        return (self.f(h.mean(-1).flatten(1)) + self.g(h.amax(-1, keepdim=True).sum(-1)[:, 0])
                + self.f(torch.relu(h).sum(dim=-1).flatten(1)))


def test_reductions_over_the_last_dim_of_images():
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.runtime import run_onnx_codes
    from qfx.ir import run

    torch.manual_seed(6)
    x = torch.randn(48, 2, 5, 4)
    q = qfx.quantize_model(RowReductions(), qfx.QFXConfig(weight_width=8, act_width=8), calib_data=x)
    q.train()
    q(x).pow(2).mean().backward()
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    pools = [n for n in g.nodes if n.op.value in ("avgpool2d", "maxpool2d")]
    assert [n.attrs["kernel"] for n in pools].count((1, 4)) == 3
    codes = np.asarray(g.tensor(g.inputs[0]).fmt.to_int(x.double().numpy()), dtype=np.int64)
    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes), run(g, codes))

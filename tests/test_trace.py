"""``quantize_model``'s torch.fx front door: functions and operators get qfx twins, refusals come before training,
and what is converted computes in train mode what the hardware computes (capture, exact mode, train mode agree)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import qfx
import qfx.nn as qn
from qfx.errors import UnsupportedError
from qfx.ir import run
from qfx.ir.from_torch import capture
from qfx.nn.extra_layers import QGlobalAvgPool2d


class Block(nn.Module):
    """A torchvision-style basic block: shared in-place ReLU, `out += shortcut(x)` with an empty Sequential."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.shortcut = nn.Sequential()
        self.unused_pool = nn.AdaptiveAvgPool2d(3)  # never called: must not cause a refusal
        self.unused_act = nn.GELU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.relu(out)


class Net(nn.Module):
    def __init__(self, head: str = "mean") -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.layer = nn.Sequential(Block(4), Block(4))
        self.drop = nn.Dropout2d(0.2)
        self.idt = nn.Identity()
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 10)
        self.head = head

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.layer(x)
        torch.sigmoid(x)  # dead: never reaches the output
        x = torch.add(F.max_pool2d(x, 2), self.idt(F.avg_pool2d(x, 2)))
        x = self.drop(torch.relu(x)).relu()
        if self.head == "mean":
            x = x.mean((2, 3))
        elif self.head == "adaptive":
            x = F.adaptive_avg_pool2d(x, 1)
            x = x.view(x.shape[0], -1)
        else:
            x = torch.flatten(self.gap(x), 1)
        return self.fc(F.dropout(x, 0.5, self.training))


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g) * 2 - 0.5


def _assert_three_way(q, x):
    """train mode == exact mode == golden interpreter on the captured IR, bit for bit."""
    q.eval()
    g = capture(q, x[:1])
    with qn.mode(q, "exact"):
        ye = q(x).detach().numpy()
    yt = q(x).detach().double().numpy()
    fin, fout = g.tensor(g.inputs[0]).fmt, g.tensor(g.outputs[0]).fmt
    np.testing.assert_array_equal(fout.from_int(run(g, fin.to_int(x.double().numpy()))), ye)
    np.testing.assert_array_equal(yt, ye)
    return g


@pytest.mark.parametrize("head", ["mean", "adaptive", "module"])
def test_functional_resnet_is_converted_and_bit_exact(head):
    torch.manual_seed(0)
    x = _data()
    f = Net(head)
    q = qfx.quantize_model(f, qfx.QFXConfig(weight_width=6, act_width=6), x)
    gm = q.net
    assert isinstance(gm, torch.fx.GraphModule) and type(gm).__name__ == "Net"
    # every op that computes is a qfx module: no float call is left in the graph the model trains with
    for n in gm.graph.nodes:
        if n.op == "call_module":
            assert isinstance(gm.get_submodule(n.target), qn.QModule), n.target
        assert n.op != "call_function" or n.target in (torch.flatten, getattr, __import__("operator").getitem), n
        assert n.op != "call_method" or n.target in ("view", "size"), n
    kinds = [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"]
    assert kinds.count("QAdd") == 3 and kinds.count("QGlobalAvgPool2d") == 1 and "QMaxPool2d" in kinds
    assert kinds.count("QReLU") == 7  # stem, 2 per block (the shared ReLU split in two), torch.relu, .relu()
    # the real containers stay (indexing works), converted layers keep the float model's parameter names
    assert isinstance(gm.layer, nn.Sequential) and isinstance(gm.layer[0].conv1, qn.QConv2d)
    assert torch.equal(q.state_dict()["net.layer.1.conv2.weight"], f.state_dict()["layer.1.conv2.weight"])
    assert gm.layer[0].relu is not gm.layer[0].relu_1
    g = _assert_three_way(q, x)
    assert [n.op.value for n in g.nodes].count("add") == 3 and not any("sigmoid" in n.name for n in g.nodes)


def test_converted_model_trains():
    torch.manual_seed(0)
    x, y = _data(), torch.randint(0, 10, (64,))
    q = qfx.quantize_model(Net(), qfx.QFXConfig(weight_width=6, act_width=6), x)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    opt = torch.optim.Adam(q.parameters(), 1e-2)
    q.train()
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(q(x), y).backward()
        opt.step()
    # the inserted residual adds learn their binary points like every other quantizer
    add_ib = "net.layer.0.add.out_quant.int_bits_param"
    assert q.net.layer[0].add.out_quant.int_bits_param.grad is not None
    assert not torch.equal(q.state_dict()["net.fc.weight"], before["net.fc.weight"])
    assert add_ib in before
    _assert_three_way(q, x)


class Everything(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.act = nn.GELU()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="reflect")
        self.unused = nn.LayerNorm(4)

    def forward(self, x):
        x = self.act(self.fc(x))
        x = torch.sigmoid(x) * x - 1
        x = torch.cat([x, x], 1)[:, :4]
        x = self.conv(x.view(-1, 1, 2, 2))
        return F.adaptive_avg_pool2d(x, 2).mean(1)


def test_every_unsupported_op_refused_in_one_message():
    with pytest.raises(UnsupportedError) as ei:
        qfx.quantize_model(Everything(), calib_data=torch.rand(8, 4))
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("cannot quantize Everything: 9 unsupported operations")
    for part in ("module 'act' (torch.nn.modules.activation.GELU)", "torch.sigmoid (fx node 'sigmoid'", "x * y",
                 "x - y", "torch.cat", "x[...]", "module 'conv'", "padding_mode='reflect'", "adaptive_avg_pool2d(x, 2)",
                 "Tensor.mean", "qfx activations are ReLU", "global average pool"):
        assert part in msg, part
    assert "unused" not in msg and "LayerNorm" not in msg


def test_module_only_models_keep_their_class_and_indices():
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 10))
    q = qfx.quantize_model(m)
    assert type(q.net) is nn.Sequential and isinstance(q.net[1], qn.QLinear) and isinstance(q.net[3], nn.Identity)

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.spare = nn.AdaptiveAvgPool2d(3)  # an attribute forward never calls

        def forward(self, x):
            return self.fc(x)

    q = qfx.quantize_model(Unused())
    assert type(q.net) is Unused and isinstance(q.net.fc, qn.QLinear) and isinstance(q.net.spare, nn.AdaptiveAvgPool2d)


def test_inplace_functions_are_seen_by_later_reads():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

        def forward(self, x):
            x = self.a(x)
            x.relu_()  # result unused: eager code reads the mutated x below
            return self.b(F.relu(x, inplace=True))

    torch.manual_seed(0)
    x = torch.randn(32, 6)
    q = qfx.quantize_model(M(), calib_data=x)
    relus = [n for n in q.net.graph.nodes if n.op == "call_module" and isinstance(q.net.get_submodule(n.target),
                                                                                  qn.QReLU)]
    assert len(relus) == 2 and relus[1].args[0] is relus[0]
    _assert_three_way(q, x)


def test_overrides_reach_inserted_modules():
    cfg = qfx.QFXConfig(act_width=8, overrides={"layer.0": {"add_width": 12}, "fc": {"weight_width": 4}})
    q = qfx.quantize_model(Net(), cfg)
    assert q.net.layer[0].add.out_quant.width == 12 and q.net.layer[1].add.out_quant.width == 8
    assert q.net.layer[0].conv1.weight_quant.width == 8 and q.net.fc.weight_quant.width == 4


def test_untraceable_forward_refused_with_reason():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(UnsupportedError, match="torch.fx cannot trace its forward .*control flow"):
        qfx.quantize_model(Branchy())


# ---------------------------------------------------------------------------------------------- global average pool
def _tie_case(layer_cls, **kw):
    """A 3x3 window whose exact sum * recip lies just below a rounding tie of the output grid, within float32's
    rounding of that product: float32 rounds onto the tie (then up), the exact product rounds down."""
    from qfx.nn.layers import avgpool_recip

    code, rf = avgpool_recip(9)
    f, g = 8, -1  # input ap_fixed<16,8>; output ap_fixed<8,9> (LSB 2)
    k = f + rf.frac_bits - g
    s = np.arange(0, 9 * 2**15, dtype=np.int64)
    p = s * code
    ulp = 2.0 ** (np.floor(np.log2(p + 1)) - 23)
    r = np.mod(p, 1 << k)
    s0 = int(s[(r < 1 << (k - 1)) & (r > (1 << (k - 1)) - ulp / 2)][0])
    codes = np.full(9, s0 // 9)
    codes[0] += s0 - codes.sum()
    x = torch.tensor(codes / 2.0**f, dtype=torch.float32).reshape(1, 1, 3, 3)
    m = nn.Sequential(qn.QuantInput(16, 8), layer_cls(**kw, out_width=8))
    m[1].out_quant.int_bits_param.data.fill_(8 - g)
    yt = m(x).detach().double()
    with qn.mode(m, "exact"):
        ye = m(x)
    return yt, ye


def test_global_avg_pool_train_equals_exact_at_rounding_ties():
    """Non-power-of-two windows: the product sum * recip must not be rounded before the output quantizer."""
    yt, ye = _tie_case(QGlobalAvgPool2d)
    assert torch.equal(yt, ye)
    torch.manual_seed(0)
    for width, hw in ((8, 7), (12, 5), (16, 3)):
        m = nn.Sequential(qn.QuantInput(width, 2), QGlobalAvgPool2d(keepdim=False, out_width=8))
        x = torch.randn(256, 3, hw, hw)
        qn.calibrate(m, x)
        with qn.mode(m, "exact"):
            ye = m(x)
        assert ye.shape == (256, 3) and torch.equal(m(x).double(), ye)


@pytest.mark.xfail(strict=True, reason="QAvgPool2d (qfx/nn/layers.py) forms sum * recip in float32: one LSB off "
                   "exact mode just below a rounding tie; remove this xfail when it computes the product in float64")
def test_avgpool2d_train_equals_exact_at_rounding_ties():
    yt, ye = _tie_case(qn.QAvgPool2d, kernel_size=3)
    assert torch.equal(yt, ye)


def test_bn_folding_follows_the_graph():
    """BNs inside user blocks (not in a Sequential) fold too, at conversion (float) and afterwards (qfx)."""
    torch.manual_seed(0)
    x = _data(128)
    f = Net()
    f.train()
    for _ in range(3):
        f(x)  # running statistics
    f.eval()
    qf = qfx.quantize_model(f, qfx.QFXConfig(fold_bn=True), x)
    called = [qf.net.get_submodule(n.target) for n in qf.net.graph.nodes if n.op == "call_module"]
    assert not any(isinstance(m, (nn.BatchNorm2d, qn.QBatchNorm2d)) for m in called)
    assert isinstance(qf.net.layer[0].bn1, nn.Identity) and qf.net.layer[0].conv1.bias is not None
    _assert_three_way(qf, x)

    q = qfx.quantize_model(f, qfx.QFXConfig(), x)
    q.eval()
    y = q(x)
    folded = qn.fold_bn(q)
    called = [folded.net.get_submodule(n.target) for n in folded.net.graph.nodes if n.op == "call_module"]
    assert sum(isinstance(m, qn.QBatchNorm2d) for m in called) == 0
    assert (folded(x).argmax(1) == y.argmax(1)).float().mean() > 0.8
    _assert_three_way(folded, x)


def test_grouped_dilated_and_1d_layers():
    """What the layers support (depthwise/dilated/'same' Conv2d, Conv1d and the 1-D pools) converts too."""

    class OneD(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv1d(2, 4, 3, padding="same")
            self.bn = nn.BatchNorm1d(4)
            self.pool = nn.MaxPool1d(2)
            self.avg = nn.AvgPool1d(2)
            self.fc = nn.Linear(16, 3)

        def forward(self, x):
            return self.fc(torch.flatten(self.avg(self.pool(F.relu(self.bn(self.c1(x))))), 1))

    class Depthwise(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.dw = nn.Conv2d(2, 2, 3, padding=2, dilation=2, groups=2)
            self.pw = nn.Conv2d(2, 4, 1)

        def forward(self, x):
            return F.adaptive_avg_pool2d(F.relu(self.pw(F.relu(self.dw(x)))), 1).flatten(1)

    torch.manual_seed(0)
    for model, x in ((OneD(), torch.randn(64, 2, 16)), (Depthwise(), torch.randn(64, 2, 6, 6))):
        q = qfx.quantize_model(model, qfx.QFXConfig(), x)
        kinds = {type(m).__name__ for m in q.modules() if isinstance(m, qn.QModule)}
        assert kinds >= ({"QConv1d", "QMaxPool1d", "QAvgPool1d"} if isinstance(model, OneD) else {"QConv2d"})
        _assert_three_way(q, x)

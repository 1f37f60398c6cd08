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
        self.act = nn.CELU()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, padding_mode="circular")
        self.sp = nn.Softplus(beta=2)
        self.unused = nn.LayerNorm(4)

    def forward(self, x):
        x = self.act(self.fc(x))
        x = torch.sigmoid(x) * x / (x - 1) + torch.erf(x)  # converts, except erf
        x = torch.cat([x, x], 0)[1:, :4]
        x = self.conv(x.view(-1, 1, 2, 2))
        x = F.interpolate(x, scale_factor=2, mode="bicubic") + F.pad(x, (1, 1, 1, 1), mode="circular").flip(0)
        return self.sp(torch.flatten(x, 1)).softmax(0)


def test_every_unsupported_op_refused_in_one_message():
    with pytest.raises(UnsupportedError) as ei:
        qfx.quantize_model(Everything(), calib_data=torch.rand(8, 4))
    msg = str(ei.value)
    assert "\n" not in msg and msg.startswith("cannot quantize Everything: 10 unsupported operations"), msg
    for part in ("module 'act' (torch.nn.modules.activation.CELU)", "torch.erf (fx node 'erf'",
                 "torch.cat(dim=0)", "x[...]", "module 'conv'", "padding_mode='circular'",
                 "mode='bicubic'", "mode='circular'", "Tensor.flip", "Softplus(beta=2)", "softmax over dim=0",
                 "qfx activations are ReLU"):
        assert part in msg, part
    assert "unused" not in msg and "LayerNorm" not in msg and "node 'sigmoid'" not in msg and "node 'mul'" not in msg
    assert "truediv" not in msg  # x / (x - 1): a reciprocal table and QMul


def test_module_only_models_keep_their_class_and_indices():
    m = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 10))
    q = qfx.quantize_model(m)
    assert type(q.net) is nn.Sequential and isinstance(q.net[1], qn.QLinear)
    assert type(q.net[3]).__name__ == "QTrainOnly" and q.net[3].module.p == 0.3  # dropout: random in train mode only

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


# ---------------------------------------------------------------------------------------------- every conversion
class _Fn(nn.Module):
    """``forward = fn(self, x)`` around two small layers (so the op under test sees learned values)."""

    def __init__(self, fn, shape, mods=None) -> None:
        super().__init__()
        c = shape[0]
        self.fn = fn
        self.pre = nn.Conv2d(c, c, 1) if len(shape) == 3 else (nn.Conv1d(c, c, 1) if len(shape) == 2
                                                                 else nn.Linear(c, c))
        self.pre2 = type(self.pre)(*(c, c, 1) if len(shape) > 1 else (c, c))
        self.m = nn.ModuleDict(mods or {})

    def forward(self, x):
        return self.fn(self, self.pre(x), self.pre2(x))


def _isub(s, a, b):
    a -= b
    return a


def _adaptive2d(s, a, b):
    return torch.cat([torch.flatten(t, 1) for t in (s.m["ap"](a), s.m["mp"](b), F.adaptive_avg_pool2d(b, 2),
                                                     F.adaptive_max_pool2d(a, (2, 1)))], 1)


def _adaptive1d(s, a, b):
    return s.m["ap"](a).flatten(1) + s.m["mp"](b).flatten(1) + torch.cat([a.mean(-1), F.adaptive_max_pool1d(b, 1)
                                                                           .flatten(1)], 1)


V, IMG, SEQ = (6,), (3, 4, 4), (3, 8)
CASES = {  # id: (forward(self, a, b), per-sample input shape, {name: module}, qfx classes that must appear)
    "sub": (lambda s, a, b: a - b, IMG, None, {"QSub"}),
    "isub": (_isub, V, None, {"QSub"}),
    "torch.sub": (lambda s, a, b: torch.sub(a, b), V, None, {"QSub"}),
    "rsub_tensor": (lambda s, a, b: torch.rsub(a, b), V, None, {"QSub"}),
    "mul": (lambda s, a, b: a * b, IMG, None, {"QMul"}),
    "torch.mul": (lambda s, a, b: torch.mul(a, b) + a.mul(b), V, None, {"QMul", "QAdd"}),
    "consts": (lambda s, a, b: (a * 0.5 + 1) / 4 - 0.375 + (1 - b) * 3 + (-a), V, None, {"QConstScale"}),
    "consts_methods": (lambda s, a, b: a.mul(2).div(3).sub(0.1) + torch.add(b, 2, alpha=0.5), IMG, None,
                       {"QConstScale"}),
    "cat": (lambda s, a, b: torch.cat([a, b, a], 1), IMG, None, {"QCat"}),
    "cat_last": (lambda s, a, b: torch.cat((a, b), dim=-1), V, None, {"QCat"}),
    "upsample": (lambda s, a, b: s.m["up"](a) + F.interpolate(b, scale_factor=2), IMG,
                 {"up": nn.Upsample(scale_factor=2)}, {"QUpsample"}),
    "group_instance_norm": (lambda s, a, b: s.m["gn"](torch.cat([a, b], 1)) + s.m["inn"](torch.cat([b, a], 1))
                            + s.m["in0"](torch.cat([a, a], 1)), IMG,
                            {"gn": nn.GroupNorm(2, 6), "inn": nn.InstanceNorm2d(6, affine=True),
                             "in0": nn.InstanceNorm2d(6)}, {"QGroupNorm"}),
    "bilinear": (lambda s, a, b: s.m["up"](a) + F.interpolate(b, scale_factor=(2, 3), mode="bilinear"), IMG,
                 {"up": nn.Upsample(scale_factor=(2, 3), mode="bilinear", align_corners=False)}, {"QUpsampleBilinear"}),
    "upsample_2x1": (lambda s, a, b: F.interpolate(a, scale_factor=(2, 1), mode="nearest-exact"), IMG, None,
                     {"QUpsample"}),
    "zeropad": (lambda s, a, b: s.m["p"](a) + F.pad(b, (1, 0, 2, 1)), IMG, {"p": nn.ZeroPad2d((1, 0, 2, 1))},
                {"QZeroPad2d"}),
    "edge_pads": (lambda s, a, b: s.m["rp"](a) + F.pad(b, (1, 0, 2, 1), mode="reflect") + s.m["c"](a)
                  + F.pad(s.m["c1"](b), (1, 0, 2, 1), mode="replicate") + s.m["fp"](a), IMG,
                  {"rp": nn.ReplicationPad2d((1, 0, 2, 1)), "fp": nn.ReflectionPad2d((1, 0, 2, 1)),
                   "c": nn.Conv2d(3, 3, 2, padding=(2, 1), padding_mode="reflect"),
                   "c1": nn.Conv2d(3, 3, 3, padding=1, padding_mode="replicate")}, {"QZeroPad2d", "QConv2d"}),
    "activations": (lambda s, a, b: sum(m(a) for m in s.m.values()), V,
                    {"sig": nn.Sigmoid(), "tanh": nn.Tanh(), "silu": nn.SiLU(), "gelu": nn.GELU(),
                     "hs": nn.Hardsigmoid(), "hw": nn.Hardswish(), "lr": nn.LeakyReLU(0.2), "elu": nn.ELU(0.5),
                     "sp": nn.Softplus()}, {"QActivation"}),
    "functional_acts": (lambda s, a, b: torch.sigmoid(a) + F.silu(b) + F.gelu(a, approximate="tanh") + a.tanh()
                        + F.leaky_relu(b, 0.1) + F.elu(a) + F.softplus(b) + F.hardswish(a) + F.hardsigmoid(b)
                        + b.sigmoid(), IMG, None, {"QActivation"}),
    "clips": (lambda s, a, b: s.m["r6"](a) + F.relu6(b) + s.m["ht"](a) + s.m["ht0"](b) + torch.clamp(a, -1, 1)
              + b.clamp(max=0.5) + F.hardtanh(a, -0.25, 0.75) + torch.clamp(b, -0.3, 0.7) + a.clamp(0, 0.7), V,
              {"r6": nn.ReLU6(), "ht": nn.Hardtanh(-0.5, 1.5), "ht0": nn.Hardtanh(0, 3)}, {"QClippedReLU", "QClip"}),
    "softmax": (lambda s, a, b: s.m["sm"](a) + F.softmax(b, dim=-1) + torch.softmax(a, 1) + b.softmax(1), V,
                {"sm": nn.Softmax(dim=1)}, {"QSoftmax"}),
    "adaptive2d": (_adaptive2d, IMG, {"ap": nn.AdaptiveAvgPool2d((2, 2)), "mp": nn.AdaptiveMaxPool2d(2)},
                   {"QAdaptiveAvgPool2d", "QAdaptiveMaxPool2d"}),
    "global_max": (lambda s, a, b: s.m["g"](a).flatten(1) + a.amax((2, 3)) + F.adaptive_max_pool2d(b, 1).flatten(1),
                   IMG, {"g": nn.AdaptiveMaxPool2d(1)}, {"QAdaptiveMaxPool2d"}),
    "adaptive1d": (_adaptive1d, SEQ, {"ap": nn.AdaptiveAvgPool1d(2), "mp": nn.AdaptiveMaxPool1d(2)},
                   {"QAdaptiveAvgPool2d", "QAdaptiveMaxPool2d"}),
    "bn_no_affine": (lambda s, a, b: s.m["bn"](a) + s.m["bn1"](b.view(-1, 3, 16)).view(-1, 3, 4, 4), IMG,
                     {"bn": nn.BatchNorm2d(3, affine=False), "bn1": nn.BatchNorm1d(3, affine=False)},
                     {"QBatchNorm2d", "QBatchNorm1d"}),
    "prelu": (lambda s, a, b: s.m["p1"](a) + s.m["pc"](b), IMG, {"p1": nn.PReLU(), "pc": nn.PReLU(3, 0.1)},
              {"QPReLU"}),
    "prelu_vector": (lambda s, a, b: s.m["p"](a) - b, V, {"p": nn.PReLU(6)}, {"QPReLU", "QSub"}),
    "conv_transpose": (lambda s, a, b: s.m["ct"](a) + s.m["dw"](b), IMG,
                       {"ct": nn.ConvTranspose2d(3, 2, 3, 2, 1, output_padding=1),
                        "dw": nn.ConvTranspose2d(3, 2, 2, 2, 1, groups=1, dilation=3, bias=False)},
                       {"QConvTranspose2d"}),
    "conv_transpose_groups": (lambda s, a, b: s.m["g"](a - b), IMG, {"g": nn.ConvTranspose2d(3, 6, (3, 2), (1, 2), 1,
                                                                                            groups=3)},
                              {"QConvTranspose2d"}),
    "conv_transpose1d": (lambda s, a, b: s.m["ct"](a).flatten(1) + s.m["ct2"](b).flatten(1), SEQ,
                         {"ct": nn.ConvTranspose1d(3, 2, 4, 2, 1), "ct2": nn.ConvTranspose1d(3, 2, 2, 2)},
                         {"QConvTranspose1d"}),
    "sum_max_min": (lambda s, a, b: a.sum((2, 3)) + torch.max(b.flatten(2), 2)[0] + a.amin((-2, -1))
                    + torch.min(b.flatten(2), dim=-1).values,
                    IMG, None, {"QSum", "QAdaptiveMaxPool2d"}),
    "channel_reductions": (lambda s, a, b: torch.cat([torch.mean(a, dim=1, keepdim=True),
                                                      torch.max(b, dim=1, keepdim=True)[0],
                                                      a.sum(1).unsqueeze(1), b.amin(1, keepdim=True),
                                                      s.m["c"](a.flatten(2).max(1)[0].unsqueeze(1)).view(-1, 1, 4, 4)],
                                                     1), IMG,
                           {"c": nn.Conv1d(1, 1, 3, padding=1)}, {"QAdaptiveAvgPool2d", "QSum"}),
    "feature_sum": (lambda s, a, b: a * torch.sum(b, 1, keepdim=True) - a.max(dim=1, keepdim=True)[0], V, None,
                    {"QSum", "QAdaptiveMaxPool2d", "QMul"}),
}


def _run(q, x):
    return q(*x) if isinstance(x, tuple) else q(x)


def _check_exact(q, x):
    """train mode == exact mode == golden interpreter on the captured IR (several inputs too), bit for bit."""
    q.eval()
    xs = x if isinstance(x, tuple) else (x,)
    g = capture(q, tuple(t[:1] for t in xs) if len(xs) > 1 else xs[0][:1])
    with torch.no_grad():
        with qn.mode(q, "exact"):
            ye = _run(q, x).numpy()
        yt = _run(q, x).double().numpy()
    codes = {t: g.tensor(t).fmt.to_int(v.double().numpy()) for t, v in zip(g.inputs, xs)}
    fout = g.tensor(g.outputs[0]).fmt
    yi = fout.from_int(run(g, codes if len(codes) > 1 else codes[g.inputs[0]]))
    np.testing.assert_array_equal(yi.reshape(ye.shape), ye)
    np.testing.assert_array_equal(yt, ye)
    return g


@pytest.mark.parametrize("case", list(CASES))
def test_each_conversion_trains_and_is_exact(case):
    fn, shape, mods, kinds = CASES[case]
    torch.manual_seed(0)
    x = torch.randn(48, *shape)
    q = qfx.quantize_model(_Fn(fn, shape, mods), qfx.QFXConfig(act_width=8), x)
    got = {type(m).__name__ for m in q.modules() if isinstance(m, qn.QModule)}
    assert kinds <= got, got
    assert not any(type(m).__module__.startswith("torch.nn.modules.activation") for m in q.modules())
    q.train()
    out = q(x)
    out.square().mean().backward()
    missing = [k for k, p in q.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    w = q.net.pre.weight
    assert w.grad.abs().sum() > 0  # gradients reach the layer before the op under test
    opt = torch.optim.SGD(q.parameters(), 0.05)
    before = w.detach().clone()
    opt.step()
    assert not torch.equal(before, w.detach())
    _check_exact(q, x)


def test_constants_quantize_exactly_when_short_and_round_otherwise():
    from qfx.nn.extra_layers import const_code

    for v in (0.5, -0.375, 3.0, 12.0, -1.0, 0.0, 2.0**-20):
        code, f = const_code(v)
        assert float(f.from_int(code)) == v and f.signed and f.width >= 2
    code, f = const_code(1 / 3)  # 16 significant bits
    assert code == 43691 and f.frac_bits == 17 and abs(f.from_int(code) - 1 / 3) < 2.0**-17
    # identities (Python's sum() starts at 0 + x; x * 1) compute nothing: no layer, no extra rounding
    q = qfx.quantize_model(_Fn(lambda s, a, b: sum([a, b]) * 1 - 0, V), calib_data=torch.randn(8, *V))
    assert {type(k).__name__ for k in q.modules() if isinstance(k, qn.QModule)} == {"QuantInput", "QLinear", "QAdd"}


def test_adaptive_max_pool_that_does_not_divide_is_refused_before_training():
    """(Adaptive average pools of any size are QResize2d's 'area' matrices: tests/test_idioms8.py.)"""
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveMaxPool2d(4))
    with pytest.raises(UnsupportedError, match=r"output size 4 does not divide the input size \(6, 6\)"):
        qfx.quantize_model(m, calib_data=torch.randn(4, 1, 8, 8))
    m = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False))
    with pytest.raises(UnsupportedError, match="track_running_stats=True"):
        qfx.quantize_model(m)


class TwoIn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(5, 4), nn.Linear(3, 4), nn.Linear(8, 2)

    def forward(self, x, y):
        a, b = F.relu(self.a(x)), torch.tanh(self.b(y))
        return self.head(torch.cat([a * b, a - b], 1))


def test_two_input_model_gets_one_quantizer_per_input(tmp_path):
    torch.manual_seed(0)
    x, y = torch.rand(64, 5), torch.randn(64, 3)  # x has no negatives: its input format is unsigned
    q = qfx.quantize_model(TwoIn(), qfx.QFXConfig(), (x, y))
    assert isinstance(q, torch.fx.GraphModule) and type(q).__name__ == "TwoIn"
    assert not q.quant_x.fmt.signed and q.quant_y.fmt.signed
    opt = torch.optim.Adam(q.parameters(), 1e-2)
    for _ in range(2):
        opt.zero_grad()
        q(x, y).square().mean().backward()
        opt.step()
    g = _check_exact(q, (x, y))
    assert len(g.inputs) == 2 and [g.tensor(t).shape for t in g.inputs] == [(5,), (3,)]
    qfx.export(q, (x[:1], y[:1]), "rtl", tmp_path / "r")  # one AXI4-Stream port per input
    assert "s1_axis_tdata" in (tmp_path / "r" / "README.md").read_text()


def test_supported_table_lists_every_twin():
    from qfx.nn.trace import FUNCTION_TWINS, MODULE_TWINS, supported_table

    t = supported_table()
    for cls in MODULE_TWINS:
        assert cls.__name__.lstrip("_").replace("ConstantPadNd", "ZeroPad2d").replace("DropoutNd", "Dropout") in t
    assert "`F.interpolate`" in t and "`x * y`" in t and "`.softmax()`" in t and "QConstScale" in t
    assert len({s.twin for s in FUNCTION_TWINS.values() if s.twin}) >= 15


def test_readme_lists_what_the_tables_convert():
    """README's 'What quantize_model converts' is the generated table (regenerate it after changing the tables)."""
    from pathlib import Path

    from qfx.nn.trace import REFUSED, supported_table

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert supported_table() in text
    for what, instead in REFUSED:
        assert f"- {what}: {instead}" in text


def test_sizes_computed_in_forward_are_refused():
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c = nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            y = self.c(x)
            z = F.adaptive_avg_pool2d(y, y.shape[-1] // 2) + F.adaptive_max_pool2d(y, y.size(2))
            return z.view(y.size(0), z.shape[1] * 4)

    with pytest.raises(UnsupportedError) as ei:
        qfx.quantize_model(M())
    msg = str(ei.value)
    assert msg.startswith("cannot quantize M: 3 unsupported operations:") and "floordiv" not in msg
    assert "adaptive_avg_pool2d (fx node 'adaptive_avg_pool2d' in forward): uses a size computed" in msg
    assert "adaptive_max_pool2d' in forward): takes a tensor size read in forward" in msg
    assert "Tensor.view (fx node 'view' in forward): uses a size computed" in msg


def test_max_min_of_two_tensors_are_exact():
    """torch.maximum / torch.max(x, y) / .minimum: y + relu(x - y) and x - relu(x - y) with lossless QSub/QReLU/QAdd:
    the exact-mode result is the max/min of the operands' values, and train == exact == interpreter."""
    class M(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1, self.c2 = nn.Conv2d(1, 2, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1)

        def forward(self, x):
            a, b = self.c1(x), F.relu(self.c2(x))
            return torch.cat([torch.maximum(a, b), torch.max(b, a), a.minimum(b), torch.min(a, other=b)], 1)

    torch.manual_seed(0)
    x = _data(16)
    q = qfx.quantize_model(M(), qfx.QFXConfig(weight_width=6, act_width=6), x)
    gm = q.net
    kinds = [type(gm.get_submodule(n.target)).__name__ for n in gm.graph.nodes if n.op == "call_module"]
    assert kinds.count("QSub") == 6 and kinds.count("QAdd") == 2 and kinds.count("QReLU") == 5
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    outs: list[torch.Tensor] = []
    mods = [n.target for n in gm.graph.nodes if n.op == "call_module" and n.target.startswith(("max", "min"))]
    hooks = [gm.get_submodule(t).register_forward_hook(
        (lambda m, i, o: seen.append((i[0], i[1]))) if "_diff" in t else
        (lambda m, i, o: outs.append(o)) if "_relu" not in t else (lambda m, i, o: None)) for t in mods]
    q.eval()
    with qn.mode(q, "exact"):
        q(x)
    for h in hooks:
        h.remove()
    assert len(seen) == 4 and len(outs) == 4
    want = [torch.maximum(*seen[0]), torch.maximum(*seen[1]), torch.minimum(*seen[2]), torch.minimum(*seen[3])]
    for got, w in zip(outs, want):
        assert torch.equal(got, w)
    assert not torch.equal(want[0], want[2])  # the operands differ somewhere: max and min do not coincide
    g = _assert_three_way(q, x)
    ops = [n.op.value for n in g.nodes]
    assert ops.count("sub") == 6 and ops.count("add") == 2

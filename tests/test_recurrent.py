"""nn.LSTM / nn.GRU / nn.RNN unrolled over a fixed sequence length into what one step computes (an nn.Linear for
the input and one for the state, shared by every step, the gates through sigmoid/tanh tables, QMul, QAdd): the
quantized model follows the float one, train mode == exact mode == interpreter == onnxruntime on the qfx ONNX,
g++ C simulation and Verilator agree; what is not unrolled is refused in one line."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import qfx
from qfx.errors import UnsupportedError

from models.harness import csim_agrees, exact_check, square_loss_steps

CFG = dict(weight_width=8, act_width=8)


class LastStep(nn.Module):
    """The usual sequence classifier: LSTM(batch_first), the last step's output to a Linear."""

    def __init__(self, layers: int = 1) -> None:
        super().__init__()
        self.rnn, self.head = nn.LSTM(4, 6, num_layers=layers, batch_first=True), nn.Linear(6, 3)

    def forward(self, x):
        out, (h, c) = self.rnn(x)
        return self.head(out[:, -1])


class FinalStates(nn.Module):
    """A 2-layer bidirectional LSTM read through h_n (the last layer's two directions) and c_n."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 5, num_layers=2, batch_first=True, bidirectional=True, dropout=0.1)
        self.head = nn.Linear(15, 3)

    def forward(self, x):
        _, (h, c) = self.rnn(x)
        return self.head(torch.cat([h[-2], h[-1], c[-1]], 1))


class GruSeqFirst(nn.Module):
    """GRU the sequence-first way (x.transpose(0, 1) in, out[-1] and h_n.squeeze(0) out) beside a ReLU RNN whose
    whole output sequence is flattened."""

    def __init__(self) -> None:
        super().__init__()
        self.gru, self.rnn = nn.GRU(4, 6), nn.RNN(4, 3, nonlinearity="relu", batch_first=True)
        self.head = nn.Linear(6 + 6 + 3 * 5, 3)

    def forward(self, x):
        out, h = self.gru(x.transpose(0, 1))
        seq, _ = self.rnn(x)
        return self.head(torch.cat([out[-1], h.squeeze(0), seq.flatten(1)], 1))


class TutorialLSTM(nn.Module):
    """The tutorial way: zero initial states made in forward and passed in, moved to the input's device."""

    def __init__(self) -> None:
        super().__init__()
        self.num_layers, self.hidden_size = 2, 5
        self.lstm, self.gru, self.fc = nn.LSTM(4, 5, 2, batch_first=True), nn.GRU(4, 3, batch_first=True), \
            nn.Linear(8, 3)

    def forward(self, x):
        h0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size).to(x.device)
        c0 = torch.zeros(self.num_layers, x.size(0), self.hidden_size).to(x.device)
        out, _ = self.lstm(x, (h0, c0))
        _, h = self.gru(x, x.new_zeros(1, x.size(0), 3))
        return self.fc(torch.cat([out[:, -1, :], h[-1]], 1))


MODELS = {"tutorial": TutorialLSTM, "last_step": LastStep, "two_layers": lambda: LastStep(2), "final_states": FinalStates,
          "gru_rnn": GruSeqFirst}


def _quantized(name: str, n: int = 64, seed: int = 0):
    torch.manual_seed(seed)
    f = MODELS[name]().eval()
    x = torch.randn(n, 5, 4)
    q = qfx.quantize_model(f, qfx.QFXConfig(**CFG), calib_data=x)
    return f, q, x


@pytest.mark.parametrize("name", sorted(MODELS))
def test_recurrent_layers_unroll_and_agree(name):
    from qfx.ir import run
    from qfx.onnx.export import to_onnx_model
    from qfx.onnx.runtime import run_onnx_codes

    f, q, x = _quantized(name)
    q.eval()
    with torch.no_grad():
        err = float((q(x) - f(x)).abs().max() / f(x).abs().max())
    assert err < 0.1, err  # 8-bit formats follow the float recurrence over 5 steps
    assert not any(isinstance(m, nn.RNNBase) for m in q.modules())  # the float layer's weights live in the Linears
    square_loss_steps(q, x, 2)
    g, exact_vs_interp, train_vs_exact = exact_check(q, x)
    assert exact_vs_interp == 0 and train_vs_exact == 0
    codes = np.asarray(g.tensor(g.inputs[0]).fmt.to_int(x.double().numpy()), dtype=np.int64)
    np.testing.assert_array_equal(run_onnx_codes(to_onnx_model(g).SerializeToString(), g, codes), run(g, codes))


def test_unrolled_steps_share_their_layers():
    _, q, _ = _quantized("last_step")
    linears = [m for m in q.modules() if isinstance(m, qfx.nn.QLinear)]
    assert len(linears) == 3  # input and state Linears, shared by the 5 steps, and the head


def test_recurrent_training_reduces_the_loss():
    torch.manual_seed(3)
    x = torch.randn(256, 5, 4)
    y = (x[:, :, 0].cumsum(1)[:, -1] > 0).long()
    q = qfx.quantize_model(LastStep(), qfx.QFXConfig(**CFG), calib_data=x)
    opt = torch.optim.Adam(q.parameters(), lr=2e-2)
    losses = []
    for _ in range(40):
        loss = nn.functional.cross_entropy(q(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses


def test_initial_state_and_projections_stay_refused_in_one_line():
    class WithState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, 6, batch_first=True)

        def forward(self, x):  # ones: a state qfx does not start from (zeros are the default state: see above)
            return self.rnn(x, torch.ones(1, x.shape[0], 6))[0][:, -1]

    class Projected(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 6, batch_first=True, proj_size=3)

        def forward(self, x):
            return self.rnn(x)[0][:, -1]

    for m in (WithState(), Projected()):
        with pytest.raises(UnsupportedError) as ei:
            qfx.quantize_model(m, qfx.QFXConfig(), calib_data=torch.randn(8, 5, 4))
        assert "\n" not in str(ei.value)


@pytest.mark.gxx
def test_recurrent_csim(tmp_path):
    for name in ("two_layers", "gru_rnn"):
        _, q, x = _quantized(name, n=32)
        csim_agrees(q, x, tmp_path / name, 24)


@pytest.mark.verilator
def test_recurrent_rtl_cosim(tmp_path):
    from qfx.backends import rtl
    from qfx.ir.passes import DEFAULT_FLOW, run_flow
    from qfx.sim.cosim import run_cosim_many

    dirs = []
    for name in ("last_step", "gru_rnn"):
        _, q, x = _quantized(name, n=32)
        g = dataclasses.replace(run_flow(exact_check(q, x)[0], DEFAULT_FLOW).graph, name=f"rec_{name}")
        rtl.write_project(g, tmp_path / name)
        dirs.append(tmp_path / name)
    for rep in run_cosim_many(dirs, n_vectors=24, seed=6, work_dir=tmp_path / "w"):
        assert rep.ok and rep.mismatches == 0 and rep.received, (rep.top, rep.mismatches, rep.received)

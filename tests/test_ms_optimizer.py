"""tkfac_ms.TKFAC trained in GRAPH_MODE against reference_torch.TKFAC, plus its schedules.

A float64 Dense-only MLP starts from the same weights in both frameworks and is trained for 5
steps; parameters, factors and inverses must agree to 1e-9 relative (measured: ~1e-14). The
learning rates are dyadic because ``nn.Optimizer`` keeps the learning rate in float32.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor, nn, ops
from testing_utils import rel_err

import reference_torch
import tkfac_ms

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")

N, D_IN, HIDDEN, CLASSES = 12, 6, 5, 4
PARITY_TOL = 1e-9


class MsMLP(nn.Cell):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Dense(D_IN, HIDDEN, dtype=ms.float64)
        self.fc2 = nn.Dense(HIDDEN, CLASSES, dtype=ms.float64)

    def construct(self, x):
        return self.fc2(ops.tanh(self.fc1(x)))


class CrossEntropy(nn.Cell):
    """Mean softmax cross-entropy in the logits' precision (see train_cell._log_softmax)."""

    def __init__(self, net, reduction="mean"):
        super().__init__(auto_prefix=False)
        self.net = net
        self.mean = reduction == "mean"

    @property
    def backbone_network(self):
        return self.net

    def construct(self, x, y):
        logits = self.net(x)
        z = logits - logits.max(axis=-1, keepdims=True)
        logp = z - ops.log(ops.exp(z).sum(axis=-1, keepdims=True))
        onehot = ops.one_hot(y, logits.shape[-1], Tensor(1.0, ms.float32), Tensor(0.0, ms.float32))
        nll = -(ops.cast(onehot, logp.dtype) * logp).sum(axis=-1)
        return nll.mean() if self.mean else nll.sum()


def make_pair(seed: int = 0):
    torch.manual_seed(seed)
    tnet = torch.nn.Sequential(
        torch.nn.Linear(D_IN, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, CLASSES)
    ).double()
    net = MsMLP()
    for tl, ml in ((tnet[0], net.fc1), (tnet[2], net.fc2)):
        ml.weight.set_data(Tensor(tl.weight.detach().numpy().copy()))
        ml.bias.set_data(Tensor(tl.bias.detach().numpy().copy()))
    return tnet, net


def data(step: int):
    rng = np.random.default_rng(100 + step)
    x = rng.standard_normal((N, D_IN))
    y = rng.integers(0, CLASSES, N)
    s = rng.integers(0, CLASSES, N)
    return x, y, s


@dataclass(frozen=True)
class Run:
    """One parity configuration (keyword arguments shared by both optimizers)."""

    name: str
    approximation: str
    fisher: str = "empirical"
    kwargs: dict = field(default_factory=dict)
    lr: float | list = 0.125


LR_STEPS = [0.25, 0.125, 0.125, 0.0625, 0.0625]
DAMP_STEPS = [0.05, 0.02, 0.01]
RUNS = [
    Run("tkfac_nor", "tkfac_nor"),
    Run("tkfac_new", "tkfac_new", kwargs={"nu": 0.5}),
    Run("kfac", "kfac"),
    Run("tkfac_nor_true_fisher", "tkfac_nor", fisher="true"),
    Run(
        "tkfac_nor_schedules_wd_kl",
        "tkfac_nor",
        lr=LR_STEPS,
        kwargs={"weight_decay": 0.01, "kl_clip": 1e-3, "damping": DAMP_STEPS},
    ),
    Run("kfac_sum_loss", "kfac", kwargs={"loss_reduction": "sum"}),
]


@pytest.mark.slow
@pytest.mark.parametrize("run", RUNS, ids=lambda r: r.name)
def test_five_steps_match_reference(run: Run):
    common = {
        "momentum": 0.9,
        "damping": 0.01,
        "factor_decay": 0.9,
        "factor_update_steps": 2,
        "inv_update_steps": 3,
        **run.kwargs,
    }
    reduction = common.get("loss_reduction", "mean")
    tnet, net = make_pair()
    t_kwargs = dict(common)
    if isinstance(common["damping"], list):
        t_kwargs["damping"] = lambda t: DAMP_STEPS[min(t, len(DAMP_STEPS) - 1)]
    t_lr = (lambda t: LR_STEPS[min(t, len(LR_STEPS) - 1)]) if isinstance(run.lr, list) else run.lr
    topt = reference_torch.TKFAC(
        tnet,
        lr=t_lr,
        approximation=run.approximation,
        fisher=run.fisher,
        factor_dtype=torch.float64,
        **t_kwargs,
    )
    opt = tkfac_ms.TKFAC(
        net,
        run.lr,
        approximation=run.approximation,
        fisher=run.fisher,
        factor_dtype=ms.float64,
        **common,
    )
    cell = tkfac_ms.TKFACTrainOneStepCell(CrossEntropy(net, reduction), opt)

    worst = 0.0
    for step in range(5):
        x, y, s = data(step)
        topt.zero_grad()
        logits = tnet(torch.from_numpy(x))
        loss = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction=reduction)
        topt.sample_fisher_backward(logits, sampled_labels=torch.from_numpy(s))
        loss.backward()
        topt.step()
        args = (Tensor(x), Tensor(y.astype(np.int32)))
        if run.fisher == "true":
            args += (Tensor(s.astype(np.int32)),)
        ms_loss = cell(*args)
        assert rel_err(ms_loss.asnumpy(), loss.item()) < PARITY_TOL, f"loss, step {step}"
        for tl, name in ((tnet[0], "fc1"), (tnet[2], "fc2")):
            layer = getattr(net, name)
            for p_ms, p_t in ((layer.weight, tl.weight), (layer.bias, tl.bias)):
                err = rel_err(p_ms.asnumpy(), p_t.detach().numpy())
                worst = max(worst, err)
                assert err < PARITY_TOL, f"{p_ms.name} at step {step}: rel err {err:.3e}"
            state = topt.layer_state("0" if name == "fc1" else "2")
            for fld in ("a_factor", "g_factor", "a_inv", "g_inv"):
                err = rel_err(getattr(layer, fld).asnumpy(), getattr(state, fld).numpy())
                assert err < PARITY_TOL, f"{name}.{fld} at step {step}: rel err {err:.3e}"
            if run.approximation != "kfac":
                assert rel_err(layer.delta.asnumpy(), state.delta.numpy()) < PARITY_TOL
    if run.approximation == "tkfac_new":
        assert rel_err(opt.beta.asnumpy(), topt.beta.numpy()) < PARITY_TOL
    assert int(opt.tkfac_step.asnumpy()) == 5
    print(f"{run.name}: worst parameter rel err over 5 steps {worst:.2e}")


@pytest.mark.slow
def test_factors_and_inverses_change_only_on_their_steps():
    _, net = make_pair()
    opt = tkfac_ms.TKFAC(
        net,
        0.125,
        approximation="tkfac_nor",
        fisher="empirical",
        factor_update_steps=2,
        inv_update_steps=3,
        factor_dtype=ms.float64,
    )
    cell = tkfac_ms.TKFACTrainOneStepCell(CrossEntropy(net), opt)
    factor_steps, inverse_steps = [], []
    for step in range(7):
        before_f = net.fc1.a_factor.asnumpy().copy(), net.fc2.g_factor.asnumpy().copy()
        before_i = net.fc1.a_inv.asnumpy().copy(), net.fc2.g_inv.asnumpy().copy()
        x, y, _ = data(step)
        cell(Tensor(x), Tensor(y.astype(np.int32)))
        changed_f = [
            not np.array_equal(b, a.asnumpy())
            for b, a in zip(before_f, (net.fc1.a_factor, net.fc2.g_factor), strict=True)
        ]
        changed_i = [
            not np.array_equal(b, a.asnumpy())
            for b, a in zip(before_i, (net.fc1.a_inv, net.fc2.g_inv), strict=True)
        ]
        assert changed_f[0] == changed_f[1] and changed_i[0] == changed_i[1]
        if changed_f[0]:
            factor_steps.append(step)
        if changed_i[0]:
            inverse_steps.append(step)
    assert factor_steps == [0, 2, 4, 6]
    assert inverse_steps == [0, 3, 6]


def test_plain_parameters_get_momentum_and_skipped_layers_are_unwrapped():
    _, net = make_pair()
    w0 = net.fc2.weight.asnumpy().copy()
    opt = tkfac_ms.TKFAC(
        net, 0.125, momentum=0.0, fisher="empirical", skip=("fc2",), factor_dtype=ms.float64
    )
    assert opt.layer_names == ("fc1",)
    assert isinstance(net.fc1, tkfac_ms.TKFACDense) and isinstance(net.fc2, nn.Dense)
    cell = tkfac_ms.TKFACTrainOneStepCell(CrossEntropy(net), opt)
    x, y, _ = data(0)
    g = ms.grad(CrossEntropy(net), grad_position=None, weights=[net.fc2.weight])(
        Tensor(x), Tensor(y.astype(np.int32))
    )[0].asnumpy()
    cell(Tensor(x), Tensor(y.astype(np.int32)))
    np.testing.assert_allclose(net.fc2.weight.asnumpy(), w0 - 0.125 * g, rtol=1e-12, atol=1e-14)


def test_parameter_names_are_kept_and_state_is_named():
    _, net = make_pair()
    before = [p.name for p in net.trainable_params()]
    tkfac_ms.TKFAC(net, 0.1)
    assert [p.name for p in net.trainable_params()] == before
    names = {p.name for p in net.get_parameters()}
    for layer in ("fc1", "fc2"):
        for fld in ("delta", "a_factor", "g_factor", "a_inv", "g_inv"):
            assert f"{layer}.tkfac.{fld}" in names


@pytest.mark.slow
def test_learning_rate_schedule_cell_equals_per_step_list():
    schedule = nn.ExponentialDecayLR(0.25, 0.5, decay_steps=2, is_stair=True)
    per_step = [0.25 * 0.5 ** (t // 2) for t in range(5)]
    finals = []
    for lr in (schedule, per_step):
        _, net = make_pair(seed=3)
        opt = tkfac_ms.TKFAC(
            net,
            lr,
            fisher="empirical",
            factor_update_steps=2,
            inv_update_steps=2,
            factor_dtype=ms.float64,
        )
        cell = tkfac_ms.TKFACTrainOneStepCell(CrossEntropy(net), opt)
        for step in range(5):
            x, y, _ = data(step)
            cell(Tensor(x), Tensor(y.astype(np.int32)))
        finals.append(net.fc1.weight.asnumpy().copy())
    np.testing.assert_array_equal(finals[0], finals[1])
    _, net = make_pair(seed=3)
    assert not np.array_equal(finals[0], net.fc1.weight.asnumpy())

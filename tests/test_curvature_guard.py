"""A curvature update that is not usable never aborts training, in both frameworks.

Issue: an outlier batch (inputs x 1e10, loss still finite) made MindSpore's Cholesky kernel
raise ``Cholesky expects symmetric positive definite matrices``, leaving the step half-written;
the torch reference kept NaN factors for good after a NaN batch. Now both discard the whole
curvature update (factors and inverses), count it, and go on with the last good curvature.

TKFAC_new's damped factors cannot lose positive definiteness through a large batch: with
``delta~ = max(nu, delta)``, ``Phi~ = sqrt(delta~) Phi + (delta~ / d) I`` has eigenvalues in
``[delta~ / d, sqrt(delta~) + delta~ / d]`` (``tr Phi = 1``), so its condition number
``1 + d / sqrt(delta~)`` *falls* as ``delta`` grows. Its outlier update is accepted; its guard is
tested with a factor state made indefinite or NaN.
"""

from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import torch
from mindspore import Tensor, nn, ops

import reference_torch
import tkfac_ms

ms.set_context(mode=ms.GRAPH_MODE)
ms.set_device("CPU")

N, D_IN, HIDDEN, CLASSES = 16, 64, 32, 10
APPROXIMATIONS = ("tkfac_nor", "tkfac_new", "kfac")
#: approximations whose 1e10-batch factors are numerically singular in float32 (see docstring)
REJECTS_OUTLIER = {"tkfac_nor": True, "tkfac_new": False, "kfac": True}


class MsMLP(nn.Cell):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Dense(D_IN, HIDDEN)
        self.fc2 = nn.Dense(HIDDEN, CLASSES)

    def construct(self, x):
        return self.fc2(ops.relu(self.fc1(x)))


def batch(step: int, scale: float = 1.0):
    rng = np.random.default_rng(step)
    x = (rng.standard_normal((N, D_IN)) * scale).astype(np.float32)
    return x, rng.integers(0, CLASSES, N).astype(np.int32)


def build_ms(approximation: str, **kwargs):
    ms.set_seed(0)
    net = MsMLP()
    opt = tkfac_ms.TKFAC(
        net,
        0.01,
        approximation=approximation,
        fisher="empirical",
        factor_update_steps=kwargs.pop("factor_update_steps", 1),
        inv_update_steps=kwargs.pop("inv_update_steps", 1),
        **kwargs,
    )
    cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)
    cell.set_train()
    return opt, cell


def state(cell) -> dict[str, np.ndarray]:
    return {
        p.name: p.asnumpy().copy()
        for p in cell.get_parameters()
        if not p.name.startswith("tkfac_backup.")
    }


def curvature(cell) -> dict[str, np.ndarray]:
    return {k: v for k, v in state(cell).items() if ".tkfac." in k or k == "tkfac.beta"}


@pytest.mark.slow
@pytest.mark.parametrize("approximation", APPROXIMATIONS)
def test_outlier_batch_on_a_factor_step_does_not_abort_training(approximation):
    opt, cell = build_ms(approximation)
    for s in range(2):
        cell(*map(Tensor, batch(s)))
    before = curvature(cell)
    loss = cell(*map(Tensor, batch(99, scale=1e10)))  # a factor + inverse step: no exception
    assert np.isfinite(loss.asnumpy())
    rejected = int(opt.rejected_curvature_updates.asnumpy())
    assert rejected == int(REJECTS_OUTLIER[approximation])
    if rejected:  # nothing of the discarded update was written
        after = curvature(cell)
        assert all(np.array_equal(before[k], after[k]) for k in before), [
            k for k in before if not np.array_equal(before[k], after[k])
        ]
    for s in range(2, 5):  # training goes on
        cell(*map(Tensor, batch(s)))
    assert int(opt.tkfac_step.asnumpy()[0]) == 6
    assert all(np.isfinite(v).all() for v in state(cell).values())


@pytest.mark.slow
@pytest.mark.parametrize("approximation", APPROXIMATIONS)
@pytest.mark.parametrize("bad", ["indefinite", "nan"])
def test_unusable_factor_state_keeps_the_inverses_and_is_counted(approximation, bad):
    """An inverse-only step on a factor state that is indefinite (-I) or NaN."""
    opt, cell = build_ms(approximation, factor_update_steps=2, inv_update_steps=1)
    cell(*map(Tensor, batch(0)))  # step 0: factors + inverses
    d = opt.layers[0].a_factor.shape[0]
    value = -np.eye(d) if bad == "indefinite" else np.full((d, d), np.nan)
    opt.layers[0].a_factor.set_data(Tensor(value.astype(np.float32)))
    invs = {k: v for k, v in curvature(cell).items() if k.endswith("_inv")}
    cell(*map(Tensor, batch(1)))  # step 1: inverses only, rejected
    assert int(opt.rejected_curvature_updates.asnumpy()) == 1
    after = {k: v for k, v in curvature(cell).items() if k.endswith("_inv")}
    assert all(np.array_equal(invs[k], after[k]) for k in invs)
    assert int(opt.tkfac_step.asnumpy()[0]) == 2  # the parameter step itself was taken
    for k, v in state(cell).items():
        if k != opt.layers[0].a_factor.name:
            assert np.isfinite(v).all(), k


# ------------------------------------------------------------------ the torch reference
class TorchMLP(torch.nn.Sequential):
    def __init__(self):
        super().__init__(
            torch.nn.Linear(D_IN, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES)
        )


def torch_step(model, opt, x, y):
    opt.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(x)), torch.from_numpy(y).long())
    loss.backward()
    opt.step()
    return loss.item()


def build_torch(approximation: str):
    torch.manual_seed(0)
    model = TorchMLP()
    opt = reference_torch.TKFAC(
        model,
        lr=0.01,
        approximation=approximation,
        fisher="empirical",
        factor_update_steps=1,
        inv_update_steps=1,
    )
    return model, opt


def torch_curvature(opt) -> dict[str, torch.Tensor]:
    out = {}
    for name in opt.layer_names:
        st = opt.layer_state(name)
        for f in ("a_factor", "g_factor", "a_inv", "g_inv"):
            out[f"{name}.{f}"] = getattr(st, f).clone()
    return out


@pytest.mark.parametrize("approximation", APPROXIMATIONS)
def test_reference_outlier_batch_does_not_abort_training(approximation):
    model, opt = build_torch(approximation)
    for s in range(2):
        torch_step(model, opt, *batch(s))
    before = torch_curvature(opt)
    assert np.isfinite(torch_step(model, opt, *batch(99, scale=1e10)))
    assert opt.rejected_curvature_updates == int(REJECTS_OUTLIER[approximation])
    if opt.rejected_curvature_updates:
        after = torch_curvature(opt)
        assert all(torch.equal(before[k], after[k]) for k in before)
    for s in range(2, 5):
        torch_step(model, opt, *batch(s))
    assert opt.tkfac_step == 6
    assert all(bool(torch.isfinite(v).all()) for v in torch_curvature(opt).values())
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())


@pytest.mark.parametrize("approximation", APPROXIMATIONS)
def test_reference_nan_batch_leaves_no_nan_factors(approximation):
    """Before the guard, a NaN batch left the reference's factors NaN for good."""
    model, opt = build_torch(approximation)
    torch_step(model, opt, *batch(0))
    x, y = batch(1)
    x[0, 0] = np.nan
    torch_step(model, opt, x, y)
    assert opt.rejected_curvature_updates == 1
    assert all(bool(torch.isfinite(v).all()) for v in torch_curvature(opt).values())

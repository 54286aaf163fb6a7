"""reference_torch.TKFAC as a whole: issue 2, tests 4-6, plus the plain-momentum paths.

4. two full optimizer steps of ``tkfac_nor``, ``tkfac_new`` and ``kfac`` on a 2-layer MLP
   against an independent NumPy computation (per-sample gradients by hand, spec Sec. 1-6);
5. ``factor_update_steps`` / ``inv_update_steps`` > 1: state changes only on the right steps;
6. a ``state_dict`` round trip resumes a bit-identical trajectory.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
from testing_utils import (
    assert_allclose,
    torch_single_thread,  # noqa: F401  (autouse fixture)
)
from torch import nn
from torch.nn import functional as F

import reference_torch

DTYPE = torch.float64

# ----------------------------------------------------------------------------- test 4: NumPy


@dataclass(frozen=True)
class StepCase:
    """Hyperparameters of a 2-step run of the 2-layer MLP."""

    name: str
    approximation: str
    fisher: str = "empirical"
    lr: float | Callable[[int], float] = 0.05
    damping: float | Callable[[int], float] = 0.03
    kl_clip: float | None = None
    weight_decay: float = 1e-2
    extra: dict[str, Any] = field(default_factory=dict)


STEP_CASES = [
    StepCase("tkfac_nor", "tkfac_nor"),
    StepCase(
        "tkfac_nor_true_fisher_schedules",
        "tkfac_nor",
        fisher="true",
        lr=lambda t: 0.05 / (1 + t),
        damping=lambda t: 0.03 * (1 + t),
    ),
    StepCase("tkfac_nor_kl_clip", "tkfac_nor", kl_clip=1e-4),
    StepCase("tkfac_new", "tkfac_new"),
    StepCase("kfac", "kfac"),
    StepCase("kfac_true_fisher", "kfac", fisher="true", damping=lambda t: 0.03 * (1 + t)),
]

N, D_IN, D_HID, D_OUT = 5, 4, 6, 3
MOMENTUM, FACTOR_DECAY, STEPS = 0.9, 0.8, 2


def _value(v: float | Callable[[int], float], t: int) -> float:
    return v(t) if callable(v) else v


def np_layer_vectors(
    params: list[np.ndarray], x: np.ndarray, labels: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per-sample ``(a, u)`` of both layers for ``l_n = CE(f(x_n), labels_n)``, by hand."""
    w1, b1, w2, b2 = params
    z = np.tanh(x @ w1.T + b1)  # [N, D_HID]
    logits = z @ w2.T + b2
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    u2 = p - np.eye(D_OUT)[labels]  # d l_n / d logits_n
    u1 = (u2 @ w2) * (1.0 - z**2)  # d l_n / d (x W1^T + b1)_n
    ones = np.ones((x.shape[0], 1))
    return [(np.hstack([x, ones]), u1), (np.hstack([z, ones]), u2)]


def np_tkfac_stats(a: np.ndarray, u: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Spec Sec. 2 (T = 1) with explicit per-sample loops."""
    n = a.shape[0]
    s = [a[i] @ a[i] for i in range(n)]
    r = [u[i] @ u[i] for i in range(n)]
    delta = sum(s[i] * r[i] for i in range(n)) / n
    phi = sum(r[i] * np.outer(a[i], a[i]) for i in range(n)) / (n * delta)
    psi = sum(s[i] * np.outer(u[i], u[i]) for i in range(n)) / (n * delta)
    return delta, phi, psi


def np_reference_run(
    case: StepCase,
    params: list[np.ndarray],
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    nu: float,
) -> list[dict[str, Any]]:
    """Spec Sec. 5 for ``STEPS`` steps, updating factors and inverses on every step."""
    params = [p.copy() for p in params]
    velocity = [np.zeros_like(p) for p in params]
    factors: list[tuple[np.ndarray, np.ndarray] | None] = [None, None]
    history = []
    for t, (x, y, sampled) in enumerate(batches):
        lr, lam = _value(case.lr, t), _value(case.damping, t)
        fisher_labels = sampled if case.fisher == "true" else y
        vectors = np_layer_vectors(params, x, fisher_labels)
        # gradient of the mean training loss with the true labels: (1/N) sum_n u_n a_n^T
        grads = [u.T @ a / N for a, u in np_layer_vectors(params, x, y)]
        record: dict[str, Any] = {"delta": [], "a_factor": [], "g_factor": []}
        for i, (a, u) in enumerate(vectors):
            if case.approximation == "kfac":
                current = (a.T @ a / N, u.T @ u / N)
            else:
                delta, phi, psi = np_tkfac_stats(a, u)
                record["delta"].append(delta)
                if case.approximation == "tkfac_nor":  # Eq. 14
                    current = (
                        np.sqrt(delta) * phi + np.sqrt(lam) * np.eye(len(phi)),
                        np.sqrt(delta) * psi + np.sqrt(lam) * np.eye(len(psi)),
                    )
                else:  # Eq. 15, Dense layers with no conv layer: beta = 1
                    dt = max(nu, delta)
                    current = (
                        np.sqrt(dt) * phi + dt / len(phi) * np.eye(len(phi)),
                        np.sqrt(dt) * psi + dt / len(psi) * np.eye(len(psi)),
                    )
            old = factors[i]
            if old is None:
                factors[i] = current
            else:
                factors[i] = (
                    FACTOR_DECAY * old[0] + (1 - FACTOR_DECAY) * current[0],
                    FACTOR_DECAY * old[1] + (1 - FACTOR_DECAY) * current[1],
                )
        directions = []
        for i, grad_mat in enumerate(grads):
            fac_a, fac_g = factors[i]  # type: ignore[misc]
            record["a_factor"].append(fac_a)
            record["g_factor"].append(fac_g)
            if case.approximation == "kfac":  # spec Sec. 6 damping, on inversion
                pi = np.sqrt((np.trace(fac_a) / len(fac_a)) / (np.trace(fac_g) / len(fac_g)))
                fac_a = fac_a + pi * np.sqrt(lam) * np.eye(len(fac_a))
                fac_g = fac_g + np.sqrt(lam) / pi * np.eye(len(fac_g))
            directions.append(np.linalg.inv(fac_g) @ grad_mat @ np.linalg.inv(fac_a))
        if case.kl_clip is not None:
            vg = sum(float(np.sum(d * g)) for d, g in zip(directions, grads, strict=True))
            scale = min(1.0, np.sqrt(case.kl_clip / (lr**2 * vg)))
            record["kl_scale"] = scale
            directions = [scale * d for d in directions]
        updates = []
        for d in directions:  # split [W | b]
            updates += [d[:, :-1], d[:, -1]]
        for j, p in enumerate(params):
            d = updates[j] + (case.weight_decay * p if p.ndim > 1 else 0.0)  # no decay on biases
            velocity[j] = MOMENTUM * velocity[j] + d
            params[j] = p - lr * velocity[j]
        record["params"] = [p.copy() for p in params]
        history.append(record)
    return history


def make_mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(D_IN, D_HID), nn.Tanh(), nn.Linear(D_HID, D_OUT)).to(DTYPE)


def mlp_batches(seed: int = 10) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((N, D_IN)), rng.integers(0, D_OUT, N), rng.integers(0, D_OUT, N))
        for _ in range(STEPS)
    ]


@pytest.mark.parametrize("case", STEP_CASES, ids=lambda c: c.name)
def test_two_steps_match_numpy(case: StepCase) -> None:
    model = make_mlp()
    params0 = [p.detach().numpy().copy() for p in model.parameters()]
    batches = mlp_batches()
    # TKFAC_new: put nu between the two layers' deltas so both branches of max(nu, .) run
    d0 = [np_tkfac_stats(a, u)[0] for a, u in np_layer_vectors(params0, *batches[0][:2])]
    nu = float(np.sqrt(d0[0] * d0[1]))
    assert min(d0) < nu < max(d0)
    expected = np_reference_run(case, params0, batches, nu)

    opt = reference_torch.TKFAC(
        model,
        lr=case.lr,
        momentum=MOMENTUM,
        weight_decay=case.weight_decay,
        damping=case.damping,
        nu=nu,
        approximation=case.approximation,
        factor_decay=FACTOR_DECAY,
        factor_update_steps=1,
        inv_update_steps=1,
        fisher=case.fisher,
        kl_clip=case.kl_clip,
    )
    for t, (x, y, sampled) in enumerate(batches):
        opt.zero_grad()
        logits = model(torch.from_numpy(x))
        loss = F.cross_entropy(logits, torch.from_numpy(y))
        opt.sample_fisher_backward(logits, sampled_labels=torch.from_numpy(sampled))
        loss.backward()
        opt.step()
        exp = expected[t]
        for j, (p, p_exp) in enumerate(zip(model.parameters(), exp["params"], strict=True)):
            assert_allclose(p, p_exp, name=f"step {t} param {j}")
        for i, name in enumerate(opt.layer_names):
            st = opt.layer_state(name)
            assert_allclose(st.a_factor, exp["a_factor"][i], name=f"step {t} {name}.a_factor")
            assert_allclose(st.g_factor, exp["g_factor"][i], name=f"step {t} {name}.g_factor")
            if case.approximation != "kfac":
                assert_allclose(st.delta, exp["delta"][i], name=f"step {t} {name}.delta")
    if case.kl_clip is not None:  # the case must actually clip
        assert all(rec["kl_scale"] < 1.0 for rec in expected)


# ----------------------------------------------------------------------------- test 5


class SmallCNN(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.BatchNorm2d(3),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(3 * 4 * 4, 4),
        )


def cnn_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return (
        torch.randn(6, 2, 4, 4, dtype=DTYPE, generator=gen),
        torch.randint(0, 4, (6,), generator=gen),
    )


def train_step(model: nn.Module, opt: reference_torch.TKFAC, step: int) -> torch.Tensor | None:
    """One step of the documented true-Fisher loop; returns the sampled labels (or None)."""
    x, y = cnn_batch(step)
    opt.zero_grad()
    logits = model(x.to(next(model.parameters()).dtype))
    loss = F.cross_entropy(logits, y)
    sampled = opt.sample_fisher_backward(
        logits, generator=torch.Generator().manual_seed(2000 + step)
    )
    loss.backward()
    opt.step()
    return sampled


@pytest.mark.parametrize("approximation", ["tkfac_nor", "tkfac_new", "kfac"])
def test_factors_and_inverses_change_only_on_their_steps(approximation: str) -> None:
    t_fim, t_inv = 2, 3
    torch.manual_seed(0)
    model = SmallCNN().to(DTYPE)
    opt = reference_torch.TKFAC(
        model,
        lr=0.01,
        approximation=approximation,
        factor_update_steps=t_fim,
        inv_update_steps=t_inv,
    )
    before: dict[str, dict[str, torch.Tensor | None]] = {}
    for t in range(8):
        sampled = train_step(model, opt, t)
        assert (sampled is not None) == (t % t_fim == 0), f"step {t}: sampling ran off-schedule"
        for name in opt.layer_names:
            st = opt.layer_state(name)
            now = {f: getattr(st, f).clone() for f in ("a_factor", "g_factor", "a_inv", "g_inv")}
            prev = before.get(name)
            if prev is not None:
                for fld in ("a_factor", "g_factor"):
                    changed = not torch.equal(prev[fld], now[fld])  # type: ignore[arg-type]
                    assert changed == (t % t_fim == 0), f"step {t}: {name}.{fld} changed={changed}"
                for fld in ("a_inv", "g_inv"):
                    changed = not torch.equal(prev[fld], now[fld])  # type: ignore[arg-type]
                    assert changed == (t % t_inv == 0), f"step {t}: {name}.{fld} changed={changed}"
            before[name] = now  # type: ignore[assignment]
            if approximation != "kfac":  # inverses are of the state on inverse steps only
                fresh = torch.allclose(
                    st.a_inv @ st.a_factor, torch.eye(len(st.a_factor), dtype=DTYPE)
                )
                last_inv, last_fim = t - t % t_inv, t - t % t_fim
                expect_fresh = last_inv >= last_fim
                assert fresh == expect_fresh, f"step {t}: {name}.a_inv fresh={fresh}"
    assert opt.tkfac_step == 8


def test_true_fisher_without_sampling_fails_clearly() -> None:
    model = SmallCNN().to(DTYPE)
    opt = reference_torch.TKFAC(model, lr=0.01, fisher="true")
    x, y = cnn_batch(0)
    F.cross_entropy(model(x), y).backward()
    with pytest.raises(RuntimeError, match=r"call opt.sample_fisher_backward\(logits\)"):
        opt.step()


def test_sampled_backward_leaves_grad_untouched_and_u_is_not_overwritten() -> None:
    torch.manual_seed(1)
    model = SmallCNN().to(DTYPE)
    twin = copy.deepcopy(model)
    x, y = cnn_batch(0)
    sampled = torch.randint(0, 4, (6,), generator=torch.Generator().manual_seed(5))

    opt = reference_torch.TKFAC(model, lr=0.01, fisher="true")
    logits = model(x)
    opt.sample_fisher_backward(logits, sampled_labels=sampled)
    assert all(p.grad is None for p in model.parameters())
    F.cross_entropy(logits, y).backward()
    opt.step()
    # The same statistics come from an empirical-Fisher run whose *training* loss is the
    # sampled-label sum: the later true-label backward must not have replaced u.
    opt_emp = reference_torch.TKFAC(twin, lr=0.01, fisher="empirical", loss_reduction="sum")
    F.cross_entropy(twin(x), sampled, reduction="sum").backward()
    opt_emp.step()
    for name in opt.layer_names:
        for fld in ("delta", "phi", "psi"):
            assert_allclose(
                getattr(opt.layer_state(name), fld),
                getattr(opt_emp.layer_state(name), fld),
                name=f"{name}.{fld}",
            )


# ----------------------------------------------------------------------------- plain momentum


def test_other_parameters_get_plain_momentum() -> None:
    """BatchNorm and skipped layers: ``D = grad`` (+ decay where the filter says it).

    The expectation is spec Sec. 5 steps 4-5 written out on a shadow copy of those parameters,
    fed with the gradients of the model's own trajectory.
    """
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 4 * 4, 5),
        nn.ReLU(),
        nn.Linear(5, 4),
    ).to(DTYPE)
    lr, wd, tau = 0.1, 0.01, 0.9
    opt = reference_torch.TKFAC(
        model, lr=lr, weight_decay=wd, momentum=tau, fisher="empirical", skip=("6",)
    )
    assert opt.layer_names == ("0", "4")
    plain = {"1.weight": 0.0, "1.bias": 0.0, "6.weight": wd, "6.bias": 0.0}  # name -> decay
    params = dict(model.named_parameters())
    shadow = {k: params[k].detach().clone() for k in plain}
    velocity = {k: torch.zeros_like(v) for k, v in shadow.items()}
    for step in range(3):
        x, y = cnn_batch(step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        for k, decay in plain.items():
            velocity[k] = tau * velocity[k] + params[k].grad + decay * shadow[k]
            shadow[k] = shadow[k] - lr * velocity[k]
        opt.step()
        for k in plain:
            assert_allclose(params[k], shadow[k], name=f"step {step} {k}")


# ----------------------------------------------------------------------------- test 6


@pytest.mark.parametrize("approximation", ["tkfac_nor", "tkfac_new", "kfac"])
def test_state_dict_round_trip_resumes_bit_identically(approximation: str) -> None:
    kwargs = dict(
        lr=lambda t: 0.05 * 0.9**t,
        approximation=approximation,
        weight_decay=1e-3,
        factor_update_steps=2,
        inv_update_steps=3,
        momentum=0.9,
        nu=100.0,  # above the conv delta, so TKFAC_new's beta is not 1
    )
    torch.manual_seed(3)
    model = SmallCNN()  # float32 parameters, float64 factors
    opt = reference_torch.TKFAC(model, factor_dtype=torch.float64, **kwargs)  # type: ignore[arg-type]
    for t in range(3):
        train_step(model, opt, t)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    beta_at_checkpoint = opt.beta.clone()
    assert (approximation == "tkfac_new") == (float(beta_at_checkpoint) != 1.0)

    trajectory = []
    for t in range(3, 7):
        train_step(model, opt, t)
        trajectory.append([p.detach().clone() for p in model.parameters()])

    torch.manual_seed(99)  # a different initialisation, overwritten by the checkpoint
    resumed = SmallCNN()
    opt2 = reference_torch.TKFAC(resumed, factor_dtype=torch.float64, **kwargs)  # type: ignore[arg-type]
    buffer.seek(0)
    ckpt = torch.load(buffer, weights_only=True)
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.tkfac_step == 3
    assert torch.equal(opt2.beta, beta_at_checkpoint)
    for i, t in enumerate(range(3, 7)):
        train_step(resumed, opt2, t)
        for j, (p, q) in enumerate(zip(resumed.parameters(), trajectory[i], strict=True)):
            assert torch.equal(p, q), f"step {t}, parameter {j}: max |diff| {(p - q).abs().max()}"
    for name in opt.layer_names:
        for fld in ("delta", "a_factor", "g_factor", "a_inv", "g_inv"):
            x, y = getattr(opt.layer_state(name), fld), getattr(opt2.layer_state(name), fld)
            assert (x is None and y is None) or torch.equal(x, y), f"{name}.{fld}"
    assert torch.equal(opt.beta, opt2.beta)


def test_load_state_dict_rejects_other_layers() -> None:
    opt = reference_torch.TKFAC(SmallCNN(), lr=0.1)
    other = reference_torch.TKFAC(make_mlp(), lr=0.1)
    with pytest.raises(ValueError, match=r"its layers \['0', '4'\] are not this optimizer's"):
        other.load_state_dict(opt.state_dict())

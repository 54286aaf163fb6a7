"""The approximation objects (``reference_torch/approximations.py``) against the spec's formulas.

Each expected value is written out here from ``shared/spec/tkfac-math.md`` (Sec. 2, 3 and 6),
not taken from ``_math.py``: traces of the damped factors, the statistics by brute force, the
``pi`` damping by hand in float64.
"""

from __future__ import annotations

import math

import pytest
import torch
from testing_utils import (
    assert_allclose,
    torch_single_thread,  # noqa: F401  (autouse fixture)
)
from torch import nn

import reference_torch
from reference_torch import (
    KFAC,
    Approximation,
    CurvatureApproximation,
    TKFACConfig,
    TKFACNew,
    TKFACNor,
    make_approximation,
)

DTYPE = torch.float64
NU = 1e-3
CLASS_OF = {
    Approximation.TKFAC_NOR: TKFACNor,
    Approximation.TKFAC_NEW: TKFACNew,
    Approximation.KFAC: KFAC,
}


def approx_for(approximation: Approximation | str) -> CurvatureApproximation:
    return make_approximation(TKFACConfig(lr=0.1, approximation=approximation, nu=NU))


def random_au(
    n: int = 4, t: int = 3, d_in: int = 5, d_out: int = 3, seed: int = 0, scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, t, d_in, dtype=DTYPE, generator=gen),
        scale * torch.randn(n, t, d_out, dtype=DTYPE, generator=gen),
    )


def random_spd(d: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(d, d + 2, dtype=DTYPE, generator=gen)
    return scale * (x @ x.T) / (d + 2)


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("approximation", list(Approximation))
def test_make_approximation_returns_the_class_of_each_value(approximation: Approximation) -> None:
    for spelling in (approximation, approximation.value, approximation.name):
        approx = approx_for(spelling)
        assert type(approx) is CLASS_OF[approximation]
        assert approx.kind is approximation
        assert approx.nu == NU
    assert approx.updates_beta == (approximation is Approximation.TKFAC_NEW)


def test_every_approximation_value_has_a_class() -> None:
    assert set(CLASS_OF) == set(Approximation)
    for cls in CLASS_OF.values():
        assert issubclass(cls, CurvatureApproximation)


@pytest.mark.parametrize("approximation", list(Approximation))
def test_the_optimizer_holds_the_configured_object(approximation: Approximation) -> None:
    opt = reference_torch.TKFAC(
        nn.Sequential(nn.Linear(3, 2)), lr=0.1, approximation=approximation.value
    )
    assert type(opt.approximation) is CLASS_OF[approximation]
    assert opt.state_dict()["tkfac"]["approximation"] == approximation.value


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("approximation", [Approximation.TKFAC_NOR, Approximation.TKFAC_NEW])
def test_tkfac_statistics_by_name_are_the_partial_traces(approximation: Approximation) -> None:
    a, u = random_au()
    stats = approx_for(approximation).layer_statistics(a, u)
    assert set(stats) == {"delta", "phi", "psi"}
    assert approx_for(approximation).recorded_statistics == ("delta", "phi", "psi")
    n, _, d_in = a.shape
    d_out = u.shape[-1]
    # F = (1/N) sum_{n,t} (a a^T) kron (u u^T), by brute force; spec Sec. 2's identities
    fisher = (
        sum(
            torch.kron(torch.outer(a[i, j], a[i, j]), torch.outer(u[i, j], u[i, j]))
            for i in range(n)
            for j in range(a.shape[1])
        )
        / n
    )
    blocks = fisher.reshape(d_in, d_out, d_in, d_out)
    assert_allclose(stats["delta"], torch.trace(fisher), name="delta = tr F")
    assert_allclose(
        stats["delta"] * stats["phi"], torch.einsum("iaja->ij", blocks), name="delta Phi"
    )
    assert_allclose(
        stats["delta"] * stats["psi"], torch.einsum("iaib->ab", blocks), name="delta Psi"
    )


def test_kfac_statistics_by_name() -> None:
    a, u = random_au()
    approx = approx_for("kfac")
    stats = approx.layer_statistics(a, u)
    assert set(stats) == {"a", "g"}
    assert approx.recorded_statistics == ()
    n, t = a.shape[:2]
    a_expected = sum(torch.outer(a[i, j], a[i, j]) for i in range(n) for j in range(t)) / n
    g_expected = sum(torch.outer(u[i, j], u[i, j]) for i in range(n) for j in range(t)) / (n * t)
    assert_allclose(stats["a"], a_expected, name="A = (1/N) sum a a^T")
    assert_allclose(stats["g"], g_expected, name="G = (1/(N T)) sum u u^T")


# --------------------------------------------------------------------------- beta (Eq. 16)


def test_tkfac_new_beta_is_over_the_conv_layers_only() -> None:
    def stats(delta: float) -> dict[str, torch.Tensor]:
        return {"delta": torch.tensor(delta, dtype=DTYPE)}

    approx = approx_for("tkfac_new")
    current = torch.tensor(7.0)
    layers = [stats(NU / 4), stats(2 * NU), stats(NU / 100), stats(0.0)]
    is_conv = [True, True, False, True]  # the dense layer's tiny delta and the dead conv: ignored
    beta = approx.network_beta(layers, is_conv, current)
    assert_allclose(beta, 4.0, name="beta = max(nu, delta) / delta of the smallest live conv")
    no_conv = approx.network_beta([stats(NU / 4)], [False], current)
    assert_allclose(no_conv, 1.0, name="beta = 1 without a conv layer")


@pytest.mark.parametrize("approximation", [Approximation.TKFAC_NOR, Approximation.KFAC])
def test_other_approximations_keep_the_current_beta(approximation: Approximation) -> None:
    approx = approx_for(approximation)
    a, u = random_au(scale=1e-4)
    current = torch.tensor(3.0)
    stats = approx.layer_statistics(a, u)
    assert approx.network_beta([stats, stats], [True, False], current) is current


# --------------------------------------------------------------------------- damped factors


def kron_trace(a_batch: torch.Tensor, g_batch: torch.Tensor) -> torch.Tensor:
    return torch.trace(torch.kron(a_batch, g_batch))


def test_tkfac_nor_damped_factors_trace() -> None:
    """Eq. 14 with ``tr Phi = tr Psi = 1``: ``tr Phi_hat = sqrt(delta) + d_in sqrt(lambda)``."""
    a, u = random_au(d_in=4, d_out=3)
    approx = approx_for("tkfac_nor")
    stats = approx.layer_statistics(a, u)
    damping = 0.3
    for is_conv in (True, False):  # neither beta nor the layer kind matters
        a_batch, g_batch = approx.damped_factors(stats, damping, torch.tensor(5.0), is_conv)
        sd, sl = math.sqrt(float(stats["delta"])), math.sqrt(damping)
        expected = (sd + 4 * sl) * (sd + 3 * sl)
        # = delta + sqrt(delta lambda) (d_in + d_out) + d_in d_out lambda  (Eq. 13 + cross terms)
        assert_allclose(kron_trace(a_batch, g_batch), expected, name="tr(Phi_hat kron Psi_hat)")
        off = ~torch.eye(4, dtype=torch.bool)
        assert_allclose(a_batch[off], sd * stats["phi"][off], name="off-diagonal sqrt(delta) Phi")


@pytest.mark.parametrize(
    ("is_conv", "delta_scale", "beta"),
    [
        (True, 1e-4, 1.0),  # conv, delta < nu: delta~ = nu
        (True, 10.0, 1.0),  # conv, delta > nu: delta~ = delta
        (False, 1e-4, 3.0),  # dense: delta~ = max(nu, beta delta)
        (False, 1e-4, 1e6),
    ],
)
def test_tkfac_new_damped_factors_trace(is_conv: bool, delta_scale: float, beta: float) -> None:
    """Eq. 15: ``tr Phi~ = sqrt(delta~) + delta~`` and the same for ``Psi~``."""
    a, u = random_au(d_in=4, d_out=3, scale=delta_scale)
    approx = approx_for("tkfac_new")
    stats = approx.layer_statistics(a, u)
    delta = float(stats["delta"])
    delta_tilde = max(NU, delta if is_conv else beta * delta)
    a_batch, g_batch = approx.damped_factors(stats, 0.7, torch.tensor(beta), is_conv)
    assert_allclose(torch.trace(a_batch), math.sqrt(delta_tilde) + delta_tilde, name="tr Phi~")
    assert_allclose(torch.trace(g_batch), math.sqrt(delta_tilde) + delta_tilde, name="tr Psi~")
    assert_allclose(
        kron_trace(a_batch, g_batch),
        (math.sqrt(delta_tilde) + delta_tilde) ** 2,
        name="tr(Phi~ kron Psi~)",
    )


def test_kfac_damped_factors_are_the_undamped_statistics() -> None:
    a, u = random_au()
    approx = approx_for("kfac")
    stats = approx.layer_statistics(a, u)
    a_batch, g_batch = approx.damped_factors(stats, 0.5, torch.tensor(2.0), True)
    assert torch.equal(a_batch, stats["a"]) and torch.equal(g_batch, stats["g"])


# --------------------------------------------------------------------------- inverse damping


def test_kfac_inverse_damping_is_the_pi_damping() -> None:
    """Spec Sec. 6 by hand: ``pi = sqrt((tr A / d_in) / (tr G / d_out))``."""
    a_state, g_state = random_spd(5, seed=1), random_spd(3, seed=2, scale=1e-3)
    damping = 0.01
    a_hat, g_hat = approx_for("kfac").inverse_damping(a_state, g_state, damping)
    pi = math.sqrt((float(torch.trace(a_state)) / 5) / (float(torch.trace(g_state)) / 3))
    sl = math.sqrt(damping)
    assert_allclose(a_hat, a_state + pi * sl * torch.eye(5, dtype=DTYPE), name="A_hat")
    assert_allclose(g_hat, g_state + sl / pi * torch.eye(3, dtype=DTYPE), name="G_hat")


@pytest.mark.parametrize("approximation", [Approximation.TKFAC_NOR, Approximation.TKFAC_NEW])
def test_tkfac_inverse_damping_adds_nothing(approximation: Approximation) -> None:
    a_state, g_state = random_spd(5, seed=1), random_spd(3, seed=2)
    a_out, g_out = approx_for(approximation).inverse_damping(a_state, g_state, 0.5)
    assert a_out is a_state and g_out is g_state

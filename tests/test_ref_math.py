"""The pure math module against formulas written out in the test (spec Sec. 2-6)."""

from __future__ import annotations

import copy

import pytest
import torch
from testing_utils import (
    assert_allclose,
    torch_single_thread,  # noqa: F401  (autouse fixture)
)
from torch import nn
from torch.nn import functional as F

import reference_torch
from reference_torch import _math

DTYPE = torch.float64


def random_au(
    n: int = 4, t: int = 3, d_in: int = 5, d_out: int = 2, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n, t, d_in, dtype=DTYPE, generator=gen),
        torch.randn(n, t, d_out, dtype=DTYPE, generator=gen),
    )


def test_dead_layer_guard_gives_scaled_identities() -> None:
    a, u = random_au()
    delta, phi, psi = reference_torch.tkfac_stats(a, torch.zeros_like(u))
    assert delta == 0.0
    assert_allclose(phi, torch.eye(5, dtype=DTYPE) / 5, name="Phi = I/d_in")
    assert_allclose(psi, torch.eye(2, dtype=DTYPE) / 2, name="Psi = I/d_out")
    for eps in (1e-31, 1e-29):  # either side of the 1e-30 guard: finite, trace 1
        _, phi, psi = reference_torch.tkfac_stats(a, u * eps**0.25 / 10)
        assert torch.isfinite(phi).all() and torch.isfinite(psi).all()
        assert_allclose(torch.trace(phi), 1.0, tol="float32", name="tr Phi")


def test_sums_of_shards_give_the_whole_batch_statistics() -> None:
    """Spec Sec. 2: all-reducing the sums (not averaging Phi, Psi) is exact."""
    a, u = random_au(n=6, seed=1)
    shards = [_math.tkfac_sums(a[:2], u[:2]), _math.tkfac_sums(a[2:], u[2:])]
    summed = [x + y for x, y in zip(*shards, strict=True)]
    whole = reference_torch.tkfac_stats(a, u)
    for got, exp, name in zip(
        _math.tkfac_from_sums(*summed, 6), whole, ("delta", "phi", "psi"), strict=True
    ):
        assert_allclose(got, exp, name=name)
    k_shards = [_math.kfac_sums(a[:2], u[:2]), _math.kfac_sums(a[2:], u[2:])]
    k_summed = [x + y for x, y in zip(*k_shards, strict=True)]
    for got, exp in zip(
        _math.kfac_from_sums(*k_summed, 6), reference_torch.kfac_stats(a, u), strict=True
    ):
        assert_allclose(got, exp, name="kfac")


def test_stats_formulas_with_locations() -> None:
    a, u = random_au(seed=2)
    n, t = a.shape[:2]
    s, r = (a * a).sum(-1), (u * u).sum(-1)  # [N, T]
    delta = (s * r).sum() / n
    phi = sum(r[i, j] * torch.outer(a[i, j], a[i, j]) for i in range(n) for j in range(t))
    psi = sum(s[i, j] * torch.outer(u[i, j], u[i, j]) for i in range(n) for j in range(t))
    got = reference_torch.tkfac_stats(a, u)
    assert_allclose(got[0], delta, name="delta")
    assert_allclose(got[1], phi / (n * delta), name="phi")  # type: ignore[operator]
    assert_allclose(got[2], psi / (n * delta), name="psi")  # type: ignore[operator]
    big_a, big_g = reference_torch.kfac_stats(a, u)
    assert_allclose(big_a, torch.einsum("nti,ntj->ij", a, a) / n, name="A")
    assert_allclose(big_g, torch.einsum("nto,ntp->op", u, u) / (n * t), name="G")


def test_damping_formulas() -> None:
    _, phi, psi = reference_torch.tkfac_stats(*random_au(seed=3))
    delta, lam, nu = torch.tensor(4.0, dtype=DTYPE), 0.09, 0.5
    i_in, i_out = torch.eye(5, dtype=DTYPE), torch.eye(2, dtype=DTYPE)
    phi_hat, psi_hat = _math.tkfac_nor_damping(delta, phi, psi, lam)
    assert_allclose(phi_hat, 2.0 * phi + 0.3 * i_in, name="Eq. 14 Phi_hat")
    assert_allclose(psi_hat, 2.0 * psi + 0.3 * i_out, name="Eq. 14 Psi_hat")
    # conv layer, delta above the floor: delta~ = delta = 4
    phi_t, psi_t = _math.tkfac_new_damping(delta, phi, psi, nu)
    assert_allclose(phi_t, 2.0 * phi + (4.0 / 5) * i_in, name="Eq. 15 Phi~")
    assert_allclose(psi_t, 2.0 * psi + (4.0 / 2) * i_out, name="Eq. 15 Psi~")
    # dense layer: delta~ = max(nu, beta * delta) = max(0.5, 3 * 0.01) = 0.5
    small = torch.tensor(0.01, dtype=DTYPE)
    phi_t, _ = _math.tkfac_new_damping(small, phi, psi, nu, beta=torch.tensor(3.0, dtype=DTYPE))
    assert_allclose(phi_t, 0.5**0.5 * phi + (0.5 / 5) * i_in, name="Eq. 15 dense floor")
    # KFAC pi damping
    big_a, big_g = phi * 7.0, psi * 0.2
    pi = ((torch.trace(big_a) / 5) / (torch.trace(big_g) / 2)).sqrt()
    a_hat, g_hat = _math.kfac_pi_damping(big_a, big_g, lam)
    assert_allclose(a_hat, big_a + pi * 0.3 * i_in, name="A_hat")
    assert_allclose(g_hat, big_g + 0.3 / pi * i_out, name="G_hat")


@pytest.mark.parametrize(
    ("deltas", "expected"),
    [
        ([], 1.0),
        ([0.5, 2.0], 1.0),  # all above nu = 1e-3
        ([0.5, 1e-4, 0.0], 10.0),  # 1e-3 / 1e-4; the dead (0) layer is ignored
        ([2e-4, 5e-4], 5.0),
    ],
    ids=["none", "above_floor", "dead_ignored", "max"],
)
def test_tkfac_new_beta(deltas: list[float], expected: float) -> None:
    beta = _math.tkfac_new_beta([torch.tensor(d, dtype=DTYPE) for d in deltas], 1e-3)
    assert_allclose(beta, expected, name="beta")


def test_beta_from_conv_layers_scales_dense_layers_in_the_optimizer() -> None:
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, bias=False), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4, 4)
    ).to(DTYPE)
    # tiny inputs: a tiny conv delta, so that beta * delta_dense is above the floor nu
    x, y = 1e-2 * torch.randn(5, 2, 4, 4, dtype=DTYPE), torch.randint(0, 4, (5,))
    probe = copy.deepcopy(model)  # learn the conv delta first, then put nu above it
    p_opt = reference_torch.TKFAC(probe, lr=0.1, fisher="empirical")
    F.cross_entropy(probe(x), y).backward()
    p_opt.step()
    conv_delta = float(p_opt.layer_state("0").delta)  # type: ignore[arg-type]
    nu = 4.0 * conv_delta

    opt = reference_torch.TKFAC(model, lr=0.1, fisher="empirical", approximation="tkfac_new", nu=nu)
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert_allclose(opt.beta, 4.0, name="beta = nu / delta_conv")
    dense = opt.layer_state("3")
    assert dense.delta is not None and dense.phi is not None
    assert 4.0 * float(dense.delta) > nu, "the case must exercise beta, not the floor"
    dt = 4.0 * float(dense.delta)  # max(nu, beta * delta)
    d_in = dense.phi.shape[0]
    assert_allclose(
        dense.a_batch,
        dt**0.5 * dense.phi + dt / d_in * torch.eye(d_in, dtype=DTYPE),
        name="dense Phi~ with beta",
    )


def test_spd_inverse_is_symmetric_inverse() -> None:
    gen = torch.Generator().manual_seed(5)
    m = torch.randn(6, 6, dtype=DTYPE, generator=gen)
    m = m @ m.T + 1e-3 * torch.eye(6, dtype=DTYPE)
    inv = _math.spd_inverse(m)
    assert torch.equal(inv, inv.T)
    assert_allclose(m @ inv, torch.eye(6, dtype=DTYPE), tol="float32", name="m @ m^-1")


def test_grad_matrix_round_trip_and_preconditioning() -> None:
    gw, gb = torch.randn(4, 3, 2, 2, dtype=DTYPE), torch.randn(4, dtype=DTYPE)
    mat = _math.grad_matrix(gw, gb)
    assert mat.shape == (4, 13)
    assert torch.equal(mat[:, -1], gb) and torch.equal(mat[:, :-1].reshape(gw.shape), gw)
    back_w, back_b = _math.split_grad_matrix(mat, gw.shape, has_bias=True)
    assert torch.equal(back_w, gw) and back_b is not None and torch.equal(back_b, gb)
    # D = G^-1 G_W A^-1 solves (A kron G) vec(D) = vec(G_W) (column-major vec)
    a_mat = torch.diag(torch.arange(1.0, 14.0, dtype=DTYPE))
    g_mat = torch.diag(torch.arange(1.0, 5.0, dtype=DTYPE))
    d = _math.precondition(mat, torch.linalg.inv(g_mat), torch.linalg.inv(a_mat))
    vec = torch.kron(a_mat, g_mat) @ d.T.reshape(-1)
    assert_allclose(vec, mat.T.reshape(-1), name="(A kron G) vec(D)")


def test_moving_average() -> None:
    cur = torch.ones(2, 2, dtype=DTYPE)
    first = _math.moving_average(None, cur, 0.95, first=True)
    assert torch.equal(first, cur) and first is not cur
    later = _math.moving_average(first, 3.0 * cur, 0.95, first=False)
    assert_allclose(later, 0.95 * cur + 0.05 * 3.0 * cur, name="EMA")

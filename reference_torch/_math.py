"""Pure TKFAC / KFAC math in PyTorch: tensors in, tensors out, no state.

Every function is one formula of the contract ``shared/spec/tkfac-math.md`` (cited "spec
Sec. k") and of the paper, Gao et al., "A Trace-restricted Kronecker-Factored Approximation to
Natural Gradient", AAAI 2021 (cited "Eq. n"). ``docs/math.md`` maps each formula to its
function. The MindSpore twin is ``tkfac_ms/_math.py``, with the same function names.

Data layout everywhere: ``a`` is ``[N, T, d_in]`` and ``u`` is ``[N, T, d_out]``, with ``N``
samples and ``T`` locations per sample (1 for a Linear layer, ``H_out * W_out`` for a Conv2d).
``a[n, t]`` is the layer input at a location (with a trailing 1 for the bias), ``u[n, t]`` the
derivative of sample ``n``'s own loss with respect to the layer output there (spec Sec. 1).
The layer's gradient matrix ``G_W`` is ``[d_out, d_in]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "DELTA_GUARD",
    "tkfac_sums",
    "tkfac_from_sums",
    "tkfac_stats",
    "kfac_sums",
    "kfac_from_sums",
    "kfac_stats",
    "tkfac_nor_damping",
    "tkfac_new_beta",
    "tkfac_new_delta",
    "tkfac_new_damping",
    "kfac_pi_damping",
    "moving_average",
    "spd_inverse",
    "spd_inverse_or_none",
    "precondition",
    "kl_clip_scale",
    "grad_matrix",
    "split_grad_matrix",
]

#: A layer whose ``delta`` is at most this is "dead": its factors fall back to ``I/d`` (Sec. 2).
DELTA_GUARD = 1e-30


def _rows(x: Tensor) -> Tensor:
    """``[N, T, d] -> [N*T, d]``: one row per (sample, location) pair."""
    return x.reshape(-1, x.shape[-1])


def _eye_like(m: Tensor) -> Tensor:
    """Identity with the size, dtype and device of the square matrix ``m``."""
    return torch.eye(m.shape[0], dtype=m.dtype, device=m.device)


# --------------------------------------------------------------------------- statistics


def tkfac_sums(a: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batch sums behind the TKFAC statistics (spec Sec. 2; paper Eq. 8, 12).

    With ``s[n,t] = ||a[n,t]||^2`` and ``r[n,t] = ||u[n,t]||^2``::

        sr_sum  = sum_{n,t} s * r
        phi_sum = sum_{n,t} r * a a^T
        psi_sum = sum_{n,t} s * u u^T

    They are plain sums, so data-parallel workers all-reduce them (and ``N``) before
    :func:`tkfac_from_sums` divides.

    Args:
        a: ``[N, T, d_in]`` layer inputs.
        u: ``[N, T, d_out]`` per-sample output gradients.

    Returns:
        ``sr_sum`` (0-d), ``phi_sum`` ``[d_in, d_in]``, ``psi_sum`` ``[d_out, d_out]``.
    """
    a2, u2 = _rows(a), _rows(u)  # [N*T, d_in], [N*T, d_out]
    s = (a2 * a2).sum(dim=1)  # [N*T]  s = ||a||^2
    r = (u2 * u2).sum(dim=1)  # [N*T]  r = ||u||^2
    sr_sum = (s * r).sum()
    phi_sum = (a2 * r[:, None]).T @ a2  # sum r a a^T
    psi_sum = (u2 * s[:, None]).T @ u2  # sum s u u^T
    return sr_sum, phi_sum, psi_sum


def tkfac_from_sums(
    sr_sum: Tensor, phi_sum: Tensor, psi_sum: Tensor, n: int | float | Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """``delta = sr_sum / N``, ``Phi = phi_sum / (N delta)``, ``Psi = psi_sum / (N delta)``.

    Spec Sec. 2 (paper Eq. 8 for Linear, Eq. 12 for Conv2d), with the guard: if
    ``delta <= 1e-30`` then ``Phi = I/d_in`` and ``Psi = I/d_out``, and ``delta`` is kept as
    computed. Otherwise ``tr(Phi) = tr(Psi) = 1``.

    Args:
        sr_sum: 0-d, ``sum s r``.
        phi_sum: ``[d_in, d_in]``, ``sum r a a^T``.
        psi_sum: ``[d_out, d_out]``, ``sum s u u^T``.
        n: ``N``, the number of samples behind the sums.

    Returns:
        ``delta`` (0-d), ``phi`` ``[d_in, d_in]``, ``psi`` ``[d_out, d_out]``.
    """
    delta = sr_sum / n
    if delta <= DELTA_GUARD:  # a dead layer: never divide by ~0
        return delta, _eye_like(phi_sum) / phi_sum.shape[0], _eye_like(psi_sum) / psi_sum.shape[0]
    n_delta = sr_sum  # N * delta
    return delta, phi_sum / n_delta, psi_sum / n_delta


def tkfac_stats(a: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """TKFAC statistics of one batch, ``(delta, Phi, Psi)`` (spec Sec. 2; paper Eq. 8, 12).

    ``delta = (1/N) sum s r`` is ``tr F``; ``delta Phi`` and ``delta Psi`` are the partial
    traces of ``F = (1/N) sum_{n,t} (a a^T) kron (u u^T)`` over the output and input spaces.

    Args:
        a: ``[N, T, d_in]``.
        u: ``[N, T, d_out]``.

    Returns:
        ``delta`` (0-d), ``phi`` ``[d_in, d_in]``, ``psi`` ``[d_out, d_out]``.
    """
    return tkfac_from_sums(*tkfac_sums(a, u), a.shape[0])


def kfac_sums(a: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Batch sums behind the KFAC factors (spec Sec. 6).

    Args:
        a: ``[N, T, d_in]``.
        u: ``[N, T, d_out]``.

    Returns:
        ``a_sum = sum_{n,t} a a^T`` ``[d_in, d_in]`` and ``g_sum = (1/T) sum_{n,t} u u^T``
        ``[d_out, d_out]`` (``T`` is the same on every worker, so dividing by it here keeps the
        all-reduce a plain sum; the twin does the same).
    """
    a2, u2 = _rows(a), _rows(u)
    return a2.T @ a2, (u2.T @ u2) / u.shape[1]


def kfac_from_sums(a_sum: Tensor, g_sum: Tensor, n: int | float | Tensor) -> tuple[Tensor, Tensor]:
    """``A = a_sum / N``, ``G = g_sum / N`` (spec Sec. 6)."""
    return a_sum / n, g_sum / n


def kfac_stats(a: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """KFAC factors of one batch (spec Sec. 6; Martens & Grosse 2015, Grosse & Martens 2016).

    ``A = (1/N) sum_{n,t} a a^T`` and ``G = (1/(N T)) sum_{n,t} u u^T``.

    Args:
        a: ``[N, T, d_in]``.
        u: ``[N, T, d_out]``.

    Returns:
        ``A`` ``[d_in, d_in]`` and ``G`` ``[d_out, d_out]``.
    """
    return kfac_from_sums(*kfac_sums(a, u), a.shape[0])


# --------------------------------------------------------------------------- damping


def tkfac_nor_damping(
    delta: Tensor, phi: Tensor, psi: Tensor, damping: float
) -> tuple[Tensor, Tensor]:
    """TKFAC_nor damping (spec Sec. 3; paper Eq. 14).

    ``Phi_hat = sqrt(delta) Phi + sqrt(lambda) I``, ``Psi_hat = sqrt(delta) Psi + sqrt(lambda) I``,
    so that ``Phi_hat kron Psi_hat ~ delta Phi kron Psi + lambda I`` (Eq. 13).

    Args:
        delta: 0-d.
        phi: ``[d_in, d_in]``.
        psi: ``[d_out, d_out]``.
        damping: ``lambda > 0``.

    Returns:
        ``phi_hat`` ``[d_in, d_in]`` and ``psi_hat`` ``[d_out, d_out]``.
    """
    sqrt_delta = delta.sqrt()
    sqrt_lambda = damping**0.5
    return (
        sqrt_delta * phi + sqrt_lambda * _eye_like(phi),
        sqrt_delta * psi + sqrt_lambda * _eye_like(psi),
    )


def tkfac_new_beta(conv_deltas: Sequence[Tensor], nu: float) -> Tensor:
    """``beta = max over conv layers with delta > 1e-30 of max(nu, delta) / delta`` (Eq. 16).

    ``beta = 1`` when there is no such layer (spec Sec. 3). It is computed over the whole
    network on one factor-update step, and then applied to every Linear layer.

    Args:
        conv_deltas: the ``delta`` (0-d) of every Conv2d layer on this step.
        nu: trace floor ``> 0``.

    Returns:
        ``beta`` (0-d, ``>= 1``).
    """
    ratios = [torch.clamp(d, min=nu) / d for d in conv_deltas if d > DELTA_GUARD]
    if not ratios:
        dtype = conv_deltas[0].dtype if conv_deltas else torch.get_default_dtype()
        return torch.tensor(1.0, dtype=dtype)
    return torch.stack(ratios).max()


def tkfac_new_delta(delta: Tensor, nu: float, beta: Tensor | None = None) -> Tensor:
    """The floored trace ``delta~`` of TKFAC_new (spec Sec. 3; paper Eq. 15-16).

    Conv2d layers (``beta is None``): ``delta~ = max(nu, delta)``;
    Linear layers: ``delta~ = max(nu, beta * delta)``.
    """
    scaled = delta if beta is None else beta * delta
    return torch.clamp(scaled, min=nu)


def tkfac_new_damping(
    delta: Tensor, phi: Tensor, psi: Tensor, nu: float, beta: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """TKFAC_new damped factors (spec Sec. 3; paper Eq. 15).

    With ``delta~ = tkfac_new_delta(delta, nu, beta)``::

        Phi~ = sqrt(delta~) Phi + (delta~ / d_in)  I
        Psi~ = sqrt(delta~) Psi + (delta~ / d_out) I

    Args:
        delta: 0-d, the layer's trace.
        phi: ``[d_in, d_in]``.
        psi: ``[d_out, d_out]``.
        nu: trace floor ``> 0``.
        beta: None for a Conv2d layer; :func:`tkfac_new_beta` for a Linear layer.

    Returns:
        ``phi_tilde`` ``[d_in, d_in]`` and ``psi_tilde`` ``[d_out, d_out]``.
    """
    delta_tilde = tkfac_new_delta(delta, nu, beta)
    sqrt_dt = delta_tilde.sqrt()
    d_in, d_out = phi.shape[0], psi.shape[0]
    return (
        sqrt_dt * phi + (delta_tilde / d_in) * _eye_like(phi),
        sqrt_dt * psi + (delta_tilde / d_out) * _eye_like(psi),
    )


def kfac_pi_damping(a_factor: Tensor, g_factor: Tensor, damping: float) -> tuple[Tensor, Tensor]:
    """KFAC factored Tikhonov damping (spec Sec. 6; Martens & Grosse 2015, Sec. 6.3).

    ``pi = sqrt((tr A / d_in) / (tr G / d_out))``,
    ``A_hat = A + pi sqrt(lambda) I``, ``G_hat = G + (sqrt(lambda) / pi) I``.
    If either trace is 0 (a dead layer), ``pi = 1`` (as in the twin).

    Args:
        a_factor: ``A``, ``[d_in, d_in]``.
        g_factor: ``G``, ``[d_out, d_out]``.
        damping: ``lambda > 0``.

    Returns:
        ``A_hat`` ``[d_in, d_in]`` and ``G_hat`` ``[d_out, d_out]``.
    """
    mean_eig_a = torch.trace(a_factor) / a_factor.shape[0]
    mean_eig_g = torch.trace(g_factor) / g_factor.shape[0]
    if mean_eig_a > 0 and mean_eig_g > 0:
        pi = (mean_eig_a / mean_eig_g).sqrt()
    else:
        pi = torch.ones((), dtype=a_factor.dtype, device=a_factor.device)
    sqrt_lambda = damping**0.5
    return (
        a_factor + (pi * sqrt_lambda) * _eye_like(a_factor),
        g_factor + (sqrt_lambda / pi) * _eye_like(g_factor),
    )


# --------------------------------------------------------------------------- state, inverse, step


def moving_average(state: Tensor | None, current: Tensor, decay: float, first: bool) -> Tensor:
    """Exponential moving average of a factor (spec Sec. 4; paper Eq. 17-18).

    ``first`` factor update: ``state = current``; later: ``decay * state + (1 - decay) * current``.

    Args:
        state: the running factor (ignored, may be None, when ``first``).
        current: this batch's factor, same shape.
        decay: ``epsilon`` in ``[0, 1)``.
        first: whether this is the first factor update.

    Returns:
        The new state (a new tensor).
    """
    if first or state is None:
        return current.clone()
    return decay * state + (1.0 - decay) * current


def spd_inverse(m: Tensor) -> Tensor:
    """Inverse of a symmetric positive definite ``[d, d]`` matrix, by Cholesky (spec Sec. 4).

    ``m = L L^T``, ``m^-1 = L^-T L^-1``; the result is symmetrised, ``(X + X^T) / 2``, to
    remove rounding skew.
    """
    chol = torch.linalg.cholesky(m)
    inv = torch.cholesky_inverse(chol)
    return 0.5 * (inv + inv.T)


def spd_inverse_or_none(m: Tensor) -> Tensor | None:
    """:func:`spd_inverse`, or None if ``m`` is not positive definite or the inverse not finite.

    The guard of a curvature update (``TKFAC._curvature_update``): ``torch.linalg.cholesky_ex``
    reports a failed factorization in ``info`` instead of raising.
    """
    if not bool(torch.isfinite(m).all()):
        return None
    chol, info = torch.linalg.cholesky_ex(m)
    if int(info) != 0:
        return None
    inv = torch.cholesky_inverse(chol)
    if not bool(torch.isfinite(inv).all()):
        return None
    return 0.5 * (inv + inv.T)


def precondition(grad_mat: Tensor, g_inv: Tensor, a_inv: Tensor) -> Tensor:
    """``D = g_inv @ G_W @ a_inv`` (spec Sec. 5 step 3).

    TKFAC: ``D = Psi_hat^-1 G_W Phi_hat^-1``; KFAC: ``D = G_hat^-1 G_W A_hat^-1``. This is
    ``(Phi_hat kron Psi_hat)^-1 vec(G_W)`` with column-major ``vec``.

    Args:
        grad_mat: ``G_W``, ``[d_out, d_in]``.
        g_inv: ``[d_out, d_out]``.
        a_inv: ``[d_in, d_in]``.

    Returns:
        ``D``, ``[d_out, d_in]``.
    """
    return g_inv @ grad_mat @ a_inv


def kl_clip_scale(vg_sum: Tensor, lr: float, kl_clip: float) -> Tensor:
    """KL-clipping factor ``min(1, sqrt(kappa / (lr^2 sum_layers <D, G_W>)))`` (spec Sec. 5).

    Ba, Grosse & Martens (2017). Returns 1 if ``sum <D, G_W> <= 0``.

    Args:
        vg_sum: 0-d, ``sum over preconditioned layers of <D, G_W>``.
        lr: the learning rate of this step.
        kl_clip: ``kappa > 0``.
    """
    denom = lr**2 * vg_sum
    if denom <= 0:
        return torch.ones_like(vg_sum)
    return torch.clamp((kl_clip / denom).sqrt(), max=1.0)


def grad_matrix(weight_grad: Tensor, bias_grad: Tensor | None) -> Tensor:
    """``G_W``: the weight gradient as ``[d_out, C_in*k_h*k_w]``, bias appended (spec Sec. 1).

    Args:
        weight_grad: ``[C_out, C_in]`` (Linear) or ``[C_out, C_in, k_h, k_w]`` (Conv2d).
        bias_grad: ``[C_out]`` or None.

    Returns:
        ``[d_out, d_in]`` with ``d_in = C_in*k_h*k_w (+1)``; columns in ``(c, i, j)`` order.
    """
    mat = weight_grad.reshape(weight_grad.shape[0], -1)
    if bias_grad is None:
        return mat
    return torch.cat([mat, bias_grad.reshape(-1, 1)], dim=1)


def split_grad_matrix(
    mat: Tensor, weight_shape: Sequence[int], has_bias: bool
) -> tuple[Tensor, Tensor | None]:
    """Inverse of :func:`grad_matrix`: ``[d_out, d_in] -> (weight-shaped, [d_out] or None)``."""
    if has_bias:
        return mat[:, :-1].reshape(weight_shape), mat[:, -1]
    return mat.reshape(weight_shape), None

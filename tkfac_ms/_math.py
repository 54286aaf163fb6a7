"""Pure TKFAC/KFAC math in MindSpore ops: tensors in, tensors out, no state.

Every function maps to one formula of ``shared/spec/tkfac-math.md`` (cited as "spec Sec. k")
and of the paper (Gao et al., AAAI 2021, cited as "Eq. n"). The twin of this module is
``reference_torch/_math.py``; the function names are the same.

All functions compile in GRAPH_MODE (they are called from the capture cells and the optimizer)
and also run eagerly. Data layout everywhere: ``a`` is ``[N, T, d_in]``, ``u`` is
``[N, T, d_out]`` (``N`` samples, ``T`` locations: 1 for Dense, ``H_out * W_out`` for Conv2d).
"""

from __future__ import annotations

from mindspore import Tensor, ops
from mindspore import dtype as mstype


def const(value: float, like: Tensor) -> Tensor:
    """``value`` as a scalar of ``like``'s dtype.

    Also the portable way to divide by a Python number: ``x / d`` with an ``int`` ``d`` compiles
    to MindSpore 2.10's undocumented tensor-scalar primitive ``Divs``, ``x / const(d, x)`` to the
    documented ``Div`` (``python -m tkfac_ms.portability``).

    In GRAPH_MODE a bare Python float becomes a float32 constant (0.9 -> 0.8999999762) even
    next to a float64 tensor, and Python scalar arithmetic inside a graph is done in float32
    too; ``Tensor(value, dtype)`` keeps full precision.
    """
    return Tensor(value, like.dtype)


#: A layer whose ``delta`` is at most this is "dead": its factors fall back to scaled identities.
DELTA_GUARD = 1e-30


# ``x^T y`` without materialising ``x^T`` (measured ~1.6x faster than ``matmul(x.T, y)`` on CPU).
_matmul_tn = ops.MatMul(transpose_a=True)


def where(condition: Tensor, x: Tensor, y: Tensor) -> Tensor:
    """``x`` where the scalar bool ``condition`` holds, else ``y``.

    A selection, not a branch, so NaN/Inf in the unselected side cannot leak in.
    """
    return ops.select(ops.broadcast_to(condition, x.shape), x, y)


def _flatten(x: Tensor) -> Tensor:
    """``[N, T, d] -> [N*T, d]``."""
    return x.reshape(-1, x.shape[-1])


def tkfac_sums(a: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Batch sums behind the TKFAC statistics (spec Sec. 2, paper Eq. 8 and 12).

    With ``s = ||a[n,t]||^2`` and ``r = ||u[n,t]||^2``:
    ``sr_sum = sum_{n,t} s*r``, ``phi_sum = sum_{n,t} r * a a^T`` and
    ``psi_sum = sum_{n,t} s * u u^T``.
    These are sums, so data-parallel workers all-reduce them before :func:`tkfac_from_sums`.

    Args:
        a: ``[N, T, d_in]`` layer inputs (with the bias column if any).
        u: ``[N, T, d_out]`` per-sample output gradients.

    Returns:
        ``sr_sum`` (scalar), ``phi_sum`` ``[d_in, d_in]``, ``psi_sum`` ``[d_out, d_out]``.
    """
    a2, u2 = _flatten(a), _flatten(u)
    s = (a2 * a2).sum(axis=1)  # [N*T]
    r = (u2 * u2).sum(axis=1)  # [N*T]
    sr_sum = (s * r).sum()
    phi_sum = _matmul_tn(a2 * r.reshape(-1, 1), a2)
    psi_sum = _matmul_tn(u2 * s.reshape(-1, 1), u2)
    return sr_sum, phi_sum, psi_sum


def tkfac_from_sums(
    sr_sum: Tensor, phi_sum: Tensor, psi_sum: Tensor, n: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """``delta = sr_sum / N``, ``Phi = phi_sum / (N delta)``, ``Psi = psi_sum / (N delta)``.

    Spec Sec. 2, with its guard: if ``delta <= 1e-30`` then ``Phi = I/d_in``, ``Psi = I/d_out``
    (``delta`` is kept as computed). ``tr(Phi) = tr(Psi) = 1`` otherwise.

    Returns:
        ``delta`` (scalar), ``phi`` ``[d_in, d_in]``, ``psi`` ``[d_out, d_out]``.
    """
    delta = sr_sum / n
    alive = delta > DELTA_GUARD
    denom = ops.select(alive, sr_sum, ops.ones_like(sr_sum))  # N * delta, never zero
    d_in, d_out = phi_sum.shape[0], psi_sum.shape[0]
    eye_in = ops.eye(d_in, d_in, phi_sum.dtype) / const(d_in, phi_sum)
    eye_out = ops.eye(d_out, d_out, psi_sum.dtype) / const(d_out, psi_sum)
    phi = ops.select(alive, phi_sum / denom, eye_in)
    psi = ops.select(alive, psi_sum / denom, eye_out)
    return delta, phi, psi


def tkfac_stats(a: Tensor, u: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """TKFAC statistics of one batch: ``(delta, Phi, Psi)`` (spec Sec. 2, paper Eq. 8, 12).

    Args:
        a: ``[N, T, d_in]``.
        u: ``[N, T, d_out]``.

    Returns:
        ``delta`` (scalar, ``= tr F``), ``phi`` ``[d_in, d_in]``, ``psi`` ``[d_out, d_out]``.
    """
    return tkfac_from_sums(*tkfac_sums(a, u), a.shape[0])


def kfac_sums(a: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """Batch sums behind the KFAC factors (spec Sec. 6).

    Returns:
        ``a_sum = sum_{n,t} a a^T`` ``[d_in, d_in]`` and ``g_sum = (1/T) sum_{n,t} u u^T``
        ``[d_out, d_out]`` (``T`` is the same on every worker, so dividing by it early keeps
        the all-reduce a plain sum).
    """
    a2, u2 = _flatten(a), _flatten(u)
    return _matmul_tn(a2, a2), _matmul_tn(u2, u2) / const(u.shape[1], u2)


def kfac_stats(a: Tensor, u: Tensor) -> tuple[Tensor, Tensor]:
    """KFAC factors of one batch (spec Sec. 6).

    ``A = (1/N) sum a a^T`` and ``G = (1/(N T)) sum u u^T``.

    Args:
        a: ``[N, T, d_in]``.
        u: ``[N, T, d_out]``.

    Returns:
        ``A`` ``[d_in, d_in]`` and ``G`` ``[d_out, d_out]``.
    """
    a_sum, g_sum = kfac_sums(a, u)
    n = a.shape[0]
    return a_sum / n, g_sum / n


def _eye_like(m: Tensor) -> Tensor:
    return ops.eye(m.shape[0], m.shape[0], m.dtype)


def add_to_diagonal(m: Tensor, value: Tensor) -> Tensor:
    """``m + value * I`` without an identity matrix: ``m + diag(value, ..., value)``.

    Portable (``Diag`` and ``Add`` have kernels on Ascend, GPU and CPU); it replaced
    ``matrix_set_diag`` (``MatrixSetDiagV3``, deprecated in MindSpore 2.x and absent from
    Ascend's documented kernels) at the cost of one ``d x d`` buffer more.
    """
    return m + ops.diag(ops.broadcast_to(ops.cast(value, m.dtype), (m.shape[0],)))


def tkfac_factor_coefficients(
    sr_sum: Tensor,
    n: Tensor,
    sqrt_delta: Tensor,
    sum_factor: Tensor,
    damping_in: Tensor,
    damping_out: Tensor,
    d_in: int,
    d_out: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(scale, shift_in, shift_out)``: damped factors ``scale * sum + shift * I``.

    The spec's chain (Sec. 2-3) for the input side, with ``sum = phi_sum``:
    ``Phi = sum / (N delta)`` (or ``I / d_in`` for a dead layer, ``delta <= 1e-30``), then
    ``Phi_hat = sqrt_delta * Phi + damping_in * I``, where ``sqrt_delta`` is ``sqrt(delta)``
    (TKFAC_nor) or ``sqrt(delta~)`` (TKFAC_new) and ``damping_in`` is ``sqrt(lambda)`` or
    ``delta~ / d_in``. Hence ``scale = sqrt_delta / (N delta)`` and ``shift_in = damping_in``
    for a live layer, ``scale = 0`` and ``shift_in = damping_in + sqrt_delta / d_in`` for a dead
    one; the output side (``psi_sum``) has the same ``scale``. ``sr_sum`` and ``n`` are the
    ``N delta`` and ``N`` of :func:`tkfac_from_sums`; ``sum_factor`` multiplies both sums first
    (the optimizer's ``c^2``, which the captured sums do not carry yet).
    """
    alive = sr_sum / n > DELTA_GUARD
    denom = ops.select(alive, sr_sum, ops.ones_like(sr_sum))
    zero = ops.zeros_like(sqrt_delta)
    scale = ops.select(alive, sqrt_delta * sum_factor / denom, zero)
    shift_in = damping_in + ops.select(alive, zero, sqrt_delta / const(d_in, sqrt_delta))
    shift_out = damping_out + ops.select(alive, zero, sqrt_delta / const(d_out, sqrt_delta))
    return scale, shift_in, shift_out


def update_moving_average(
    state: Tensor,
    stat_sum: Tensor,
    scale: Tensor,
    shift: Tensor | None,
    decay: float,
    first: Tensor,
) -> Tensor:
    """The moving average (Eq. 17-18) of ``current = scale * stat_sum + shift * I`` (spec Sec. 4).

    ``first``: ``current``; later ``decay * state + (1 - decay) * current``; the two cases are
    one expression with scalar weights, ``keep * state + take * current``, and ``current`` is
    never formed. Four ``d x d`` buffers (three without ``shift``) instead of the eleven of
    the written-out chain statistics -> damping -> moving average, which it equals up to
    rounding (tested against the reference's chain, ``reference_torch/_math.py``:
    ``tkfac_nor_damping`` / ``tkfac_new_damping`` -> ``moving_average``).
    """
    eps = const(decay, state)
    keep = ops.select(first, ops.zeros_like(eps), eps)
    take = ops.select(first, ops.ones_like(eps), const(1.0, state) - eps)
    mixed = state * keep + stat_sum * (take * ops.cast(scale, state.dtype))
    if shift is None:
        return mixed
    return add_to_diagonal(mixed, take * ops.cast(shift, state.dtype))


def tkfac_new_delta(delta: Tensor, nu: float, beta: Tensor | None = None) -> Tensor:
    """The restricted trace ``delta~`` of TKFAC_new (spec Sec. 3, paper Eq. 15-16).

    Conv layers (``beta is None``): ``max(nu, delta)``; dense layers: ``max(nu, beta * delta)``.
    """
    scaled = delta if beta is None else beta * delta
    return ops.maximum(scaled, const(nu, delta))


def tkfac_new_beta(conv_deltas: list[Tensor] | tuple[Tensor, ...], nu: float) -> Tensor:
    """``beta = max over live conv layers of max(nu, delta) / delta``; 1 if none (Eq. 16).

    A layer is live when ``delta > 1e-30`` (spec Sec. 3).
    """
    beta = Tensor(1.0, conv_deltas[0].dtype) if conv_deltas else Tensor(1.0)
    for delta in conv_deltas:
        alive = delta > DELTA_GUARD
        safe = ops.select(alive, delta, ops.ones_like(delta))
        ratio = ops.select(alive, ops.maximum(safe, const(nu, safe)) / safe, ops.ones_like(safe))
        beta = ops.maximum(beta, ratio)
    return beta


def kfac_pi_damping(
    a_factor: Tensor, g_factor: Tensor, damping: Tensor | float
) -> tuple[Tensor, Tensor]:
    """KFAC factored Tikhonov damping with ``pi`` (spec Sec. 6, Martens & Grosse 2015).

    ``pi = sqrt((tr A / d_in) / (tr G / d_out))``,
    ``A_hat = A + pi sqrt(lambda) I``, ``G_hat = G + sqrt(lambda) / pi I``.
    """
    d_in, d_out = a_factor.shape[0], g_factor.shape[0]
    tr_a = ops.trace(a_factor) / const(d_in, a_factor)
    tr_g = ops.trace(g_factor) / const(d_out, g_factor)
    ok = ops.logical_and(tr_a > 0, tr_g > 0)
    pi = ops.select(
        ok, ops.sqrt(tr_a / ops.select(ok, tr_g, ops.ones_like(tr_g))), ops.ones_like(tr_a)
    )
    sl = ops.sqrt(
        ops.cast(damping, a_factor.dtype)
        if isinstance(damping, Tensor)
        else Tensor(damping, a_factor.dtype)
    )
    return add_to_diagonal(a_factor, pi * sl), add_to_diagonal(g_factor, sl / pi)


def spd_inverse(m: Tensor) -> Tensor:
    """Inverse of a symmetric positive definite matrix by Cholesky (spec Sec. 4).

    The ``inverse="cholesky"`` route (CPU and GPU only: ``ops.cholesky`` has no Ascend kernel).
    ``M = (m + m^T) / 2 + jitter I = L L^T``; ``M^{-1} = cholesky_solve(I, L)``, symmetric to
    rounding. Safeguard beyond the spec: ``m`` is symmetrised (MindSpore's CPU Cholesky rejects
    a float64 input that is not symmetric) and gets a jitter of ``eps * mean(diag m)`` (``eps``
    = 1e-7 in float32, 1e-15 in float64, about one rounding unit), so that a factor made
    slightly indefinite by rounding does not abort the kernel. The change is below the parity
    tolerances (see docs/math.md). A matrix that is still not positive definite makes the
    kernel raise: this route has no in-graph guard (use :func:`sym_inverse`).

    Written for memory, as a compiled CPU graph keeps a buffer for every intermediate: the
    halving is an exact factor of two carried to the right-hand side,
    ``M^{-1} = cholesky_solve(2 I, chol(2 M))`` with ``2 M = m + m^T + 2 jitter I``.
    """
    twice = m + m.T  # 2 * sym(m), exactly
    chol = ops.cholesky(add_to_diagonal(twice, _jitter2(twice)))  # 2M = L L^T
    return ops.cholesky_solve(_eye_like(m) * 2, chol)  # (2M)^{-1} * 2 = M^{-1}


def _jitter2(twice: Tensor) -> Tensor:
    """``2 * jitter`` for ``twice = 2 sym(m)``: ``eps * |tr(twice)| / d``, one rounding unit."""
    eps = 1e-15 if twice.dtype == mstype.float64 else 1e-7
    return eps * ops.abs(ops.trace(twice)) / const(twice.shape[0], twice)


_matrix_inverse = ops.MatrixInverse()

#: :func:`inverse_is_valid` accepts an inverse whose probe residual ``||M X v - v|| / ||v||`` is
#: at most this. An accurate inverse has about ``cond(M) * eps`` (<= 1e-2 up to cond 1e5 in
#: float32); the inverses of numerically singular or non-finite factors have residuals >> 1.
#: Below 1 the preconditioner is still within a factor ``1 +- 0.5`` of the exact one.
INVERSE_RESIDUAL_TOL = 0.5


def sym_inverse(m: Tensor) -> Tensor:
    """Inverse of a symmetric positive definite matrix by LU (spec Sec. 4); the default route.

    ``M = (m + m^T) / 2 + jitter I`` (jitter as in :func:`spd_inverse`), ``X = M^{-1}`` from
    ``MatrixInverse`` (LU with partial pivoting: kernels on Ascend, GPU and CPU), symmetrised:
    ``(X + X^T) / 2``. Unlike Cholesky it never raises: a factor that is not positive definite
    yields a wrong (or non-finite) ``X``, which :func:`inverse_is_valid` detects.
    """
    twice = m + m.T  # 2 * sym(m), exactly
    half_inv = _matrix_inverse(add_to_diagonal(twice, _jitter2(twice)))  # (2M)^{-1}
    return half_inv + half_inv.T  # (X + X^T) / 2 with X = 2 (2M)^{-1}


def inverse_is_valid(m: Tensor, inv: Tensor) -> Tensor:
    """Whether ``inv`` is a usable inverse of the positive definite ``m``: a scalar bool.

    True iff every entry of ``inv`` is finite, its diagonal is positive (that of an SPD
    inverse is) and the residual of two probe vectors ``V = [1, (-1)^i]`` is small:
    ``||m (inv V) - V||_F / ||V||_F <= INVERSE_RESIDUAL_TOL``. ``O(d^2)``: two matrix-vector
    products instead of the ``d^3`` product ``m @ inv``.
    """
    d = m.shape[0]
    ones = ops.ones((d, 1), m.dtype)
    signs = ops.tile(Tensor([1.0, -1.0], m.dtype), ((d + 1) // 2,))[:d].reshape(d, 1)
    probes = ops.concat((ones, signs), axis=1)  # [d, 2]
    residual = ops.matmul(m, ops.matmul(inv, probes)) - probes
    ratio = (residual * residual).sum() / const(2 * d, m)  # ||V||_F^2 = 2 d
    finite = ops.isfinite(inv).all()
    safe_ratio = ops.select(ops.isfinite(ratio), ratio, ops.ones_like(ratio) * 1e30)
    tol2 = const(INVERSE_RESIDUAL_TOL * INVERSE_RESIDUAL_TOL, ratio)
    return ops.logical_and(
        ops.logical_and(finite, (ops.diagonal(inv) > 0).all()), safe_ratio <= tol2
    )


def precondition(grad_mat: Tensor, g_inv: Tensor, a_inv: Tensor) -> Tensor:
    """``D = G_inv @ G_W @ A_inv`` (spec Sec. 5 step 3; TKFAC: ``Psi_hat^-1 G_W Phi_hat^-1``)."""
    return ops.matmul(ops.matmul(g_inv, grad_mat), a_inv)


def grad_matrix(weight_grad: Tensor, bias_grad: Tensor | None) -> Tensor:
    """``G_W``: the weight gradient as ``[d_out, C_in*k_h*k_w]``, bias column appended (Sec. 1)."""
    mat = weight_grad.reshape(weight_grad.shape[0], -1)
    if bias_grad is None:
        return mat
    return ops.concat((mat, bias_grad.reshape(-1, 1)), axis=1)


def split_grad_matrix(
    mat: Tensor, weight_shape: tuple[int, ...], has_bias: bool
) -> tuple[Tensor, Tensor | None]:
    """Inverse of :func:`grad_matrix`: ``[d_out, d_in] -> (weight-shaped, bias or None)``."""
    if has_bias:
        return mat[:, :-1].reshape(weight_shape), mat[:, -1]
    return mat.reshape(weight_shape), None

"""Inverse routes for a damped factor, measured in one process: time, residual, parity error.

Candidates (issue 13: choose the portable inverse by measurement):

* ``lu``: ``MatrixInverse`` (LU, kernels on Ascend, GPU, CPU): :func:`tkfac_ms._math.sym_inverse`;
* ``cholesky``: ``cholesky`` + ``cholesky_solve`` (GPU, CPU only): ``_math.spd_inverse``;
* ``newton_schulz``: ``X <- X (2I - M X)`` (MatMul only, portable), warm-started from the
  inverse of the previous factor state ``M_prev`` with ``M = 0.95 M_prev + 0.05 S_new``, as on an
  inverse step of the moving average; iterations counted until the residual is below the LU
  route's, at most 30.

The factor is a TKFAC-like damped Gram matrix ``sqrt(delta) Phi + sqrt(lambda) I`` of ``2d``
random samples (float32). Residual: ``||M X - I||_F / sqrt(d)`` in float64; parity error:
``max|X - M64^{-1}| / max|M64^{-1}|`` against NumPy's float64 inverse of the same float32 matrix.

Usage::

    python bench/inverse_routes.py [--dims 512 1152 2304 4608] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402

from bench._common import provenance, write_json  # noqa: E402
from tkfac_ms import _math  # noqa: E402


class _Route(nn.Cell):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def construct(self, m):
        return self.fn(m)


class _NewtonSchulz(nn.Cell):
    """``iters`` Newton-Schulz steps from ``x``: ``X <- X (2I - M X)`` (= ``2X - X M X``)."""

    def __init__(self, iters: int):
        super().__init__()
        self.iters = iters

    def construct(self, m, x):
        for _ in range(self.iters):
            x = 2 * x - ops.matmul(x, ops.matmul(m, x))
        return x


def _factor(d: int, seed: int, damping: float = 1e-3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((2 * d, d)) * rng.uniform(0.1, 3.0, d)  # uneven columns
    phi = a.T @ a
    phi /= np.trace(phi)
    delta = 50.0
    return (np.sqrt(delta) * phi + np.sqrt(damping) * np.eye(d)).astype(np.float32)


def _residual(m: np.ndarray, x: np.ndarray) -> float:
    d = m.shape[0]
    return float(np.linalg.norm(m.astype(np.float64) @ x - np.eye(d)) / np.sqrt(d))


def _parity(x: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(x - ref).max() / np.abs(ref).max())


def _timed(fn, *args, reps: int) -> tuple[np.ndarray, float]:
    out = fn(*args).asnumpy()  # compile
    best = np.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn(*args).asnumpy()
        best = min(best, time.perf_counter() - t0)
    return out, best


def measure(d: int, reps: int) -> dict:
    prev = _factor(d, 1)
    new = (0.95 * prev.astype(np.float64) + 0.05 * _factor(d, 2)).astype(np.float32)
    ref = np.linalg.inv(new.astype(np.float64))
    row: dict = {"d": d}
    lu_out, row["lu_s"] = _timed(_Route(_math.sym_inverse), Tensor(new), reps=reps)
    ch_out, row["cholesky_s"] = _timed(_Route(_math.spd_inverse), Tensor(new), reps=reps)
    row["lu_residual"], row["lu_parity"] = _residual(new, lu_out), _parity(lu_out, ref)
    row["cholesky_residual"] = _residual(new, ch_out)
    row["cholesky_parity"] = _parity(ch_out, ref)
    # Newton-Schulz from the previous state's inverse: one iteration timed, then counted
    x0 = np.linalg.inv(prev.astype(np.float64)).astype(np.float32)
    one = _NewtonSchulz(1)
    _, row["newton_schulz_iter_s"] = _timed(one, Tensor(new), Tensor(x0), reps=reps)
    x, iters, target = Tensor(x0), 0, row["lu_residual"]
    res = _residual(new, x0)
    row["newton_schulz_start_residual"] = res
    while res > target and iters < 30:
        x = one(Tensor(new), x)
        iters += 1
        res = _residual(new, x.asnumpy())
    row["newton_schulz_iters"] = iters
    row["newton_schulz_residual"] = res
    row["newton_schulz_parity"] = _parity(x.asnumpy(), ref)
    row["newton_schulz_s"] = iters * row["newton_schulz_iter_s"]
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--dims", type=int, nargs="+", default=[512, 1152, 2304, 4608])
    p.add_argument("--reps", type=int, default=2, help="timed repeats (best kept)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    ms.set_context(mode=ms.GRAPH_MODE)
    rows = []
    for d in args.dims:
        row = measure(d, args.reps if d < 4608 else 1)
        rows.append(row)
        print(
            f"d={d}: lu {row['lu_s'] * 1e3:.0f} ms (res {row['lu_residual']:.1e}, parity "
            f"{row['lu_parity']:.1e}) | cholesky {row['cholesky_s'] * 1e3:.0f} ms (res "
            f"{row['cholesky_residual']:.1e}, parity {row['cholesky_parity']:.1e}) | "
            f"newton-schulz {row['newton_schulz_iters']} x {row['newton_schulz_iter_s'] * 1e3:.0f}"
            f" ms from res {row['newton_schulz_start_residual']:.1e} (res "
            f"{row['newton_schulz_residual']:.1e}, parity {row['newton_schulz_parity']:.1e})",
            flush=True,
        )
    out = {"rows": rows, **provenance()}
    if args.json:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

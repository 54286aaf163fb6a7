"""Inverse step of a whole network (issue 14 item 3, "Inverse cost"): routes timed per factor shape.

An inverse step inverts both factors of every preconditioned layer: ResNet-50 (model zoo, 1000
classes) and VGG16-BN (10 classes) have 54 and 14 layers, several 4608 x 4608 factors among them.
This script lists the factor shapes of the real networks (``tkfac_ms.wrap_network``, in a child
process so that the wrappers' state does not stay resident), then, for every distinct dimension
``d`` with its count ``k``, times the inverse work of that group under each candidate route in a
MindSpore GRAPH_MODE cell on the CPU (float32), and sums the groups to the network's inverse step.

Candidates (``--routes``):

* ``lu``: today's route (``inverse="lu"``): per factor :func:`tkfac_ms._math.sym_inverse`
  (``MatrixInverse``) and :func:`~tkfac_ms._math.inverse_is_valid`, unrolled, one op per factor;
* ``lu_batched``: the same, one ``MatrixInverse`` over the stacked ``[k, d, d]`` group, the probe
  check batched;
* ``ns2``, ``ns3``: Newton-Schulz ``X <- X (2I - M X)`` (``BatchMatMul`` only) from the inverse of
  the previous factor state, 2 or 3 iterations, batched per group, the probe check; the
  Frobenius norms of every iterate's ``R = I - M X`` come out of the graph for free (and
  ``||R_final|| <= ||R_last||^2`` bounds the returned iterate);
* ``block``: recursive 2 x 2 block (Schur complement) inverse, batched per group: ``A^-1``
  recursively, ``W = A^-1 B``, ``S = D - B^T W``, ``S^-1`` recursively, ``Y = W S^-1``,
  ``M^-1 = [[A^-1 + Y W^T, -Y], [-Y^T, S^-1]]``; ``MatrixInverse`` on blocks of at most
  ``--leaf``, everything else ``BatchMatMul``, ``StridedSlice``, ``Concat`` (all documented for
  Ascend, GPU and CPU in ``tkfac_ms/op_support/mindspore-2.10.0.json``); exact in exact
  arithmetic, no warm start, but in float32 the explicit Schur complement cancels: measured
  residual ~1e2 on these factors (cond ~1e4) for every ``d`` above the leaf, i.e. unusable;
* ``cholesky``: per factor :func:`~tkfac_ms._math.spd_inverse` (``Cholesky`` + ``CholeskySolve``),
  unrolled: the CPU/GPU reference point, not portable (``Cholesky`` has no Ascend kernel).

Factors: damped moving averages of Gram matrices of ``--n-batch`` samples per step (a population
with power-law column scales and a strong rank-8 component), ``M = Phi / mean eig + floor I``
with ``floor = --floor`` times the mean eigenvalue (0.03: TKFAC_new at ``delta = nu = 1e-3``,
the worst-conditioned case), after ``--history`` updates at decay 0.95 (``M_prev``); the factor
to invert is ``M_prev`` after ``--ema-steps`` more updates (1: the default
``factor_update_steps == inv_update_steps``); the warm start is ``M_prev``'s float32 inverse.
``--stress-steps`` reruns the Newton-Schulz cells on factors that moved that many updates (a
run with ``factor_update_steps < inv_update_steps``) for their residuals only.

Reported per group and route: compile time (``Cell.compile``), median run time of ``--reps``
runs (one run where a run takes over ``--long-s``), residual ``||M X - I||_F / sqrt(d)`` and
parity error ``max|X - M^-1| / max|M^-1|`` in float64 on ``--cols`` random columns (the exact
columns by a float64 solve), and for Newton-Schulz how many factors would need the LU fallback
(residual above twice LU's on the same factor, or a failed probe check).

Usage (one core, as measured)::

    taskset -c 1 python bench/inverse_scale.py [--models resnet50,vgg16_bn]
        [--routes lu,lu_batched,ns2,ns3,block,cholesky] [--dims 512x2,1152] [--reps 3]
        [--leaf 576] [--json bench/results/inverse_scale.json]

``--dims DxK,...`` replaces the networks by a list of groups (for quick iterations).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import resource
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
os.environ.setdefault("GLOG_v", "3")

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402
from mindspore import dtype as mstype  # noqa: E402

from bench._common import finish, provenance, write_json  # noqa: E402
from tkfac_ms import _math  # noqa: E402

ROUTES = ("lu", "lu_batched", "ns2", "ns3", "block", "cholesky")
PORTABLE = {
    "lu": True,
    "lu_batched": True,
    "ns2": True,
    "ns3": True,
    "block": True,
    "cholesky": False,
}
#: (model, classes) of issue 14's networks.
MODELS = {"resnet50": 1000, "vgg16_bn": 10}
DECAY = 0.95


# ----------------------------------------------------------------------------- shapes


def _shapes_child(model: str) -> list[tuple[str, int, int]]:
    import tkfac_ms
    from model_zoo.src.models import create_model

    net = create_model(model, num_classes=MODELS[model])
    return [
        (w.path if hasattr(w, "path") else str(i), int(w.d_in), int(w.d_out))
        for i, w in enumerate(tkfac_ms.wrap_network(net))
    ]


def factor_shapes(model: str) -> dict:
    """Layers of ``model`` and its factor dimensions (computed in a spawned child process)."""
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        layers = pool.submit(_shapes_child, model).result()
    counts = Counter()
    for _, d_in, d_out in layers:
        counts[d_in] += 1
        counts[d_out] += 1
    dims = sorted(counts.items())
    return {
        "layers": len(layers),
        "factors": 2 * len(layers),
        "dims": [[d, k] for d, k in dims],
        "sum_d3": sum(k * d**3 for d, k in dims),
        "sum_d2_bytes_f32": sum(4 * k * d * d for d, k in dims),
    }


# ----------------------------------------------------------------------------- factors


def _population(d: int, rng: np.random.Generator):
    scales = np.sqrt((np.arange(d) + 1.0) ** -1.0)[rng.permutation(d)].astype(np.float32)
    basis = rng.standard_normal((8, d)).astype(np.float32) / np.sqrt(d)
    weights = np.array([8.0, 6.0, 4.0, 3.0, 2.0, 1.5, 1.0, 1.0], np.float32)
    return scales, basis, weights


def _samples(pop, n: int, rng: np.random.Generator) -> np.ndarray:
    scales, basis, weights = pop
    z = rng.standard_normal((n, scales.size), dtype=np.float32) * scales
    w = rng.standard_normal((n, weights.size), dtype=np.float32) * weights
    return z + w @ basis * np.sqrt(scales.size, dtype=np.float32)


def _ema_gram(batches: list[np.ndarray], weights: list[float]) -> np.ndarray:
    x = np.concatenate(
        [b * np.float32(np.sqrt(w / b.shape[0])) for b, w in zip(batches, weights, strict=True)]
    )
    return x.T @ x


def make_factors(d: int, seed: int, args) -> dict:
    """``M_prev``, ``M`` (after ``--ema-steps`` updates), ``M_stress``, the warm start ``X0``."""
    rng = np.random.default_rng([d, seed])
    pop = _population(d, rng)
    n, hist = args.n_batch, args.history
    steps = max(args.ema_steps, args.stress_steps)
    batches = [_samples(pop, n, rng) for _ in range(hist + steps)]

    def state(h: int) -> np.ndarray:  # EMA after h updates: the first batch, then decay 0.95
        w = [DECAY ** (h - 1)] + [(1 - DECAY) * DECAY ** (h - 1 - b) for b in range(1, h)]
        return _ema_gram(batches[:h], w)

    prev = state(hist)
    mean_eig = float(np.trace(prev)) / d
    floor = np.float32(args.floor)

    def damped(g: np.ndarray) -> np.ndarray:
        g /= np.float32(mean_eig)
        g[np.diag_indices(d)] += floor
        return g

    out = {"prev": damped(prev), "cur": damped(state(hist + args.ema_steps))}
    if args.stress_steps:
        out["stress"] = damped(state(hist + args.stress_steps))
    x0 = np.linalg.inv(out["prev"].astype(np.float64))
    out["x0"] = ((x0 + x0.T) * 0.5).astype(np.float32)  # stored inverses are symmetrised
    del out["prev"]
    v = rng.standard_normal(d)
    for _ in range(30):  # power iteration: largest eigenvalue of M
        v = out["cur"] @ v
        v /= np.linalg.norm(v)
    out["cond_bound"] = float(v @ out["cur"] @ v) / float(args.floor)
    return out


class _Metrics:
    """Residual and parity error of candidate inverses on ``cols`` random columns, float64."""

    def __init__(self, m: np.ndarray, cols: int, rng: np.random.Generator):
        d = m.shape[0]
        self.idx = np.sort(rng.choice(d, min(cols, d), replace=False))
        self.m64 = m.astype(np.float64)
        rhs = np.zeros((d, self.idx.size))
        rhs[self.idx, np.arange(self.idx.size)] = 1.0
        self.rhs = rhs
        self.exact = np.linalg.solve(self.m64, rhs)
        self.scale = np.abs(self.exact).max()

    def __call__(self, x: np.ndarray) -> tuple[float, float]:  # noqa: D102
        xc = x[:, self.idx].astype(np.float64)
        res = np.linalg.norm(self.m64 @ xc - self.rhs) / np.sqrt(self.idx.size)
        par = np.abs(xc - self.exact).max() / self.scale
        return float(res), float(par)


# ----------------------------------------------------------------------------- routes (graphs)

_inv = ops.MatrixInverse()
_bmm = ops.BatchMatMul()
_bmm_tn = ops.BatchMatMul(transpose_a=True)
_bmm_nt = ops.BatchMatMul(transpose_b=True)


def _t(x: Tensor) -> Tensor:
    return ops.transpose(x, (0, 2, 1))


def _eye_b(k: int, d: int, dtype) -> Tensor:
    return ops.broadcast_to(ops.eye(d, d, dtype).reshape(1, d, d), (k, d, d))


def _twice_jittered(m: Tensor) -> Tensor:
    """Batched ``2 sym(m) + 2 jitter I`` as in :func:`tkfac_ms._math.sym_inverse`."""
    k, d = m.shape[0], m.shape[1]
    twice = m + _t(m)
    tr = ops.diagonal(twice, 0, 1, 2).sum(axis=1)  # [k]
    jit = 1e-7 * ops.abs(tr) / _math.const(d, twice)
    return twice + _eye_b(k, d, m.dtype) * jit.reshape(k, 1, 1)


def _valid_b(m: Tensor, inv: Tensor) -> Tensor:
    """Batched :func:`tkfac_ms._math.inverse_is_valid`: all factors of the group pass."""
    k, d = m.shape[0], m.shape[1]
    ones = ops.ones((d, 1), m.dtype)
    signs = ops.tile(Tensor([1.0, -1.0], m.dtype), ((d + 1) // 2,))[:d].reshape(d, 1)
    probes = ops.tile(ops.concat((ones, signs), axis=1).reshape(1, d, 2), (k, 1, 1))
    residual = _bmm(m, _bmm(inv, probes)) - probes
    ratio = (residual * residual).sum(axis=(1, 2)) / _math.const(2 * d, m)
    finite = ops.isfinite(inv).all()
    safe = ops.select(ops.isfinite(ratio), ratio, ops.ones_like(ratio) * 1e30)
    tol2 = _math.const(_math.INVERSE_RESIDUAL_TOL**2, ratio)
    diag_ok = (ops.diagonal(inv, 0, 1, 2) > 0).all()
    return ops.logical_and(ops.logical_and(finite, diag_ok), (safe <= tol2).all())


class _BlockInverse(nn.Cell):
    """Recursive 2 x 2 block inverse of the stacked SPD ``m`` ``[k, d, d]`` (Schur complement).

    The recursion is unrolled into nested cells at construction (a recursive function in a
    GRAPH_MODE ``construct`` does not compile reliably in MindSpore 2.10).
    """

    def __init__(self, d: int, leaf: int):
        super().__init__()
        self.leaf = d <= leaf
        self.h = (d // 2 + 7) // 8 * 8 if d >= 64 else d // 2
        if not self.leaf:
            self.inv_a = _BlockInverse(self.h, leaf)
            self.inv_s = _BlockInverse(d - self.h, leaf)

    def construct(self, m):
        if self.leaf:
            return _inv(m)
        h = self.h
        a, b, dd = m[:, :h, :h], m[:, :h, h:], m[:, h:, h:]
        ai = self.inv_a(a)
        w = _bmm(ai, b)  # A^-1 B
        si = self.inv_s(dd - _bmm_tn(b, w))  # S^-1, S = D - B^T A^-1 B
        y = _bmm(w, si)  # A^-1 B S^-1
        top = ops.concat((ai + _bmm_nt(y, w), -y), axis=2)
        bottom = ops.concat((-_t(y), si), axis=2)
        return ops.concat((top, bottom), axis=1)


class _Unrolled(nn.Cell):
    """Today's layout: one inverse op per factor (a tuple of ``[d, d]`` inputs)."""

    def __init__(self, route: str):
        super().__init__()
        self.cholesky = route == "cholesky"

    def construct(self, ms_):
        outs = ()
        ok = ops.ones((), mstype.bool_)
        for m in ms_:
            if self.cholesky:
                outs += (_math.spd_inverse(m),)
            else:
                x = _math.sym_inverse(m)
                ok = ops.logical_and(ok, _math.inverse_is_valid(m, x))
                outs += (x,)
        return outs, ok


class _LUBatched(nn.Cell):
    def construct(self, m):
        half = _inv(_twice_jittered(m))
        x = half + _t(half)
        return x, _valid_b(m, x)


class _Block(nn.Cell):
    def __init__(self, d: int, leaf: int):
        super().__init__()
        self.inverse = _BlockInverse(d, leaf)

    def construct(self, m):
        half = self.inverse(_twice_jittered(m))
        x = half + _t(half)
        return x, _valid_b(m, x)


class _NewtonSchulz(nn.Cell):
    """``iters`` steps ``X <- 2X - X (M X)`` from ``x0``; also every iterate's ``||I - M X||_F``."""

    def __init__(self, iters: int):
        super().__init__()
        self.iters = iters

    def construct(self, m, x0):
        k, d = m.shape[0], m.shape[1]
        target = _twice_jittered(m) * 0.5
        eye = _eye_b(k, d, m.dtype)
        x = x0
        norms = ()
        for _ in range(self.iters):
            r = eye - _bmm(target, x)
            norms += (ops.sqrt((r * r).sum(axis=(1, 2))),)
            x = x + _bmm(x, r)  # X (2I - M X)
        # not symmetrised: in float32 the iterate's rounding error is X0 * (error of R), small
        # in ``I - M X`` but not in ``I - M X^T`` (measured: symmetrising gave 30x the residual)
        return x, _valid_b(m, x), ops.stack(norms)


# ----------------------------------------------------------------------------- measurement


def _run_timed(cell, inputs, reps: int, long_s: float) -> tuple[float, list[float], object]:
    t0 = time.perf_counter()
    cell.compile(*inputs)
    compile_s = time.perf_counter() - t0
    times, out = [], None
    for i in range(reps):
        out = None
        t0 = time.perf_counter()
        out = cell(*inputs)
        _ = out[1].asnumpy()  # sync
        times.append(time.perf_counter() - t0)
        if i == 0 and times[0] > long_s:
            break
    return compile_s, times, out


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure_group(d: int, k: int, routes: list[str], args) -> dict:
    """Every route on the ``k`` factors of size ``d`` (seeds 0..k-1)."""
    routes = [r for r in routes if not (r == "lu_batched" and d > args.lu_batched_max_d)]
    t0 = time.perf_counter()
    facs = [make_factors(d, s, args) for s in range(k)]
    gen_s = time.perf_counter() - t0
    rng = np.random.default_rng([d, 99])
    metrics = [_Metrics(f["cur"], args.cols, rng) for f in facs]
    row = {
        "d": d,
        "k": k,
        "generate_s": round(gen_s, 2),
        "cond_bound_max": max(f["cond_bound"] for f in facs),
        "routes": {},
    }
    cur = Tensor(np.stack([f["cur"] for f in facs]))
    x0 = Tensor(np.stack([f["x0"] for f in facs]))
    singles = tuple(Tensor(f["cur"]) for f in facs)
    lu_res = None
    for route in routes:
        if route in ("lu", "cholesky"):
            cell, inputs = _Unrolled(route), (singles,)
        elif route == "lu_batched":
            cell, inputs = _LUBatched(), (cur,)
        elif route == "block":
            cell, inputs = _Block(d, args.leaf), (cur,)
        else:
            cell, inputs = _NewtonSchulz(int(route[2:])), (cur, x0)
        compile_s, times, out = _run_timed(cell, inputs, args.reps, args.long_s)
        xs = out[0]
        xs = [x.asnumpy() for x in xs] if isinstance(xs, tuple) else list(xs.asnumpy())
        rp = [mt(x) for mt, x in zip(metrics, xs, strict=True)]
        r = {
            "portable": PORTABLE[route],
            "compile_s": round(compile_s, 2),
            "times_s": [round(t, 3) for t in times],
            "median_s": statistics.median(times),
            "residuals": [v[0] for v in rp],
            "parity": [v[1] for v in rp],
            "probe_ok": bool(out[1].asnumpy()),
        }
        if route == "lu":
            lu_res = r["residuals"]
        if route.startswith("ns"):
            norms = out[2].asnumpy() / np.sqrt(d)  # [iters, k]
            r["iterate_residuals_in_graph"] = norms.T.tolist()
            r["start_residual_max"] = float(norms[0].max())
            ref = lu_res or [0.0] * k
            r["fallback"] = int(
                sum(
                    (not r["probe_ok"]) or res > 2 * max(lr, 1e-7)
                    for res, lr in zip(r["residuals"], ref, strict=True)
                )
            )
            if args.stress_steps:
                st = Tensor(np.stack([f["stress"] for f in facs]))
                o2 = cell(st, x0)
                xs2 = list(o2[0].asnumpy())
                m2 = [_Metrics(f["stress"], args.cols, rng) for f in facs]
                res2 = [mt(x)[0] for mt, x in zip(m2, xs2, strict=True)]
                n2 = o2[2].asnumpy() / np.sqrt(d)
                r["stress"] = {
                    "ema_steps": args.stress_steps,
                    "start_residual_max": float(n2[0].max()),
                    "residuals": res2,
                    "probe_ok": bool(o2[1].asnumpy()),
                    "fallback": int(
                        sum(
                            (not bool(o2[1].asnumpy())) or v > 2 * max(lr, 1e-7)
                            for v, lr in zip(res2, ref, strict=True)
                        )
                    ),
                }
                del o2, xs2
        row["routes"][route] = r
        del out, xs, cell
        print(
            f"  d={d:5d} k={k:2d} {route:10s} compile {compile_s:6.2f} s  run "
            f"{statistics.median(times):8.3f} s ({len(times)} runs)  res max "
            f"{max(r['residuals']):.1e}  parity max {max(r['parity']):.1e}"
            + (
                f"  start res {r['start_residual_max']:.1e} fallback {r['fallback']}/{k}"
                if "fallback" in r
                else ""
            )
            + (
                f"  [stress {args.stress_steps} steps: start "
                f"{r['stress']['start_residual_max']:.1e}"
                f" fallback {r['stress']['fallback']}/{k}]"
                if "stress" in r
                else ""
            )
            + f"  rss {_rss_gib():.1f} GiB",
            flush=True,
        )
    return row


def summarize(groups: list[dict], routes: list[str]) -> dict:
    """Network totals: each group's time times ``k / k_measured`` (1 where all were measured)."""
    tot = {}
    for route in routes:
        gs = [g for g in groups if route in g["routes"]]
        rs = [g["routes"][route] for g in gs]
        if len(gs) < len(groups):
            print(f"  {route}: not measured on every group, no network total")
            continue
        tot[route] = {
            "portable": PORTABLE[route],
            "time_s": sum(g["routes"][route]["median_s"] * g["scale"] for g in gs),
            "time_measured_s": sum(r["median_s"] for r in rs),
            "extrapolated": any(g["scale"] != 1 for g in gs),
            "compile_s": sum(r["compile_s"] for r in rs),
            "residual_max": max(max(r["residuals"]) for r in rs),
            "parity_max": max(max(r["parity"]) for r in rs),
            "probe_ok": all(r["probe_ok"] for r in rs),
        }
        if route.startswith("ns"):
            tot[route]["fallback"] = sum(r["fallback"] for r in rs)
            tot[route]["factors_measured"] = sum(g["k_measured"] for g in gs)
            tot[route]["start_residual_max"] = max(r["start_residual_max"] for r in rs)
            if all("stress" in r for r in rs):
                tot[route]["stress_fallback"] = sum(r["stress"]["fallback"] for r in rs)
                tot[route]["stress_start_residual_max"] = max(
                    r["stress"]["start_residual_max"] for r in rs
                )
    if "lu" in tot:
        for route in tot:
            tot[route]["ratio_to_lu"] = tot[route]["time_s"] / tot["lu"]["time_s"]
    return tot


def _print_table(name: str, tot: dict, factors: int) -> None:
    print(f"\n{name}: whole inverse step ({factors} factors), sum over the shape groups")
    print("(* = groups above --single-above measured on one factor, scaled by their count)")
    print(
        f"{'route':11s} {'portable':8s} {'time s':>9s} {'ratio':>6s} {'compile s':>9s} "
        f"{'res max':>8s} {'parity max':>10s} fallback (of the measured factors)"
    )
    for route, t in tot.items():
        n = t.get("factors_measured")
        fb = f"{t['fallback']}/{n}" if "fallback" in t else "-"
        if "stress_fallback" in t:
            fb += f" (stress {t['stress_fallback']}/{n})"
        ext = "*" if t["extrapolated"] else " "
        print(
            f"{route:11s} {str(t['portable']):8s} {t['time_s']:8.2f}{ext} "
            f"{t.get('ratio_to_lu', float('nan')):6.3f} {t['compile_s']:9.2f} "
            f"{t['residual_max']:8.1e} {t['parity_max']:10.1e} {fb}"
        )


def _parse_dims(spec: str) -> list[list[int]]:
    out = []
    for part in spec.split(","):
        d, _, k = part.partition("x")
        out.append([int(d), int(k or 1)])
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument("--models", default="resnet50,vgg16_bn")
    p.add_argument("--dims", default=None, help="DxK,... groups instead of the networks")
    p.add_argument("--routes", default=",".join(ROUTES))
    p.add_argument("--max-d", type=int, default=None, help="skip groups with a larger d")
    p.add_argument("--reps", type=int, default=3, help="timed runs per route and group")
    p.add_argument("--long-s", type=float, default=10.0, help="one timed run above this")
    p.add_argument("--leaf", type=int, default=576, help="block route: MatrixInverse below this")
    p.add_argument("--n-batch", type=int, default=64, help="samples per factor update")
    p.add_argument("--history", type=int, default=30, help="updates behind M_prev")
    p.add_argument("--ema-steps", type=int, default=1, help="updates from M_prev to M")
    p.add_argument("--stress-steps", type=int, default=10, help="0: no stress residuals")
    p.add_argument("--floor", type=float, default=0.03, help="damping / mean eigenvalue")
    p.add_argument("--cols", type=int, default=256, help="columns for residual and parity")
    p.add_argument(
        "--single-above",
        type=int,
        default=10**9,
        help="groups with a larger d: one factor measured, times scaled by k",
    )
    p.add_argument(
        "--lu-batched-max-d", type=int, default=10**9, help="lu_batched only up to this d"
    )
    p.add_argument("--shapes-only", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    t_start = time.perf_counter()
    info = provenance(argv)
    info["affinity"] = sorted(os.sched_getaffinity(0))
    routes = args.routes.split(",")
    if args.dims:
        nets = {"dims": {"layers": None, "factors": None, "dims": _parse_dims(args.dims)}}
    else:
        nets = {}
        for model in args.models.split(","):
            nets[model] = factor_shapes(model)
            s = nets[model]
            print(
                f"{model}: {s['layers']} layers, {s['factors']} factors, sum d^3 = "
                f"{s['sum_d3'] / 1e9:.1f}e9, factor bytes (f32) {s['sum_d2_bytes_f32'] / 2**20:.0f}"
                f" MiB; d x count: " + ", ".join(f"{d}x{k}" for d, k in s["dims"]),
                flush=True,
            )
    out = {
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "networks": nets,
        **info,
    }
    if not args.shapes_only:
        ms.set_context(mode=ms.GRAPH_MODE)
        ms.set_device("CPU")
        cache: dict = {}
        for name, net in nets.items():
            print(f"\n{name}", flush=True)
            groups = []
            for d, k in net["dims"]:
                if args.max_d is not None and d > args.max_d:
                    continue
                k_meas = 1 if d > args.single_above else k
                if (d, k_meas) not in cache:
                    cache[(d, k_meas)] = measure_group(d, k_meas, routes, args)
                else:
                    print(f"  d={d:5d} k={k_meas:2d} measured above, reused", flush=True)
                groups.append(
                    {**cache[(d, k_meas)], "k": k, "k_measured": k_meas, "scale": k / k_meas}
                )
                net["groups"] = groups
                if args.json:
                    write_json(args.json, out)
            net["total"] = summarize(groups, routes)
            net["complete"] = len(groups) == len(net["dims"])
            _print_table(name, net["total"], sum(k for _, k in net["dims"]))
    out["peak_rss_gib"] = _rss_gib()
    finish(out, t_start)
    if args.json:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

"""Peak memory of a compiled MindSpore CPU graph, in units of the buffers it keeps.

Two probes, each in its own process (peak resident memory is per process):

* ``temporaries``: a graph of ``K`` steps, each making two 75 MB temporaries (``t = x * c`` and
  ``t^T``, for ``matmul(t, t^T)[0, 0]``) that depend on the previous step, so that at most one
  step's are ever live. With buffer reuse the peak would stay near two temporaries; in MindSpore
  2.10 on CPU (GRAPH_MODE) it grows by two temporaries per step: the buffers are kept. (Not every
  intermediate is: the same chain written with ``MatMul(transpose_b=True)`` and no explicit
  ``t^T`` did not grow.) This is why the number of large intermediates in the TKFAC graph
  matters.
* ``factors``: an MLP ``Dense(d-1 -> d) - ReLU - Dense(d -> 10)`` (three ``d x d`` factors:
  the first layer's two and the second layer's input factor) trained for 7 steps with
  ``factor_update_steps=2``, ``inv_update_steps=3`` (every kind of step runs), for
  ``nn.Momentum`` and each TKFAC approximation. Reported: the peak resident memory above the
  process's start, and that divided by three ``d x d`` float32 matrices: how many buffers each
  factor costs.

Usage::

    python bench/graph_memory.py [--parts temporaries,factors] [--d 2048] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import RESULTS, finish, provenance, write_json  # noqa: E402

OPTIMIZERS = ("momentum", "tkfac_nor", "tkfac_new", "kfac")


def _child_temporaries(k: int) -> dict:
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn, ops

    from bench._ms import peak_rss_mb

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")

    class Chain(nn.Cell):
        def __init__(self, count: int):
            super().__init__()
            self.count = count

        def construct(self, x):
            acc = x[0, 0] * 0.0
            for i in range(self.count):
                t = x * (acc * 0.0 + i + 1.0)  # a new [144, 131072] temporary (75 MB)
                acc = acc + ops.matmul(t, t.T)[0, 0]  # t and its transpose
            return acc

    x = Tensor(np.random.default_rng(0).standard_normal((144, 131072)).astype(np.float32))
    start = peak_rss_mb()
    Chain(k)(x).asnumpy()
    growth = peak_rss_mb() - start
    return {"k": k, "temporary_mb": 144 * 131072 * 4 / 2**20, "peak_growth_mb": growth}


def _child_factors(optimizer: str, d: int) -> dict:
    os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn

    import tkfac_ms
    from bench._ms import peak_rss_mb

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(0)
    net = nn.SequentialCell([nn.Dense(d - 1, d), nn.ReLU(), nn.Dense(d, 10)])
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((32, d - 1)).astype(np.float32))
    y = Tensor(rng.integers(0, 10, 32).astype(np.int32))
    start = peak_rss_mb()
    if optimizer == "momentum":
        opt = nn.Momentum(net.trainable_params(), 1e-3, 0.9)
        cell = nn.TrainOneStepCell(nn.WithLossCell(net, loss), opt)
    else:
        opt = tkfac_ms.TKFAC(
            net,
            1e-3,
            approximation=optimizer,
            fisher="empirical",
            factor_update_steps=2,
            inv_update_steps=3,
        )
        cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, loss), opt)
    t0 = time.perf_counter()
    for _ in range(7):
        cell(x, y).asnumpy()
    growth = peak_rss_mb() - start
    matrix_mb = d * d * 4 / 2**20
    return {
        "optimizer": optimizer,
        "d": d,
        "peak_growth_mb": growth,
        "buffers_per_factor": growth / (3 * matrix_mb),
        "seconds": time.perf_counter() - t0,
    }


def _run_child(args: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", default="temporaries,factors")
    parser.add_argument("--d", type=int, default=2048, help="factor size of the MLP probe")
    parser.add_argument("--ks", default="5,10,20", help="temporaries counts")
    parser.add_argument("--json", default=str(RESULTS / "graph_memory.json"))
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, value = args.child[0], args.child[1]
        res = (
            _child_temporaries(int(value))
            if kind == "temporaries"
            else _child_factors(value, int(args.child[2]))
        )
        print(json.dumps(res))
        return res

    t0 = time.perf_counter()
    info = provenance(argv)
    parts = args.parts.split(",")
    if "temporaries" in parts:
        rows = [_run_child(["temporaries", k]) for k in args.ks.split(",")]
        info["temporaries"] = rows
        print("K steps of two 75 MB temporaries each (at most one step's live at a time):")
        for r in rows:
            print(
                f"  K = {r['k']:3d}: peak +{r['peak_growth_mb']:7.0f} MB = "
                f"{r['peak_growth_mb'] / r['temporary_mb']:5.1f} temporaries"
            )
    if "factors" in parts:
        rows = [_run_child(["factors", o, str(args.d)]) for o in OPTIMIZERS]
        info["factors"] = rows
        base = rows[0]["peak_growth_mb"]
        print(f"MLP with three {args.d}x{args.d} factors, 7 steps (every kind of step):")
        for r in rows:
            print(
                f"  {r['optimizer']:10s} peak +{r['peak_growth_mb']:6.0f} MB "
                f"({r['peak_growth_mb'] / max(base, 1.0):5.1f}x Momentum's growth), "
                f"{r['buffers_per_factor']:5.1f} d x d buffers per factor"
            )
    finish(info, t0)
    write_json(args.json, info)
    return info


if __name__ == "__main__":
    main()

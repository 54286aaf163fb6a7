"""The portable route against the CPU's own routes, in one process (issue 13).

Routes (``tkfac_ms/_device.py``):

* ``cpu_cholesky``: the CPU route before the portability work: fused C++ ``phi_sum`` kernel and
  the Cholesky inverse (``inverse="cholesky"``, unguarded: CPU and GPU only);
* ``cpu``: today's CPU default: C++ kernel and the guarded LU inverse (``MatrixInverse``);
* ``portable``: ``TKFAC_MS_PORTABLE=1``, exactly the graph GPU and Ascend take: MindSpore-op
  statistics and the guarded LU inverse.

Two measurements, every route in the same process:

1. ResNet-20 step times against ``nn.Momentum`` (``bench/step_time.py``'s ``measure``: every
   kind of step, Momentum blocks alternating with TKFAC blocks);
2. the inverse step of VGG16-BN (batch 16, 32x32): ``T_FIM`` = 1000, ``T_INV`` = 1, so every
   step after the compiling step 0 recomputes all inverses and no factor; median of ``--steps``.

Usage::

    python bench/routes.py [--parts resnet20 vgg16_bn] [--json bench/results/routes.json]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

import tkfac_ms  # noqa: E402
from bench._common import provenance, write_json  # noqa: E402
from bench.step_time import measure  # noqa: E402
from model_zoo.src.models import create_model  # noqa: E402
from tkfac_ms import _device  # noqa: E402

ROUTES = {
    "cpu_cholesky": ("0", {"inverse": "cholesky"}),
    "cpu": ("0", {}),
    "portable": ("1", {}),
}


def _on_route(route: str):
    os.environ[_device.PORTABLE_ENV] = ROUTES[route][0]
    return ROUTES[route][1]


def _batch(batch: int) -> tuple[Tensor, Tensor]:
    """A fixed random batch of 32x32 images with 10 classes."""
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    y = Tensor(rng.integers(0, 10, batch).astype(np.int32))
    return x, y


def resnet20(batch: int, steps: int) -> dict:
    x, y = _batch(batch)
    out = {}
    for route in ROUTES:
        kwargs = _on_route(route)
        ms.set_seed(0)
        res = measure(lambda: create_model("resnet20", 10), x, y, steps=steps, **kwargs)
        ratios = {k: v / res["momentum_s"] for k, v in res["median_s"].items()}
        out[route] = {
            "median_s": res["median_s"],
            "momentum_s": res["momentum_s"],
            "x_momentum": ratios,
            "compile_s": res["compile_s"],
        }
        print(
            f"resnet20 {route}: momentum {res['momentum_s'] * 1e3:.0f} ms; "
            + ", ".join(
                f"{k} {v * 1e3:.0f} ms ({ratios[k]:.2f}x)" for k, v in res["median_s"].items()
            ),
            flush=True,
        )
    return out


def vgg_inverse_step(batch: int, steps: int) -> dict:
    x, y = _batch(batch)
    out = {}
    for route in ROUTES:
        kwargs = _on_route(route)
        ms.set_seed(0)
        net = create_model("vgg16_bn", 10)
        opt = tkfac_ms.TKFAC(
            net,
            1e-6,
            approximation="tkfac_new",
            fisher="empirical",
            factor_update_steps=1000,
            inv_update_steps=1,
            **kwargs,
        )
        cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)
        t0 = time.perf_counter()
        cell(x, y).asnumpy()
        compile_s = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            cell(x, y).asnumpy()
            times.append(time.perf_counter() - t0)
        rejected = int(opt.rejected_curvature_updates.asnumpy())
        out[route] = {
            "inverse_step_s": statistics.median(times),
            "samples": times,
            "compile_s": compile_s,
            "rejected": rejected,
        }
        print(
            f"vgg16_bn {route}: inverse step {statistics.median(times):.2f} s "
            f"(samples {[round(t, 2) for t in times]}, compile {compile_s:.0f} s, "
            f"rejected {rejected})",
            flush=True,
        )
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], allow_abbrev=False)
    p.add_argument(
        "--parts", nargs="+", default=["resnet20", "vgg16_bn"], choices=["resnet20", "vgg16_bn"]
    )
    p.add_argument("--steps", type=int, default=24, help="ResNet-20 TKFAC steps timed")
    p.add_argument("--vgg-steps", type=int, default=3, help="VGG16-BN inverse steps timed")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    ms.set_context(mode=ms.GRAPH_MODE)
    before = os.environ.get(_device.PORTABLE_ENV)
    out: dict = {}
    try:
        if "resnet20" in args.parts:
            out["resnet20_b128"] = resnet20(128, args.steps)
        if "vgg16_bn" in args.parts:
            out["vgg16_bn_b16_inverse_step"] = vgg_inverse_step(16, args.vgg_steps)
    finally:
        if before is None:
            os.environ.pop(_device.PORTABLE_ENV, None)
        else:
            os.environ[_device.PORTABLE_ENV] = before
    out.update(provenance())
    if args.json:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

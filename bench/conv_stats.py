"""Time one convolution's factor statistics on the CPU: the fused C++ kernel against MindSpore ops.

For each layer shape, the capture's ``sums(x, dout)`` (``sr_sum``, ``phi_sum``, ``psi_sum``, the
spec's batch sums) runs in GRAPH_MODE through both routes of ``tkfac_ms.capture``: the
MindSpore-op path (im2col convolution, weighting, transpose, ``MatMul``) and the fused
``csrc/conv_phi.cc`` kernel for ``phi_sum``. Both in the same process, alternating, on the same
inputs; the results are compared (relative difference) as well as timed.

Usage::

    python bench/conv_stats.py [--batch 128] [--repeat 7] [--json out.json]

Default shapes: ResNet-20's three 3x3 stride-1 convolutions (16, 32, 64 channels at 32, 16, 8
pixels), its stride-2 one, and a VGG-style 3x3 conv with 256 channels at 8 pixels.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

import tkfac_ms  # noqa: E402
from bench._common import provenance, write_json  # noqa: E402

# (name, C_in, C_out, H, kernel, stride)
SHAPES = [
    ("resnet20 3x3 16ch 32px", 16, 16, 32, 3, 1),
    ("resnet20 3x3 32ch 16px", 32, 32, 16, 3, 1),
    ("resnet20 3x3 64ch 8px", 64, 64, 8, 3, 1),
    ("resnet20 3x3 s2 16->32ch", 16, 32, 32, 3, 2),
    ("vgg 3x3 256ch 8px", 256, 256, 8, 3, 1),
]


def _sums_graph(capture):
    """``capture.sums`` as a compiled graph, with the route ``capture`` has now."""

    @ms.jit
    def sums(x, dout):
        return capture.sums(x, dout)

    return sums


def _time(cell, x, g, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        cell(x, g)[1].asnumpy()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--json", default=None)
    parser.add_argument("--shapes", type=int, default=len(SHAPES), help="first K shapes only")
    args = parser.parse_args(argv)
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    rng = np.random.default_rng(0)
    rows = []
    head = ("layer", "ms ops (ms)", "kernel (ms)", "speed-up", "rel diff")
    print(f"{head[0]:28s} {head[1]:>12s} {head[2]:>12s} {head[3]:>9s} {head[4]:>9s}")
    for name, cin, cout, h, k, stride in SHAPES[: args.shapes]:
        layer = nn.Conv2d(cin, cout, k, stride=stride, pad_mode="pad", padding=k // 2)
        (wrapper,) = tkfac_ms.wrap_network(nn.SequentialCell([layer]))
        cap = wrapper.capture
        x = Tensor(rng.standard_normal((args.batch, cin, h, h)).astype(np.float32))
        g = Tensor(rng.standard_normal(layer(x).shape).astype(np.float32))
        cells = {}
        for route in ("ms_ops", "cpu_kernel"):
            cap.set_cpu_kernel(route == "cpu_kernel")
            cells[route] = _sums_graph(cap)
            outs = [t.asnumpy() for t in cells[route](x, g)]  # compiles
            cells[route + "_out"] = outs
        times: dict[str, list[float]] = {"ms_ops": [], "cpu_kernel": []}
        for _ in range(args.repeat):  # alternate, so that drift reaches both alike
            for route in times:
                times[route] += _time(cells[route], x, g, 1)
        a, b = cells["ms_ops_out"][1], cells["cpu_kernel_out"][1]
        diff = float(np.abs(a - b).max() / np.abs(a).max())
        med = {r: statistics.median(v) for r, v in times.items()}
        rows.append(
            {
                "layer": name,
                "batch": args.batch,
                "median_s": med,
                "min_s": {r: min(v) for r, v in times.items()},
                "speedup": med["ms_ops"] / med["cpu_kernel"],
                "phi_rel_diff": diff,
            }
        )
        print(
            f"{name:28s} {med['ms_ops'] * 1e3:12.1f} {med['cpu_kernel'] * 1e3:12.1f} "
            f"{med['ms_ops'] / med['cpu_kernel']:8.1f}x {diff:9.1e}"
        )
    out = {"args": vars(args), **provenance(argv), "rows": rows}
    if args.json:
        write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()

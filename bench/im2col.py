"""Micro-benchmark: the statistics of one conv layer with ``ops.unfold`` vs a one-hot grouped
convolution as im2col (docs/performance.md). Both routes must give the same numbers.

    python bench/im2col.py [--batch 128]
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402

_mm_tn = ops.MatMul(transpose_a=True)


def _one_hot_kernel(c: int) -> Tensor:
    w = np.zeros((9 * c, 1, 3, 3), np.float32)
    for ch in range(c):
        for k in range(9):
            w[9 * ch + k, 0, k // 3, k % 3] = 1.0
    return Tensor(w)


def _stats(a2, u2):
    s = (a2 * a2).sum(axis=1)
    r = (u2 * u2).sum(axis=1)
    return (s * r).sum(), _mm_tn(a2 * r.reshape(-1, 1), a2), _mm_tn(u2 * s.reshape(-1, 1), u2)


class Unfold(nn.Cell):
    """im2col by ``ops.pad`` + ``ops.unfold`` + transpose."""

    def construct(self, x, g):
        xp = ops.pad(x, (1, 1, 1, 1))
        a2 = ops.unfold(xp, 3, 1, 0, 1).transpose(0, 2, 1).reshape(-1, x.shape[1] * 9)
        u2 = g.transpose(0, 2, 3, 1).reshape(-1, g.shape[1])
        return _stats(a2, u2)


class GroupedConv(nn.Cell):
    """im2col by a grouped convolution with one-hot kernels (what tkfac_ms uses in float32)."""

    def __init__(self, c: int):
        super().__init__()
        self.w = _one_hot_kernel(c)
        self.conv = ops.Conv2D(9 * c, 3, pad_mode="pad", pad=1, group=c)

    def construct(self, x, g):
        cols = self.conv(x, self.w)
        a2 = cols.transpose(0, 2, 3, 1).reshape(-1, cols.shape[1])
        u2 = g.transpose(0, 2, 3, 1).reshape(-1, g.shape[1])
        return _stats(a2, u2)


def _best_ms(cell, *args, repeats: int = 5) -> tuple[float, tuple]:
    out = cell(*args)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cell(*args)[1].asnumpy()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    print("channels  size  unfold ms  grouped-conv ms  max |difference|")
    for c, hw in [(16, 32), (32, 16), (64, 8)]:  # the three ResNet-20 stages
        rng = np.random.default_rng(0)
        x = Tensor(rng.standard_normal((args.batch, c, hw, hw)).astype(np.float32))
        g = Tensor(rng.standard_normal((args.batch, c, hw, hw)).astype(np.float32))
        t_u, out_u = _best_ms(Unfold(), x, g)
        t_g, out_g = _best_ms(GroupedConv(c), x, g)
        pairs = zip(out_u, out_g, strict=True)
        diff = max(float(np.abs(a.asnumpy() - b.asnumpy()).max()) for a, b in pairs)
        print(f"{c:8d}  {hw:4d}  {t_u:9.1f}  {t_g:15.1f}  {diff:.1e}")


if __name__ == "__main__":
    main()

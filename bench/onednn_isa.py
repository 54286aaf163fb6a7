"""Time one MindSpore CPU convolution under a given ``ONEDNN_MAX_CPU_ISA`` (docs/performance.md).

Usage::

    for isa in unset AVX2 AVX512_CORE; do python bench/onednn_isa.py --isa $isa; done

The variable must be set before the first convolution runs, so each setting needs its own
process.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--isa", default="unset", help="ONEDNN_MAX_CPU_ISA value, or 'unset'")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.isa == "unset":
        os.environ.pop("ONEDNN_MAX_CPU_ISA", None)
    else:
        os.environ["ONEDNN_MAX_CPU_ISA"] = args.isa

    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn

    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    conv = nn.Conv2d(16, 16, 3, pad_mode="pad", padding=1)
    x = Tensor(np.random.default_rng(0).standard_normal((32, 16, 32, 32)).astype(np.float32))
    conv(x).asnumpy()
    t0 = time.perf_counter()
    for _ in range(args.repeat):
        conv(x).asnumpy()
    ms_per = (time.perf_counter() - t0) / args.repeat * 1e3
    print(
        f"ONEDNN_MAX_CPU_ISA={args.isa}: {ms_per:.1f} ms per 16-channel 3x3 conv (batch 32, 32x32)"
    )


if __name__ == "__main__":
    main()

"""Step time of TKFAC against nn.Momentum, measured in the same run (issue 3's benchmark).

One TKFAC cell with ``factor_update_steps=3`` and ``inv_update_steps=2`` visits every kind of
step in one compiled graph: step ``t`` updates the factors when ``t % 3 == 0`` and the inverses
when ``t % 2 == 0``, so the steps split into (a) nothing, (b) factors only, (c) inverses only and
(b+c) both. The Momentum baseline runs in the same process, in blocks that alternate with the
TKFAC blocks (4 rounds), and the medians are compared. Amortized costs at
``T_FIM = T_INV = T`` are ``((T - 1) * a + both) / T``.

Usage::

    python bench/step_time.py --model resnet20 --batch 128 [--steps 24] [--json out.json]

:func:`measure` is the same measurement for any network (``bench/cost_scaling.py`` uses it); the
JSON file also holds the compile times and the peak resident memory after the Momentum phase and
at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from datetime import UTC, datetime

os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

import tkfac_ms  # noqa: E402
from model_zoo.src.models import create_model  # noqa: E402

INPUT = {
    "resnet20": 32,
    "resnet32": 32,
    "resnet56": 32,
    "vgg16_bn": 32,
    "resnet50": 224,
    "small_cnn": 32,
}


def _time_steps(cell, x, y, steps: int) -> list[float]:
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        cell(x, y).asnumpy()
        times.append(time.perf_counter() - t0)
    return times


def measure(
    make_net,
    x: Tensor,
    y: Tensor,
    steps: int = 24,
    approximation: str = "tkfac_new",
    fisher: str = "true",
    momentum_steps: int = 16,
    lr: float = 1e-6,
    rounds: int = 4,
    **tkfac_kwargs,
) -> dict:
    """Time every kind of TKFAC step against ``nn.Momentum`` on one batch, in this process.

    Args:
        make_net: ``() -> nn.Cell``, called once per optimizer.
        x, y: the batch (the same for every step).
        steps: TKFAC steps timed after the compiling step 0.
        approximation, fisher: TKFAC options.
        momentum_steps: Momentum steps timed in all.
        rounds: the timed steps alternate, ``rounds`` times, between a block of Momentum steps
            and a block of TKFAC steps, so that a slow drift of the machine's speed (a shared,
            noisy machine) reaches both sides of every ratio alike.
        lr: TKFAC's learning rate. Small, because the same batch is trained on again and again:
            at 1e-3 TKFAC_new diverged on it within 4 steps, and every later step was a skipped
            non-finite step (no update, global step frozen), so the step kinds were mislabelled.
            The arithmetic of a step does not depend on the step size.
        **tkfac_kwargs: more ``TKFAC`` arguments (``inverse="cholesky"``, ...).

    Returns:
        ``median_s`` per step kind, ``momentum_s`` (median), ``amortized_s`` for T = 10, 100,
        compile times, every sample, the number of layers, the peak resident memory (MiB)
        after the Momentum phase and at the end (so mostly TKFAC's), and ``valid``: every timed
        step was applied (finite) and had the kind its global step says.
    """

    def momentum_cell():
        net = make_net()
        loss = nn.WithLossCell(net, nn.CrossEntropyLoss())
        return nn.TrainOneStepCell(loss, nn.Momentum(net.trainable_params(), 1e-3, 0.9))

    t0 = time.perf_counter()
    base = momentum_cell()
    base(x, y).asnumpy()
    compile_momentum = time.perf_counter() - t0
    _time_steps(base, x, y, 2)  # warm-up, not counted
    rss_momentum = _peak_rss_mb()

    net = make_net()
    opt = tkfac_ms.TKFAC(
        net,
        lr,
        approximation=approximation,
        fisher=fisher,
        damping=1e-2,
        nu=1e-2,
        factor_update_steps=3,
        inv_update_steps=2,
        **tkfac_kwargs,
    )
    cell = tkfac_ms.TKFACTrainOneStepCell(nn.WithLossCell(net, nn.CrossEntropyLoss()), opt)
    t0 = time.perf_counter()
    cell(x, y).asnumpy()  # step 0 (both updates) compiles
    compile_tkfac = time.perf_counter() - t0

    def global_step() -> int:
        return int(opt.global_step.asnumpy().reshape(-1)[0])

    times, counters, base_times = [], [], []
    for r in range(rounds):
        base_times += _time_steps(
            base, x, y, momentum_steps * (r + 1) // rounds - momentum_steps * r // rounds
        )
        for _ in range(steps * (r + 1) // rounds - steps * r // rounds):
            t = global_step()
            t0 = time.perf_counter()
            losses = cell(x, y).asnumpy()
            times.append(time.perf_counter() - t0)
            counters.append((t, global_step(), float(np.asarray(losses).reshape(-1)[0])))

    # Classify by the step counter t the step ran with; a skipped (non-finite) step does not
    # advance it, ran no optimizer update, and is left out.
    kinds: dict[str, list[float]] = {"none": [], "factors": [], "inverses": [], "both": []}
    skipped = 0
    for dt, (t, after, _) in zip(times, counters, strict=True):
        if after != t + 1:
            skipped += 1
            continue
        f, v = t % 3 == 0, t % 2 == 0
        kinds["both" if f and v else "factors" if f else "inverses" if v else "none"].append(dt)
    if skipped or any(not v for v in kinds.values()):
        raise RuntimeError(
            f"{skipped} of {steps} TKFAC steps were skipped as non-finite (losses "
            f"{[c[2] for c in counters]}): lower lr"
        )
    med = {k: statistics.median(v) for k, v in kinds.items()}
    m = statistics.median(base_times)
    # the fastest sample of each kind: the least disturbed by other jobs on a shared machine
    fastest = {k: min(v) for k, v in kinds.items()} | {"momentum": min(base_times)}
    amort = {t: ((t - 1) * med["none"] + med["both"]) / t for t in (10, 100)}
    return {
        "median_s": med,
        "momentum_s": m,
        "min_s": fastest,
        "amortized_s": amort,
        "compile_s": {"momentum": compile_momentum, "tkfac": compile_tkfac},
        "samples": {"momentum": base_times, **kinds},
        "layers": len(opt.layers),
        "tkfac_lr": lr,
        "losses": [c[2] for c in counters],
        "valid": True,
        "peak_rss_mb": {"after_momentum": rss_momentum, "after_tkfac": _peak_rss_mb()},
    }


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="resnet20", choices=sorted(INPUT))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=24, help="TKFAC steps timed (>= 12)")
    parser.add_argument("--approximation", default="tkfac_new")
    parser.add_argument("--fisher", default="true")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument(
        "--max-call-depth",
        type=int,
        default=None,
        help="MindSpore's max_call_depth (default 1000): ResNet-50 with TKFAC needs more",
    )
    args = parser.parse_args(argv)
    ms.set_context(mode=ms.GRAPH_MODE)
    if args.max_call_depth:
        ms.set_context(max_call_depth=args.max_call_depth)
    ms.set_device("CPU")
    ms.set_seed(0)
    size = args.image_size or INPUT[args.model]
    classes = 1000 if args.model == "resnet50" else 10
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((args.batch, 3, size, size)).astype(np.float32))
    y = Tensor(rng.integers(0, classes, args.batch).astype(np.int32))
    kwargs = {"image_size": size} if args.model == "small_cnn" else {}
    res = measure(
        lambda: create_model(args.model, num_classes=classes, **kwargs),
        x,
        y,
        steps=args.steps,
        approximation=args.approximation,
        fisher=args.fisher,
    )
    med, m, amort = res["median_s"], res["momentum_s"], res["amortized_s"]
    rows = [
        ("Momentum step", m, 1.0, ""),
        ("(a) TKFAC, no update", med["none"], med["none"] / m, "<= 1.08"),
        ("(b) factor update only", med["factors"], med["factors"] / m, ""),
        ("(c) inverse update only", med["inverses"], med["inverses"] / m, ""),
        ("(b)+(c) factor and inverse update", med["both"], med["both"] / m, "<= 3"),
        ("(d) amortized, T_FIM = T_INV = 10", amort[10], amort[10] / m, ""),
        ("(d) amortized, T_FIM = T_INV = 100", amort[100], amort[100] / m, "<= 1.10"),
    ]
    print(
        f"model={args.model} batch={args.batch} input={size} approximation="
        f"{args.approximation} fisher={args.fisher} layers={res['layers']}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
        f"MindSpore {ms.__version__}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"compile: momentum {res['compile_s']['momentum']:.1f} s, "
        f"tkfac {res['compile_s']['tkfac']:.1f} s"
    )
    print(f"{'step kind':40s} {'median ms':>10s} {'x Momentum':>11s}  target")
    for name, sec, ratio, target in rows:
        print(f"{name:40s} {sec * 1e3:10.1f} {ratio:11.2f}  {target}")
    out = {"args": vars(args), **res}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return out


if __name__ == "__main__":
    main()

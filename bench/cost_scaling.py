"""Cost of TKFAC: step-time ratios, scaling of the update costs, optimizer-state memory.

Three parts (``--parts``, default all), every time measured against ``nn.Momentum`` in the same
process with :func:`bench.step_time.measure` (step kinds: none / factors / inverses / both):

* ``ratios``: ResNet-20 (batch 128, 32x32) and VGG16-BN (batch 16, 32x32), each in its own
  process (``bench/step_time.py``), so that each network's peak resident memory is its own (it
  is polled, and a process above ``--max-rss-gib`` is killed). ResNet-50 (batch 8, 224x224, or
  ``resnet50@NxH``) is available with ``--models``; its TKFAC graph needs MindSpore's
  ``max_call_depth`` above the default 1000 (passed as ``MAX_CALL_DEPTH``), and at 224x224 its
  process once grew past this machine's 23 GiB;
* ``scaling``: a small conv net ``conv3x3(3->C) - conv3x3(C->C) - conv3x3(C->C) - GAP - Dense``
  with the width ``C``, the batch ``N`` and the input size ``H`` varied one at a time. Reported:
  the factor-update cost (factor step minus plain TKFAC step), the inverse cost, the
  preconditioning overhead (plain TKFAC step minus Momentum step), and the log-log slopes. The
  spec's statistics cost ``~ N H^2 (9C)^2`` multiply-adds per conv layer (slopes 2 in C, 1 in N,
  2 in H); the inverses ``~ (9C)^3`` (slope 3 in C, 0 in N and H);
* ``memory``: bytes of every Parameter a train cell holds beyond the network's own (the optimizer
  state) for Momentum, Adam, KFAC and TKFAC, against the parameter bytes; no compilation.

Usage::

    python bench/cost_scaling.py [--parts ratios,scaling,memory]
        [--models resnet20,vgg16_bn,resnet50@8x64] [--memory-models resnet20,vgg16_bn,resnet50]
        [--max-rss-gib 18] [--out-name NAME.json] [--from-json RESULTS.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import IMG, RESULTS, finish, plt, provenance, write_json  # noqa: E402

#: (model, batch, input size) of the step-time ratios.
RATIO_SETTINGS = {"resnet20": (128, 32), "vgg16_bn": (16, 32), "resnet50": (8, 224)}
#: MindSpore's ``max_call_depth`` for ResNet-50 (the default 1000 fails to compile with TKFAC).
MAX_CALL_DEPTH = 4000
BASE = {"width": 32, "batch": 64, "size": 16}
SWEEP = {"width": (16, 32, 64, 128), "batch": (16, 32, 64, 128), "size": (8, 16, 32)}
#: ``--quick`` (smoke tests): two tiny settings, a width pair only.
QUICK_BASE = {"width": 8, "batch": 8, "size": 8}
QUICK_SWEEP = {"width": (8, 16), "batch": (8,), "size": (8,)}


def scaling_net(width: int, classes: int = 10):
    """Three 3x3 convs of ``width`` channels (ReLU), global average pooling, one Dense."""
    from mindspore import nn, ops

    class ScalingNet(nn.Cell):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 3, pad_mode="pad", padding=1, has_bias=False)
            self.conv2 = nn.Conv2d(width, width, 3, pad_mode="pad", padding=1, has_bias=False)
            self.conv3 = nn.Conv2d(width, width, 3, pad_mode="pad", padding=1, has_bias=False)
            self.relu = nn.ReLU()
            self.fc = nn.Dense(width, classes)

        def construct(self, x):
            x = self.relu(self.conv1(x))
            x = self.relu(self.conv2(x))
            x = self.relu(self.conv3(x))
            return self.fc(ops.mean(x, axis=(2, 3)))

    return ScalingNet()


def parse_model(spec: str) -> tuple[str, int, int]:
    """``name`` (its ``RATIO_SETTINGS``) or ``name@NxH`` (batch ``N``, input ``H x H``)."""
    name, _, setting = spec.partition("@")
    if name not in RATIO_SETTINGS:
        raise SystemExit(f"unknown model {name!r}; known: {', '.join(RATIO_SETTINGS)}")
    if not setting:
        return (name, *RATIO_SETTINGS[name])
    batch, _, size = setting.partition("x")
    return name, int(batch), int(size)


def _rss_kib(pid: int) -> int:
    """Resident memory of a process (KiB) from ``/proc``; 0 once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_ratios(models: list[str], steps: int, results: Path, max_rss_gib: float) -> dict:
    """Each network in its own ``step_time.py`` process, killed above ``max_rss_gib``."""
    out = {}
    for spec in models:
        model, batch, size = parse_model(spec)
        key = f"{model}@{batch}x{size}"
        path = results / f".step_time_{model}.json"
        cmd = [
            sys.executable,
            str(Path(__file__).with_name("step_time.py")),
            "--model",
            model,
            "--batch",
            str(batch),
            "--image-size",
            str(size),
            "--steps",
            str(steps),
            "--json",
            str(path),
        ]
        if model == "resnet50":  # its TKFAC graph passes MindSpore's default call depth (1000)
            cmd += ["--max-call-depth", str(MAX_CALL_DEPTH)]
        t0 = time.perf_counter()
        with tempfile.TemporaryFile("w+") as fout, tempfile.TemporaryFile("w+") as ferr:
            proc = subprocess.Popen(cmd, stdout=fout, stderr=ferr, text=True)
            peak, killed = 0, False
            while proc.poll() is None:
                peak = max(peak, _rss_kib(proc.pid))
                if peak > max_rss_gib * 2**20:
                    proc.kill()
                    killed = True
                    proc.wait()
                    break
                time.sleep(0.2)
            fout.seek(0)
            ferr.seek(0)
            stdout, stderr = fout.read(), ferr.read()
        wall = time.perf_counter() - t0
        peak_gib = peak / 2**20
        table = [ln for ln in stdout.splitlines() if not ln.startswith("[WARNING")]
        print("\n".join(table), flush=True)
        if proc.returncode != 0:
            lines = stderr.strip().splitlines()
            errors = [ln for ln in lines if "Error" in ln or "memory" in ln.lower()]
            tail = "\n".join((errors or lines)[-3:])
            if killed:
                tail = f"killed by cost_scaling.py: resident memory passed {max_rss_gib} GiB"
            print(
                f"{key}: step_time.py failed (exit {proc.returncode}, peak resident memory "
                f"{peak_gib:.1f} GiB after {wall:.0f} s): {tail}",
                flush=True,
            )
            out[key] = {
                "failed": proc.returncode,
                "killed_over_max_rss": killed,
                "peak_rss_gib_polled": peak_gib,
                "stderr_tail": tail,
                "wall_s": wall,
            }
            continue
        res = json.loads(path.read_text())
        path.unlink()
        res["wall_s"] = wall
        res["peak_rss_gib_polled"] = peak_gib
        res["stdout"] = table
        out[key] = res
    return out


def run_scaling(steps: int, quick: bool) -> dict:
    from mindspore import Tensor

    from bench import _ms
    from bench.step_time import measure

    _ms.setup(0)
    rng = np.random.default_rng(0)
    base, sweep = (QUICK_BASE, QUICK_SWEEP) if quick else (BASE, SWEEP)
    configs = []
    for key, values in sweep.items():
        for v in values:
            cfg = dict(base, **{key: v})
            if cfg not in configs:
                configs.append(cfg)
    rows = []
    for cfg in configs:
        n, c, h = cfg["batch"], cfg["width"], cfg["size"]
        x = Tensor(rng.standard_normal((n, 3, h, h)).astype(np.float32))
        y = Tensor(rng.integers(0, 10, n).astype(np.int32))
        res = measure(lambda c=c: scaling_net(c), x, y, steps=steps, momentum_steps=6)
        med, m, fast = res["median_s"], res["momentum_s"], res["min_s"]
        row = {
            **cfg,
            "momentum_s": m,
            "plain_tkfac_s": med["none"],
            "factor_cost_s": med["factors"] - med["none"],
            "inverse_cost_s": med["inverses"] - med["none"],
            "precondition_overhead_s": med["none"] - m,
            # the same from the fastest sample of each step kind (robust to a loaded machine)
            "min": {
                "momentum_s": fast["momentum"],
                "plain_tkfac_s": fast["none"],
                "factor_cost_s": fast["factors"] - fast["none"],
                "inverse_cost_s": fast["inverses"] - fast["none"],
                "precondition_overhead_s": fast["none"] - fast["momentum"],
            },
            "samples": res["samples"],
            "compile_tkfac_s": res["compile_s"]["tkfac"],
            "layers": res["layers"],
        }
        rows.append(row)
        print(
            f"C={c:4d} N={n:4d} H={h:3d}: momentum {1e3 * m:7.1f} ms, factor update "
            f"+{1e3 * row['factor_cost_s']:7.1f} ms, inverses +{1e3 * row['inverse_cost_s']:7.1f}"
            f" ms, plain TKFAC step {1e3 * med['none']:7.1f} ms (fastest samples: momentum "
            f"{1e3 * fast['momentum']:.1f}, factors +{1e3 * row['min']['factor_cost_s']:.1f}, "
            f"inverses +{1e3 * row['min']['inverse_cost_s']:.1f}, plain {1e3 * fast['none']:.1f})",
            flush=True,
        )
    slopes = {}
    for key in sweep:
        sel = [r for r in rows if all(r[k] == base[k] for k in base if k != key)]
        sel.sort(key=lambda r: r[key])
        xs = np.log([r[key] for r in sel])
        slopes[key] = {}
        for field in ("momentum_s", "factor_cost_s", "inverse_cost_s", "precondition_overhead_s"):
            for tag, get in (
                ("", lambda r, f=field: r[f]),
                ("min.", lambda r, f=field: r["min"][f]),
            ):
                ys = np.array([get(r) for r in sel])
                ok = ys > 0
                slopes[key][tag + field] = (
                    float(np.polyfit(xs[ok], np.log(ys[ok]), 1)[0]) if ok.sum() >= 2 else None
                )
    return {"base": base, "sweep": sweep, "rows": rows, "slopes": slopes}


def run_memory(models: list[str]) -> dict:
    from mindspore import nn

    from bench import _ms
    from model_zoo.src.models import create_model

    _ms.setup(0)

    def nbytes(params) -> int:
        return int(sum(int(np.prod(p.shape)) * p.itemsize for p in params))

    out = {}
    for model in models:
        classes = 1000 if model == "resnet50" else 10
        row = {}
        for name in ("sgdm", "adam", "kfac", "tkfac_nor"):
            net = create_model(model, num_classes=classes)
            net_params = {id(p) for p in net.get_parameters()}
            row["params"] = nbytes(net.trainable_params())
            row["net_all"] = nbytes(net.get_parameters())
            cell, opt = _ms.train_cell(
                _ms.OptimizerSpec(name, 0.1), net, nn.CrossEntropyLoss(), 0.1
            )
            # everything the cell holds beyond the network's own Parameters, including the
            # TKFAC factor state (created when the optimizer wraps the layers)
            row[name] = nbytes(p for p in cell.get_parameters() if id(p) not in net_params)
            if name == "tkfac_nor":
                layers = opt.layers
                row["tkfac_factors_and_inverses"] = int(
                    sum(2 * 4 * (w.d_in**2 + w.d_out**2) for w in layers)
                )
                row["largest_factor"] = int(max(max(w.d_in, w.d_out) for w in layers))
        out[model] = row
        mib = 2**20
        states = ", ".join(
            f"{label} {row[key] / mib:.1f}"
            for key, label in (("sgdm", "Momentum"), ("adam", "Adam"), ("kfac", "KFAC"))
        )
        print(
            f"{model:9s} params {row['params'] / mib:8.1f} MiB | state: {states}, TKFAC "
            f"{row['tkfac_nor'] / mib:.1f} MiB (x{row['tkfac_nor'] / row['params']:.1f} the "
            f"parameters; largest factor {row['largest_factor']}^2)",
            flush=True,
        )
    return out


def plot_scaling(scaling: dict, path: Path) -> None:
    pyplot = plt()
    fig, axes = pyplot.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    names = {"width": "width C (channels)", "batch": "batch size N", "size": "input size H"}
    base = scaling["base"]
    for ax, key in zip(axes, scaling["sweep"], strict=True):
        sel = [r for r in scaling["rows"] if all(r[k] == base[k] for k in base if k != key)]
        sel.sort(key=lambda r: r[key])
        xs = [r[key] for r in sel]
        for field, label, color, style in (
            ("momentum_s", "Momentum step", "tab:gray", "-"),
            ("plain_tkfac_s", "TKFAC step without updates", "tab:green", "--"),
            ("factor_cost_s", "TKFAC factor update (extra)", "tab:red", "-"),
            ("inverse_cost_s", "TKFAC inverse update (extra)", "tab:blue", "-"),
        ):
            ys = np.array([r["min"][field] for r in sel]) * 1e3
            ok = ys > 0
            slope = np.polyfit(np.log(xs)[ok], np.log(ys[ok]), 1)[0] if ok.sum() >= 2 else None
            tag = "" if slope is None else f" (slope {slope:.2f})"
            ax.plot(np.array(xs)[ok], ys[ok], marker="o", ls=style, color=color, label=label + tag)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(names[key])
        ax.set_ylabel("ms per step")
        others = ", ".join(f"{k}={v}" for k, v in base.items() if k != key)
        ax.set_title(f"vary {key} ({others})", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(
        "Cost scaling on a 3-conv net, 2-core CPU (fastest sample of each step kind); FLOP "
        "count slopes: statistics 2/1/2, inverses 3/0/0 in C/N/H"
    )
    fig.savefig(path, dpi=105)
    pyplot.close(fig)


def plot_memory(memory: dict, path: Path) -> None:
    pyplot = plt()
    models = list(memory)
    fig, ax = pyplot.subplots(figsize=(8, 4.2), constrained_layout=True)
    width = 0.16
    fields = [
        ("params", "parameters", "k"),
        ("sgdm", "Momentum state", "tab:gray"),
        ("adam", "Adam state", "tab:green"),
        ("kfac", "KFAC state", "tab:blue"),
        ("tkfac_nor", "TKFAC state", "tab:red"),
    ]
    for i, (field, label, color) in enumerate(fields):
        ys = [memory[m][field] / 2**20 for m in models]
        ax.bar(np.arange(len(models)) + (i - 2) * width, ys, width, label=label, color=color)
    ax.set_xticks(np.arange(len(models)), models)
    ax.set_yscale("log")
    ax.set_ylabel("MiB (float32)")
    ax.set_title("Optimizer state (Parameters beyond the network's own) vs parameters")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, dpi=105)
    pyplot.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="ratios,scaling,memory")
    parser.add_argument(
        "--models",
        default="resnet20,vgg16_bn",
        help="networks of the step-time ratios (resnet50: needs more than 24 GB with TKFAC)",
    )
    parser.add_argument("--memory-models", default="resnet20,vgg16_bn,resnet50")
    parser.add_argument(
        "--max-rss-gib",
        type=float,
        default=18.0,
        help="kill a step-time process whose resident memory passes this (GiB)",
    )
    parser.add_argument("--steps", type=int, default=24, help="TKFAC steps timed per setting")
    parser.add_argument("--quick", action="store_true", help="two points per sweep (smoke)")
    parser.add_argument(
        "--from-json", default=None, help="only redraw the figures of this results file"
    )
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument(
        "--out-name", default=None, help="name of the results file (default: from --parts)"
    )
    parser.add_argument("--img", default=str(IMG))
    args = parser.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    models = [m for m in args.models.split(",") if m]
    memory_models = [m for m in args.memory_models.split(",") if m]
    if any(p not in ("ratios", "scaling", "memory") for p in parts) or any(
        m not in RATIO_SETTINGS for m in [s.partition("@")[0] for s in models] + memory_models
    ):
        raise SystemExit(
            "Usage: cost_scaling.py [--parts ratios,scaling,memory] "
            f"[--models {','.join(RATIO_SETTINGS)}]"
        )
    if args.from_json:
        old = json.loads(Path(args.from_json).read_text())
        if "scaling" in old:
            plot_scaling(old["scaling"], Path(args.img) / "cost_scaling.png")
        if "memory" in old:
            plot_memory(old["memory"], Path(args.img) / "cost_memory.png")
        return old
    t_start = time.perf_counter()
    info = provenance(argv)
    results, img = Path(args.results), Path(args.img)
    results.mkdir(parents=True, exist_ok=True)
    img.mkdir(parents=True, exist_ok=True)
    out: dict = {"experiment": "cost_scaling", **info, "args": vars(args), "figures": []}
    if "memory" in parts:
        out["memory"] = run_memory(memory_models)
        path = img / "cost_memory.png"
        plot_memory(out["memory"], path)
        out["figures"].append(str(path))
    if "scaling" in parts:
        out["scaling"] = run_scaling(max(12, args.steps), args.quick)
        path = img / "cost_scaling.png"
        plot_scaling(out["scaling"], path)
        out["figures"].append(str(path))
        for key, s in out["scaling"]["slopes"].items():
            print(f"log-log slope in {key}: " + ", ".join(f"{k} {v}" for k, v in s.items()))
    if "ratios" in parts:
        out["ratios"] = run_ratios(models, args.steps, results, args.max_rss_gib)
    finish(out, t_start)
    name = args.out_name or (
        "cost_scaling.json"
        if parts == ["ratios", "scaling", "memory"]
        else ("cost_scaling_" + "_".join(parts) + ".json")
    )
    path = write_json(results / name, out)
    print(f"wrote {path} in {out['runtime_s']} s")
    return out


if __name__ == "__main__":
    main()

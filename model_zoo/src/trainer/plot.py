"""Loss and accuracy curves of one run, or of several runs' optimizers side by side.

Command line (each RUN is a training output folder or its ``metrics.json``)::

    python -m model_zoo.src.trainer.plot RUN [RUN ...] --output compare.png [--title TEXT]

Panels: training loss (every logged step, against fractional epochs), test loss and test
accuracy per epoch, one line per run, labelled by optimizer. With several runs a fourth panel
puts each optimizer's best and final test accuracy side by side as bars.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from model_zoo.src.trainer.rundir import temp_name  # noqa: E402

__all__ = ["load_run", "plot_runs", "main"]


def load_run(path: str | os.PathLike) -> dict[str, Any]:
    """Read a run's ``metrics.json`` (``path`` is the file or its folder).

    Raises:
        FileNotFoundError: no ``metrics.json`` there.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.json"
    if not p.is_file():
        raise FileNotFoundError(f"no metrics.json at {path} (is it a training output folder?)")
    run = json.loads(p.read_text())
    run.setdefault("run", {})
    run["run"].setdefault("name", p.parent.name)
    return run


def _labels(runs: Sequence[dict[str, Any]]) -> list[str]:
    base = [str(r["run"].get("optimizer", r["run"]["name"])) for r in runs]
    return [
        f"{b} ({r['run']['name']})" if base.count(b) > 1 else b
        for b, r in zip(base, runs, strict=True)
    ]


def plot_runs(
    runs: Sequence[dict[str, Any]], path: str | os.PathLike, title: str | None = None
) -> Path:
    """Draw the curves of ``runs`` (as :func:`load_run` returns them) into a PNG at ``path``."""
    if not runs:
        raise ValueError("no run to plot")
    labels = _labels(runs)
    several = len(runs) > 1
    fig, axes = plt.subplots(1, 4 if several else 3, figsize=(18 if several else 14, 4.2))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (run, label) in enumerate(zip(runs, labels, strict=True)):
        color = colors[k % len(colors)]
        spe = max(int(run["run"].get("steps_per_epoch", 1)), 1)
        steps = run.get("steps", [])
        epochs = run.get("epochs", [])
        if steps:
            axes[0].plot(
                [s["step"] / spe for s in steps],
                [s["loss"] for s in steps],
                color=color,
                alpha=0.35,
                lw=1,
            )
        ep = [e["epoch"] for e in epochs]
        axes[0].plot(
            [e - 0.5 for e in ep],  # an epoch's mean belongs to its middle
            [e["train_loss"] for e in epochs],
            "o-",
            color=color,
            label=label,
            ms=3,
        )
        axes[1].plot(ep, [e["test_loss"] for e in epochs], "o-", color=color, label=label, ms=3)
        axes[2].plot(
            ep, [100 * e["test_acc"] for e in epochs], "o-", color=color, label=label, ms=3
        )
    axes[0].set_title("training loss (light: logged steps, dots: epoch mean)")
    axes[1].set_title("test loss")
    axes[2].set_title("test accuracy (%)")
    axes[0].set_yscale("log")  # early spikes (e.g. BatchNorm statistics still settling)
    axes[1].set_yscale("log")  # would flatten the rest of the curves
    for ax in axes[:3]:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if several:
        best = [max((100 * e["test_acc"] for e in r.get("epochs", [])), default=0) for r in runs]
        final = [100 * r["epochs"][-1]["test_acc"] if r.get("epochs") else 0 for r in runs]
        x = range(len(runs))
        axes[3].bar([i - 0.2 for i in x], best, width=0.4, label="best")
        axes[3].bar([i + 0.2 for i in x], final, width=0.4, label="final")
        for i, (b, f) in enumerate(zip(best, final, strict=True)):
            axes[3].text(i - 0.2, b, f"{b:.1f}", ha="center", va="bottom", fontsize=7)
            axes[3].text(i + 0.2, f, f"{f:.1f}", ha="center", va="bottom", fontsize=7)
        axes[3].set_xticks(list(x), labels, rotation=20, fontsize=8)
        axes[3].set_title("test accuracy (%) by optimizer")
        low = min(best + final)
        axes[3].set_ylim(max(0.0, low - 10), 100)
        axes[3].legend(fontsize=8)
    info = runs[0]["run"]
    fig.suptitle(
        title
        or f"{info.get('model', '?')} on {info.get('dataset', '?')}"
        + ("" if several else f", {labels[0]}")
    )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(out, suffix=".png")  # unique to this process
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m model_zoo.src.trainer.plot",
        description="Plot loss/accuracy curves of training runs, optimizers side by side.",
    )
    parser.add_argument("runs", nargs="+", help="training output folders or metrics.json files")
    parser.add_argument("--output", "-o", required=True, help="PNG file to write")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    out = plot_runs([load_run(r) for r in args.runs], args.output, args.title)
    print(f"plot: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

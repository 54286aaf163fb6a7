"""Training callbacks: evaluation, progress with ETA, metrics files, checkpoints, the plot.

They are ``mindspore.train.Callback`` objects driven by :class:`~model_zoo.src.trainer.loop.Trainer`
(see its docstring for the keys they read). At the end of an epoch, in this order:

1. :class:`NonfiniteMonitor` counts the epoch's skipped (non-finite) steps and stops a run that
   diverged (``skipped_steps``, ``diverged``);
2. :class:`EvalCallback` evaluates on the test split (``eval``, ``eval_time``);
3. :class:`MetricsLogger` appends the epoch to ``metrics.csv`` / ``metrics.json``;
4. :class:`CheckpointCallback` writes ``checkpoints/epoch_<e>.ckpt`` atomically (not for an epoch
   that diverged: the last good checkpoint stays the newest);
5. :class:`ProgressLogger` prints the epoch line (loss, accuracy, skipped steps, lr, step time,
   ETA).

:class:`PlotCallback` draws ``curves.png`` when training ends.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

import mindspore.dataset as ds
from mindspore import nn
from mindspore.train import Callback

from model_zoo.src.trainer.checkpoint import checkpoint_path, save_checkpoint_atomic
from model_zoo.src.trainer.loop import EvalNetwork, evaluate
from model_zoo.src.trainer.rundir import temp_name

__all__ = [
    "EPOCH_FIELDS",
    "STEP_FIELDS",
    "NonfiniteMonitor",
    "EvalCallback",
    "MetricsLogger",
    "CheckpointCallback",
    "ProgressLogger",
    "PlotCallback",
    "write_atomic",
    "format_duration",
]

EPOCH_FIELDS = (
    "epoch",
    "step",
    "lr",
    "train_loss",
    "test_loss",
    "test_acc",
    "epoch_time_s",
    "step_time_ms",
    "eval_time_s",
    "skipped_steps",
)
STEP_FIELDS = ("epoch", "step", "loss", "lr", "step_time_ms")


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    tmp = temp_name(path)  # unique to this process
    try:
        with open(tmp, "w", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``--:--:--`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--:--"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def skipped_step_count(cell: nn.Cell) -> int | None:
    """The training cell's count of skipped non-finite steps (``tkfac.nonfinite_steps``).

    None for a cell that does not skip such steps (``nn.TrainOneStepCell``: SGDM, Adam).
    """
    counter = getattr(cell, "nonfinite_steps", None)
    if counter is None:
        return None
    return int(counter.asnumpy().reshape(-1)[0])


class NonfiniteMonitor(Callback):
    """Count each epoch's skipped non-finite steps; stop a run that diverged.

    ``TKFACTrainOneStepCell`` skips a step whose gradients or statistics are not finite (and
    counts it in ``tkfac.nonfinite_steps``); ``nn.TrainOneStepCell`` applies it. After every
    epoch this sets ``skipped_steps`` (the epoch's skips; None for a cell that does not skip)
    and ``nonfinite_losses``, and requests a stop, with the reason in ``diverged``, when

    * the training loss was non-finite in every step of the epoch, or
    * more than ``max_skipped_fraction`` of the epoch's steps were skipped (None: never).

    It runs first at the end of an epoch, so that :class:`CheckpointCallback` sees ``diverged``
    and keeps the last good checkpoint as the newest.
    """

    def __init__(self, max_skipped_fraction: float | None = 0.25):
        super().__init__()
        self.max_skipped_fraction = max_skipped_fraction
        self._start: int | None = None
        self._steps = 0
        self._bad_losses = 0

    def on_train_epoch_begin(self, run_context) -> None:
        """Read the counter at the epoch's start."""
        p = run_context.original_args()
        self._start = skipped_step_count(p.train_network)
        self._steps = 0
        self._bad_losses = 0
        p.diverged = None

    def on_train_step_end(self, run_context) -> None:
        """Count non-finite losses."""
        p = run_context.original_args()
        self._steps += 1
        if not math.isfinite(p.loss):
            self._bad_losses += 1

    def on_train_epoch_end(self, run_context) -> None:
        """Set ``skipped_steps``; stop the run if it diverged."""
        p = run_context.original_args()
        now = skipped_step_count(p.train_network)
        skipped = None if now is None or self._start is None else now - self._start
        p.skipped_steps = skipped
        p.nonfinite_losses = self._bad_losses
        epoch, steps, frac = p.cur_epoch_num, self._steps, self.max_skipped_fraction
        reason = None
        if steps and self._bad_losses == steps:
            reason = f"the training loss was not finite in any of epoch {epoch}'s {steps} steps"
        elif skipped is not None and frac is not None and skipped > frac * steps:
            reason = (
                f"{skipped} of epoch {epoch}'s {steps} steps were skipped because their "
                f"gradients or statistics were not finite (limit: max_skipped_fraction {frac})"
            )
        if reason is not None:
            p.diverged = reason
            run_context.request_stop()


class EvalCallback(Callback):
    """Evaluate on the test split after every epoch; sets ``eval`` and ``eval_time``.

    Args:
        network: the (possibly TKFAC-wrapped) network, shared with the training cell.
        dataset: the test pipeline (no shuffle); iterated anew each epoch.
        max_steps: evaluate on the first batches only (tiny runs); None for all.
    """

    def __init__(self, network: nn.Cell, dataset: ds.Dataset, max_steps: int | None = None):
        super().__init__()
        self.eval_network = EvalNetwork(network)
        self.dataset = dataset
        self.max_steps = max_steps

    def on_train_epoch_end(self, run_context) -> None:
        """Evaluate, then put the training cell back in training mode."""
        p = run_context.original_args()
        tick = time.perf_counter()
        p.eval = evaluate(self.eval_network, self.dataset, self.max_steps)
        p.eval_time = time.perf_counter() - tick
        p.train_network.set_train(True)


class MetricsLogger(Callback):
    """Per-epoch (and every ``log_interval`` steps) metrics to ``metrics.csv`` and ``.json``.

    ``metrics.csv`` has one row per epoch (:data:`EPOCH_FIELDS`); ``metrics.json`` holds
    ``{"run": run_info, "epochs": [...], "steps": [...]}`` with the step rows
    (:data:`STEP_FIELDS`) too. Both are rewritten atomically after every epoch. A resumed run
    passes the rows it keeps (those up to its checkpoint) as ``history`` / ``step_history``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        run_info: dict[str, Any],
        log_interval: int = 10,
        history: list[dict] | None = None,
        step_history: list[dict] | None = None,
    ):
        super().__init__()
        self.output_dir = Path(output_dir)
        self.run_info = run_info
        self.log_interval = log_interval
        self.history = list(history or [])
        self.steps = list(step_history or [])
        self._epoch_start = 0.0
        self._step_times: list[float] = []

    @property
    def csv_path(self) -> Path:
        """``<output_dir>/metrics.csv``."""
        return self.output_dir / "metrics.csv"

    @property
    def json_path(self) -> Path:
        """``<output_dir>/metrics.json``."""
        return self.output_dir / "metrics.json"

    def on_train_begin(self, run_context) -> None:
        """Publish the history for the other callbacks."""
        run_context.original_args().history = self.history

    def on_train_epoch_begin(self, run_context) -> None:
        """Start the epoch's clock."""
        self._epoch_start = time.perf_counter()
        self._step_times = []

    def on_train_step_end(self, run_context) -> None:
        """Record the step time; every ``log_interval`` steps, a step row."""
        p = run_context.original_args()
        self._step_times.append(p.step_time)
        if p.step_in_epoch % self.log_interval == 0 or p.step_in_epoch == p.batch_num:
            self.steps.append(
                {
                    "epoch": p.cur_epoch_num,
                    "step": p.cur_step_num,
                    "loss": p.loss,
                    "lr": p.lr,
                    "step_time_ms": 1e3 * p.step_time,
                }
            )

    def on_train_epoch_end(self, run_context) -> None:
        """Append the epoch row and rewrite both files."""
        p = run_context.original_args()
        ev = p.get("eval", {})
        times = self._step_times[1:] or self._step_times  # the first step may compile
        row = {
            "epoch": p.cur_epoch_num,
            "step": p.cur_step_num,
            "lr": p.lr,
            "train_loss": p.train_loss,
            "test_loss": ev.get("test_loss", math.nan),
            "test_acc": ev.get("test_acc", math.nan),
            "epoch_time_s": time.perf_counter() - self._epoch_start,
            "step_time_ms": 1e3 * sum(times) / len(times),
            "eval_time_s": p.get("eval_time", math.nan),
            "skipped_steps": p.get("skipped_steps"),
        }
        self.history.append(row)
        self.write()

    def write(self) -> None:
        """Write ``metrics.csv`` and ``metrics.json`` (atomically)."""
        self.output_dir.mkdir(parents=True, exist_ok=True)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EPOCH_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.history)
        write_atomic(self.csv_path, buf.getvalue())
        doc = {"run": self.run_info, "epochs": self.history, "steps": self.steps}
        write_atomic(self.json_path, json.dumps(doc, indent=1, allow_nan=True) + "\n")


class CheckpointCallback(Callback):
    """Save the whole training cell after every epoch, atomically; keep the newest ``keep``."""

    def __init__(self, output_dir: str | os.PathLike, keep: int = 5):
        super().__init__()
        self.output_dir = Path(output_dir)
        self.keep = keep
        self.last: Path | None = None

    def on_train_epoch_end(self, run_context) -> None:
        """Write ``checkpoints/epoch_<e>.ckpt`` (not after a diverged epoch)."""
        p = run_context.original_args()
        if p.get("diverged"):
            return
        path = checkpoint_path(self.output_dir, p.cur_epoch_num)
        self.last = save_checkpoint_atomic(
            p.train_network, path, p.cur_epoch_num, p.cur_step_num, keep=self.keep
        )
        p.latest_ckpt_file = str(self.last)


class ProgressLogger(Callback):
    """Print progress every ``log_interval`` steps and after every epoch.

    Step line: epoch, step, loss, learning rate, step time (mean since the last line), ETA.
    Epoch line: mean training loss, test loss and accuracy, skipped non-finite steps (TKFAC
    cells; for the others the steps with a non-finite loss, if any), learning rate, epoch time,
    mean step time, ETA. The ETA is the remaining steps times the mean step time (the first step of
    the process, which compiles the graph, excluded) plus the remaining evaluations.
    """

    def __init__(self, log_interval: int = 10, prefix: str = "", stream: TextIO | None = None):
        super().__init__()
        self.log_interval = log_interval
        self.prefix = prefix
        self.stream = stream
        self._times: list[float] = []
        self._since_line: list[float] = []
        self._first = True
        self._epoch_start = 0.0
        self._eval_time = 0.0

    def _print(self, text: str) -> None:
        print(self.prefix + text, file=self.stream or sys.stdout, flush=True)

    def _eta(self, p, evals_left: int) -> float:
        if not self._times:
            return math.nan
        steps_left = p.epoch_num * p.batch_num - p.cur_step_num
        mean = sum(self._times) / len(self._times)
        return steps_left * mean + evals_left * self._eval_time

    def on_train_begin(self, run_context) -> None:
        """Announce the run."""
        p = run_context.original_args()
        where = f"resuming after epoch {p.start_epoch}" if p.start_epoch else "starting"
        self._print(
            f"{where}: {p.epoch_num} epochs x {p.batch_num} steps "
            "(the first step compiles the graph)"
        )

    def on_train_epoch_begin(self, run_context) -> None:
        """Start the epoch's clock."""
        self._epoch_start = time.perf_counter()

    def on_train_step_end(self, run_context) -> None:
        """Every ``log_interval`` steps (and the epoch's last step): a step line."""
        p = run_context.original_args()
        if self._first:
            self._first = False
            self._print(f"first step (graph compile + run): {p.step_time:.1f} s")
        else:
            self._times.append(p.step_time)
            self._since_line.append(p.step_time)
        if p.step_in_epoch % self.log_interval and p.step_in_epoch != p.batch_num:
            return
        recent = self._since_line or [p.step_time]
        self._since_line = []
        evals_left = p.epoch_num - p.cur_epoch_num + 1
        self._print(
            f"epoch {p.cur_epoch_num}/{p.epoch_num} step {p.step_in_epoch}/{p.batch_num} "
            f"| loss {p.loss:.4f} | lr {p.lr:.4g} "
            f"| {1e3 * sum(recent) / len(recent):.0f} ms/step "
            f"| ETA {format_duration(self._eta(p, evals_left))}"
        )

    def on_train_epoch_end(self, run_context) -> None:
        """The epoch line."""
        p = run_context.original_args()
        self._eval_time = p.get("eval_time", 0.0)
        ev = p.get("eval", {})
        test = ""
        if ev:
            test = f" | test_loss {ev['test_loss']:.4f} | test_acc {100 * ev['test_acc']:.2f}%"
        mean = 1e3 * sum(self._times) / len(self._times) if self._times else math.nan
        skipped = p.get("skipped_steps")
        if skipped is not None:
            test += f" | skipped {skipped}/{p.step_in_epoch} non-finite steps"
        elif p.get("nonfinite_losses"):
            test += f" | non-finite loss in {p.nonfinite_losses}/{p.step_in_epoch} steps"
        self._print(
            f"epoch {p.cur_epoch_num}/{p.epoch_num} done | train_loss {p.train_loss:.4f}{test} "
            f"| lr {p.lr:.4g} | {time.perf_counter() - self._epoch_start:.1f} s "
            f"({mean:.0f} ms/step, eval {self._eval_time:.1f} s) "
            f"| ETA {format_duration(self._eta(p, p.epoch_num - p.cur_epoch_num))}"
        )


class PlotCallback(Callback):
    """At the end of training, plot the run's curves to ``path`` (``curves.png``)."""

    def __init__(self, path: str | os.PathLike, plot: Callable[[Path], None]):
        super().__init__()
        self.path = Path(path)
        self.plot = plot

    def on_train_end(self, run_context) -> None:
        """Draw the plot."""
        self.plot(self.path)

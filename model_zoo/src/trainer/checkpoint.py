"""Per-epoch checkpoints of the whole training cell, written atomically, and resuming from them.

A checkpoint holds every Parameter of the training cell: the network (BatchNorm running
statistics included), the optimizer state (momentum buffers; for TKFAC the factors, inverses
and ``tkfac.*`` counters; ``global_step``, which also indexes the per-step learning rate), plus
``epoch`` and ``step`` (completed epochs and training steps of the run).

Atomicity: the file is written under a temporary name in the same folder, flushed to disk, then
renamed over the final name (``os.replace``, atomic on POSIX). A crash leaves either the old
set of checkpoints or the new one, never a truncated ``epoch_*.ckpt``. The temporary name holds
the writer's PID and a random part (``.epoch_0001.ckpt.<pid>-<hex>.tmp.ckpt``): leftovers of
dead processes are removed by the next save, a live process's file is never touched.

Loading checks every Parameter's presence, shape and dtype against the cell first (for TKFAC
also the approximation and Fisher type the checkpoint records, ``TKFAC.check_checkpoint``), and
writes nothing unless all of them match.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import mindspore as ms
from mindspore import nn

import tkfac_ms
from model_zoo.src.trainer.rundir import remove_stale_temps, temp_name

__all__ = [
    "CHECKPOINT_DIR",
    "checkpoint_path",
    "list_checkpoints",
    "latest_checkpoint",
    "save_checkpoint_atomic",
    "load_checkpoint_for_resume",
    "read_checkpoint",
    "check_params_fit",
]

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^epoch_(\d+)\.ckpt$")
# The per-step learning-rate list is rebuilt from the config, not loaded: its length depends on
# the run's number of epochs, which a resumed run may extend.
_NOT_RESTORED = frozenset({"learning_rate"})


def checkpoint_path(output_dir: str | os.PathLike, epoch: int) -> Path:
    """``<output_dir>/checkpoints/epoch_<epoch:04d>.ckpt``."""
    return Path(output_dir) / CHECKPOINT_DIR / f"epoch_{epoch:04d}.ckpt"


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """The run's complete checkpoints as ``(epoch, path)``, oldest first."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        m = _NAME.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint of the run, or None."""
    found = list_checkpoints(output_dir)
    return found[-1][1] if found else None


def save_checkpoint_atomic(
    cell: nn.Cell, path: str | os.PathLike, epoch: int, step: int, keep: int | None = None
) -> Path:
    """Write ``cell``'s Parameters and ``epoch``/``step`` to ``path`` atomically.

    Args:
        cell: the training cell (network, loss and optimizer).
        path: final file name (must end with ``.ckpt``).
        epoch: completed epochs.
        step: completed training steps.
        keep: if given, delete all but the newest ``keep`` ``epoch_*.ckpt`` in the folder.
    """
    path = Path(path)
    if path.suffix != ".ckpt":
        raise ValueError(f"checkpoint name must end with .ckpt, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    # MindSpore appends ".ckpt" to names without it, so the temporary name keeps the suffix.
    tmp = temp_name(path, suffix=".ckpt")
    try:
        ms.save_checkpoint(cell, str(tmp), append_dict={"epoch": int(epoch), "step": int(step)})
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself reaches the disk
    finally:
        os.close(dir_fd)
    if keep is not None:
        for _, old in list_checkpoints(path.parent.parent)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: str | os.PathLike, choice_func=None) -> dict[str, ms.Parameter]:
    """``ms.load_checkpoint`` with a clear error for a missing or unreadable file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable MindSpore checkpoint (truncated, corrupted).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return ms.load_checkpoint(str(path), choice_func=choice_func)
    except (ValueError, RuntimeError, TypeError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"{path} is not a readable MindSpore checkpoint (corrupted or truncated?): {first}"
        ) from None


def check_params_fit(
    params: Mapping[str, ms.Parameter],
    cell: nn.Cell,
    source: str | os.PathLike,
    ignore: frozenset[str] = frozenset(),
) -> None:
    """Check that ``params`` hold every Parameter of ``cell`` with its shape and dtype.

    Nothing is written: call it before ``ms.load_param_into_net``, which would otherwise have
    overwritten some Parameters when it meets the first mismatch.

    Raises:
        ValueError: naming the missing Parameters and those of another shape or dtype.
    """
    missing, wrong = [], []
    for p in cell.get_parameters():
        if p.name in ignore:
            continue
        if p.name not in params:
            missing.append(p.name)
            continue
        got = params[p.name]
        if tuple(got.shape) != tuple(p.shape) or got.dtype != p.dtype:
            wrong.append(f"{p.name} {tuple(got.shape)} {got.dtype} != {tuple(p.shape)} {p.dtype}")
    if not (missing or wrong):
        return
    parts = []
    if missing:
        shown = ", ".join(missing[:6]) + (" ..." if len(missing) > 6 else "")
        parts.append(f"{len(missing)} parameter(s) missing: {shown}")
    if wrong:
        shown = "; ".join(wrong[:4]) + (" ..." if len(wrong) > 4 else "")
        parts.append(f"{len(wrong)} of another shape or dtype (checkpoint != network): {shown}")
    raise ValueError(
        f"{source} does not match this run ({'; '.join(parts)}); was it written with another "
        "model or optimizer? Nothing was loaded."
    )


def load_checkpoint_for_resume(path: str | os.PathLike, cell: nn.Cell) -> tuple[int, int]:
    """Restore every Parameter of ``cell`` (except the learning-rate list) from ``path``.

    Every Parameter's presence, shape and dtype is checked before any is written.

    Returns:
        ``(epoch, step)``: completed epochs and steps at the time of the checkpoint.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is unreadable, lacks epoch/step, or does not fit ``cell`` (e.g. it
            was written for another network or optimizer).
    """
    path = Path(path)
    params = read_checkpoint(path, choice_func=lambda name: name not in _NOT_RESTORED)
    if "epoch" not in params or "step" not in params:
        raise ValueError(f"{path} has no epoch/step entries: not written by model_zoo/train.py")
    epoch = int(params.pop("epoch").asnumpy())
    step = int(params.pop("step").asnumpy())
    for _, sub in cell.cells_and_names():  # TKFAC: approximation, Fisher type, layers, shapes
        if isinstance(sub, tkfac_ms.TKFAC):
            sub.check_checkpoint(params, str(path))
    check_params_fit(params, cell, path, ignore=_NOT_RESTORED)
    missing, _ = ms.load_param_into_net(cell, params, strict_load=True)
    missing = [n for n in missing if n not in _NOT_RESTORED]
    if missing:  # not reached after check_params_fit; kept as a guard
        raise ValueError(f"{path} does not match this run ({len(missing)} parameter(s) missing)")
    return epoch, step

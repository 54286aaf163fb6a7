"""Per-epoch checkpoints of the whole training cell, written atomically, and resuming from them.

A checkpoint holds every Parameter of the training cell: the network (BatchNorm running
statistics included), the optimizer state (momentum buffers; for TKFAC the factors, inverses
and ``tkfac.*`` counters; ``global_step``, which also indexes the per-step learning rate), plus
``epoch`` and ``step`` (completed epochs and training steps of the run).

Atomicity: the file is written under a temporary name in the same folder, flushed to disk, then
renamed over the final name (``os.replace``, atomic on POSIX). A crash leaves either the old
set of checkpoints or the new one, never a truncated ``epoch_*.ckpt``; leftover temporary files
(``.epoch_*.tmp.ckpt``) are ignored and removed by the next save.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import mindspore as ms
from mindspore import nn

__all__ = [
    "CHECKPOINT_DIR",
    "checkpoint_path",
    "list_checkpoints",
    "latest_checkpoint",
    "save_checkpoint_atomic",
    "load_checkpoint_for_resume",
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
    for stale in path.parent.glob(".*.tmp.ckpt"):
        stale.unlink(missing_ok=True)
    # MindSpore appends ".ckpt" to names without it, so the temporary name keeps the suffix.
    tmp = path.with_name(f".{path.stem}.tmp.ckpt")
    ms.save_checkpoint(cell, str(tmp), append_dict={"epoch": int(epoch), "step": int(step)})
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself reaches the disk
    finally:
        os.close(dir_fd)
    if keep is not None:
        for _, old in list_checkpoints(path.parent.parent)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def load_checkpoint_for_resume(path: str | os.PathLike, cell: nn.Cell) -> tuple[int, int]:
    """Restore every Parameter of ``cell`` (except the learning-rate list) from ``path``.

    Returns:
        ``(epoch, step)``: completed epochs and steps at the time of the checkpoint.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the checkpoint lacks epoch/step or some of the cell's Parameters (e.g. it
            was written for another network or optimizer).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    params = ms.load_checkpoint(str(path), choice_func=lambda name: name not in _NOT_RESTORED)
    if "epoch" not in params or "step" not in params:
        raise ValueError(f"{path} has no epoch/step entries: not written by model_zoo/train.py")
    epoch = int(params.pop("epoch").asnumpy())
    step = int(params.pop("step").asnumpy())
    missing, _ = ms.load_param_into_net(cell, params, strict_load=True)
    missing = [n for n in missing if n not in _NOT_RESTORED]
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise ValueError(
            f"{path} does not match this run ({len(missing)} parameter(s) missing: {shown}); "
            "was it written with another model or optimizer?"
        )
    return epoch, step

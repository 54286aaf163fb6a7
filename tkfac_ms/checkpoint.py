"""Loading a checkpoint into a TKFAC training cell, checked before anything is written.

``mindspore.save_checkpoint(train_cell, path)`` already records what TKFAC needs: every state
Parameter (``<layer>.tkfac.{delta,a_factor,g_factor,a_inv,g_inv}``: the layer names and factor
shapes), the counters, and the int32 Parameters ``tkfac.approximation`` and ``tkfac.fisher``
(codes in :data:`tkfac_ms.optimizer.CHECKPOINT_CODES`). ``mindspore.load_param_into_net``
checks none of that and writes Parameter by Parameter, so a checkpoint of another approximation
loads silently and one of another network is half-written before the first shape error.
:func:`load_checkpoint` checks everything first.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import mindspore as ms
from mindspore import nn

from tkfac_ms.optimizer import TKFAC

__all__ = ["load_checkpoint", "check_checkpoint"]


def _optimizers(cell: nn.Cell) -> list[TKFAC]:
    return [c for _, c in cell.cells_and_names() if isinstance(c, TKFAC)]


def check_checkpoint(
    params: Mapping[str, ms.Parameter], cell: nn.Cell, source: str = "checkpoint"
) -> None:
    """Raise ``ValueError`` unless ``params`` fit ``cell``; writes nothing.

    Checked: for every TKFAC optimizer in ``cell``, :meth:`TKFAC.check_checkpoint`
    (approximation, Fisher type, layer names, factor shapes); then every Parameter of ``cell``
    is present in ``params`` with its shape and dtype.
    """
    for opt in _optimizers(cell):
        opt.check_checkpoint(params, source)
    missing, wrong = [], []
    for p in cell.get_parameters():
        if p.name not in params:
            missing.append(p.name)
        elif tuple(params[p.name].shape) != tuple(p.shape) or params[p.name].dtype != p.dtype:
            got = params[p.name]
            wrong.append(f"{p.name} {tuple(got.shape)} {got.dtype} != {tuple(p.shape)} {p.dtype}")
    problems = []
    if missing:
        problems.append(f"{len(missing)} parameter(s) missing: {', '.join(missing[:6])}")
    if wrong:
        problems.append(f"{len(wrong)} of another shape or dtype: {'; '.join(wrong[:4])}")
    if problems:
        raise ValueError(
            f"{source} does not fit this cell: {'; '.join(problems)}. Nothing was loaded."
        )


def load_checkpoint(
    ckpt: str | os.PathLike | Mapping[str, ms.Parameter], cell: nn.Cell
) -> dict[str, ms.Parameter]:
    """Load a checkpoint (a path, or the dict of ``mindspore.load_checkpoint``) into ``cell``.

    Everything is checked with :func:`check_checkpoint` before the first Parameter is written.
    Entries of the checkpoint that ``cell`` does not hold (``epoch``, ``step``, ...) are not
    loaded and are returned.

    Raises:
        ValueError: naming every mismatch; nothing was written.
    """
    source = "checkpoint" if isinstance(ckpt, Mapping) else str(ckpt)
    params = dict(ckpt) if isinstance(ckpt, Mapping) else ms.load_checkpoint(str(ckpt))
    check_checkpoint(params, cell, source)
    names = {p.name for p in cell.get_parameters()}
    ms.load_param_into_net(cell, {k: v for k, v in params.items() if k in names}, strict_load=True)
    return {k: v for k, v in params.items() if k not in names}

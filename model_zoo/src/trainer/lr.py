"""Learning-rate schedules as per-step lists (what every MindSpore optimizer accepts).

The list is computed on the host in float64 and handed to the optimizer as a per-step
``learning_rate``; the optimizer indexes it with its own ``global_step``, so a resumed run picks
up the schedule where it stopped. ``lr[t]`` is the rate of step ``t`` (0-based).

========= ===================================================================================
name      rate in epoch ``e`` (0-based) after the warmup
========= ===================================================================================
step      ``lr * lr_decay_factor ** (e // lr_decay_epochs)`` (the paper: x0.1 every 40 epochs
          for KFAC/TKFAC, every 60 for SGDM/Adam)
cosine    ``lr * (1 + cos(pi * t / T)) / 2`` per step over the post-warmup steps
constant  ``lr``
========= ===================================================================================

``warmup_epochs`` > 0 ramps linearly from ``lr / steps`` to ``lr`` over the first epochs.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from model_zoo.src.trainer.config import TrainConfig

__all__ = ["LR_SCHEDULES", "create_lr"]


def _step(cfg: TrainConfig, steps_per_epoch: int) -> np.ndarray:
    epoch = np.arange(cfg.epochs * steps_per_epoch) // steps_per_epoch
    return cfg.lr * cfg.lr_decay_factor ** (epoch // cfg.lr_decay_epochs)


def _cosine(cfg: TrainConfig, steps_per_epoch: int) -> np.ndarray:
    warm = cfg.warmup_epochs * steps_per_epoch
    total = cfg.epochs * steps_per_epoch
    t = np.clip(np.arange(total) - warm, 0, None)
    return cfg.lr * 0.5 * (1.0 + np.cos(np.pi * t / max(total - warm, 1)))


def _constant(cfg: TrainConfig, steps_per_epoch: int) -> np.ndarray:
    return np.full(cfg.epochs * steps_per_epoch, cfg.lr)


LR_SCHEDULES: dict[str, Callable[[TrainConfig, int], np.ndarray]] = {
    "step": _step,
    "cosine": _cosine,
    "constant": _constant,
}


def create_lr(cfg: TrainConfig, steps_per_epoch: int) -> list[float]:
    """The rate of every step of the run, ``cfg.epochs * steps_per_epoch`` values.

    Raises:
        ValueError: unknown ``cfg.lr_schedule``.
    """
    if cfg.lr_schedule not in LR_SCHEDULES:
        raise ValueError(
            f"unknown lr_schedule '{cfg.lr_schedule}'; available: {', '.join(LR_SCHEDULES)}"
        )
    lr = LR_SCHEDULES[cfg.lr_schedule](cfg, steps_per_epoch).astype(np.float64)
    warm = cfg.warmup_epochs * steps_per_epoch
    if warm:
        lr[:warm] = cfg.lr * np.arange(1, warm + 1) / warm
    return [float(v) for v in lr]

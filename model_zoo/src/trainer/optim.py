"""Optimizer factory: the paper's five methods from one config, and their training cells.

========== ==================================================================================
name       optimizer
========== ==================================================================================
tkfac_new  ``tkfac_ms.TKFAC(approximation="tkfac_new")``: trace floor ``nu``, no ``damping``
tkfac_nor  ``tkfac_ms.TKFAC(approximation="tkfac_nor")``: damping ``lambda``
kfac       ``tkfac_ms.TKFAC(approximation="kfac")``: KFAC with pi-damping
momentum   ``mindspore.nn.Momentum`` (SGDM)
adam       ``mindspore.nn.Adam``
========== ==================================================================================

The TKFAC methods share ``momentum``, ``weight_decay``, ``damping``, ``nu``, ``factor_decay``,
``factor_update_steps`` (T_FIM), ``inv_update_steps`` (T_INV), ``fisher`` and ``kl_clip``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

from mindspore import nn

import tkfac_ms
from model_zoo.src.trainer.config import TrainConfig

__all__ = ["OPTIMIZERS", "SECOND_ORDER", "create_optimizer", "create_train_cell"]


def _tkfac(approximation: str, cfg: TrainConfig, net: nn.Cell, lr: Sequence[float]) -> nn.Cell:
    return tkfac_ms.TKFAC(
        net,
        learning_rate=list(lr),
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        damping=cfg.damping,
        nu=cfg.nu,
        approximation=approximation,
        factor_decay=cfg.factor_decay,
        factor_update_steps=cfg.factor_update_steps,
        inv_update_steps=cfg.inv_update_steps,
        fisher=cfg.fisher,
        kl_clip=cfg.kl_clip,
    )


def _momentum(cfg: TrainConfig, net: nn.Cell, lr: Sequence[float]) -> nn.Cell:
    return nn.Momentum(
        net.trainable_params(),
        learning_rate=list(lr),
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
    )


def _adam(cfg: TrainConfig, net: nn.Cell, lr: Sequence[float]) -> nn.Cell:
    return nn.Adam(
        net.trainable_params(),
        learning_rate=list(lr),
        beta1=cfg.adam_beta1,
        beta2=cfg.adam_beta2,
        eps=cfg.adam_eps,
        weight_decay=cfg.weight_decay,
    )


OPTIMIZERS: dict[str, Callable[[TrainConfig, nn.Cell, Sequence[float]], nn.Cell]] = {
    "tkfac_new": functools.partial(_tkfac, "tkfac_new"),
    "tkfac_nor": functools.partial(_tkfac, "tkfac_nor"),
    "kfac": functools.partial(_tkfac, "kfac"),
    "momentum": _momentum,
    "adam": _adam,
}
SECOND_ORDER = frozenset({"tkfac_new", "tkfac_nor", "kfac"})


def create_optimizer(cfg: TrainConfig, net: nn.Cell, lr: Sequence[float]) -> nn.Optimizer:
    """Build ``cfg.optimizer`` for ``net`` with the per-step rates ``lr``.

    The TKFAC methods wrap ``net``'s Dense and Conv2d layers in place (``tkfac_ms``), so build
    the optimizer before the loss and training cells.

    Raises:
        ValueError: unknown optimizer name, or a hyperparameter out of range.
    """
    key = cfg.optimizer.lower()
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer '{cfg.optimizer}'; available: {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[key](cfg, net, lr)


def create_train_cell(net: nn.Cell, loss_fn: nn.Cell, optimizer: nn.Optimizer) -> nn.Cell:
    """``cell(data, label) -> loss``: one training step, data parallel when the context is.

    TKFAC gets :class:`tkfac_ms.TKFACTrainOneStepCell` (which all-reduces the gradients and the
    factor statistics), the others ``nn.TrainOneStepCell`` (which all-reduces the gradients).
    """
    with_loss = nn.WithLossCell(net, loss_fn)
    if isinstance(optimizer, tkfac_ms.TKFAC):
        return tkfac_ms.TKFACTrainOneStepCell(with_loss, optimizer)
    return nn.TrainOneStepCell(with_loss, optimizer)

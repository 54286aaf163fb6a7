"""Hyperparameters of the optimizer, validated in one place.

The twin is ``tkfac_ms/config.py``: the same enums, field names and ranges. Two fields differ
because the frameworks differ: here ``lr`` is part of the config (MindSpore's ``nn.Optimizer``
owns its learning rate), and a schedule is a ``Callable[[int], float]`` (step ``t`` -> value)
rather than a per-step list.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import TypeVar

__all__ = ["Approximation", "FisherType", "LossReduction", "Schedule", "TKFACConfig"]

#: A hyperparameter that may change with the optimizer step ``t`` (counted from 0).
Schedule = float | Callable[[int], float]


class Approximation(StrEnum):
    """Which curvature-block approximation is used (spec Sec. 2, 3 and 6)."""

    KFAC = "kfac"
    TKFAC_NOR = "tkfac_nor"
    TKFAC_NEW = "tkfac_new"


class FisherType(StrEnum):
    """Which per-sample loss defines ``u`` (spec Sec. 1)."""

    TRUE = "true"
    EMPIRICAL = "empirical"


class LossReduction(StrEnum):
    """How the training loss reduces over the batch; sets the per-sample scale of ``u``.

    ``MEAN``: the loss is ``(1/N) sum_n l_n``, so output gradients are multiplied by ``N``;
    ``SUM``: the loss is ``sum_n l_n``, output gradients are already per-sample.
    """

    MEAN = "mean"
    SUM = "sum"


_E = TypeVar("_E", bound=Enum)


def _as_enum(cls: type[_E], value: object, name: str) -> _E:
    """Accept the enum member or its string value (case-insensitive)."""
    if isinstance(value, cls):
        return value
    allowed = ", ".join(repr(m.value) for m in cls)
    try:
        return cls(str(value).lower())
    except ValueError:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def _check_number(
    value: object,
    name: str,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool,
    high_open: bool = True,
) -> float:
    """Return ``float(value)`` if it is a finite number in the given interval, else raise."""
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    rng = f"in {lo}{low:g}, {high:g}{hi}"
    if high == math.inf:
        rng = f"> {low:g}" if low_open else f">= {low:g}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number {rng}, got {value!r}")
    v = float(value)
    ok = math.isfinite(v)
    ok = ok and (v > low if low_open else v >= low)
    ok = ok and (v < high if high_open else v <= high)
    if not ok:
        raise ValueError(f"{name} must be {rng}, got {value!r}")
    return v


def _check_steps(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _check_schedule(value: object, name: str) -> Schedule:
    """A float ``> 0`` or a callable; a callable's values are checked when it is evaluated."""
    if callable(value):
        return value
    return _check_number(value, name, low=0.0, low_open=True)


@dataclass(frozen=True)
class TKFACConfig:
    """Validated optimizer hyperparameters; every check lives in :meth:`__post_init__`.

    Attributes:
        lr: learning rate ``alpha_t > 0``: a float or ``step -> float``.
        momentum: ``tau`` in ``[0, 1)`` (spec Sec. 5 step 5).
        weight_decay: ``wd >= 0`` (spec Sec. 5 step 4).
        damping: ``lambda > 0`` of TKFAC_nor and KFAC: a float or ``step -> float``.
        nu: trace floor ``nu > 0`` of TKFAC_new (spec Sec. 3).
        approximation: KFAC, TKFAC_nor or TKFAC_new (enum or its string value).
        factor_decay: moving-average decay ``epsilon`` in ``[0, 1)`` (spec Sec. 4).
        factor_update_steps: ``T_FIM >= 1``: factors are updated when ``t % T_FIM == 0``.
        inv_update_steps: ``T_INV >= 1``: inverses are recomputed when ``t % T_INV == 0``.
        fisher: ``"true"`` (sampled labels) or ``"empirical"`` (spec Sec. 1).
        kl_clip: KL-clipping ``kappa > 0``, or None (off, the default and the paper's setting).
        loss_reduction: ``"mean"`` or ``"sum"``, how the training loss reduces over the batch.
    """

    lr: Schedule
    momentum: float = 0.9
    weight_decay: float = 0.0
    damping: Schedule = 1e-3
    nu: float = 1e-3
    approximation: Approximation | str = Approximation.TKFAC_NOR
    factor_decay: float = 0.95
    factor_update_steps: int = 100
    inv_update_steps: int = 100
    fisher: FisherType | str = FisherType.TRUE
    kl_clip: float | None = None
    loss_reduction: LossReduction | str = LossReduction.MEAN

    def __post_init__(self) -> None:
        """Check every field and normalise it; raise ``ValueError`` naming the field."""
        put = object.__setattr__  # the dataclass is frozen
        put(self, "lr", _check_schedule(self.lr, "lr"))
        put(
            self,
            "momentum",
            _check_number(self.momentum, "momentum", low=0.0, high=1.0, low_open=False),
        )
        put(
            self,
            "weight_decay",
            _check_number(self.weight_decay, "weight_decay", low=0.0, low_open=False),
        )
        put(self, "damping", _check_schedule(self.damping, "damping"))
        put(self, "nu", _check_number(self.nu, "nu", low=0.0, low_open=True))
        put(self, "approximation", _as_enum(Approximation, self.approximation, "approximation"))
        put(
            self,
            "factor_decay",
            _check_number(self.factor_decay, "factor_decay", low=0.0, high=1.0, low_open=False),
        )
        put(
            self,
            "factor_update_steps",
            _check_steps(self.factor_update_steps, "factor_update_steps"),
        )
        put(self, "inv_update_steps", _check_steps(self.inv_update_steps, "inv_update_steps"))
        put(self, "fisher", _as_enum(FisherType, self.fisher, "fisher"))
        if self.kl_clip is not None:
            put(self, "kl_clip", _check_number(self.kl_clip, "kl_clip", low=0.0, low_open=True))
        put(self, "loss_reduction", _as_enum(LossReduction, self.loss_reduction, "loss_reduction"))

    def lr_at(self, step: int) -> float:
        """``alpha_t``, the learning rate at optimizer step ``step``."""
        return _evaluate(self.lr, step, "lr")

    def damping_at(self, step: int) -> float:
        """``lambda_t``, the damping at optimizer step ``step``."""
        return _evaluate(self.damping, step, "damping")


def _evaluate(schedule: Schedule, step: int, name: str) -> float:
    if callable(schedule):
        return _check_number(schedule(step), f"{name}({step})", low=0.0, low_open=True)
    return float(schedule)

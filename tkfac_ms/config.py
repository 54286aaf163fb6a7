"""Hyperparameters of the optimizer, validated in one place.

Mirrors ``reference_torch/config.py``: the same enums, names and ranges. Only the learning rate
differs (MindSpore convention: ``learning_rate``, a float, a per-step list/Tensor or a
``LearningRateSchedule``, checked by ``mindspore.nn.Optimizer`` itself).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum


class Approximation(str, Enum):
    """Which curvature block approximation is used (spec Sec. 2, 3 and 6)."""

    KFAC = "kfac"
    TKFAC_NOR = "tkfac_nor"
    TKFAC_NEW = "tkfac_new"


class FisherType(str, Enum):
    """Which per-sample loss defines ``u`` (spec Sec. 1)."""

    TRUE = "true"
    EMPIRICAL = "empirical"


class LossReduction(str, Enum):
    """How the training loss reduces over the batch (sets the per-sample scale of ``u``)."""

    MEAN = "mean"
    SUM = "sum"


def _enum(cls: type[Enum], value: object, name: str) -> Enum:
    if isinstance(value, cls):
        return value
    allowed = ", ".join(repr(m.value) for m in cls)
    try:
        return cls(str(value).lower())
    except ValueError:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}") from None


def _check_steps(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _check_range(
    value: float, name: str, low: float, high: float, *, low_open: bool, high_open: bool
) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    ok = math.isfinite(v) or (high == math.inf and v == math.inf and not high_open)
    ok = ok and (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    if not ok:
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ValueError(f"{name} must be in {lo}{low}, {high}{hi}, got {value!r}")
    return v


@dataclass(frozen=True)
class TKFACConfig:
    """Validated optimizer hyperparameters (everything except the learning rate).

    ``damping`` is a float or a per-step sequence (the value at step ``t`` is
    ``damping[min(t, len - 1)]``).
    """

    momentum: float = 0.9
    weight_decay: float = 0.0
    damping: float | Sequence[float] = 1e-3
    nu: float = 1e-3
    approximation: Approximation | str = Approximation.TKFAC_NOR
    factor_decay: float = 0.95
    factor_update_steps: int = 100
    inv_update_steps: int = 100
    fisher: FisherType | str = FisherType.TRUE
    kl_clip: float | None = None
    loss_reduction: LossReduction | str = LossReduction.MEAN

    def __post_init__(self) -> None:
        """Check every field; raise ``ValueError`` naming the field and its allowed range."""
        put = object.__setattr__
        put(
            self,
            "momentum",
            _check_range(self.momentum, "momentum", 0.0, 1.0, low_open=False, high_open=True),
        )
        put(
            self,
            "weight_decay",
            _check_range(
                self.weight_decay, "weight_decay", 0.0, math.inf, low_open=False, high_open=True
            ),
        )
        if isinstance(self.damping, (list, tuple)):
            if not self.damping:
                raise ValueError("damping must be a float > 0 or a non-empty per-step list")
            put(
                self,
                "damping",
                tuple(
                    _check_range(d, "damping", 0.0, math.inf, low_open=True, high_open=True)
                    for d in self.damping
                ),
            )
        else:
            put(
                self,
                "damping",
                _check_range(
                    self.damping,  # type: ignore[arg-type]
                    "damping",
                    0.0,
                    math.inf,
                    low_open=True,
                    high_open=True,
                ),
            )
        put(self, "nu", _check_range(self.nu, "nu", 0.0, math.inf, low_open=True, high_open=True))
        put(self, "approximation", _enum(Approximation, self.approximation, "approximation"))
        put(
            self,
            "factor_decay",
            _check_range(
                self.factor_decay, "factor_decay", 0.0, 1.0, low_open=False, high_open=True
            ),
        )
        put(
            self,
            "factor_update_steps",
            _check_steps(self.factor_update_steps, "factor_update_steps"),
        )
        put(self, "inv_update_steps", _check_steps(self.inv_update_steps, "inv_update_steps"))
        put(self, "fisher", _enum(FisherType, self.fisher, "fisher"))
        if self.kl_clip is not None:
            put(
                self,
                "kl_clip",
                _check_range(self.kl_clip, "kl_clip", 0.0, math.inf, low_open=True, high_open=True),
            )
        put(self, "loss_reduction", _enum(LossReduction, self.loss_reduction, "loss_reduction"))

    def damping_at(self, step: int) -> float:
        """The damping value used at optimizer step ``step``."""
        if isinstance(self.damping, tuple):
            return self.damping[min(step, len(self.damping) - 1)]
        return float(self.damping)  # type: ignore[arg-type]

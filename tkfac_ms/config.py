"""Hyperparameters of both optimizers, validated in one place; imports no framework.

This module is the single source of the enums, the :class:`TKFACConfig` dataclass and the
argument validators of ``tkfac_ms.TKFAC`` (MindSpore) and ``reference_torch.TKFAC`` (PyTorch):
``reference_torch/config.py`` re-exports it, so both twins accept and reject the same values
with the same messages. It imports neither MindSpore nor torch (``tkfac_ms/__init__.py`` loads
MindSpore lazily), so the torch twin does not load MindSpore.

One field is used by one twin only: ``lr``. The reference passes it; the MindSpore optimizer
leaves it ``None`` because ``mindspore.nn.Optimizer`` owns its ``learning_rate`` (checked with
:func:`check_learning_rate`, then by ``nn.Optimizer`` itself).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any, TypeVar

__all__ = [
    "Approximation",
    "FisherType",
    "LossReduction",
    "Schedule",
    "TKFACConfig",
    "check_decay_filter",
    "check_learning_rate",
    "check_skip",
]

#: A hyperparameter that may change with the optimizer step ``t`` (counted from 0): a float,
#: a per-step sequence (the value at step ``t`` is ``seq[min(t, len - 1)]``) or ``t -> value``.
Schedule = float | Sequence[float] | Callable[[int], float]


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
    """Accept the enum member or its string value (case-insensitive); nothing else.

    A bool or a number is refused even where its ``str`` would name a member
    (``fisher=True`` is not ``fisher="true"``).
    """
    if isinstance(value, cls):
        return value
    if isinstance(value, str):
        try:
            return cls(value.lower())
        except ValueError:
            pass
    allowed = ", ".join(repr(m.value) for m in cls)
    raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _is_number(value: object) -> bool:
    """A real number that is not a bool (``True`` is an ``int`` in Python) and not a string."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_number(
    value: object,
    name: str,
    *,
    low: float,
    high: float = math.inf,
    low_open: bool,
    high_open: bool = True,
) -> float:
    """Return ``float(value)`` if it is a finite real number in the interval, else raise.

    The message names the field and its range: ``damping must be > 0, got -1.0``,
    ``momentum must be in [0, 1), got 1.0``; a value that is not a number (a string, a bool,
    None) gets ``lr must be a number > 0, got '0.1'``.
    """
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    rng = f"in {lo}{low:g}, {high:g}{hi}"
    if high == math.inf:
        rng = f"> {low:g}" if low_open else f">= {low:g}"
    if not _is_number(value):
        raise ValueError(f"{name} must be a number {rng}, got {value!r}")
    v = float(value)  # type: ignore[arg-type]  # a numbers.Real
    ok = math.isfinite(v)
    ok = ok and (v > low if low_open else v >= low)
    ok = ok and (v < high if high_open else v <= high)
    if not ok:
        raise ValueError(f"{name} must be {rng}, got {value!r}")
    return v


def _check_steps(value: object, name: str) -> int:
    """An integer ``>= 1`` (not a bool, not a float such as ``2.0``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_positive_sequence(value: Sequence[object], name: str) -> tuple[float, ...]:
    """A non-empty per-step sequence of finite numbers ``> 0``, as a tuple of floats."""
    if len(value) == 0:
        raise ValueError(f"{name} must be a float > 0 or a non-empty per-step list, got {value!r}")
    return tuple(
        _check_number(v, f"{name}[{i}]", low=0.0, low_open=True) for i, v in enumerate(value)
    )


def _check_schedule(value: object, name: str) -> Schedule:
    """A float ``> 0``, a non-empty per-step sequence of them (as a tuple), or a callable.

    A callable's values are checked when it is evaluated (:func:`_evaluate`).
    """
    if callable(value):
        return value
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return _check_positive_sequence(value, name)
    return _check_number(value, name, low=0.0, low_open=True)


def _evaluate(schedule: Schedule | None, step: int, name: str) -> float:
    """The value of a checked schedule at optimizer step ``step``."""
    if schedule is None:
        raise ValueError(f"{name} is not set in this config ({name}=None)")
    if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if callable(schedule):
        return _check_number(schedule(int(step)), f"{name}({step})", low=0.0, low_open=True)
    if isinstance(schedule, tuple):
        return float(schedule[min(int(step), len(schedule) - 1)])
    return float(schedule)  # checked: a float


def check_skip(value: object, name: str = "skip") -> tuple[str, ...]:
    """Name patterns of layers to leave unwrapped, as a tuple of strings.

    A single string is one pattern (``"fc1"`` -> ``("fc1",)``), not its characters; any other
    iterable must hold strings only. Anything else raises ``ValueError`` naming ``name``.
    """
    if isinstance(value, str):
        return (value,)
    if isinstance(value, (bytes, bytearray)) or not isinstance(value, Iterable):
        raise ValueError(
            f"{name} must be a name pattern or an iterable of name patterns, got {value!r}"
        )
    patterns = tuple(value)
    for p in patterns:
        if not isinstance(p, str):
            raise ValueError(f"{name} must contain strings, got {p!r}")
    return patterns


def check_decay_filter(value: object) -> Callable[..., bool] | None:
    """``None`` or a callable ``(name, param) -> bool`` that selects the weight-decayed params."""
    if value is None or callable(value):
        return value
    raise ValueError(
        f"decay_filter must be a callable (name, param) -> bool or None, got {value!r}"
    )


def check_learning_rate(value: Any, name: str = "learning_rate") -> Any:
    """Check the plain-Python forms of the MindSpore optimizer's learning rate.

    A number (not a bool) must be finite and ``> 0`` and is returned as a float; a list or
    tuple must be non-empty with every entry a number ``> 0`` and is returned unchanged; a
    string or None is refused. Anything else (a MindSpore Tensor, a ``LearningRateSchedule``, a
    NumPy array) is returned unchanged: ``mindspore.nn.Optimizer`` checks those.
    """
    if value is None or isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if _is_number(value):
        return _check_number(value, name, low=0.0, low_open=True)
    if isinstance(value, (list, tuple)):
        _check_positive_sequence(value, name)
        return value
    return value


@dataclass(frozen=True)
class TKFACConfig:
    """Validated optimizer hyperparameters; every check lives in :meth:`__post_init__`.

    Enum fields take the member or its string value (any case) and are stored as the member;
    ``damping`` and ``lr`` are stored as a float, a tuple of floats (from any non-empty
    sequence) or the callable; read them at a step with :meth:`damping_at` / :meth:`lr_at`.

    Attributes:
        lr: learning rate ``alpha_t > 0`` (the reference's); None where the framework's optimizer
            owns it (MindSpore). A float, a per-step sequence or ``step -> float``.
        momentum: ``tau`` in ``[0, 1)`` (spec Sec. 5 step 5).
        weight_decay: ``wd >= 0`` (spec Sec. 5 step 4).
        damping: ``lambda > 0`` of TKFAC_nor and KFAC: a float, a per-step sequence or
            ``step -> float``.
        nu: trace floor ``nu > 0`` of TKFAC_new (spec Sec. 3).
        approximation: KFAC, TKFAC_nor or TKFAC_new (enum or its string value).
        factor_decay: moving-average decay ``epsilon`` in ``[0, 1)`` (spec Sec. 4).
        factor_update_steps: ``T_FIM >= 1``: factors are updated when ``t % T_FIM == 0``.
        inv_update_steps: ``T_INV >= 1``: inverses are recomputed when ``t % T_INV == 0``.
        fisher: ``"true"`` (sampled labels) or ``"empirical"`` (spec Sec. 1).
        kl_clip: KL-clipping ``kappa > 0``, or None (off, the default and the paper's setting).
        loss_reduction: ``"mean"`` or ``"sum"``, how the training loss reduces over the batch.
    """

    lr: Schedule | None = None
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
        if self.lr is not None:
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
        """``alpha_t``, the learning rate at optimizer step ``step`` (``lr`` must be set)."""
        return _evaluate(self.lr, step, "lr")

    def damping_at(self, step: int) -> float:
        """``lambda_t``, the damping at optimizer step ``step``."""
        return _evaluate(self.damping, step, "damping")

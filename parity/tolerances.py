"""The one table of tolerances, of the parity comparison and of the unit tests.

Used by ``python -m parity`` and ``tests/test_parity.py``; the element-wise tolerances of the
unit tests (``ELEMENTWISE``) are re-exported by ``tests/testing_utils.py``.

Parity: one entry per (network, group of quantities; see ``parity.compare.GROUPS``). Each entry
holds the tolerance, the largest error recorded for that group over the three approximations
(and the CI configurations), and the reason the error is what it is. The tolerance is the
only enforced bound; the recorded value is evidence, reported next to each new measurement
(``tests/test_parity.py`` warns, without failing, when a measurement exceeds it). Rules,
checked by the tests:

* a tolerance is at least ``MIN_MARGIN`` (2.5) and at most ``MAX_MARGIN`` (10) times its
  recorded error, so a change of summation order that moves an error by up to 2.5x still
  passes (where the recorded error is exactly 0 the tolerance is one rounding unit of the
  precision instead: a multiple of 0 would forbid the rounding of a different summation
  order);
* float64 (Dense-only) nets: statistics, factors and inverses to <= 1e-10;
* float32 conv nets: statistics, factors and inverses to <= 1e-4, one-step updates
  ``D`` to <= 1e-3.

Recorded on this project's 2-core x86 CI machine (oneDNN AVX2 for MindSpore, MKL for torch)
with ``scripts/run_parity.sh --model all --approximation all`` (the published table,
``docs/parity.md``) and the CI cases of ``tests/test_parity.py``; rounded up to two digits.
A group's recorded value is the worst layer of the worst approximation, so most rows sit far
below their tolerance.

This module imports neither MindSpore nor torch (``parity.compare`` is imported on first use
only), so the unit tests share the table at no cost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from parity.compare import Row

__all__ = [
    "Tolerance",
    "TOLERANCES",
    "CAPS",
    "EPS",
    "MIN_MARGIN",
    "MAX_MARGIN",
    "ELEMENTWISE",
    "tolerance",
    "margin",
    "kind",
    "attach",
]

#: Element-wise ``(rtol, atol)`` of the unit tests, by name: ``float64`` for oracle
#: comparisons in double precision, ``float32`` for single-precision results, ``exact``.
ELEMENTWISE: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-4, 1e-6),
    "exact": (0.0, 0.0),
}

#: A parity tolerance lies between these multiples of its recorded error (rule above).
MIN_MARGIN = 2.5
MAX_MARGIN = 10.0

#: One rounding unit, the tolerance floor where the measured error is exactly 0.
EPS = {"float64": 2.3e-16, "float32": 1.2e-7}


@dataclass(frozen=True)
class Tolerance:
    """A tolerance with its evidence.

    Attributes:
        value: the bound on the max relative error (the only enforced one).
        measured: the largest max relative error recorded (all approximations, all configs),
            on one machine; reported, not enforced.
        reason: why the error is of that size.
    """

    value: float
    measured: float
    reason: str


_F64 = "float64 rounding, summation order (MKL vs Eigen/oneDNN)"
_F32 = "float32 rounding, summation order (MKL vs oneDNN)"
_D32 = "float32 gradient through the net, then two float32 inverses"
_STEP = "re-anchored: each step's D error, as the update row"
_TRAJ = "lr 2^-8 times the D error, relative to the weights"
_FLIP = (
    "batches on which MindSpore and torch take the same ReLU/max-pool branches; one flip on "
    "the 2x2 stage exceeds it (torch f32 vs torch f64 by as much: 0.45, docs/parity.md)"
)

#: network -> group -> tolerance.
TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "mlp": {
        "forward": Tolerance(8e-15, 9.9e-16, _F64 + "; 3072-term dot products"),
        "stats": Tolerance(2e-14, 2.4e-15, _F64 + "; phi, psi divide by N delta"),
        "factors": Tolerance(1e-14, 1.3e-15, _F64 + "; sqrt(delta) and damping added"),
        "inverses": Tolerance(2e-14, 3e-15, "Cholesky in float64 of well-damped factors"),
        "beta": Tolerance(EPS["float64"], 0.0, "no conv layer: beta = 1 exactly on both sides"),
        "update": Tolerance(
            1e-12,
            1.7e-13,
            "float64 D = Psi^-1 G_W Phi^-1; TKFAC_new's "
            "relative damping (delta~/d_in) leaves cond ~1e2 on 769/3073 dims",
        ),
        "momentum": Tolerance(1e-12, 1.7e-13, "free-running 10 steps: D errors, accumulated"),
        "trajectory": Tolerance(
            4e-14,
            4.4e-15,
            "free-running: lr 2^-8 times the momentum "
            "errors, relative to the weights; loss of each step",
        ),
        "final": Tolerance(
            8e-14,
            9.7e-15,
            "moving averages after 4 updates on drifted "
            "weights; delta = sum ||a||^2 ||u||^2 magnifies the drift",
        ),
    },
    "small_cnn": {
        "forward": Tolerance(5e-6, 5.3e-7, _F32),
        "stats": Tolerance(4e-6, 4.2e-7, _F32 + "; im2col sums over 4096 locations"),
        "factors": Tolerance(4e-6, 4.2e-7, _F32),
        "inverses": Tolerance(
            4e-5,
            5.3e-6,
            "KFAC's pi-damped classifier A (1025 dims, rank "
            "4 from 4 samples): cond ~1e2 times float32 rounding",
        ),
        "beta": Tolerance(
            EPS["float32"],
            0.0,
            "beta = nu / delta(conv1) = 2.03 rounds to the same float32 on both sides",
        ),
        "update": Tolerance(
            1e-3,
            2.3e-4,
            "KFAC classifier: both float32 sides are ~1e-4 "
            "from float64 (cond ~1e3 of the pi-damped rank-4 A)",
        ),
        "momentum": Tolerance(1e-3, 2.3e-4, _STEP),
        "trajectory": Tolerance(5e-5, 5.3e-6, _TRAJ),
        "final": Tolerance(4e-5, 4.9e-6, "as inverses, after 4 factor updates"),
    },
    "resnet20": {
        "forward": Tolerance(3e-6, 3.1e-7, _F32),
        "stats": Tolerance(1e-5, 1.1e-6, _F32 + "; u through up to 19 BatchNorm backwards"),
        "factors": Tolerance(8e-6, 8.2e-7, _F32),
        "inverses": Tolerance(8e-6, 1.2e-6, "float32 Cholesky of damped factors, cond ~1e1"),
        "beta": Tolerance(2e-6, 2.2e-7, "beta = nu / min conv delta (= 9.3) in float32"),
        "update": Tolerance(6e-5, 6.2e-6, _D32 + "; worst: the classifier bias"),
        "momentum": Tolerance(1e-4, 2e-5, _STEP),
        "trajectory": Tolerance(3e-6, 3.5e-7, _TRAJ + "; BN running statistics"),
        "final": Tolerance(8e-6, 9.1e-7, "as factors and inverses, after 4 factor updates"),
    },
    "vgg16_bn": {
        "forward": Tolerance(2e-5, 2.4e-6, _F32 + "; 13 conv-BN layers, 4608-term sums"),
        "stats": Tolerance(
            1e-4, 2.2e-5, _F32 + "; 4096-location im2col sums; the issue's 1e-4 cap binds (4.7x)"
        ),
        "factors": Tolerance(1e-4, 1.2e-5, _F32 + "; the 1e-4 cap binds (8.8x)"),
        "inverses": Tolerance(2e-5, 3.3e-6, "float32 Cholesky of 4608 x 4608 damped factors"),
        "beta": Tolerance(2e-6, 2.4e-7, "beta = nu / min conv delta in float32"),
        "update": Tolerance(1e-3, 2.7e-4, _D32 + "; worst: KFAC's classifier bias"),
        "momentum": Tolerance(1e-3, 2.7e-4, _STEP + "; " + _FLIP),
        "trajectory": Tolerance(8e-5, 1.6e-5, _TRAJ + "; " + _FLIP),
        "final": Tolerance(
            1e-4,
            3.8e-5,
            "as factors and inverses after 4 factor updates; the 1e-4 cap binds (2.7x)",
        ),
    },
}

#: The issue's hard caps: network kind -> group -> largest allowed tolerance.
CAPS: dict[str, dict[str, float]] = {
    "float64": {"stats": 1e-10, "factors": 1e-10, "inverses": 1e-10, "final": 1e-10},
    "float32": {"stats": 1e-4, "factors": 1e-4, "inverses": 1e-4, "final": 1e-4, "update": 1e-3},
}


def tolerance(model: str, group: str) -> Tolerance:
    """The table entry of ``(model, group)``.

    Raises:
        KeyError: naming the missing entry (every network has every group of
            ``parity.compare.GROUPS``).
    """
    try:
        return TOLERANCES[model][group]
    except KeyError:
        groups = ", ".join(next(iter(TOLERANCES.values())))
        raise KeyError(
            f"no tolerance for model {model!r}, group {group!r}; groups: {groups}"
        ) from None


def margin(tol: Tolerance) -> float:
    """``tol.value / tol.measured``: how far above its recorded error a tolerance sits."""
    return tol.value / tol.measured if tol.measured > 0 else float("inf")


def kind(model: str) -> str:
    """``"float64"`` or ``"float32"``: the precision ``model`` is compared in."""
    from parity.compare import FLOAT64_MODELS  # imports MindSpore and torch: on first use

    return "float64" if model in FLOAT64_MODELS else "float32"


def attach(rows: Iterable[Row]) -> list[Row]:
    """Set ``row.tol`` from the table for every row; returns them as a list."""
    out = list(rows)
    for row in out:
        row.tol = tolerance(row.model, row.group).value
    return out

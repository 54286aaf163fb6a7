"""The one table of parity tolerances, used by ``python -m parity`` and ``tests/test_parity.py``.

One entry per (network, group of quantities; see ``parity.compare.GROUPS``). Each entry holds
the tolerance, the largest error measured for that group over the three approximations (and
the CI configurations), and the reason the error is what it is. Rules, checked by the tests:

* a tolerance is at most 10x its measurement (where the measurement is exactly 0 it is one
  rounding unit of the precision instead: 10 x 0 would forbid the rounding of a different
  summation order);
* float64 (Dense-only) nets: statistics, factors and inverses to <= 1e-10;
* float32 conv nets: statistics, factors and inverses to <= 1e-4, one-step updates
  ``D`` to <= 1e-3.

Measured on this project's 2-core x86 CI machine (oneDNN AVX2 for MindSpore, MKL for torch)
with ``scripts/run_parity.sh --model all --approximation all`` (the published table,
``docs/parity.md``) and the CI cases of ``tests/test_parity.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from parity.compare import FLOAT64_MODELS, GROUPS, Row

__all__ = ["Tolerance", "TOLERANCES", "CAPS", "EPS", "tolerance", "kind", "attach"]

#: One rounding unit, the tolerance floor where the measured error is exactly 0.
EPS = {"float64": 2.3e-16, "float32": 1.2e-7}


@dataclass(frozen=True)
class Tolerance:
    """A tolerance with its evidence.

    Attributes:
        value: the bound on the max relative error.
        measured: the largest max relative error seen (all approximations, all configs).
        reason: why the error is of that size.
    """

    value: float
    measured: float
    reason: str


_F64_SUM = "float64 summation order (BLAS vs oneDNN/Eigen), no amplification"
_F32_SUM = "float32 summation order; im2col and conv reductions of up to 4608 terms"

#: network -> group -> tolerance.
TOLERANCES: dict[str, dict[str, Tolerance]] = {
    "mlp": {
        "forward": Tolerance(1e-14, 9.8e-16, _F64_SUM + " (3072-term dot products)"),
        "stats": Tolerance(3e-14, 2.4e-15, _F64_SUM + "; Psi divides by delta"),
        "factors": Tolerance(1e-14, 1.0e-15, _F64_SUM),
        "inverses": Tolerance(5e-14, 4.1e-15, "Cholesky of the damped factors; cond ~1e2"),
        "beta": Tolerance(EPS["float64"], 0.0, "no conv layer: beta = 1 exactly on both sides"),
        "update": Tolerance(1e-12, 9.5e-14, "G_W (float64) times two inverses; cond ~1e2"),
        "momentum": Tolerance(3e-12, 2.9e-13, "free-running 10 steps: one-step errors compound"),
        "trajectory": Tolerance(
            1e-11, 7.6e-13, "free-running 10 steps; the loss row compounds them through the logits"
        ),
        "final": Tolerance(
            2e-10,
            1.4e-11,
            "moving averages over 4 updates of a free-running "
            "trajectory; delta = ||a||^2 ||u||^2 amplifies "
            "the weight drift ~100x",
        ),
    },
    "small_cnn": {
        "forward": Tolerance(6e-6, 5.3e-7, _F32_SUM),
        "stats": Tolerance(1e-5, 1.0e-6, _F32_SUM),
        "factors": Tolerance(1e-5, 1.0e-6, _F32_SUM + "; sqrt(delta) and damping added"),
        "inverses": Tolerance(
            5e-5, 4.8e-6, "KFAC pi-damped fc factor (1025 x 1025), cond ~1e2 times float32 rounding"
        ),
        "beta": Tolerance(EPS["float32"], 0.0, "all conv deltas above nu: beta = 1 exactly"),
        "update": Tolerance(
            1e-3,
            1.9e-4,
            "KFAC fc layer: D = G^-1 G_W A^-1 with a rank-4 A (batch 4) and pi-damping, cond ~1e3",
        ),
        "momentum": Tolerance(1e-3, 1.9e-4, "one-step D errors (re-anchored every step)"),
        "trajectory": Tolerance(6e-5, 5.3e-6, "lr 2^-8 times the D errors, relative to w"),
        "final": Tolerance(5e-5, 4.8e-6, "as inverses, after 4 factor updates"),
    },
    "resnet20": {
        "forward": Tolerance(4e-6, 3.7e-7, _F32_SUM),
        "stats": Tolerance(2e-5, 1.4e-6, _F32_SUM + "; BatchNorm backward"),
        "factors": Tolerance(1e-5, 9.6e-7, _F32_SUM),
        "inverses": Tolerance(2e-5, 1.3e-6, "Cholesky in float32; damped, cond ~1e1"),
        "beta": Tolerance(EPS["float32"], 0.0, "all conv deltas above nu: beta = 1 exactly"),
        "update": Tolerance(
            2e-4, 1.2e-5, "gradients through 19 BatchNorms, then two float32 inverses"
        ),
        "momentum": Tolerance(2e-4, 1.8e-5, "one-step D errors (re-anchored every step)"),
        "trajectory": Tolerance(
            4e-5, 3.8e-6, "lr 2^-8 times the D errors, relative to w; BN running statistics"
        ),
        "final": Tolerance(2e-5, 1.4e-6, "as factors and inverses, after 4 factor updates"),
    },
    "vgg16_bn": {
        "forward": Tolerance(3e-5, 2.3e-6, _F32_SUM),
        "stats": Tolerance(2e-4, 2.0e-5, _F32_SUM + "; 32x32 maps: 4096-row im2col sums"),
        "factors": Tolerance(8e-5, 7.2e-6, _F32_SUM),
        "inverses": Tolerance(2e-5, 1.9e-6, "Cholesky of 4608 x 4608 damped factors"),
        "beta": Tolerance(EPS["float32"], 0.0, "all conv deltas above nu: beta = 1 exactly"),
        "update": Tolerance(
            3e-4, 2.8e-5, "gradients through 13 BatchNorms, then two 4608-dim float32 inverses"
        ),
        "momentum": Tolerance(3e-4, 2.8e-5, "one-step D errors (re-anchored every step)"),
        "trajectory": Tolerance(2e-5, 1.9e-6, "lr 2^-8 times the D errors, relative to w"),
        "final": Tolerance(8e-5, 7.2e-6, "as factors and inverses, after 4 factor updates"),
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
        raise KeyError(
            f"no tolerance for model {model!r}, group {group!r}; groups: {', '.join(GROUPS)}"
        ) from None


def kind(model: str) -> str:
    """``"float64"`` or ``"float32"``: the precision ``model`` is compared in."""
    return "float64" if model in FLOAT64_MODELS else "float32"


def attach(rows: Iterable[Row]) -> list[Row]:
    """Set ``row.tol`` from the table for every row; returns them as a list."""
    out = list(rows)
    for row in out:
        row.tol = tolerance(row.model, row.group).value
    return out

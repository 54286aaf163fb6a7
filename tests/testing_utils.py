"""The tests' one helpers module: ``rel_err``, the report of what differs, the tolerance table.

* ``rel_err(actual, expected)``: ``max|actual - expected| / max|expected|`` in float64, the
  measure of every cross-framework comparison (``parity.compare.rel_err`` computes the same).
* ``rel_err_report`` / ``assert_rel_err``: that error against a bound, with a report of the
  worst entries (index, actual, expected, difference) when it fails.
* ``allclose_report`` / ``assert_allclose``: element-wise ``numpy.allclose`` with the same
  report; return the largest deviation so tests can print it (``pytest -s`` shows the
  ``DEVIATION`` lines).
* The tolerances: ``ELEMENTWISE`` (named ``(rtol, atol)`` pairs) and the parity table
  ``PARITY_TOLERANCES`` / ``parity_tolerance``, both from ``parity/tolerances.py``, the one
  table of the project.

Arrays may be NumPy arrays, Python numbers, torch tensors or MindSpore tensors; this module
imports neither framework itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from parity.tolerances import ELEMENTWISE, MAX_MARGIN, MIN_MARGIN
from parity.tolerances import TOLERANCES as PARITY_TOLERANCES
from parity.tolerances import tolerance as parity_tolerance

__all__ = [
    "ELEMENTWISE",
    "PARITY_TOLERANCES",
    "MIN_MARGIN",
    "MAX_MARGIN",
    "parity_tolerance",
    "Deviation",
    "rel_err",
    "rel_err_report",
    "assert_rel_err",
    "allclose_report",
    "assert_allclose",
    "report_deviation",
    "torch_single_thread",
]


@pytest.fixture(autouse=True, scope="module")
def torch_single_thread() -> Iterator[None]:
    """Run a test module's tiny torch ops on one thread, then restore the thread count.

    Import it into a test module to use it. On a busy 2-core machine, intra-op threads for
    matrices this small only spin and wait (the reference tests ran 2x slower with them).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def as_float64(x: Any) -> np.ndarray:
    """A NumPy float64 copy of a torch or MindSpore tensor, an array or a number."""
    if hasattr(x, "asnumpy"):  # MindSpore
        x = x.asnumpy()
    elif hasattr(x, "detach"):  # torch
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _pair(actual: Any, expected: Any) -> tuple[np.ndarray, np.ndarray]:
    act, exp = as_float64(actual), as_float64(expected)
    if act.shape != exp.shape and act.size == exp.size == 1:  # a loss: shape () vs (1,)
        act, exp = act.reshape(()), exp.reshape(())
    if act.shape != exp.shape:
        raise ValueError(f"shape mismatch: actual {act.shape} vs expected {exp.shape}")
    if not exp.size:
        raise ValueError("empty arrays: nothing to compare")
    return act, exp


def rel_err(actual: Any, expected: Any) -> float:
    """``max|actual - expected| / max|expected|`` in float64; the shapes must match.

    A non-finite difference gives ``inf``; a zero ``expected`` gives 0 if ``actual`` is zero
    too, else ``inf``.

    Raises:
        ValueError: on different shapes (size-1 arrays excepted) or empty arrays.
    """
    act, exp = _pair(actual, expected)
    scale = float(np.abs(exp).max())
    diff = float(np.abs(act - exp).max())
    if not (np.isfinite(diff) and np.isfinite(scale)):
        return float("inf")
    if scale == 0.0:
        return 0.0 if diff == 0.0 else float("inf")
    return diff / scale


@dataclass(frozen=True)
class Deviation:
    """The outcome of a comparison: largest absolute and relative (to ``max|expected|``) gap."""

    name: str
    max_abs: float
    max_rel: float
    ok: bool
    report: str


def _worst_entries(act: np.ndarray, exp: np.ndarray, excess: np.ndarray, worst: int) -> list[str]:
    """One line per entry of the ``worst`` largest ``excess``: index, values, differences."""
    lines = []
    for flat in np.argsort(-np.nan_to_num(excess, nan=np.inf), axis=None)[:worst]:
        idx = np.unravel_index(flat, exp.shape) if exp.shape else ()
        a, e = act[idx], exp[idx]
        rel = abs(a - e) / abs(e) if e != 0 else np.inf
        lines.append(
            f"  at {tuple(int(i) for i in idx)}: actual {a:.12g}, expected {e:.12g}, "
            f"|diff| {abs(a - e):.3e}, rel {rel:.3e}"
        )
    return lines


def rel_err_report(
    actual: Any, expected: Any, *, tol: float, name: str = "value", worst: int = 5
) -> Deviation:
    """``rel_err(actual, expected) <= tol``, and which entries differ most when it is not."""
    act, exp = _pair(actual, expected)
    err = rel_err(act, exp)
    diff = np.abs(act - exp)
    max_abs = float(np.nan_to_num(diff, nan=np.inf).max())
    if err <= tol:
        return Deviation(name, max_abs, err, True, f"{name}: ok, rel err {err:.3e} <= {tol:.1e}")
    head = (
        f"{name}: rel err max|diff| / max|expected| = {err:.3e} > tol {tol:.1e} "
        f"(max |diff| {max_abs:.3e}, max |expected| {float(np.abs(exp).max()):.3e})"
    )
    return Deviation(
        name, max_abs, err, False, "\n".join([head, *_worst_entries(act, exp, diff, worst)])
    )


def assert_rel_err(actual: Any, expected: Any, tol: float, *, name: str = "value") -> float:
    """``rel_err_report``; raise ``AssertionError`` with the report; return the error."""
    dev = rel_err_report(actual, expected, tol=tol, name=name)
    assert dev.ok, dev.report
    return dev.max_rel


def allclose_report(
    actual: Any,
    expected: Any,
    *,
    rtol: float,
    atol: float,
    name: str = "value",
    worst: int = 5,
) -> Deviation:
    """Compare like ``numpy.allclose`` and describe the ``worst`` offending entries."""
    act, exp = as_float64(actual), as_float64(expected)
    if act.shape != exp.shape:
        return Deviation(
            name, np.inf, np.inf, False, f"{name}: shape {act.shape} != expected shape {exp.shape}"
        )
    diff = np.abs(act - exp)
    allowed = atol + rtol * np.abs(exp)
    scale = float(np.max(np.abs(exp))) if exp.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    bad = ~(diff <= allowed)  # NaN counts as bad
    if not np.any(bad) and np.all(np.isfinite(act)):
        return Deviation(name, max_abs, max_rel, True, f"{name}: ok, max |diff| {max_abs:.3e}")
    head = (
        f"{name}: {int(bad.sum())} of {bad.size} entries differ "
        f"(rtol={rtol}, atol={atol}; max |diff| {max_abs:.3e}, "
        f"relative to max|expected| {max_rel:.3e})"
    )
    lines = [head, *_worst_entries(act, exp, diff - allowed, worst)]
    return Deviation(name, max_abs, max_rel, False, "\n".join(lines))


def assert_allclose(
    actual: Any,
    expected: Any,
    *,
    tol: str = "float64",
    name: str = "value",
) -> Deviation:
    """``allclose_report`` with the named tolerance; raise ``AssertionError`` with the report."""
    rtol, atol = ELEMENTWISE[tol]
    dev = allclose_report(actual, expected, rtol=rtol, atol=atol, name=name)
    assert dev.ok, dev.report
    return dev


def report_deviation(test: str, dev: Deviation) -> None:
    """Print a measured deviation in one greppable line (visible with ``pytest -s``)."""
    print(f"DEVIATION {test} {dev.name}: max_abs={dev.max_abs:.3e} max_rel={dev.max_rel:.3e}")

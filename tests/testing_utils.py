"""Shared helpers for the tests: one tolerance table and comparisons that say what differs.

``assert_allclose`` fails with a report of the worst entries (index, actual, expected,
absolute and relative difference) instead of a bare ``False``, and returns the largest
deviation so tests can print it (run ``pytest -s`` to see the ``DEVIATION`` lines).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch

#: Tolerances, in one place. ``float64`` is for oracle comparisons in double precision.
TOLERANCES: dict[str, tuple[float, float]] = {  # name -> (rtol, atol)
    "float64": (1e-10, 1e-12),
    "float32": (1e-4, 1e-6),
    "exact": (0.0, 0.0),
}


@pytest.fixture(autouse=True, scope="module")
def torch_single_thread() -> Iterator[None]:
    """Run a test module's tiny torch ops on one thread, then restore the thread count.

    Import it into a test module to use it. On a busy 2-core machine, intra-op threads for
    matrices this small only spin and wait (the reference tests ran 2x slower with them).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _to_numpy(x: torch.Tensor | np.ndarray | float) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


@dataclass(frozen=True)
class Deviation:
    """The outcome of a comparison: largest absolute and relative (to ``max|expected|``) gap."""

    name: str
    max_abs: float
    max_rel: float
    ok: bool
    report: str


def allclose_report(
    actual: torch.Tensor | np.ndarray | float,
    expected: torch.Tensor | np.ndarray | float,
    *,
    rtol: float,
    atol: float,
    name: str = "value",
    worst: int = 5,
) -> Deviation:
    """Compare like ``numpy.allclose`` and describe the ``worst`` offending entries."""
    act, exp = _to_numpy(actual), _to_numpy(expected)
    if act.shape != exp.shape:
        return Deviation(
            name, np.inf, np.inf, False, f"{name}: shape {act.shape} != expected shape {exp.shape}"
        )
    diff = np.abs(act - exp)
    allowed = atol + rtol * np.abs(exp)
    scale = float(np.max(np.abs(exp))) if exp.size else 0.0
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = max_abs / scale if scale > 0 else max_abs
    bad = diff > allowed
    if not np.any(bad) and np.all(np.isfinite(act)):
        return Deviation(name, max_abs, max_rel, True, f"{name}: ok, max |diff| {max_abs:.3e}")
    order = np.argsort(-(diff - allowed), axis=None)[:worst]
    lines = [
        f"{name}: {int(bad.sum())} of {bad.size} entries differ "
        f"(rtol={rtol}, atol={atol}; max |diff| {max_abs:.3e}, "
        f"relative to max|expected| {max_rel:.3e})"
    ]
    for flat in order:
        idx = np.unravel_index(flat, exp.shape) if exp.shape else ()
        a, e = act[idx], exp[idx]
        rel = abs(a - e) / abs(e) if e != 0 else np.inf
        lines.append(
            f"  at {tuple(int(i) for i in idx)}: actual {a:.12g}, expected {e:.12g}, "
            f"|diff| {abs(a - e):.3e}, rel {rel:.3e}"
        )
    return Deviation(name, max_abs, max_rel, False, "\n".join(lines))


def assert_allclose(
    actual: torch.Tensor | np.ndarray | float,
    expected: torch.Tensor | np.ndarray | float,
    *,
    tol: str = "float64",
    name: str = "value",
) -> Deviation:
    """``allclose_report`` with the named tolerance; raise ``AssertionError`` with the report."""
    rtol, atol = TOLERANCES[tol]
    dev = allclose_report(actual, expected, rtol=rtol, atol=atol, name=name)
    assert dev.ok, dev.report
    return dev


def report_deviation(test: str, dev: Deviation) -> None:
    """Print a measured deviation in one greppable line (visible with ``pytest -s``)."""
    print(f"DEVIATION {test} {dev.name}: max_abs={dev.max_abs:.3e} max_rel={dev.max_rel:.3e}")

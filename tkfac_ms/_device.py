"""Which route the compiled graph takes: the portable one, or the CPU's faster one.

The **portable route** uses only primitives that MindSpore 2.10 documents with kernels on
Ascend, GPU and CPU (checked by ``python -m tkfac_ms.portability``). GPU and Ascend always take
it. The CPU takes it too when ``TKFAC_MS_PORTABLE=1`` is set, so that the CPU test suite runs
exactly the graph that the accelerators run. Otherwise the CPU adds its one CPU-only fast path:
the fused C++ kernel for a convolution's ``phi_sum`` (``csrc/conv_phi.cc``, an AOT ``Custom``
operator), which computes the same sums as the portable MindSpore-op path.

Everything else (the LU inverse with its in-graph guard, the normal-based label sampler, the
diagonal adds) is the same on every route.
"""

from __future__ import annotations

import os

import mindspore as ms

__all__ = ["PORTABLE_ENV", "portable_requested", "takes_portable_route", "device_target"]

#: Environment variable that makes a CPU run take the route of GPU and Ascend.
PORTABLE_ENV = "TKFAC_MS_PORTABLE"


def portable_requested() -> bool:
    """True when ``TKFAC_MS_PORTABLE`` is ``1``/``true``/``on``/``yes`` (case-insensitive)."""
    return os.environ.get(PORTABLE_ENV, "0").strip().lower() in ("1", "true", "on", "yes")


def device_target() -> str:
    """MindSpore's ``device_target`` (``"CPU"``, ``"GPU"`` or ``"Ascend"``)."""
    return str(ms.get_context("device_target"))


def takes_portable_route() -> bool:
    """Whether a graph built now takes the portable route (read at ``TKFAC`` construction)."""
    return portable_requested() or device_target() != "CPU"

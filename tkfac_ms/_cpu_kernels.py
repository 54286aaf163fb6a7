"""The fused CPU kernel for a convolution's ``phi_sum`` (``csrc/conv_phi.cc``), built on first use.

MindSpore runs it as an ``ops.Custom(func_type="aot")`` operator on the CPU only; GPU and
Ascend keep the MindSpore-op path (``capture.Conv2dCapture._conv_sums``). The library is
compiled once per source, compiler flags and CPU (``-march=native``) into
``$TKFAC_MS_CACHE`` (default ``~/.cache/tkfac_ms``; a temporary folder if that is not
writable), written to a temporary name and renamed,
so concurrent processes (msrun workers) never load a half-written file. Without a C++ compiler,
or with ``TKFAC_MS_CPU_KERNELS=0``, :func:`conv_phi_library` returns ``None`` (with one
warning when the build failed) and the MindSpore-op path is used.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

SOURCE = Path(__file__).with_name("csrc") / "conv_phi.cc"
FUNCTION = "TkfacConvPhi"
FLAGS = ("-O3", "-march=native", "-std=c++20", "-fPIC", "-shared", "-pthread")


def enabled() -> bool:
    """``False`` when ``TKFAC_MS_CPU_KERNELS`` is ``0``/``false``/``off``."""
    return os.environ.get("TKFAC_MS_CPU_KERNELS", "1").strip().lower() not in ("0", "false", "off")


def cpu_count() -> int:
    """CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _cpu_signature() -> str:
    """The CPU model and feature flags, so a cache shared between machines never mixes builds."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags"))]
    return "\n".join(sorted(set(lines)))


def _cache_dirs() -> list[Path]:
    """``$TKFAC_MS_CACHE``, else ``~/.cache/tkfac_ms``, then a per-user temporary folder."""
    env = os.environ.get("TKFAC_MS_CACHE")
    first = Path(env) if env else Path.home() / ".cache" / "tkfac_ms"
    return [first, Path(tempfile.gettempdir()) / f"tkfac_ms-{os.getuid()}"]


def _build(compiler: str, target: Path) -> None:
    """Compile into a temporary file next to ``target``, then rename it (atomic)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *FLAGS, "-o", tmp, str(SOURCE)],
            check=True,
            capture_output=True,
            text=True,
            timeout=300,
        )
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@cache
def conv_phi_library() -> str | None:
    """Path of the compiled ``conv_phi`` library, building it if needed; ``None`` if unavailable."""
    if not enabled():
        return None
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        warnings.warn(
            "tkfac_ms: no C++ compiler (g++) found; convolution statistics on the CPU use the "
            "slower MindSpore-op path",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    key = hashlib.sha256()
    key.update(SOURCE.read_bytes())
    key.update(" ".join((compiler, *FLAGS)).encode())
    key.update(_cpu_signature().encode())
    name = f"conv_phi-{key.hexdigest()[:20]}.so"
    error = ""
    for folder in _cache_dirs():
        target = folder / name
        if target.exists():
            return str(target)
        try:
            _build(compiler, target)
            return str(target)
        except subprocess.CalledProcessError as exc:  # the compiler failed: no other folder helps
            error = exc.stderr or str(exc)
            break
        except (OSError, subprocess.SubprocessError) as exc:  # e.g. a read-only cache folder
            error = str(exc)
    warnings.warn(
        f"tkfac_ms: building {SOURCE.name} failed ({error.strip()[:500]}); convolution "
        "statistics on the CPU use the slower MindSpore-op path",
        RuntimeWarning,
        stacklevel=2,
    )
    return None

"""Helpers of the model-zoo end-to-end tests: subprocesses that never outlive their test."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def env() -> dict[str, str]:
    """The test's environment with the venv first on PATH (msrun starts workers as 'python')."""
    e = dict(os.environ)
    e["PATH"] = f"{VENV_BIN}:{e.get('PATH', '')}"
    e["TKFAC_VENV"] = str(VENV_BIN.parent)
    e.setdefault("ONEDNN_MAX_CPU_ISA", "AVX2")
    e.setdefault("GLOG_v", "3")
    e["PYTHONPATH"] = f"{ROOT}:{e.get('PYTHONPATH', '')}"
    return e


def run(cmd: list[str], timeout: float, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own process group; on timeout kill the whole group, then raise."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd or ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"timed out after {timeout} s: {cmd}\n{out[-4000:]}") from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def free_port() -> int:
    """A TCP port that was free a moment ago (for msrun's scheduler)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

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


def run_split(
    cmd: list[str], timeout: float, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    """Like :func:`run`, with stdout and stderr kept apart."""
    proc = subprocess.Popen(
        cmd,
        cwd=cwd or ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"timed out after {timeout} s: {cmd}\n{out[-3000:]}{err[-3000:]}"
        ) from None
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def start(cmd: list[str], cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own process group, stdout and stderr merged, line by line."""
    return subprocess.Popen(
        cmd,
        cwd=cwd or ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        start_new_session=True,
    )


def read_until(proc: subprocess.Popen, marker: str, timeout: float) -> str:
    """Read ``proc``'s output until a line contains ``marker``; kill it on timeout or exit."""
    import selectors
    import time

    seen: list[str] = []
    deadline = time.monotonic() + timeout
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    try:
        while time.monotonic() < deadline:
            if not sel.select(timeout=max(0.0, deadline - time.monotonic())):
                continue
            line = proc.stdout.readline()
            if not line:  # the process ended without printing the marker
                break
            seen.append(line)
            if marker in line:
                return "".join(seen)
    finally:
        sel.close()
    kill(proc)
    raise AssertionError(f"no {marker!r} from {proc.args}:\n{''.join(seen)[-4000:]}")


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc``'s process group and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()

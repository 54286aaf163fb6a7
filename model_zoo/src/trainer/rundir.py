"""Output folders of training runs: one live run per folder, and nothing of an earlier run lost.

* :class:`RunLock`: a run holds ``<output>/.lock`` (an exclusive ``flock`` on a file that names
  the owner's PID and host) for as long as it lives. A second run in the same folder is refused
  with the owner's PID. The kernel drops the ``flock`` when its owner dies, even by ``SIGKILL``,
  so the file a killed run leaves behind is a *stale* lock: the next run takes it over and says
  so.
* :func:`previous_run_files`: what an earlier run left in a folder. A run that does not resume
  refuses such a folder instead of deleting anything in it.
* :func:`temp_name` / :func:`remove_stale_temps`: temporary files (written, then renamed over
  their final name) carry the writer's PID and a random part, and the cleanup of leftovers
  removes only those of processes that are no longer running.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import socket
from pathlib import Path

__all__ = [
    "LOCK_NAME",
    "RunFolderError",
    "RunLock",
    "pid_alive",
    "lock_holder",
    "previous_run_files",
    "temp_name",
    "remove_stale_temps",
]

LOCK_NAME = ".lock"
# The files that make a folder hold a run worth keeping (config.yaml alone does not: it is
# written before the first epoch, so a run that died before its first checkpoint left nothing
# else, and a new run may take the folder over).
_RUN_FILES = ("metrics.csv", "metrics.json", "curves.png")
_TEMP = re.compile(r"^\..*\.(\d+)-[0-9a-f]+\.tmp(\.[A-Za-z0-9]+)?$")


class RunFolderError(RuntimeError):
    """The output folder cannot be used: another live run holds it, or it is not writable."""


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def temp_name(path: str | os.PathLike, suffix: str = "") -> Path:
    """A temporary name next to ``path``, unique to this process: ``.<name>.<pid>-<hex>.tmp``.

    Args:
        path: the final file.
        suffix: appended after ``.tmp`` (MindSpore's checkpoint writer wants ``.ckpt``).
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp{suffix}")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of :func:`temp_name` in ``folder`` whose writer has died.

    A live process's file, this one's included, is left alone (a writer removes its own file
    when it fails). Returns the removed files.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m and not pid_alive(int(m.group(1))):
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def previous_run_files(output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoints and metrics of an earlier run in ``output_dir`` (empty if none)."""
    out = Path(output_dir)
    found = sorted((out / "checkpoints").glob("epoch_*.ckpt"))
    found += [out / f for f in _RUN_FILES if (out / f).exists()]
    return found


def _describe_owner(text: str) -> tuple[int | None, str]:
    """``(pid, "PID n on host h")`` from a lock file's content."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and line.strip())
    try:
        pid = int(fields.get("pid", ""))
    except ValueError:
        return None, "an unknown process"
    host = fields.get("host")
    return pid, f"PID {pid}" + (f" on {host}" if host else "")


def lock_holder(output_dir: str | os.PathLike) -> str | None:
    """``"PID n on host h"`` of the live run that holds ``output_dir``, or None (no side effect)."""
    path = Path(output_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _describe_owner(os.pread(fd, 4096, 0).decode(errors="replace"))[1]
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def in_use_error(output_dir: str | os.PathLike, owner: str) -> RunFolderError:
    """The error of a folder held by another live run."""
    return RunFolderError(
        f"{output_dir} is in use by another run ({owner}, lock file "
        f"{Path(output_dir) / LOCK_NAME}); wait for it to end, or choose another folder with "
        "--output"
    )


class RunLock:
    """An exclusive lock on an output folder, held from :meth:`acquire` to :meth:`release`.

    Args:
        output_dir: the run's folder (created if missing).
        log: where the stale-lock message goes (default: ``print``).
    """

    def __init__(self, output_dir: str | os.PathLike, log=print):
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / LOCK_NAME
        self.log = log
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock.

        Raises:
            RunFolderError: another live process holds it, or the folder is not writable.
        """
        try:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RunFolderError(
                f"cannot create the output folder {self.output_dir}: {exc.strerror or exc}"
            ) from None
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise RunFolderError(
                    f"cannot write to the output folder {self.output_dir}: {exc.strerror or exc}"
                ) from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                    raise
                text = self.path.read_text() if self.path.exists() else ""
                raise in_use_error(self.output_dir, _describe_owner(text)[1]) from None
            # The file may have been removed (and replaced) by its previous owner between our
            # open and flock: then the lock is on a file nobody else sees. Retry.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            old = os.pread(fd, 4096, 0).decode(errors="replace")
            pid, owner = _describe_owner(old)
            if old.strip() and pid != os.getpid():
                self.log(
                    f"note: taking over the stale lock of {self.output_dir} left by {owner}, "
                    "which no longer holds it (that run ended without cleaning up)"
                )
            info = f"pid={os.getpid()}\nhost={socket.gethostname()}\n".encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, info, 0)
            os.fsync(fd)
            self._fd = fd
            return self
        raise RunFolderError(f"could not lock {self.path}: it keeps being replaced")

    def release(self) -> None:
        """Remove the lock file and drop the lock (no-op if not held)."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

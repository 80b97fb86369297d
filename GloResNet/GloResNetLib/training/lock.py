"""One job per run folder: a lock file naming its holder (host, PID, start time, command).

A job that trains the whole run (``gloresnet train``, ``train --resume``, ``pretrain-age``) holds
``RUN_DIR/.job.lock``; a ``--fold K`` job holds ``RUN_DIR/.job_fold_K.lock``, so jobs for different folds may
still run at the same time. Each job takes its own file first, then checks the files it conflicts with (a
whole-run job conflicts with every fold job and the other way round), so of two jobs starting together at
least one refuses and never both run.

Exclusion is the operating system's file lock on the open lock file (``fcntl.flock``; ``msvcrt.locking`` on
Windows), which the kernel releases when the holder dies however it dies (SIGKILL, power loss of a client
aside), so a lock left by a dead process is stale by construction: the next job takes it over and says whose
it was. The file's JSON content only names the holder for the refusal message. A taken file is
re-checked to still be the file at that path (a releasing job unlinks it), so two jobs never hold two
different files of one name. On file systems without working locks (some NFS set-ups) the lock is only as
good as the file system; the holder's host is shown so that a user can tell.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import InputError

WHOLE_RUN = ".job.lock"
_FOLD_GLOB = ".job_fold_*.lock"


def lock_name(fold: int | None) -> str:
    """Lock file name of a whole-run job (``fold`` None) or of a ``--fold K`` job."""
    return WHOLE_RUN if fold is None else f".job_fold_{int(fold)}.lock"


def is_lock_file(name: str) -> bool:
    """True for the lock files of this module (never part of a run's results)."""
    return name == WHOLE_RUN or (name.startswith(".job_fold_") and name.endswith(".lock"))


def _try_os_lock(fd: int) -> bool:
    """Non-blocking exclusive lock of an open file; False when another process holds it."""
    try:
        import fcntl
    except ImportError:  # Windows: lock one byte far beyond the (short) JSON content, which stays readable
        import msvcrt

        os.lseek(fd, 1 << 30, os.SEEK_SET)
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        finally:
            os.lseek(fd, 0, os.SEEK_SET)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except (BlockingIOError, PermissionError):
        return False
    return True


def read_holder(path: Path) -> dict[str, Any]:
    """The holder a lock file names ({} when empty or unreadable)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """'gloresnet train (PID 123 on host h, since 2026-01-01 10:00:00)'."""
    if not holder:
        return "another job (its lock file names no holder)"
    since = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else "?"
    who = f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}"
    return f"{holder.get('job', 'a job')} ({who}, since {when})"


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (any owner)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:  # Windows: os.kill(pid, 0) is not a probe there
        return True
    return True


class RunLock:
    """Hold a run folder (or one fold of it) for this process; use as a context manager.

    Args:
        run_dir: the run folder (must exist).
        fold: None for a whole-run job, else the fold a ``--fold K`` job trains.
        job: what to call this job in a refusal message (e.g. "gloresnet train --resume").

    ``acquire`` raises :class:`~GloResNetLib.errors.InputError` (exit 2 from the command line) naming the
    holder when another live job holds the folder; ``stale`` then holds what a dead holder's file said.
    """

    def __init__(self, run_dir: str | os.PathLike, fold: int | None = None, job: str = "gloresnet") -> None:
        self.run_dir = Path(run_dir)
        self.fold = fold
        self.job = job
        self.path = self.run_dir / lock_name(fold)
        self.fd: int | None = None
        self.stale: dict[str, Any] | None = None
        self.created_dir = False  # set by whoever made run_dir for this job

    def _take(self, path: Path, create: bool = True) -> int | None:
        """Open and lock ``path``; None when another process holds it (or, without ``create``, when there
        is no such file)."""
        while True:
            try:
                fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
            except FileNotFoundError:
                return None
            if not _try_os_lock(fd):
                os.close(fd)
                return None
            try:  # the file may have been released (unlinked) between our open and our lock: retry
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`InputError` naming the job that holds it."""
        fd = self._take(self.path)
        if fd is None:
            raise InputError(self._refusal(read_holder(self.path)))
        previous = read_holder(self.path)
        if previous:
            self.stale = previous  # the kernel released it: its holder ended without cleaning up
        me = {
            "job": self.job,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.time(),
            "fold": self.fold,
            "command": " ".join(sys.argv),
        }
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(me) + "\n").encode())
        os.fsync(fd)
        self.fd = fd
        for other in self._conflicting():
            ofd = self._take(other, create=False)
            if ofd is not None:  # a stale file of a dead job: remove it while we hold it
                other.unlink(missing_ok=True)
                os.close(ofd)
            elif other.exists():
                holder = read_holder(other)
                self.release()
                raise InputError(self._refusal(holder))
        return self

    def _conflicting(self) -> list[Path]:
        if self.fold is None:
            return sorted(self.run_dir.glob(_FOLD_GLOB))
        return [self.run_dir / WHOLE_RUN]

    def _refusal(self, holder: dict[str, Any]) -> str:
        k = holder.get("fold")
        what = f"fold {k} of this run folder" if isinstance(k, int) else "this run folder"
        return (
            f"{self.run_dir}: in use by {describe_holder(holder)}, which holds {what}; wait until it ends "
            f"or stop it first (a lock of a job that died is taken over automatically)"
        )

    def release(self) -> None:
        """Unlink and unlock (idempotent)."""
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        except OSError:  # read-only now: the lock still ends with this process
            pass
        os.close(self.fd)
        self.fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def stale_note(lock: RunLock) -> str | None:
    """A log line when ``lock`` took over a dead job's lock file, else None."""
    s = lock.stale
    if not s:
        return None
    alive = s.get("host") == socket.gethostname() and isinstance(s.get("pid"), int) and pid_alive(s["pid"])
    state = "its PID is reused by another process" if alive else "no longer running"
    return f"took over the stale lock of {describe_holder(s)}: {state}"

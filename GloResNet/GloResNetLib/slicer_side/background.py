"""Background processes for the Slicer modules, without Qt or slicer.

:class:`BackgroundProcess` starts a child without blocking (own process group / session), reads stdout and
stderr on background threads, turns JSON lines into events that :meth:`BackgroundProcess.poll` hands to a GUI
timer, keeps the last log lines for error messages, stops it gracefully (SIGINT: training saves its
checkpoint) or kills the whole process tree. Every started process is registered, and :func:`cancel_all` (run
at exit, and by the modules when the scene or Slicer closes) leaves no orphan behind. The events a
``gloresnet`` child prints are listed in :mod:`GloResNetLib.progress_events`.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..progress_events import ERROR
from .diagnosis import diagnose

#: Synthetic event emitted once when the process has ended: {"event": "process_exit", "returncode": int, ...}.
PROCESS_EXIT = "process_exit"
#: Event wrapping a JSON object printed without an "event" key (``gloresnet predict --json`` results).
RESULT = "result"
#: Event for a line of human-readable output (not JSON).
LOG = "log"
_IS_WINDOWS = os.name == "nt"


def _parent_map() -> dict[int, list[int]]:
    """pid -> child pids of every process visible to us (Linux /proc, else ``ps``)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            # "pid (comm) state ppid ..." where comm may contain spaces and parentheses
            fields = stat[stat.rfind(")") + 2 :].split()
            if len(fields) > 1:
                children[int(fields[1])].append(int(entry.name))
        return children
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return children
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            children[int(parts[1])].append(int(parts[0]))
    return children


def descendants(pid: int) -> list[int]:
    """All descendant pids of ``pid`` (children first), as far as the OS lets us see them."""
    tree = _parent_map()
    found, todo = [], list(tree.get(pid, []))
    while todo:
        child = todo.pop(0)
        if child not in found:
            found.append(child)
            todo.extend(tree.get(child, []))
    return found


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists and is not a zombie."""
    if _IS_WINDOWS:
        out = subprocess.run(["tasklist", "/FI", f"PID eq {pid}", "/NH"], capture_output=True, text=True)
        return str(pid) in out.stdout
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def kill_tree(pid: int) -> None:
    """Kill a process, its process group and every descendant found (Windows: ``taskkill /T /F``)."""
    if _IS_WINDOWS:
        subprocess.run(["taskkill", "/F", "/T", "/PID", str(pid)], capture_output=True)
        return
    kids = descendants(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)  # the child leads its own session/group
    for p in [pid, *kids]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p, signal.SIGKILL)


_ACTIVE: set[BackgroundProcess] = set()


_ACTIVE_LOCK = threading.Lock()


def active_processes() -> list[BackgroundProcess]:
    """Processes started by this Python that have not been seen to exit."""
    with _ACTIVE_LOCK:
        return [p for p in _ACTIVE if p.alive]


def cancel_all() -> int:
    """Kill every registered process tree (called at exit and when Slicer or its scene closes)."""
    with _ACTIVE_LOCK:
        procs = list(_ACTIVE)
    for p in procs:
        p.cancel()
    return len(procs)


atexit.register(cancel_all)


def parse_line(line: str) -> dict[str, Any] | None:
    """A JSON event from one output line: objects with an "event" key as they are, other objects wrapped as
    ``{"event": "result", "record": obj}``; None for anything that is not a JSON object."""
    text = line.strip()
    if not (text.startswith("{") and text.endswith("}")):
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("event"), str):
        return obj
    return {"event": RESULT, "record": obj}


class BackgroundProcess:
    """A child process followed without blocking: start, :meth:`poll` events from a GUI timer, stop or cancel.

    Events are dicts: the JSON objects the child prints (one per line, either stream), ``{"event": "result",
    "record": ...}`` for JSON objects without an "event" key, ``{"event": "log", "stream", "line"}`` for other
    lines, and finally one ``{"event": "process_exit", "returncode", "stopped", "cancelled", "elapsed_s"}``.
    """

    def __init__(
        self,
        args: Sequence[str | os.PathLike],
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        log_lines: int = 500,
        name: str | None = None,
    ) -> None:
        self.args = [str(a) for a in args]
        self.env = env
        self.cwd = str(cwd) if cwd is not None else None
        self.name = name or " ".join(self.args[1:3]) or self.args[0]
        self.returncode: int | None = None
        self.stop_requested = False
        self.cancelled = False
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.errors: list[str] = []
        self._log: collections.deque[str] = collections.deque(maxlen=log_lines)
        self._stderr_log: collections.deque[str] = collections.deque(maxlen=log_lines)
        self._queue: queue.Queue = queue.Queue()
        self._popen: subprocess.Popen | None = None
        self._readers: list[threading.Thread] = []

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> BackgroundProcess:
        """Start the child (non-blocking) in its own process group; returns self. OSError if it cannot run."""
        if self._popen is not None:
            raise RuntimeError(f"{self.name}: already started")
        kwargs: dict[str, Any] = dict(
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.cwd,
            text=True,
            encoding="utf-8",
            errors="replace",
            bufsize=1,
        )
        if _IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True
        self.started_at = time.monotonic()
        self._popen = subprocess.Popen(self.args, **kwargs)
        with _ACTIVE_LOCK:
            _ACTIVE.add(self)
        for name, stream in (("stdout", self._popen.stdout), ("stderr", self._popen.stderr)):
            reader = threading.Thread(
                target=self._read, args=(name, stream), daemon=True, name=f"gloresnet-{name}-{self._popen.pid}"
            )
            reader.start()
            self._readers.append(reader)
        threading.Thread(target=self._watch, daemon=True, name=f"gloresnet-wait-{self._popen.pid}").start()
        return self

    def _read(self, name: str, stream) -> None:
        try:
            for line in iter(stream.readline, ""):
                self._queue.put((name, line.rstrip("\r\n")))
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def _watch(self) -> None:
        returncode = self._popen.wait()
        for reader in self._readers:  # grandchildren may hold the pipes open: do not wait for ever
            reader.join(timeout=5.0)
        self._queue.put(("exit", returncode))

    # -- state ----------------------------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._popen.pid if self._popen is not None else None

    @property
    def started(self) -> bool:
        return self._popen is not None

    @property
    def alive(self) -> bool:
        """True while the child process itself exists."""
        return self._popen is not None and self._popen.poll() is None

    @property
    def running(self) -> bool:
        """True from :meth:`start` until :meth:`poll` / :meth:`follow` have handed out the exit event."""
        return self._popen is not None and self.returncode is None

    @property
    def finished(self) -> bool:
        return self.returncode is not None

    @property
    def elapsed_s(self) -> float:
        if self.started_at is None:
            return 0.0
        return (self.ended_at or time.monotonic()) - self.started_at

    # -- events ---------------------------------------------------------------------------------------------
    def _event(self, kind: str, payload: Any) -> dict[str, Any]:
        if kind == "exit":
            self.returncode = int(payload)
            self.ended_at = time.monotonic()
            with _ACTIVE_LOCK:
                _ACTIVE.discard(self)
            return {
                "event": PROCESS_EXIT,
                "returncode": self.returncode,
                "stopped": self.stop_requested,
                "cancelled": self.cancelled,
                "elapsed_s": round(self.elapsed_s, 3),
            }
        event = parse_line(payload)
        if event is None:
            self._log.append(payload)
            if kind == "stderr":
                self._stderr_log.append(payload)
            return {"event": LOG, "stream": kind, "line": payload}
        if event.get("event") == ERROR:
            self.errors.append(str(event.get("message", "")))
        return event

    def poll(self, max_events: int | None = None) -> list[dict[str, Any]]:
        """Events that arrived since the last call, without blocking (call it from a GUI timer)."""
        events: list[dict[str, Any]] = []
        while max_events is None or len(events) < max_events:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                break
            events.append(self._event(kind, payload))
        return events

    def follow(self, timeout: float | None = None) -> Iterator[dict[str, Any]]:
        """Yield events as they come until the process has exited (blocking; for scripts and tests).

        Raises TimeoutError after ``timeout`` seconds; the process keeps running (cancel it if needed).
        """
        if self._popen is None:
            raise RuntimeError(f"{self.name}: not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(f"{self.name}: still running after {timeout:g} s")
            try:
                kind, payload = self._queue.get(timeout=wait)
            except queue.Empty:
                continue
            yield self._event(kind, payload)

    def wait(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Block until the process ends; returns the events not yet polled (the last one is the exit)."""
        return list(self.follow(timeout))

    # -- control --------------------------------------------------------------------------------------------
    def stop(self) -> bool:
        """Ask the child to stop cleanly (SIGINT = Ctrl-C; Windows: CTRL_BREAK). False if not running.

        The signal goes to the child itself, not its workers: it shuts them down and (training) saves a
        resumable checkpoint. Use :meth:`cancel` if it does not end.
        """
        if not self.alive:
            return False
        self.stop_requested = True
        try:
            if _IS_WINDOWS:
                os.kill(self._popen.pid, signal.CTRL_BREAK_EVENT)
            else:
                os.kill(self._popen.pid, signal.SIGINT)
        except (ProcessLookupError, PermissionError, OSError):
            return False
        return True

    def cancel(self, wait: float | None = None) -> bool:
        """Kill the child and its whole process tree now. With ``wait``, wait that long for it to be gone."""
        if self._popen is None or self._popen.poll() is not None:
            return False
        self.cancelled = True
        kill_tree(self._popen.pid)
        if wait:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._popen.wait(timeout=wait)
        return True

    # -- logs -----------------------------------------------------------------------------------------------
    def last_log(self, n: int = 20, stream: str | None = None) -> list[str]:
        """The last ``n`` human-readable output lines (JSON excluded) of both streams, or of ``"stderr"``.

        Lines of one stream keep their order; the order between stdout and stderr is the order of arrival.
        """
        lines = self._stderr_log if stream == "stderr" else self._log
        return list(lines)[-n:] if n > 0 else []

    def log_text(self, n: int = 20, stream: str | None = None) -> str:
        return "\n".join(self.last_log(n, stream))

    def failure_tail(self, n: int = 15) -> str:
        """The output to show with a failure: the last stderr lines (tracebacks go there), else any output."""
        return self.log_text(n, "stderr") or self.log_text(n)

    def failure(self, n: int = 15) -> str | None:
        """A message for the user if the process failed (None while running or after success)."""
        if self.returncode is None or (self.returncode == 0 and not self.errors):
            return None
        diag = diagnose(self.returncode, self.log_text(200), self.errors, self.stop_requested, self.cancelled)
        if diag.kind in ("ok", "stopped", "cancelled"):
            return None
        tail = self.failure_tail(n)
        return f"{diag.message}\n\nLast output:\n{tail}" if tail else diag.message

    def __repr__(self) -> str:
        state = "not started" if not self.started else "running" if self.running else f"rc={self.returncode}"
        return f"<BackgroundProcess {self.name!r} pid={self.pid} {state}>"


__all__ = [
    "LOG",
    "PROCESS_EXIT",
    "RESULT",
    "BackgroundProcess",
    "active_processes",
    "cancel_all",
    "descendants",
    "kill_tree",
    "parse_line",
    "pid_alive",
]

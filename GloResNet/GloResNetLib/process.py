"""Background ``gloresnet`` processes for the Slicer modules (prediction and training), without Qt or slicer.

Both Slicer modules run the command line in a child process started with Slicer's own Python, so that the GUI
stays responsive and a crash of the network cannot take Slicer down:

- :func:`gloresnet_command` builds ``[python, "-m", "GloResNetLib", ...]`` and :func:`child_env` puts the
  folder holding ``GloResNetLib`` on ``PYTHONPATH``;
- :class:`BackgroundProcess` starts it without blocking (own process group / session), reads stdout and stderr
  on background threads, turns JSON lines into events that :meth:`BackgroundProcess.poll` hands to a GUI
  timer, keeps the last log lines for error messages, stops it gracefully (SIGINT: training saves its
  checkpoint) or kills the whole process tree;
- every started process is registered, and :func:`cancel_all` (run at exit, and by the modules when the scene
  or Slicer closes) leaves no orphan behind.

Also here, because both modules need them before PyTorch is importable: the models folder and bundle listing
(``metadata.json`` only), Python requirement checks, and a device probe run in a child process.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: The folder that holds the ``GloResNetLib`` package (put on the child's ``PYTHONPATH``).
LIB_PARENT = Path(__file__).resolve().parent.parent
#: Synthetic event emitted once when the process has ended: {"event": "process_exit", "returncode": int, ...}.
PROCESS_EXIT = "process_exit"
#: Event wrapping a JSON object printed without an "event" key (``gloresnet predict --json`` results).
RESULT = "result"
#: Event for a line of human-readable output (not JSON).
LOG = "log"

MODELS_FOLDER_ENV = "GLORESNET_MODELS"
#: Application setting (QSettings key) both Slicer modules use for the models folder.
MODELS_FOLDER_SETTING = "GloResNet/ModelsFolder"

_IS_WINDOWS = os.name == "nt"


# ------------------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------------------

def _inside_slicer_app() -> bool:
    """True when running inside the 3D Slicer application (``slicer.app`` exists); never imports slicer."""
    module = sys.modules.get("slicer")
    return module is not None and getattr(module, "app", None) is not None


def python_executable(prefer_slicer: bool | None = None) -> str:
    """The Python that runs the child: Slicer's ``PythonSlicer`` inside Slicer, else ``sys.executable``.

    ``PythonSlicer`` is Slicer's own interpreter with Slicer's environment (the packages installed with
    ``pip_install``); it is found on ``PATH`` (Slicer puts it there) or next to ``sys.executable``.
    """
    if prefer_slicer is None:
        prefer_slicer = _inside_slicer_app()
    if prefer_slicer:
        name = "PythonSlicer.exe" if _IS_WINDOWS else "PythonSlicer"
        found = shutil.which("PythonSlicer")
        if found:
            return found
        beside = Path(sys.executable).with_name(name)
        if beside.is_file():
            return str(beside)
    return sys.executable


def child_env(extra: dict[str, str] | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a child: ``base`` (default ``os.environ``) with ``GloResNetLib`` first on
    ``PYTHONPATH``, unbuffered UTF-8 output, and ``extra`` on top."""
    env = dict(os.environ if base is None else base)
    paths = [str(LIB_PARENT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                 if p and Path(p) != LIB_PARENT]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    env.update(extra or {})
    return env


def gloresnet_command(args: Sequence[str | os.PathLike], python: str | None = None) -> list[str]:
    """``[python, "-m", "GloResNetLib", *args]`` (the ``gloresnet`` command with Slicer's Python)."""
    return [python or python_executable(), "-m", "GloResNetLib", *(str(a) for a in args)]


def predict_args(inputs: Sequence[str | os.PathLike], model: str | os.PathLike, out: str | os.PathLike,
                 device: str = "auto", tta: bool = True, cam: bool = True,
                 tta_axes: Sequence[int] | None = None, saliency: str = "gradcam",
                 occlusion_mask: int | None = None) -> list[str]:
    """Arguments of ``gloresnet predict`` with JSON results on stdout and progress events on stderr
    (``saliency``: gradcam, occlusion or both; ``occlusion_mask``: occlusion box edge, network voxels)."""
    args = ["predict", *(str(p) for p in inputs), "--model", str(model), "--out", str(out),
            "--device", device or "auto", "--json", "--progress-json"]
    if not tta:
        args.append("--no-tta")
    elif tta_axes:
        args += ["--tta-axes", ",".join(str(int(a)) for a in tta_axes)]
    if not cam:
        args.append("--no-cam")
    elif saliency != "gradcam":
        args += ["--saliency", saliency]
        if occlusion_mask is not None:
            args += ["--occlusion-mask", str(int(occlusion_mask))]
    return args


# ------------------------------------------------------------------------------------------------------------
# Process tree helpers
# ------------------------------------------------------------------------------------------------------------

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
            fields = stat[stat.rfind(")") + 2:].split()
            if len(fields) > 1:
                children[int(fields[1])].append(int(entry.name))
        return children
    try:
        out = subprocess.run(["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True,
                             timeout=10).stdout
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


# ------------------------------------------------------------------------------------------------------------
# Background process
# ------------------------------------------------------------------------------------------------------------

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

    def __init__(self, args: Sequence[str | os.PathLike], env: dict[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, log_lines: int = 500, name: str | None = None) -> None:
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
        kwargs: dict[str, Any] = dict(stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, env=self.env, cwd=self.cwd, text=True,
                                      encoding="utf-8", errors="replace", bufsize=1)
        if _IS_WINDOWS:
            kwargs["creationflags"] = subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW
        else:
            kwargs["start_new_session"] = True
        self.started_at = time.monotonic()
        self._popen = subprocess.Popen(self.args, **kwargs)
        with _ACTIVE_LOCK:
            _ACTIVE.add(self)
        for name, stream in (("stdout", self._popen.stdout), ("stderr", self._popen.stderr)):
            reader = threading.Thread(target=self._read, args=(name, stream), daemon=True,
                                      name=f"gloresnet-{name}-{self._popen.pid}")
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
            return {"event": PROCESS_EXIT, "returncode": self.returncode, "stopped": self.stop_requested,
                    "cancelled": self.cancelled, "elapsed_s": round(self.elapsed_s, 3)}
        event = parse_line(payload)
        if event is None:
            self._log.append(payload)
            if kind == "stderr":
                self._stderr_log.append(payload)
            return {"event": LOG, "stream": kind, "line": payload}
        if event.get("event") == "error":
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
        state = ("not started" if not self.started
                 else "running" if self.running else f"rc={self.returncode}")
        return f"<BackgroundProcess {self.name!r} pid={self.pid} {state}>"


def start_gloresnet(args: Sequence[str | os.PathLike], python: str | None = None,
                    env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
                    name: str | None = None, log_lines: int = 500) -> BackgroundProcess:
    """Start ``python -m GloResNetLib ARGS`` in the background with :func:`child_env`."""
    cmd = gloresnet_command(args, python)
    return BackgroundProcess(cmd, env=child_env(env), cwd=cwd, log_lines=log_lines,
                             name=name or f"gloresnet {args[0] if args else ''}".strip()).start()


# ------------------------------------------------------------------------------------------------------------
# Diagnosis of failures
# ------------------------------------------------------------------------------------------------------------

@dataclass
class Diagnosis:
    """What went wrong with a child process, in words for the GUI. ``kind`` is one of: ok, stopped,
    cancelled, user_error, cuda_oom, cuda_missing, missing_dependency, killed, crashed."""

    kind: str
    message: str

    @property
    def offer_cpu(self) -> bool:
        """True when running on the CPU instead is the obvious fix."""
        return self.kind in ("cuda_oom", "cuda_missing")


def diagnose(returncode: int | None, log_text: str = "", errors: Iterable[str] = (), stopped: bool = False,
             cancelled: bool = False) -> Diagnosis:
    """Classify a finished child from its exit code and last output lines."""
    errors = [e for e in errors if e]
    low = log_text.lower()
    if cancelled:
        return Diagnosis("cancelled", "Cancelled.")
    if returncode == 0 and not errors:
        return Diagnosis("ok", "Finished.")
    if stopped and returncode in (0, 130, -signal.SIGINT, 3221225786):
        return Diagnosis("stopped", "Stopped.")
    if "out of memory" in low or "outofmemoryerror" in low:
        return Diagnosis("cuda_oom", "The GPU ran out of memory. Close other GPU programs or run on the CPU.")
    if "cuda" in low and ("not available" in low or "no cuda gpus" in low or "found no nvidia driver" in low):
        return Diagnosis("cuda_missing", "CUDA was requested but is not available; choose 'auto' or 'cpu'.")
    if "modulenotfounderror" in low or "no module named" in low:
        missing = ""
        for line in log_text.splitlines():
            if "No module named" in line:
                missing = line.split("No module named", 1)[1].strip(" '\"")
        which = f" ({missing})" if missing else ""
        return Diagnosis("missing_dependency",
                         f"A Python package is missing in Slicer's Python{which}; "
                         "install the module's requirements (Predict offers to do it).")
    if returncode == 2 or errors:
        first = errors[0] if errors else _last_error_line(log_text)
        return Diagnosis("user_error", first or "The command refused its input.")
    if returncode is not None and (returncode < 0 or returncode in (137, 139)):
        return Diagnosis("killed", f"The process was killed (exit code {returncode}); out of system memory?")
    return Diagnosis("crashed", f"The process ended with exit code {returncode}.")


def _last_error_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        if "error" in line.lower():
            return line.strip()
    return ""


# ------------------------------------------------------------------------------------------------------------
# Models folder and bundles (metadata only: no torch needed)
# ------------------------------------------------------------------------------------------------------------

def default_models_folder(settings_dir: str | os.PathLike | None = None) -> Path:
    """``$GLORESNET_MODELS``, else ``<settings_dir>/GloResNet/models`` (Slicer's settings folder), else
    ``~/.gloresnet/models``."""
    env = os.environ.get(MODELS_FOLDER_ENV)
    if env:
        return Path(env).expanduser()
    if settings_dir:
        return Path(settings_dir) / "GloResNet" / "models"
    return Path.home() / ".gloresnet" / "models"


@dataclass
class BundleInfo:
    """What the model list shows about a bundle folder (read from ``metadata.json``; weights not checked)."""

    path: Path
    name: str = ""
    arch: str = ""
    n_models: int = 0
    training_data: dict[str, Any] = field(default_factory=dict)
    provenance: str = ""
    threshold: float = 0.5
    cv_metrics: dict[str, Any] | None = None
    task: str = "classification"  # or "age_regression" (brain age in weeks, from pretrain-age)
    error: str | None = None

    @property
    def synthetic(self) -> bool:
        return bool(self.training_data.get("synthetic", False))

    @property
    def trained(self) -> bool:
        return bool(self.training_data.get("trained", True))

    @property
    def flag(self) -> str:
        if not self.trained:
            return "UNTRAINED classifier - predictions are meaningless"
        if self.synthetic:
            return "SYNTHETIC training data - demonstration only"
        return ""

    @property
    def label(self) -> str:
        """One line for a combo box."""
        if self.error:
            return f"{self.path.name} (unusable: {self.error})"
        flag = f" [{self.flag}]" if self.flag else ""
        kind = "brain age, " if self.task == "age_regression" else ""
        return f"{self.name} ({kind}{self.arch}, {self.n_models} model{'s' if self.n_models != 1 else ''}){flag}"

    @property
    def description(self) -> str:
        """Several lines: training data, provenance, CV metrics, where it lives."""
        if self.error:
            return f"{self.path}: {self.error}"
        lines = [f"Trained on: {self.training_data.get('description', 'unknown')}"]
        if self.task == "age_regression":
            lines.insert(0, "Brain-age model: estimates post-menstrual age at scan (weeks); no injury probability.")
        if self.flag:
            lines.append(f"WARNING: {self.flag}.")
        if self.provenance:
            lines.append(f"Provenance: {self.provenance}")
        if self.cv_metrics:
            parts = []
            for key, value in self.cv_metrics.items():
                if isinstance(value, dict) and "mean" in value:
                    sd = f" ± {value['sd']:.3f}" if "sd" in value else ""
                    parts.append(f"{key} {value['mean']:.3f}{sd}")
                elif isinstance(value, (int, float)):
                    parts.append(f"{key} {value:.3f}")
            if parts:
                lines.append("Cross-validation: " + ", ".join(parts))
        lines.append(f"Folder: {self.path}")
        return "\n".join(lines)


def bundle_info(path: str | os.PathLike) -> BundleInfo:
    """Read a bundle's ``metadata.json``, validated by the same schema as loading (:mod:`.bundle_schema`);
    errors are reported in ``.error``, never raised."""
    from .bundle_schema import read_metadata_file
    from .errors import BundleError

    path = Path(path)
    info = BundleInfo(path=path, name=path.name)
    try:
        meta = read_metadata_file(path)
    except BundleError as exc:
        info.error = str(exc).removeprefix(f"{path / 'metadata.json'}: ").removeprefix(f"{path}: ")
        return info
    info.name = meta["name"]
    info.arch = meta["arch"]
    info.n_models = len(meta["weights"])
    info.training_data = dict(meta["training_data"])
    info.provenance = meta["provenance"]
    info.threshold = float(meta.get("threshold", 0.5))
    info.cv_metrics = meta.get("cv_metrics") or None
    info.task = str(meta.get("task", "classification"))
    return info


def find_bundles(*folders: str | os.PathLike) -> list[BundleInfo]:
    """Bundles in the given folders (each folder itself if it is a bundle, else its sub-folders), by name."""
    found: dict[Path, BundleInfo] = {}
    for folder in folders:
        folder = Path(folder)
        if (folder / "metadata.json").is_file():
            found[folder.resolve()] = bundle_info(folder)
            continue
        if not folder.is_dir():
            continue
        for sub in sorted(folder.iterdir()):
            if sub.is_dir() and not sub.name.startswith(".") and (sub / "metadata.json").is_file():
                found[sub.resolve()] = bundle_info(sub)
    return sorted(found.values(), key=lambda b: (b.error is not None, b.name.lower()))


def verify_bundle(path: str | os.PathLike, python: str | None = None, timeout: float = 300) -> dict[str, Any]:
    """Load a bundle in a child process (``gloresnet bundle info --json``: checksums and shapes verified);
    returns its metadata or raises ValueError with the child's one-line message."""
    cmd = gloresnet_command(["bundle", "info", "--json", str(path)], python)
    try:
        done = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ValueError(f"{path}: verification took longer than {timeout:g} s") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        raise ValueError(lines[-1] if lines else f"{path}: verification failed (exit {done.returncode})")
    return json.loads(done.stdout)


def register_bundle(src: str | os.PathLike, models_folder: str | os.PathLike, verify: bool = True,
                    python: str | None = None, replace: bool = False) -> Path:
    """Copy a bundle folder into the models folder (verified first); returns the new path."""
    src = Path(src)
    if verify:
        verify_bundle(src, python=python)
    elif not (src / "metadata.json").is_file():
        raise ValueError(f"{src}: not a model bundle (no metadata.json)")
    models_folder = Path(models_folder)
    models_folder.mkdir(parents=True, exist_ok=True)
    dst = models_folder / src.name
    if dst.resolve() == src.resolve():
        return dst
    if dst.exists() and not replace:
        raise ValueError(f"{dst}: a model with this name is already installed")
    staging = models_folder / f".{src.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(staging, dst)
    return dst


# ------------------------------------------------------------------------------------------------------------
# Python dependencies and devices
# ------------------------------------------------------------------------------------------------------------

def has_module(name: str) -> bool:
    """True if ``import name`` would find the module (nothing is imported)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def read_requirements(path: str | os.PathLike) -> list[str]:
    """Requirement lines of a requirements file (comments, blank lines and pip options dropped)."""
    reqs = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            reqs.append(line)
    return reqs


def missing_requirements(requirements: Iterable[str]) -> list[str]:
    """The requirements not satisfied by the installed distributions (version specifiers honoured when the
    ``packaging`` library is available, names only otherwise)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with pip/Slicer
        Requirement = None
    missing = []
    for text in requirements:
        if Requirement is not None:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate():
                continue
            name, spec = req.name, req.specifier
        else:
            name, spec = text.split(";")[0].split("[")[0].strip(" <>=!~"), None
            for sep in "<>=!~":
                name = name.split(sep)[0]
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if spec is not None and not spec.contains(version, prereleases=True):
            missing.append(text)
    return missing


def pin_installed(packages: Iterable[str], path: str | os.PathLike) -> Path | None:
    """Write a pip constraints file pinning the installed version of ``packages`` (e.g. the CUDA build of
    torch chosen by PyTorchUtils, so that no requirement can replace it by a CPU build). None if none is
    installed."""
    lines = []
    for name in packages:
        try:
            lines.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    if not lines:
        return None
    path = Path(path)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


#: Run with ``python -c``: prints one JSON object describing PyTorch and the CUDA devices it sees.
DEVICE_PROBE = """\
import json
try:
    import torch
except Exception as exc:
    print(json.dumps({"torch": None, "cuda": False, "devices": [], "error": f"{type(exc).__name__}: {exc}"}))
    raise SystemExit(0)
info = {"torch": torch.__version__, "cuda": bool(torch.cuda.is_available()),
        "cuda_version": torch.version.cuda, "devices": []}
if info["cuda"]:
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        info["devices"].append({"index": i, "name": p.name, "memory_gb": round(p.total_memory / 2**30, 1)})
print(json.dumps(info))
"""


def device_probe_command(python: str | None = None) -> list[str]:
    """Command printing what PyTorch sees (run it with :class:`BackgroundProcess`; parse its result event)."""
    return [python or python_executable(), "-c", DEVICE_PROBE]


def describe_devices(info: dict[str, Any] | None) -> str:
    """Human text for a device probe result."""
    if not info:
        return "detecting..."
    if not info.get("torch"):
        return "PyTorch is not installed yet (installed on first Predict)"
    if info.get("cuda") and info.get("devices"):
        gpus = ", ".join(f"{d['name']} ({d['memory_gb']:g} GB)" for d in info["devices"])
        return f"CUDA {info.get('cuda_version') or ''}: {gpus}; PyTorch {info['torch']}".replace("  ", " ")
    return f"CPU only (PyTorch {info['torch']}, no CUDA device)"


__all__ = ["LIB_PARENT", "LOG", "MODELS_FOLDER_ENV", "MODELS_FOLDER_SETTING", "PROCESS_EXIT", "RESULT",
           "BackgroundProcess", "BundleInfo", "Diagnosis", "active_processes", "bundle_info", "cancel_all",
           "child_env", "default_models_folder", "descendants", "describe_devices", "device_probe_command",
           "diagnose", "find_bundles", "gloresnet_command", "has_module", "kill_tree", "missing_requirements",
           "parse_line", "pid_alive", "pin_installed", "predict_args", "python_executable",
           "read_requirements", "register_bundle", "start_gloresnet", "verify_bundle"]

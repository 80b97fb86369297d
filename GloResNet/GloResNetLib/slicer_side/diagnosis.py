"""Why a child process failed, in words for the GUI (exit code and last output lines)."""

from __future__ import annotations

import signal
from collections.abc import Iterable
from dataclasses import dataclass


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


def diagnose(
    returncode: int | None,
    log_text: str = "",
    errors: Iterable[str] = (),
    stopped: bool = False,
    cancelled: bool = False,
) -> Diagnosis:
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
        return Diagnosis(
            "missing_dependency",
            f"A Python package is missing in Slicer's Python{which}; "
            "install the module's requirements (Predict offers to do it).",
        )
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


__all__ = ["Diagnosis", "diagnose"]

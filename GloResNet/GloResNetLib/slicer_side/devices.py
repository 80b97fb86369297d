"""What PyTorch sees in Slicer's Python, asked in a child process (never imports torch here): the probe
script, its text for the GUI, and :class:`DeviceProbe` that a module widget polls from its timer."""

from __future__ import annotations

from typing import Any

from .background import PROCESS_EXIT, RESULT, BackgroundProcess
from .command import child_env, python_executable

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


class DeviceProbe:
    """What PyTorch sees in Slicer's Python, asked in a background process (never imports torch here).

    Poll it from a timer: :meth:`poll` returns the text to show when it changes.
    """

    def __init__(self, command: list[str] | None = None) -> None:
        self.process = BackgroundProcess(
            command or device_probe_command(), env=child_env(), name="device probe"
        ).start()
        self.info: dict[str, Any] | None = None
        self.finished = False

    @property
    def failed(self) -> bool:
        """The probe ended without a result."""
        return self.finished and self.info is None

    def poll(self) -> str | None:
        """Events since the last call; returns the new device text, or None if nothing changed.

        Returns:
            "PyTorch ... CUDA ..." / "CPU only ..." once the result arrives, "could not detect devices" if the
            process ended without one.
        """
        text = None
        for event in self.process.poll():
            if event.get("event") == RESULT:
                self.info = event["record"]
                text = describe_devices(self.info)
            elif event.get("event") == PROCESS_EXIT:
                self.finished = True
                if self.info is None:
                    text = "could not detect devices"
        return text

    def log_text(self, lines: int = 10) -> str:
        """The probe's last ``lines`` output lines (why it failed)."""
        return self.process.log_text(lines)


__all__ = ["DEVICE_PROBE", "DeviceProbe", "describe_devices", "device_probe_command"]

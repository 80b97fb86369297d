"""What both module files need besides their own GUI: version check, models folder, the predict module's
logic, the device probe and the widget helpers (status line, log, developer reload)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .. import process

#: Oldest Slicer the extension runs in: 5.10 is the first with Python >= 3.10 (``requires-python`` of the
#: package; Slicer 5.8 ships Python 3.9). Also in CMakeLists.txt (``find_package(Slicer 5.10 REQUIRED)``).
MINIMUM_SLICER_VERSION = (5, 10)
#: The predict module (its name in Slicer) whose logic the training module uses.
PREDICT_MODULE = "GloResNet"
LIBRARY_PACKAGE = "GloResNetLib"


def version_problem(major: int, minor: int, minimum: tuple[int, int] = MINIMUM_SLICER_VERSION) -> str | None:
    """The refusal message for Slicer ``major.minor`` older than ``minimum``; None if it is recent enough."""
    if (int(major), int(minor)) >= tuple(minimum):
        return None
    return (f"GloResNet needs 3D Slicer {minimum[0]}.{minimum[1]} or later (Python 3.10 or later); this is "
            f"Slicer {major}.{minor}. Install a current Slicer from https://download.slicer.org.")


def slicer_version_problem() -> str | None:
    """:func:`version_problem` for the running Slicer application."""
    import slicer

    return version_problem(slicer.app.majorVersion, slicer.app.minorVersion)


def models_folder() -> Path:
    """Where bundles are listed and registered (setting 'GloResNet/ModelsFolder', default beside Slicer's user
    settings), for both modules."""
    import slicer

    default = process.default_models_folder(Path(slicer.app.slicerUserSettingsFilePath).parent)
    return Path(slicer.util.settingsValue(process.MODELS_FOLDER_SETTING, str(default)))


def predict_logic() -> Any:
    """The GloResNet module's logic, Slicer's way (``slicer.util.getModuleLogic``), not ``import GloResNet``."""
    import slicer

    return slicer.util.getModuleLogic(PREDICT_MODULE)


def forget_library(modules: dict[str, Any] | None = None) -> list[str]:
    """Drop GloResNetLib and its submodules from ``sys.modules`` so that a developer reload imports them
    afresh (no ``imp``). Returns the names dropped."""
    modules = sys.modules if modules is None else modules
    names = [n for n in modules if n == LIBRARY_PACKAGE or n.startswith(LIBRARY_PACKAGE + ".")]
    for name in names:
        del modules[name]
    return names


class DeviceProbe:
    """What PyTorch sees in Slicer's Python, asked in a background process (never imports torch here).

    Poll it from a timer: :meth:`poll` returns the text to show when it changes.
    """

    def __init__(self, command: list[str] | None = None) -> None:
        self.process = process.BackgroundProcess(command or process.device_probe_command(),
                                                 env=process.child_env(), name="device probe").start()
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
            if event.get("event") == process.RESULT:
                self.info = event["record"]
                text = process.describe_devices(self.info)
            elif event.get("event") == process.PROCESS_EXIT:
                self.finished = True
                if self.info is None:
                    text = "could not detect devices"
        return text

    def log_text(self, lines: int = 10) -> str:
        return self.process.log_text(lines)


class ModuleWidgetHelpers:
    """Mixed into both module widgets (before ScriptedLoadableModuleWidget): status line, log, device probe
    and developer reload. Needs ``self.ui`` with ``statusLabel``, ``logTextEdit`` and ``deviceInfoLabel``
    and a ``self._timer`` (QTimer) that calls :meth:`pollDeviceProbe`."""

    _probe: DeviceProbe | None = None

    def setStatus(self, text: str) -> None:
        self.ui.statusLabel.text = text

    def appendLog(self, text: str) -> None:
        if text:
            self.ui.logTextEdit.appendPlainText(text)

    def startDeviceProbe(self) -> None:
        try:
            self._probe = DeviceProbe()
        except OSError as exc:
            self.ui.deviceInfoLabel.text = f"cannot run Slicer's Python: {exc}"
            return
        self.ui.deviceInfoLabel.text = process.describe_devices(None)
        self._timer.start()

    def pollDeviceProbe(self) -> None:
        probe = self._probe
        if probe is None:
            return
        text = probe.poll()
        if text:
            self.ui.deviceInfoLabel.text = text
        if probe.finished:
            if probe.failed:
                self.appendLog(probe.log_text(10))
            self._probe = None

    def refuseOldSlicer(self) -> bool:
        """On a Slicer older than :data:`MINIMUM_SLICER_VERSION`: show why in place of the GUI; True then."""
        problem = slicer_version_problem()
        if problem is None:
            return False
        import qt

        label = qt.QLabel(problem)
        label.wordWrap = True
        self.layout.addWidget(label)
        return True

    def onReload(self) -> None:
        """Developer reload: GloResNetLib too, then Slicer's own reload of the module."""
        forget_library()
        super().onReload()


__all__ = ["LIBRARY_PACKAGE", "MINIMUM_SLICER_VERSION", "PREDICT_MODULE", "DeviceProbe", "ModuleWidgetHelpers",
           "forget_library", "models_folder", "predict_logic", "slicer_version_problem", "version_problem"]

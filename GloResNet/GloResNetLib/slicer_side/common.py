"""What both module files need besides their own GUI: version check, models folder, the predict module's
logic, the device probe and the widget helpers (status line, log, developer reload)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from .background import LOG
from .bundles import MODELS_FOLDER_SETTING, default_models_folder
from .devices import DeviceProbe, describe_devices

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
    return (
        f"GloResNet needs 3D Slicer {minimum[0]}.{minimum[1]} or later (Python 3.10 or later); this is "
        f"Slicer {major}.{minor}. Install a current Slicer from https://download.slicer.org."
    )


def slicer_version_problem() -> str | None:
    """:func:`version_problem` for the running Slicer application."""
    import slicer

    return version_problem(slicer.app.majorVersion, slicer.app.minorVersion)


def models_folder() -> Path:
    """Where bundles are listed and registered (setting 'GloResNet/ModelsFolder', default beside Slicer's user
    settings), for both modules."""
    import slicer

    default = default_models_folder(Path(slicer.app.slicerUserSettingsFilePath).parent)
    return Path(slicer.util.settingsValue(MODELS_FOLDER_SETTING, str(default)))


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


class ModuleWidgetHelpers:
    """Mixed into both module widgets (before ScriptedLoadableModuleWidget): parameter node connection, status
    line, log, device probe and developer reload. Needs ``self.ui`` with ``statusLabel``, ``logTextEdit`` and
    ``deviceInfoLabel``, a ``self._timer`` (QTimer) that calls :meth:`pollDeviceProbe`, a ``self.logic`` with
    ``shutdown()`` (None on a Slicer too old for the GUI), and the widget's own ``initializeParameterNode()`` and
    ``onParameterNodeModified(caller=None, event=None)``."""

    _probe: DeviceProbe | None = None
    _timer: Any = None
    logic: Any = None
    _parameterNode: Any = None
    _parameterNodeGuiTag: Any = None

    def setParameterNode(self, inputParameterNode) -> None:
        """Connect the GUI to ``inputParameterNode`` (None: disconnect) and follow its changes."""
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.onParameterNodeModified()

    def exit(self) -> None:
        """The module is left: the GUI stops following the parameter node."""
        import vtk

        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def cleanup(self) -> None:
        """The application closes and the widget is destroyed: stop following, end the logic's jobs."""
        self.removeObservers()
        if self._timer is not None:
            self._timer.stop()
        if self.logic is not None:
            self.logic.shutdown()

    def enter(self) -> None:
        """The module is shown: the GUI follows the parameter node (nothing on a Slicer too old for the GUI)."""
        if self.logic is not None:
            self.initializeParameterNode()

    def onSceneEndClose(self, caller, event) -> None:
        """A new scene: a fresh parameter node if the module is shown."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def setupTimer(self, interval_ms: int) -> None:
        """``self._timer``: a QTimer that calls the widget's ``onTimer`` every ``interval_ms`` once started."""
        import qt

        self._timer = qt.QTimer()
        self._timer.setInterval(interval_ms)
        self._timer.connect("timeout()", self.onTimer)

    def setStatus(self, text: str) -> None:
        """Show ``text`` in the status line."""
        self.ui.statusLabel.text = text

    def appendLog(self, text: str) -> None:
        """Append ``text`` (if any) to the log panel."""
        if text:
            self.ui.logTextEdit.appendPlainText(text)

    def appendLogEvents(self, events) -> None:
        """Append the output lines among a job's events (JSON events are not shown)."""
        for event in events:
            if event.get("event") == LOG:
                self.appendLog(event["line"])

    def startDeviceProbe(self) -> None:
        """Ask a child process what PyTorch sees; the timer polls it (:meth:`pollDeviceProbe`)."""
        try:
            self._probe = DeviceProbe()
        except OSError as exc:
            self.ui.deviceInfoLabel.text = f"cannot run Slicer's Python: {exc}"
            return
        self.ui.deviceInfoLabel.text = describe_devices(None)
        self._timer.start()

    def pollDeviceProbe(self) -> None:
        """Show the device probe's answer once it arrives (its log if it failed); called by the widget's timer."""
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


__all__ = [
    "LIBRARY_PACKAGE",
    "MINIMUM_SLICER_VERSION",
    "PREDICT_MODULE",
    "DeviceProbe",
    "ModuleWidgetHelpers",
    "forget_library",
    "models_folder",
    "predict_logic",
    "slicer_version_problem",
    "version_problem",
]

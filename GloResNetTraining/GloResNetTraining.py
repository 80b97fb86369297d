"""GloResNetTraining: cross-validated training of GloResNet models from 3D Slicer, followed live.

Research use only; not a medical device; not for clinical decisions. Extension Wizard layout: module,
parameter node, widget (GUI from ``Resources/UI/GloResNetTraining.ui``), logic and self-test. The logic is
thin: parameters, dataset export, the background ``gloresnet train --progress-json`` process (with the
GloResNet module's process helper), live nodes and bundle registration are in
``GloResNetLib.training_session``; what both modules share (version check, device probe, status and log,
developer reload, dependency installer, results layout, path fields) is in ``GloResNetLib.slicer_side``; both
are tested with slicer-core. Nothing is installed at import time. GloResNetLib is importable because Slicer puts
every scripted module's folder on ``sys.path`` (qSlicerScriptedLoadableModuleFactory), the GloResNet module's
folder included. Needs Slicer 5.10 or later; this file still imports on Slicer 5.8 (Python 3.9) to say so.
"""

import logging
import tempfile
import time
from pathlib import Path
from typing import Annotated

import ctk
import qt
import slicer
import vtk
from GloResNetLib import process
from GloResNetLib import training_session as ts
from GloResNetLib.errors import GloResNetError, InputError
from GloResNetLib.slicer_side import common, dependencies, paths, views
from slicer import vtkMRMLPlotChartNode, vtkMRMLTableNode
from slicer.i18n import tr as _
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "GloResNetTraining-requirements.txt"  # unique name: shared folder
RESEARCH_NOTICE = "Research use only. Not a medical device; not for clinical decisions."
DEFAULTS = ts.TrainingParameters()
SOURCE_NAMES = {v: k for k, v in ts.SOURCE_LABELS.items()}


#
# GloResNetTraining
#

class GloResNetTraining(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GloResNet Training")
        self.parent.categories = [_("Neuroimaging")]
        self.parent.dependencies = ["GloResNet"]  # its logic ("Open in GloResNet") and its folder (GloResNetLib)
        self.parent.contributors = ["GloResNet contributors"]
        self.parent.helpText = _(
            "Trains GloResNet brain-injury classifiers with subject-grouped k-fold cross-validation (the "
            "paper's protocol: mixup, class weighting, AdamW) from a CSV manifest, a dHCP folder or the "
            "volumes of the scene, in a background process with Slicer's Python (the same "
            "<i>gloresnet train</i> as the command line). Follow it live (progress, loss and metric curves, "
            "per-fold metrics), stop it (checkpoint kept) and resume it; the ensemble of the fold models is "
            "registered for the GloResNet module.<br><br><b>Research use only, not a medical device; not for "
            "clinical decisions.</b>")
        self.parent.acknowledgementText = _(
            "GloResNet method: arXiv 2606.02498. ResNet-10 layout and pretrained weights: MedicalNet "
            "(Tencent, MIT licence). Module layout follows 3D Slicer's Extension Wizard.")


#
# GloResNetTrainingParameterNode
#

@parameterNodeWrapper
class GloResNetTrainingParameterNode:
    """GUI state, saved with the scene: dataset, output, settings (defaults: the paper's), the last run
    (runDir), its registered model (bundlePath), a case to inspect and the live-view nodes."""

    source: Annotated[str, Choice(list(ts.SOURCE_LABELS))] = SOURCE_NAMES["manifest"]
    manifestPath: str = ""
    dhcpFolder: str = ""
    labelsTable: vtkMRMLTableNode
    syntheticData: bool = False
    outputFolder: str = ""
    runName: str = ""
    arch: Annotated[str, Choice(list(ts.ARCHITECTURES))] = DEFAULTS.arch
    width: Annotated[str, Choice(list(ts.WIDTH_PRESETS))] = "full"
    folds: Annotated[int, WithinRange(2, 20)] = DEFAULTS.folds
    epochs: Annotated[int, WithinRange(1, 10000)] = DEFAULTS.epochs
    batchSize: Annotated[int, WithinRange(2, 1024)] = DEFAULTS.batch_size
    learningRate: Annotated[float, WithinRange(1e-6, 1.0)] = DEFAULTS.lr
    mixupAlpha: Annotated[float, WithinRange(0.0, 10.0)] = DEFAULTS.mixup_alpha
    classWeights: bool = DEFAULTS.class_weights
    inputSize: Annotated[int, WithinRange(16, 256)] = DEFAULTS.size
    pretrainedPath: str = ""
    device: Annotated[str, Choice(list(ts.DEVICES))] = DEFAULTS.device
    seed: Annotated[int, WithinRange(0, 2**31 - 1)] = DEFAULTS.seed
    runDir: str = ""
    bundlePath: str = ""
    heldOutCase: str = ""
    metricsTable: vtkMRMLTableNode
    lossChart: vtkMRMLPlotChartNode
    metricChart: vtkMRMLPlotChartNode


#
# GloResNetTrainingWidget
#

class GloResNetTrainingWidget(common.ModuleWidgetHelpers, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI wiring only: every computation is in GloResNetTrainingLogic / GloResNetLib.training_session (status,
    log, device probe and reload: common.ModuleWidgetHelpers)."""

    PATH_FIELDS = tuple((f.widget, f.field) for f in paths.TRAINING_PATH_FIELDS)

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._timer = None
        self._probe = None
        self._startAfterCheck = None
        self._shownRun = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if self.refuseOldSlicer():
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GloResNetTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GloResNetTrainingLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(250)
        self._timer.connect("timeout()", self.onTimer)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        slicer.app.connect("aboutToQuit()", self.onAboutToQuit)

        self.ui.researchNoticeLabel.text = RESEARCH_NOTICE
        self.ui.manifestPathLineEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable
        self.ui.manifestPathLineEdit.nameFilters = ["CSV manifest (*.csv)", "All files (*)"]
        self.ui.pretrainedPathLineEdit.filters = ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable
        self.ui.pretrainedPathLineEdit.nameFilters = ["Weights (*.pth *.pt *.safetensors)", "All files (*)"]
        self.ui.dhcpPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs
        self.ui.outputFolderPathLineEdit.filters = ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Writable
        for widgetName, field in self.PATH_FIELDS:
            # currentPathChanged skips what the validator refuses (an empty field, other extensions): follow
            # the text of the line edit inside instead; the logic validates the paths.
            pathLineEdit = getattr(self.ui, widgetName)
            combo = pathLineEdit.comboBox()
            lineEdit = combo.lineEdit() if combo else slicer.util.findChildren(pathLineEdit, className="QLineEdit")[0]
            lineEdit.connect("textChanged(QString)", lambda text, field=field: self.onPathChanged(field, text))

        self.ui.addSceneVolumesButton.connect("clicked(bool)", self.onAddSceneVolumes)
        self.ui.checkDatasetButton.connect("clicked()", lambda: self.onCheckDataset(startAfter=False))
        self.ui.paperDefaultsButton.connect("clicked()", lambda: self.applyPreset("paper"))
        self.ui.cpuDemoButton.connect("clicked()", lambda: self.applyPreset("cpu"))
        self.ui.startButton.connect("clicked(bool)", self.onStart)
        self.ui.stopButton.connect("clicked(bool)", self.onStop)
        self.ui.resumeButton.connect("clicked(bool)", lambda: self.onResume())  # not clicked's bool as device
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.showResultsButton.connect("clicked(bool)", self.onShowResults)
        self.ui.openInGloResNetButton.connect("clicked(bool)", self.onOpenInGloResNet)
        self.ui.openRunFolderButton.connect("clicked(bool)", self.onOpenRunFolder)

        self.initializeParameterNode()
        self.startDeviceProbe()
        self.updateGUI()

    def cleanup(self) -> None:
        self.removeObservers()
        if self._timer is not None:
            self._timer.stop()
        if self.logic is not None:
            self.logic.shutdown()

    def enter(self) -> None:
        if self.logic is None:  # Slicer too old: no GUI
            return
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.onSceneClose()  # stops cleanly (checkpoint kept); the nodes are about to go
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onAboutToQuit(self) -> None:
        self.logic.shutdown()
        process.cancel_all()

    # -- parameter node -----------------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateGUI)
            self.updateGUI()

    def onPathChanged(self, field: str, text: str) -> None:
        if self._parameterNode:
            paths.sync_field(self._parameterNode, field, text)

    def updateGUI(self, caller=None, event=None) -> None:
        p = self._parameterNode
        busy = self.logic is not None and self.logic.busy
        if p:
            for widgetName, field in self.PATH_FIELDS:
                widget = getattr(self.ui, widgetName)
                if widget.currentPath != getattr(p, field):
                    wasBlocked = widget.blockSignals(True)
                    widget.currentPath = getattr(p, field)
                    widget.blockSignals(wasBlocked)
            source = ts.SOURCE_LABELS.get(p.source, "manifest")
            for name, visible in (("manifestLabel", source == "manifest"),
                                  ("manifestPathLineEdit", source == "manifest"),
                                  ("dhcpLabel", source == "dhcp"), ("dhcpPathLineEdit", source == "dhcp"),
                                  ("sceneDatasetWidget", source == "scene")):
                getattr(self.ui, name).visible = visible
            if source == "scene" and not p.labelsTable:
                p.labelsTable = ts.labels_table()  # created when first needed (not in every scene)
            if self.ui.labelsTableView.mrmlTableNode() is not p.labelsTable:
                self.ui.labelsTableView.setMRMLTableNode(p.labelsTable)
        self.ui.startButton.enabled = bool(p) and not busy
        self.ui.checkDatasetButton.enabled = bool(p) and not busy
        self.ui.stopButton.enabled = self.logic is not None and self.logic.running
        self.ui.cancelButton.enabled = busy
        self.ui.resumeButton.enabled = bool(p) and not busy and bool(self.logic.resumableRun(p))
        self.ui.showResultsButton.enabled = bool(p and (p.metricsTable or p.lossChart))
        self.ui.openInGloResNetButton.enabled = bool(p and p.bundlePath) and not busy
        self.ui.openRunFolderButton.enabled = bool(p and p.runDir and Path(p.runDir).is_dir())
        if p:
            self.ui.bundleValueLabel.text = p.bundlePath or _("(not yet)")
            self.ui.heldOutValueLabel.text = Path(p.heldOutCase).name if p.heldOutCase else _("(none)")

    def applyPreset(self, name: str) -> None:
        """Paper defaults or CPU demo settings (the dataset, output and seed are kept)."""
        p = self._parameterNode
        params = self.logic.parametersFrom(p)
        params = params.apply_cpu_demo() if name == "cpu" else params.apply_paper_defaults()
        self.logic.setParameters(p, params)

    # -- dataset ------------------------------------------------------------------------------------------
    def onAddSceneVolumes(self) -> None:
        added = ts.fill_labels_table(self._parameterNode.labelsTable)
        self.setStatus(_("{count} volume(s) added: type their labels (0 / no BI, 1 / BI).").format(
            count=added))

    def preparedParameters(self):
        """The parameters, validated, with the scene dataset exported; None (after a message) on a problem."""
        p = self._parameterNode
        try:
            params = self.logic.parametersFrom(p).with_run_name()
            if p.runName != params.run_name:
                p.runName = params.run_name
            params.validate()
            with slicer.util.WaitCursor():
                self.logic.exportSceneDataset(params, p.labelsTable)
        except (GloResNetError, OSError) as exc:
            slicer.util.errorDisplay(_("Cannot train with these settings:\n{error}").format(error=exc))
            return None
        return params

    def onCheckDataset(self, startAfter: bool = False) -> None:
        if self.logic.busy:
            return
        params = self.preparedParameters()
        if params is None:
            return
        if not self.logic.ensureDependencies():
            self.setStatus(_("PyTorch or the Python requirements are missing; nothing was run."))
            return
        self.ui.datasetReportTextEdit.setPlainText(_("Checking the dataset (every image is read)..."))
        try:
            self.logic.startCheck(params)
        except (GloResNetError, OSError) as exc:
            slicer.util.errorDisplay(_("Could not check the dataset:\n{error}").format(error=exc))
            return
        self._startAfterCheck = params if startAfter else None
        self.setStatus(_("Checking the dataset..."))
        self._timer.start()
        self.updateGUI()

    def onCheckFinished(self, check) -> None:
        params, self._startAfterCheck = self._startAfterCheck, None
        if check.process.cancelled:
            self.ui.datasetReportTextEdit.setPlainText(_("Dataset check cancelled."))
            self.setStatus(_("Cancelled."))
            return
        self.ui.datasetReportTextEdit.setPlainText(check.text())
        if not check.ok:
            self.setStatus(_("The dataset check found problems: nothing was trained."))
            if params is not None:
                slicer.util.errorDisplay(_("The dataset cannot be used for training."),
                                         detailedText=check.text())
            return
        self.setStatus(_("Dataset checked: {summary}").format(summary=check.report.get("summary", "")))
        if params is not None:
            self.startTraining(params)

    # -- training -----------------------------------------------------------------------------------------
    def onStart(self) -> None:
        self.onCheckDataset(startAfter=True)  # the report is shown before training starts

    def startTraining(self, params) -> None:
        p = self._parameterNode
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        try:
            job = self.logic.startTraining(params)
        except (GloResNetError, OSError, RuntimeError) as exc:
            slicer.util.errorDisplay(_("Could not start the training:\n{error}").format(error=exc))
            return
        p.runDir, p.bundlePath, p.heldOutCase = str(job.run_dir), "", ""
        self.appendLog("$ " + " ".join(job.process.args))  # the same command runs in a terminal
        self.ui.metricsSummaryLabel.text = _("Training...")
        self.setStatus(_("Starting {run}...").format(run=job.run_dir.name))
        self._timer.start()
        self.updateGUI()

    def onStop(self) -> None:
        if self.logic.stop():
            self.setStatus(_("Stopping at the end of this step (a checkpoint is saved)..."))

    def onResume(self, device=None) -> None:
        p = self._parameterNode
        runDir = self.logic.resumableRun(p)
        if self.logic.busy or not runDir:
            return
        if not self.logic.ensureDependencies():
            return
        try:
            self.logic.resume(runDir, device=device or p.device)
            p.runDir = runDir
        except (GloResNetError, OSError, RuntimeError) as exc:
            slicer.util.errorDisplay(_("Could not resume the training:\n{error}").format(error=exc))
            return
        self.appendLog("$ " + " ".join(self.logic.job.process.args))
        self.setStatus(_("Resuming {run}...").format(run=Path(runDir).name))
        self._timer.start()
        self.updateGUI()

    def onCancel(self) -> None:
        if self.logic.running and not slicer.util.confirmYesNoDisplay(
                _("Kill the training now? Work since the last saved checkpoint is lost (Stop keeps it).")):
            return
        if self.logic.cancel():
            self.setStatus(_("Cancelling..."))

    def onTimer(self) -> None:
        try:
            self.pollDeviceProbe()
            check = self.logic.check
            if check is not None:
                for event in check.poll():
                    if event.get("event") == process.LOG:
                        self.appendLog(event["line"])
                if check.finished:
                    self.logic.check = None
                    self.onCheckFinished(check)
            job = self.logic.job
            if job is not None:
                for event in self.logic.poll():
                    if event.get("event") == process.LOG:
                        self.appendLog(event["line"])
                monitor = self.logic.monitor
                self.showLiveNodes(job)
                self.ui.progressBar.value = int(round(100 * monitor.fraction))
                self.setStatus(f"{monitor.status} ({ts.format_duration(job.elapsed_s)})")
                if job.finished:
                    self.logic.job = None
                    self.onTrainingFinished(job)
        except Exception as exc:  # never let an exception escape a Qt timer slot
            logging.exception("GloResNetTraining: error while following the training")
            self.logic.job = self.logic.check = None
            slicer.util.errorDisplay(_("GloResNet training error: {error}").format(error=exc))
        if self._probe is None and not self.logic.busy:
            self._timer.stop()
        self.updateGUI()

    def onTrainingFinished(self, job) -> None:
        p = self._parameterNode
        monitor = self.logic.monitor
        if p:
            self.showLiveNodes(job)
            p.runDir = str(job.run_dir or p.runDir)
        self.ui.metricsSummaryLabel.text = monitor.summary_text()
        outcome = job.outcome
        if outcome == "done":
            if p and monitor.registered:
                p.bundlePath = str(monitor.registered)
                case = ts.pick_heldout_case(job.run_dir)
                p.heldOutCase = str(case.path) if case else ""
            self.setStatus(monitor.status)
            if monitor.registration_error:
                slicer.util.errorDisplay(monitor.registration_error)
            return
        if outcome == "stopped":
            self.setStatus(monitor.status if job.resumable else _("Stopped before training: Start again."))
            return
        if outcome == "cancelled":
            self.setStatus(_("Cancelled. Resume continues from the last saved checkpoint.") if job.resumable
                           else _("Cancelled."))
            return
        diagnosis = job.diagnosis()
        message = job.failure_message() or _("The training failed.")
        self.setStatus(diagnosis.message if diagnosis else message.splitlines()[0])
        if diagnosis is not None and diagnosis.offer_cpu and job.resumable:
            if slicer.util.confirmYesNoDisplay(message + "\n\n" + _("Resume the run on the CPU?")):
                self.onResume(device="cpu")
            return
        slicer.util.errorDisplay(_("GloResNet training failed."), detailedText=message)

    def showLiveNodes(self, job) -> None:
        """Once the first curves exist: keep them in the parameter node and show them (once per run)."""
        p, nodes = self._parameterNode, self.logic.monitor.nodes()
        if not p or nodes["loss_chart"] is None or job.monitor is None:
            return
        p.metricsTable, p.lossChart, p.metricChart = (nodes["metrics_table"], nodes["loss_chart"],
                                                      nodes["metric_chart"])
        if self._shownRun != job.run_dir:
            self._shownRun = job.run_dir
            self.logic.showResults(p)

    # -- results ------------------------------------------------------------------------------------------
    def onShowResults(self) -> None:
        self.logic.showResults(self._parameterNode)

    def onOpenInGloResNet(self) -> None:
        p = self._parameterNode
        try:
            with slicer.util.WaitCursor():
                self.logic.openInGloResNet(p.bundlePath, p.heldOutCase or None)
        except (OSError, RuntimeError, ValueError) as exc:
            slicer.util.errorDisplay(_("Could not open the model in GloResNet:\n{error}").format(error=exc))

    def onOpenRunFolder(self) -> None:
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(self._parameterNode.runDir))



#
# GloResNetTrainingLogic
#

class GloResNetTrainingLogic(ScriptedLoadableModuleLogic):
    """Thin logic over GloResNetLib.training_session, usable from the Python console::

        logic = GloResNetTrainingLogic()
        params = ts.TrainingParameters.cpu_demo(manifest="cohort/manifest.csv", output_folder="runs")
        job = logic.train(params)  # blocks; logic.startTraining(params) + logic.poll() do not
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.job = None
        self.check = None
        self.monitor = ts.TrainingMonitor(models_folder=None)
        self._killAt = None

    def getParameterNode(self):
        return GloResNetTrainingParameterNode(super().getParameterNode())

    @staticmethod
    def modelsFolder() -> Path:
        """The GloResNet module's models folder (setting 'GloResNet/ModelsFolder'), where it lists models."""
        return common.models_folder()

    # -- parameters ---------------------------------------------------------------------------------------
    @staticmethod
    def parametersFrom(p) -> ts.TrainingParameters:
        """TrainingParameters from the parameter node."""
        return ts.TrainingParameters.from_gui({name: getattr(p, name) for name in ts.GUI_FIELDS})

    @staticmethod
    def setParameters(p, params) -> None:
        """Write TrainingParameters into the parameter node."""
        for name, value in params.to_gui().items():
            if getattr(p, name) != value:
                setattr(p, name, value)

    @staticmethod
    def resumableRun(p) -> str:
        """The run Resume continues: the last one, else the output folder's run of this name; "" if none."""
        named = str(Path(p.outputFolder) / p.runName.strip()) if p.outputFolder and p.runName.strip() else ""
        return next((run for run in (p.runDir, named) if ts.can_resume(run)), "")

    @staticmethod
    def exportSceneDataset(params, labelsTable):
        """For the scene source: write the labelled volumes and their manifest beside the run folder; returns the
        manifest's Path (None for the other sources). No ``Path | None`` annotation: evaluated at import, it
        would fail on Python 3.9 before the module could say which Slicer it needs."""
        if params.source != "scene":
            return None
        if labelsTable is None:
            raise InputError("no labels table: add the scene's volumes and type their labels first")
        return ts.export_scene_dataset(ts.scene_cases(labelsTable), params.scene_data_dir, params.synthetic)

    # -- dependencies -------------------------------------------------------------------------------------
    @staticmethod
    def ensureDependencies(confirm: bool = True) -> bool:
        """PyTorch (PyTorchUtils picks the CUDA build) and training's requirements (the predict module's and
        scikit-learn, matplotlib), torch pinned: the installer both modules share."""
        return dependencies.ensure_dependencies(REQUIREMENTS_FILE, "GloResNetTraining", confirm)

    # -- running ------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    @property
    def busy(self) -> bool:
        return self.running or (self.check is not None and self.check.running)

    def startCheck(self, params):
        """Run the dataset check in the background (returns the DatasetCheck to poll)."""
        if self.busy:
            raise RuntimeError("A training or dataset check is already running.")
        self.check = ts.DatasetCheck(params).start()
        return self.check

    def startTraining(self, params):
        """Start ``gloresnet train`` in the background (returns the TrainingJob; poll with :meth:`poll`)."""
        if self.busy:
            raise RuntimeError("A training is already running.")
        self.monitor = ts.TrainingMonitor(models_folder=self.modelsFolder())
        self.job = ts.start_training(params, self.monitor)
        self._killAt = None
        return self.job

    def resume(self, runDir, device=None):
        """Continue a stopped run (``gloresnet train --resume RUN_DIR``)."""
        if self.busy:
            raise RuntimeError("A training is already running.")
        if Path(runDir, "bundle", "metadata.json").is_file():
            raise InputError(f"{runDir} is finished: nothing to resume")
        if self.monitor.run_dir != Path(runDir).resolve():  # else keep the curves seen before the stop
            self.monitor = ts.TrainingMonitor()
        self.monitor.models_folder = self.modelsFolder()
        self.job = ts.resume_training(runDir, self.monitor, device=device)
        self._killAt = None
        return self.job

    def poll(self) -> list:
        """Events of the running job (nodes updated); kills a job that ignored a stop for too long."""
        if self.job is None:
            return []
        if self._killAt is not None and self.job.running and time.monotonic() > self._killAt:
            self.job.cancel()
        return self.job.poll()

    def train(self, params, timeout=None):
        """Train and wait (console / scripts): returns the finished TrainingJob."""
        job = self.startTraining(params)
        try:
            job.wait(timeout)
        finally:
            self.job = None
        return job

    def stop(self) -> bool:
        return self.job.stop() if self.job is not None else False

    def cancel(self) -> bool:
        cancelled = False
        for job in (self.job, self.check):
            if job is not None:
                cancelled = job.cancel() or cancelled
        return cancelled

    def onSceneClose(self) -> None:
        """The scene is closing: stop cleanly (resumable) without blocking; its nodes are not updated."""
        if self.check is not None:
            self.check.cancel()
        if self.running:
            self.job.monitor = None
            self.job.stop()
            self._killAt = time.monotonic() + 120

    def shutdown(self, timeout: float = 10.0) -> None:
        """Slicer is quitting: stop cleanly, wait a little, kill what is left."""
        if self.check is not None:
            self.check.cancel()
        if self.job is not None:
            self.job.shutdown(timeout)

    # -- results ------------------------------------------------------------------------------------------
    def showResults(self, p) -> None:
        """Loss and metric charts side by side over the metrics table (a layout of their own), each in the view
        node its layout names (views.show_training_results), not the layout manager's n-th view."""
        nodes = self.monitor.nodes()
        views.show_training_results(slicer.app.layoutManager().layoutLogic().GetLayoutNode(),
                                    loss_chart=nodes["loss_chart"] or p.lossChart,
                                    metric_chart=nodes["metric_chart"] or p.metricChart,
                                    metrics_table=nodes["metrics_table"] or p.metricsTable)

    @staticmethod
    def openInGloResNet(bundlePath, casePath=None):
        """Select the model (and load the held-out case) in the GloResNet module and switch to it."""
        volume = slicer.util.loadVolume(str(casePath)) if casePath else None
        predict = common.predict_logic().getParameterNode()
        predict.modelPath = str(bundlePath)
        if volume is not None:
            predict.inputVolume = volume
        slicer.util.selectModule("GloResNet")
        return volume


#
# GloResNetTrainingTest
#

class GloResNetTrainingTest(ScriptedLoadableModuleTest):
    """Self-test in the Slicer app: a tiny CV run on synthetic scene volumes, stopped, resumed, registered,
    opened and predicted in the GloResNet module."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_TrainingFlow()

    def test_TrainingFlow(self) -> None:
        import numpy as np

        logic = GloResNetTrainingLogic()
        if not process.has_module("torch") or process.missing_requirements(
                ts.read_requirements(REQUIREMENTS_FILE)):
            self.delayDisplay("PyTorch or the requirements are not installed in this Slicer: test skipped")
            return
        work = Path(tempfile.mkdtemp(prefix="GloResNetTrainingTest-"))
        settings = qt.QSettings()
        previousModels = settings.value(process.MODELS_FOLDER_SETTING)
        settings.setValue(process.MODELS_FOLDER_SETTING, str(work / "models"))
        try:
            self.delayDisplay("Synthetic scene volumes with typed labels")
            rng = np.random.default_rng(0)
            volumes = [self._syntheticVolume(np, rng, k % 2, f"selftest {k:02d}") for k in range(12)]
            widget = slicer.modules.gloresnettraining.widgetRepresentation().self()
            widget.initializeParameterNode()  # setUp's Clear() dropped it and the module may not be entered
            p = widget._parameterNode
            logic.setParameters(p, ts.TrainingParameters(
                source="scene", output_folder=str(work), run_name="selftest", size=16,
                widths=ts.WIDTH_PRESETS["eighth"], folds=2, epochs=20, batch_size=4, seed=0, device="cpu",
                synthetic=True))
            widget.updateGUI()  # makes the labels table of the scene source
            ts.fill_labels_table(p.labelsTable, volumes, {v.GetName(): k % 2 for k, v in enumerate(volumes)})

            self.delayDisplay("Start (dataset check, then training in the background); Stop during fold 2")
            widget.onStart()
            self._waitFor(lambda: widget.logic.job is not None and widget.logic.monitor.fold == 1)
            widget.onStop()
            self._waitFor(lambda: not widget.logic.busy)
            widget.onTimer()
            self.assertTrue(ts.can_resume(p.runDir), "a stopped run can be resumed")

            self.delayDisplay("Resume to the end; the ensemble is registered in the models folder")
            widget.onResume()
            self._waitFor(lambda: not widget.logic.busy)
            widget.onTimer()
            self.assertTrue(p.bundlePath and Path(p.bundlePath).parent == work / "models")
            self.assertEqual(p.metricsTable.GetNumberOfRows(), 5)  # 2 folds, mean, sd, best
            self.assertEqual(p.lossChart.GetNumberOfPlotSeriesNodes(), 4)
            widget.onShowResults()

            self.delayDisplay("Open in GloResNet with a held-out case, predict")
            volume = logic.openInGloResNet(p.bundlePath, p.heldOutCase)
            predictLogic = common.predict_logic()
            self.assertEqual(predictLogic.getParameterNode().modelPath, p.bundlePath)
            (result,) = predictLogic.predict([volume], p.bundlePath, device="cpu", inProcess=True)
            self.assertTrue(0.0 <= result.probability <= 1.0)
            self.delayDisplay("Test passed")
        finally:
            if previousModels is None:
                settings.remove(process.MODELS_FOLDER_SETTING)
            else:
                settings.setValue(process.MODELS_FOLDER_SETTING, previousModels)

    @staticmethod
    def _waitFor(condition, timeout: float = 600) -> None:
        deadline = time.time() + timeout
        while not condition():
            if time.time() > deadline:
                raise AssertionError("timed out")
            slicer.app.processEvents()
            time.sleep(0.05)

    @staticmethod
    def _syntheticVolume(np, rng, label: int, name: str):
        """A 20^3 noisy ellipsoid 'head'; brain injury (label 1) adds a bright blob inside it."""
        grid = np.stack(np.meshgrid(*[np.arange(20.0)] * 3, indexing="ij")) - 9.5
        array = np.where(np.sqrt((grid ** 2).sum(0)) < 8.4, 400.0, 30.0) * rng.uniform(0.8, 1.2)
        if label == 1:
            distance = np.sqrt(((grid - rng.uniform(-3.5, 3.5, size=3)[:, None, None, None]) ** 2).sum(0))
            array = array + 900.0 * np.exp(-((distance / 2.5) ** 2))
        array = (array + rng.normal(0, 25, array.shape)).astype(np.float32)
        return slicer.util.addVolumeFromArray(array.transpose(2, 1, 0).copy(), np.eye(4), name=name)

"""GloResNetTraining: cross-validated training of GloResNet models from 3D Slicer, followed live.

Extension Wizard layout (module, parameter node, widget over ``Resources/UI/GloResNetTraining.ui``, logic,
self-test), all thin: the logic, parameters, scene dataset, background ``gloresnet train --progress-json`` jobs
and live nodes are in ``GloResNetLib.slicer_side`` (tested with slicer-core), which Slicer finds on ``sys.path``
with the GloResNet module's folder. Nothing is installed at import time. Needs Slicer 5.10 or later; this file
still imports on Slicer 5.8 (Python 3.9) to say so. Research use only; not a medical device.
"""

import logging
import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
from GloResNetLib.disclaimer import DISCLAIMER
from GloResNetLib.errors import GloResNetError
from GloResNetLib.slicer_side import (
    background,
    common,
    dependencies,
    paths,
    scene_dataset,
    selftest,
    training_gui,
    training_logic,
)
from GloResNetLib.slicer_side import training_params as tp
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
# unique name: both modules' Resources share one folder
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "GloResNetTraining-requirements.txt"
DEFAULTS = tp.TrainingParameters()  # the parameter node's defaults: those of gloresnet train (TrainConfig)


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
            "registered for the GloResNet module.<br><br><b>{disclaimer}</b>"
        ).format(disclaimer=DISCLAIMER)
        self.parent.acknowledgementText = _(
            "GloResNet method: arXiv 2606.02498. ResNet-10 layout and pretrained weights: MedicalNet "
            "(Tencent, MIT licence). Module layout follows 3D Slicer's Extension Wizard."
        )


#
# GloResNetTrainingParameterNode
#


@parameterNodeWrapper
class GloResNetTrainingParameterNode:
    """GUI state, saved with the scene: dataset, output, settings (defaults: the paper's), the last run
    (runDir), its registered model (bundlePath), a case to inspect and the live-view nodes."""

    source: Annotated[str, Choice(list(tp.SOURCE_LABELS))] = DEFAULTS.to_gui()["source"]
    manifestPath: str = ""
    dhcpFolder: str = ""
    labelsTable: vtkMRMLTableNode
    syntheticData: bool = DEFAULTS.synthetic
    outputFolder: str = ""
    runName: str = ""
    arch: Annotated[str, Choice(list(tp.ARCHITECTURES))] = DEFAULTS.arch
    width: Annotated[str, Choice(list(tp.WIDTH_PRESETS))] = DEFAULTS.to_gui()["width"]
    folds: Annotated[int, WithinRange(2, 20)] = DEFAULTS.folds
    epochs: Annotated[int, WithinRange(1, 10000)] = DEFAULTS.epochs
    batchSize: Annotated[int, WithinRange(2, 1024)] = DEFAULTS.batch_size
    learningRate: Annotated[float, WithinRange(1e-6, 1.0)] = DEFAULTS.lr
    mixupAlpha: Annotated[float, WithinRange(0.0, 10.0)] = DEFAULTS.mixup_alpha
    classWeights: bool = DEFAULTS.class_weights
    inputSize: Annotated[int, WithinRange(16, 256)] = DEFAULTS.size
    pretrainedPath: str = ""
    device: Annotated[str, Choice(list(tp.DEVICES))] = DEFAULTS.device
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
    """GUI wiring only (parameter node, status, log, device probe, reload: common.ModuleWidgetHelpers)."""

    PATH_FIELDS = tuple((f.widget, f.field) for f in paths.TRAINING_PATH_FIELDS)  # synced by hand, never bound

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._timer = None
        self._startAfterCheck = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if self.refuseOldSlicer():
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GloResNetTraining.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GloResNetTrainingLogic()

        self.setupTimer(250)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        slicer.app.connect("aboutToQuit()", self.onAboutToQuit)

        self.ui.researchNoticeLabel.text = DISCLAIMER
        training_gui.setup_path_fields(self.ui, self.onPathChanged)  # every text, validated by the logic
        training_gui.set_option_tooltips(self.ui)  # from the options' one definition (TrainConfig)

        self.ui.addSceneVolumesButton.connect("clicked(bool)", self.onAddSceneVolumes)
        self.ui.checkDatasetButton.connect("clicked()", lambda: self.onCheckDataset(startAfter=False))
        self.ui.paperDefaultsButton.connect("clicked()", lambda: self.logic.applyPreset(self._parameterNode, "paper"))
        self.ui.cpuDemoButton.connect("clicked()", lambda: self.logic.applyPreset(self._parameterNode, "cpu"))
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

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.onSceneClose()  # stops cleanly (checkpoint kept); the nodes are about to go
        self.setParameterNode(None)

    def onAboutToQuit(self) -> None:
        self.logic.shutdown()
        background.cancel_all()

    # -- parameter node -----------------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

    def onPathChanged(self, field: str, text: str) -> None:
        if self._parameterNode:
            paths.sync_field(self._parameterNode, field, text)

    def updateGUI(self, caller=None, event=None) -> None:
        if self._parameterNode:
            training_gui.show_dataset(self.ui, self._parameterNode)
        training_gui.update_run_widgets(self.ui, self._parameterNode, self.logic)

    onParameterNodeModified = updateGUI

    # -- dataset ------------------------------------------------------------------------------------------
    def onAddSceneVolumes(self) -> None:
        added = scene_dataset.fill_labels_table(self._parameterNode.labelsTable)
        self.setStatus(_("{count} volume(s) added: type their labels (0 / no BI, 1 / BI).").format(count=added))

    def onCheckDataset(self, startAfter: bool = False) -> None:
        if self.logic.busy:
            return
        try:  # validated, with the scene dataset exported
            with slicer.util.WaitCursor():
                params = self.logic.prepareParameters(self._parameterNode)
        except (GloResNetError, OSError) as exc:
            slicer.util.errorDisplay(_("Cannot train with these settings:\n{error}").format(error=exc))
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
        report, status, usable = self.logic.checkResult(check)
        self.ui.datasetReportTextEdit.setPlainText(report)
        self.setStatus(status)
        if params is not None and usable:
            self.startTraining(params)
        elif params is not None and not check.process.cancelled:
            slicer.util.errorDisplay(_("The dataset cannot be used for training."), detailedText=report)

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
        self.ui.metricsSummaryLabel.text = _("Training...")
        self.followJob(job, _("Starting {run}...").format(run=job.run_dir.name))

    def followJob(self, job, status: str) -> None:
        self.appendLog("$ " + " ".join(job.process.args))  # the same command runs in a terminal
        self.setStatus(status)
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
        self.followJob(self.logic.job, _("Resuming {run}...").format(run=Path(runDir).name))

    def onCancel(self) -> None:
        if self.logic.running and not slicer.util.confirmYesNoDisplay(
            _("Kill the training now? Work since the last saved checkpoint is lost (Stop keeps it).")
        ):
            return
        if self.logic.cancel():
            self.setStatus(_("Cancelling..."))

    def onTimer(self) -> None:
        try:
            self.pollDeviceProbe()
            events, check, job = self.logic.follow(self._parameterNode)
            self.appendLogEvents(events)
            followed = job or self.logic.job
            if followed is not None:
                self.ui.progressBar.value = int(round(100 * self.logic.monitor.fraction))
                self.setStatus(self.logic.progressText(followed))
            if check is not None:
                self.onCheckFinished(check)
            if job is not None:
                self.onTrainingFinished(job)
        except Exception as exc:  # never let an exception escape a Qt timer slot
            logging.exception("GloResNetTraining: error while following the training")
            self.logic.job = self.logic.check = None
            slicer.util.errorDisplay(_("GloResNet training error: {error}").format(error=exc))
        if self._probe is None and not self.logic.busy:
            self._timer.stop()
        self.updateGUI()

    def onTrainingFinished(self, job) -> None:
        outcome = self.logic.finishTraining(job, self._parameterNode)
        self.ui.metricsSummaryLabel.text = self.logic.monitor.summary_text()
        self.setStatus(outcome.status)
        if outcome.offerCpu:
            if slicer.util.confirmYesNoDisplay(outcome.detail + "\n\n" + _("Resume the run on the CPU?")):
                self.onResume(device="cpu")
        elif outcome.error:
            slicer.util.errorDisplay(outcome.error, detailedText=outcome.detail)

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


class GloResNetTrainingLogic(training_logic.TrainingLogic, ScriptedLoadableModuleLogic):
    """Thin logic: parameters, dataset, background jobs and results come from GloResNetLib
    (training_logic.TrainingLogic, usable from the console: ``logic.train(tp.TrainingParameters.cpu_demo(...))``)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        training_logic.TrainingLogic.__init__(self)

    def getParameterNode(self):
        return GloResNetTrainingParameterNode(super().getParameterNode())

    @staticmethod
    def ensureDependencies(confirm: bool = True) -> bool:
        """PyTorch (PyTorchUtils picks the CUDA build) and training's requirements (the predict module's and
        scikit-learn, matplotlib), torch pinned: the installer both modules share."""
        return dependencies.ensure_dependencies(REQUIREMENTS_FILE, "GloResNetTraining", confirm)


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
        logic = GloResNetTrainingLogic()
        if selftest.dependencies_missing(tp.read_training_requirements(REQUIREMENTS_FILE)):
            self.delayDisplay("PyTorch or the requirements are not installed in this Slicer: test skipped")
            return
        work = Path(tempfile.mkdtemp(prefix="GloResNetTrainingTest-"))
        with selftest.models_folder_setting(work / "models"):
            self.delayDisplay("Synthetic scene volumes with typed labels")
            volumes, labels = selftest.labelled_heads(12)
            widget = slicer.modules.gloresnettraining.widgetRepresentation().self()
            widget.initializeParameterNode()  # setUp's Clear() dropped it and the module may not be entered
            p = widget._parameterNode
            logic.setParameters(p, selftest.tiny_training_parameters(work))
            widget.updateGUI()  # makes the labels table of the scene source
            scene_dataset.fill_labels_table(p.labelsTable, volumes, labels)

            self.delayDisplay("Start (dataset check, then training in the background); Stop during fold 2")
            widget.onStart()
            selftest.wait_for(lambda: widget.logic.job is not None and widget.logic.monitor.fold == 1)
            widget.onStop()
            selftest.wait_for(lambda: not widget.logic.busy)
            widget.onTimer()
            self.assertTrue(tp.can_resume(p.runDir), "a stopped run can be resumed")

            self.delayDisplay("Resume to the end; the ensemble is registered in the models folder")
            widget.onResume()
            selftest.wait_for(lambda: not widget.logic.busy)
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

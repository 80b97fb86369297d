"""GloResNet: preterm brain-injury prediction from T2-weighted MRI, as a 3D Slicer scripted module.

Research use only; not a medical device; not for clinical decisions.

Layout of Slicer's Extension Wizard: module description, parameter node, widget (wires the GUI made in Qt
Designer, ``Resources/UI/GloResNet.ui``), logic (thin: MRML conversion and result nodes live in
``GloResNetLib.mrml``, the background ``gloresnet predict`` process in ``GloResNetLib.process``; both are
tested outside Slicer with slicer-core), and a self-test. What both modules share (version check, device probe,
status and log, developer reload, dependency installer) is in ``GloResNetLib.slicer_side``. Nothing is installed
at import time: PyTorch and the Python requirements are installed on the first Predict, after the user agrees.
Needs Slicer 5.10 or later; this file still imports on Slicer 5.8 (Python 3.9) to say so.
"""

import logging
import tempfile
import time
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from GloResNetLib import mrml, process
from GloResNetLib.errors import GloResNetError, InputError
from GloResNetLib.slicer_side import common, dependencies
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLTableNode
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
RESOURCES = MODULE_DIR / "Resources"
REQUIREMENTS_FILE = RESOURCES / "GloResNet-requirements.txt"  # unique: both modules' Resources share one folder
RESEARCH_NOTICE = "Research use only. Not a medical device; not for clinical decisions."


#
# GloResNet
#

class GloResNet(ScriptedLoadableModule):
    """Module description shown by Slicer."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("GloResNet")
        self.parent.categories = [_("Neuroimaging")]
        self.parent.dependencies = []  # PyTorchUtils (PyTorch extension) is used on demand, not at load time
        self.parent.contributors = ["GloResNet contributors"]
        self.parent.helpText = _(
            "Predicts brain injury (BI) in preterm infants from a T2-weighted MRI volume with a lightweight "
            "3D ResNet-10 on the whole volume resampled to 128<sup>3</sup> ('global manifold mapping'), with "
            "test-time augmentation and a Grad-CAM saliency map.<br><br>"
            "<b>Research use only, not a medical device; not for clinical decisions.</b> Models trained on "
            "synthetic data are labelled as such wherever their results are shown.<br><br>"
            "Select the T2w volume and a model, click <i>Predict</i>: the prediction runs in a background "
            "process with Slicer's Python; results go to a table node, the resampled volume and the "
            "saliency map to volume nodes saved with the scene.")
        self.parent.acknowledgementText = _(
            "GloResNet method: 'GloResNet: A lightweight 3D CNN with global topological features for preterm "
            "brain injury prediction' (arXiv 2606.02498). ResNet-10 layout and pretrained weights: "
            "MedicalNet (Tencent, MIT licence). Module layout follows 3D Slicer's Extension Wizard.")


#
# GloResNetParameterNode
#

@parameterNodeWrapper
class GloResNetParameterNode:
    """GUI state, saved with the scene.

    inputVolume - the T2w volume to predict.
    modelPath - the bundle folder in use.
    device - auto / cpu / cuda.
    useTTA - average over flipped views (test-time augmentation).
    saliencyMethod - gradcam / occlusion / both (the overlay shows occlusion for both).
    camOpacity, camThreshold - display of the saliency map (foreground opacity, lower threshold 0..1).
    showResampled - show the resampled network input as background instead of the original volume.
    camVolume, resampledVolume, resultsTable - outputs of the last prediction (camVolume: the saliency map shown).
    occlusionVolume - the occlusion-sensitivity map of the last prediction, if computed.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    modelPath: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    useTTA: bool = True
    saliencyMethod: Annotated[str, Choice(["gradcam", "occlusion", "both"])] = "gradcam"
    camOpacity: Annotated[float, WithinRange(0.0, 1.0)] = mrml.DEFAULT_CAM_OPACITY
    camThreshold: Annotated[float, WithinRange(0.0, 1.0)] = mrml.DEFAULT_CAM_THRESHOLD
    showResampled: bool = False
    camVolume: vtkMRMLScalarVolumeNode
    occlusionVolume: vtkMRMLScalarVolumeNode
    resampledVolume: vtkMRMLScalarVolumeNode
    resultsTable: vtkMRMLTableNode


#
# GloResNetWidget
#

class GloResNetWidget(common.ModuleWidgetHelpers, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI wiring only: every computation is in GloResNetLogic / GloResNetLib (status, log, device probe and
    reload: common.ModuleWidgetHelpers)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._job = None
        self._probe = None
        self._timer = None
        self._display = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        if self.refuseOldSlicer():
            return
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/GloResNet.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = GloResNetLogic()

        self._timer = qt.QTimer()
        self._timer.setInterval(200)
        self._timer.connect("timeout()", self.onTimer)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        slicer.app.connect("aboutToQuit()", self.onAboutToQuit)

        self.ui.researchNoticeLabel.text = RESEARCH_NOTICE
        self.ui.predictButton.connect("clicked(bool)", self.onPredict)
        self.ui.cancelButton.connect("clicked(bool)", self.onCancel)
        self.ui.browseModelButton.connect("clicked(bool)", self.onBrowseModel)
        self.ui.refreshModelsButton.connect("clicked(bool)", self.refreshModels)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.jumpToPeakButton.connect("clicked(bool)", self.onJumpToPeak)
        self.ui.showTableButton.connect("clicked(bool)", self.onShowTable)

        self.initializeParameterNode()
        self.refreshModels()
        self.startDeviceProbe()
        self.updateButtons()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()
        if self._timer is not None:
            self._timer.stop()
        if self.logic is not None:
            self.logic.cancel()

    def enter(self) -> None:
        if self.logic is None:  # Slicer too old: no GUI
            return
        self.initializeParameterNode()
        self.refreshModels()  # a bundle just trained by GloResNetTraining shows up at once

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()  # its result nodes are about to disappear
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onAboutToQuit(self) -> None:
        process.cancel_all()

    # -- parameter node -----------------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volume = self.logic.firstInputVolume()
            if volume:
                self._parameterNode.inputVolume = volume

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent,
                                self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        self._display = None
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        self.updateButtons()
        p = self._parameterNode
        if not p:
            return
        display = (p.camOpacity, p.camThreshold, p.showResampled)
        if display != self._display:
            self._display = display
            self.logic.updateDisplay(p)

    def updateButtons(self) -> None:
        running = self.logic is not None and self.logic.running
        p = self._parameterNode
        ready = bool(p and p.inputVolume and p.modelPath)
        self.ui.predictButton.enabled = ready and not running
        self.ui.predictButton.toolTip = (_("Predict brain injury") if ready
                                         else _("Select an input volume and a model"))
        self.ui.cancelButton.enabled = running
        self.ui.jumpToPeakButton.enabled = bool(p and p.camVolume)
        self.ui.showTableButton.enabled = bool(p and p.resultsTable)

    # -- models and devices -------------------------------------------------------------------------------
    def refreshModels(self) -> None:
        current = self._parameterNode.modelPath if self._parameterNode else ""
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for info in self.logic.availableBundles(extra=[current] if current else []):
            combo.addItem(info.label, str(info.path))
            combo.setItemData(combo.count - 1, info.description, qt.Qt.ToolTipRole)
        index = combo.findData(current) if current else -1
        combo.setCurrentIndex(index if index >= 0 else (0 if combo.count else -1))
        combo.blockSignals(wasBlocked)
        if combo.count == 0:
            self.ui.modelInfoLabel.text = _("No model found in {folder}. Use Browse... to import a bundle."
                                            ).format(folder=self.logic.modelsFolder())
        self.onModelChanged(combo.currentIndex)

    def onModelChanged(self, index: int) -> None:
        combo = self.ui.modelComboBox
        path = combo.itemData(index) if index is not None and index >= 0 else ""
        if self._parameterNode and path and self._parameterNode.modelPath != path:
            self._parameterNode.modelPath = path
        if path:
            info = process.bundle_info(path)
            self.ui.modelInfoLabel.text = info.description
            self.ui.modelInfoLabel.styleSheet = "color: #c00000; font-weight: bold;" if info.flag else ""
        self.updateButtons()

    def onBrowseModel(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(),
                                                     _("Select a GloResNet model bundle"))
        if not folder:
            return
        try:
            with slicer.util.WaitCursor():
                self.setStatus(_("Verifying the model's checksums..."))
                path = self.logic.importBundle(folder)
        except (ValueError, OSError) as exc:
            slicer.util.errorDisplay(_("Could not import the model bundle:\n{error}").format(error=exc))
            self.setStatus("")
            return
        self.setStatus(_("Model imported into {folder}").format(folder=path.parent))
        self._parameterNode.modelPath = str(path)
        self.refreshModels()

    # -- prediction ---------------------------------------------------------------------------------------
    def onPredict(self) -> None:
        if self.logic.running:  # a second click while running does nothing
            return
        p = self._parameterNode
        try:
            mrml.check_volume_node(p.inputVolume)
            if not p.modelPath:
                raise InputError(_("No model selected: import a bundle with Browse..."))
        except InputError as exc:
            slicer.util.errorDisplay(str(exc))
            return
        if not self.logic.ensureDependencies():
            self.setStatus(_("PyTorch or the Python requirements are missing; nothing was run."))
            return
        self.startPrediction(p.device)

    def startPrediction(self, device: str) -> None:
        p = self._parameterNode
        self.ui.logTextEdit.clear()
        self.ui.progressBar.value = 0
        try:
            with slicer.util.WaitCursor():
                self._job = self.logic.startPrediction([p.inputVolume], p.modelPath, device=device,
                                                       tta=p.useTTA, threshold=p.camThreshold,
                                                       opacity=p.camOpacity, saliency=p.saliencyMethod)
        except (GloResNetError, OSError, RuntimeError) as exc:
            slicer.util.errorDisplay(_("Could not start the prediction:\n{error}").format(error=exc))
            return
        self.setStatus(_("Starting ({device})...").format(device=device))
        self._timer.start()
        self.updateButtons()

    def onCancel(self) -> None:
        if self.logic.cancel():
            self.setStatus(_("Cancelling..."))

    def onTimer(self) -> None:
        try:
            self.pollDeviceProbe()
            job = self._job
            if job is not None:
                for event in job.poll():
                    if event.get("event") == process.LOG:
                        self.appendLog(event["line"])
                self.ui.progressBar.value = int(round(100 * job.fraction))
                self.setStatus(f"{job.stage} ({job.elapsed_s:.0f} s)")
                if job.finished:
                    self._job = None
                    self.onJobFinished(job)
        except Exception as exc:  # never let an exception escape a Qt timer slot
            logging.exception("GloResNet: error while following the prediction")
            self._job = None
            slicer.util.errorDisplay(_("GloResNet error: {error}").format(error=exc))
        if self._probe is None and self._job is None:
            self._timer.stop()
        self.updateButtons()

    def onJobFinished(self, job) -> None:
        p = self._parameterNode
        if job.results and p:
            nodes = job.results[-1]
            p.camVolume, p.resampledVolume, p.resultsTable = nodes.overlay, nodes.resampled, nodes.table
            p.occlusionVolume = nodes.occlusion
            self.showResult(nodes)
            self.logic.updateDisplay(p)
        diagnosis = job.diagnosis()
        if diagnosis is None:
            self.setStatus(_("Done in {seconds:.1f} s.").format(seconds=job.elapsed_s))
            return
        if diagnosis.kind == "cancelled":
            self.setStatus(_("Cancelled."))
            return
        message = job.failure_message()
        self.setStatus(diagnosis.message)
        if diagnosis.offer_cpu and job.device != "cpu":
            if slicer.util.confirmYesNoDisplay(message + "\n\n" + _("Run on the CPU instead?")):
                self.startPrediction("cpu")
            return
        slicer.util.errorDisplay(_("GloResNet prediction failed."), detailedText=message)

    def showResult(self, nodes) -> None:
        texts = nodes.texts()
        self.ui.probabilityLabel.text = texts["caption"]  # "P(brain injury):" or, for a brain-age model, the age
        self.ui.probabilityValueLabel.text = texts["probability"]
        self.ui.labelValueLabel.text = texts["label"]
        self.ui.spreadValueLabel.text = texts["spread"]
        self.ui.modelValueLabel.text = texts["model"]
        self.ui.trainingDataValueLabel.text = texts["training_data"]
        self.ui.deviceValueLabel.text = texts["device"]
        self.ui.timeValueLabel.text = texts["time"]
        flagged = "[" in texts["model"]
        self.ui.modelValueLabel.styleSheet = "color: #c00000; font-weight: bold;" if flagged else ""
        self.ui.resultsCollapsibleButton.collapsed = False

    # -- display ------------------------------------------------------------------------------------------
    def onJumpToPeak(self) -> None:
        if not self.logic.jumpToSaliencyPeak(self._parameterNode):
            self.setStatus(_("No saliency map to jump to."))

    def onShowTable(self) -> None:
        table = self._parameterNode.resultsTable if self._parameterNode else None
        if table:
            slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
            slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
            slicer.app.applicationLogic().PropagateTableSelection()


#
# GloResNetLogic
#

class GloResNetLogic(ScriptedLoadableModuleLogic):
    """Thin logic: models folder, dependencies, and prediction through GloResNetLib (usable from the console:
    ``GloResNetLogic().predict(slicer.util.getNodesByClass('vtkMRMLScalarVolumeNode'), bundlePath)``)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.job = None

    def getParameterNode(self):
        return GloResNetParameterNode(super().getParameterNode())

    # -- models -------------------------------------------------------------------------------------------
    @staticmethod
    def modelsFolder() -> Path:
        """Where bundles are listed from (setting 'GloResNet/ModelsFolder', shared with GloResNetTraining)."""
        return common.models_folder()

    def availableBundles(self, extra=()) -> list:
        return process.find_bundles(self.modelsFolder(), *extra)

    def importBundle(self, path) -> Path:
        """Verify a bundle (checksums, in a child process) and copy it into the models folder."""
        return process.register_bundle(path, self.modelsFolder(), verify=True)

    @staticmethod
    def inputVolumes() -> list:
        """Scalar volumes of the scene that are not GloResNet outputs nor label maps (batch input)."""
        return [node for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode")
                if not node.GetAttribute(mrml.ROLE_ATTRIBUTE) and not node.IsA("vtkMRMLLabelMapVolumeNode")]

    def firstInputVolume(self):
        volumes = self.inputVolumes()
        return volumes[0] if volumes else None

    # -- dependencies -------------------------------------------------------------------------------------
    @staticmethod
    def ensureDependencies(confirm: bool = True) -> bool:
        """PyTorch (through PyTorchUtils, which picks the CUDA build) and the requirements (after confirmation,
        the installed torch pinned): the installer both modules share. False if something is missing."""
        return dependencies.ensure_dependencies(REQUIREMENTS_FILE, "GloResNet", confirm)

    # -- prediction ---------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    def startPrediction(self, volumeNodes, bundlePath, device="auto", tta=True, **showKwargs):
        """Start a background prediction (returns a GloResNetLib.mrml.PredictionJob to poll)."""
        if self.running:
            raise RuntimeError("A prediction is already running.")
        self.job = mrml.PredictionJob(volumeNodes, bundlePath, device=device, tta=tta, **showKwargs).start()
        return self.job

    def predict(self, volumeNodes, bundlePath, device="auto", tta=True, timeout=None, inProcess=False,
                **showKwargs) -> list:
        """Predict a list of volumes and wait (console / batch use); returns mrml.PredictionNodes.

        The default runs the command line in a background process; ``inProcess=True`` runs in Slicer's own
        Python (imports torch into Slicer).
        """
        if inProcess:
            return mrml.predict_nodes(volumeNodes, bundlePath, tta=tta, device=device, **showKwargs)
        job = self.startPrediction(volumeNodes, bundlePath, device=device, tta=tta, **showKwargs)
        job.wait(timeout)
        failure = job.failure_message()
        if failure:
            raise RuntimeError(failure)
        return job.results

    def cancel(self) -> bool:
        return self.job.cancel() if self.job is not None else False

    # -- display ------------------------------------------------------------------------------------------
    @staticmethod
    def updateDisplay(parameterNode) -> None:
        """Apply opacity, saliency threshold and background choice to the slice views."""
        p = parameterNode
        if not p.camVolume and not p.showResampled:
            return  # nothing of ours to show: leave the user's slice views alone
        if p.camVolume:
            mrml.set_cam_threshold(p.camVolume, p.camThreshold)
        background = p.resampledVolume if (p.showResampled and p.resampledVolume) else p.inputVolume
        mrml.set_slice_layers(background=background if background else mrml.KEEP,
                              foreground=p.camVolume if p.camVolume else mrml.KEEP,
                              foreground_opacity=p.camOpacity)

    @staticmethod
    def jumpToSaliencyPeak(parameterNode) -> bool:
        ras = mrml.peak_ras(parameterNode.camVolume) if parameterNode and parameterNode.camVolume else None
        if ras is None:
            return False
        mrml.jump_slices_to(ras)
        return True


#
# GloResNetTest
#

class GloResNetTest(ScriptedLoadableModuleTest):
    """Self-test in the Slicer app: the whole Predict flow on a synthetic volume and a tiny bundle."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_PredictFlow()

    def test_PredictFlow(self) -> None:
        import numpy as np

        widget = slicer.modules.gloresnet.widgetRepresentation().self()
        widget.initializeParameterNode()  # setUp's Clear() dropped it and the module may not be entered

        if not process.has_module("torch") or process.missing_requirements(
                process.read_requirements(REQUIREMENTS_FILE)):
            self.delayDisplay("PyTorch or the requirements are not installed in this Slicer: test skipped")
            return
        self.delayDisplay("Making a synthetic T2w volume and a tiny bundle")
        volume = self._syntheticVolume(np)
        bundlePath = self._tinyBundle(Path(tempfile.mkdtemp(prefix="GloResNetTest-")))

        self.delayDisplay("Predicting in a background process (GUI flow)")
        widget._parameterNode.inputVolume = volume
        widget._parameterNode.modelPath = str(bundlePath)
        widget._parameterNode.device = "cpu"
        widget.onPredict()
        widget.onPredict()  # a second click while running must not start a second run
        deadline = time.time() + 600
        while widget.logic.running and time.time() < deadline:
            slicer.app.processEvents()
            time.sleep(0.05)
        widget.onTimer()
        self.assertFalse(widget.logic.running)
        p = widget._parameterNode
        self.assertIsNotNone(p.camVolume)
        self.assertEqual(p.resultsTable.GetNumberOfRows(), 1)
        self.assertTrue(widget.ui.probabilityValueLabel.text)
        self.assertTrue(np.allclose(mrml.ijk_to_ras(p.camVolume), mrml.ijk_to_ras(volume), atol=1e-9))
        self.assertEqual(p.camVolume.GetImageData().GetDimensions(), volume.GetImageData().GetDimensions())
        self.assertEqual(p.resampledVolume.GetImageData().GetDimensions(), (32, 32, 32))

        self.delayDisplay("Re-running reuses the output nodes; in-process prediction agrees")
        nodeCount = slicer.mrmlScene.GetNumberOfNodes()
        logic = widget.logic
        viaProcess = logic.predict([volume], bundlePath, device="cpu", timeout=600)[0].probability
        inProcess = logic.predict([volume], bundlePath, device="cpu", inProcess=True)[0].probability
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodeCount)
        self.assertEqual(p.resultsTable.GetNumberOfRows(), 3)
        self.assertAlmostEqual(viaProcess, inProcess, places=4)
        self.assertTrue(logic.jumpToSaliencyPeak(p))
        self.delayDisplay("Test passed")

    @staticmethod
    def _syntheticVolume(np):
        shape = (40, 44, 36)  # (i, j, k)
        grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
        radius = np.sqrt(((grid / np.array([0.8, 0.85, 0.75])[:, None, None, None]) ** 2).sum(0))
        array = np.where(radius < 1, 600.0, 20.0) + np.random.default_rng(0).normal(0, 10, shape)
        theta = np.deg2rad(10)
        affine = np.eye(4)
        affine[:3, :3] = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0],
                                   [0, 0, 1]]) @ np.diag([0.9, 0.8, 1.6])
        affine[:3, 3] = [-18, -17, -28]
        return slicer.util.addVolumeFromArray(array.astype(np.float32).transpose(2, 1, 0).copy(), affine,
                                              name="GloResNetTest T2w")

    @staticmethod
    def _tinyBundle(folder: Path) -> Path:
        import torch
        from GloResNetLib.bundle import default_metadata, save_bundle
        from GloResNetLib.models import build_model
        from GloResNetLib.preprocessing import PreprocessConfig

        torch.manual_seed(0)
        widths = [8, 16, 32, 64]
        model = build_model("resnet10", widths=tuple(widths)).eval()
        meta = default_metadata("selftest", arch_params={"widths": widths},
                                preprocess=PreprocessConfig(size=(32, 32, 32)),
                                training_data={"description": "none (random weights for the self-test)",
                                               "synthetic": True, "trained": False},
                                provenance="GloResNetTest")
        return save_bundle(folder / "selftest", [model.state_dict()], meta)

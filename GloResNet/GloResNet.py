"""GloResNet: preterm brain-injury prediction from T2-weighted MRI, as a 3D Slicer scripted module.

Research use only; not a medical device; not for clinical decisions.

Extension Wizard layout (module, parameter node, widget over ``Resources/UI/GloResNet.ui``, logic, self-test),
all thin: the logic, scene, display, results and the background ``gloresnet predict`` job are in
``GloResNetLib.slicer_side`` (tested with slicer-core). Nothing is installed at import time: PyTorch and the
requirements are installed on the first Predict, after the user agrees. Needs Slicer 5.10 or later; this file
still imports on Slicer 5.8 (Python 3.9) to say so.
"""

import logging
import tempfile
from pathlib import Path
from typing import Annotated

import qt
import slicer
from GloResNetLib.disclaimer import DISCLAIMER
from GloResNetLib.errors import GloResNetError, InputError
from GloResNetLib.slicer_side import (
    background,
    common,
    dependencies,
    display,
    predict_gui,
    predict_logic,
    requirements,
    selftest,
    views,
    volumes,
)
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
# unique name: both modules' Resources share one folder
REQUIREMENTS_FILE = MODULE_DIR / "Resources" / "GloResNet-requirements.txt"


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
            "test-time augmentation and a saliency map.<br><br>Saliency: {saliency}<br><br>"
            "<b>{disclaimer}</b> Models trained on synthetic data are labelled as such wherever their results "
            "are shown.<br><br>"
            "Select the T2w volume and a model, click <i>Predict</i>: the prediction runs in a background "
            "process with Slicer's Python; results go to a table node, the resampled volume and the "
            "saliency map to volume nodes saved with the scene."
        ).format(disclaimer=DISCLAIMER, saliency=predict_gui.SALIENCY_HELP)
        self.parent.acknowledgementText = _(
            "GloResNet method: 'GloResNet: A lightweight 3D CNN with global topological features for preterm "
            "brain injury prediction' (arXiv 2606.02498). ResNet-10 layout and pretrained weights: "
            "MedicalNet (Tencent, MIT licence). Module layout follows 3D Slicer's Extension Wizard."
        )


#
# GloResNetParameterNode
#


@parameterNodeWrapper
class GloResNetParameterNode:
    """GUI state, saved with the scene: the T2w volume, the bundle folder, device (auto / cpu / cuda), test-time
    augmentation, saliency method (gradcam / gradient / occlusion / both / all: predict_gui.SALIENCY_HELP), display
    of the saliency map (opacity, lower threshold 0..1), the resampled network input as background; outputs of the
    last prediction (camVolume: the saliency map shown, results.OVERLAY_ORDER; occlusionVolume, gradientVolume
    if computed)."""

    inputVolume: vtkMRMLScalarVolumeNode
    modelPath: str = ""
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = "auto"
    useTTA: bool = True
    saliencyMethod: Annotated[str, Choice(["gradcam", "gradient", "occlusion", "both", "all"])] = "gradcam"
    camOpacity: Annotated[float, WithinRange(0.0, 1.0)] = display.DEFAULT_CAM_OPACITY
    camThreshold: Annotated[float, WithinRange(0.0, 1.0)] = display.DEFAULT_CAM_THRESHOLD
    showResampled: bool = False
    camVolume: vtkMRMLScalarVolumeNode
    occlusionVolume: vtkMRMLScalarVolumeNode
    gradientVolume: vtkMRMLScalarVolumeNode
    resampledVolume: vtkMRMLScalarVolumeNode
    resultsTable: vtkMRMLTableNode


#
# GloResNetWidget
#


class GloResNetWidget(common.ModuleWidgetHelpers, ScriptedLoadableModuleWidget, VTKObservationMixin):
    """GUI wiring only (parameter node, status, log, device probe, reload: common.ModuleWidgetHelpers)."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._job = None
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

        self.setupTimer(200)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        slicer.app.connect("aboutToQuit()", self.onAboutToQuit)

        self.ui.researchNoticeLabel.text = DISCLAIMER
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

    def enter(self) -> None:
        super().enter()
        if self.logic is not None:
            self.refreshModels()  # a bundle just trained by GloResNetTraining shows up at once

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.cancel()  # its result nodes are about to disappear
        self.setParameterNode(None)

    def onAboutToQuit(self) -> None:
        background.cancel_all()

    # -- parameter node -----------------------------------------------------------------------------------
    def initializeParameterNode(self) -> None:
        self._display = None  # applied again to the new node
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            volume = self.logic.firstInputVolume()
            if volume:
                self._parameterNode.inputVolume = volume

    def onParameterNodeModified(self, caller=None, event=None) -> None:
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
        self.ui.predictButton.toolTip = _("Predict brain injury") if ready else _("Select an input volume and a model")
        self.ui.cancelButton.enabled = running
        self.ui.jumpToPeakButton.enabled = bool(p and p.camVolume)
        self.ui.showTableButton.enabled = bool(p and p.resultsTable)

    # -- models and devices -------------------------------------------------------------------------------
    def refreshModels(self) -> None:
        current = self._parameterNode.modelPath if self._parameterNode else ""
        combo = self.ui.modelComboBox
        predict_gui.fill_model_combo(combo, self.logic.availableBundles(extra=[current] if current else []), current)
        if combo.count == 0:
            self.ui.modelInfoLabel.text = _("No model found in {folder}. Use Browse... to import a bundle.").format(
                folder=self.logic.modelsFolder()
            )
        self.onModelChanged(combo.currentIndex)

    def onModelChanged(self, index: int) -> None:
        combo = self.ui.modelComboBox
        path = combo.itemData(index) if index is not None and index >= 0 else ""
        if self._parameterNode and path and self._parameterNode.modelPath != path:
            self._parameterNode.modelPath = path
        if path:
            predict_gui.show_model_info(self.ui.modelInfoLabel, path)
        self.updateButtons()

    def onBrowseModel(self) -> None:
        folder = qt.QFileDialog.getExistingDirectory(slicer.util.mainWindow(), _("Select a GloResNet model bundle"))
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
            volumes.check_volume_node(p.inputVolume)
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
                self._job = self.logic.startPrediction(
                    [p.inputVolume],
                    p.modelPath,
                    device=device,
                    tta=p.useTTA,
                    threshold=p.camThreshold,
                    opacity=p.camOpacity,
                    saliency=p.saliencyMethod,
                )
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
                self.appendLogEvents(job.poll())
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
            predict_gui.show_results(self.ui, p, job.results[-1])
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

    # -- display ------------------------------------------------------------------------------------------
    def onJumpToPeak(self) -> None:
        if not self.logic.jumpToSaliencyPeak(self._parameterNode):
            self.setStatus(_("No saliency map to jump to."))

    def onShowTable(self) -> None:
        views.show_table(self._parameterNode.resultsTable if self._parameterNode else None)


#
# GloResNetLogic
#


class GloResNetLogic(predict_logic.PredictionLogic, ScriptedLoadableModuleLogic):
    """Thin logic: models, inputs, prediction and display come from GloResNetLib (predict_logic.PredictionLogic),
    usable from the console: ``GloResNetLogic().predict(GloResNetLogic.inputVolumes(), bundlePath)``."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.job = None

    def getParameterNode(self):
        return GloResNetParameterNode(super().getParameterNode())

    @staticmethod
    def ensureDependencies(confirm: bool = True) -> bool:
        """PyTorch (through PyTorchUtils, which picks the CUDA build) and the requirements (after confirmation,
        the installed torch pinned): the installer both modules share. False if something is missing."""
        return dependencies.ensure_dependencies(REQUIREMENTS_FILE, "GloResNet", confirm)


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

        if selftest.dependencies_missing(requirements.read_requirements(REQUIREMENTS_FILE)):
            self.delayDisplay("PyTorch or the requirements are not installed in this Slicer: test skipped")
            return
        self.delayDisplay("Making a synthetic T2w volume and a tiny bundle")
        volume = selftest.synthetic_head()
        bundlePath = selftest.tiny_bundle(Path(tempfile.mkdtemp(prefix="GloResNetTest-")))

        self.delayDisplay("Predicting in a background process (GUI flow)")
        widget._parameterNode.inputVolume = volume
        widget._parameterNode.modelPath = str(bundlePath)
        widget._parameterNode.device = "cpu"
        widget.onPredict()
        widget.onPredict()  # a second click while running must not start a second run
        selftest.wait_for(lambda: not widget.logic.running)
        widget.onTimer()
        self.assertFalse(widget.logic.running)
        p = widget._parameterNode
        self.assertIsNotNone(p.camVolume)
        self.assertEqual(p.resultsTable.GetNumberOfRows(), 1)
        self.assertTrue(widget.ui.probabilityValueLabel.text)
        self.assertTrue(np.allclose(volumes.ijk_to_ras(p.camVolume), volumes.ijk_to_ras(volume), atol=1e-9))
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

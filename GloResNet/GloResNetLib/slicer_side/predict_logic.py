"""What the GloResNet module's logic does, without Qt: the models folder and its bundles, the input volumes,
prediction in a background process (or in Slicer's own Python) and the display of its result.

:class:`PredictionLogic` is mixed into ``GloResNetLogic`` (before ``ScriptedLoadableModuleLogic``), which adds
the parameter node and the dependency installer; it is usable from Slicer's Python console::

    logic = slicer.util.getModuleLogic("GloResNet")
    (nodes,) = logic.predict([volumeNode], bundlePath)   # waits; logic.startPrediction(...) does not
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .bundles import BundleInfo, find_bundles, register_bundle
from .common import models_folder
from .display import jump_to_peak, show_result_layers
from .prediction_job import PredictionJob
from .results import PredictionNodes, predict_nodes
from .volumes import input_volumes


class PredictionLogic:
    """Models, inputs, background prediction and display of the GloResNet module (no Qt)."""

    job: PredictionJob | None = None

    @staticmethod
    def modelsFolder() -> Path:
        """Where bundles are listed from (setting 'GloResNet/ModelsFolder', shared with GloResNetTraining)."""
        return models_folder()

    def availableBundles(self, extra: Sequence[str | Path] = ()) -> list[BundleInfo]:
        """The bundles of the models folder and of ``extra`` folders, by name (unusable ones last)."""
        return find_bundles(self.modelsFolder(), *extra)

    def importBundle(self, path: str | Path) -> Path:
        """Verify a bundle (checksums, in a child process) and copy it into the models folder.

        Returns:
            The copy's folder.
        Raises:
            ValueError: verification failed or a model of this name is installed.
        """
        return register_bundle(path, self.modelsFolder(), verify=True)

    @staticmethod
    def inputVolumes() -> list:
        """Scalar volumes of the scene that are not GloResNet outputs nor label maps (batch input)."""
        return input_volumes()

    def firstInputVolume(self):
        """The first of :meth:`inputVolumes`, or None."""
        return next(iter(self.inputVolumes()), None)

    # -- prediction ---------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """A background prediction runs."""
        return self.job is not None and self.job.running

    def startPrediction(
        self, volumeNodes: Iterable, bundlePath: str | Path, device: str = "auto", tta: bool = True, **showKwargs: Any
    ) -> PredictionJob:
        """Start a background prediction; returns the :class:`.prediction_job.PredictionJob` to poll.

        Raises:
            RuntimeError: a prediction is already running. InputError: bad input volume or bundle folder.
        """
        if self.running:
            raise RuntimeError("A prediction is already running.")
        self.job = PredictionJob(volumeNodes, bundlePath, device=device, tta=tta, **showKwargs).start()
        return self.job

    def predict(
        self,
        volumeNodes: Iterable,
        bundlePath: str | Path,
        device: str = "auto",
        tta: bool = True,
        timeout: float | None = None,
        inProcess: bool = False,
        **showKwargs: Any,
    ) -> list[PredictionNodes]:
        """Predict a list of volumes and wait (console / batch use).

        Args:
            inProcess: run in Slicer's own Python (imports torch into Slicer) instead of the command line in a
                background process.
        Returns:
            One :class:`.results.PredictionNodes` per volume.
        Raises:
            RuntimeError: the background prediction failed (its message and last output lines).
        """
        if inProcess:
            return predict_nodes(volumeNodes, bundlePath, tta=tta, device=device, **showKwargs)
        job = self.startPrediction(volumeNodes, bundlePath, device=device, tta=tta, **showKwargs)
        job.wait(timeout)
        failure = job.failure_message()
        if failure:
            raise RuntimeError(failure)
        return job.results

    def cancel(self) -> bool:
        """Kill the running prediction's process tree; False if none runs."""
        return self.job.cancel() if self.job is not None else False

    def shutdown(self) -> None:
        """Slicer is quitting or the widget goes: kill the running prediction."""
        self.cancel()

    # -- display ------------------------------------------------------------------------------------------
    @staticmethod
    def updateDisplay(parameterNode) -> None:
        """Apply opacity, saliency threshold and background choice to the slice views (untouched when there is
        nothing of ours to show)."""
        p = parameterNode
        show_result_layers(p.inputVolume, p.camVolume, p.resampledVolume, p.camThreshold, p.camOpacity, p.showResampled)

    @staticmethod
    def jumpToSaliencyPeak(parameterNode) -> bool:
        """Centre the slice views on the saliency peak; False if there is no saliency map."""
        return jump_to_peak(parameterNode.camVolume if parameterNode else None)


__all__ = ["PredictionLogic"]

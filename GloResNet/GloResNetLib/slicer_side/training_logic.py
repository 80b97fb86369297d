"""What the GloResNetTraining module's logic does, without Qt: parameters <-> the parameter node, the scene
dataset, the dataset check and the training in background processes (stopped, resumed, cancelled), the live
nodes, and opening the trained model in the GloResNet module.

:class:`TrainingLogic` is mixed into ``GloResNetTrainingLogic`` (before ``ScriptedLoadableModuleLogic``), which
adds the parameter node and the dependency installer. From Slicer's Python console::

    logic = slicer.util.getModuleLogic("GloResNetTraining")
    params = TrainingParameters.cpu_demo(manifest="cohort/manifest.csv", output_folder="runs")
    job = logic.train(params)  # blocks; logic.startTraining(params) + logic.poll() do not
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import slicer

from ..errors import InputError
from . import views
from .common import PREDICT_MODULE, models_folder, predict_logic
from .scene_dataset import export_scene_dataset, scene_cases
from .training_jobs import DatasetCheck, TrainingJob, pick_heldout_case, resume_training, start_training
from .training_monitor import TrainingMonitor, format_duration
from .training_params import GUI_FIELDS, TrainingParameters, can_resume


@dataclass
class Outcome:
    """How a training ended, for the GUI: the status line; an error title and its details to show; whether to
    offer resuming on the CPU instead (GPU out of memory or missing)."""

    status: str
    error: str | None = None
    detail: str | None = None
    offerCpu: bool = False


class TrainingLogic:
    """Parameters, dataset, background jobs and results of the GloResNetTraining module (no Qt)."""

    job = None
    check = None
    _killAt = None
    _shownRun = None

    def __init__(self) -> None:
        self.monitor = TrainingMonitor(models_folder=None)

    @staticmethod
    def modelsFolder() -> Path:
        """The GloResNet module's models folder (setting 'GloResNet/ModelsFolder'), where it lists models."""
        return models_folder()

    # -- parameters ---------------------------------------------------------------------------------------
    @staticmethod
    def parametersFrom(p) -> TrainingParameters:
        """TrainingParameters from the parameter node."""
        return TrainingParameters.from_gui({name: getattr(p, name) for name in GUI_FIELDS})

    @staticmethod
    def setParameters(p, params) -> None:
        """Write TrainingParameters into the parameter node."""
        for name, value in params.to_gui().items():
            if getattr(p, name) != value:
                setattr(p, name, value)

    def applyPreset(self, p, name: str) -> None:
        """Paper defaults ("paper") or CPU demo settings ("cpu") in the parameter node (the dataset, output and
        seed are kept)."""
        params = self.parametersFrom(p)
        self.setParameters(p, params.apply_cpu_demo() if name == "cpu" else params.apply_paper_defaults())

    def prepareParameters(self, p) -> TrainingParameters:
        """The parameter node's parameters, validated, with a run name (written back) and, for the scene source,
        the labelled volumes exported.

        Raises:
            GloResNetError, OSError: what is wrong, in one line.
        """
        params = self.parametersFrom(p).with_run_name()
        if p.runName != params.run_name:
            p.runName = params.run_name
        params.validate()
        self.exportSceneDataset(params, p.labelsTable)
        return params

    @staticmethod
    def resumableRun(p) -> str:
        """The run Resume continues: the last one, else the output folder's run of this name; "" if none."""
        named = str(Path(p.outputFolder) / p.runName.strip()) if p.outputFolder and p.runName.strip() else ""
        return next((run for run in (p.runDir, named) if can_resume(run)), "")

    @staticmethod
    def exportSceneDataset(params: TrainingParameters, labelsTable) -> Path | None:
        """For the scene source: write the labelled volumes and their manifest beside the run folder.

        Returns:
            The manifest's path; None for the other sources.
        Raises:
            InputError: no labels table, no labelled volume, a single class, a volume gone from the scene.
        """
        if params.source != "scene":
            return None
        if labelsTable is None:
            raise InputError("no labels table: add the scene's volumes and type their labels first")
        return export_scene_dataset(scene_cases(labelsTable), params.scene_data_dir, params.synthetic)

    # -- running ------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        """A training process runs."""
        return self.job is not None and self.job.running

    @property
    def busy(self) -> bool:
        """A training or a dataset check runs (nothing else may start)."""
        return self.running or (self.check is not None and self.check.running)

    def startCheck(self, params):
        """Run the dataset check in the background (returns the DatasetCheck to poll)."""
        if self.busy:
            raise RuntimeError("A training or dataset check is already running.")
        self.check = DatasetCheck(params).start()
        return self.check

    def startTraining(self, params):
        """Start ``gloresnet train`` in the background (returns the TrainingJob; poll with :meth:`poll`)."""
        if self.busy:
            raise RuntimeError("A training is already running.")
        self.monitor = TrainingMonitor(models_folder=self.modelsFolder())
        self.job = start_training(params, self.monitor)
        self._killAt = None
        return self.job

    def resume(self, runDir, device=None):
        """Continue a stopped run (``gloresnet train --resume RUN_DIR``)."""
        if self.busy:
            raise RuntimeError("A training is already running.")
        if Path(runDir, "bundle", "metadata.json").is_file():
            raise InputError(f"{runDir} is finished: nothing to resume")
        if self.monitor.run_dir != Path(runDir).resolve():  # else keep the curves seen before the stop
            self.monitor = TrainingMonitor()
        self.monitor.models_folder = self.modelsFolder()
        self.job = resume_training(runDir, self.monitor, device=device)
        self._killAt = None
        return self.job

    def poll(self) -> list:
        """Events of the running job (nodes updated); kills a job that ignored a stop for too long."""
        if self.job is None:
            return []
        if self._killAt is not None and self.job.running and time.monotonic() > self._killAt:
            self.job.cancel()
        return self.job.poll()

    def follow(self, p) -> tuple[list, DatasetCheck | None, TrainingJob | None]:
        """Poll the dataset check and the training (from the GUI timer); the live nodes go to the parameter node.

        Returns:
            (the events, log lines included; the check if it just finished, else None; the training job if it
            just finished, else None). A finished job is no longer the logic's ``check`` / ``job``.
        """
        events, checked, trained = [], None, None
        check = self.check
        if check is not None:
            events += check.poll()
            if check.finished:
                self.check, checked = None, check
        job = self.job
        if job is not None:
            events += self.poll()
            self.keepLiveNodes(job, p)
            if job.finished:
                self.job, trained = None, job
        return events, checked, trained

    def progressText(self, job) -> str:
        """The monitor's status and the time ``job`` has run."""
        return f"{self.monitor.status} ({format_duration(job.elapsed_s)})"

    def train(self, params, timeout=None):
        """Train and wait (console / scripts): returns the finished TrainingJob."""
        job = self.startTraining(params)
        try:
            job.wait(timeout)
        finally:
            self.job = None
        return job

    def stop(self) -> bool:
        """Ask the training to stop cleanly (checkpoint kept, resumable); False if none runs."""
        return self.job.stop() if self.job is not None else False

    def cancel(self) -> bool:
        """Kill the training and the dataset check now (work since the last checkpoint is lost); True if one ran."""
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

    @staticmethod
    def checkResult(check: DatasetCheck) -> tuple[str, str, bool]:
        """What a finished dataset check says.

        Returns:
            (report text, status line, whether the dataset can be trained on).
        """
        if check.process.cancelled:
            return "Dataset check cancelled.", "Cancelled.", False
        if not check.ok:
            return check.text(), "The dataset check found problems: nothing was trained.", False
        return check.text(), f"Dataset checked: {check.report.get('summary', '')}", True

    def finishTraining(self, job, p) -> Outcome:
        """Record a finished training in the parameter node (run folder, live nodes; when done the registered
        bundle and a held-out case to inspect) and say how it ended.

        Args:
            job: the finished :class:`.training_jobs.TrainingJob`. p: the parameter node (None: scene closed).
        """
        monitor = self.monitor
        if p:
            self.keepLiveNodes(job, p)
            p.runDir = str(job.run_dir or p.runDir)
        outcome = job.outcome
        if outcome == "done":
            if p and monitor.registered:
                p.bundlePath = str(monitor.registered)
                case = pick_heldout_case(job.run_dir)
                p.heldOutCase = str(case.path) if case else ""
            return Outcome(monitor.status, error=monitor.registration_error)
        if outcome == "stopped":
            return Outcome(monitor.status if job.resumable else "Stopped before training: Start again.")
        if outcome == "cancelled":
            return Outcome(
                "Cancelled. Resume continues from the last saved checkpoint." if job.resumable else "Cancelled."
            )
        diagnosis = job.diagnosis()
        message = job.failure_message() or "The training failed."
        return Outcome(
            diagnosis.message if diagnosis else message.splitlines()[0],
            error="GloResNet training failed.",
            detail=message,
            offerCpu=bool(diagnosis is not None and diagnosis.offer_cpu and job.resumable),
        )

    def keepLiveNodes(self, job, p) -> None:
        """Once the first curves exist: keep them in the parameter node and show them (once per run)."""
        nodes = self.monitor.nodes()
        if not p or nodes["loss_chart"] is None or job.monitor is None:
            return
        p.metricsTable, p.lossChart, p.metricChart = (
            nodes["metrics_table"],
            nodes["loss_chart"],
            nodes["metric_chart"],
        )
        if self._shownRun != job.run_dir:
            self._shownRun = job.run_dir
            self.showResults(p)

    # -- results ------------------------------------------------------------------------------------------
    def showResults(self, p) -> None:
        """Loss and metric charts side by side over the metrics table (a layout of their own), each in the view
        node its layout names (views.show_training_results), not the layout manager's n-th view."""
        nodes = self.monitor.nodes()
        views.show_training_results(
            slicer.app.layoutManager().layoutLogic().GetLayoutNode(),
            loss_chart=nodes["loss_chart"] or p.lossChart,
            metric_chart=nodes["metric_chart"] or p.metricChart,
            metrics_table=nodes["metrics_table"] or p.metricsTable,
        )

    @staticmethod
    def openInGloResNet(bundlePath, casePath=None):
        """Select the model (and load the held-out case) in the GloResNet module and switch to it."""
        volume = slicer.util.loadVolume(str(casePath)) if casePath else None
        predict = predict_logic().getParameterNode()
        predict.modelPath = str(bundlePath)
        if volume is not None:
            predict.inputVolume = volume
        slicer.util.selectModule(PREDICT_MODULE)
        return volume


__all__ = ["Outcome", "TrainingLogic"]

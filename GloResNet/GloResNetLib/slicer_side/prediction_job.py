"""One background ``gloresnet predict`` run over volume nodes (:class:`PredictionJob`)."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..progress_events import ERROR, STAGE
from .background import PROCESS_EXIT, RESULT
from .command import predict_args
from .files import safe_name
from .jobs import Job
from .results import PredictionNodes, add_prediction_record
from .volumes import check_volume_node, write_volume_file

#: The saliency methods of ``gloresnet predict --saliency`` (:data:`GloResNetLib.inference.SALIENCY_METHODS`,
#: repeated here because importing inference imports torch; a test checks that the two agree).
SALIENCY_METHODS = ("gradcam", "gradient", "occlusion", "both", "all")


def check_saliency(saliency: str) -> str:
    """``saliency`` if it is one of :data:`SALIENCY_METHODS` or a comma list of them, else :class:`InputError`."""
    parts = [p.strip() for p in str(saliency).split(",")]
    if not all(p in SALIENCY_METHODS for p in parts):
        raise InputError(
            f"unknown saliency method {saliency!r} (choose from {', '.join(SALIENCY_METHODS)} or a comma list)"
        )
    return ",".join(parts)


class PredictionJob(Job):
    """One background ``gloresnet predict`` run over volume nodes; results become nodes as they arrive.

    The volumes are written with Slicer's writer to a temporary folder, the command line runs with Slicer's
    Python (a :class:`.jobs.Job`), and :meth:`poll` (from a GUI timer) or :meth:`wait` (console) turns its
    events into :class:`PredictionNodes`. Extra keyword arguments go to :func:`.results.show_prediction`.
    """

    def __init__(
        self,
        volume_nodes: Iterable,
        bundle_path: str | Path,
        device: str = "auto",
        tta: bool = True,
        cam: bool = True,
        work_dir: str | Path | None = None,
        python: str | None = None,
        keep_files: bool = False,
        saliency: str = "gradcam",
        occlusion_mask: int | None = None,
        **show_kwargs: Any,
    ) -> None:
        super().__init__(python=python)
        self.nodes = list(volume_nodes)
        if not self.nodes:
            raise InputError("no input volume selected")
        for node in self.nodes:
            check_volume_node(node)
        bundle_path = Path(bundle_path)
        if not (bundle_path / "metadata.json").is_file():
            raise InputError(f"{bundle_path}: not a model bundle (no metadata.json)")
        self.bundle_path = bundle_path
        self.device, self.tta, self.cam = device or "auto", tta, cam
        self.saliency, self.occlusion_mask = check_saliency(saliency), occlusion_mask
        self.keep_files = keep_files
        self.show_kwargs = show_kwargs
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.results: list[PredictionNodes] = []
        self.errors: list[tuple[str, str]] = []
        self.stage = "not started"
        self.fraction = 0.0
        self._by_path: dict[str, Any] = {}

    # -- running ------------------------------------------------------------------------------------------
    name = "gloresnet predict"

    def start(self) -> PredictionJob:
        """Write the inputs and start the background process (returns at once).

        Returns:
            self.
        Raises:
            RuntimeError: already started. InputError: a volume cannot be written. OSError: no Python to run.
        """
        if self.process is not None:
            raise RuntimeError("prediction already started")
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="GloResNet-predict-"))
        inputs = []
        self.stage = "writing input volumes"
        try:
            for index, node in enumerate(self.nodes):
                path = (self.work_dir / "inputs" / f"{index:03d}_{safe_name(node.GetName())}.nii").resolve()
                write_volume_file(node, path)
                self._by_path[str(path)] = node
                inputs.append(path)
            out = (self.work_dir / "outputs").resolve()
            self.args = predict_args(
                inputs,
                self.bundle_path.resolve(),
                out,
                device=self.device,
                tta=self.tta,
                cam=self.cam,
                saliency=self.saliency,
                occlusion_mask=self.occlusion_mask,
            )
            super().start()
        except BaseException:
            self._cleanup()
            raise
        self.stage = "starting"
        return self

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        total = len(self.nodes)
        if kind == STAGE:
            index = event.get("index")
            if isinstance(index, int) and 0 <= index < total:
                what = "occlusion of" if str(event.get("stage", "")).startswith("occlusion") else "predicting"
                self.stage = f"{what} {self.nodes[index].GetName()} ({index + 1}/{total})"
            else:
                self.stage = str(event.get("stage", ""))
            self.fraction = max(self.fraction, float(event.get("fraction", self.fraction)))
        elif kind == RESULT:
            record = event["record"]
            node = self._by_path.get(str(Path(record.get("input", ""))))
            if node is None:
                return
            try:
                self.results.append(add_prediction_record(node, record, **self.show_kwargs))
            except InputError as exc:
                self.errors.append((node.GetName(), str(exc)))
            self.fraction = max(self.fraction, (len(self.results) + len(self.errors)) / total)
        elif kind == ERROR:
            node = self._by_path.get(str(Path(str(event.get("input", "")))))
            self.errors.append(
                (node.GetName() if node is not None else str(event.get("input", "")), str(event.get("message", "")))
            )
        elif kind == PROCESS_EXIT:
            self.fraction = 1.0
            self.stage = "cancelled" if event.get("cancelled") else ("done" if self.succeeded else "failed")
            self._cleanup()

    def wait(self, timeout: float | None = None) -> list[PredictionNodes]:
        """Block until the run ends (console / batch use); a timeout cancels it.

        Args:
            timeout: seconds before the run is cancelled and :class:`TimeoutError` raised; None: no limit.
        Returns:
            The result nodes.
        """
        try:
            super().wait(timeout)
        except TimeoutError:
            self.cancel()
            raise
        return self.results

    # -- state --------------------------------------------------------------------------------------------
    @property
    def succeeded(self) -> bool:
        """Exit code 0, no error, one result per input volume."""
        return (
            self.finished and self.process.returncode == 0 and not self.errors and len(self.results) == len(self.nodes)
        )

    def _error_messages(self) -> list[str]:
        return [m for _, m in self.errors]

    def _failure_lines(self, diagnosis) -> list[str]:
        return [f"{name}: {msg}" for name, msg in self.errors if msg not in diagnosis.message]

    def _cleanup(self) -> None:
        if self._own_dir and not self.keep_files and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)


__all__ = ["SALIENCY_METHODS", "PredictionJob", "check_saliency"]

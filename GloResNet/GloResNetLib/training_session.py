"""Training from Slicer: ``gloresnet train`` in a background process, followed live in MRML nodes (no Qt).

The GloResNetTraining module's Logic stays thin; everything it does is here and tested with real MRML nodes
(slicer-core):

- :class:`TrainingParameters` (the GUI's choices; defaults = the paper's, :meth:`~TrainingParameters.cpu_demo`
  = CPU-sized settings) -> :func:`train_args` / :func:`resume_args` / :func:`check_args`, the arguments of the
  same ``gloresnet train ... --progress-json`` command a researcher runs in a terminal;
- a dataset: CSV manifest, dHCP folder, or volumes of the scene with labels typed into a table node
  (:func:`labels_table`, :func:`fill_labels_table`, :func:`scene_cases`), written as NIfTI files and a
  manifest next to the run folder by :func:`export_scene_dataset` (kept there: a stopped run can be resumed);
- :class:`DatasetCheck`: ``gloresnet train --check-only`` in the background (reads and decodes every image);
- :class:`TrainingJob`: the training process (started by :func:`start_training` / :func:`resume_training`
  through :mod:`GloResNetLib.process`, the helper the predict module uses), stopped cleanly with SIGINT (the
  run saves a checkpoint and exits 130), resumed with ``--resume RUN_DIR``, or cancelled (process tree
  killed);
- :class:`TrainingMonitor`: turns progress events into nodes updated in place: per-fold curve tables, a loss
  chart and a validation-metric chart, a cross-validation metrics table (per fold, mean, sd, best); on
  ``done`` it registers the ensemble bundle in the models folder (:func:`register_run_bundle`) so the
  GloResNet module lists it, and :func:`pick_heldout_case` chooses a case to inspect there.

Only :class:`TrainingMonitor` and the scene-dataset functions need ``slicer`` (through :mod:`.mrml`); the rest
is plain Python and never imports torch.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import json
import math
import os
import re
import shutil
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import process
from .errors import InputError
from .slicer_side.paths import check_training_paths
from .training.config import TrainConfig
from .training.metrics import SUMMARY_METRICS, summarize

_DEFAULTS = TrainConfig()

#: Architectures offered by the GUI (``gloresnet train --arch``; every name of ``models.ARCHITECTURES``, listed
#: here so that the module loads before PyTorch is installed; a test checks that the two agree).
ARCHITECTURES = ("resnet10", "resnet10_dilated", "resnet18", "mrf_dsnet", "acs_resnet18", "slice_resnet18")
#: Network width presets -> ``--widths`` (None: the architecture's default, MedicalNet's 64,128,256,512). The
#: numbers are the ResNets' stage widths; mrf_dsnet's own default is 32,64,128,256 ("half").
WIDTH_PRESETS: dict[str, tuple[int, int, int, int] | None] = {
    "full": None,
    "half": (32, 64, 128, 256),
    "quarter": (16, 32, 64, 128),
    "eighth": (8, 16, 32, 64),
}
SOURCES = ("manifest", "dhcp", "scene")
#: GUI labels of the dataset sources.
SOURCE_LABELS = {"CSV manifest": "manifest", "dHCP folder": "dhcp", "Volumes in the scene": "scene"}
DEVICES = ("auto", "cpu", "cuda")
#: Parameter-node field of the GloResNetTraining module -> :class:`TrainingParameters` field.
GUI_FIELDS = {"source": "source", "manifestPath": "manifest", "dhcpFolder": "dhcp",
              "outputFolder": "output_folder", "runName": "run_name", "arch": "arch", "width": "widths",
              "folds": "folds", "epochs": "epochs", "batchSize": "batch_size", "learningRate": "lr",
              "mixupAlpha": "mixup_alpha", "classWeights": "class_weights", "inputSize": "size",
              "pretrainedPath": "pretrained", "device": "device", "seed": "seed",
              "syntheticData": "synthetic"}
#: Python packages training needs in Slicer's Python besides the predict module's requirements and PyTorch
#: (also in ``GloResNetTraining/Resources/GloResNetTraining-requirements.txt``; added if a file lacks them).
TRAINING_REQUIREMENTS = ("scikit-learn>=1.3", "matplotlib>=3.7")
#: Exit code of ``gloresnet train`` stopped by Ctrl-C / SIGINT after saving a checkpoint.
STOPPED_EXIT_CODE = 130

TRAINING_ROLE = "GloResNetTraining"
LABELS_ROLE = "GloResNetTrainingLabels"
PREFIX = "GloResNet training"
LABEL_COLUMNS = {"Volume": "string", "Label": "string", "Subject": "string", "Session": "string",
                 "Node ID": "string"}
CURVE_COLUMNS = {"Epoch": "double", "Training loss": "double", "Validation loss": "double",
                 "Validation AUC": "double", "Validation accuracy": "double", "Learning rate": "double"}
METRIC_NAMES = {"accuracy": "Accuracy", "balanced_accuracy": "Balanced accuracy",
                "sensitivity": "Sensitivity", "specificity": "Specificity", "auc": "AUC", "f1": "F1"}
HISTORY_KEYS = ("train_loss", "val_loss", "val_auc", "val_accuracy", "lr")
FOLD_COLORS = ((0.12, 0.47, 0.71), (1.0, 0.5, 0.05), (0.17, 0.63, 0.17), (0.84, 0.15, 0.16),
               (0.58, 0.4, 0.74), (0.55, 0.34, 0.29), (0.89, 0.47, 0.76), (0.5, 0.5, 0.5),
               (0.74, 0.74, 0.13), (0.09, 0.75, 0.81))


# ------------------------------------------------------------------------------------------------------------
# Parameters -> command line
# ------------------------------------------------------------------------------------------------------------

def default_run_name(now: _dt.datetime | None = None) -> str:
    """``gloresnet-YYYYmmdd-HHMMSS``."""
    return f"gloresnet-{(now or _dt.datetime.now()):%Y%m%d-%H%M%S}"


@dataclass
class TrainingParameters:
    """What the researcher chooses in the GloResNetTraining module (defaults: the paper's settings).

    ``source`` is "manifest" (``manifest``: CSV file), "dhcp" (``dhcp``: BIDS folder) or "scene" (volumes of
    the scene, exported by :func:`export_scene_dataset` to :attr:`scene_data_dir`). The run folder is
    ``output_folder/run_name``.
    """

    source: str = "manifest"
    manifest: str = ""
    dhcp: str = ""
    output_folder: str = ""
    run_name: str = ""
    arch: str = _DEFAULTS.arch
    widths: tuple[int, ...] | None = None
    folds: int = _DEFAULTS.folds
    epochs: int = _DEFAULTS.epochs
    batch_size: int = _DEFAULTS.batch_size
    lr: float = _DEFAULTS.lr
    mixup_alpha: float = _DEFAULTS.mixup_alpha
    class_weights: bool = _DEFAULTS.class_weights
    size: int = _DEFAULTS.size
    pretrained: str = ""
    device: str = _DEFAULTS.device
    seed: int = _DEFAULTS.seed
    synthetic: bool = False
    num_threads: int | None = None
    cache_dir: str = ""
    tensorboard: bool = True
    extra_args: tuple[str, ...] = ()

    @classmethod
    def cpu_demo(cls, **changes: Any) -> TrainingParameters:
        """CPU-sized settings: 64^3 input, dilated ResNet-10 at a quarter of the width (an 8^3 Grad-CAM grid),
        30 epochs, batch 8, 5 folds, no MedicalNet weights (they need full width). ``gloresnet demo`` uses the
        strided ResNet-10 with Grad-CAM on ``layer1`` instead (``--arch-params '{"cam_layer": "layer1"}'``, not
        a GUI field)."""
        return cls().apply_cpu_demo().replace(**changes)

    def apply_cpu_demo(self) -> TrainingParameters:
        """These parameters with the CPU demo settings (dataset, output, seed and flags kept)."""
        return self.replace(arch="resnet10_dilated", widths=WIDTH_PRESETS["quarter"], folds=5, epochs=30,
                            batch_size=8, lr=2e-3, mixup_alpha=1.0, class_weights=True, size=64,
                            pretrained="", device="cpu")

    def apply_paper_defaults(self) -> TrainingParameters:
        """These parameters with the paper's training settings (dataset, output, seed and flags kept)."""
        return self.replace(arch=_DEFAULTS.arch, widths=None, folds=_DEFAULTS.folds, epochs=_DEFAULTS.epochs,
                            batch_size=_DEFAULTS.batch_size, lr=_DEFAULTS.lr,
                            mixup_alpha=_DEFAULTS.mixup_alpha, class_weights=_DEFAULTS.class_weights,
                            size=_DEFAULTS.size, device=_DEFAULTS.device)

    def replace(self, **changes: Any) -> TrainingParameters:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_gui(cls, values: Mapping[str, Any]) -> TrainingParameters:
        """From the module's parameter-node fields (:data:`GUI_FIELDS`; source and width as shown)."""
        kw = {field: values[name] for name, field in GUI_FIELDS.items() if name in values}
        if "source" in kw:
            kw["source"] = SOURCE_LABELS.get(kw["source"], kw["source"])
        if "widths" in kw:
            kw["widths"] = WIDTH_PRESETS[kw["widths"]] if isinstance(kw["widths"], str) else kw["widths"]
        for name in ("run_name", "manifest", "dhcp", "output_folder", "pretrained"):  # path fields hold the text
            if name in kw:
                kw[name] = str(kw[name]).strip()
        return cls(**kw)

    def to_gui(self) -> dict[str, Any]:
        """The module's parameter-node fields for these parameters (inverse of :meth:`from_gui`)."""
        values = {name: getattr(self, field) for name, field in GUI_FIELDS.items()}
        values["source"] = {v: k for k, v in SOURCE_LABELS.items()}[self.source]
        widths = tuple(self.widths) if self.widths else None
        names = {v: k for k, v in WIDTH_PRESETS.items()}
        if widths not in names:
            raise InputError(f"network widths {widths} are not a preset of the GUI ({list(WIDTH_PRESETS)})")
        values["width"] = names[widths]
        return values

    def with_run_name(self, now: _dt.datetime | None = None) -> TrainingParameters:
        """These parameters with a run name (:func:`default_run_name` if none was given)."""
        return self if self.run_name.strip() else self.replace(run_name=default_run_name(now))

    @property
    def run_dir(self) -> Path:
        """The run folder ``output_folder/run_name`` (absolute)."""
        if not self.output_folder:
            raise InputError("no output folder chosen")
        if not self.run_name.strip():
            raise InputError("no run name given")
        return (Path(self.output_folder).expanduser() / self.run_name.strip()).resolve()

    @property
    def scene_data_dir(self) -> Path:
        """Where scene volumes are exported: beside the run folder (``RUN_NAME-scene-data``), kept."""
        run_dir = self.run_dir
        return run_dir.parent / f"{run_dir.name}-scene-data"

    def dataset_path(self) -> Path:
        """The manifest or dHCP folder the command line reads (scene: the exported manifest)."""
        if self.source == "manifest":
            if not self.manifest:
                raise InputError("no CSV manifest chosen")
            return Path(self.manifest).expanduser().resolve()
        if self.source == "dhcp":
            if not self.dhcp:
                raise InputError("no dHCP folder chosen")
            return Path(self.dhcp).expanduser().resolve()
        if self.source == "scene":
            return self.scene_data_dir / "manifest.csv"
        raise InputError(f"unknown dataset source '{self.source}' (one of {', '.join(SOURCES)})")

    def config(self) -> TrainConfig:
        """The :class:`~GloResNetLib.training.config.TrainConfig` the command line builds from these."""
        data = self.dataset_path()
        return TrainConfig(
            manifest=None if self.source == "dhcp" else str(data),
            dhcp=str(data) if self.source == "dhcp" else None,
            out=str(self.run_dir), arch=self.arch,
            arch_params={"widths": list(self.widths)} if self.widths else {}, folds=int(self.folds),
            epochs=int(self.epochs), batch_size=int(self.batch_size), lr=float(self.lr),
            mixup_alpha=float(self.mixup_alpha), class_weights=bool(self.class_weights), size=int(self.size),
            pretrained=self.pretrained or None, device=self.device, seed=int(self.seed),
            synthetic=bool(self.synthetic), num_threads=self.num_threads, cache_dir=self.cache_dir or None,
            tensorboard=self.tensorboard, progress_json=True)

    def validate(self, check_files: bool = True) -> TrainingParameters:
        """Refuse bad values with the command line's own messages (:class:`InputError`), before any run."""
        if self.arch not in ARCHITECTURES:
            raise InputError(f"unknown architecture '{self.arch}' (one of {', '.join(ARCHITECTURES)})")
        if self.device not in DEVICES:
            raise InputError(f"device must be one of {', '.join(DEVICES)}")
        if self.widths is not None and (len(self.widths) != 4 or min(self.widths) < 1):
            raise InputError("network widths need 4 positive integers")
        medicalnet = self.pretrained and not str(self.pretrained).endswith(".safetensors")  # pretrain-age: any
        if medicalnet and self.widths and tuple(self.widths) != (64, 128, 256, 512):
            raise InputError("MedicalNet weights need the full network width (64,128,256,512)")
        if self.run_name and (Path(self.run_name).name != self.run_name or self.run_name in (".", "..")):
            raise InputError(f"run name '{self.run_name}' must be a plain folder name")
        self.config().validate()
        if check_files:
            data = self.dataset_path()
            if self.source == "manifest" and not data.is_file():
                raise InputError(f"{data}: manifest not found")
            if self.source == "dhcp" and not data.is_dir():
                raise InputError(f"{data}: dHCP folder not found")
            if self.pretrained and not Path(self.pretrained).expanduser().is_file():
                raise InputError(f"{self.pretrained}: pretrained weights file not found")
            check_training_paths({name: getattr(self, f) for name, f in GUI_FIELDS.items()}, self.source)
            run_dir = self.run_dir
            if run_dir.exists() and any(p.name != "train.log" for p in run_dir.iterdir()):
                raise InputError(f"{run_dir} already exists and is not empty: choose another run name "
                                 "(or Resume that run)")
        return self


def _data_args(p: TrainingParameters) -> list[str]:
    data = p.dataset_path()
    return ["--dhcp", str(data)] if p.source == "dhcp" else ["--manifest", str(data)]


def train_args(p: TrainingParameters) -> list[str]:
    """Arguments of ``gloresnet train`` for these parameters, with JSON progress events on stdout."""
    args = ["train", *_data_args(p), "--out", str(p.run_dir), "--arch", p.arch]
    if p.widths:
        args += ["--widths", ",".join(str(int(w)) for w in p.widths)]
    args += ["--folds", str(int(p.folds)), "--epochs", str(int(p.epochs)),
             "--batch-size", str(int(p.batch_size)), "--lr", repr(float(p.lr)),
             "--mixup-alpha", repr(float(p.mixup_alpha)), "--size", str(int(p.size)),
             "--device", p.device or "auto", "--seed", str(int(p.seed))]
    if not p.class_weights:
        args.append("--no-class-weights")
    if p.pretrained:
        args += ["--pretrained", str(Path(p.pretrained).expanduser().resolve())]
    if p.synthetic:
        args.append("--synthetic")
    args += _job_args(p.num_threads, p.cache_dir, p.tensorboard)
    return [*args, *p.extra_args, "--progress-json"]


def _job_args(num_threads: int | None, cache_dir: str | None, tensorboard: bool = True) -> list[str]:
    args = []
    if num_threads:
        args += ["--num-threads", str(int(num_threads))]
    if cache_dir:
        args += ["--cache-dir", str(Path(cache_dir).expanduser().resolve())]
    if not tensorboard:
        args.append("--no-tensorboard")
    return args


def resume_args(run_dir: str | os.PathLike, device: str | None = None, num_threads: int | None = None,
                cache_dir: str | None = None, tensorboard: bool = True) -> list[str]:
    """Arguments continuing a stopped run (its own stored options; only how it runs may change)."""
    args = ["train", "--resume", str(Path(run_dir).expanduser().resolve())]
    if device:
        args += ["--device", device]
    return [*args, *_job_args(num_threads, cache_dir, tensorboard), "--progress-json"]


def check_args(p: TrainingParameters) -> list[str]:
    """Arguments of the dataset check (``--check-only``: every image read and decoded, the report as JSON;
    the preprocessing cache it fills at this input size is the one training reads)."""
    return ["train", *_data_args(p), "--check-only", "--size", str(int(p.size)),
            *_job_args(None, p.cache_dir), "--progress-json"]


def can_resume(run_dir: str | os.PathLike | None) -> bool:
    """True when ``run_dir`` holds a training run that is not finished (``config.json``, no ``bundle/``)."""
    if not run_dir:
        return False
    run_dir = Path(run_dir)
    return (run_dir / "config.json").is_file() and not (run_dir / "bundle" / "metadata.json").is_file()


def read_requirements(requirements_file: str | os.PathLike | None = None) -> list[str]:
    """What training needs in Slicer's Python: the file's requirements plus :data:`TRAINING_REQUIREMENTS`."""
    reqs = process.read_requirements(requirements_file) if requirements_file and Path(
        requirements_file).is_file() else []
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in reqs}
    extra = [r for r in TRAINING_REQUIREMENTS if re.split(r"[<>=!~]", r, maxsplit=1)[0].lower() not in names]
    return reqs + extra


# ------------------------------------------------------------------------------------------------------------
# Dataset from scene volumes
# ------------------------------------------------------------------------------------------------------------

@dataclass
class SceneCase:
    """A volume node of the scene with its label (0 no BI, 1 BI), subject and session."""

    node: Any
    label: int
    subject: str
    session: str = ""


def parse_label(text: Any) -> int | None:
    """0 / 1 from what a user types ("0", "1", "no BI", "BI", "no", "yes"); None for an empty cell.
    Anything else raises :class:`InputError`."""
    value = str(text if text is not None else "").strip().lower()
    if value in ("", "nan", "-", "?"):
        return None
    if value in ("0", "0.0", "no bi", "no", "normal", "n", "false"):
        return 0
    if value in ("1", "1.0", "bi", "yes", "injury", "y", "true"):
        return 1
    raise InputError(f"label '{text}' is not 0 / 'no BI' or 1 / 'BI'")


def labels_table(scene=None, name: str = f"{PREFIX} labels"):
    """The table node where labels of scene volumes are typed (Volume, Label, Subject, Session, Node ID)."""
    from . import mrml

    scene = mrml.get_scene(scene)
    node = mrml.find_node(scene, "vtkMRMLTableNode", LABELS_ROLE)
    if node is None:
        node = mrml.table_from_columns(name, {c: [] for c in LABEL_COLUMNS}, scene=scene, types=LABEL_COLUMNS,
                                       role=LABELS_ROLE)
    return node


def candidate_volumes(scene=None) -> list:
    """Scalar volumes that can be training inputs (GloResNet outputs and label maps left out)."""
    from . import mrml

    scene = mrml.get_scene(scene)
    nodes = [scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
             for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))]
    return [n for n in nodes
            if not n.GetAttribute(mrml.ROLE_ATTRIBUTE) and not n.IsA("vtkMRMLLabelMapVolumeNode")]


def fill_labels_table(table, volume_nodes: Iterable | None = None,
                      labels: Mapping[str, Any] | None = None) -> int:
    """Add a row for each volume not yet listed (label empty unless ``labels[name]`` is given; subject =
    volume name), keep the rows typed so far; returns the number of rows added."""
    from . import mrml

    scene = table.GetScene()
    nodes = list(volume_nodes) if volume_nodes is not None else candidate_volumes(scene)
    listed = set(mrml.table_column(table, "Node ID")) if table.GetNumberOfRows() else set()
    added = 0
    for node in nodes:
        if node.GetID() in listed:
            continue
        label = (labels or {}).get(node.GetName(), "")
        mrml.append_table_row(table, {"Volume": node.GetName(), "Label": "" if label is None else str(label),
                                      "Subject": node.GetName(), "Session": "", "Node ID": node.GetID()})
        added += 1
    return added


def scene_cases(table, scene=None) -> list[SceneCase]:
    """The labelled rows of the labels table as :class:`SceneCase` (unlabelled rows are skipped; an unknown
    label or a volume no longer in the scene raises :class:`InputError` naming the row)."""
    from . import mrml

    scene = mrml.get_scene(scene if scene is not None else table.GetScene())
    cases = []
    for index, row in enumerate(mrml.table_rows(table), start=1):
        try:
            label = parse_label(row.get("Label"))
        except InputError as exc:
            raise InputError(f"labels table row {index} ({row.get('Volume')}): {exc}") from None
        if label is None:
            continue
        node = scene.GetNodeByID(row.get("Node ID") or "") if row.get("Node ID") else None
        if node is None:
            found = scene.GetNodesByClassByName("vtkMRMLScalarVolumeNode", str(row.get("Volume")))
            node = found.GetItemAsObject(0) if found.GetNumberOfItems() == 1 else None
        if node is None:
            raise InputError(f"labels table row {index}: volume '{row.get('Volume')}' is not in the scene")
        subject = str(row.get("Subject") or "").strip() or node.GetName()
        cases.append(SceneCase(node, label, subject, str(row.get("Session") or "").strip()))
    return cases


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:60] or "volume"


def export_scene_dataset(cases: Sequence[SceneCase], folder: str | os.PathLike,
                         synthetic: bool = False) -> Path:
    """Write each case's volume with Slicer's writer (``images/NNN_NAME.nii.gz``) and ``manifest.csv``
    (path, label, subject, session) into ``folder``; returns the manifest. With ``synthetic`` a
    ``cohort.json`` marks the data as synthetic (the bundle then says so)."""
    from . import mrml

    if not cases:
        raise InputError("no labelled volume: type 0 (no BI) or 1 (BI) in the labels table's Label column")
    counts = [sum(c.label == k for c in cases) for k in (0, 1)]
    if min(counts) == 0:
        raise InputError(f"the labelled volumes need both classes (no BI: {counts[0]}, BI: {counts[1]})")
    folder = Path(folder)
    for case in cases:
        mrml.check_volume_node(case.node)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, case in enumerate(cases):
        rel = f"images/{index:03d}_{_safe_name(case.node.GetName())}.nii.gz"
        mrml.write_volume_file(case.node, folder / rel)
        rows.append({"path": rel, "label": case.label, "subject": case.subject,
                     "session": case.session or f"v{index:03d}"})
    manifest = folder / "manifest.csv"
    tmp = manifest.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "subject", "session"])
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, manifest)
    if synthetic:
        (folder / "cohort.json").write_text(json.dumps({"synthetic": True, "source": "Slicer scene"}) + "\n",
                                            encoding="utf-8")
    return manifest


# ------------------------------------------------------------------------------------------------------------
# Background jobs
# ------------------------------------------------------------------------------------------------------------

class _Job:
    """A ``gloresnet`` child process followed from a GUI timer (:meth:`poll`) or a script (:meth:`wait`)."""

    name = "gloresnet"

    def __init__(self, args: Sequence[str], python: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.args = list(args)
        self.python = python
        self.env = dict(env or {})
        self.process: process.BackgroundProcess | None = None

    def start(self):
        if self.process is not None:
            raise RuntimeError(f"{self.name}: already started")
        self.process = process.start_gloresnet(self.args, python=self.python, env=self.env, name=self.name)
        return self

    def _handle(self, event: dict[str, Any]) -> None:  # pragma: no cover - overridden
        pass

    def poll(self) -> list[dict[str, Any]]:
        """Handle the events that arrived (non-blocking); returns them (log lines included) for display."""
        if self.process is None:
            return []
        events = self.process.poll()
        for event in events:
            self._handle(event)
        return events

    def wait(self, timeout: float | None = None, on_event=None) -> list[dict[str, Any]]:
        """Block until the process ends (scripts, tests); ``on_event(event)`` is called for each event."""
        if self.process is None:
            self.start()
        events = []
        for event in self.process.follow(timeout):
            self._handle(event)
            events.append(event)
            if on_event is not None:
                on_event(event)
        return events

    def stop(self) -> bool:
        """Ask for a clean stop (SIGINT: the run saves a checkpoint and exits 130)."""
        return self.process.stop() if self.process is not None else False

    def cancel(self, wait: float | None = None) -> bool:
        """Kill the whole process tree now."""
        return self.process.cancel(wait) if self.process is not None else False

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop cleanly, wait up to ``timeout`` seconds, then kill what is left (Slicer or scene closing)."""
        if self.process is None or not self.process.alive:
            return
        self.stop()
        deadline = time.monotonic() + timeout
        while self.process.alive and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.process.alive:
            self.cancel(wait=5.0)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def finished(self) -> bool:
        return self.process is not None and self.process.finished

    @property
    def elapsed_s(self) -> float:
        return self.process.elapsed_s if self.process is not None else 0.0

    def log_text(self, n: int = 20) -> str:
        return self.process.log_text(n) if self.process is not None else ""


def format_report(report: Mapping[str, Any]) -> str:
    """The dataset check report as text: summary, notes, problems."""
    lines = [f"Dataset ({report.get('kind', '?')}): {report.get('summary', '')}"]
    lines += [f"  note: {n}" for n in report.get("notes") or []]
    if report.get("label_rule"):
        lines.append(f"  label rule: {report['label_rule']}")
    problems = report.get("problems") or []
    if problems:
        lines.append(f"{len(problems)} problem(s) - training will refuse this dataset until they are fixed:")
        lines += [f"  - {p}" for p in problems]
    else:
        classes = report.get("classes") or {}
        if classes and min(classes.values()) == 0:
            lines.append("Only one class: training needs volumes of both classes.")
        else:
            lines.append("No problems found: ready to train.")
    return "\n".join(lines)


class DatasetCheck(_Job):
    """``gloresnet train --check-only`` in the background: the report of the dataset, before training."""

    name = "gloresnet train --check-only"

    def __init__(self, params: TrainingParameters, python: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__(check_args(params), python, env)
        self.dataset = params.dataset_path()
        self.report: dict[str, Any] | None = None

    def _handle(self, event: dict[str, Any]) -> None:
        if event.get("event") == "dataset":
            self.report = dict(event.get("report") or {})

    @property
    def ok(self) -> bool:
        """True when the check ran and found a usable dataset (no problems, both classes)."""
        if not self.finished or self.report is None or self.process.returncode != 0:
            return False
        classes = self.report.get("classes") or {}
        return not self.report.get("problems") and bool(classes) and min(classes.values()) > 0

    def text(self) -> str:
        """The report, or why there is none."""
        if self.report is not None:
            return format_report(self.report)
        if not self.finished:
            return "Checking the dataset..."
        return self.process.failure() or "The dataset check gave no report."


class TrainingJob(_Job):
    """One ``gloresnet train ... --progress-json`` process; its events go to a :class:`TrainingMonitor`."""

    name = "gloresnet train"

    def __init__(self, args: Sequence[str], monitor: TrainingMonitor | None = None,
                 run_dir: str | Path | None = None, python: str | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        super().__init__(args, python, env)
        self.monitor = monitor
        self.run_dir = Path(run_dir) if run_dir else None
        self.events_seen: dict[str, int] = {}
        self.done = False
        self.stopped = False
        self.exit: dict[str, Any] | None = None

    def _handle(self, event: dict[str, Any]) -> None:
        kind = str(event.get("event"))
        self.events_seen[kind] = self.events_seen.get(kind, 0) + 1
        if kind in ("start", "done", "stopped") and event.get("run_dir"):
            self.run_dir = Path(event["run_dir"])
        if kind == "done":
            self.done = True
        elif kind == "stopped":
            self.stopped = True
        elif kind == process.PROCESS_EXIT:
            self.exit = event
        if self.monitor is not None and kind != process.LOG:
            self.monitor.handle(event)

    @property
    def outcome(self) -> str | None:
        """None while running, else "done", "stopped", "cancelled" or "failed"."""
        if not self.finished:
            return None
        rc = self.process.returncode
        if self.process.cancelled:
            return "cancelled"
        if self.done and rc == 0 and not self.process.errors:
            return "done"
        if self.stopped or (self.process.stop_requested and rc in (0, STOPPED_EXIT_CODE)):
            return "stopped"
        return "failed"

    @property
    def resumable(self) -> bool:
        return can_resume(self.run_dir)

    def diagnosis(self) -> process.Diagnosis | None:
        """What went wrong (None while running or after success or a requested stop)."""
        if self.outcome in (None, "done", "stopped"):
            return None
        return process.diagnose(self.process.returncode, self.process.log_text(200), self.process.errors,
                                self.process.stop_requested, self.process.cancelled)

    def failure_message(self, log_lines: int = 15) -> str | None:
        """A message for the user with the last log lines (None unless the run failed)."""
        diag = self.diagnosis()
        if diag is None or diag.kind == "cancelled":
            return None
        lines = [diag.message]
        lines += [e for e in self.process.errors if e and e not in diag.message]
        if self.run_dir is not None:
            where = "resume it with Resume" if self.resumable else "see its train.log"
            lines.append(f"Run folder: {self.run_dir} ({where}).")
        tail = self.process.failure_tail(log_lines)
        if tail:
            lines += ["", "Last output:", tail]
        return "\n".join(lines)


def start_training(params: TrainingParameters, monitor: TrainingMonitor | None = None,
                   python: str | None = None, env: Mapping[str, str] | None = None,
                   validate: bool = True) -> TrainingJob:
    """Validate the parameters and start ``gloresnet train`` in the background (returns at once)."""
    params = params.with_run_name()
    if validate:
        params.validate()
    run_dir = params.run_dir
    if monitor is not None:
        monitor.reset(run_dir)
    return TrainingJob(train_args(params), monitor, run_dir, python, env).start()


def resume_training(run_dir: str | os.PathLike, monitor: TrainingMonitor | None = None,
                    device: str | None = None, python: str | None = None,
                    env: Mapping[str, str] | None = None,
                    num_threads: int | None = None, cache_dir: str | None = None) -> TrainingJob:
    """Continue a stopped (or killed) run from its checkpoints: ``gloresnet train --resume RUN_DIR``."""
    run_dir = Path(run_dir).expanduser().resolve()
    if not (run_dir / "config.json").is_file():
        raise InputError(f"{run_dir}: not a training run folder (no config.json) - nothing to resume; "
                         "start it again instead")
    if monitor is not None and monitor.run_dir != run_dir:
        monitor.reset(run_dir)
        monitor.load_run(run_dir)
    args = resume_args(run_dir, device, num_threads, cache_dir)
    return TrainingJob(args, monitor, run_dir, python, env).start()


# ------------------------------------------------------------------------------------------------------------
# Models folder and held-out case
# ------------------------------------------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _same_bundle(a: Path, b: Path) -> bool:
    ma, mb = _read_json(a / "metadata.json"), _read_json(b / "metadata.json")
    return bool(ma) and ma.get("created") == mb.get("created") and ma.get("weights") == mb.get("weights")


def register_run_bundle(bundle: str | os.PathLike, models_folder: str | os.PathLike, name: str | None = None,
                        verify: bool = False, python: str | None = None) -> Path:
    """Install a run's ``bundle/`` in the models folder as ``NAME`` (default: the bundle's name, i.e. the run
    folder's; ``NAME-2``... if another model has it); returns its path. Registering the same bundle again
    returns the existing copy. Copied by :func:`GloResNetLib.process.register_bundle` (checksums verified in a
    child process with ``verify``; the GloResNet module verifies them again whenever it loads the bundle)."""
    bundle = Path(bundle)
    meta = _read_json(bundle / "metadata.json")
    if not meta:
        raise InputError(f"{bundle}: not a model bundle (no readable metadata.json)")
    models = Path(models_folder).expanduser()
    models.mkdir(parents=True, exist_ok=True)
    base = _safe_name(name or str(meta.get("name") or bundle.parent.name))
    target = models / base
    for n in range(2, 1000):
        if not target.exists() or _same_bundle(target, bundle):
            break
        target = models / f"{base}-{n}"
    if target.exists() and _same_bundle(target, bundle):
        return target
    staging = models / f".{target.name}.register"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        copied = process.register_bundle(bundle, staging, verify=verify, python=python)
        os.replace(copied, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@dataclass
class HeldOutCase:
    """A case of the cross-validation's test folds: held out from fold ``fold``'s model (the ensemble's other
    fold models were trained on it - it is not an independent test case)."""

    path: Path
    label: int
    fold: int
    probability: float
    subject: str = ""
    session: str = ""

    @property
    def description(self) -> str:
        name = "BI" if self.label == 1 else "no BI"
        return (f"{self.path.name} (true label {name}; held out from fold {self.fold}'s model, "
                f"its P(BI) there {self.probability:.2f})")


def pick_heldout_case(run_dir: str | os.PathLike) -> HeldOutCase | None:
    """A held-out case to inspect: from ``oof.csv`` (or the folds' ``predictions.csv``), preferably a brain
    injury its fold's model found with the highest probability, else the highest-probability BI case, else any
    case; None if there are no predictions yet or the files are gone."""
    run_dir = Path(run_dir)
    files = [run_dir / "oof.csv"] if (run_dir / "oof.csv").is_file() else \
        sorted(run_dir.glob("fold_*/predictions.csv"))
    rows = []
    for path in files:
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows += list(csv.DictReader(f))
        except OSError:
            continue
    cases = []
    for r in rows:
        try:
            case = HeldOutCase(Path(r["path"]), int(r["label"]), int(r["fold"]), float(r["probability"]),
                               r.get("subject", ""), r.get("session", ""))
        except (KeyError, ValueError):
            continue
        if case.path.is_file():
            cases.append(case)
    if not cases:
        return None
    bi = [c for c in cases if c.label == 1]
    return max(bi or cases, key=lambda c: (c.probability, -c.fold))


# ------------------------------------------------------------------------------------------------------------
# Live view: progress events -> MRML nodes
# ------------------------------------------------------------------------------------------------------------

def format_duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 20 s``, ``1 h 05 min``; "?" when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclass
class TrainingMonitor:
    """Follows one training run: progress state, curve tables and charts, the metrics table, the bundle.

    Feed it every event (:meth:`handle`); nodes are created once (found again by name in the scene) and
    updated in place. With ``models_folder`` the ensemble bundle is registered there on ``done``.
    """

    scene: Any = None
    models_folder: str | os.PathLike | None = None
    prefix: str = PREFIX
    register_verify: bool = False
    run_dir: Path | None = None
    folds: int = 0
    epochs: int = 0
    n_train: int = 0
    fold: int | None = None
    epoch: int | None = None
    step: int | None = None
    steps: int | None = None
    fraction: float = 0.0
    eta_s: float | None = None
    status: str = "not started"
    history: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    fold_metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    bundle: Path | None = None
    registered: Path | None = None
    registration_error: str | None = None
    warning: str | None = None
    stopped_at: tuple[int | None, int | None] | None = None
    errors: list[str] = field(default_factory=list)
    finished: bool = False

    # -- state -------------------------------------------------------------------------------------------
    def reset(self, run_dir: str | os.PathLike | None = None) -> None:
        """Forget the previous run (its nodes are reused and emptied when the new run reports)."""
        self.run_dir = Path(run_dir) if run_dir else None
        self.folds = self.epochs = self.n_train = 0
        self.fold = self.epoch = self.step = self.steps = None
        self.fraction, self.eta_s, self.status = 0.0, None, "starting"
        self.history, self.fold_metrics, self.summary = {}, {}, {}
        self.bundle = self.registered = None
        self.registration_error = self.warning = None
        self.stopped_at, self.errors, self.finished = None, [], False
        self._clear_nodes()

    def handle_all(self, events: Iterable[Mapping[str, Any]]) -> None:
        for event in events:
            self.handle(event)

    def handle(self, event: Mapping[str, Any]) -> None:
        """Update the state and the nodes from one progress event (unknown events are ignored)."""
        kind = event.get("event")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_stage(self, e: Mapping[str, Any]) -> None:
        done, total = e.get("done"), e.get("total")
        stage = str(e.get("stage", "preparing"))
        self.status = f"{stage}: {done}/{total} volumes" if total else stage

    def _on_start(self, e: Mapping[str, Any]) -> None:
        run_dir = Path(e["run_dir"]) if e.get("run_dir") else self.run_dir
        if run_dir is not None and (self.run_dir is None or run_dir.resolve() != self.run_dir.resolve()):
            self.reset(run_dir)
        self.run_dir = run_dir
        self.folds, self.epochs = int(e.get("folds", 0)), int(e.get("epochs", 0))
        self.n_train = int(e.get("n_train", 0))
        self.finished, self.stopped_at = False, None
        if run_dir is not None and not self.history and not self.fold_metrics:
            self.load_run(run_dir)  # a resumed run: show the folds finished before
        self.status = f"training {self.n_train} volumes, {self.folds} folds x {self.epochs} epochs"

    def _on_step(self, e: Mapping[str, Any]) -> None:
        self.fold, self.epoch = int(e["fold"]), int(e["epoch"])
        self.step, self.steps = int(e.get("step", 0)), int(e.get("steps", 0) or 0)
        self.fraction = max(0.0, min(1.0, float(e.get("fraction", self.fraction))))
        loss = _number(e.get("loss"))
        self.status = self.progress_text() + (f" - batch loss {loss:.3f}" if loss is not None else "")

    def _on_epoch(self, e: Mapping[str, Any]) -> None:
        fold, epoch = int(e["fold"]), int(e["epoch"])
        self.fold, self.epoch, self.step = fold, epoch, None
        self.epochs = int(e.get("epochs", self.epochs) or self.epochs)
        self.fraction = max(0.0, min(1.0, float(e.get("fraction", self.fraction))))
        self.eta_s = _number(e.get("eta_s"))
        self.history.setdefault(fold, {})[epoch] = {k: e.get(k) for k in HISTORY_KEYS}
        self.update_curves(fold)
        self.status = self.progress_text()

    def _on_fold_end(self, e: Mapping[str, Any]) -> None:
        self.fold_metrics[int(e["fold"])] = dict(e.get("metrics") or {})
        self.summary = summarize([dict(m, fold=k) for k, m in sorted(self.fold_metrics.items())])
        self.update_metrics_table()
        self.status = f"fold {int(e['fold']) + 1} finished: " + _metric_line(e.get("metrics") or {})

    def _on_done(self, e: Mapping[str, Any]) -> None:
        self.finished, self.fraction, self.eta_s = True, 1.0, 0.0
        if e.get("run_dir"):
            self.run_dir = Path(e["run_dir"])
        if e.get("metrics"):
            self.summary = {k: dict(v) for k, v in e["metrics"].items()}
            self.summary = self._with_best_folds(self.summary)
        self.warning = e.get("warning")
        self.update_metrics_table()
        self.bundle = Path(e["bundle"]) if e.get("bundle") else None
        self.status = "done: " + self.summary_text()
        if self.bundle is not None and self.models_folder:
            try:
                self.registered = register_run_bundle(self.bundle, self.models_folder,
                                                      verify=self.register_verify)
                self.status += f" - model registered as {self.registered.name}"
            except (OSError, ValueError, InputError) as exc:
                self.registration_error = f"could not register the bundle in {self.models_folder}: {exc}"
                self.errors.append(self.registration_error)
                self.status += f" - {self.registration_error}"

    def _on_stopped(self, e: Mapping[str, Any]) -> None:
        fold, epoch = e.get("fold"), e.get("epoch")
        self.stopped_at = (fold, epoch)
        self.eta_s = None
        if fold is None or epoch is None:
            self.status = "stopped while preparing the data, before training began"
            return
        self.status = f"stopped at fold {int(fold) + 1}, epoch {int(epoch) + 1}; the checkpoint is kept - " \
                      "Resume continues"

    def _on_error(self, e: Mapping[str, Any]) -> None:
        self.errors.append(str(e.get("message", "")))
        self.status = "error: " + str(e.get("message", "")).splitlines()[0]

    def progress_text(self) -> str:
        """``fold 2/5, epoch 13/150 (step 3/9) - 41% - ETA 12 min 05 s``."""
        parts = []
        if self.fold is not None:
            parts.append(f"fold {self.fold + 1}/{self.folds or '?'}")
        if self.epoch is not None:
            text = f"epoch {self.epoch + 1}/{self.epochs or '?'}"
            if self.step is not None and self.steps:
                text += f" (step {self.step + 1}/{self.steps})"
            parts.append(text)
        text = ", ".join(parts) or self.status
        text += f" - {100 * self.fraction:.0f}%"
        if self.eta_s is not None and not self.finished:
            text += f" - ETA {format_duration(self.eta_s)}"
        return text

    def summary_text(self) -> str:
        """Cross-validation figures: ``accuracy 0.812 ± 0.050 (best 0.875), ...``."""
        if not self.summary:
            return "no cross-validation metrics yet"
        k = len(self.fold_metrics) or self.folds
        return f"{k}-fold CV: " + ", ".join(
            f"{METRIC_NAMES[m]} {_fmt(s.get('mean'))} ± {_fmt(s.get('sd'))} (best {_fmt(s.get('best'))})"
            for m in ("accuracy", "sensitivity", "specificity", "auc") if (s := self.summary.get(m)))

    def _with_best_folds(self, summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, s in summary.items():
            if s.get("best") is None or "best_fold" in s:
                continue
            for k, m in sorted(self.fold_metrics.items()):
                if m.get(name) is not None and abs(float(m[name]) - float(s["best"])) < 1e-9:
                    s["best_fold"] = k
                    break
        return summary

    # -- run folder ----------------------------------------------------------------------------------------
    def load_run(self, run_dir: str | os.PathLike) -> None:
        """Show what a run folder already holds: finished folds' curves and metrics, the merged metrics."""
        run_dir = Path(run_dir)
        config = _read_json(run_dir / "config.json")
        self.folds = int(config.get("folds", self.folds) or 0)
        self.epochs = int(config.get("epochs", self.epochs) or 0)
        for path in sorted(run_dir.glob("fold_*/result.json")):
            result = _read_json(path)
            if "fold" not in result:
                continue
            k = int(result["fold"])
            for h in result.get("history") or []:
                if h and "epoch" in h:
                    record = {key: h.get(key) for key in HISTORY_KEYS}
                    self.history.setdefault(k, {})[int(h["epoch"])] = record
            if result.get("test"):
                self.fold_metrics[k] = {m: result["test"].get(m) for m in SUMMARY_METRICS}
            self.update_curves(k)
        if self.fold_metrics:
            self.summary = summarize([dict(m, fold=k) for k, m in sorted(self.fold_metrics.items())])
            self.update_metrics_table()
        if self.folds and self.epochs:
            done = sum(1 for k in range(self.folds) if (run_dir / f"fold_{k}" / "result.json").is_file())
            self.fraction = done / self.folds

    # -- nodes -----------------------------------------------------------------------------------------------
    @property
    def loss_chart_name(self) -> str:
        return f"{self.prefix} loss"

    @property
    def metric_chart_name(self) -> str:
        return f"{self.prefix} validation metrics"

    @property
    def metrics_table_name(self) -> str:
        return f"{self.prefix} cross-validation metrics"

    def curve_table_name(self, fold: int) -> str:
        return f"{self.prefix} fold {fold} curves"

    def _find(self, class_name: str, name: str):
        from . import mrml

        return mrml.find_node(mrml.get_scene(self.scene), class_name, mrml.PLOT_ROLE, name)

    def curve_table(self, fold: int):
        return self._find("vtkMRMLTableNode", self.curve_table_name(fold))

    @property
    def loss_chart(self):
        return self._find("vtkMRMLPlotChartNode", self.loss_chart_name)

    @property
    def metric_chart(self):
        return self._find("vtkMRMLPlotChartNode", self.metric_chart_name)

    @property
    def metrics_table(self):
        return self._find("vtkMRMLTableNode", self.metrics_table_name)

    def update_curves(self, fold: int) -> None:
        """Rewrite fold ``fold``'s curve table from the history (one row per epoch, in order) and make sure
        both charts plot it (series are added once; the charts redraw when the table changes)."""
        from . import mrml

        scene = mrml.get_scene(self.scene)
        rows = sorted(self.history.get(fold, {}).items())
        columns = {
            "Epoch": [e + 1 for e, _ in rows],
            "Training loss": [_number(r.get("train_loss")) for _, r in rows],
            "Validation loss": [_number(r.get("val_loss")) for _, r in rows],
            "Validation AUC": [_number(r.get("val_auc")) for _, r in rows],
            "Validation accuracy": [_number(r.get("val_accuracy")) for _, r in rows],
            "Learning rate": [_number(r.get("lr")) for _, r in rows],
        }
        existing = self.curve_table(fold)
        table = mrml.table_from_columns(self.curve_table_name(fold), columns, scene=scene, node=existing,
                                        types=CURVE_COLUMNS)
        table.SetAttribute(TRAINING_ROLE, "curves")
        color = FOLD_COLORS[fold % len(FOLD_COLORS)]
        for chart_name, ys, labels, y_title in (
                (self.loss_chart_name, ["Training loss", "Validation loss"],
                 [f"fold {fold} training", f"fold {fold} validation"], "loss (weighted cross-entropy)"),
                (self.metric_chart_name, ["Validation AUC", "Validation accuracy"],
                 [f"fold {fold} AUC", f"fold {fold} accuracy"], "validation metric")):
            chart = mrml.plot_chart(chart_name, table, "Epoch", ys, scene=scene, x_title="epoch",
                                    y_title=y_title, series_names=labels, colors=[color, color])
            chart.SetAttribute(TRAINING_ROLE, "chart")
            dashed = mrml.find_node(scene, "vtkMRMLPlotSeriesNode", mrml.PLOT_ROLE,
                                    f"{chart_name}: {labels[1]}")
            if dashed is not None:
                dashed.SetLineStyle(dashed.LineStyleDash)

    def update_metrics_table(self) -> None:
        """Rewrite the metrics table: one row per finished fold, then mean, sd and best (per metric)."""
        from . import mrml

        folds = sorted(self.fold_metrics)
        labels = [f"fold {k}" for k in folds]
        rows = [self.fold_metrics[k] for k in folds]
        notes = [""] * len(folds)
        if self.summary:
            for stat in ("mean", "sd", "best"):
                labels.append(stat)
                rows.append({m: (self.summary.get(m) or {}).get(stat) for m in SUMMARY_METRICS})
                notes.append(self._stat_note(stat))
        columns: dict[str, list[Any]] = {"Fold": labels}
        for m in SUMMARY_METRICS:
            columns[METRIC_NAMES[m]] = [_number(r.get(m)) for r in rows]
        columns["Note"] = notes
        types = {"Fold": "string", "Note": "string", **{METRIC_NAMES[m]: "double" for m in SUMMARY_METRICS}}
        table = mrml.table_from_columns(self.metrics_table_name, columns, scene=mrml.get_scene(self.scene),
                                        node=self.metrics_table, types=types)
        table.SetAttribute(TRAINING_ROLE, "metrics")

    def _stat_note(self, stat: str) -> str:
        k = len(self.fold_metrics) or self.folds
        if stat == "mean":
            note = f"mean over {k} folds"
            return note + (f"; {self.warning}" if self.warning else "")
        if stat == "sd":
            return "sample standard deviation over folds"
        best = [f"{METRIC_NAMES[m]}: fold {s['best_fold']}" for m in SUMMARY_METRICS
                if (s := self.summary.get(m)) and s.get("best_fold") is not None]
        return "best fold per metric" + (f" ({', '.join(best)})" if best else "")

    def _clear_nodes(self) -> None:
        """Empty this monitor's tables: a new run reuses the nodes (the charts keep their series)."""
        from . import mrml

        scene = self.scene if self.scene is not None else getattr(mrml.slicer, "mrmlScene", None)
        if scene is None:
            return
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode")):
            table = scene.GetNthNodeByClass(i, "vtkMRMLTableNode")
            role = table.GetAttribute(TRAINING_ROLE)
            if role in ("curves", "metrics") and (table.GetName() or "").startswith(self.prefix):
                columns = CURVE_COLUMNS if role == "curves" else {"Fold": "string"}
                mrml.table_from_columns(table.GetName(), {c: [] for c in columns}, scene=scene, node=table,
                                        types=columns)

    def nodes(self) -> dict[str, Any]:
        """The nodes showing this run (charts, metrics table, curve tables by fold) that exist so far."""
        curves = {k: self.curve_table(k) for k in sorted(self.history)}
        return {"loss_chart": self.loss_chart, "metric_chart": self.metric_chart,
                "metrics_table": self.metrics_table, "curve_tables": {k: v for k, v in curves.items() if v}}


def _fmt(value: Any) -> str:
    value = _number(value)
    return "n/a" if value is None else f"{value:.3f}"


def _metric_line(metrics: Mapping[str, Any]) -> str:
    return ", ".join(f"{METRIC_NAMES[m]} {_fmt(metrics.get(m))}" for m in ("accuracy", "sensitivity",
                                                                           "specificity", "auc"))


__all__ = [
    "ARCHITECTURES", "DEVICES", "GUI_FIELDS", "LABEL_COLUMNS", "SOURCES", "SOURCE_LABELS",
    "STOPPED_EXIT_CODE", "TRAINING_REQUIREMENTS", "WIDTH_PRESETS", "DatasetCheck", "HeldOutCase",
    "SceneCase", "TrainingJob", "TrainingMonitor", "TrainingParameters", "can_resume", "candidate_volumes",
    "check_args", "default_run_name", "export_scene_dataset", "fill_labels_table", "format_duration",
    "format_report", "labels_table", "parse_label", "pick_heldout_case", "read_requirements",
    "register_run_bundle", "resume_args", "resume_training", "scene_cases", "start_training", "train_args",
]

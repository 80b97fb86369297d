"""The training GUI's choices (:class:`TrainingParameters`) -> the arguments of the same ``gloresnet train
... --progress-json`` command a researcher runs in a terminal (:func:`train_args`, :func:`resume_args`,
:func:`check_args`, all written by :meth:`TrainConfig.to_argv`). The options' defaults and tooltips come from
their one definition, the fields of :class:`~GloResNetLib.training.config.TrainConfig` (:data:`OPTIONS`).
Plain Python: never imports slicer or torch."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..training.config import TRAIN, TrainConfig, list_options
from ..training.optionspec import help_text
from . import requirements
from .paths import check_training_paths

#: ``gloresnet train``'s options by field name (default, range, choices, help): their one definition.
OPTIONS = {spec.name: spec for spec in list_options(TrainConfig, TRAIN)}


def _default(name: str) -> Any:
    return OPTIONS[name].default


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
GUI_FIELDS = {
    "source": "source",
    "manifestPath": "manifest",
    "dhcpFolder": "dhcp",
    "outputFolder": "output_folder",
    "runName": "run_name",
    "arch": "arch",
    "width": "widths",
    "folds": "folds",
    "epochs": "epochs",
    "batchSize": "batch_size",
    "learningRate": "lr",
    "mixupAlpha": "mixup_alpha",
    "classWeights": "class_weights",
    "inputSize": "size",
    "pretrainedPath": "pretrained",
    "device": "device",
    "seed": "seed",
    "syntheticData": "synthetic",
}
#: The training settings the presets set (:meth:`TrainingParameters.apply_paper_defaults`, ``apply_cpu_demo``).
PRESET_FIELDS = ("arch", "folds", "epochs", "batch_size", "lr", "mixup_alpha", "class_weights", "size", "device")


def option_tooltips() -> dict[str, str]:
    """Parameter-node field -> tooltip of the ``gloresnet train`` option it sets: the option's help with its
    default, as ``--help`` shows it (a check box names the flag it stands for)."""
    tips = {}
    for name, field in GUI_FIELDS.items():
        if field in OPTIONS:
            spec = OPTIONS[field]
            text = help_text(spec)
            if spec.type is bool:
                text = f"{'Unchecked' if spec.default else 'Checked'} ({spec.flag}): {text}"
            tips[name] = text
    return tips


#: Python packages training needs in Slicer's Python besides the predict module's requirements and PyTorch
#: (also in ``GloResNetTraining/Resources/GloResNetTraining-requirements.txt``; added if a file lacks them).
TRAINING_REQUIREMENTS = ("scikit-learn>=1.3", "matplotlib>=3.7")
#: Exit code of ``gloresnet train`` stopped by Ctrl-C / SIGINT after saving a checkpoint.
STOPPED_EXIT_CODE = 130


def default_run_name(now: _dt.datetime | None = None) -> str:
    """``gloresnet-YYYYmmdd-HHMMSS``."""
    return f"gloresnet-{(now or _dt.datetime.now()):%Y%m%d-%H%M%S}"


@dataclass
class TrainingParameters:
    """What the researcher chooses in the GloResNetTraining module (defaults: the paper's settings, those of
    ``gloresnet train``: :data:`OPTIONS`).

    ``source`` is "manifest" (``manifest``: CSV file), "dhcp" (``dhcp``: BIDS folder) or "scene" (volumes of
    the scene, exported by :func:`export_scene_dataset` to :attr:`scene_data_dir`). The run folder is
    ``output_folder/run_name``.
    """

    source: str = "manifest"
    manifest: str = ""
    dhcp: str = ""
    output_folder: str = ""
    run_name: str = ""
    arch: str = _default("arch")
    widths: tuple[int, ...] | None = None  # the architecture's (``arch_params`` has no widths by default)
    folds: int = _default("folds")
    epochs: int = _default("epochs")
    batch_size: int = _default("batch_size")
    lr: float = _default("lr")
    mixup_alpha: float = _default("mixup_alpha")
    class_weights: bool = _default("class_weights")
    size: int = _default("size")
    pretrained: str = ""  # path fields hold the text ("": the option's None)
    device: str = _default("device")
    seed: int = _default("seed")
    synthetic: bool = _default("synthetic")
    num_threads: int | None = _default("num_threads")
    cache_dir: str = ""
    tensorboard: bool = _default("tensorboard")
    extra_args: tuple[str, ...] = ()

    @classmethod
    def cpu_demo(cls, **changes: Any) -> TrainingParameters:
        """CPU-sized settings: 64^3 input, dilated ResNet-10 at a quarter of the width (an 8^3 Grad-CAM grid),
        30 epochs, batch 8, 5 folds, no MedicalNet weights (they need full width). ``gloresnet demo`` uses the
        strided ResNet-10 with Grad-CAM on ``layer1`` instead (``--arch-params '{"cam_layer": "layer1"}'``, not
        a GUI field)."""
        return cls().apply_cpu_demo().replace(**changes)

    def apply_cpu_demo(self) -> TrainingParameters:
        """These parameters with the CPU demo settings (dataset, output, seed and flags kept; the settings it
        does not name are the paper's)."""
        return self.apply_paper_defaults().replace(
            arch="resnet10_dilated",
            widths=WIDTH_PRESETS["quarter"],
            epochs=30,
            batch_size=8,
            size=64,
            pretrained="",
            device="cpu",
        )

    def apply_paper_defaults(self) -> TrainingParameters:
        """These parameters with the paper's training settings (dataset, output, seed and flags kept)."""
        return self.replace(widths=None, **{name: _default(name) for name in PRESET_FIELDS})

    def replace(self, **changes: Any) -> TrainingParameters:
        """A copy with ``changes`` (field name -> value)."""
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
        """The :class:`~GloResNetLib.training.config.TrainConfig` of these parameters (paths absolute, JSON
        progress events on): what :func:`train_args` writes and the command line reads back."""
        return TrainConfig(
            **_data_options(self),
            out=str(self.run_dir),
            arch=self.arch,
            arch_params={"widths": [int(w) for w in self.widths]} if self.widths else {},
            folds=int(self.folds),
            epochs=int(self.epochs),
            batch_size=int(self.batch_size),
            lr=float(self.lr),
            mixup_alpha=float(self.mixup_alpha),
            class_weights=bool(self.class_weights),
            size=int(self.size),
            pretrained=_absolute(self.pretrained),
            device=self.device or "auto",
            seed=int(self.seed),
            synthetic=bool(self.synthetic),
            num_threads=self.num_threads or None,
            cache_dir=_absolute(self.cache_dir),
            tensorboard=bool(self.tensorboard),
            progress_json=True,
        )

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
                raise InputError(
                    f"{run_dir} already exists and is not empty: choose another run name (or Resume that run)"
                )
        return self


def _absolute(path: str | None) -> str | None:
    """A path field's text as an absolute path ("" or None: None)."""
    return str(Path(path).expanduser().resolve()) if path else None


def _data_options(p: TrainingParameters) -> dict[str, str]:
    data = str(p.dataset_path())
    return {"dhcp": data} if p.source == "dhcp" else {"manifest": data}


def train_args(p: TrainingParameters) -> list[str]:
    """Arguments of ``gloresnet train`` for these parameters (:meth:`TrainingParameters.config`, written by
    ``TrainConfig.to_argv``: the options that differ from their defaults), JSON progress events on stdout."""
    return ["train", *p.config().to_argv(), *p.extra_args]


def resume_args(
    run_dir: str | os.PathLike,
    device: str | None = None,
    num_threads: int | None = None,
    cache_dir: str | None = None,
    tensorboard: bool = True,
) -> list[str]:
    """Arguments continuing a stopped run (its own stored options; only how it runs may change)."""
    cfg = TrainConfig(
        resume=_absolute(str(run_dir)),
        device=device or _default("device"),
        num_threads=num_threads or None,
        cache_dir=_absolute(cache_dir),
        tensorboard=tensorboard,
        progress_json=True,
    )
    return ["train", *cfg.to_argv()]


def check_args(p: TrainingParameters) -> list[str]:
    """Arguments of the dataset check (``--check-only``: every image read and decoded, the report as JSON;
    the preprocessing cache it fills at this input size is the one training reads)."""
    cfg = TrainConfig(
        **_data_options(p), check_only=True, size=int(p.size), cache_dir=_absolute(p.cache_dir), progress_json=True
    )
    return ["train", *cfg.to_argv()]


def can_resume(run_dir: str | os.PathLike | None) -> bool:
    """True when ``run_dir`` holds a training run that is not finished (``config.json``, no ``bundle/``)."""
    if not run_dir:
        return False
    run_dir = Path(run_dir)
    return (run_dir / "config.json").is_file() and not (run_dir / "bundle" / "metadata.json").is_file()


def read_training_requirements(requirements_file: str | os.PathLike | None = None) -> list[str]:
    """What training needs in Slicer's Python: the file's requirements plus :data:`TRAINING_REQUIREMENTS`."""
    reqs = (
        requirements.read_requirements(requirements_file)
        if requirements_file and Path(requirements_file).is_file()
        else []
    )
    names = {re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0].lower() for r in reqs}
    extra = [r for r in TRAINING_REQUIREMENTS if re.split(r"[<>=!~]", r, maxsplit=1)[0].lower() not in names]
    return reqs + extra


__all__ = [
    "ARCHITECTURES",
    "DEVICES",
    "GUI_FIELDS",
    "OPTIONS",
    "PRESET_FIELDS",
    "SOURCES",
    "SOURCE_LABELS",
    "STOPPED_EXIT_CODE",
    "TRAINING_REQUIREMENTS",
    "WIDTH_PRESETS",
    "TrainingParameters",
    "can_resume",
    "check_args",
    "default_run_name",
    "option_tooltips",
    "read_training_requirements",
    "resume_args",
    "train_args",
]

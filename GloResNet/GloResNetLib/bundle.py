"""Model bundles: a folder with one safetensors file per (fold) model and ``metadata.json``.

The metadata names the architecture, the preprocessing the model was trained with, class names, decision
threshold, the training data (synthetic or not), CV metrics and the SHA-256 of every weights file. Loading
verifies checksums and metadata before any tensor reaches a model. An optional ``task`` says what the models
predict: ``classification`` (brain injury, the default) or ``age_regression`` (brain age in weeks, with a
``target`` object instead of class names and threshold; see :mod:`.age_target`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .age_target import CLASSIFICATION, check_age_metadata
from .bundle_meta import BundleMetadata, read_bundle_metadata
from .bundle_schema import FORMAT_VERSION, METADATA_FILE, inside, validate_metadata
from .errors import BundleError
from .io import atomic_path, write_text_atomic
from .models import build_model
from .outputs import staged_folder
from .preprocessing import PreprocessConfig

DEFAULT_CLASS_NAMES = ["no BI", "BI"]
UNTRAINED = {
    "description": "none: the classifier head is untrained; predictions are meaningless",
    "synthetic": False,
    "trained": False,
}


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def default_metadata(
    name: str,
    arch: str = "resnet10",
    arch_params: dict | None = None,
    preprocess: PreprocessConfig | None = None,
    training_data: dict | None = None,
    provenance: str = "",
    threshold: float = 0.5,
    cv_metrics: dict | None = None,
    tta_axes: tuple[int, ...] = (0,),
    extra: dict | None = None,
) -> dict[str, Any]:
    """Metadata dict for :func:`save_bundle`, with the library version and creation time filled in."""
    meta = {
        "format_version": FORMAT_VERSION,
        "name": name,
        "arch": arch,
        "arch_params": dict(arch_params or {}),
        "num_classes": 2,
        "class_names": list(DEFAULT_CLASS_NAMES),
        "preprocess": (preprocess or PreprocessConfig()).to_dict(),
        "threshold": float(threshold),
        "tta_axes": list(tta_axes),
        "training_data": dict(training_data or UNTRAINED),
        "cv_metrics": cv_metrics,
        "provenance": provenance,
        "library_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    meta.update(extra or {})
    return meta


def save_bundle(
    out_dir: str | os.PathLike,
    state_dicts: list[dict[str, torch.Tensor]],
    metadata: dict[str, Any],
    overwrite: bool = False,
) -> Path:
    """Write a bundle folder (weights as safetensors + metadata with their SHA-256); returns its path.

    The folder is assembled next to ``out_dir`` and renamed into place, so a failure leaves nothing behind.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise BundleError(f"{out_dir}: folder exists and is not empty (choose another --out)")
    if not state_dicts:
        raise BundleError("a bundle needs at least one model")
    check_age_metadata(metadata, "bundle metadata", len(state_dicts))
    files = [
        f"model_fold{k}.safetensors" if len(state_dicts) > 1 else "model.safetensors" for k in range(len(state_dicts))
    ]
    # the schema check runs before anything is written (checksums are filled in below), on the JSON form
    # that will be read back (tuples become lists): a bundle that could not load is never written
    draft = dict(metadata, weights=[{"file": f, "sha256": "0" * 64} for f in files])
    try:
        validate_metadata(json.loads(json.dumps(draft)))
    except (TypeError, ValueError) as exc:
        raise BundleError(f"bundle metadata is not plain JSON ({exc})") from None
    build_model(metadata["arch"], metadata["num_classes"], **(metadata.get("arch_params") or {}))
    with staged_folder(out_dir, replace=True) as staging:
        weights = []
        for fname, state in zip(files, state_dicts):
            tensors = {n: t.detach().cpu().contiguous() for n, t in state.items()}
            save_file(tensors, str(staging / fname), metadata={"gloresnet": metadata["name"]})
            weights.append({"file": fname, "sha256": sha256_file(staging / fname)})
        meta = dict(metadata, weights=weights)
        write_text_atomic(staging / METADATA_FILE, json.dumps(meta, indent=2, sort_keys=False) + "\n")
    return out_dir


@dataclass
class Bundle(BundleMetadata):
    """A loaded, verified bundle: ``models`` (eval mode, on ``device``) and their ``metadata`` (read by
    :func:`~.bundle_meta.read_bundle_metadata`, which also gives ``name``, ``task``, ``training_data``,
    ``is_synthetic``, ``is_trained``, ``flag`` and ``provenance``)."""

    models: list[nn.Module] = field(default_factory=list, repr=False)
    device: torch.device = torch.device("cpu")

    @property
    def threshold(self) -> float:
        if self.task != CLASSIFICATION:
            raise BundleError(f"{self.path}: a {self.task} bundle has no decision threshold (not a classifier)")
        return float(self.metadata["threshold"])

    @property
    def preprocess_config(self) -> PreprocessConfig:
        return PreprocessConfig.from_dict(self.metadata["preprocess"])

    @property
    def tta_axes(self) -> list[int]:
        return [int(a) for a in self.metadata.get("tta_axes", [0])]

    def describe(self) -> str:
        """One line: name, architecture, number of models, what data trained it (and its flag)."""
        flag = f" [{self.flag}]" if self.flag else ""
        task = "" if self.task == CLASSIFICATION else "; brain age in weeks"
        return (
            f"{self.name} ({self.arch}, {len(self.models)} model(s){task}); trained on: "
            f"{self.training_data.get('description', 'unknown')}{flag}"
        )


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``metadata.json`` and validate it against the bundle schema (:mod:`.bundle_schema`) and, for a
    brain-age bundle, its target (:mod:`.age_target`); no weights are read (:func:`.bundle_meta.read_bundle_metadata`).

    Returns:
        The metadata dict.
    Raises:
        BundleError: one line, for anything refused.
    """
    return read_bundle_metadata(path).metadata


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> CUDA when available else CPU; asking for CUDA without CUDA is a user error."""
    from .errors import InputError

    if isinstance(device, torch.device):
        return device
    name = (device or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda requested but CUDA is not available on this machine")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device '{device}' (use auto, cpu or cuda)")


def load_bundle(path: str | os.PathLike, device: str | torch.device | None = "cpu") -> Bundle:
    """Load a bundle: verify metadata and every file's SHA-256, build the models, load weights strictly."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    meta = read_bundle_metadata(path).metadata
    dev = resolve_device(device)
    models = []
    for entry in meta["weights"]:
        wpath = path / entry["file"]  # a plain file name (schema)
        if not wpath.is_file():
            raise BundleError(f"{path}: weights file '{entry['file']}' is missing")
        inside(path, wpath)
        digest = sha256_file(wpath)
        if digest != entry.get("sha256"):
            raise BundleError(f"{wpath}: checksum mismatch (file changed or corrupt); refusing to load")
        model = build_model(meta["arch"], int(meta["num_classes"]), **(meta.get("arch_params") or {}))
        try:
            state = load_file(str(wpath))
        except (SafetensorError, OSError) as exc:
            raise BundleError(f"{wpath}: unreadable weights ({exc})") from None
        check_state(model, state, wpath)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise BundleError(f"{wpath}: weights do not fit architecture '{meta['arch']}' ({first})") from None
        models.append(model.to(dev).eval())
    return Bundle(path=path, metadata=meta, models=models, device=dev)


def check_state(model: nn.Module, state: dict[str, torch.Tensor], source: str | os.PathLike) -> None:
    """Refuse weights that would give meaningless numbers: a floating tensor of the model stored as a
    non-floating type (e.g. int8: silently cast by ``load_state_dict``), NaN or infinite values, and negative
    BatchNorm running variances (whose square root is NaN).

    Args:
        model: the freshly built model the weights are meant for.
        state: tensor name -> tensor, as read from the file.
        source: the file, named in the error.
    Raises:
        BundleError: one line naming the first bad tensor.
    """
    own = model.state_dict()
    for name, tensor in state.items():
        ref = own.get(name)
        if ref is None:
            continue  # unexpected names are reported by load_state_dict(strict=True)
        if ref.is_floating_point():
            if not tensor.is_floating_point():
                raise BundleError(
                    f"{source}: tensor '{name}' is {str(tensor.dtype).replace('torch.', '')}, "
                    "expected floating point; refusing to load"
                )
            if not bool(torch.isfinite(tensor).all()):
                bad = int((~torch.isfinite(tensor)).sum())
                raise BundleError(f"{source}: tensor '{name}' holds {bad} NaN or infinite values; refusing to load")
            if name.endswith("running_var") and bool((tensor < 0).any()):
                raise BundleError(f"{source}: BatchNorm '{name}' has negative variances; refusing to load")


def copy_bundle(src: str | os.PathLike, dst_dir: str | os.PathLike) -> Path:
    """Verify a bundle and copy it into ``dst_dir`` (e.g. the Slicer models folder); returns the new path."""
    src = Path(src)
    load_bundle(src, "cpu")
    dst = Path(dst_dir) / src.name
    if dst.exists():
        raise BundleError(f"{dst}: a bundle with this name already exists")
    with staged_folder(dst) as staging:
        shutil.copytree(src, staging, dirs_exist_ok=True)
    return dst


__all__ = [
    "FORMAT_VERSION",
    "METADATA_FILE",
    "Bundle",
    "atomic_path",
    "check_state",
    "copy_bundle",
    "default_metadata",
    "load_bundle",
    "read_metadata",
    "resolve_device",
    "save_bundle",
    "sha256_file",
]

"""The models folder and its bundles (``metadata.json`` only: no torch needed): listing, verifying in a child
process, copying in (the GloResNet module's Browse...) and registering a training run's bundle."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..bundle_meta import BundleMetadata, read_bundle_metadata
from ..errors import BundleError, InputError
from ..outputs import staged_folder
from .command import child_env, gloresnet_command
from .files import read_json, safe_name

MODELS_FOLDER_ENV = "GLORESNET_MODELS"


#: Application setting (QSettings key) both Slicer modules use for the models folder.
MODELS_FOLDER_SETTING = "GloResNet/ModelsFolder"


def default_models_folder(settings_dir: str | os.PathLike | None = None) -> Path:
    """``$GLORESNET_MODELS``, else ``<settings_dir>/GloResNet/models`` (Slicer's settings folder), else
    ``~/.gloresnet/models``."""
    env = os.environ.get(MODELS_FOLDER_ENV)
    if env:
        return Path(env).expanduser()
    if settings_dir:
        return Path(settings_dir) / "GloResNet" / "models"
    return Path.home() / ".gloresnet" / "models"


@dataclass
class BundleInfo:
    """What the model list shows about a bundle folder: its metadata read by the same reader as loading
    (:func:`GloResNetLib.bundle_meta.read_bundle_metadata`; weights not checked), or why it is unusable."""

    path: Path
    meta: BundleMetadata | None = None
    error: str | None = None

    @property
    def name(self) -> str:
        return self.meta.name if self.meta is not None else self.path.name

    @property
    def arch(self) -> str:
        return self.meta.arch if self.meta is not None else ""

    @property
    def n_models(self) -> int:
        return self.meta.n_models if self.meta is not None else 0

    @property
    def training_data(self) -> dict[str, Any]:
        return self.meta.training_data if self.meta is not None else {}

    @property
    def provenance(self) -> str:
        return self.meta.provenance if self.meta is not None else ""

    @property
    def threshold(self) -> float:
        return float(self.meta.metadata.get("threshold", 0.5)) if self.meta is not None else 0.5

    @property
    def cv_metrics(self) -> dict[str, Any] | None:
        return self.meta.cv_metrics if self.meta is not None else None

    @property
    def task(self) -> str:
        """ "classification" or "age_regression" (brain age in weeks, from pretrain-age)."""
        return self.meta.task if self.meta is not None else "classification"

    @property
    def synthetic(self) -> bool:
        return self.meta is not None and self.meta.is_synthetic

    @property
    def trained(self) -> bool:
        return self.meta is None or self.meta.is_trained

    @property
    def flag(self) -> str:
        """:func:`GloResNetLib.bundle_meta.training_flag`: the same words as ``gloresnet bundle info``."""
        return self.meta.flag if self.meta is not None else ""

    @property
    def label(self) -> str:
        """One line for a combo box."""
        if self.error:
            return f"{self.path.name} (unusable: {self.error})"
        flag = f" [{self.flag}]" if self.flag else ""
        kind = "brain age, " if self.task == "age_regression" else ""
        return f"{self.name} ({kind}{self.arch}, {self.n_models} model{'s' if self.n_models != 1 else ''}){flag}"

    @property
    def description(self) -> str:
        """Several lines: training data, provenance, CV metrics, where it lives."""
        if self.error:
            return f"{self.path}: {self.error}"
        lines = [f"Trained on: {self.training_data.get('description', 'unknown')}"]
        if self.task == "age_regression":
            lines.insert(0, "Brain-age model: estimates post-menstrual age at scan (weeks); no injury probability.")
        if self.flag:
            lines.append(f"WARNING: {self.flag}.")
        if self.provenance:
            lines.append(f"Provenance: {self.provenance}")
        if self.cv_metrics:
            parts = []
            for key, value in self.cv_metrics.items():
                if isinstance(value, dict) and "mean" in value:
                    sd = f" ± {value['sd']:.3f}" if "sd" in value else ""
                    parts.append(f"{key} {value['mean']:.3f}{sd}")
                elif isinstance(value, (int, float)):
                    parts.append(f"{key} {value:.3f}")
            if parts:
                lines.append("Cross-validation: " + ", ".join(parts))
        lines.append(f"Folder: {self.path}")
        return "\n".join(lines)


def bundle_info(path: str | os.PathLike) -> BundleInfo:
    """Read a bundle's ``metadata.json`` for the models list, validated as when it is loaded.

    Args:
        path: the bundle folder.
    Returns:
        The :class:`BundleInfo`; a refused bundle has ``error`` set (never raised).
    """
    path = Path(path)
    try:
        meta = read_bundle_metadata(path)
    except BundleError as exc:
        error = str(exc).removeprefix(f"{path / 'metadata.json'}: ").removeprefix(f"{path}: ")
        return BundleInfo(path=path, error=error)
    return BundleInfo(path=path, meta=meta)


def find_bundles(*folders: str | os.PathLike) -> list[BundleInfo]:
    """Bundles in the given folders (each folder itself if it is a bundle, else its sub-folders), by name."""
    found: dict[Path, BundleInfo] = {}
    for folder in folders:
        folder = Path(folder)
        if (folder / "metadata.json").is_file():
            found[folder.resolve()] = bundle_info(folder)
            continue
        if not folder.is_dir():
            continue
        for sub in sorted(folder.iterdir()):
            if sub.is_dir() and not sub.name.startswith(".") and (sub / "metadata.json").is_file():
                found[sub.resolve()] = bundle_info(sub)
    return sorted(found.values(), key=lambda b: (b.error is not None, b.name.lower()))


def verify_bundle(path: str | os.PathLike, python: str | None = None, timeout: float = 300) -> dict[str, Any]:
    """Load a bundle in a child process (``gloresnet bundle info --json``: checksums and shapes verified);
    returns its metadata or raises ValueError with the child's one-line message."""
    cmd = gloresnet_command(["bundle", "info", "--json", str(path)], python)
    try:
        done = subprocess.run(
            cmd, env=child_env(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        raise ValueError(f"{path}: verification took longer than {timeout:g} s") from None
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.strip().splitlines() if ln.strip()]
        raise ValueError(lines[-1] if lines else f"{path}: verification failed (exit {done.returncode})")
    return json.loads(done.stdout)


def register_bundle(
    src: str | os.PathLike,
    models_folder: str | os.PathLike,
    verify: bool = True,
    python: str | None = None,
    replace: bool = False,
    name: str | None = None,
) -> Path:
    """Copy a bundle folder into the models folder as ``NAME`` (default: the folder's name), verified first
    with ``verify``; returns the new path. The copy is built beside it and renamed into place
    (:func:`~..outputs.staged_folder`), so the models list never shows half a bundle."""
    src = Path(src)
    if verify:
        verify_bundle(src, python=python)
    elif not (src / "metadata.json").is_file():
        raise ValueError(f"{src}: not a model bundle (no metadata.json)")
    models_folder = Path(models_folder)
    models_folder.mkdir(parents=True, exist_ok=True)
    dst = models_folder / (name or src.name)
    if dst.resolve() == src.resolve():
        return dst
    if dst.exists() and not replace:
        raise ValueError(f"{dst}: a model with this name is already installed")
    with staged_folder(dst, replace=replace) as stage:
        shutil.copytree(src, stage, dirs_exist_ok=True)
    return dst


def _same_bundle(a: Path, b: Path) -> bool:
    ma, mb = read_json(a / "metadata.json"), read_json(b / "metadata.json")
    return bool(ma) and ma.get("created") == mb.get("created") and ma.get("weights") == mb.get("weights")


def register_run_bundle(
    bundle: str | os.PathLike,
    models_folder: str | os.PathLike,
    name: str | None = None,
    verify: bool = False,
    python: str | None = None,
) -> Path:
    """Install a run's ``bundle/`` in the models folder as ``NAME`` (default: the bundle's name, i.e. the run
    folder's; ``NAME-2``... if another model has it); returns its path. Registering the same bundle again
    returns the existing copy. Copied by :func:`register_bundle` (checksums verified in a
    child process with ``verify``; the GloResNet module verifies them again whenever it loads the bundle)."""
    bundle = Path(bundle)
    meta = read_json(bundle / "metadata.json")
    if not meta:
        raise InputError(f"{bundle}: not a model bundle (no readable metadata.json)")
    models = Path(models_folder).expanduser()
    models.mkdir(parents=True, exist_ok=True)
    base = safe_name(name or str(meta.get("name") or bundle.parent.name))
    target = models / base
    for n in range(2, 1000):
        if not target.exists() or _same_bundle(target, bundle):
            break
        target = models / f"{base}-{n}"
    if target.exists() and _same_bundle(target, bundle):
        return target
    return register_bundle(bundle, models, verify=verify, python=python, name=target.name)


__all__ = [
    "MODELS_FOLDER_ENV",
    "MODELS_FOLDER_SETTING",
    "BundleInfo",
    "bundle_info",
    "default_models_folder",
    "find_bundles",
    "register_bundle",
    "register_run_bundle",
    "verify_bundle",
]

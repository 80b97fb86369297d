"""A bundle's ``metadata.json`` read without torch: the one reader behind :class:`~.bundle.Bundle` (loading
and prediction) and the Slicer models list (:class:`~.slicer_side.bundles.BundleInfo`).

:func:`read_bundle_metadata` validates the file with the bundle schema (:mod:`.bundle_schema`) and, for a
brain-age bundle, its target (:mod:`.age_target`), so a bundle the models list shows is one that loads.
:class:`BundleMetadata` answers what both need (name, architecture, task, training data) and words the
synthetic / untrained flags once (:func:`training_flag`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .age_target import CLASSIFICATION, check_age_metadata
from .bundle_schema import METADATA_FILE, read_metadata_file

#: Flag of a bundle whose classifier head was never trained (shown wherever its results are).
UNTRAINED_FLAG = "UNTRAINED classifier - predictions are meaningless"
#: Flag of a bundle trained on synthetic images (shown wherever its results are).
SYNTHETIC_FLAG = "SYNTHETIC training data - demonstration only"


def training_flag(training_data: Mapping[str, Any] | None, synthetic: bool = False) -> str:
    """The warning a model's results carry: :data:`UNTRAINED_FLAG`, :data:`SYNTHETIC_FLAG` or "".

    Args:
        training_data: the bundle's ``training_data`` object (``trained`` defaults to true, ``synthetic`` to
            false).
        synthetic: flag as synthetic even if ``training_data`` does not say so (e.g. a prediction record's
            ``synthetic_model``).
    Returns:
        The flag; untrained wins over synthetic.
    """
    training_data = training_data or {}
    if not bool(training_data.get("trained", True)):
        return UNTRAINED_FLAG
    if synthetic or bool(training_data.get("synthetic", False)):
        return SYNTHETIC_FLAG
    return ""


@dataclass
class BundleMetadata:
    """A bundle folder's validated metadata and what it says (no weights read)."""

    path: Path
    metadata: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.metadata["name"])

    @property
    def arch(self) -> str:
        return str(self.metadata["arch"])

    @property
    def task(self) -> str:
        """'classification' (brain injury; metadata without 'task') or 'age_regression' (brain age, weeks)."""
        return str(self.metadata.get("task", CLASSIFICATION))

    @property
    def n_models(self) -> int:
        """Number of (fold) models, i.e. of weights files."""
        return len(self.metadata["weights"])

    @property
    def training_data(self) -> dict[str, Any]:
        return dict(self.metadata.get("training_data") or {})

    @property
    def is_synthetic(self) -> bool:
        """True when the model was trained on synthetic data (never present it as clinical)."""
        return bool(self.training_data.get("synthetic", False))

    @property
    def is_trained(self) -> bool:
        """False for bundles that only wrap pretrained or random weights with an untrained head."""
        return bool(self.training_data.get("trained", True))

    @property
    def flag(self) -> str:
        """:func:`training_flag` of this bundle ("" for a trained model on real data)."""
        return training_flag(self.training_data)

    @property
    def provenance(self) -> str:
        return str(self.metadata.get("provenance", ""))

    @property
    def cv_metrics(self) -> dict[str, Any] | None:
        return self.metadata.get("cv_metrics") or None


def read_bundle_metadata(path: str | os.PathLike) -> BundleMetadata:
    """Read and validate ``path/metadata.json`` (schema, and the target of a brain-age bundle).

    Args:
        path: the bundle folder.
    Returns:
        The :class:`BundleMetadata`.
    Raises:
        BundleError: one line naming the file and the first problem.
    """
    path = Path(path)
    meta = read_metadata_file(path)
    check_age_metadata(meta, str(path / METADATA_FILE), len(meta["weights"]))
    return BundleMetadata(path=path, metadata=meta)


__all__ = ["SYNTHETIC_FLAG", "UNTRAINED_FLAG", "BundleMetadata", "read_bundle_metadata", "training_flag"]

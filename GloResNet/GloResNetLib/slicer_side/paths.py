"""Path fields of GloResNetTraining (ctkPathLineEdit <-> str fields of the parameter node): synced from the line
edit's text, validated here.

``ctkPathLineEdit.currentPathChanged`` fires only for text its validator accepts (ctkPathLineEdit.cpp,
``updateHasValidInput``): never for an empty field, and the validator is built from ``nameFilters`` ("*" adds
nothing), so a cleared field or a file with another extension never reached the parameter node and the old
path came back. The widget therefore sends every text change of the inner line edit to :func:`sync_field`;
whether the path is usable is decided by :func:`check_training_paths`, with a message naming the field.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError

FILE, FOLDER, OUTPUT_FOLDER = "file", "folder", "output folder"


@dataclass(frozen=True)
class PathField:
    """A path line edit of the GUI: widget name in the .ui, parameter-node field, what it must name, label."""

    widget: str
    field: str
    kind: str
    label: str


#: GloResNetTraining's path fields (the order of the GUI).
TRAINING_PATH_FIELDS = (
    PathField("manifestPathLineEdit", "manifestPath", FILE, "CSV manifest"),
    PathField("dhcpPathLineEdit", "dhcpFolder", FOLDER, "dHCP folder"),
    PathField("outputFolderPathLineEdit", "outputFolder", OUTPUT_FOLDER, "Output folder"),
    PathField("pretrainedPathLineEdit", "pretrainedPath", FILE, "Pretrained weights"),
)


def path_value(text: Any) -> str:
    """The path a field's text names: surrounding blanks dropped ("" when cleared)."""
    return str(text or "").strip()


def sync_field(parameter_node: Any, field: str, text: Any) -> bool:
    """Write the line edit's text, as typed, into the parameter node's ``field`` (an empty text too; blanks are
    kept while typing and dropped by the checks); True if it changed."""
    value = str(text or "")
    if getattr(parameter_node, field) == value:
        return False
    setattr(parameter_node, field, value)
    return True


def _existing_ancestor(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def path_problem(kind: str, label: str, text: str) -> str | None:
    """Why ``text`` cannot be used as ``kind`` (FILE, FOLDER, OUTPUT_FOLDER); None if it can or is empty
    (whether a field is needed at all is the parameters' check)."""
    text = path_value(text)
    if not text:
        return None
    path = Path(text).expanduser()
    if kind == FILE:
        if not path.exists():
            return f"{label}: {path} does not exist"
        if not path.is_file():
            return f"{label}: {path} is a folder, not a file"
        if not os.access(path, os.R_OK):
            return f"{label}: {path} cannot be read"
        return None
    if kind == FOLDER:
        if not path.exists():
            return f"{label}: {path} does not exist"
        if not path.is_dir():
            return f"{label}: {path} is a file, not a folder"
        return None
    if kind == OUTPUT_FOLDER:
        if path.exists() and not path.is_dir():
            return f"{label}: {path} is a file, not a folder"
        ancestor = _existing_ancestor(path.resolve())
        if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
            return f"{label}: {path} cannot be written ({ancestor} is not writable)"
        return None
    raise ValueError(f"unknown path kind {kind!r}")


def check_training_paths(values: Mapping[str, str], source: str) -> None:
    """Refuse unusable paths of the training GUI (only the dataset field of ``source`` is checked).

    Args:
        values: parameter-node field -> text (:data:`TRAINING_PATH_FIELDS`' fields).
        source: "manifest", "dhcp" or "scene".
    Raises:
        InputError: one line naming the field and the problem.
    """
    skip = {"manifest": {"dhcpFolder"}, "dhcp": {"manifestPath"}}.get(source, {"manifestPath", "dhcpFolder"})
    for spec in TRAINING_PATH_FIELDS:
        if spec.field in skip:
            continue
        problem = path_problem(spec.kind, spec.label, values.get(spec.field, ""))
        if problem:
            raise InputError(problem)


__all__ = [
    "FILE",
    "FOLDER",
    "OUTPUT_FOLDER",
    "TRAINING_PATH_FIELDS",
    "PathField",
    "check_training_paths",
    "path_problem",
    "path_value",
    "sync_field",
]

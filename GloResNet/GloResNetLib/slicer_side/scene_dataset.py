"""A training dataset made of the scene's volumes: labels typed into a table node, written as NIfTI files and a
manifest next to the run folder (kept there: a stopped run can be resumed)."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InputError
from ..io import atomic_path
from .files import safe_name
from .scene import find_node, get_scene
from .tables import append_table_row, table_column, table_from_columns, table_rows
from .volumes import check_volume_node, input_volumes, write_volume_file

LABELS_ROLE = "GloResNetTrainingLabels"
PREFIX = "GloResNet training"
LABEL_COLUMNS = {"Volume": "string", "Label": "string", "Subject": "string", "Session": "string", "Node ID": "string"}


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

    scene = get_scene(scene)
    node = find_node(scene, "vtkMRMLTableNode", LABELS_ROLE)
    if node is None:
        node = table_from_columns(
            name, {c: [] for c in LABEL_COLUMNS}, scene=scene, types=LABEL_COLUMNS, role=LABELS_ROLE
        )
    return node


def fill_labels_table(table, volume_nodes: Iterable | None = None, labels: Mapping[str, Any] | None = None) -> int:
    """Add a row for each volume not yet listed (label empty unless ``labels[name]`` is given; subject =
    volume name), keep the rows typed so far; returns the number of rows added."""

    scene = table.GetScene()
    nodes = list(volume_nodes) if volume_nodes is not None else input_volumes(scene)
    listed = set(table_column(table, "Node ID")) if table.GetNumberOfRows() else set()
    added = 0
    for node in nodes:
        if node.GetID() in listed:
            continue
        label = (labels or {}).get(node.GetName(), "")
        append_table_row(
            table,
            {
                "Volume": node.GetName(),
                "Label": "" if label is None else str(label),
                "Subject": node.GetName(),
                "Session": "",
                "Node ID": node.GetID(),
            },
        )
        added += 1
    return added


def scene_cases(table, scene=None) -> list[SceneCase]:
    """The labelled rows of the labels table as :class:`SceneCase` (unlabelled rows are skipped; an unknown
    label or a volume no longer in the scene raises :class:`InputError` naming the row)."""

    scene = get_scene(scene if scene is not None else table.GetScene())
    cases = []
    for index, row in enumerate(table_rows(table), start=1):
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


def export_scene_dataset(cases: Sequence[SceneCase], folder: str | os.PathLike, synthetic: bool = False) -> Path:
    """Write each case's volume with Slicer's writer (``images/NNN_NAME.nii.gz``) and ``manifest.csv``
    (path, label, subject, session) into ``folder``; returns the manifest. With ``synthetic`` a
    ``cohort.json`` marks the data as synthetic (the bundle then says so)."""

    if not cases:
        raise InputError("no labelled volume: type 0 (no BI) or 1 (BI) in the labels table's Label column")
    counts = [sum(c.label == k for c in cases) for k in (0, 1)]
    if min(counts) == 0:
        raise InputError(f"the labelled volumes need both classes (no BI: {counts[0]}, BI: {counts[1]})")
    folder = Path(folder)
    for case in cases:
        check_volume_node(case.node)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for index, case in enumerate(cases):
        rel = f"images/{index:03d}_{safe_name(case.node.GetName())}.nii.gz"
        write_volume_file(case.node, folder / rel)
        rows.append(
            {"path": rel, "label": case.label, "subject": case.subject, "session": case.session or f"v{index:03d}"}
        )
    manifest = folder / "manifest.csv"
    with atomic_path(manifest) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "subject", "session"])
        writer.writeheader()
        writer.writerows(rows)
    if synthetic:
        (folder / "cohort.json").write_text(
            json.dumps({"synthetic": True, "source": "Slicer scene"}) + "\n", encoding="utf-8"
        )
    return manifest


__all__ = [
    "LABELS_ROLE",
    "LABEL_COLUMNS",
    "PREFIX",
    "SceneCase",
    "export_scene_dataset",
    "fill_labels_table",
    "labels_table",
    "parse_label",
    "scene_cases",
]

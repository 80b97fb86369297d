"""The MRML scene as GloResNet uses it: roles that let re-runs find their nodes again, and the module logics a
scene needs outside the Slicer application (scripts, tests with slicer-core).

Imports ``slicer`` (Slicer's MRML library, also usable without the application through the PyPI package
``slicer-core``) and never Qt. Output nodes are created once and updated on re-run: they are found again
through node references on the input volume, which are saved with the scene.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import slicer

#: Attribute naming what a node is for GloResNet (lets re-runs find and reuse it).
ROLE_ATTRIBUTE = "GloResNet.Role"
#: Attribute holding the ID of the input volume a result node belongs to.
SOURCE_ATTRIBUTE = "GloResNet.SourceVolumeID"
#: Node reference roles set on the input volume.
CAM_ROLE = "GloResNetSaliency"
OCCLUSION_ROLE = "GloResNetOcclusion"
GRADIENT_ROLE = "GloResNetGradient"
RESAMPLED_ROLE = "GloResNetResampled"
RESULTS_ROLE = "GloResNetResults"
COLOR_ROLE = "GloResNetHeatColors"
PLOT_ROLE = "GloResNetPlot"
#: Folder of the colour table shipped with the module (``Resources/ColorTables`` next to ``GloResNetLib``).
COLOR_TABLE_DIR = Path(__file__).resolve().parents[2] / "Resources" / "ColorTables"
COLOR_TABLE_FILE = COLOR_TABLE_DIR / "Inferno.txt"


def get_scene(scene=None):
    """``scene`` or the global ``slicer.mrmlScene``."""
    scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
    if scene is None:
        raise RuntimeError("no MRML scene: pass scene= or set slicer.mrmlScene")
    return scene


@dataclass
class StandaloneLogics:
    """Module logics for a scene outside the Slicer app (scripts, tests). Keep this object alive: the
    built-in colour tables exist only while the colour logic does."""

    scene: Any
    application: Any
    colors: Any
    volumes: Any


def create_logics(scene=None, color_dirs: Sequence[str | Path] | None = None) -> StandaloneLogics:
    """Application, colour and volumes logics for ``scene`` (not needed inside Slicer, which has its own).

    The colour table folders are registered before the scene is set, so that their file tables get Slicer's
    IDs (``vtkMRMLColorTableNodeFileInferno.txt``).
    """
    scene = get_scene(scene)
    app = slicer.vtkSlicerApplicationLogic()
    app.SetMRMLScene(scene)
    colors = slicer.vtkSlicerColorLogic()
    colors.SetMRMLApplicationLogic(app)
    dirs = [str(d) for d in (color_dirs if color_dirs is not None else [COLOR_TABLE_DIR]) if Path(d).is_dir()]
    if dirs:
        colors.SetUserColorFilePaths(";".join(dirs))
    colors.SetMRMLScene(scene)
    app.SetModuleLogic("Colors", colors)
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetMRMLApplicationLogic(app)
    volumes.SetMRMLScene(scene)
    app.SetModuleLogic("Volumes", volumes)
    return StandaloneLogics(scene=scene, application=app, colors=colors, volumes=volumes)


def scene_nodes(scene, class_name: str, name: str | None = None) -> list:
    """The nodes of ``class_name`` in ``scene`` (only those named ``name`` if given), in scene order."""
    if name is None:
        count = scene.GetNumberOfNodesByClass(class_name)
        return [scene.GetNthNodeByClass(i, class_name) for i in range(count)]
    collection = scene.GetNodesByClassByName(class_name, name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def find_node(scene, class_name: str, role: str, name: str | None = None, source=None):
    """First node of ``class_name`` marked with ``role`` (and ``name`` / source volume if given), or None."""
    for node in scene_nodes(get_scene(scene), class_name, name):
        if node.GetAttribute(ROLE_ATTRIBUTE) != role:
            continue
        if source is not None and node.GetAttribute(SOURCE_ATTRIBUTE) != source.GetID():
            continue
        return node
    return None


def mark_node(node, role: str, source=None) -> None:
    """Mark ``node`` with its GloResNet ``role`` (and the input volume ``source`` it belongs to) so that a
    re-run finds it again (:func:`find_node`)."""
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    if source is not None:
        node.SetAttribute(SOURCE_ATTRIBUTE, source.GetID())


__all__ = [
    "CAM_ROLE",
    "COLOR_ROLE",
    "GRADIENT_ROLE",
    "OCCLUSION_ROLE",
    "PLOT_ROLE",
    "RESAMPLED_ROLE",
    "RESULTS_ROLE",
    "ROLE_ATTRIBUTE",
    "SOURCE_ATTRIBUTE",
    "StandaloneLogics",
    "create_logics",
    "find_node",
    "get_scene",
]

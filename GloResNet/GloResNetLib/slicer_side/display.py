"""How results are shown: the heat colour table, the saliency map's window and threshold, and the slice views'
layers (composite and slice nodes only: no Qt)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer

from .scene import COLOR_ROLE, COLOR_TABLE_FILE, find_node, get_scene, mark_node, scene_nodes
from .volumes import peak_ras

#: Slicer's ID of the Inferno file colour table (present in the app, or once its folder is registered).
HEAT_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
#: Built-in tables used when no Inferno table can be had.
FALLBACK_COLOR_NODE_IDS = ("vtkMRMLPETProceduralColorNodePET-Heat", "vtkMRMLColorTableNodeIron")
DEFAULT_CAM_THRESHOLD = 0.3
DEFAULT_CAM_OPACITY = 0.5
KEEP = "keep-current"


def heat_color_node(scene=None, path: str | Path | None = None):
    """The heat colour table for saliency maps: Slicer's Inferno file table, else the shipped
    ``Resources/ColorTables/Inferno.txt`` loaded once into the scene, else a built-in table (PET-Heat, Iron);
    None if the scene has no colour tables at all."""
    scene = get_scene(scene)
    node = scene.GetNodeByID(HEAT_COLOR_NODE_ID)
    if node is not None:
        return node
    node = find_node(scene, "vtkMRMLColorTableNode", COLOR_ROLE)
    if node is not None:
        return node
    path = Path(path) if path is not None else COLOR_TABLE_FILE
    if path.is_file():
        node = slicer.vtkMRMLColorTableNode()
        storage = slicer.vtkMRMLColorTableStorageNode()
        storage.SetFileName(str(path))
        if storage.ReadData(node) and node.GetNumberOfColors() > 1:
            node.SetName(f"GloResNet {path.stem}")
            node.SetAttribute("Category", "GloResNet")
            mark_node(node, COLOR_ROLE)
            scene.AddNode(node)
            return node
    for node_id in FALLBACK_COLOR_NODE_IDS:
        node = scene.GetNodeByID(node_id)
        if node is not None:
            return node
    return None


def _map_peak(node) -> float:
    """The largest value of a saliency volume (1 for an empty or all-zero one)."""
    image = node.GetImageData() if node is not None else None
    peak = float(image.GetScalarRange()[1]) if image is not None else 0.0
    return peak if np.isfinite(peak) and peak > 0 else 1.0


def configure_cam_display(cam_node, color_node=None, threshold: float = DEFAULT_CAM_THRESHOLD) -> None:
    """Show a saliency volume (Grad-CAM or gradient 0..1, an occlusion map's drop of P(BI)) with a heat colour map, a
    fixed window from 0 to its maximum and a lower threshold at ``threshold`` times that maximum."""
    display = cam_node.GetDisplayNode()
    if display is None:
        cam_node.CreateDefaultDisplayNodes()
        display = cam_node.GetDisplayNode()
    peak = _map_peak(cam_node)
    was_modifying = display.StartModify()
    try:
        if color_node is not None:
            display.SetAndObserveColorNodeID(color_node.GetID())
        display.SetAutoWindowLevel(False)
        display.SetWindowLevelMinMax(0.0, peak)
        display.SetAutoThreshold(False)
        display.SetApplyThreshold(True)
        display.SetThreshold(float(threshold) * peak, peak)
        display.SetInterpolate(True)
    finally:
        display.EndModify(was_modifying)


def set_cam_threshold(cam_node, lower: float) -> None:
    """Hide saliency below ``lower`` (0..1) times the map's maximum through the display node's threshold."""
    display = cam_node.GetDisplayNode() if cam_node is not None else None
    if display is not None:
        peak = _map_peak(cam_node)
        display.SetApplyThreshold(True)
        display.SetThreshold(float(lower) * peak, max(1.0, float(lower)) * peak)


def _node_id(node_or_id) -> str | None:
    if node_or_id is None or isinstance(node_or_id, str):
        return node_or_id
    return node_or_id.GetID()


def set_slice_layers(background=KEEP, foreground=KEEP, foreground_opacity: float | None = None, scene=None) -> int:
    """Set background / foreground volumes and foreground opacity of every slice view (``KEEP`` leaves a
    layer as it is); returns the number of slice views changed. Works on the composite nodes: no Qt."""
    scene = get_scene(scene)
    composites = scene_nodes(scene, "vtkMRMLSliceCompositeNode")
    for composite in composites:
        if background != KEEP:
            composite.SetBackgroundVolumeID(_node_id(background))
        if foreground != KEEP:
            composite.SetForegroundVolumeID(_node_id(foreground))
        if foreground_opacity is not None:
            composite.SetForegroundOpacity(float(foreground_opacity))
    return len(composites)


def slice_layers(scene=None) -> list[dict[str, Any]]:
    """Background, foreground and foreground opacity of each slice view."""
    return [
        {
            "view": c.GetLayoutName(),
            "background": c.GetBackgroundVolumeID(),
            "foreground": c.GetForegroundVolumeID(),
            "foreground_opacity": c.GetForegroundOpacity(),
        }
        for c in scene_nodes(get_scene(scene), "vtkMRMLSliceCompositeNode")
    ]


def jump_slices_to(ras: Sequence[float], scene=None) -> None:
    """Centre every slice view on a world RAS point (e.g. the saliency peak)."""
    slicer.vtkMRMLSliceNode.JumpAllSlices(
        get_scene(scene), float(ras[0]), float(ras[1]), float(ras[2]), slicer.vtkMRMLSliceNode.CenteredJumpSlice
    )


def show_result_layers(
    input_volume,
    saliency_volume=None,
    resampled_volume=None,
    threshold: float = DEFAULT_CAM_THRESHOLD,
    opacity: float = DEFAULT_CAM_OPACITY,
    show_resampled: bool = False,
    scene=None,
) -> bool:
    """Show a prediction in the slice views: the saliency map (hidden below ``threshold`` times its maximum)
    over the input volume, or over the resampled network input with ``show_resampled``.

    Args:
        input_volume, saliency_volume, resampled_volume: the nodes (None: not there).
        threshold: lower threshold, 0..1 of the map's maximum. opacity: of the saliency layer.
    Returns:
        False, leaving the user's views alone, when there is nothing of ours to show.
    """
    if not saliency_volume and not show_resampled:
        return False
    if saliency_volume:
        set_cam_threshold(saliency_volume, threshold)
    background = resampled_volume if (show_resampled and resampled_volume) else input_volume
    set_slice_layers(
        background=background if background else KEEP,
        foreground=saliency_volume if saliency_volume else KEEP,
        foreground_opacity=opacity,
        scene=scene,
    )
    return True


def jump_to_peak(volume, scene=None) -> bool:
    """Centre every slice view on the maximum of ``volume`` (e.g. the saliency map).

    Returns:
        False if there is no volume or it has no positive maximum.
    """
    ras = peak_ras(volume) if volume else None
    if ras is None:
        return False
    jump_slices_to(ras, scene)
    return True


__all__ = [
    "DEFAULT_CAM_OPACITY",
    "DEFAULT_CAM_THRESHOLD",
    "FALLBACK_COLOR_NODE_IDS",
    "HEAT_COLOR_NODE_ID",
    "KEEP",
    "configure_cam_display",
    "heat_color_node",
    "jump_slices_to",
    "jump_to_peak",
    "set_cam_threshold",
    "set_slice_layers",
    "slice_layers",
]

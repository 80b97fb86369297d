"""MRML side of the GloResNet Slicer modules: volume nodes <-> numpy, result and display nodes, tables, plots.

Imports ``slicer`` and ``vtk`` (Slicer's MRML library, also usable without the application through the PyPI
package ``slicer-core``) and never Qt: the module Logic classes stay thin and all of this is tested with real
MRML nodes. Nothing here imports torch at import time.

Conventions: arrays are indexed (i, j, k) as in nibabel and the rest of GloResNetLib (Slicer's own arrays
are (k, j, i)); affines are 4x4 IJK-to-RAS matrices (= nibabel's voxel-to-RAS affine). Geometry is the
volume's own (local) IJK-to-RAS; result nodes observe the input's parent transform, so they stay aligned.
Output nodes are created once and updated on re-run: they are found again through node references on the
input volume, which are saved with the scene.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from . import process
from .errors import InputError

#: Attribute naming what a node is for GloResNet (lets re-runs find and reuse it).
ROLE_ATTRIBUTE = "GloResNet.Role"
#: Attribute holding the ID of the input volume a result node belongs to.
SOURCE_ATTRIBUTE = "GloResNet.SourceVolumeID"
#: Node reference roles set on the input volume.
CAM_ROLE = "GloResNetSaliency"
OCCLUSION_ROLE = "GloResNetOcclusion"
RESAMPLED_ROLE = "GloResNetResampled"
RESULTS_ROLE = "GloResNetResults"
COLOR_ROLE = "GloResNetHeatColors"
PLOT_ROLE = "GloResNetPlot"

RESULTS_TABLE_NAME = "GloResNet results"
#: Columns of the results table (one row per prediction) and their types. A brain-age bundle's row has the
#: estimated age and its spread (weeks) and leaves P(BI), label, threshold and TTA spread empty; a classifier's
#: row leaves the age columns empty.
RESULT_COLUMNS: dict[str, str] = {
    "Volume": "string", "Model": "string", "Training data": "string", "P(BI)": "double", "Label": "string",
    "Threshold": "double", "TTA spread": "double", "Age (weeks)": "double", "Age spread (weeks)": "double",
    "Device": "string", "Time (s)": "double", "Date": "string",
}

#: Folder of the colour table shipped with the module (``Resources/ColorTables`` next to ``GloResNetLib``).
COLOR_TABLE_DIR = Path(__file__).resolve().parent.parent / "Resources" / "ColorTables"
COLOR_TABLE_FILE = COLOR_TABLE_DIR / "Inferno.txt"
#: Slicer's ID of the Inferno file colour table (present in the app, or once its folder is registered).
HEAT_COLOR_NODE_ID = "vtkMRMLColorTableNodeFileInferno.txt"
#: Built-in tables used when no Inferno table can be had.
FALLBACK_COLOR_NODE_IDS = ("vtkMRMLPETProceduralColorNodePET-Heat", "vtkMRMLColorTableNodeIron")

DEFAULT_CAM_THRESHOLD = 0.3
DEFAULT_CAM_OPACITY = 0.5
KEEP = "keep-current"


# ------------------------------------------------------------------------------------------------------------
# Scene and logics
# ------------------------------------------------------------------------------------------------------------

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


def _nodes(scene, class_name: str, name: str | None = None) -> list:
    if name is None:
        count = scene.GetNumberOfNodesByClass(class_name)
        return [scene.GetNthNodeByClass(i, class_name) for i in range(count)]
    collection = scene.GetNodesByClassByName(class_name, name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def find_node(scene, class_name: str, role: str, name: str | None = None, source=None):
    """First node of ``class_name`` marked with ``role`` (and ``name`` / source volume if given), or None."""
    for node in _nodes(get_scene(scene), class_name, name):
        if node.GetAttribute(ROLE_ATTRIBUTE) != role:
            continue
        if source is not None and node.GetAttribute(SOURCE_ATTRIBUTE) != source.GetID():
            continue
        return node
    return None


def _mark(node, role: str, source=None) -> None:
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    if source is not None:
        node.SetAttribute(SOURCE_ATTRIBUTE, source.GetID())


# ------------------------------------------------------------------------------------------------------------
# Volume node <-> (array, affine)
# ------------------------------------------------------------------------------------------------------------

def ijk_to_ras(node) -> np.ndarray:
    """The volume's 4x4 IJK-to-RAS matrix (its own geometry, without parent transforms)."""
    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix).astype(np.float64)


def check_volume_node(node, name: str | None = None) -> None:
    """Refuse what cannot be a T2w volume: no node, no image, label map, vector image, 2D image."""
    if node is None:
        raise InputError("no input volume selected")
    name = name or node.GetName()
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"{name}: not a scalar volume ({node.GetClassName()})")
    if node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise InputError(f"{name}: is a label map (segmentation), not a T2w image")
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0:
        raise InputError(f"{name}: volume has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"{name}: image has {image.GetNumberOfScalarComponents()} components per voxel "
                         "(colour or vector image); a scalar T2w volume is needed")
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise InputError(f"{name}: image of size {dims[0]}x{dims[1]}x{dims[2]} is 2D; "
                         "a 3D T2w volume is needed")


def volume_to_array(node, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """``(array (I, J, K) as stored, IJK-to-RAS affine)`` of a scalar volume node (a copy of the voxels)."""
    check_volume_node(node)
    kji = slicer.util.arrayFromVolume(node)
    array = np.array(kji.transpose(2, 1, 0), dtype=dtype, order="C", copy=True)
    return array, ijk_to_ras(node)


def update_volume_from_array(node, array: np.ndarray, affine: np.ndarray | None = None,
                             reference=None) -> None:
    """Set a volume's voxels from an (I, J, K) array and its geometry from ``affine`` or, exactly, from the
    ``reference`` volume (same origin, spacing, directions and parent transform)."""
    array = np.asarray(array)
    if array.ndim != 3:
        raise InputError(f"expected a 3D array, got shape {array.shape}")
    was_modifying = node.StartModify()
    try:
        if reference is not None:
            node.CopyOrientation(reference)
        elif affine is not None:
            node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(np.asarray(affine, dtype=np.float64)))
        slicer.util.updateVolumeFromArray(node, np.ascontiguousarray(array.transpose(2, 1, 0)))
    finally:
        node.EndModify(was_modifying)
    if reference is not None:
        node.SetAndObserveTransformNodeID(reference.GetTransformNodeID())


def output_volume(array: np.ndarray, name: str, affine: np.ndarray | None = None, reference=None, source=None,
                  role: str | None = None, scene=None, node=None):
    """Create, or update in place, the scalar volume node holding ``array``; returns it.

    The node is found again through ``source.GetNodeReference(role)`` (result of a given input volume) or,
    without a source, by name and role, so re-running never piles up copies.
    """
    scene = get_scene(scene)
    if node is None and role:
        if source is not None:
            node = source.GetNodeReference(role)
        else:
            node = find_node(scene, "vtkMRMLScalarVolumeNode", role, name)
    if node is None or node.GetScene() is not scene:
        node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    if role:
        _mark(node, role, source)
        if source is not None:
            source.SetNodeReferenceID(role, node.GetID())
    update_volume_from_array(node, array, affine, reference)
    if node.GetDisplayNode() is None:
        node.CreateDefaultDisplayNodes()
    return node


def read_volume_file(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a volume file with Slicer's own reader (ITK): ``(array (I, J, K) float32, IJK-to-RAS affine)``.

    As when Slicer loads a file: the qform is trusted, and a left-handed voxel-to-world matrix (NIfTI
    ``qfac = -1``) is made right-handed by reversing the k axis (same world positions, other storage
    order). Use :func:`GloResNetLib.io.read_volume` for the file's own voxel order.
    """
    node = slicer.vtkMRMLScalarVolumeNode()
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetSingleFile(True)
    if not Path(path).is_file() or not storage.ReadData(node):
        raise InputError(f"{path}: Slicer could not read this volume")
    return volume_to_array(node)


def write_volume_file(node, path: str | Path) -> Path:
    """Write a volume node with Slicer's own writer (NIfTI, NRRD... by extension), as Slicer would save it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    storage = slicer.vtkMRMLVolumeArchetypeStorageNode()
    storage.SetFileName(str(path))
    storage.SetUseCompression(path.name.lower().endswith((".gz", ".nrrd")))
    if not storage.WriteData(node):
        raise InputError(f"{path}: Slicer could not write volume '{node.GetName()}'")
    return path


def peak_ras(node, world: bool = True) -> list[float] | None:
    """RAS position (mm) of a volume's maximum (e.g. the saliency peak); in world coordinates through its
    parent transforms when ``world``. None if the volume is empty or all zero."""
    if node is None or node.GetImageData() is None:
        return None
    kji = slicer.util.arrayFromVolume(node)
    if kji.size == 0 or not np.isfinite(kji).any() or float(np.nanmax(kji)) <= 0:
        return None
    k, j, i = np.unravel_index(int(np.nanargmax(kji)), kji.shape)
    ras = (ijk_to_ras(node) @ np.array([i, j, k, 1.0]))[:3]
    parent = node.GetParentTransformNode()
    if world and parent is not None:
        transform = vtk.vtkGeneralTransform()
        slicer.vtkMRMLTransformNode.GetTransformBetweenNodes(parent, None, transform)
        ras = np.array(transform.TransformPoint(*ras))
    return [float(v) for v in ras]


# ------------------------------------------------------------------------------------------------------------
# Colours and slice views (Qt-free: composite and slice nodes only)
# ------------------------------------------------------------------------------------------------------------

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
            _mark(node, COLOR_ROLE)
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
    """Show a saliency volume (Grad-CAM 0..1, or an occlusion map's drop of P(BI)) with a heat colour map, a
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


def set_slice_layers(background=KEEP, foreground=KEEP, foreground_opacity: float | None = None,
                     scene=None) -> int:
    """Set background / foreground volumes and foreground opacity of every slice view (``KEEP`` leaves a
    layer as it is); returns the number of slice views changed. Works on the composite nodes: no Qt."""
    scene = get_scene(scene)
    composites = _nodes(scene, "vtkMRMLSliceCompositeNode")
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
    return [{"view": c.GetLayoutName(), "background": c.GetBackgroundVolumeID(),
             "foreground": c.GetForegroundVolumeID(), "foreground_opacity": c.GetForegroundOpacity()}
            for c in _nodes(get_scene(scene), "vtkMRMLSliceCompositeNode")]


def jump_slices_to(ras: Sequence[float], scene=None) -> None:
    """Centre every slice view on a world RAS point (e.g. the saliency peak)."""
    slicer.vtkMRMLSliceNode.JumpAllSlices(get_scene(scene), float(ras[0]), float(ras[1]), float(ras[2]),
                                          slicer.vtkMRMLSliceNode.CenteredJumpSlice)


# ------------------------------------------------------------------------------------------------------------
# Tables and plots (shared with the training module)
# ------------------------------------------------------------------------------------------------------------

def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float, np.number, bool, np.bool_))
                             and not isinstance(value, str))


def _new_column(name: str, kind: str, n_rows: int):
    array = vtk.vtkDoubleArray() if kind == "double" else vtk.vtkStringArray()
    array.SetName(name)
    array.SetNumberOfValues(n_rows)
    for row in range(n_rows):
        array.SetValue(row, math.nan if kind == "double" else "")
    return array


def _set_value(array, row: int, value: Any) -> None:
    if isinstance(array, vtk.vtkStringArray):
        array.SetValue(row, "" if value is None else str(value))
        return
    try:
        array.SetValue(row, math.nan if value is None else float(value))
    except (TypeError, ValueError):
        array.SetValue(row, math.nan)


def table_from_columns(name: str, columns: Mapping[str, Sequence[Any]], scene=None, node=None,
                       types: Mapping[str, str] | None = None, role: str = PLOT_ROLE):
    """Create, or replace the contents of, a table node from ``{column: values}``; returns the node.

    Column types: ``types[column]`` ("double" or "string"), else "double" when every value is a number or
    None (None -> NaN), else "string". The node is found again by ``name`` and ``role``.
    """
    scene = get_scene(scene)
    if node is None:
        node = find_node(scene, "vtkMRMLTableNode", role, name)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        _mark(node, role)
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"table '{name}': columns have different lengths {sorted(lengths)}")
    n_rows = lengths.pop() if lengths else 0
    was_modifying = node.StartModify()
    try:
        node.RemoveAllColumns()
        for col, values in columns.items():
            numeric = bool(values) and all(map(_is_number, values))
            kind = (types or {}).get(col) or ("double" if numeric else "string")
            array = _new_column(col, kind, n_rows)
            for row, value in enumerate(values):
                _set_value(array, row, value)
            node.AddColumn(array)
        node.GetTable().Modified()
    finally:
        node.EndModify(was_modifying)
    node.Modified()
    return node


def append_table_row(table, values: Mapping[str, Any]) -> int:
    """Append one row (missing columns are added, absent values left empty / NaN); returns its index.

    Plot series reading the table update at once (the live training curves use this).
    """
    vtable = table.GetTable()
    n_rows = table.GetNumberOfRows()
    for col, value in values.items():
        if vtable.GetColumnByName(col) is None:
            table.AddColumn(_new_column(col, "double" if _is_number(value) else "string", n_rows))
    row = table.AddEmptyRow()
    for c in range(vtable.GetNumberOfColumns()):
        array = vtable.GetColumn(c)
        _set_value(array, row, values.get(array.GetName()))
    vtable.Modified()
    table.Modified()
    return row


def table_column(table, name: str) -> list[Any]:
    """Values of a column (floats or strings)."""
    array = table.GetTable().GetColumnByName(name)
    if array is None:
        raise KeyError(f"table '{table.GetName()}' has no column '{name}'")
    return [array.GetValue(i) for i in range(array.GetNumberOfValues())]


def table_rows(table) -> list[dict[str, Any]]:
    """All rows as dicts (column name -> value)."""
    vtable = table.GetTable()
    names = [vtable.GetColumn(c).GetName() for c in range(vtable.GetNumberOfColumns())]
    cols = {n: table_column(table, n) for n in names}
    return [{n: cols[n][r] for n in names} for r in range(table.GetNumberOfRows())]


def plot_chart(name: str, table, x_column: str, y_columns: Sequence[str], scene=None,
               title: str | None = None, x_title: str | None = None, y_title: str | None = None,
               series_names: Sequence[str] | None = None, colors: Sequence[Sequence[float]] | None = None,
               markers: bool = True):
    """Create, or update in place, a plot chart with one line series per ``y_columns`` read from ``table``.

    Series are found again by name, so calling it again (or appending table rows) never duplicates them.
    Show it in the app with ``slicer.modules.plots.logic().ShowChartInLayout(chart)``.
    """
    scene = get_scene(scene)
    chart = find_node(scene, "vtkMRMLPlotChartNode", PLOT_ROLE, name)
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
        _mark(chart, PLOT_ROLE)
    chart.SetTitle(title if title is not None else name)
    chart.SetXAxisTitle(x_title if x_title is not None else x_column)
    if y_title is not None:
        chart.SetYAxisTitle(y_title)
    chart.SetLegendVisibility(True)
    for index, column in enumerate(y_columns):
        label = series_names[index] if series_names else column
        series_name = f"{name}: {label}"
        series = find_node(scene, "vtkMRMLPlotSeriesNode", PLOT_ROLE, series_name)
        if series is None:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", series_name)
            _mark(series, PLOT_ROLE)
            if colors and index < len(colors):
                series.SetColor(*[float(c) for c in colors[index]][:3])
            else:
                series.SetUniqueColor()
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(x_column)
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle if markers
                              else slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
        if not chart.HasPlotSeriesNodeID(series.GetID()):
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


# ------------------------------------------------------------------------------------------------------------
# Prediction results -> nodes
# ------------------------------------------------------------------------------------------------------------

def results_table(scene=None, name: str = RESULTS_TABLE_NAME):
    """The results table node (one row per prediction), created once per scene with typed columns."""
    scene = get_scene(scene)
    node = find_node(scene, "vtkMRMLTableNode", RESULTS_ROLE)
    if node is None:
        node = table_from_columns(name, {c: [] for c in RESULT_COLUMNS}, scene=scene, types=RESULT_COLUMNS,
                                  role=RESULTS_ROLE)
    return node


def model_label(summary: Mapping[str, Any]) -> str:
    """Model name with a loud flag for synthetic-data or untrained models (shown wherever a result is)."""
    training = summary.get("training_data") or {}
    name = str(summary.get("model", "?"))
    if training.get("trained") is False:
        return f"{name} [UNTRAINED classifier - predictions are meaningless]"
    if training.get("synthetic") or summary.get("synthetic_model"):
        return f"{name} [SYNTHETIC training data - demonstration only]"
    return name


def total_time_s(summary: Mapping[str, Any]) -> float:
    """Time taken for one prediction (sum of the reported stages, model loading excluded)."""
    return float(sum(float(v) for v in (summary.get("timings_s") or {}).values()))


def result_texts(summary: Mapping[str, Any]) -> dict[str, str]:
    """The texts the module shows for one result: caption and value of the first row ("probability"), label,
    spread, model, training data, device, time. For a brain-age result (``age_weeks``) the first row is the
    estimated age in weeks and the label says that there is none."""
    training = summary.get("training_data") or {}
    texts = {
        "model": model_label(summary),
        "training_data": str(training.get("description", "unknown")),
        "device": str(summary.get("device", "?")),
        "time": f"{total_time_s(summary):.2f} s",
    }
    if "age_weeks" in summary:
        mae = summary.get("cv_mae_weeks")
        n = len(summary.get("view_age_weeks") or {}) * len(summary.get("model_age_weeks") or [])
        return {
            "caption": "Estimated age (PMA):",
            "probability": f"{float(summary['age_weeks']):.1f} weeks"
                           + (f" (CV MAE {float(mae):.2f} weeks)" if mae is not None else ""),
            "label": "n/a (brain-age model: no injury label)",
            "spread": f"{float(summary.get('spread_weeks', 0.0)):.2f} weeks over {n} estimates" if n > 1
                      else "n/a (one estimate)",
            **texts,
        }
    views = summary.get("view_probabilities") or {}
    spread = float(summary.get("spread", 0.0))
    return {
        "caption": "P(brain injury):",
        "probability": f"{float(summary['probability']):.3f}",
        "label": f"{summary.get('label_name', summary.get('label'))} "
                 f"(threshold {float(summary.get('threshold', 0.5)):g})",
        "spread": f"{spread:.3f} over {len(views)} views" if len(views) > 1 else "n/a (no TTA)",
        **texts,
    }


def append_result_row(table, summary: Mapping[str, Any], volume_name: str) -> int:
    """Append one prediction to the results table; returns the row index. A brain-age result fills the age
    columns and leaves P(BI), label, threshold and TTA spread empty (NaN / "")."""
    training = summary.get("training_data") or {}
    row = {
        "Volume": volume_name,
        "Model": model_label(summary),
        "Training data": str(training.get("description", "unknown")),
        "Device": str(summary.get("device", "")),
        "Time (s)": round(total_time_s(summary), 3),
        "Date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    if "age_weeks" in summary:
        row.update({"Age (weeks)": float(summary["age_weeks"]),
                    "Age spread (weeks)": float(summary.get("spread_weeks", 0.0))})
    else:
        row.update({"P(BI)": float(summary["probability"]),
                    "Label": str(summary.get("label_name", summary.get("label"))),
                    "Threshold": float(summary.get("threshold", 0.5)),
                    "TTA spread": float(summary.get("spread", 0.0))})
    return append_table_row(table, row)


@dataclass
class PredictionNodes:
    """The nodes showing one prediction: input, saliency maps (Grad-CAM and/or occlusion, on the input grid;
    ``overlay`` is the one shown), resampled volume, table row."""

    input: Any
    cam: Any
    resampled: Any
    table: Any
    row: int
    summary: dict[str, Any] = field(repr=False)
    occlusion: Any = None
    overlay: Any = None

    @property
    def probability(self) -> float:
        if "probability" not in self.summary:
            raise InputError(f"{self.input.GetName()}: a brain-age result has no P(BI) (see age_weeks)")
        return float(self.summary["probability"])

    @property
    def age_weeks(self) -> float | None:
        """Estimated post-menstrual age at scan (weeks) of a brain-age bundle's result, else None."""
        value = self.summary.get("age_weeks")
        return None if value is None else float(value)

    def peak_ras(self) -> list[float] | None:
        """World RAS position of the peak of the saliency map shown."""
        return peak_ras(self.overlay) if self.overlay is not None else None

    def texts(self) -> dict[str, str]:
        return result_texts(self.summary)


def _saliency_node(input_node, array: np.ndarray, label: str, role: str, scene, color_node, threshold: float):
    name = input_node.GetName()
    dims = tuple(input_node.GetImageData().GetDimensions())
    if tuple(np.shape(array)) != dims:
        raise InputError(f"{name}: {label} map of shape {np.shape(array)} does not match the volume {dims}")
    node = output_volume(np.asarray(array, dtype=np.float32), f"{name} GloResNet {label}", reference=input_node,
                         source=input_node, role=role, scene=scene)
    configure_cam_display(node, color_node or heat_color_node(scene), threshold)
    return node


def show_prediction(input_node, summary: Mapping[str, Any], cam: np.ndarray | None, resampled: np.ndarray,
                    resampled_affine: np.ndarray, scene=None, table=None, color_node=None,
                    threshold: float = DEFAULT_CAM_THRESHOLD, opacity: float = DEFAULT_CAM_OPACITY,
                    show: bool = True, occlusion: np.ndarray | None = None) -> PredictionNodes:
    """Put one prediction into the scene: the saliency volumes (Grad-CAM ``cam`` and/or the ``occlusion``
    map) with exactly the input's geometry, the resampled network input with its own affine, one
    results-table row; optionally show a saliency map (the occlusion map when there is one, else Grad-CAM)
    as the foreground layer over the input. Nodes from an earlier run on the same input are reused."""
    scene = get_scene(scene)
    name = input_node.GetName()
    cam_node = occlusion_node = None
    if cam is not None:
        cam_node = _saliency_node(input_node, cam, "saliency", CAM_ROLE, scene, color_node, threshold)
    if occlusion is not None:
        occlusion_node = _saliency_node(input_node, occlusion, "occlusion", OCCLUSION_ROLE, scene, color_node,
                                        threshold)
    overlay = occlusion_node if occlusion_node is not None else cam_node
    resampled_node = output_volume(np.asarray(resampled, dtype=np.float32), f"{name} GloResNet resampled",
                                   affine=resampled_affine, source=input_node, role=RESAMPLED_ROLE,
                                   scene=scene)
    resampled_node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    table = table if table is not None else results_table(scene)
    row = append_result_row(table, summary, name)
    if show:
        set_slice_layers(background=input_node, foreground=overlay, foreground_opacity=opacity, scene=scene)
    return PredictionNodes(input=input_node, cam=cam_node, resampled=resampled_node, table=table, row=row,
                           summary=dict(summary), occlusion=occlusion_node, overlay=overlay)


def add_prediction_result(input_node, result, **kwargs: Any) -> PredictionNodes:
    """Show an in-process :class:`GloResNetLib.inference.PredictionResult` (see :func:`show_prediction`)."""
    return show_prediction(input_node, result.to_json_dict(), result.cam, result.resampled,
                           result.resampled_affine, occlusion=result.occlusion, **kwargs)


def add_prediction_record(input_node, record: Mapping[str, Any], **kwargs: Any) -> PredictionNodes:
    """Show one result of ``gloresnet predict --json`` on the volume node it was computed from.

    The output files are read in their stored voxel order (GloResNetLib.io, as the command line wrote
    them), not with Slicer's reader, which would reverse the k axis of left-handed geometries.
    """
    from .io import read_volume

    outputs = record.get("outputs") or {}
    cam = read_volume(outputs["cam"])[0] if outputs.get("cam") else None
    occlusion = read_volume(outputs["occlusion"])[0] if outputs.get("occlusion") else None
    resampled, resampled_affine = read_volume(outputs["resampled"])
    return show_prediction(input_node, record, cam, resampled, resampled_affine, occlusion=occlusion, **kwargs)


def predict_nodes(volume_nodes: Iterable, bundle, tta: bool = True, device: str | None = None,
                  cam: bool = True, saliency: str = "gradcam", occlusion: Any = None,
                  **kwargs: Any) -> list[PredictionNodes]:
    """Predict volume nodes in this Python process (console, batch, self-test); blocks while it runs.
    ``saliency``: gradcam, occlusion or both; ``occlusion``: an :class:`GloResNetLib.occlusion.OcclusionConfig`
    (see :func:`GloResNetLib.inference.predict`).

    ``bundle`` is a loaded :class:`GloResNetLib.bundle.Bundle` or a bundle folder. The GUI uses
    :class:`PredictionJob` instead, which keeps Slicer responsive.
    """
    from .bundle import Bundle, load_bundle
    from .inference import predict

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, device=device or "auto")
    results = []
    for node in volume_nodes:
        array, affine = volume_to_array(node)
        result = predict(bundle, array, affine, tta=tta, cam=cam, device=device, saliency=saliency,
                         occlusion=occlusion)
        results.append(add_prediction_result(node, result, **kwargs))
    return results


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("._")[:60] or "volume"


class PredictionJob:
    """One background ``gloresnet predict`` run over volume nodes; results become nodes as they arrive.

    The volumes are written with Slicer's writer to a temporary folder, the command line runs with Slicer's
    Python (:mod:`GloResNetLib.process`), and :meth:`poll` (from a GUI timer) or :meth:`wait` (console)
    turns its events into :class:`PredictionNodes`. Extra keyword arguments go to :func:`show_prediction`.
    """

    def __init__(self, volume_nodes: Iterable, bundle_path: str | Path, device: str = "auto",
                 tta: bool = True, cam: bool = True, work_dir: str | Path | None = None,
                 python: str | None = None, keep_files: bool = False, saliency: str = "gradcam",
                 occlusion_mask: int | None = None, **show_kwargs: Any) -> None:
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
        if saliency not in ("gradcam", "occlusion", "both"):  # inference.SALIENCY_METHODS, without importing torch
            raise InputError(f"unknown saliency method {saliency!r} (choose from gradcam, occlusion, both)")
        self.saliency, self.occlusion_mask = saliency, occlusion_mask
        self.python = python
        self.keep_files = keep_files
        self.show_kwargs = show_kwargs
        self._own_dir = work_dir is None
        self.work_dir = Path(work_dir) if work_dir is not None else None
        self.process: process.BackgroundProcess | None = None
        self.results: list[PredictionNodes] = []
        self.errors: list[tuple[str, str]] = []
        self.stage = "not started"
        self.fraction = 0.0
        self._by_path: dict[str, Any] = {}
        self._started = 0.0

    # -- running ------------------------------------------------------------------------------------------
    def start(self) -> PredictionJob:
        """Write the inputs and start the background process (returns at once)."""
        if self.process is not None:
            raise RuntimeError("prediction already started")
        self._started = time.monotonic()
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="GloResNet-predict-"))
        inputs = []
        self.stage = "writing input volumes"
        try:
            for index, node in enumerate(self.nodes):
                path = (self.work_dir / "inputs" / f"{index:03d}_{_safe_name(node.GetName())}.nii").resolve()
                write_volume_file(node, path)
                self._by_path[str(path)] = node
                inputs.append(path)
            out = (self.work_dir / "outputs").resolve()
            args = process.predict_args(inputs, self.bundle_path.resolve(), out, device=self.device,
                                        tta=self.tta, cam=self.cam, saliency=self.saliency,
                                        occlusion_mask=self.occlusion_mask)
            self.process = process.start_gloresnet(args, python=self.python, name="gloresnet predict")
        except BaseException:
            self._cleanup()
            raise
        self.stage = "starting"
        return self

    def _handle(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        total = len(self.nodes)
        if kind == "stage":
            index = event.get("index")
            if isinstance(index, int) and 0 <= index < total:
                what = "occlusion of" if str(event.get("stage", "")).startswith("occlusion") else "predicting"
                self.stage = f"{what} {self.nodes[index].GetName()} ({index + 1}/{total})"
            else:
                self.stage = str(event.get("stage", ""))
            self.fraction = max(self.fraction, float(event.get("fraction", self.fraction)))
        elif kind == process.RESULT:
            record = event["record"]
            node = self._by_path.get(str(Path(record.get("input", ""))))
            if node is None:
                return
            try:
                self.results.append(add_prediction_record(node, record, **self.show_kwargs))
            except InputError as exc:
                self.errors.append((node.GetName(), str(exc)))
            self.fraction = max(self.fraction, (len(self.results) + len(self.errors)) / total)
        elif kind == "error":
            node = self._by_path.get(str(Path(str(event.get("input", "")))))
            self.errors.append((node.GetName() if node is not None else str(event.get("input", "")),
                                str(event.get("message", ""))))
        elif kind == process.PROCESS_EXIT:
            self.fraction = 1.0
            self.stage = "cancelled" if event.get("cancelled") else ("done" if self.succeeded else "failed")
            self._cleanup()

    def poll(self) -> list[dict[str, Any]]:
        """Handle the events that arrived (non-blocking); returns them (log lines included) for display."""
        if self.process is None:
            return []
        events = self.process.poll()
        for event in events:
            self._handle(event)
        return events

    def wait(self, timeout: float | None = None) -> list[PredictionNodes]:
        """Block until the run ends (console / batch use); returns the result nodes."""
        if self.process is None:
            self.start()
        try:
            for event in self.process.follow(timeout):
                self._handle(event)
        except TimeoutError:
            self.cancel()
            raise
        return self.results

    def cancel(self) -> bool:
        """Kill the process tree now."""
        return self.process.cancel() if self.process is not None else False

    # -- state --------------------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.process is not None and self.process.running

    @property
    def finished(self) -> bool:
        return self.process is not None and self.process.finished

    @property
    def succeeded(self) -> bool:
        return self.finished and self.process.returncode == 0 and not self.errors and \
            len(self.results) == len(self.nodes)

    @property
    def elapsed_s(self) -> float:
        return self.process.elapsed_s if self.process is not None else 0.0

    def diagnosis(self) -> process.Diagnosis | None:
        """What went wrong (None while running or after success)."""
        if not self.finished or self.succeeded:
            return None
        return process.diagnose(self.process.returncode, self.process.log_text(200),
                                [m for _, m in self.errors], cancelled=self.process.cancelled)

    def failure_message(self, log_lines: int = 15) -> str | None:
        """A message for the user (with the last log lines), or None."""
        diag = self.diagnosis()
        if diag is None or diag.kind == "cancelled":
            return None
        lines = [diag.message] + [f"{name}: {msg}" for name, msg in self.errors if msg not in diag.message]
        tail = self.process.failure_tail(log_lines)
        if tail:
            lines += ["", "Last output:", tail]
        return "\n".join(lines)

    def _cleanup(self) -> None:
        if self._own_dir and not self.keep_files and self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)


__all__ = [
    "CAM_ROLE", "OCCLUSION_ROLE", "COLOR_TABLE_DIR", "COLOR_TABLE_FILE", "DEFAULT_CAM_OPACITY", "DEFAULT_CAM_THRESHOLD",
    "HEAT_COLOR_NODE_ID", "KEEP", "RESAMPLED_ROLE", "RESULTS_TABLE_NAME", "RESULT_COLUMNS", "ROLE_ATTRIBUTE",
    "PredictionJob", "PredictionNodes", "StandaloneLogics", "add_prediction_record", "add_prediction_result",
    "append_result_row", "append_table_row", "check_volume_node", "configure_cam_display", "create_logics",
    "find_node", "get_scene", "heat_color_node", "ijk_to_ras", "jump_slices_to", "model_label",
    "output_volume", "peak_ras", "plot_chart", "predict_nodes", "read_volume_file", "result_texts",
    "results_table",
    "set_cam_threshold", "set_slice_layers", "show_prediction", "slice_layers", "table_column",
    "table_from_columns", "table_rows", "total_time_s", "update_volume_from_array", "volume_to_array",
    "write_volume_file",
]

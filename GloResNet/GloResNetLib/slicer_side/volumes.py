"""Volume nodes <-> (array, affine), Slicer's own volume reader and writer, the peak of a map.

Conventions: arrays are indexed (i, j, k) as in nibabel and the rest of GloResNetLib (Slicer's own arrays
are (k, j, i)); affines are 4x4 IJK-to-RAS matrices (= nibabel's voxel-to-RAS affine). Geometry is the
volume's own (local) IJK-to-RAS; result nodes observe the input's parent transform, so they stay aligned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import slicer
import vtk

from ..errors import InputError
from .scene import ROLE_ATTRIBUTE, find_node, get_scene, mark_node


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
        raise InputError(
            f"{name}: image has {image.GetNumberOfScalarComponents()} components per voxel "
            "(colour or vector image); a scalar T2w volume is needed"
        )
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise InputError(f"{name}: image of size {dims[0]}x{dims[1]}x{dims[2]} is 2D; a 3D T2w volume is needed")


def volume_to_array(node, dtype: Any = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """``(array (I, J, K) as stored, IJK-to-RAS affine)`` of a scalar volume node (a copy of the voxels)."""
    check_volume_node(node)
    kji = slicer.util.arrayFromVolume(node)
    array = np.array(kji.transpose(2, 1, 0), dtype=dtype, order="C", copy=True)
    return array, ijk_to_ras(node)


def update_volume_from_array(node, array: np.ndarray, affine: np.ndarray | None = None, reference=None) -> None:
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


def output_volume(
    array: np.ndarray,
    name: str,
    affine: np.ndarray | None = None,
    reference=None,
    source=None,
    role: str | None = None,
    scene=None,
    node=None,
):
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
        mark_node(node, role, source)
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


def input_volumes(scene=None) -> list:
    """Scalar volumes that can be inputs of a prediction or a training (GloResNet outputs and label maps left out).

    Args:
        scene: the MRML scene (default ``slicer.mrmlScene``).
    Returns:
        The volume nodes, in scene order.
    """
    scene = get_scene(scene)
    nodes = [
        scene.GetNthNodeByClass(i, "vtkMRMLScalarVolumeNode")
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode"))
    ]
    return [n for n in nodes if not n.GetAttribute(ROLE_ATTRIBUTE) and not n.IsA("vtkMRMLLabelMapVolumeNode")]


__all__ = [
    "check_volume_node",
    "ijk_to_ras",
    "input_volumes",
    "output_volume",
    "peak_ras",
    "read_volume_file",
    "update_volume_from_array",
    "volume_to_array",
    "write_volume_file",
]

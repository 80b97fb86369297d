"""The Slicer module's MRML logic against real MRML nodes from slicer-core (no Slicer app, no mocks).

Covers: volume node <-> (array, affine) with an oblique anisotropic geometry, Slicer's NIfTI reader/writer
against GloResNetLib.io (qform trusted when qform and sform differ), result nodes (saliency with exactly the
input's geometry, resampled volume, colour table, threshold, slice layers), the results table, re-runs reusing
nodes, the in-process Logic path against the real ``gloresnet predict`` command, and the background job.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import make_head_volume

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from GloResNetLib.bundle import default_metadata, load_bundle, save_bundle  # noqa: E402
from GloResNetLib.errors import InputError  # noqa: E402
from GloResNetLib.inference import predict  # noqa: E402
from GloResNetLib.io import read_volume  # noqa: E402
from GloResNetLib.models import build_model  # noqa: E402
from GloResNetLib.preprocessing import PreprocessConfig  # noqa: E402
from GloResNetLib.slicer_side.command import child_env, gloresnet_command, predict_args  # noqa: E402
from GloResNetLib.slicer_side.display import (  # noqa: E402
    DEFAULT_CAM_THRESHOLD,
    FALLBACK_COLOR_NODE_IDS,
    HEAT_COLOR_NODE_ID,
    configure_cam_display,
    heat_color_node,
    jump_slices_to,
    set_cam_threshold,
    set_slice_layers,
    slice_layers,
)
from GloResNetLib.slicer_side.prediction_job import PredictionJob  # noqa: E402
from GloResNetLib.slicer_side.results import (  # noqa: E402
    RESULT_COLUMNS,
    RESULTS_TABLE_NAME,
    predict_nodes,
    show_prediction,
)
from GloResNetLib.slicer_side.scene import (  # noqa: E402
    CAM_ROLE,
    GRADIENT_ROLE,
    OCCLUSION_ROLE,
    RESAMPLED_ROLE,
    RESULTS_ROLE,
    ROLE_ATTRIBUTE,
    create_logics,
    find_node,
)
from GloResNetLib.slicer_side.tables import append_table_row, plot_chart, table_column, table_from_columns, table_rows  # noqa: E402
from GloResNetLib.slicer_side.volumes import (  # noqa: E402
    check_volume_node,
    ijk_to_ras,
    output_volume,
    peak_ras,
    read_volume_file,
    volume_to_array,
    write_volume_file,
)

WIDTHS = (8, 16, 32, 64)
SIZE = (48, 64, 40)  # not a cube: 2x2x2 feature maps, so the saliency varies along every axis
SHAPE = (40, 46, 30)  # (i, j, k): deliberately not a cube


def rotation(ax: float, ay: float, az: float) -> np.ndarray:
    ax, ay, az = np.deg2rad([ax, ay, az])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def oblique_affine() -> np.ndarray:
    """Oblique (rotated about all three axes), anisotropic, with a flipped axis: a hard IJK-to-RAS case."""
    aff = np.eye(4)
    aff[:3, :3] = rotation(17, -11, 23) @ np.diag([0.9, -0.8, 1.6])
    aff[:3, 3] = [12.5, -30.25, 8.0]
    return aff


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    """A tiny real bundle (32^3 input) with non-trivial BatchNorm statistics and a non-zero BI saliency."""
    torch.manual_seed(3)
    model = build_model("resnet10", widths=WIDTHS)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, *SIZE))
        model.fc.weight[1].abs_()
        model.fc.weight[0] = -model.fc.weight[1] * 0.5
    meta = default_metadata(
        "tiny",
        arch_params={"widths": list(WIDTHS)},
        preprocess=PreprocessConfig(size=SIZE),
        provenance="test_mrml fixture",
        training_data={"description": "pytest random weights", "synthetic": True, "trained": True},
    )
    return save_bundle(tmp_path_factory.mktemp("bundles") / "tiny32", [model.eval().state_dict()], meta)


@pytest.fixture
def scene():
    """A fresh scene as slicer.mrmlScene, with the colour/volumes logics Slicer would have (kept alive)."""
    previous = getattr(slicer, "mrmlScene", None)
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    logics = create_logics(scene)
    for name in ("Red", "Yellow", "Green"):  # what the app's layout manager would create
        slice_node = slicer.vtkMRMLSliceNode()
        slice_node.SetName(name)
        slice_node.SetLayoutName(name)
        slice_node.SetSingletonTag(name)
        scene.AddNode(slice_node)
        composite = slicer.vtkMRMLSliceCompositeNode()
        composite.SetLayoutName(name)
        composite.SetSingletonTag(name)
        scene.AddNode(composite)
    scene.logics = logics
    yield scene
    slicer.mrmlScene = previous


@pytest.fixture
def volume(scene):
    array = make_head_volume(SHAPE, seed=1)
    node = output_volume(array, "case T2w", affine=oblique_affine(), scene=scene)
    node.array = array
    return node


def test_volume_node_round_trip_with_oblique_anisotropic_geometry(scene, volume):
    array, affine = volume_to_array(volume)
    assert array.shape == SHAPE and array.dtype == np.float32 and array.flags.c_contiguous
    np.testing.assert_array_equal(array, volume.array)
    np.testing.assert_allclose(affine, oblique_affine(), atol=1e-12)
    kji = slicer.util.arrayFromVolume(volume)  # Slicer's own order is (k, j, i)
    assert kji.shape == SHAPE[::-1]
    np.testing.assert_array_equal(kji, volume.array.transpose(2, 1, 0))
    assert np.allclose(volume.GetSpacing(), [0.9, 0.8, 1.6])
    # voxel (i, j, k) sits where the affine says, in Slicer's own coordinate mapping
    ijk = (5, 7, 11)
    ras = [0.0, 0.0, 0.0, 1.0]
    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    matrix.MultiplyPoint([*ijk, 1.0], ras)
    np.testing.assert_allclose(ras[:3], (oblique_affine() @ [*ijk, 1])[:3], atol=1e-9)
    # the array returned is a copy
    array[0, 0, 0] = -1
    assert slicer.util.arrayFromVolume(volume)[0, 0, 0] != -1


def test_unusable_volume_nodes_are_refused(scene):
    with pytest.raises(InputError, match="no input volume"):
        volume_to_array(None)
    flat = slicer.util.addVolumeFromArray(np.random.rand(1, 20, 20).astype(np.float32), name="flat")
    with pytest.raises(InputError, match="2D"):
        check_volume_node(flat)
    rgb = slicer.util.addVolumeFromArray(
        np.random.rand(5, 6, 7, 3).astype(np.float32), name="rgb", nodeClassName="vtkMRMLVectorVolumeNode"
    )
    with pytest.raises(InputError, match="components|not a scalar"):
        check_volume_node(rgb)
    labels = slicer.util.addVolumeFromArray(
        np.ones((5, 6, 7), np.uint8), name="seg", nodeClassName="vtkMRMLLabelMapVolumeNode"
    )
    with pytest.raises(InputError, match="label map"):
        check_volume_node(labels)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(InputError, match="no image data"):
        check_volume_node(empty)


@pytest.mark.parametrize("handed", ["right", "left"])
@pytest.mark.parametrize("differ", [False, True], ids=["qform=sform", "qform!=sform"])
def test_slicer_reader_and_library_reader_agree_on_geometry(tmp_path, scene, bundle_path, differ, handed):
    array = make_head_volume((20, 24, 18), seed=2)
    qform = oblique_affine()
    if handed == "right":
        qform[:3, 1] *= -1  # oblique_affine() is left-handed (one flipped axis)
    assert (np.linalg.det(qform[:3, :3]) > 0) == (handed == "right")
    img = nib.Nifti1Image(array, qform)
    img.set_qform(qform, code=1)
    sform = qform.copy()
    if differ:
        sform[:3, :3] = rotation(0, 0, 40) @ np.diag([1.1, 1.2, 1.3])
        sform[:3, 3] += [7, -3, 5]
    img.set_sform(sform, code=2 if differ else 1)
    path = tmp_path / "qs.nii.gz"
    nib.save(img, str(path))
    if differ:
        assert not np.allclose(nib.load(str(path)).affine, qform, atol=1e-3)  # nibabel's .affine is the sform

    lib_array, lib_affine = read_volume(path)
    np.testing.assert_allclose(lib_affine, qform, atol=1e-5)  # the library trusts the qform, like Slicer
    slicer_array, slicer_affine = read_volume_file(path)
    node = scene.logics.volumes.AddArchetypeVolume(str(path), "qs")  # as File > Add Data would
    node_array, node_affine = volume_to_array(node)
    np.testing.assert_array_equal(node_array, slicer_array)
    np.testing.assert_allclose(node_affine, slicer_affine, atol=1e-12)
    if handed == "left":
        # Slicer makes the geometry right-handed by reversing k: same world positions, other voxel order
        flip = np.eye(4)
        flip[2, 2], flip[2, 3] = -1, array.shape[2] - 1
        lib_array, lib_affine = lib_array[:, :, ::-1], lib_affine @ flip
    np.testing.assert_allclose(slicer_affine, lib_affine, atol=1e-5)
    np.testing.assert_array_equal(slicer_array, lib_array)
    if differ and handed == "left":
        # what the user loads in Slicer predicts as the command line predicts the file
        (nodes,) = predict_nodes([node], bundle_path, device="cpu", show=False)
        direct = predict(load_bundle(bundle_path), *read_volume(path), device="cpu")
        assert nodes.probability == pytest.approx(direct.probability, abs=1e-5)


def test_slicer_writer_output_reads_back_in_the_library(tmp_path, volume):
    path = write_volume_file(volume, tmp_path / "written.nii")
    array, affine = read_volume(path)
    np.testing.assert_array_equal(array, volume.array)
    np.testing.assert_allclose(affine, oblique_affine(), atol=1e-5)  # NIfTI stores the qform in float32


def cam_geometry_is_input_geometry(cam, volume) -> None:
    assert np.array_equal(ijk_to_ras(cam), ijk_to_ras(volume))  # exactly, not approximately
    assert cam.GetImageData().GetDimensions() == volume.GetImageData().GetDimensions()
    assert cam.GetTransformNodeID() == volume.GetTransformNodeID()


def test_in_process_logic_equals_gloresnet_predict_subprocess(tmp_path, scene, volume, bundle_path):
    (nodes,) = predict_nodes([volume], bundle_path, tta=True, device="cpu")
    # the same volume saved by Slicer as NIfTI, predicted by the real command line
    nifti = write_volume_file(volume, tmp_path / "case.nii.gz")
    args = predict_args([nifti], bundle_path, tmp_path / "out", device="cpu")
    done = subprocess.run(
        gloresnet_command(args), env=child_env({"OMP_NUM_THREADS": "2"}), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    (record,) = [line for line in lines if "event" not in line]  # progress events share stdout
    assert nodes.probability == pytest.approx(record["probability"], abs=1e-5)
    assert nodes.summary["view_probabilities"] == pytest.approx(record["view_probabilities"], abs=1e-5)
    cli_cam, _ = read_volume(record["outputs"]["cam"])
    np.testing.assert_allclose(volume_to_array(nodes.cam)[0], cli_cam, atol=1e-4)
    cam_geometry_is_input_geometry(nodes.cam, volume)
    # and the library on the same arrays gives the same number
    array, affine = volume_to_array(volume)
    direct = predict(load_bundle(bundle_path), array, affine, tta=True, device="cpu")
    assert direct.probability == pytest.approx(nodes.probability, abs=1e-6)


def test_background_job_makes_result_nodes_and_reruns_reuse_them(scene, volume, bundle_path):
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "moved")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 4.0)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())

    job = PredictionJob([volume], bundle_path, device="cpu", threshold=0.25, opacity=0.6).start()
    with pytest.raises(RuntimeError):
        job.start()  # a second start is refused
    stages = []
    deadline = time.monotonic() + 300
    while not job.finished and time.monotonic() < deadline:  # as the module's QTimer does
        stages += [e.get("stage") for e in job.poll() if e.get("event") == "stage"]
        time.sleep(0.05)
    assert job.succeeded, job.failure_message()
    assert stages and job.fraction == 1.0 and job.stage == "done"
    assert not job.work_dir.exists()  # temporary files removed
    (nodes,) = job.results

    # saliency: exactly the input's geometry and transform, [0, 1], heat colours, threshold
    cam_geometry_is_input_geometry(nodes.cam, volume)
    cam = slicer.util.arrayFromVolume(nodes.cam)
    assert cam.max() == pytest.approx(1.0, abs=1e-5) and cam.min() >= 0
    k_profile = cam.mean(axis=(1, 2))
    assert np.abs(k_profile - k_profile[::-1]).max() > 0.01  # a mirrored map would be noticed
    display = nodes.cam.GetDisplayNode()
    assert display.GetColorNodeID() == HEAT_COLOR_NODE_ID
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pytest.approx(0.25)
    assert (display.GetWindow(), display.GetLevel()) == pytest.approx((1.0, 0.5))
    # resampled network input with its own (true) affine, under the same transform
    in_process = predict(load_bundle(bundle_path), *volume_to_array(volume), device="cpu")
    assert nodes.resampled.GetImageData().GetDimensions() == SIZE
    np.testing.assert_allclose(ijk_to_ras(nodes.resampled), in_process.resampled_affine, atol=1e-4)
    np.testing.assert_allclose(volume_to_array(nodes.resampled)[0], in_process.resampled, atol=1e-4)
    assert nodes.resampled.GetTransformNodeID() == transform.GetID()
    assert nodes.probability == pytest.approx(in_process.probability, abs=1e-5)
    np.testing.assert_allclose(volume_to_array(nodes.cam)[0], in_process.cam, atol=1e-4)  # not mirrored
    # slice views: input as background, saliency as foreground at the requested opacity
    layers = slice_layers(scene)
    assert len(layers) == 3 and all(
        v["background"] == volume.GetID()
        and v["foreground"] == nodes.cam.GetID()
        and v["foreground_opacity"] == pytest.approx(0.6)
        for v in layers
    )
    # jump to the saliency peak (world coordinates include the parent transform)
    peak = nodes.peak_ras()
    k, j, i = np.unravel_index(int(np.argmax(cam)), cam.shape)
    expected = (oblique_affine() @ [i, j, k, 1])[:3] + [4.0, 0, 0]
    np.testing.assert_allclose(peak, expected, atol=1e-6)
    jump_slices_to(peak, scene)
    red = scene.GetFirstNode("Red", "vtkMRMLSliceNode")
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(red.GetSliceToRAS())[:3, 3], peak, atol=1e-6)
    # results table
    table = nodes.table
    assert table.GetName() == RESULTS_TABLE_NAME and table.GetNumberOfRows() == 1
    row = table_rows(table)[0]
    assert list(row) == list(RESULT_COLUMNS)
    assert row["Volume"] == "case T2w" and row["P(BI)"] == pytest.approx(nodes.probability, abs=1e-6)
    assert "SYNTHETIC" in row["Model"] and row["Training data"] == "pytest random weights"
    assert row["Device"] == "cpu" and row["Time (s)"] > 0 and row["Date"]
    assert row["TTA spread"] == pytest.approx(nodes.summary["spread"])
    texts = nodes.texts()
    assert "SYNTHETIC" in texts["model"] and texts["probability"] == f"{nodes.probability:.3f}"

    # re-run (process, then in process): no new nodes, same nodes updated, one more row each
    count, ids = scene.GetNumberOfNodes(), (nodes.cam.GetID(), nodes.resampled.GetID(), table.GetID())
    again = PredictionJob([volume], bundle_path, device="cpu", tta=False).start()
    (nodes2,) = again.wait(timeout=300)
    (nodes3,) = predict_nodes([volume], bundle_path, tta=True, device="cpu")
    assert scene.GetNumberOfNodes() == count
    assert (nodes2.cam.GetID(), nodes2.resampled.GetID(), nodes2.table.GetID()) == ids
    assert (nodes3.cam.GetID(), nodes3.resampled.GetID(), nodes3.table.GetID()) == ids
    assert table.GetNumberOfRows() == 3
    assert table_column(table, "TTA spread")[1] == 0.0  # the no-TTA run
    assert nodes3.probability == pytest.approx(nodes.probability, abs=1e-5)


def test_results_survive_saving_and_reloading_the_scene(tmp_path, scene, volume, bundle_path):
    (nodes,) = predict_nodes([volume], bundle_path, tta=False, device="cpu", show=False)
    scene.SetURL(str(tmp_path / "scene.mrml"))
    assert scene.Commit()
    reloaded = slicer.vtkMRMLScene()
    reloaded.SetURL(str(tmp_path / "scene.mrml"))
    assert reloaded.Import()
    node = reloaded.GetNodeByID(volume.GetID())
    cam = node.GetNodeReference(CAM_ROLE)
    assert cam is not None and cam.GetName() == nodes.cam.GetName()
    assert cam.GetAttribute(ROLE_ATTRIBUTE) == CAM_ROLE
    assert node.GetNodeReference(RESAMPLED_ROLE).GetID() == nodes.resampled.GetID()
    assert find_node(reloaded, "vtkMRMLTableNode", RESULTS_ROLE) is not None


def test_colour_table_lookup(tmp_path, scene):
    # the shipped Inferno table registered with the colour logic gets Slicer's file-table ID
    node = heat_color_node(scene)
    assert node.GetID() == HEAT_COLOR_NODE_ID and node.GetNumberOfColors() == 256
    # without the colour logic: the shipped file is loaded once into the scene
    bare = slicer.vtkMRMLScene()
    loaded = heat_color_node(bare)
    assert loaded.GetName() == "GloResNet Inferno" and loaded.GetNumberOfColors() == 256
    assert heat_color_node(bare) is loaded and bare.GetNumberOfNodes() == 1
    rgba = [0.0] * 4
    loaded.GetColor(255, rgba)
    assert rgba[0] > 0.95 and rgba[2] < 0.7  # bright yellow end
    # no Inferno at all: fall back on a built-in heat table, else None
    other = slicer.vtkMRMLScene()
    keep = create_logics(other, color_dirs=[])
    fallback = heat_color_node(other, path=tmp_path / "missing.txt")
    assert fallback.GetID() in FALLBACK_COLOR_NODE_IDS
    assert heat_color_node(slicer.vtkMRMLScene(), path=tmp_path / "missing.txt") is None
    del keep


def test_display_helpers(scene, volume):
    cam = output_volume(np.linspace(0, 1, np.prod(SHAPE)).reshape(SHAPE), "cam", reference=volume, scene=scene)
    configure_cam_display(cam, heat_color_node(scene), threshold=0.4)
    set_cam_threshold(cam, 0.7)
    assert cam.GetDisplayNode().GetLowerThreshold() == pytest.approx(0.7)
    assert set_slice_layers(background=volume, foreground=cam, foreground_opacity=0.3, scene=scene) == 3
    set_slice_layers(foreground_opacity=0.9, scene=scene)  # other layers kept
    assert all(
        v["foreground"] == cam.GetID() and v["foreground_opacity"] == pytest.approx(0.9) for v in slice_layers(scene)
    )
    set_slice_layers(background=None, scene=scene)
    assert all(v["background"] is None for v in slice_layers(scene))
    zero = output_volume(np.zeros((4, 4, 4)), "zero", affine=np.eye(4), scene=scene)
    assert peak_ras(zero) is None


def test_tables_and_plots_update_in_place(scene):
    table = table_from_columns("Training curves", {"epoch": [1, 2], "train_loss": [0.9, 0.7], "fold": ["0", "0"]})
    assert table.GetTable().GetColumnByName("epoch").IsA("vtkDoubleArray")
    assert table.GetTable().GetColumnByName("fold").IsA("vtkStringArray")
    chart = plot_chart(
        "Loss", table, "epoch", ["train_loss", "val_loss"], y_title="loss", series_names=["train", "validation"]
    )
    assert table.GetTable().GetColumnByName("val_loss") is None  # plotted before the first value arrives
    append_table_row(table, {"epoch": 3, "train_loss": 0.5, "val_loss": 0.6, "val_auc": None})
    assert table_column(table, "val_loss")[:2] == [pytest.approx(np.nan, nan_ok=True)] * 2
    assert table_column(table, "val_loss")[2] == pytest.approx(0.6)
    assert np.isnan(table_column(table, "val_auc")[2])
    assert plot_chart("Loss", table, "epoch", ["train_loss", "val_loss"], series_names=["train", "validation"]) is chart
    assert chart.GetNumberOfPlotSeriesNodes() == 2
    assert scene.GetNumberOfNodesByClass("vtkMRMLPlotSeriesNode") == 2
    series = chart.GetNthPlotSeriesNode(1)
    assert series.GetName() == "Loss: validation" and series.GetYColumnName() == "val_loss"
    assert series.GetTableNode() is table
    same = table_from_columns("Training curves", {"epoch": [1], "train_loss": [0.1]})
    assert same is table and table.GetNumberOfRows() == 1
    assert scene.GetNumberOfNodesByClass("vtkMRMLTableNode") == 1
    with pytest.raises(ValueError):
        table_from_columns("bad", {"a": [1], "b": [1, 2]})


def test_job_failures_are_reported_with_the_log(tmp_path, scene, volume, bundle_path):
    broken = tmp_path / "broken"
    shutil.copytree(bundle_path, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-4] + b"XXXX")
    job = PredictionJob([volume], broken, device="cpu").start()
    assert job.wait(timeout=300) == []
    diag = job.diagnosis()
    assert diag.kind == "user_error" and "checksum" in job.failure_message()
    with pytest.raises(InputError, match="not a model bundle"):
        PredictionJob([volume], tmp_path)
    flat = slicer.util.addVolumeFromArray(np.random.rand(1, 9, 9).astype(np.float32), name="flat")
    with pytest.raises(InputError, match="2D"):
        PredictionJob([flat], bundle_path)

    job = PredictionJob([volume], bundle_path, device="cpu").start()
    assert job.running and job.cancel()
    job.wait(timeout=30)
    assert job.stage == "cancelled" and job.results == [] and job.failure_message() is None
    assert not job.work_dir.exists()
    assert sys.modules.get("qt") is None  # nothing here pulled in Qt


def test_saliency_nodes_from_job_and_in_process(scene, volume, bundle_path):
    from GloResNetLib.occlusion import OcclusionConfig

    job = PredictionJob([volume], bundle_path, device="cpu", tta=False, saliency="all", occlusion_mask=16).start()
    (nodes,) = job.wait(300)
    assert job.succeeded, job.failure_message()
    # all three maps kept as volume nodes with exactly the input's geometry; the overlay shows the gradient map
    for node, role in ((nodes.cam, CAM_ROLE), (nodes.occlusion, OCCLUSION_ROLE), (nodes.gradient, GRADIENT_ROLE)):
        cam_geometry_is_input_geometry(node, volume)
        assert node.GetAttribute(ROLE_ATTRIBUTE) == role and volume.GetNodeReference(role) is node
    assert len({nodes.cam.GetID(), nodes.occlusion.GetID(), nodes.gradient.GetID()}) == 3
    assert nodes.overlay is nodes.gradient and nodes.gradient.GetName() == f"{volume.GetName()} GloResNet gradient"
    assert all(v["foreground"] == nodes.gradient.GetID() for v in slice_layers(scene))
    occ = slicer.util.arrayFromVolume(nodes.occlusion).copy()
    grad = slicer.util.arrayFromVolume(nodes.gradient).copy()
    assert np.isfinite(occ).all() and occ.max() > 0 and np.isfinite(grad).all() and 0.5 < grad.max() <= 1 + 1e-6
    for node, array in ((nodes.occlusion, occ), (nodes.gradient, grad)):  # threshold: a fraction of the maximum
        assert node.GetDisplayNode().GetLowerThreshold() == pytest.approx(DEFAULT_CAM_THRESHOLD * array.max(), rel=1e-4)
    assert nodes.peak_ras() == peak_ras(nodes.gradient)
    # "both" (Grad-CAM and occlusion): the occlusion map is shown
    both = show_prediction(
        volume,
        nodes.summary,
        volume_to_array(nodes.cam)[0],
        *volume_to_array(nodes.resampled),
        occlusion=volume_to_array(nodes.occlusion)[0],
        show=False,
    )
    assert both.overlay is both.occlusion and both.gradient is None
    # in process, one method each, same settings: the same maps, no other saliency node
    (inproc,) = predict_nodes(
        [volume],
        bundle_path,
        tta=False,
        device="cpu",
        saliency="occlusion",
        occlusion=OcclusionConfig(mask_size=16),
        show=False,
    )
    assert inproc.cam is None and inproc.gradient is None and inproc.overlay is inproc.occlusion
    np.testing.assert_allclose(slicer.util.arrayFromVolume(inproc.occlusion), occ, atol=1e-5)
    (inproc,) = predict_nodes([volume], bundle_path, tta=False, device="cpu", saliency="gradient", show=False)
    assert inproc.cam is None and inproc.occlusion is None and inproc.overlay is inproc.gradient
    assert inproc.gradient.GetID() == nodes.gradient.GetID()  # the re-run reuses the node
    np.testing.assert_allclose(slicer.util.arrayFromVolume(inproc.gradient), grad, atol=1e-5)
    with pytest.raises(InputError, match="saliency"):
        PredictionJob([volume], bundle_path, saliency="lime")

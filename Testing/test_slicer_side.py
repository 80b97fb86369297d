"""GloResNetLib.slicer_side, the helpers both Slicer modules share, outside Slicer: the results layout against
slicer-core's real layout logic, layout node and view nodes; the path fields' sync and checks on real files; the
device probe as a real child process; the installer's pip call; the version check; the developer reload."""

from __future__ import annotations

import os
import sys
import time

import pytest

slicer = pytest.importorskip("slicer")

from GloResNetLib.errors import InputError  # noqa: E402
from GloResNetLib.slicer_side import common, dependencies, paths, views  # noqa: E402
from GloResNetLib.slicer_side.devices import DEVICE_PROBE, describe_devices  # noqa: E402
from GloResNetLib.slicer_side.requirements import missing_requirements, pin_installed, read_requirements  # noqa: E402
from GloResNetLib.slicer_side.training_params import GUI_FIELDS, TRAINING_REQUIREMENTS, TrainingParameters, train_args  # noqa: E402
from test_slicer_module_files import REPO  # noqa: E402

# ------------------------------------------------------------------------------------------------------------
# Results layout: charts and table through the layout's own view nodes
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture
def layout():
    """A scene with Slicer's layout logic (it creates the view nodes a layout names, as in the app)."""
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkMRMLLayoutLogic()
    logic.SetMRMLScene(scene)
    yield scene, logic, logic.GetLayoutNode()
    logic.SetMRMLScene(None)


def view_nodes(scene, view_class: str) -> dict[str, object]:
    return {
        scene.GetNthNodeByClass(i, view_class).GetSingletonTag(): scene.GetNthNodeByClass(i, view_class)
        for i in range(scene.GetNumberOfNodesByClass(view_class))
    }


def test_charts_and_table_go_to_the_views_the_layout_names(layout):
    scene, logic, layout_node = layout
    other_table = scene.AddNewNodeByClass("vtkMRMLTableNode", "GloResNet results")
    other_chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "someone's chart")
    # views of other layouts exist first (GloResNet's "Show results table" uses the four-up table layout)
    for arrangement in (
        slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpPlotView,
        slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView,
    ):
        layout_node.SetViewArrangement(arrangement)
    before_tables, before_plots = view_nodes(scene, views.TABLE_VIEW), view_nodes(scene, views.PLOT_VIEW)
    assert before_tables and before_plots
    for view in before_tables.values():
        view.SetTableNodeID(other_table.GetID())
    for view in before_plots.values():
        view.SetPlotChartNodeID(other_chart.GetID())

    loss = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "GloResNet training loss")
    metric = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "GloResNet training metric")
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", "GloResNet training metrics")
    placed = views.show_training_results(layout_node, loss_chart=loss, metric_chart=metric, metrics_table=table)

    assert layout_node.GetViewArrangement() == views.TRAINING_RESULTS_LAYOUT_ID
    assert layout_node.GetCurrentLayoutDescription() == views.TRAINING_RESULTS_LAYOUT
    shown = {logic.GetViewNodes().GetItemAsObject(i).GetID() for i in range(logic.GetViewNodes().GetNumberOfItems())}
    assert shown == {v.GetID() for v in placed.values()}  # exactly the layout's three views
    plots, tables = view_nodes(scene, views.PLOT_VIEW), view_nodes(scene, views.TABLE_VIEW)
    assert plots[views.LOSS_VIEW].GetPlotChartNodeID() == loss.GetID()
    assert plots[views.METRIC_VIEW].GetPlotChartNodeID() == metric.GetID()
    assert tables[views.TABLE_VIEW_TAG].GetTableNodeID() == table.GetID()
    for tag in before_tables:  # the other layouts' views are left alone
        assert tables[tag].GetTableNodeID() == other_table.GetID()
    for tag in before_plots:
        assert plots[tag].GetPlotChartNodeID() == other_chart.GetID()

    # again (a resumed run's new charts; a missing chart keeps what the view shows): same views, no new ones
    loss2 = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", "GloResNet training loss 2")
    count = scene.GetNumberOfNodesByClass(views.PLOT_VIEW)
    placed = views.show_training_results(layout_node, loss_chart=loss2, metric_chart=None, metrics_table=None)
    assert set(placed) == {views.LOSS_VIEW} and scene.GetNumberOfNodesByClass(views.PLOT_VIEW) == count
    assert plots[views.LOSS_VIEW].GetPlotChartNodeID() == loss2.GetID()
    assert plots[views.METRIC_VIEW].GetPlotChartNodeID() == metric.GetID()


def test_layout_views_are_checked_against_the_layout_xml(layout):
    scene, _, layout_node = layout
    assert views.layout_views(views.TRAINING_RESULTS_LAYOUT) == {
        views.LOSS_VIEW: views.PLOT_VIEW,
        views.METRIC_VIEW: views.PLOT_VIEW,
        views.TABLE_VIEW_TAG: views.TABLE_VIEW,
    }
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode")
    with pytest.raises(ValueError, match="no vtkMRMLPlotViewNode view 'PlotView1'"):
        views.place_in_layout(
            layout_node, views.TRAINING_RESULTS_LAYOUT_ID, views.TRAINING_RESULTS_LAYOUT, plots={"PlotView1": chart}
        )
    with pytest.raises(ValueError, match="no vtkMRMLPlotViewNode"):  # a table view's tag used for a plot
        views.place_in_layout(
            layout_node,
            views.TRAINING_RESULTS_LAYOUT_ID,
            views.TRAINING_RESULTS_LAYOUT,
            plots={views.TABLE_VIEW_TAG: chart},
        )
    changed = views.TRAINING_RESULTS_LAYOUT.replace('splitSize="300"', 'splitSize="200"')
    views.show_layout(layout_node, views.TRAINING_RESULTS_LAYOUT_ID, changed)  # an older description is replaced
    assert layout_node.GetLayoutDescription(views.TRAINING_RESULTS_LAYOUT_ID) == changed


def test_a_view_missing_from_the_scene_is_reported():
    scene = slicer.vtkMRMLScene()  # no layout logic: nothing creates the views
    layout_node = scene.AddNewNodeByClass("vtkMRMLLayoutNode")
    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode")
    with pytest.raises(RuntimeError, match="not in the scene"):
        views.show_training_results(layout_node, loss_chart=chart)


# ------------------------------------------------------------------------------------------------------------
# Path fields
# ------------------------------------------------------------------------------------------------------------


class FieldHolder:
    """Stands for the module's parameter-node wrapper (slicer.parameterNodeWrapper is not in slicer-core): the
    str fields the path line edits are synced with."""

    def __init__(self, **values: str) -> None:
        self.__dict__.update({f.field: "" for f in paths.TRAINING_PATH_FIELDS}, **values)


def test_a_cleared_field_reaches_the_parameters_and_no_old_weights_are_used(tmp_path):
    weights = tmp_path / "resnet_10_23dataset.pth"
    weights.write_bytes(b"x")
    holder = FieldHolder(pretrainedPath=str(weights))
    gui = {name: getattr(holder, name, None) for name in GUI_FIELDS}
    assert TrainingParameters.from_gui({k: v for k, v in gui.items() if v is not None}).pretrained == str(weights)
    assert paths.sync_field(holder, "pretrainedPath", "") and holder.pretrainedPath == ""
    assert not paths.sync_field(holder, "pretrainedPath", "")  # unchanged: the node is not written again
    params = TrainingParameters.from_gui(
        {
            "pretrainedPath": holder.pretrainedPath,
            "manifestPath": "m.csv",
            "outputFolder": str(tmp_path),
            "runName": "r",
        }
    )
    assert params.pretrained == "" and "--pretrained" not in train_args(params)
    # typed text is kept as typed (a space inside a folder name survives); the parameters strip the ends
    assert paths.sync_field(holder, "outputFolder", f" {tmp_path}/my run ")
    assert holder.outputFolder == f" {tmp_path}/my run "
    assert TrainingParameters.from_gui({"outputFolder": holder.outputFolder}).output_folder == f"{tmp_path}/my run"


def test_paths_are_checked_with_a_message_naming_the_field(tmp_path):
    manifest_txt = tmp_path / "cohort.txt"  # no .csv: the line edit's validator refused it
    manifest_txt.write_text("subject,path,label\n")
    folder = tmp_path / "folder"
    folder.mkdir()
    check = paths.check_training_paths
    check({"manifestPath": str(manifest_txt), "outputFolder": str(tmp_path / "new" / "runs")}, "manifest")
    check({"manifestPath": f"  {manifest_txt} "}, "manifest")
    check({"manifestPath": str(folder), "dhcpFolder": str(manifest_txt)}, "scene")  # not the dataset source
    for values, source, message in (
        ({"manifestPath": str(folder)}, "manifest", "CSV manifest: .* is a folder, not a file"),
        ({"manifestPath": str(tmp_path / "none.csv")}, "manifest", "CSV manifest: .* does not exist"),
        ({"dhcpFolder": str(manifest_txt)}, "dhcp", "dHCP folder: .* is a file, not a folder"),
        ({"outputFolder": str(manifest_txt)}, "manifest", "Output folder: .* is a file, not a folder"),
        ({"outputFolder": str(manifest_txt / "sub")}, "manifest", "Output folder: .* cannot be written"),
        ({"pretrainedPath": str(folder)}, "scene", "Pretrained weights: .* is a folder, not a file"),
    ):
        with pytest.raises(InputError, match=message):
            check(values, source)
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InputError, match="cannot be written"):
            check({"outputFolder": str(locked / "runs")}, "scene")


def test_the_training_parameters_run_the_path_checks(tmp_path):
    manifest = tmp_path / "cohort.txt"
    manifest.write_text("x")
    params = TrainingParameters(
        manifest=str(manifest), output_folder=str(manifest), run_name="r", folds=2, epochs=1, batch_size=2
    )
    with pytest.raises(InputError, match="Output folder: .* is a file"):
        params.validate()


# ------------------------------------------------------------------------------------------------------------
# Device probe, installer, version, reload
# ------------------------------------------------------------------------------------------------------------


def wait_for(probe: common.DeviceProbe, timeout: float = 120) -> list[str]:
    texts, deadline = [], time.monotonic() + timeout
    while not probe.finished and time.monotonic() < deadline:
        text = probe.poll()
        if text:
            texts.append(text)
        time.sleep(0.05)
    assert probe.finished
    return texts


def test_device_probe_reports_what_torch_sees_in_a_child_process():
    import torch

    probe = common.DeviceProbe([sys.executable, "-c", DEVICE_PROBE])
    texts = wait_for(probe)
    assert not probe.failed and probe.info["torch"] == torch.__version__
    assert texts == [describe_devices(probe.info)] and f"PyTorch {torch.__version__}" in texts[0]


def test_device_probe_that_fails_says_so_and_keeps_the_log():
    probe = common.DeviceProbe([sys.executable, "-c", "import sys; sys.exit('no python for you')"])
    assert wait_for(probe) == ["could not detect devices"]
    assert probe.failed and "no python for you" in probe.log_text()


def test_installer_pins_torch_and_never_skips_packages(tmp_path):
    import torch

    pins = pin_installed(dependencies.PINNED, tmp_path / "constraints.txt")
    assert pins.read_text().strip() == f"torch=={torch.__version__}"
    reqs = ["nibabel>=5.0", "scikit-learn>=1.3"]
    new = dependencies.pip_call(reqs, pins, "GloResNetTraining", True, has_pip_ensure=True)
    assert (new.function, new.args) == ("pip_ensure", [reqs])
    assert new.kwargs == {"constraints": str(pins), "requester": "GloResNetTraining", "prompt_install": True}
    old = dependencies.pip_call(reqs, pins, "GloResNet", False, has_pip_ensure=False)
    assert (old.function, old.args, old.kwargs) == ("pip_install", [reqs + ["-c", str(pins)]], {})
    assert dependencies.pip_call(reqs, None, "GloResNet", True, False).args == [reqs]


def test_each_module_installs_from_its_own_requirements_file():
    predict = read_requirements(REPO / "GloResNet" / "Resources" / "GloResNet-requirements.txt")
    training = read_requirements(REPO / "GloResNetTraining" / "Resources" / "GloResNetTraining-requirements.txt")
    assert set(predict) <= set(training)  # training runs the prediction code too
    assert set(TRAINING_REQUIREMENTS) <= set(training)
    assert not missing_requirements(training)  # what the tests here run with


def test_old_slicer_is_refused_with_a_message():
    message = common.version_problem(5, 8)
    assert message and "Slicer 5.10 or later" in message and "Slicer 5.8" in message
    for version in ((5, 10), (5, 12), (6, 0)):
        assert common.version_problem(*version) is None
    assert common.version_problem(4, 13)


def test_developer_reload_forgets_only_the_library():
    modules = dict(sys.modules)
    dropped = common.forget_library(modules)
    assert "GloResNetLib" in dropped and "GloResNetLib.slicer_side.common" in dropped
    assert all(n == "GloResNetLib" or n.startswith("GloResNetLib.") for n in dropped)
    assert "numpy" in modules and not any(n.startswith("GloResNetLib") for n in modules)
    assert "GloResNetLib" in sys.modules  # the real sys.modules was not touched


# ------------------------------------------------------------------------------------------------------------
# Saliency methods: the prediction job's torch-free list is the core's
# ------------------------------------------------------------------------------------------------------------


def test_the_job_knows_the_cores_saliency_methods_without_importing_torch():
    import subprocess

    from GloResNetLib.inference import SALIENCY_METHODS, saliency_set
    from GloResNetLib.slicer_side.prediction_job import SALIENCY_METHODS as JOB_METHODS
    from GloResNetLib.slicer_side.prediction_job import check_saliency

    assert JOB_METHODS == SALIENCY_METHODS
    for method in (*SALIENCY_METHODS, "gradcam, gradient"):
        assert saliency_set(check_saliency(method))  # what the job passes on, the core accepts
    assert check_saliency(" gradient ,occlusion") == "gradient,occlusion"
    for bad in ("lime", "gradient,lime", "", "Gradient"):
        with pytest.raises(InputError, match="saliency"):
            check_saliency(bad)
    code = "import sys; import GloResNetLib.slicer_side.prediction_job; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr

"""The GloResNetTraining module's logic (GloResNetLib.slicer_side: training_jobs, training_monitor,
scene_dataset, bundles) against real MRML nodes (slicer-core) and real ``gloresnet train`` processes on a tiny
synthetic dataset (no mocks); its parameters and command line: test_training_params.py.

Covers: recorded and live progress events turned into curve tables, plot charts and the metrics table (updated
in place), scene volumes + typed labels exported as a training dataset, the dataset check, a real background
run stopped with SIGINT and resumed (from a fresh scene, as after restarting Slicer) to its end, the ensemble
bundle registered in the models folder and used for prediction by the GloResNet logic, failures reported with
the last log lines, and no process left behind (cancel, shutdown, cancel_all, the parent dying).
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from training_fixtures import make_volume, tiny_params, write_cohort, write_manifest

slicer = pytest.importorskip("slicer")
vtk = pytest.importorskip("vtk")

from GloResNetLib.errors import InputError  # noqa: E402
from GloResNetLib.slicer_side.background import active_processes, cancel_all, descendants, kill_tree, pid_alive  # noqa: E402
from GloResNetLib.slicer_side.bundles import find_bundles, register_run_bundle  # noqa: E402
from GloResNetLib.slicer_side.command import LIB_PARENT, child_env  # noqa: E402
from GloResNetLib.slicer_side.results import predict_nodes  # noqa: E402
from GloResNetLib.slicer_side.scene import CAM_ROLE, ROLE_ATTRIBUTE, create_logics  # noqa: E402
from GloResNetLib.slicer_side.scene_dataset import (  # noqa: E402
    export_scene_dataset,
    fill_labels_table,
    input_volumes,
    labels_table,
    scene_cases,
)
from GloResNetLib.slicer_side.tables import table_column, table_rows  # noqa: E402
from GloResNetLib.slicer_side.training_jobs import (  # noqa: E402
    DatasetCheck,
    TrainingJob,
    pick_heldout_case,
    resume_training,
    start_training,
)
from GloResNetLib.slicer_side.training_monitor import TrainingMonitor, format_duration  # noqa: E402
from GloResNetLib.slicer_side.training_params import (  # noqa: E402
    STOPPED_EXIT_CODE,
    TrainingParameters,
    train_args,
)
from GloResNetLib.slicer_side.volumes import volume_to_array  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

ENV = {"OMP_NUM_THREADS": "1"}
TIMEOUT = 240


@pytest.fixture
def scene():
    """A fresh scene as slicer.mrmlScene (with the logics Slicer would have)."""
    previous = getattr(slicer, "mrmlScene", None)
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    scene.logics = create_logics(scene)
    yield scene
    slicer.mrmlScene = previous


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """12 subjects (some with two sessions) of 20^3 NIfTI volumes, marked synthetic; a shared cache."""
    root = tmp_path_factory.mktemp("training_module")
    manifest = write_cohort(root / "cohort", n_subjects=12, synthetic_marker=True)
    return {"root": root, "manifest": manifest, "cache": root / "cache"}


def add_volume(array: np.ndarray, name: str, affine: np.ndarray | None = None):
    affine = np.diag([0.9, 1.1, 1.3, 1.0]) if affine is None else affine
    return slicer.util.addVolumeFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)), affine, name=name)


def nan_equal(values, expected) -> bool:
    return all(
        (isinstance(a, float) and math.isnan(a) and b is None) or a == pytest.approx(b)
        for a, b in zip(values, expected, strict=True)
    )


# ------------------------------------------------------------------------------------------------------------
# Progress events -> nodes (recorded)
# ------------------------------------------------------------------------------------------------------------


def epoch_event(fold, epoch, loss, val_loss, auc, acc, fraction, eta=10.0):
    return {
        "event": "epoch",
        "fold": fold,
        "epoch": epoch,
        "epochs": 3,
        "train_loss": loss,
        "val_loss": val_loss,
        "val_auc": auc,
        "val_accuracy": acc,
        "lr": 0.002,
        "fraction": fraction,
        "eta_s": eta,
    }


FOLD0 = {"accuracy": 0.5, "balanced_accuracy": 0.5, "sensitivity": 1.0, "specificity": 0.0, "auc": 0.9, "f1": 0.6}
FOLD1 = {"accuracy": 0.75, "balanced_accuracy": 0.7, "sensitivity": 0.5, "specificity": 1.0, "auc": None, "f1": 0.5}
RECORDED = [
    {"event": "stage", "stage": "preprocessing", "done": 5, "total": 11, "stage_fraction": 0.45},
    {"event": "start", "run_dir": "/runs/r1", "folds": 2, "epochs": 3, "n_train": 11},
    {"event": "step", "fold": 0, "epoch": 0, "step": 0, "steps": 2, "loss": 0.7, "fraction": 0.08},
    epoch_event(0, 0, 0.7, math.nan, None, 0.0, 1 / 6, 50.0),
    epoch_event(0, 1, 0.6, 0.65, 0.75, 0.5, 2 / 6),
    epoch_event(0, 2, 0.5, 0.6, 1.0, 1.0, 3 / 6),
    {"event": "fold_end", "fold": 0, "metrics": FOLD0},
    epoch_event(1, 0, 0.8, 0.7, 0.5, 0.5, 4 / 6),
    epoch_event(1, 1, 0.75, 0.66, 0.5, 0.5, 5 / 6),
    epoch_event(1, 2, 0.7, 0.64, 0.5, 0.5, 1.0, 0.0),
    {"event": "fold_end", "fold": 1, "metrics": FOLD1},
    {
        "event": "done",
        "run_dir": "/runs/r1",
        "bundle": None,
        "metrics": {
            "accuracy": {"mean": 0.625, "sd": 0.1767766952966369, "best": 0.75},
            "balanced_accuracy": {"mean": 0.6, "sd": 0.1414213562373095, "best": 0.7},
            "sensitivity": {"mean": 0.75, "sd": 0.3535533905932738, "best": 1.0},
            "specificity": {"mean": 0.5, "sd": 0.7071067811865476, "best": 1.0},
            "auc": {"mean": 0.9, "sd": 0.0, "best": 0.9},
            "f1": {"mean": 0.55, "sd": 0.07, "best": 0.6},
        },
    },
]


def test_recorded_events_become_curve_tables_charts_and_a_metrics_table(scene):
    monitor = TrainingMonitor()
    states = []
    for event in RECORDED:
        # the JSON round trip is what the events go through between the processes (NaN included)
        monitor.handle(json.loads(json.dumps(event)))
        states.append((monitor.status, monitor.progress_text(), monitor.fraction))
    assert states[0][0] == "preprocessing: 5/11 volumes"
    assert states[2][1] == "fold 1/2, epoch 1/3 (step 1/2) - 8%"
    assert states[3][1] == "fold 1/2, epoch 1/3 - 17% - ETA 50 s"
    assert states[6][0].startswith("fold 1 finished: Accuracy 0.500")
    assert monitor.finished and monitor.fraction == 1.0 and monitor.run_dir == Path("/runs/r1")

    nodes = monitor.nodes()
    fold0, fold1 = nodes["curve_tables"][0], nodes["curve_tables"][1]
    assert table_column(fold0, "Epoch") == [1, 2, 3]
    assert table_column(fold0, "Training loss") == pytest.approx([0.7, 0.6, 0.5])
    assert nan_equal(table_column(fold0, "Validation loss"), [None, 0.65, 0.6])
    assert nan_equal(table_column(fold0, "Validation AUC"), [None, 0.75, 1.0])
    assert table_column(fold1, "Validation accuracy") == pytest.approx([0.5, 0.5, 0.5])
    for chart, ys in (
        (nodes["loss_chart"], ("Training loss", "Validation loss")),
        (nodes["metric_chart"], ("Validation AUC", "Validation accuracy")),
    ):
        assert chart.GetNumberOfPlotSeriesNodes() == 4  # 2 folds x 2 curves
        series = [chart.GetNthPlotSeriesNode(i) for i in range(4)]
        assert [s.GetTableNode() for s in series] == [fold0, fold0, fold1, fold1]
        assert [s.GetYColumnName() for s in series] == [*ys, *ys]
        assert {s.GetXColumnName() for s in series} == {"Epoch"}
        assert series[0].GetColor() == series[1].GetColor() != series[2].GetColor()  # one colour per fold
        assert series[1].GetLineStyle() == slicer.vtkMRMLPlotSeriesNode.LineStyleDash
    assert nodes["loss_chart"].GetName() == "GloResNet training loss"

    table = nodes["metrics_table"]
    rows = table_rows(table)
    assert [r["Fold"] for r in rows] == ["fold 0", "fold 1", "mean", "sd", "best"]
    assert [r["Accuracy"] for r in rows] == pytest.approx([0.5, 0.75, 0.625, 0.1767767, 0.75])
    assert [r["Sensitivity"] for r in rows] == pytest.approx([1.0, 0.5, 0.75, 0.3535534, 1.0])
    assert [r["Specificity"] for r in rows] == pytest.approx([0.0, 1.0, 0.5, 0.7071068, 1.0])
    assert math.isnan(rows[1]["AUC"]) and rows[2]["AUC"] == pytest.approx(0.9)
    assert "Accuracy: fold 1" in rows[4]["Note"] and "AUC: fold 0" in rows[4]["Note"]
    assert "Accuracy 0.625 ± 0.177 (best 0.750)" in monitor.summary_text()

    # nodes are updated in place: the same events again (a resumed process repeats an epoch) add nothing
    counts = {
        c: scene.GetNumberOfNodesByClass(c)
        for c in ("vtkMRMLTableNode", "vtkMRMLPlotChartNode", "vtkMRMLPlotSeriesNode")
    }
    assert counts == {"vtkMRMLTableNode": 3, "vtkMRMLPlotChartNode": 2, "vtkMRMLPlotSeriesNode": 8}
    monitor.handle(epoch_event(1, 2, 0.1, 0.2, 0.9, 1.0, 1.0))
    monitor.handle_all(RECORDED[1:])
    assert {c: scene.GetNumberOfNodesByClass(c) for c in counts} == counts
    assert table_column(fold1, "Epoch") == [1, 2, 3] and monitor.nodes()["curve_tables"][1] is fold1

    # a new run reuses and empties the nodes; stopped and error events are reported
    monitor.reset("/runs/r2")
    assert fold0.GetNumberOfRows() == 0 and table.GetNumberOfRows() == 0 and not monitor.finished
    monitor.handle({"event": "start", "run_dir": "/runs/r2", "folds": 2, "epochs": 3, "n_train": 11})
    monitor.handle(epoch_event(0, 0, 0.7, 0.7, 0.5, 0.5, 0.17))
    monitor.handle({"event": "stopped", "run_dir": "/runs/r2", "fold": 0, "epoch": 1})
    assert monitor.stopped_at == (0, 1) and "stopped at fold 1, epoch 2" in monitor.status
    assert fold0.GetNumberOfRows() == 1
    monitor.handle({"event": "error", "message": "dataset x has 2 problem(s)\nmore"})
    assert (
        monitor.errors == ["dataset x has 2 problem(s)\nmore"] and monitor.status == "error: dataset x has 2 problem(s)"
    )
    assert format_duration(3725) == "1 h 02 min" and format_duration(None) == "?"
    assert sys.modules.get("qt") is None


# ------------------------------------------------------------------------------------------------------------
# Scene volumes as a dataset; dataset check
# ------------------------------------------------------------------------------------------------------------


def test_scene_volumes_with_typed_labels_become_a_checked_dataset(scene, tmp_path, cohort):
    rng = np.random.default_rng(1)
    nodes = [add_volume(make_volume(rng, k % 2), f"case {k}") for k in range(8)]
    labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "seg")
    output = add_volume(np.zeros((5, 5, 5), np.float32), "case 0 GloResNet saliency")
    output.SetAttribute(ROLE_ATTRIBUTE, CAM_ROLE)
    assert input_volumes() == nodes and labelmap not in input_volumes() and output not in input_volumes()

    table = labels_table()
    assert labels_table() is table
    assert fill_labels_table(table, labels={"case 0": 0, "case 1": "BI"}) == 8
    assert fill_labels_table(table) == 0  # rows are kept, not duplicated
    labels = ["no BI", "BI", "0", "1", "no", "yes", "", "1"]  # what a user types; "" = not used
    column = table.GetTable().GetColumnByName("Label")
    for row, text in enumerate(labels):
        column.SetValue(row, text)
    table.GetTable().GetColumnByName("Subject").SetValue(7, "case 5")  # a second session of subject "case 5"
    cases = scene_cases(table)
    assert [c.node for c in cases] == [n for n, t in zip(nodes, labels) if t]
    assert [c.label for c in cases] == [0, 1, 0, 1, 0, 1, 1]
    assert cases[-1].subject == "case 5"

    params = tiny_params(cohort, tmp_path, source="scene")
    manifest = export_scene_dataset(cases, params.scene_data_dir, synthetic=True)
    assert manifest == params.dataset_path() == tmp_path / "tiny-scene-data" / "manifest.csv"
    from GloResNetLib.io import read_volume
    from GloResNetLib.training.datasets import read_manifest

    report = read_manifest(manifest)
    assert not report.problems and report.class_counts() == {"no BI": 3, "BI": 4}
    assert len(set(report.subjects)) == 6 and report.synthetic
    array, affine = read_volume(report.samples[2].path)
    expected, expected_affine = volume_to_array(nodes[2])
    np.testing.assert_allclose(array, expected, rtol=1e-6)
    np.testing.assert_allclose(affine, expected_affine, atol=1e-5)

    check = DatasetCheck(params.validate(), env=ENV).start()
    assert check.text() == "Checking the dataset..."
    check.wait(timeout=TIMEOUT)
    assert check.ok and check.report["n"] == 7, check.text()
    assert "ready to train" in check.text() and "7 volumes of 6 subjects" in check.text()

    column.SetValue(0, "maybe")
    with pytest.raises(InputError, match="row 1 .case 0.: label 'maybe'"):
        scene_cases(table)
    with pytest.raises(InputError, match="both classes"):
        export_scene_dataset([c for c in cases if c.label == 1], tmp_path / "one-class")
    with pytest.raises(InputError, match="no labelled volume"):
        export_scene_dataset([], tmp_path / "none")
    column.SetValue(0, "0")
    scene.RemoveNode(nodes[3])
    table.GetTable().GetColumnByName("Node ID").SetValue(3, "vtkMRMLScalarVolumeNode999")
    with pytest.raises(InputError, match="not in the scene"):
        scene_cases(table)


def test_dataset_check_reports_every_problem(tmp_path, cohort):
    existing = sorted((cohort["manifest"].parent / "images").iterdir())[0]
    rows = [{"path": "missing.nii.gz", "label": 1}, {"path": existing, "label": 3}]
    write_manifest(tmp_path / "bad.csv", rows, columns=("path", "label"))
    params = TrainingParameters(manifest=str(tmp_path / "bad.csv"), output_folder=str(tmp_path), run_name="r", size=16)
    check = DatasetCheck(params, env=ENV)
    check.wait(timeout=TIMEOUT)
    assert not check.ok and check.process.returncode == 2
    text = check.text()
    assert "2 problem(s)" in text and "missing file" in text and "invalid label" in text


# ------------------------------------------------------------------------------------------------------------
# Real background runs
# ------------------------------------------------------------------------------------------------------------


def test_real_training_stopped_resumed_registered_and_used_for_prediction(scene, cohort, tmp_path):
    models = tmp_path / "models"
    params = tiny_params(cohort, tmp_path, epochs=6, synthetic=True)  # fold 1 outlasts the stop's delivery
    monitor = TrainingMonitor(models_folder=models)
    job = start_training(params, monitor, env=ENV)
    assert job.running and job.run_dir == tmp_path / "tiny" and job.outcome is None
    live_rows = []

    def on_event(event):
        if event["event"] == "epoch":
            live_rows.append(monitor.curve_table(event["fold"]).GetNumberOfRows())
            if event["fold"] == 1 and job.process.stop_requested is False:
                assert job.stop()  # Stop: SIGINT, the run saves a checkpoint and exits 130

    job.wait(timeout=TIMEOUT, on_event=on_event)
    assert job.outcome == "stopped" and job.process.returncode == STOPPED_EXIT_CODE, job.log_text(30)
    assert live_rows[:7] == [1, 2, 3, 4, 5, 6, 1]  # the tables grew while the process ran
    assert job.failure_message() is None and job.resumable
    fold, epoch = monitor.stopped_at
    assert fold == 1 and (tmp_path / "tiny" / "fold_1" / "last.pt").is_file()
    assert (tmp_path / "tiny" / "fold_0" / "result.json").is_file() and monitor.registered is None
    assert "Resume" in monitor.status and 0.5 < monitor.fraction < 1.0

    # Resume, as after restarting Slicer: a new scene and a new monitor that first shows what the run holds
    slicer.mrmlScene = fresh = slicer.vtkMRMLScene()
    fresh.logics = create_logics(fresh)
    resumed_monitor = TrainingMonitor(models_folder=models)
    job2 = resume_training(job.run_dir, resumed_monitor, device="cpu", env=ENV, num_threads=1)
    assert resumed_monitor.curve_table(0).GetNumberOfRows() == 6  # fold 0 from its result.json
    events = job2.wait(timeout=TIMEOUT)
    assert job2.outcome == "done", job2.log_text(40)
    resumed_epochs = [(e["fold"], e["epoch"]) for e in events if e["event"] == "epoch"]
    assert resumed_epochs and {f for f, _ in resumed_epochs} == {1} and resumed_epochs[0][1] >= epoch
    assert table_column(resumed_monitor.curve_table(1), "Epoch")[-1] == 6
    rows = table_rows(resumed_monitor.metrics_table)
    assert [r["Fold"] for r in rows] == ["fold 0", "fold 1", "mean", "sd", "best"]
    assert rows[2]["Accuracy"] == pytest.approx(np.mean([rows[0]["Accuracy"], rows[1]["Accuracy"]]))
    metrics = json.loads((job.run_dir / "metrics.json").read_text())
    assert rows[2]["Accuracy"] == pytest.approx(metrics["summary"]["accuracy"]["mean"])
    assert resumed_monitor.loss_chart.GetNumberOfPlotSeriesNodes() == 4
    assert fresh.GetNumberOfNodesByClass("vtkMRMLPlotChartNode") == 2
    assert not job2.resumable and active_processes() == []

    # the ensemble bundle is in the models folder, listed as the GloResNet module lists it
    registered = resumed_monitor.registered
    assert registered == models / "tiny" and "registered as tiny" in resumed_monitor.status
    (info,) = find_bundles(models)
    assert info.path == registered and info.error is None and info.n_models == 2 and info.synthetic
    assert info.cv_metrics and "SYNTHETIC" in info.label
    assert register_run_bundle(job.run_dir / "bundle", models) == registered  # idempotent

    # "open in GloResNet": a held-out case, predicted through the GloResNet logic's in-process path
    case = pick_heldout_case(job.run_dir)
    assert case is not None and case.path.is_file() and case.label == 1 and "held out from fold" in case.description
    from GloResNetLib.bundle import load_bundle
    from GloResNetLib.inference import predict
    from GloResNetLib.io import read_volume

    array, affine = read_volume(case.path)
    node = add_volume(array, "held-out case", affine)
    (result,) = predict_nodes([node], registered, device="cpu")
    direct = predict(load_bundle(registered), array, affine, device="cpu")
    assert 0.0 <= result.probability <= 1.0
    assert result.probability == pytest.approx(direct.probability, abs=1e-5)
    assert "SYNTHETIC" in result.texts()["model"]
    assert result.cam.GetImageData().GetDimensions() == node.GetImageData().GetDimensions()


def test_bundle_registration_names_and_idempotence(tmp_path):
    def fake_bundle(run: str, created: str) -> Path:
        folder = tmp_path / run / "bundle"
        folder.mkdir(parents=True)
        (folder / "metadata.json").write_text(
            json.dumps({"name": "cohort run", "created": created, "weights": [{"file": "w", "sha256": created}]})
        )
        (folder / "w").write_bytes(b"x")
        return folder

    models = tmp_path / "models"
    first = register_run_bundle(fake_bundle("a", "2026-01-01"), models)
    assert first == models / "cohort_run" and (first / "w").is_file()
    assert register_run_bundle(tmp_path / "a" / "bundle", models) == first  # the same bundle again
    second = register_run_bundle(fake_bundle("b", "2026-02-02"), models)  # another model, same name
    assert second == models / "cohort_run-2"
    assert register_run_bundle(tmp_path / "b" / "bundle", models, name="mine") == models / "mine"
    assert sorted(p.name for p in models.iterdir()) == ["cohort_run", "cohort_run-2", "mine"]  # no leftovers
    with pytest.raises(InputError, match="not a model bundle"):
        register_run_bundle(tmp_path, models)


def test_failures_are_reported_with_the_last_log_lines(scene, tmp_path, cohort):
    write_manifest(tmp_path / "bad.csv", [{"path": "missing.nii.gz", "label": 1}], columns=("path", "label"))
    params = tiny_params(cohort, tmp_path, manifest=str(tmp_path / "bad.csv"))
    monitor = TrainingMonitor(models_folder=tmp_path / "models")
    job = start_training(params, monitor, env=ENV)
    job.wait(timeout=TIMEOUT)
    assert job.outcome == "failed" and job.process.returncode == 2
    assert job.diagnosis().kind == "user_error"
    message = job.failure_message()
    assert "missing file" in message and "Last output:" in message and str(job.run_dir) in message
    assert monitor.errors and "missing file" in monitor.errors[0] and monitor.status.startswith("error:")
    assert monitor.registered is None and not (tmp_path / "models").exists()
    with pytest.raises(InputError, match="nothing to resume"):
        resume_training(tmp_path / "nowhere")


def wait_until_training(jobs: list[TrainingJob]) -> None:
    """Poll the jobs until each has reported a training step."""
    waiting = set(range(len(jobs)))
    deadline = time.monotonic() + TIMEOUT
    while waiting and time.monotonic() < deadline:
        for i in list(waiting):
            if any(e["event"] == "step" for e in jobs[i].poll()):
                waiting.discard(i)
            assert jobs[i].running, jobs[i].log_text(30)
        time.sleep(0.05)
    assert not waiting, "the training never started"


def test_no_process_is_left_behind(cohort, tmp_path):
    jobs = [start_training(tiny_params(cohort, tmp_path / name, epochs=500), env=ENV) for name in "ab"]
    wait_until_training(jobs)
    pids = [job.process.pid for job in jobs]
    # Slicer quitting or the scene closing: stop cleanly (checkpoint kept), kill only if it does not end
    jobs[0].shutdown(timeout=60)
    jobs[0].wait(timeout=30)
    assert jobs[0].outcome == "stopped" and not pid_alive(pids[0]) and jobs[0].resumable
    # cancel_all (Slicer's aboutToQuit, atexit) kills the trees at once
    assert cancel_all() >= 1
    jobs[1].wait(timeout=30)
    assert jobs[1].outcome == "cancelled" and jobs[1].failure_message() is None
    assert not pid_alive(pids[1]) and not descendants(pids[1])


PLAIN_SLICER_SIDE = (
    "background",
    "bundles",
    "command",
    "common",
    "dependencies",
    "devices",
    "diagnosis",
    "files",
    "jobs",
    "paths",
    "requirements",
    "training_jobs",
    "training_params",
    "views",
)


def test_importing_the_slicer_side_is_cheap():
    """The Slicer modules import it at startup: no torch anywhere; the parameters, processes, jobs and bundle
    listing need no MRML either (only the scene, volume, display, table, result and monitor modules do)."""
    lib = Path(__file__).resolve().parents[1] / "GloResNet" / "GloResNetLib" / "slicer_side"
    every = sorted(p.stem for p in lib.glob("*.py") if p.stem != "__init__")
    assert set(PLAIN_SLICER_SIDE) < set(every)
    for names, forbidden in ((PLAIN_SLICER_SIDE, ("torch", "slicer", "vtk", "qt")), (every, ("torch", "qt"))):
        code = (
            "import sys, importlib; "
            f"[importlib.import_module('GloResNetLib.slicer_side.' + n) for n in {names!r}]; "
            f"print(sorted(m for m in {forbidden!r} if m in sys.modules))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=child_env())
        assert out.returncode == 0 and out.stdout.strip() == "[]", (names, out.stdout, out.stderr)


def test_a_crashed_parent_leaves_no_orphan(cohort, tmp_path):
    """If Slicer itself dies, the training (its own session) ends at its next progress line (broken pipe)."""
    args = train_args(tiny_params(cohort, tmp_path, epochs=500))
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(LIB_PARENT)!r})
        from GloResNetLib.slicer_side.command import start_gloresnet
        job = start_gloresnet({args!r}, env={ENV!r})
        for event in job.follow(120):
            if event.get("event") == "step":
                print(job.pid, flush=True)
                time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line.strip().isdigit(), "the parent did not report its child"
        child = int(line)
        assert pid_alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 60
        while pid_alive(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = pid_alive(child)
        if alive:
            kill_tree(child)
        assert not alive, "the training outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()

"""Brain-age model bundles: ``gloresnet pretrain-age`` writes ``OUT/bundle`` and ``predict`` reports its age.

Real pieces only: a tiny synthetic-marked cohort of NIfTI files, a real ``pretrain-age`` subprocess, the
bundle loaded with its checks, ``gloresnet predict`` subprocesses, an independent recomputation of the age
from the fold models' safetensors files, tampered files, and real MRML nodes (slicer-core) for the Slicer side.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from GloResNetLib.age_target import AGE_REGRESSION
from GloResNetLib.bundle import load_bundle, sha256_file
from GloResNetLib.errors import BundleError
from GloResNetLib.inference import predict
from GloResNetLib.io import read_volume
from GloResNetLib.models import build_model
from GloResNetLib.preprocessing import PreprocessConfig, preprocess
from safetensors.torch import load_file
from training_fixtures import TINY_CLI_OPTIONS, TINY_WIDTHS, write_cohort
from training_fixtures import cli as run_cli

CLASSIFIER_FIELDS = {
    "probability",
    "label",
    "label_name",
    "threshold",
    "view_probabilities",
    "model_probabilities",
    "spread",
}


def cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m GloResNetLib ARGS`` in a real subprocess (:func:`training_fixtures.cli`)."""
    return run_cli(list(args), timeout=300)


@pytest.fixture(scope="module")
def age_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("age_bundle")
    manifest = write_cohort(root / "cohort", n_subjects=12, synthetic_marker=True)
    out = root / "age"
    proc = cli(
        "pretrain-age",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--cache-dir",
        str(root / "cache"),
        *TINY_CLI_OPTIONS,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {
        "root": root,
        "out": out,
        "bundle": out / "bundle",
        "proc": proc,
        "volume": sorted((root / "cohort" / "images").glob("*.nii.gz"))[0],
    }


def expected_ages(bundle_dir: Path, volume: Path) -> np.ndarray:
    """(models, views) ages in weeks recomputed from the fold models' files: preprocessing as recorded,
    identity and left-right flip, the plain model forward, weeks = offset + scale * output."""
    meta = json.loads((bundle_dir / "metadata.json").read_text())
    array, affine = read_volume(volume)
    x = torch.from_numpy(preprocess(array, affine, PreprocessConfig.from_dict(meta["preprocess"])).array)
    x = x.float()[None, None]
    views = torch.cat([x, x.flip(2)])
    out = []
    for entry, offset, scale in zip(meta["weights"], meta["target"]["offset"], meta["target"]["scale"]):
        model = build_model("resnet10", 1, widths=TINY_WIDTHS)
        model.load_state_dict(load_file(str(bundle_dir / entry["file"])))
        with torch.no_grad():
            out.append(offset + scale * model.eval()(views)[:, 0].double().numpy())
    return np.array(out)


def test_pretrain_age_writes_a_checked_age_bundle(age_run):
    out, bundle_dir = age_run["out"], age_run["bundle"]
    files = sorted(p.name for p in bundle_dir.iterdir())
    assert files == ["metadata.json", "model_fold0.safetensors", "model_fold1.safetensors", "model_fold2.safetensors"]
    meta = json.loads((bundle_dir / "metadata.json").read_text())
    assert meta["task"] == AGE_REGRESSION and meta["num_classes"] == 1
    assert "threshold" not in meta and "class_names" not in meta  # meaningless for a regression
    target = meta["target"]
    assert target["name"] == "age_weeks" and target["unit"] == "weeks post-menstrual age"
    metrics = json.loads((out / "metrics.json").read_text())
    for k, entry in enumerate(meta["weights"]):
        fold = out / f"fold_{k}"
        trained = json.loads((fold / "result.json").read_text())["target"]  # the fold's own standardisation
        assert (target["offset"][k], target["scale"][k]) == pytest.approx((trained["mean"], trained["sd"]))
        assert entry["sha256"] == sha256_file(bundle_dir / entry["file"])
        mine, theirs = load_file(str(bundle_dir / entry["file"])), load_file(str(fold / "model.safetensors"))
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[n], theirs[n]) for n in mine)
    td = meta["training_data"]
    assert td["synthetic"] is True and td["trained"] is True and "SYNTHETIC" in td["description"]
    assert "32.0-40.0 weeks" in td["description"] and "classes" not in td
    cv = meta["cv_metrics"]
    assert cv["mae_weeks"]["mean"] == pytest.approx(metrics["mae_weeks"]["mean"])
    assert cv["per_fold_mae_weeks"] == pytest.approx(metrics["mae_weeks"]["values"])
    assert cv["baseline_mae_weeks"]["mean"] == pytest.approx(metrics["baseline_mae_weeks"]["mean"])
    bundle = load_bundle(bundle_dir)
    assert bundle.task == AGE_REGRESSION and len(bundle.models) == 3 and bundle.is_synthetic
    assert all(m.fc.out_features == 1 for m in bundle.models)
    # the transfer backbone is still written as before: the final model without its head
    backbone, final = load_file(str(out / "age_backbone.safetensors")), load_file(str(out / "final/model.safetensors"))
    assert set(final) - set(backbone) == {"fc.weight", "fc.bias"}
    assert "bundle: " in age_run["proc"].stdout
    info = cli("bundle", "info", str(bundle_dir))
    assert info.returncode == 0 and "  task: age_regression" in info.stdout and "brain age" in info.stdout
    assert "threshold" not in info.stdout


def test_predict_reports_age_weeks_in_json_and_on_the_console(age_run, tmp_path):
    volume, bundle_dir = age_run["volume"], age_run["bundle"]
    proc = cli(
        "predict", str(volume), "--model", str(bundle_dir), "--out", str(tmp_path / "a"), "--json", "--device", "cpu"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (record,) = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert json.loads((tmp_path / "a" / "sub00_ses0.json").read_text()) == record
    ages = expected_ages(bundle_dir, volume)  # (3 models, 2 views)
    assert record["task"] == AGE_REGRESSION and record["target"]["unit"] == "weeks post-menstrual age"
    assert record["age_weeks"] == pytest.approx(ages.mean(), abs=1e-3)
    assert record["model_age_weeks"] == pytest.approx(ages.mean(1), abs=1e-3)
    assert list(record["view_age_weeks"]) == ["identity", "flip_x"]
    assert list(record["view_age_weeks"].values()) == pytest.approx(ages.mean(0), abs=1e-3)
    assert record["spread_weeks"] == pytest.approx(ages.max() - ages.min(), abs=1e-3)
    assert not CLASSIFIER_FIELDS & set(record), CLASSIFIER_FIELDS & set(record)
    assert record["synthetic_model"] is True and record["saliency"].startswith("Grad-CAM of the predicted age")
    cam = nib.load(record["outputs"]["cam"])
    source = nib.load(str(volume))
    assert cam.shape == source.shape and np.allclose(cam.affine, source.affine)
    data = np.asarray(cam.dataobj)
    assert np.isfinite(data).all() and data.min() >= 0 and data.max() <= 1 + 1e-6

    no_cam = cli(
        "predict", str(volume), "--model", str(bundle_dir), "--out", str(tmp_path / "b"), "--no-cam", "--device", "cpu"
    )
    assert no_cam.returncode == 0, no_cam.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["sub00_ses0.json", "sub00_ses0_resampled.nii.gz"]
    quiet = json.loads((tmp_path / "b" / "sub00_ses0.json").read_text())
    assert quiet["cam_peak_ras"] is None and quiet["saliency"] is None
    assert quiet["age_weeks"] == pytest.approx(record["age_weeks"], abs=1e-3)
    assert "age (weeks)" in no_cam.stdout and f"{record['age_weeks']:.2f}" in no_cam.stdout
    assert "P(BI)" not in no_cam.stdout and "SYNTHETIC" in no_cam.stdout and "MAE" in no_cam.stdout


def test_tampered_age_bundle_is_refused(age_run, tmp_path):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(age_run["bundle"], bundle_dir)
    weights = bundle_dir / "model_fold1.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # one bit of one tensor
    weights.write_bytes(bytes(data))
    proc = cli("predict", str(age_run["volume"]), "--model", str(bundle_dir), "--out", str(tmp_path / "o"), "--json")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gloresnet: error: ") and "checksum mismatch" in last and "model_fold1" in last
    out = tmp_path / "o"  # --out is created and checked writable before the model loads; nothing is written
    assert proc.stdout == "" and (not out.exists() or not any(out.iterdir()))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m["target"].update(scale=[1.0, -2.0, 1.0]), "target.scale must be positive"),
        (lambda m: m["target"].update(offset=[35.0, 36.0]), "target.offset lists 2 values for 3"),
        (lambda m: m["target"].update(offset=[35.0, float("nan"), 36.0]), "finite numbers"),
        (lambda m: m.pop("target"), "needs a 'target' object"),
        (lambda m: m.update(num_classes=2), "num_classes 1"),
        (lambda m: m.update(task="segmentation"), "'task' must be one of classification, age_regression"),
    ],
)
def test_age_metadata_is_checked(age_run, tmp_path, change, message):
    bundle_dir = tmp_path / "bundle"
    shutil.copytree(age_run["bundle"], bundle_dir)
    meta = json.loads((bundle_dir / "metadata.json").read_text())
    change(meta)
    (bundle_dir / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=message) as exc:
        load_bundle(bundle_dir)
    assert "\n" not in str(exc.value)


def test_classifier_only_paths_refuse_or_handle_the_age_bundle(age_run, small_bundle):
    bundle = load_bundle(age_run["bundle"])
    with pytest.raises(BundleError, match="no decision threshold"):
        bundle.threshold  # noqa: B018 - the classifier's decision threshold does not exist here
    array, affine = read_volume(age_run["volume"])
    result = predict(bundle, array, affine, cam_class=1, device="cpu")  # the classifier's entry point
    assert not hasattr(result, "probability")
    assert result.age_weeks == pytest.approx(expected_ages(age_run["bundle"], age_run["volume"]).mean(), abs=1e-4)
    assert result.cam.shape == array.shape and result.cam.max() == pytest.approx(1.0, abs=1e-5)
    classifier = load_bundle(small_bundle)  # a classifier bundle is untouched by the task field
    assert classifier.task == "classification" and 0 < classifier.threshold < 1


def test_slicer_adapter_records_the_age(age_run):
    slicer = pytest.importorskip("slicer")
    from GloResNetLib.errors import InputError
    from GloResNetLib.slicer_side.bundles import bundle_info
    from GloResNetLib.slicer_side.prediction_job import PredictionJob
    from GloResNetLib.slicer_side.results import RESULT_COLUMNS, predict_nodes
    from GloResNetLib.slicer_side.scene import create_logics
    from GloResNetLib.slicer_side.tables import table_rows
    from GloResNetLib.slicer_side.volumes import output_volume

    previous = getattr(slicer, "mrmlScene", None)
    scene = slicer.vtkMRMLScene()
    slicer.mrmlScene = scene
    logics = create_logics(scene)  # noqa: F841 - the colour tables live as long as their logic
    try:
        array, affine = read_volume(age_run["volume"])
        node = output_volume(array, "baby T2w", affine=affine, scene=scene)
        job = PredictionJob([node], age_run["bundle"], device="cpu", show=False).start()
        (nodes,) = job.wait(timeout=300)
        assert job.succeeded, job.failure_message()
        expected = expected_ages(age_run["bundle"], age_run["volume"]).mean()
        assert nodes.age_weeks == pytest.approx(expected, abs=1e-3)
        with pytest.raises(InputError, match="no P\\(BI\\)"):
            nodes.probability  # noqa: B018
        (row,) = table_rows(nodes.table)
        assert list(row) == list(RESULT_COLUMNS)
        assert row["Age (weeks)"] == pytest.approx(nodes.age_weeks, abs=1e-6)
        assert row["Age spread (weeks)"] == pytest.approx(nodes.summary["spread_weeks"])
        assert np.isnan(row["P(BI)"]) and np.isnan(row["Threshold"]) and row["Label"] == ""
        assert "SYNTHETIC" in row["Model"]
        texts = nodes.texts()
        assert texts["caption"] == "Estimated age (PMA):" and texts["probability"].startswith(
            f"{nodes.age_weeks:.1f} weeks"
        )
        assert nodes.cam is not None and nodes.cam.GetImageData().GetDimensions() == array.shape
        (again,) = predict_nodes([node], age_run["bundle"], device="cpu", show=False)  # in process
        assert again.age_weeks == pytest.approx(nodes.age_weeks, abs=1e-4) and again.table.GetNumberOfRows() == 2
        info = bundle_info(age_run["bundle"])
        assert info.task == AGE_REGRESSION and "brain age" in info.label and "mae_weeks" in info.description
    finally:
        slicer.mrmlScene = previous


def test_age_saliency_is_the_gradcam_of_the_ensembles_age(tmp_path):
    """With a 48^3 input (2^3 feature grid) the map is the Grad-CAM of the mean age in weeks: the members'
    MONAI Grad-CAMs of their one output weighted by their target scale (x1 and x5 here), scaled to max 1."""
    from conftest import example_affine, make_head_volume
    from GloResNetLib.age_target import age_target
    from GloResNetLib.bundle import default_metadata, save_bundle
    from monai.visualize import GradCAM

    size, models = (48, 48, 48), []
    for seed in (1, 2):
        torch.manual_seed(seed)
        model = build_model("resnet10", 1, widths=TINY_WIDTHS).train()
        with torch.no_grad():
            model(torch.randn(2, 1, *size))  # non-trivial BatchNorm statistics
            model.fc.weight.abs_()  # the age rises with the (non-negative) features: a non-zero map
        models.append(model.eval())
    meta = default_metadata(
        "age48",
        arch_params={"widths": TINY_WIDTHS},
        preprocess=PreprocessConfig(size=size),
        training_data={"description": "pytest random weights", "synthetic": True},
        extra={"task": AGE_REGRESSION, "num_classes": 1, "target": age_target([36.0, 38.0], [1.0, 5.0])},
    )
    for key in ("class_names", "threshold"):
        meta.pop(key)
    with pytest.raises(BundleError, match="target.offset lists 2 values for 3"):
        save_bundle(tmp_path / "bad", [m.state_dict() for m in models * 2][:3], meta)
    assert not (tmp_path / "bad").exists()
    bundle = load_bundle(save_bundle(tmp_path / "age48", [m.state_dict() for m in models], meta))
    r = predict(bundle, make_head_volume(seed=4), example_affine(), tta=False)
    x = torch.from_numpy(r.resampled)[None, None]
    raw = [
        GradCAM(nn_module=m, target_layers="layer4", postprocessing=lambda m: m)(x, class_idx=0)[0, 0].detach().numpy()
        for m in bundle.models
    ]
    with torch.no_grad():
        outputs = [float(m(x)[0, 0]) for m in bundle.models]
    assert r.model_age_weeks == pytest.approx([36.0 + outputs[0], 38.0 + 5.0 * outputs[1]], abs=1e-3)

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    weighted = raw[0] + 5.0 * raw[1]
    assert np.ptp(weighted) > 0 and r.cam_network.max() == pytest.approx(1.0)
    assert corr(r.cam_network, weighted) >= 0.99
    assert corr(r.cam_network, weighted) > corr(r.cam_network, 5.0 * raw[0] + raw[1]) + 0.01

"""Model bundles: safetensors + metadata, checksums, refusal of anything inconsistent."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from conftest import make_bundle
from GloResNetLib.bundle import load_bundle, read_metadata, resolve_device, sha256_file
from GloResNetLib.errors import BundleError, InputError


def test_roundtrip_metadata_and_weights(tmp_path):
    path = make_bundle(tmp_path / "b", n_models=2)
    meta = json.loads((path / "metadata.json").read_text())
    for key in (
        "arch",
        "arch_params",
        "preprocess",
        "class_names",
        "threshold",
        "training_data",
        "cv_metrics",
        "library_version",
        "created",
        "weights",
        "provenance",
    ):
        assert key in meta
    assert [w["file"] for w in meta["weights"]] == ["model_fold0.safetensors", "model_fold1.safetensors"]
    assert meta["weights"][0]["sha256"] == sha256_file(path / "model_fold0.safetensors")
    bundle = load_bundle(path)
    assert len(bundle.models) == 2 and bundle.is_synthetic and bundle.threshold == 0.5
    assert bundle.preprocess_config.size == (64, 64, 64)
    assert all(not m.training for m in bundle.models)
    assert "SYNTHETIC" in bundle.describe()


def test_checksum_mismatch_refused(tmp_path):
    path = make_bundle(tmp_path / "b")
    weights = path / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(BundleError, match="checksum mismatch"):
        load_bundle(path)


def test_unknown_architecture_refused(tmp_path):
    path = make_bundle(tmp_path / "b")
    meta = json.loads((path / "metadata.json").read_text())
    meta["arch"] = "resnet1000"
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="unknown architecture"):
        load_bundle(path)


def test_weights_not_fitting_architecture_refused(tmp_path):
    path = make_bundle(tmp_path / "b")
    meta = json.loads((path / "metadata.json").read_text())
    meta["arch_params"] = {"widths": [16, 32, 64, 128]}
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="do not fit"):
        load_bundle(path)


def test_missing_files_refused(tmp_path):
    path = make_bundle(tmp_path / "b")
    (path / "model.safetensors").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(path)
    (path / "metadata.json").unlink()
    with pytest.raises(BundleError, match="not a model bundle"):
        load_bundle(path)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nothing")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.pop("training_data"), "lacks training_data"),
        (lambda m: m.update(threshold=1.5), "threshold"),
        (lambda m: m.update(class_names=["a"]), "num_classes"),
        (lambda m: m.update(format_version=99), "newer"),
        (lambda m: m.update(preprocess={"size": [3, 3, 3]}), "preprocess.size"),
    ],
)
def test_bad_metadata_refused(tmp_path, edit, message):
    path = make_bundle(tmp_path / "b")
    meta = json.loads((path / "metadata.json").read_text())
    edit(meta)
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=message):
        read_metadata(path)


def test_save_refuses_non_empty_folder_and_leaves_no_partial(tmp_path):
    make_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match="not empty"):
        make_bundle(tmp_path / "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="unknown device"):
        resolve_device("tpu")


def test_copy_preserves_checksums(tmp_path):
    from GloResNetLib.bundle import copy_bundle

    src = make_bundle(tmp_path / "src_bundle")
    (tmp_path / "models").mkdir()
    dst = copy_bundle(src, tmp_path / "models")
    assert load_bundle(dst).name == "src_bundle"
    with pytest.raises(BundleError, match="already exists"):
        copy_bundle(src, tmp_path / "models")
    shutil.rmtree(dst)

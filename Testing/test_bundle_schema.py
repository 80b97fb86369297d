"""Bundle metadata schema and weights checks (issue 16, items 2 and 7): real bundles on disk, edited as a careless
or hostile user would, loaded by the library, by ``gloresnet bundle info`` and by the models list."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import make_bundle, make_small_model, subprocess_env
from GloResNetLib.bundle import load_bundle, read_metadata, sha256_file
from GloResNetLib.bundle_meta import SYNTHETIC_FLAG, UNTRAINED_FLAG, read_bundle_metadata, training_flag
from GloResNetLib.bundle_schema import ARCH_NAMES, MAX_DEPTH, validate_metadata
from GloResNetLib.cli import main
from GloResNetLib.errors import BundleError
from GloResNetLib.models import ARCHITECTURES
from GloResNetLib.slicer_side.bundles import bundle_info


def _edit(path, edit) -> None:
    meta = json.loads((path / "metadata.json").read_text())
    edit(meta)
    (path / "metadata.json").write_text(json.dumps(meta))


def _info(path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "GloResNetLib", "bundle", "info", str(path)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )


@pytest.fixture(scope="module")
def good_meta(tmp_path_factory) -> dict:
    return json.loads((make_bundle(tmp_path_factory.mktemp("m") / "b") / "metadata.json").read_text())


def _nested(depth: int):
    value: list = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(threshold="abc"), "'threshold' must be a number"),
        (lambda m: m.update(threshold=float("nan")), "'threshold' must be a number"),
        (lambda m: m.update(threshold=True), "'threshold' must be a number"),
        (lambda m: m.update(format_version=None), "'format_version' must be a positive integer"),
        (lambda m: m.update(format_version="1"), "'format_version' must be a positive integer"),
        (lambda m: m.update(arch_params=[1, 2]), "'arch_params' must be an object"),
        (
            lambda m: m.update(arch_params={"widths": [32768] * 4}),
            "'arch_params.widths' must be a list of 4-4 integers",
        ),
        (lambda m: m.update(arch_params={"widths": [8, 16]}), "'arch_params.widths'"),
        (lambda m: m.update(arch_params={"bogus": 1}), "not a known architecture parameter"),
        (lambda m: m.update(arch_params={"cam_layer": "layer9"}), "'arch_params.cam_layer' must be one of"),
        (lambda m: m.update(tta_axes=[5]), "'tta_axes'"),
        (lambda m: m.update(tta_axes=[0, 0]), "'tta_axes'"),
        (lambda m: m.update(tta_axes="0"), "'tta_axes'"),
        (lambda m: m.update(class_names=["no BI", "no BI"]), "'class_names'"),
        (lambda m: m.update(class_names=[1, 2]), "'class_names'"),
        (lambda m: m.update(num_classes=1), "'num_classes'"),
        (lambda m: m.update(preprocess=[]), "'preprocess' must be an object"),
        (lambda m: m.update(preprocess={"size": [64, 64, "x"]}), "'preprocess.size'"),
        (lambda m: m.update(preprocess={"size": [64, 64, 64], "antialias": "yes"}), "'preprocess.antialias'"),
        (lambda m: m.update(preprocess={"normalization": "minmax"}), "'preprocess.normalization'"),
        (lambda m: m.update(training_data={"synthetic": "no"}), "'training_data.synthetic'"),
        (lambda m: m.update(name=""), "'name' must not be empty"),
        (lambda m: m.update(task="segmentation"), "'task' must be one of"),
        (lambda m: m.update(target=[1]), "'target' must be an object"),
        (lambda m: m.update(weights=[{"file": "../outside.safetensors", "sha256": "0" * 64}]), "plain file name"),
        (lambda m: m.update(weights=[]), "'weights' must list"),
        (lambda m: m.update(cv_metrics=_nested(MAX_DEPTH + 2)), "nested more than"),
    ],
)
def test_schema_refuses_bad_fields_with_one_line(good_meta, edit, message):
    meta = json.loads(json.dumps(good_meta))
    edit(meta)
    with pytest.raises(BundleError, match=message) as info:
        validate_metadata(meta)
    assert "\n" not in str(info.value)


def test_schema_accepts_the_written_metadata_and_an_age_regression_bundle(good_meta):
    assert validate_metadata(json.loads(json.dumps(good_meta))) is not None
    age = {k: v for k, v in good_meta.items() if k not in ("class_names", "threshold")}
    age.update(
        task="age_regression",
        num_classes=1,
        target={"name": "postmenstrual age at scan", "unit": "weeks", "mean": 40.1, "sd": 2.3},
    )
    assert validate_metadata(age)["task"] == "age_regression"
    with pytest.raises(BundleError, match="target.mean"):
        validate_metadata(dict(age, target={"mean": float("inf")}))


def test_arch_names_match_the_architectures():
    assert set(ARCH_NAMES) == set(ARCHITECTURES)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m.update(threshold="abc"), "threshold"),
        (lambda m: m.update(format_version=None), "format_version"),
        (lambda m: m.update(arch_params=[1]), "arch_params"),
        (lambda m: m.update(arch_params={"widths": [32768] * 4}), "widths"),
    ],
)
def test_bundle_info_refuses_bad_metadata_exit_2_one_line(tmp_path, capsys, edit, message):
    path = make_bundle(tmp_path / "b")
    _edit(path, edit)
    assert main(["bundle", "info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    info = bundle_info(path)  # the Slicer models list applies the same schema
    assert info.error and message in info.error


def test_tta_axes_out_of_range_fails_bundle_info_not_predict(tmp_path):
    path = make_bundle(tmp_path / "b")
    _edit(path, lambda m: m.update(tta_axes=[5]))
    done = _info(path)  # a real process: exit code and stderr as a user sees them
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "tta_axes" in done.stderr and "Traceback" not in done.stderr


def test_deeply_nested_metadata_is_refused_without_traceback(tmp_path, capsys):
    path = make_bundle(tmp_path / "b")
    text = (path / "metadata.json").read_text()
    deep = "[" * 200_000 + "]" * 200_000
    (path / "metadata.json").write_text(text.rstrip().rstrip("}") + f', "extra": {deep}}}')
    with pytest.raises(BundleError, match="nested"):
        read_metadata(path)
    assert main(["bundle", "info", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nested" in err


def test_weights_symlinked_outside_the_bundle_are_refused(tmp_path):
    path = make_bundle(tmp_path / "b")
    outside = tmp_path / "elsewhere.safetensors"
    (path / "model.safetensors").rename(outside)
    (path / "model.safetensors").symlink_to(outside)  # same bytes, so the checksum still matches
    assert sha256_file(path / "model.safetensors") == read_metadata(path)["weights"][0]["sha256"]
    with pytest.raises(BundleError, match="outside the bundle folder"):
        load_bundle(path)


def _bundle_with(tmp_path, change) -> object:
    model = make_small_model(0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    change(state)
    return make_bundle(tmp_path / "b", models=[_StateOnly(state)])


class _StateOnly:
    """Hands ``make_bundle`` a prepared state dict (saved as is)."""

    def __init__(self, state: dict) -> None:
        self._state = state

    def state_dict(self) -> dict:
        return self._state


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s["conv1.weight"].view(-1)[3].fill_(float("nan")), "NaN or infinite"),
        (lambda s: s["fc.weight"].view(-1)[0].fill_(float("inf")), "NaN or infinite"),
        (lambda s: s.update({"conv1.weight": s["conv1.weight"].mul(50).to(torch.int8)}), "int8, expected floating"),
        (lambda s: s["bn1.running_var"].view(-1)[0].fill_(-1.0), "negative variances"),
    ],
)
def test_unusable_weights_refused_at_load(tmp_path, change, message):
    path = _bundle_with(tmp_path, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(path)


def test_save_bundle_refuses_metadata_that_would_not_load(tmp_path):
    with pytest.raises(BundleError, match="tta_axes"):
        make_bundle(tmp_path / "b", tta_axes=(0, 3))
    assert list(tmp_path.iterdir()) == []  # nothing written, no partial folder


@pytest.mark.parametrize(
    "training_data, flag",
    [
        ({"description": "dHCP", "synthetic": False, "trained": True}, ""),
        ({"description": "phantoms", "synthetic": True, "trained": True}, SYNTHETIC_FLAG),
        ({"description": "none", "synthetic": True, "trained": False}, UNTRAINED_FLAG),  # untrained wins
    ],
)
def test_loading_and_the_models_list_read_metadata_alike_and_word_the_flags_alike(tmp_path, training_data, flag):
    path = make_bundle(tmp_path / "b")
    _edit(path, lambda m: m.update(training_data=training_data))
    bundle, info, meta = load_bundle(path), bundle_info(path), read_bundle_metadata(path)
    assert bundle.flag == info.flag == meta.flag == training_flag(training_data) == flag
    expected = ("b", "classification", 1)
    assert (bundle.name, bundle.task, bundle.n_models) == (info.name, info.task, info.n_models) == expected
    assert bundle.metadata == info.meta.metadata == meta.metadata
    if flag:
        assert f"[{flag}]" in bundle.describe() and f"[{flag}]" in info.label
        assert f"WARNING: {flag}." in info.description
    else:
        assert "[" not in bundle.describe() + info.label


def test_the_models_list_refuses_a_brain_age_target_that_loading_refuses(tmp_path):
    path = make_bundle(tmp_path / "b")
    _edit(path, lambda m: m.update(task="age_regression", num_classes=1, target={"name": "pma"}))
    with pytest.raises(BundleError) as refused:
        read_metadata(path)
    info = bundle_info(path)
    assert info.error and info.error in str(refused.value) and "unusable" in info.label

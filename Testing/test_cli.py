"""The ``gloresnet`` command: predict, bundle create/info, exit codes and error messages."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import SMALL_WIDTHS, example_affine, make_head_volume, save_nifti, subprocess_env
from GloResNetLib.cli import main
from GloResNetLib.models import build_model
from test_models import _Exploit, medicalnet_checkpoint


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m GloResNetLib ARGS`` as a real process."""
    return subprocess.run(
        [sys.executable, "-m", "GloResNetLib", *args], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )


def test_help_documents_every_command_and_option():
    out = run_cli("--help")
    assert out.returncode == 0 and "predict" in out.stdout and "bundle" in out.stdout
    out = run_cli("predict", "--help")
    for option in ("--model", "--out", "--device", "--no-tta", "--json", "--tta-axes"):
        assert option in out.stdout
    assert "not for clinical" in out.stdout


def test_predict_writes_outputs_and_summary(tmp_path, small_bundle):
    a = save_nifti(tmp_path / "case01.nii.gz", make_head_volume(), example_affine())
    b = save_nifti(tmp_path / "case02.nii", make_head_volume(seed=2, lesion=False), np.diag([1, 1, 1.2, 1]))
    out = run_cli(
        "predict", str(a), str(b), "--model", str(small_bundle), "--out", str(tmp_path / "out"), "--device", "cpu"
    )
    assert out.returncode == 0, out.stderr
    assert "case01.nii.gz" in out.stdout and "P(BI)" in out.stdout and "SYNTHETIC" in out.stdout
    for stem, src in (("case01", a), ("case02", b)):
        cam = nib.load(str(tmp_path / "out" / f"{stem}_cam.nii.gz"))
        ref = nib.load(str(src))
        assert cam.shape == ref.shape
        np.testing.assert_allclose(cam.affine, ref.affine, atol=1e-5)
        res = nib.load(str(tmp_path / "out" / f"{stem}_resampled.nii.gz"))
        assert res.shape == (64, 64, 64)
        record = json.loads((tmp_path / "out" / f"{stem}.json").read_text())
        assert 0 <= record["probability"] <= 1 and record["label"] in (0, 1)
        assert set(record["view_probabilities"]) == {"identity", "flip_x"}
        assert {"load", "preprocess", "network", "cam", "write"} <= set(record["timings_s"])
        assert record["model"] == "tiny" and record["training_data"]["synthetic"] is True
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]


def test_predict_json_lines_and_progress(tmp_path, small_bundle, capsys):
    a = save_nifti(tmp_path / "x.nii.gz", make_head_volume(), example_affine())
    code = main(
        [
            "predict",
            str(a),
            "--model",
            str(small_bundle),
            "--out",
            str(tmp_path / "o"),
            "--json",
            "--no-tta",
            "--progress-json",
            "--device",
            "cpu",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0
    lines = [json.loads(line) for line in captured.out.strip().splitlines()]  # events and records: one stream
    records = [line for line in lines if "event" not in line]
    assert len(records) == 1 and records[0]["view_probabilities"].keys() == {"identity"}
    events = [line for line in lines if "event" in line]
    assert events[0]["event"] == "stage" and events[-1] == {"event": "done", "fraction": 1.0, "failures": 0}
    assert lines.index(records[0]) < lines.index(events[-1])  # the record before the final event
    assert not [line for line in captured.err.splitlines() if line.startswith("{")]  # stderr is for people


def test_user_errors_exit_2_with_one_line_and_no_traceback(tmp_path, small_bundle):
    out = run_cli(
        "predict", str(tmp_path / "missing.nii.gz"), "--model", str(small_bundle), "--out", str(tmp_path / "o")
    )
    assert out.returncode == 2 and "file not found" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = run_cli("predict", "--model", str(small_bundle))
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_corrupt_input_leaves_no_output_files(tmp_path, small_bundle, capsys):
    good = save_nifti(tmp_path / "good.nii.gz", make_head_volume(), example_affine())
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(good.read_bytes()[:300])
    code = main(
        ["predict", str(bad), str(good), "--model", str(small_bundle), "--out", str(tmp_path / "o"), "--device", "cpu"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "bad.nii.gz" in err
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "good.json",
        "good_cam.nii.gz",
        "good_resampled.nii.gz",
    ]


@pytest.mark.parametrize(
    "vol, message",
    [
        (np.full((10, 10, 10), 3.0, np.float32), "constant"),
        (np.where(np.ones((10, 10, 10)), np.nan, 0).astype(np.float32), "NaN"),
    ],
)
def test_bad_volumes_via_cli(tmp_path, small_bundle, capsys, vol, message):
    path = save_nifti(tmp_path / "v.nii.gz", vol, np.eye(4))
    code = main(["predict", str(path), "--model", str(small_bundle), "--out", str(tmp_path / "o")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "o" / "v.json").exists()


def test_device_cuda_without_cuda_is_a_user_error(tmp_path, small_bundle, head_nifti, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    code = main(
        ["predict", str(head_nifti), "--model", str(small_bundle), "--out", str(tmp_path / "o"), "--device", "cuda"]
    )
    assert code == 2 and "CUDA is not available" in capsys.readouterr().err


def test_bad_bundle_is_a_user_error(tmp_path, head_nifti, capsys):
    (tmp_path / "nb").mkdir()
    code = main(["predict", str(head_nifti), "--model", str(tmp_path / "nb"), "--out", str(tmp_path / "o")])
    assert code == 2 and "not a model bundle" in capsys.readouterr().err


def test_bundle_create_from_medicalnet_and_info(tmp_path, capsys):
    ckpt = medicalnet_checkpoint(tmp_path / "resnet_10.pth", build_model("resnet10"))
    code = main(["bundle", "create", "--arch", "resnet10", "--pretrained", str(ckpt), "--out", str(tmp_path / "mn")])
    assert code == 0
    meta = json.loads((tmp_path / "mn" / "metadata.json").read_text())
    assert "MedicalNet" in meta["provenance"] and meta["training_data"]["trained"] is False
    assert main(["bundle", "info", str(tmp_path / "mn")]) == 0
    out = capsys.readouterr().out
    assert "UNTRAINED" in out and "SHA-256 verified" in out


def test_bundle_create_from_trained_weights(tmp_path, capsys):
    model = build_model("resnet10")
    torch.save(model.state_dict(), str(tmp_path / "trained.pt"))
    code = main(
        [
            "bundle",
            "create",
            "--weights",
            str(tmp_path / "trained.pt"),
            "--out",
            str(tmp_path / "tb"),
            "--training-data",
            "in-house cohort, 40 infants",
        ]
    )
    assert code == 0
    assert main(["bundle", "info", str(tmp_path / "tb"), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert meta["training_data"]["description"] == "in-house cohort, 40 infants"


def test_bundle_create_refuses_bad_weights(tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"w": _Exploit(marker)}, str(tmp_path / "evil.pt"))
    assert main(["bundle", "create", "--weights", str(tmp_path / "evil.pt"), "--out", str(tmp_path / "e")]) == 2
    assert "refused" in capsys.readouterr().err and not marker.exists() and not (tmp_path / "e").exists()
    torch.save([1, 2], str(tmp_path / "list.pt"))
    assert main(["bundle", "create", "--weights", str(tmp_path / "list.pt"), "--out", str(tmp_path / "l")]) == 2
    assert "not a state dict" in capsys.readouterr().err
    small = build_model("resnet10", widths=SMALL_WIDTHS)
    torch.save(small.state_dict(), str(tmp_path / "small.pt"))
    assert main(["bundle", "create", "--weights", str(tmp_path / "small.pt"), "--out", str(tmp_path / "s")]) == 2
    assert "wrong architecture" in capsys.readouterr().err
    state = build_model("resnet10").state_dict()
    state["fc.bias"][0] = float("nan")
    torch.save(state, str(tmp_path / "nan.pt"))
    assert main(["bundle", "create", "--weights", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "n")]) == 2
    assert "NaN or infinite" in capsys.readouterr().err and not (tmp_path / "n").exists()

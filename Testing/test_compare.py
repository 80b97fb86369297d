"""``gloresnet compare``: a real subprocess over two tiny real training runs (resnet10 + mrf_dsnet)."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from GloResNetLib.bundle import load_bundle
from GloResNetLib.cli import main
from GloResNetLib.models import build_model, count_parameters
from training_fixtures import (
    TINY_WIDTHS,
    make_volume,
    save_nifti,
    subprocess_env,
    tiny_cli_args,
    write_cohort,
)

METRICS = ("accuracy", "sensitivity", "specificity", "auc")


def tiny_runs(tmp_path_factory) -> dict:
    """Two tiny finished runs trained through the real CLI, made once per pytest session (shared by this
    module and test_models_lightweight.py through the session's base temporary folder):

    - ``r10``: resnet10 (tiny widths) from a tiny MedicalNet-layout checkpoint, on a plain cohort;
    - ``mrf``: mrf_dsnet (tiny widths) on a cohort marked as synthetic.
    """
    base = tmp_path_factory.getbasetemp() / "light_compare_runs"
    marker = base / "runs.json"
    if marker.is_file():
        doc = json.loads(marker.read_text())
        return {"r10": Path(doc["r10"]), "mrf": Path(doc["mrf"]), "rc": doc["rc"], "root": base}
    base.mkdir(exist_ok=True)
    plain = write_cohort(base / "plain", n_subjects=12)
    synthetic = write_cohort(base / "synthetic", n_subjects=12, seed=1, synthetic_marker=True)
    torch.manual_seed(5)
    donor = build_model("resnet10", widths=TINY_WIDTHS)
    ckpt = {"state_dict": {f"module.{k}": v for k, v in donor.state_dict().items() if not k.startswith("fc.")}}
    torch.save(ckpt, base / "resnet_10_tiny.pth")
    rc = {
        "r10": main(
            tiny_cli_args(
                plain,
                base / "r10",
                base / "cache",
                "--arch",
                "resnet10",
                "--pretrained",
                str(base / "resnet_10_tiny.pth"),
            )
        ),
        "mrf": main(tiny_cli_args(synthetic, base / "mrf", base / "cache", "--arch", "mrf_dsnet")),
    }
    marker.write_text(json.dumps({"r10": str(base / "r10"), "mrf": str(base / "mrf"), "rc": rc}))
    return {"r10": base / "r10", "mrf": base / "mrf", "rc": rc, "root": base}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tiny_runs(tmp_path_factory)
    assert out["rc"] == {"r10": 0, "mrf": 0}
    return out


def gloresnet(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "GloResNetLib", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=cwd,
        timeout=300,
    )


def flops_of(run_dir: Path) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    meta = json.loads((run_dir / "bundle" / "metadata.json").read_text())
    model = build_model(meta["arch"], meta["num_classes"], **meta["arch_params"]).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 1, *meta["preprocess"]["size"]))
    return float(counter.get_total_flops())


def test_csv_table_has_both_runs_with_exact_figures(runs, tmp_path):
    out = tmp_path / "table.csv"
    proc = gloresnet("compare", str(runs["r10"]), str(runs["mrf"]), "--out", str(out), "--no-timing")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    header = lines[0]
    for col in (
        "run",
        "architecture",
        "params",
        "GFLOPs",
        "accuracy",
        "sensitivity",
        "specificity",
        "AUC",
        "predict s",
        "data",
    ):
        assert col in header
    row_r10 = next(line for line in lines if line.startswith("r10 "))
    row_mrf = next(line for line in lines if line.startswith("mrf "))
    assert "resnet10 (widths=8,16,32,64)" in row_r10 and "resnet_10_tiny.pth" in row_r10
    assert "mrf_dsnet (widths=8,16,32,64)" in row_mrf and row_mrf.rstrip().endswith("synthetic")
    assert not row_r10.rstrip().endswith("synthetic")
    assert any(line.startswith("synthetic: trained on SYNTHETIC data") for line in lines)
    assert "multiply-add counts as 2 FLOPs" in proc.stdout
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO(out.read_text()))}
    assert set(rows) == {"r10", "mrf"} and not list(tmp_path.glob(".*tmp*"))
    for name in ("r10", "mrf"):
        row, run_dir = rows[name], runs[name]
        bundle = load_bundle(run_dir / "bundle")
        assert int(row["parameters"]) == count_parameters(bundle.models[0])
        assert f"{int(row['parameters']):,}" in (row_r10 if name == "r10" else row_mrf)
        assert int(row["flops"]) == flops_of(run_dir) and float(row["gflops"]) == pytest.approx(
            flops_of(run_dir) / 1e9, rel=1e-12
        )
        summary = json.loads((run_dir / "metrics.json").read_text())["summary"]
        for m in METRICS:
            for s in ("mean", "sd"):
                assert float(row[f"{m}_{s}"]) == summary[m][s], (name, m, s)
        assert row["folds"] == "3" and row["protocol"] == "honest" and row["input_size"] == "16x16x16"
        assert row["predict_s"] == "" and row["n_models"] == "3" and row["tta_views"] == "2"
    assert rows["r10"]["arch"] == "resnet10" and rows["mrf"]["arch"] == "mrf_dsnet"
    assert rows["r10"]["pretrained"] == "resnet_10_tiny.pth" and rows["mrf"]["pretrained"] == ""
    assert rows["r10"]["synthetic"] == "False" and rows["mrf"]["synthetic"] == "True"
    assert int(rows["mrf"]["parameters"]) < int(rows["r10"]["parameters"])
    # the mean ± sd strings of the printed table are metrics.json's values
    summary = json.loads((runs["mrf"] / "metrics.json").read_text())["summary"]
    assert f"{summary['auc']['mean']:.3f} ± {summary['auc']['sd']:.3f}" in row_mrf


def test_markdown_output(runs, tmp_path):
    out = tmp_path / "table.md"
    proc = gloresnet("compare", str(runs["mrf"]), str(runs["r10"]), "--out", str(out), "--no-timing")
    assert proc.returncode == 0, proc.stderr
    text = out.read_text().splitlines()
    assert text[0].startswith("| run | architecture | pretrained | params | GFLOPs |")
    assert set(text[1].replace(" ", "")) <= set("|-:")
    assert text[2].startswith("| mrf | mrf_dsnet") and text[3].startswith("| r10 | resnet10")
    assert text[2].rstrip().endswith("| synthetic |") and text[3].rstrip().endswith("| - |")
    assert text[4] == "" and all(line.startswith("- ") for line in text[5:])
    assert any("FlopCounterMode" in line for line in text[5:])


def test_json_output_with_predict_timing_on_a_synthetic_volume(runs, tmp_path):
    from GloResNetLib.synth import synth_volume

    out = tmp_path / "table.json"
    proc = gloresnet("compare", str(runs["r10"]), str(runs["mrf"]), "--out", str(out), "--repeats", "2")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(out.read_text())
    assert doc["timing"]["volume_shape"] == list(synth_volume(0)[0].shape)
    assert "synth_volume" in doc["timing"]["source"] and doc["timing"]["repeats"] == 2
    assert "multiply-add counts as 2 FLOPs" in doc["flop_convention"]
    by_name = {r["run"]: r for r in doc["runs"]}
    for name, r in by_name.items():
        assert len(r["predict_repeats_s"]) == 2 and r["predict_s"] == pytest.approx(np.median(r["predict_repeats_s"]))
        assert 0 < r["predict_s"] < 60
        assert r["flops"] == flops_of(runs[name])
        summary = json.loads((runs[name] / "metrics.json").read_text())["summary"]
        assert r["metrics"] == {m: {"mean": summary[m]["mean"], "sd": summary[m]["sd"]} for m in METRICS}
    assert by_name["mrf"]["synthetic"] is True and by_name["r10"]["synthetic"] is False
    shape = "x".join(str(s) for s in doc["timing"]["volume_shape"])
    assert f"on a {shape} volume" in proc.stdout


def test_predict_input_volume_and_in_process_timing(runs, tmp_path, capsys):
    vol = save_nifti(tmp_path / "vol.nii.gz", make_volume(np.random.default_rng(0), 1, shape=(20, 24, 18)))
    out = tmp_path / "t.json"
    assert main(["compare", str(runs["mrf"]), "--predict-input", str(vol), "--repeats", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["timing"]["volume_shape"] == [20, 24, 18] and doc["timing"]["source"] == str(vol)
    assert len(doc["runs"]) == 1 and doc["runs"][0]["predict_s"] > 0
    assert "20x24x18 volume" in capsys.readouterr().out


def test_bad_folders_give_one_line_and_exit_2(runs, tmp_path, capsys):
    plain = tmp_path / "not_a_run"
    plain.mkdir()
    proc = gloresnet("compare", str(runs["mrf"]), str(plain), "--no-timing")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == [
        f"gloresnet: error: {plain}: not a training run folder (no config.json)"
    ]
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((runs["mrf"] / "config.json").read_text())
    capsys.readouterr()
    assert main(["compare", str(unfinished), "--no-timing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(unfinished) in err[0] and "unfinished training run" in err[0]
    # --skip-bad: a warning per bad folder, the table of the others
    assert main(["compare", str(plain), str(runs["r10"]), str(unfinished), "--no-timing", "--skip-bad"]) == 0
    cap = capsys.readouterr()
    warnings = [line for line in cap.err.splitlines() if "warning" in line]
    assert len(warnings) == 2 and str(plain) in warnings[0] and str(unfinished) in warnings[1]
    body = cap.out.split("\n\n")[0].splitlines()[2:]
    assert [line.split()[0] for line in body] == ["r10"]
    # nothing left (after the warning), a wrong --out suffix, a missing folder: one error line, exit 2
    for args in (
        [str(plain), "--skip-bad"],
        [str(runs["r10"]), "--out", str(tmp_path / "t.xlsx")],
        [str(tmp_path / "missing")],
    ):
        assert main(["compare", *args, "--no-timing"]) == 2
        errors = [x for x in capsys.readouterr().err.splitlines() if x.startswith("gloresnet: error:")]
        assert len(errors) == 1


def test_pretraining_source_names_the_file_and_task():
    from GloResNetLib.compare import _pretraining_source

    age = {
        "format": "gloresnet-pretrained",
        "task": "brain-age regression (gloresnet pretrain-age; after AGE2HIE)",
        "file": "age_backbone.safetensors",
    }
    cfg = {"pretrained": "/data/w/age_backbone.safetensors"}
    assert _pretraining_source(cfg, {"pretrained": age}) == "age_backbone.safetensors (brain-age regression)"
    assert _pretraining_source({"pretrained": "/m/resnet_10.pth"}, {}) == "resnet_10.pth"
    assert _pretraining_source({"pretrained": None}, {}) is None

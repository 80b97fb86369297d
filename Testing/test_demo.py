"""``gloresnet demo --quick`` end to end in a real process (what CI runs as the main job's smoke test)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

from conftest import subprocess_env
from GloResNetLib.demo import SETTINGS, _read_rows, _remove_data, demo_cohort
from GloResNetLib.demo_report import QUICK_WARNING


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "GloResNetLib", "demo", "--quick", "--out", str(out), "--device", "cpu"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report:" in proc.stdout and "SYNTHETIC" in proc.stdout
    assert QUICK_WARNING in proc.stdout and QUICK_WARNING in proc.stderr  # at the start and in the summary
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["settings"] == "quick" and 0.0 <= summary["cv"]["auc"]["mean"] <= 1.0
    assert summary["warning"] == QUICK_WARNING and summary["kept_data"] is False
    assert summary["saliency"]["Grad-CAM"]["n_injured"] == summary["n_injured_heldout"]
    assert summary["pointing_game_method"] == "gradient"
    assert summary["pointing_game"] == summary["saliency"]["gradient"]["pointing_game"]
    for method, deletion in summary["faithfulness"].items():  # injured scans called BI, if any
        assert method in ("Grad-CAM", "gradient") and len(deletion["saliency_drop"]) == 3
        assert len(deletion["random_drop"]) == 3 and deletion["n_cases"] >= 1
    html = (out / "report.html").read_text()
    for needle in (
        "SYNTHETIC DATA",
        "not for clinical use",
        "cross-validation",
        "Pointing game",
        "Pointing game by the ensemble's call",
        QUICK_WARNING,
        "<th>seed</th><td>0</td>",
        "gloresnet-demo-quick-SYNTHETIC",
        "data:image/png;base64,",
    ):
        assert needle in html
    assert html.index("Saliency overlays") < html.index("<details>")
    # without --keep-data the synthetic volumes are gone; the held-out manifest and lesion masks stay
    assert not (out / "cohort").exists()
    kept = sorted(p.relative_to(out / "heldout").as_posix() for p in (out / "heldout").rglob("*") if p.is_file())
    rows = list(csv.DictReader(open(out / "heldout" / "manifest.csv")))
    assert kept == sorted(["manifest.csv"] + [r["mask_path"] for r in rows if r["mask_path"]])
    assert len(list((out / "predictions").glob("*_cam.nii.gz"))) == len(rows)
    assert len(list((out / "predictions").glob("*_gradient.nii.gz"))) == len(rows)
    meta = json.loads((out / "run" / "bundle" / "metadata.json").read_text())
    assert meta["training_data"]["synthetic"] is True and len(meta["weights"]) == 5
    # a second run into the same folder reuses the cohort and replaces the previous results
    marker = out / ".gloresnet-demo"
    assert marker.exists()
    refused = subprocess.run(
        [sys.executable, "-m", "GloResNetLib", "demo", "--quick", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    assert refused.returncode == 2 and "not made by 'gloresnet demo'" in refused.stderr


def test_remove_data_keeps_masks_and_a_rerun_regenerates(tmp_path):
    """--keep-data absent: the volumes go, the held-out masks stay, and the next run does not reuse the
    pruned folder (it would train on missing files)."""
    s = SETTINGS["quick"]
    held = demo_cohort(tmp_path / "heldout", 6, 1000, s)
    demo_cohort(tmp_path / "cohort", 4, 0, s)
    rows = _read_rows(held)
    masks = [r["mask_path"] for r in rows if r["mask_path"]]
    assert masks and all((tmp_path / "heldout" / r["path"]).exists() for r in rows)
    _remove_data(tmp_path)
    assert not (tmp_path / "cohort").exists()
    assert all(not (tmp_path / "heldout" / r["path"]).exists() for r in rows)
    assert all((tmp_path / "heldout" / m).exists() for m in masks) and held.exists()
    again = demo_cohort(tmp_path / "heldout", 6, 1000, s)
    assert all((tmp_path / "heldout" / r["path"]).exists() for r in _read_rows(again))


def test_demo_help_states_time_disk_and_keep_data():
    proc = subprocess.run(
        [sys.executable, "-m", "GloResNetLib", "demo", "--help"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=120,
    )
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0
    for needle in (
        "--keep-data",
        "417-436 s on a 2-core CPU",
        "537 MB",
        "~/.cache/gloresnet",
        "rm -r DIR ~/.cache/gloresnet",
        "figures mean nothing",
    ):
        assert needle in text, needle

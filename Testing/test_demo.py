"""``gloresnet demo --quick`` end to end in a real process (what CI runs as the main job's smoke test)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import subprocess_env


def test_demo_quick_end_to_end(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "GloResNetLib", "demo", "--quick", "--out", str(out),
                           "--device", "cpu"], capture_output=True, text=True, env=subprocess_env(), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "report:" in proc.stdout and "SYNTHETIC" in proc.stdout
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["settings"] == "quick" and 0.0 <= summary["cv"]["auc"]["mean"] <= 1.0
    html = (out / "report.html").read_text()
    for needle in ("SYNTHETIC DATA", "not for clinical use", "Cross-validation", "Pointing game",
                   "Pointing game by the ensemble's call",
                   "data:image/png;base64,"):
        assert needle in html
    meta = json.loads((out / "run" / "bundle" / "metadata.json").read_text())
    assert meta["training_data"]["synthetic"] is True and len(meta["weights"]) == 5
    # a second run into the same folder reuses the cohort and replaces the previous results
    marker = out / ".gloresnet-demo"
    assert marker.exists()
    refused = subprocess.run([sys.executable, "-m", "GloResNetLib", "demo", "--quick", "--out", str(tmp_path)],
                             capture_output=True, text=True, env=subprocess_env(), timeout=120)
    assert refused.returncode == 2 and "not made by 'gloresnet demo'" in refused.stderr

"""The demo's report: overlays chosen by lesion type and outcome, every saliency method side by side, the
held-out table collapsed after the saliency sections, header and explanations (real predictions, real files)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
from conftest import example_affine, make_head_volume
from GloResNetLib import load_bundle, predict
from GloResNetLib.demo import BANNER, SETTINGS
from GloResNetLib.demo_report import QUICK_WARNING, choose_overlays, saliency_summary, write_demo_report
from GloResNetLib.report import png_bytes
from GloResNetLib.saliency import score_saliency


def _records(small_bundle):
    """Six held-out records: pwml hit / miss, pwml+ivh hit, ivh miss, healthy called no BI / called BI."""
    r = predict(load_bundle(small_bundle), make_head_volume(), example_affine())
    peak = np.unravel_index(int(np.argmax(r.cam)), r.cam.shape)
    near, far = np.zeros(r.cam.shape, np.uint8), np.zeros(r.cam.shape, np.uint8)
    near[peak] = 1
    far[tuple(0 if p > s // 2 else s - 1 for p, s in zip(peak, r.cam.shape))] = 1
    hit, miss = score_saliency(r.cam, near, r.input_affine), score_saliency(r.cam, far, r.input_affine)
    assert hit.hit and not miss.hit
    reversed_map = r.cam_network[::-1].copy()  # a second "method" with another map
    rows = [
        ("a_pwml_hit", 1, "pwml", hit, 0.9),
        ("b_pwml_miss", 1, "pwml", miss, 0.4),
        ("c_mixed_hit", 1, "pwml+ivh", hit, 0.95),
        ("d_ivh_miss", 1, "ivh", miss, 0.3),
        ("e_healthy", 0, "", None, 0.2),
        ("f_false_positive", 0, "", None, 0.8),
    ]
    out = []
    for case, label, injuries, score, p in rows:
        result = dataclasses.replace(r, probability=p, label=int(p >= 0.5))
        out.append(
            {
                "case": case,
                "true_label": label,
                "result": result,
                "injuries": injuries,
                "lesion_network": None,
                "maps": {"Grad-CAM": r.cam_network, "occlusion": reversed_map},
                "scores": {} if score is None else {"Grad-CAM": score, "occlusion": miss},
            }
        )
    return out


def test_overlays_show_a_hit_and_a_miss_of_each_lesion_type(small_bundle):
    chosen = choose_overlays(_records(small_bundle), "Grad-CAM")
    assert [(tag, h["case"]) for tag, h in chosen] == [
        ("ivh: hit", "c_mixed_hit"),
        ("ivh: miss", "d_ivh_miss"),
        ("pwml: hit", "a_pwml_hit"),
        ("pwml: miss", "b_pwml_miss"),
        ("healthy: false positive", "f_false_positive"),
        ("healthy: called no BI", "e_healthy"),
    ]


def test_demo_report_layout(tmp_path, small_bundle):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "learning_curves.png").write_bytes(png_bytes(plt.figure(figsize=(4, 2))))
    metrics = {"summary": {"auc": {"mean": 0.9, "sd": 0.05, "best": 0.97}}, "pooled": {"auc": 0.91}}
    records = _records(small_bundle)
    path = write_demo_report(
        tmp_path,
        SETTINGS["quick"],
        "quick",
        7,
        run_dir,
        metrics,
        records,
        {"total": 3.0},
        "demo-bundle-SYNTHETIC",
        BANNER,
    )
    text = path.read_text()
    assert QUICK_WARNING in text and "<th>seed</th><td>7</td>" in text and "demo-bundle-SYNTHETIC" in text
    assert "<th>GloResNet library</th>" in text and "<th>date</th>" in text
    order = [
        text.index(s)
        for s in ("Summary:", "Learning curves", "Saliency check", "Saliency overlays", "<details>", "Run time")
    ]
    assert order == sorted(order)  # the 6-row table comes collapsed, after the saliency sections
    assert 'alt="learning_curves" width="1100"' in text
    for line in ("TTA spread:", "Pooled out-of-fold:", "Peak to lesion:"):
        assert line in text
    saliency = text[text.index("Saliency check") : text.index("Saliency overlays")]
    assert re.search(r"<td>Grad-CAM</td><td>0\.50</td>", saliency) and "<td>occlusion</td><td>0.00</td>" in saliency
    assert (
        "Pointing game by the ensemble's call (occlusion): 0/2 hits among injured cases the ensemble "
        "called BI; 0/2 hits among injured cases the ensemble called no BI." in saliency
    )
    assert "<th>ivh</th><th>pwml</th>" in saliency and "<td>1/2</td><td>2/3</td>" in saliency  # by lesion type
    overlays = text[text.index("Saliency overlays") : text.index("<details>")]
    assert overlays.count("<img") == 6 and 'alt="pwml: miss b_pwml_miss"' in overlays
    table = text[text.index("<details>") :]
    assert "pointing game (occlusion)" in table and "pointing game (Grad-CAM)" in table
    cpu = write_demo_report(
        tmp_path, SETTINGS["cpu"], "cpu", 0, run_dir, metrics, records[4:5], {"total": 3.0}, "b", BANNER
    ).read_text()
    assert QUICK_WARNING not in cpu


def test_saliency_summary_per_method(small_bundle):
    summary = saliency_summary(_records(small_bundle))
    assert list(summary) == ["Grad-CAM", "occlusion"]
    g = summary["Grad-CAM"]
    assert (g["hits"], g["n_injured"], g["pointing_game"]) == (2, 4, 0.5)
    assert g["by_lesion_type"] == {"pwml": {"hits": 2, "n": 3}, "ivh": {"hits": 1, "n": 2}}
    assert summary["occlusion"]["hits"] == 0 and summary["occlusion"]["pointing_game_95ci"][0] == 0.0

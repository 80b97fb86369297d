"""Pointing game / CAM energy figures and the HTML report's overlays."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import example_affine, make_head_volume
from GloResNetLib import load_bundle, predict
from GloResNetLib.report import img_tag, overlay_png, write_html
from GloResNetLib.saliency import dilate_mm, pointing_game, pointing_game_interval, score_saliency


def test_pointing_game_uses_millimetres():
    mask = np.zeros((40, 40, 20), np.uint8)
    mask[10:12, 10:12, 10] = 1
    affine = np.diag([0.5, 0.5, 2.0, 1.0])
    cam = np.zeros(mask.shape)
    cam[17, 11, 10] = 1.0  # 6 voxels = 3 mm from the lesion along x: a hit at 5 mm
    assert score_saliency(cam, mask, affine).hit
    cam[:] = 0
    cam[11, 11, 14] = 1.0  # 4 slices = 8 mm along z: a miss
    s = score_saliency(cam, mask, affine)
    assert not s.hit and s.peak_distance_mm == pytest.approx(8.0)
    assert pointing_game([score_saliency(cam, mask, affine), s]) == 0.0
    assert dilate_mm(mask, affine, 1.0).sum() > mask.sum()


def test_pointing_game_interval_is_wilson():
    mask = np.zeros((8, 8, 8), np.uint8)
    mask[2, 2, 2] = 1
    cam_hit, cam_miss = np.zeros(mask.shape), np.zeros(mask.shape)
    cam_hit[2, 2, 2] = cam_miss[7, 7, 7] = 1.0
    hit, miss = score_saliency(cam_hit, mask, np.eye(4)), score_saliency(cam_miss, mask, np.eye(4))
    low, high = pointing_game_interval([hit] * 15 + [miss] * 10)  # 15/25, worked by hand: 0.407-0.766
    assert low == pytest.approx(0.4074, abs=1e-3) and high == pytest.approx(0.7660, abs=1e-3)
    assert pointing_game_interval([hit] * 4)[1] == pytest.approx(1.0) and pointing_game_interval([hit])[0] > 0
    assert all(np.isnan(pointing_game_interval([])))


def test_energy_figures():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[:5] = 1
    cam = np.zeros(mask.shape)
    cam[:5] = 1.0
    cam[5:] = 0.25
    s = score_saliency(cam, mask, np.eye(4))
    assert s.mean_inside == 1.0 and s.mean_outside == 0.25 and s.energy_ratio == 4.0
    assert s.energy_fraction_inside == pytest.approx(0.8) and s.volume_fraction_inside == 0.5
    with pytest.raises(ValueError, match="empty lesion mask"):
        score_saliency(cam, np.zeros_like(mask), np.eye(4))


def test_overlay_png_and_html_report(tmp_path, small_bundle):
    vol = make_head_volume()
    r = predict(load_bundle(small_bundle), vol, example_affine())
    lesion = np.zeros((64, 64, 64), np.float32)
    lesion[20:26, 30:36, 28:34] = 1
    png = overlay_png(r, lesion, "case - SYNTHETIC")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    path = write_html(tmp_path / "r.html", "Report", [("Overlay", img_tag(png, "overlay"))],
                      banner="SYNTHETIC DATA - not for clinical use")
    text = path.read_text()
    assert text.count("SYNTHETIC DATA - not for clinical use") == 2 and "data:image/png;base64," in text

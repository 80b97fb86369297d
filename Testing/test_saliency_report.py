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
    path = write_html(
        tmp_path / "r.html",
        "Report",
        [("Overlay", img_tag(png, "overlay"))],
        banner="SYNTHETIC DATA - not for clinical use",
    )
    text = path.read_text()
    assert text.count("SYNTHETIC DATA - not for clinical use") == 2 and "data:image/png;base64," in text


def _png_size(png: bytes) -> tuple[int, int]:
    import struct

    return struct.unpack(">II", png[16:24])  # IHDR width, height


def test_saliency_png_one_row_and_colour_bar_per_method(small_bundle):
    from GloResNetLib.report import saliency_png

    r = predict(load_bundle(small_bundle), make_head_volume(), example_affine())
    lesion = np.zeros(r.resampled.shape, np.float32)
    lesion[20:26, 30:36, 28:34] = 1
    cam = r.cam_network
    one = saliency_png(r.resampled, r.resampled_affine, {"Grad-CAM": cam}, lesion, "one - SYNTHETIC")
    two = saliency_png(r.resampled, r.resampled_affine, {"Grad-CAM": cam, "occlusion": cam[::-1].copy()}, lesion)
    bare = saliency_png(r.resampled, r.resampled_affine, {"Grad-CAM": None}, lesion)
    missed = saliency_png(r.resampled, r.resampled_affine, {"Grad-CAM": cam}, lesion, lesion_row=True)
    (w1, h1), (w2, h2), (wb, _), (_, hm) = map(_png_size, (one, two, bare, missed))
    assert 1.6 < h2 / h1 < 2.3 and 1.6 < hm / h1 < 2.3  # a row per method; a row through the lesion centre
    assert w1 > wb + 40  # the colour bar (absent without a map)


def test_orthogonal_planes_and_montage():
    from GloResNetLib.report import montage_png, orthogonal_planes

    vol = np.zeros((10, 12, 14), np.float32)
    vol[7, 3, 11] = 1.0
    axial, coronal, sagittal = orthogonal_planes(vol, (7, 3, 11))
    assert axial.shape == (12, 10) and coronal.shape == (14, 10) and sagittal.shape == (14, 12)
    assert axial[3, 7] == coronal[11, 7] == sagittal[11, 3] == 1.0  # rows: A (axial) or S, columns: R or A
    planes = orthogonal_planes(make_head_volume())
    examples = [(f"{age} w SYNTHETIC", planes, [p > 500 for p in planes]) for age in (30, 35, 40)]
    png3, png1 = montage_png(examples, columns=2), montage_png(examples[:1], columns=2)
    (w3, h3), (w1, h1) = _png_size(png3), _png_size(png1)
    assert h3 > 1.6 * h1 and w3 > 1.6 * w1  # 2 rows x 2 examples against 1 x 1
    with pytest.raises(ValueError, match="3 planes"):
        montage_png([("two planes", planes[:2])])


def test_html_header_warning_and_details(tmp_path):
    from GloResNetLib.report import details_html, explain_html

    body = details_html("160 scans: click", "<table><tr><td>row</td></tr></table>") + explain_html("tta_spread")
    path = write_html(
        tmp_path / "r.html",
        "Report",
        [("Cases", body)],
        banner="SYNTHETIC DATA",
        header=[("date", "2026-11-27"), ("seed", 3)],
        warning="QUICK: figures mean nothing",
    )
    text = path.read_text()
    assert "<details><summary>160 scans: click</summary>" in text and "TTA spread:" in text
    assert "<th>seed</th><td>3</td>" in text and text.index("QUICK: figures") < text.index("<h2>Cases")

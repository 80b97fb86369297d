"""Gradient saliency: the ensemble's input gradient (as MONAI's VanillaGrad gives it), its maps on the input grid,
the method choice of ``predict`` and the CLI's NAME_gradient.nii.gz."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import example_affine, make_small_model, save_nifti, subprocess_env
from GloResNetLib.gradient_saliency import gradient_saliency
from GloResNetLib.inference import predict, saliency_set
from test_occlusion import LESION_CENTRE, _head_image, lesion_volume, oblique_lesion_case


def test_map_is_the_magnitude_of_the_mean_logit_gradient():
    models = [make_small_model(k, cam_layer="layer1").eval() for k in (0, 1)]
    image = _head_image(20)
    ours = gradient_saliency(models, image, class_idx=1, sigma=0.0)
    x = image[None, None].clone().requires_grad_(True)
    torch.stack([m(x)[0, 1] for m in models]).mean().backward()
    ref = x.grad[0, 0].abs().numpy()
    np.testing.assert_allclose(ours, ref / ref.max(), atol=1e-5)
    assert ours.max() == pytest.approx(1.0) and ours.dtype == np.float32
    smooth = gradient_saliency(models, image, class_idx=1)
    assert smooth.shape == image.shape and smooth.max() == pytest.approx(1.0)
    assert np.corrcoef(smooth.ravel(), ours.ravel())[0, 1] < 0.999  # smoothing changed the map
    assert not models[0].training  # the models stay in eval mode


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIL"])
def test_gradient_map_points_at_the_lesion_on_the_input_grid(codes):
    bundle, array, stored_affine, affine = oblique_lesion_case(codes)
    result = predict(bundle, array, stored_affine, tta=False, saliency="gradient")
    assert result.cam is None and result.occlusion is None and result.gradient.shape == array.shape
    assert np.isfinite(result.gradient).all() and "gradient" in result.timings
    centre = (affine @ np.array([*LESION_CENTRE, 1.0]))[:3]
    peak = np.array(result.gradient_peak_ras())
    voxel = np.max(np.linalg.norm(result.resampled_affine[:3, :3], axis=0))
    assert np.linalg.norm(peak - centre) < 2.5 * voxel, (peak, centre)
    assert result.to_json_dict()["gradient_peak_ras"] == pytest.approx(list(peak))


def test_saliency_names():
    assert saliency_set("all") == ("gradcam", "gradient", "occlusion")
    assert saliency_set("both") == ("gradcam", "occlusion")
    assert saliency_set("gradient, gradcam") == ("gradcam", "gradient")
    with pytest.raises(ValueError, match="saliency"):
        saliency_set("gradcam,lime")


def test_cli_writes_the_gradient_map_on_the_input_grid(tmp_path, small_bundle):
    vol, _ = lesion_volume()
    src = save_nifti(tmp_path / "case.nii.gz", vol, example_affine())
    base = [
        sys.executable,
        "-m",
        "GloResNetLib",
        "predict",
        str(src),
        "--model",
        str(small_bundle),
        "--device",
        "cpu",
        "--no-tta",
    ]
    out = subprocess.run(
        [*base, "--out", str(tmp_path / "o"), "--saliency", "gradcam,gradient", "--json"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    (record,) = [r for r in map(json.loads, out.stdout.strip().splitlines()) if "event" not in r]
    ref = nib.load(str(src))
    for key in ("cam", "gradient"):
        img = nib.load(record["outputs"][key])
        assert Path(record["outputs"][key]).name == f"case_{key}.nii.gz"
        assert img.shape == ref.shape and np.isfinite(img.get_fdata()).all()
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        assert len(record[f"{key}_peak_ras"]) == 3
    assert "occlusion" not in record["outputs"] and record["occlusion_peak_ras"] is None
    bad = subprocess.run(
        [*base, "--out", str(tmp_path / "b"), "--saliency", "gradient,lime"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "lime" in bad.stderr
    assert not (tmp_path / "b").exists()

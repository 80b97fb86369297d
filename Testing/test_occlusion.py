"""Occlusion sensitivity (equal to MONAI's), its maps on the input grid, the CLI option, and the deletion test."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel as nib
import nibabel.orientations as nio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import example_affine, make_head_volume, make_small_model, save_nifti, subprocess_env
from GloResNetLib.bundle import Bundle, default_metadata
from GloResNetLib.faithfulness import deletion_test, ensemble_probability
from GloResNetLib.inference import predict
from GloResNetLib.occlusion import OcclusionConfig, head_region, occlusion_sensitivity
from GloResNetLib.preprocessing import PreprocessConfig, preprocess
from torch import nn

LESION_CENTRE = (26, 14, 22)  # voxel of the bright lesion in the (40, 48, 36) head volume
LESION_RADIUS = 3.0


def _monai_map(model, image, mask, overlap, mode, b_box=None) -> np.ndarray:
    from monai.visualize import OcclusionSensitivity

    # MONAI activates with a sigmoid when the *input* has one channel, whatever the model's outputs: pass the
    # softmax explicitly (what our map follows)
    occ = OcclusionSensitivity(
        model,
        mask_size=mask,
        n_batch=16,
        verbose=False,
        mode=mode,
        overlap=overlap,
        activate=lambda out: out.softmax(1),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI 1.6 indexes with lists (a torch deprecation warning)
        out, _ = occ(image[None, None], b_box=b_box)
    return out[0, 1].numpy()


def _head_image(size: int = 24) -> torch.Tensor:
    vol = torch.from_numpy(make_head_volume((size, size, size), seed=3))[None, None]
    return ((vol - vol.mean()) / vol.std())[0, 0]


@pytest.mark.parametrize("mask,overlap,fill,cam_layer", [(6, 0.5, "mean_img", "layer4"), (5, 0.4, 0.7, "layer1")])
def test_occlusion_equals_monai_on_a_small_resnet(mask, overlap, fill, cam_layer):
    model = make_small_model(0, cam_layer=cam_layer)  # layer1: the demo's Grad-CAM layer, stages after it
    image = _head_image(20)
    ours = occlusion_sensitivity(
        [model], image, OcclusionConfig(mask_size=mask, overlap=overlap, fill=fill, head_box=False, batch=5)
    )
    ref = _monai_map(model, image, mask, overlap, fill)
    assert ours.occluded.shape == ref.shape == (20, 20, 20) and ours.windows == 216
    np.testing.assert_allclose(ours.occluded, ref, atol=2e-5)
    assert np.corrcoef(ours.occluded.ravel(), ref.ravel())[0, 1] > 0.999
    with torch.no_grad():
        base = float(torch.softmax(model(image[None, None]), 1)[0, 1])
    np.testing.assert_allclose(ours.drop, base - ref, atol=2e-5)


def test_occlusion_equals_monai_on_a_mil_lesion_head_model():
    """The demo's CPU model kind: the BI logit is the soft maximum of a lesion map on layer1's grid."""
    from GloResNetLib import fastnet
    from GloResNetLib.models import build_model

    torch.manual_seed(4)
    model = build_model("resnet10", widths=[4, 8, 8, 8], cam_layer="layer1", lesion_head="mil")
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 20, 20, 20))
    model.eval()
    image = _head_image(20)
    assert fastnet.prepared(model, image.device) is not None  # a folded copy up to layer1 builds (the fast path)
    ours = occlusion_sensitivity([model], image, OcclusionConfig(mask_size=6, overlap=0.5, fill=0.3, head_box=False))
    ref = _monai_map(model, image, 6, 0.5, 0.3)
    np.testing.assert_allclose(ours.occluded, ref, atol=2e-5)
    assert float(np.ptp(ref)) > 1e-4  # hiding regions changes this model's output: the comparison means something


def test_occlusion_in_the_head_box_equals_monai_with_b_box():
    model = make_small_model(1)
    image = F.pad(_head_image(20), (2, 2, 3, 1, 0, 4), value=float(_head_image(20).min()))  # air on some sides
    mask = 6
    ours = occlusion_sensitivity([model], image, OcclusionConfig(mask_size=mask, overlap=0.5, fill="mean_img"))
    region = head_region(image, (mask - 1) // 2)
    inner = head_region(image, 0)
    assert region != tuple((0, n) for n in image.shape)  # the box test is not the whole-image test
    # MONAI widens b_box by half a box on each side; given the head's exclusive ends as b_box maxima its boxes
    # cover the same region as ours, and it returns the map cropped to b_box
    b_box = [v for a, b in inner for v in (a, b)]
    ref = _monai_map(model, image, mask, 0.5, "mean_img", b_box=b_box)
    crop = tuple(slice(a, b) for a, b in inner)
    np.testing.assert_allclose(ours.occluded[crop], ref[tuple(slice(0, b - a) for a, b in inner)], atol=2e-5)


def test_ensemble_map_is_the_mean_of_the_models_maps():
    models = [make_small_model(k) for k in (2, 3)]
    image = _head_image(20)
    cfg = OcclusionConfig(mask_size=8, overlap=0.5, head_box=False)
    both = occlusion_sensitivity(models, image, cfg)
    singles = [occlusion_sensitivity([m], image, cfg) for m in models]
    np.testing.assert_allclose(both.drop, (singles[0].drop + singles[1].drop) / 2, atol=1e-6)
    assert both.windows == singles[0].windows and not np.allclose(singles[0].drop, singles[1].drop)


# ------------------------------------------------------------------------------------------ a lesion model


class BrightLesionModel(nn.Module):
    """A constructed classifier that uses the lesion: the BI logit rises with the brightest 3^3 neighbourhood
    (``features``: local means; ``pool_features``: their maximum; ``head``: logits), so hiding a bright lesion
    lowers P(BI) and hiding anything else barely does."""

    def __init__(self, level: float, scale: float) -> None:
        super().__init__()
        self.level, self.scale = level, scale

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(x, 3, stride=1, padding=1)

    def pool_features(self, feats: torch.Tensor) -> torch.Tensor:
        return feats.amax(dim=(2, 3, 4))

    def head(self, pooled: torch.Tensor) -> torch.Tensor:
        logit = self.scale * (pooled - self.level)
        return torch.cat([-logit / 2, logit / 2], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool_features(self.features(x)))


def lesion_volume() -> tuple[np.ndarray, np.ndarray]:
    """Head volume (40, 48, 36) with a bright spherical lesion; returns it and the lesion mask."""
    vol = make_head_volume(lesion=False)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in vol.shape], indexing="ij"))
    lesion = np.sqrt(((grid - np.array(LESION_CENTRE)[:, None, None, None]) ** 2).sum(0)) <= LESION_RADIUS
    vol[lesion] = 1500.0
    return vol, lesion


def lesion_model(vol: np.ndarray, lesion: np.ndarray, config: PreprocessConfig) -> BrightLesionModel:
    """The model's threshold halfway between the brightest non-lesion neighbourhood and the lesion's."""
    pre = preprocess(vol, np.eye(4), config)
    local = F.avg_pool3d(torch.from_numpy(pre.array)[None, None], 3, stride=1, padding=1)[0, 0].numpy()
    from GloResNetLib.preprocessing import to_network_grid

    near = to_network_grid(lesion.astype(np.float32), np.eye(4), config) > 0.01
    hi, lo = float(local[near].max()), float(local[~near].max())
    assert hi > lo + 0.5
    return BrightLesionModel(level=(hi + lo) / 2, scale=8.0 / (hi - lo)).eval()


def _bundle(models, config: PreprocessConfig) -> Bundle:
    meta = default_metadata(
        "lesion-test",
        preprocess=config,
        training_data={"description": "constructed", "synthetic": True, "trained": True},
    )
    return Bundle(path=Path("constructed"), metadata=meta, models=models)


def _stored(vol: np.ndarray, affine: np.ndarray, codes: str) -> tuple[np.ndarray, np.ndarray]:
    """The same image stored with other axis codes (permuted and flipped), world geometry unchanged."""
    ornt = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(codes))
    return nio.apply_orientation(vol, ornt), affine @ nio.inv_ornt_aff(ornt, vol.shape)


def oblique_lesion_case(codes: str) -> tuple[Bundle, np.ndarray, np.ndarray, np.ndarray]:
    """A bundle whose model detects the bright lesion, the lesion volume stored with axis ``codes`` on an oblique
    (7 degrees), anisotropic (0.9, 0.8, 1.3 mm) grid: (bundle, stored array, its affine, the world affine)."""
    config = PreprocessConfig(size=(32, 32, 32))
    vol, lesion = lesion_volume()
    bundle = _bundle([lesion_model(vol, lesion, config)], config)
    affine = example_affine()
    array, stored_affine = _stored(vol, affine, codes)
    return bundle, array, stored_affine, affine


@pytest.mark.parametrize("codes", ["RAS", "LPS", "PIL"])
def test_occlusion_map_on_the_input_grid_of_oblique_anisotropic_inputs(codes):
    bundle, array, stored_affine, affine = oblique_lesion_case(codes)
    result = predict(
        bundle,
        array,
        stored_affine,
        tta=False,
        saliency="occlusion",
        occlusion=OcclusionConfig(mask_size=6, overlap=0.5),
    )
    assert result.cam is None and result.occlusion.shape == array.shape
    assert np.isfinite(result.occlusion).all() and result.occlusion.max() > 0.3
    centre = (affine @ np.array([*LESION_CENTRE, 1.0]))[:3]
    peak = np.array(result.occlusion_peak_ras())
    step_mm = 3 * np.max(np.linalg.norm(result.resampled_affine[:3, :3], axis=0))  # a box step on the grid
    assert np.linalg.norm(peak - centre) < step_mm, (peak, centre)
    # the same peak on the network grid, through the network grid's own affine
    net = result.occlusion_network
    ijk = np.argwhere(net >= 0.98 * net.max()).mean(0)
    net_peak = (result.resampled_affine @ np.array([*ijk, 1.0]))[:3]
    assert np.linalg.norm(peak - net_peak) < 2.0
    record = result.to_json_dict()
    assert record["occlusion_peak_ras"] == pytest.approx(list(peak)) and record["cam_peak_ras"] is None


def test_predict_both_maps_and_saliency_choice(head_nifti, small_bundle):
    from GloResNetLib.bundle import load_bundle
    from GloResNetLib.inference import predict_file

    bundle = load_bundle(small_bundle, device="cpu")
    both = predict_file(
        bundle, head_nifti, tta=False, saliency="both", occlusion=OcclusionConfig(mask_size=16, overlap=0.0)
    )
    cam_only = predict_file(bundle, head_nifti, tta=False)
    assert both.cam.shape == both.occlusion.shape == nib.load(str(head_nifti)).shape
    np.testing.assert_allclose(both.cam, cam_only.cam, atol=1e-6)
    assert cam_only.occlusion is None and both.probability == pytest.approx(cam_only.probability, abs=1e-6)
    assert "occlusion" in both.timings
    with pytest.raises(ValueError, match="saliency"):
        predict_file(bundle, head_nifti, saliency="lime")


# ------------------------------------------------------------------------------------------------ CLI


def test_cli_writes_occlusion_and_cam_with_peaks_and_progress(tmp_path, small_bundle):
    vol, _ = lesion_volume()
    src = save_nifti(tmp_path / "case.nii.gz", vol, example_affine())
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "GloResNetLib",
            "predict",
            str(src),
            "--model",
            str(small_bundle),
            "--out",
            str(tmp_path / "o"),
            "--device",
            "cpu",
            "--no-tta",
            "--saliency",
            "both",
            "--occlusion-mask",
            "16",
            "--occlusion-overlap",
            "0",
            "--json",
            "--progress-json",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.strip().splitlines()]
    (record,) = [line for line in lines if "event" not in line]  # the events share stdout with the record
    ref = nib.load(str(src))
    for key in ("cam", "occlusion"):
        img = nib.load(record["outputs"][key])
        assert Path(record["outputs"][key]).name == f"case_{key}.nii.gz"
        assert img.shape == ref.shape and np.isfinite(img.get_fdata()).all()
        np.testing.assert_allclose(img.affine, ref.affine, atol=1e-5)
        peak = record[f"{key}_peak_ras"]
        assert peak is None or (len(peak) == 3 and np.isfinite(peak).all())
    assert record["cam_peak_ras"] is not None and "occlusion" in record["timings_s"]
    occ = [e for e in lines if str(e.get("stage", "")).startswith("occlusion")]
    assert occ and occ[-1]["done"] == occ[-1]["copies"] and all(0 <= e["fraction"] <= 1 for e in occ)


def test_cli_default_is_gradcam_and_bad_occlusion_options_exit_2(tmp_path, small_bundle, head_nifti):
    base = [
        sys.executable,
        "-m",
        "GloResNetLib",
        "predict",
        str(head_nifti),
        "--model",
        str(small_bundle),
        "--device",
        "cpu",
        "--no-tta",
    ]
    out = subprocess.run(
        [*base, "--out", str(tmp_path / "a")], capture_output=True, text=True, env=subprocess_env(), timeout=300
    )
    assert out.returncode == 0, out.stderr
    names = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert names == ["case01.json", "case01_cam.nii.gz", "case01_resampled.nii.gz"]
    for bad in (["--occlusion-overlap", "1.5"], ["--occlusion-mask", "0"], ["--saliency", "lime"]):
        out = subprocess.run(
            [*base, "--out", str(tmp_path / "b"), "--saliency", "occlusion", *bad],
            capture_output=True,
            text=True,
            env=subprocess_env(),
            timeout=300,
        )
        assert out.returncode == 2 and "Traceback" not in out.stderr and not (tmp_path / "b").exists()


# ------------------------------------------------------------------------------------------- deletion test


def test_deletion_score_of_the_lesion_beats_random_regions():
    config = PreprocessConfig(size=(32, 32, 32))
    vol, lesion = lesion_volume()
    model = lesion_model(vol, lesion, config)
    pre = preprocess(vol, np.eye(4), config)
    from GloResNetLib.preprocessing import to_network_grid

    lesion_net = to_network_grid(lesion.astype(np.float32), np.eye(4), config)
    result = deletion_test(ensemble_probability([model]), pre.array, lesion_net, n_random=4, seed=1)
    assert result.fractions == [0.01, 0.02, 0.05] and len(result.random_drops[0]) == 4
    assert result.base_probability > 0.9
    assert min(result.saliency_drops) > 0.5 and max(result.random_mean) < 0.2
    assert all(s > r for s, r in zip(result.saliency_drops, result.random_mean)) and result.score > 0.4
    # a map pointing away from the lesion scores like chance
    away = np.zeros_like(lesion_net)
    away[:8, :8, :8] = 1.0
    assert deletion_test(ensemble_probability([model]), pre.array, away, n_random=2).score < 0.2
    assert json.dumps(result.to_dict())


def test_deletion_refuses_mismatched_maps():
    with pytest.raises(ValueError, match="shape"):
        deletion_test(lambda b: torch.zeros(len(b)), np.zeros((8, 8, 8)), np.zeros((4, 4, 4)))

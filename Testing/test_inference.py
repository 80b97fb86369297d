"""Prediction with TTA, ensembles, and Grad-CAM from the prediction pass (checked against MONAI)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import example_affine, make_head_volume
from GloResNetLib import load_bundle, predict
from GloResNetLib.errors import BundleError
from GloResNetLib.inference import tta_views
from GloResNetLib.models import build_model
from test_preprocessing import flip_axis


@pytest.fixture(scope="module")
def bundle(small_bundle):
    return load_bundle(small_bundle)


def test_result_fields_and_shapes(bundle):
    vol, aff = make_head_volume(), example_affine()
    r = predict(bundle, vol, aff)
    assert 0.0 <= r.probability <= 1.0
    assert r.label == int(r.probability >= r.threshold) and r.label_name in ("no BI", "BI")
    assert list(r.view_probabilities) == ["identity", "flip_x"]
    assert r.probability == pytest.approx(np.mean(list(r.view_probabilities.values())), abs=1e-6)
    assert r.spread == pytest.approx(abs(r.view_probabilities["identity"] - r.view_probabilities["flip_x"]))
    assert r.cam.shape == vol.shape and r.cam.dtype == np.float32
    assert r.cam_network.shape == (64, 64, 64) and r.resampled.shape == (64, 64, 64)
    assert 0.0 <= r.cam.min() and r.cam.max() <= 1.0 + 1e-6
    assert r.resampled_affine.shape == (4, 4) and r.is_synthetic
    d = r.to_json_dict()
    assert d["synthetic_model"] and "not for clinical" in d["disclaimer"] and len(d["cam_peak_ras"]) == 3
    assert set(r.timings) == {"preprocess", "network", "cam"}


def test_tta_options(bundle):
    vol, aff = make_head_volume(), example_affine()
    assert list(predict(bundle, vol, aff, tta=False, cam=False).view_probabilities) == ["identity"]
    eight = predict(bundle, vol, aff, tta_axes=[0, 1, 2], cam=False)
    assert len(eight.view_probabilities) == 8 and len(tta_views([0, 1, 2])) == 8
    assert predict(bundle, vol, aff, tta=False, cam=False).spread == 0.0


def test_flip_view_equals_prediction_of_mirrored_anatomy(bundle):
    """The left-right TTA view is the prediction for the mirrored head (RAS x axis)."""
    vol = make_head_volume()
    aff = np.diag([0.9, 0.8, 1.3, 1.0])  # RAS storage: array axis 0 is left-right
    r = predict(bundle, vol, aff, cam=False)
    mirrored = predict(bundle, np.flip(vol, 0).copy(), aff, tta=False, cam=False)
    assert r.view_probabilities["flip_x"] == pytest.approx(mirrored.probability, abs=1e-5)


def test_orientation_does_not_change_prediction_or_saliency_location(bundle):
    vol, aff = make_head_volume(), example_affine()
    ref = predict(bundle, vol, aff)
    v, a = flip_axis(*flip_axis(vol, aff, 0), 1)  # LPS storage of the same anatomy
    other = predict(bundle, v, a)
    assert other.probability == pytest.approx(ref.probability, abs=1e-5)
    np.testing.assert_allclose(np.flip(other.cam, (0, 1)), ref.cam, atol=1e-5)
    np.testing.assert_allclose(other.cam_peak_ras(), ref.cam_peak_ras(), atol=1e-6)


def test_gradcam_agrees_with_monai(bundle):
    from monai.visualize import GradCAM

    vol, aff = make_head_volume(seed=3), example_affine()
    r = predict(bundle, vol, aff, tta=False)
    model = bundle.models[0]
    x = torch.from_numpy(r.resampled)[None, None]
    # MONAI's default postprocessing inverts the map: compare raw maps
    cam = GradCAM(nn_module=model, target_layers="layer4", postprocessing=lambda m: m)
    ref = cam(x, class_idx=1)[0, 0].detach().numpy()
    assert ref.shape == r.cam_network.shape
    assert np.corrcoef(ref.ravel(), r.cam_network.ravel())[0, 1] >= 0.99


def test_cam_on_input_grid_matches_network_grid_through_affines(bundle):
    vol, aff = make_head_volume(seed=5), example_affine()
    r = predict(bundle, vol, aff, tta=False)
    # sample the 128^3-grid CAM at the world position of each input voxel (nearest), compare
    ijk = np.stack(np.meshgrid(*[np.arange(0, s, 3) for s in vol.shape], indexing="ij"), -1).reshape(-1, 3)
    world = np.c_[ijk, np.ones(len(ijk))] @ aff.T
    net = np.rint(world @ np.linalg.inv(r.resampled_affine).T)[:, :3].astype(int)
    inside = np.all((net >= 0) & (net < 64), axis=1)
    a = r.cam[tuple(ijk[inside].T)]
    b = r.cam_network[tuple(net[inside].T)]
    assert np.corrcoef(a, b)[0, 1] > 0.95


def test_ensemble_averages_its_models(ensemble_bundle):
    bundle = load_bundle(ensemble_bundle)
    vol, aff = make_head_volume(), example_affine()
    r = predict(bundle, vol, aff, cam=False)
    assert len(r.model_probabilities) == 3
    assert r.probability == pytest.approx(np.mean(r.model_probabilities), abs=1e-6)


def test_ensemble_gradcam_is_the_mean_of_the_members_raw_maps(tmp_path):
    """The ensemble's Grad-CAM is that of the members' mean BI logit: a member with ten times the evidence
    (BI weights x10) dominates it, where scaling each member's map to max 1 first would weigh them equally."""
    from conftest import make_bundle, make_small_model
    from monai.visualize import GradCAM

    weak, strong = make_small_model(21), make_small_model(22)
    with torch.no_grad():
        strong.fc.weight[1] *= 10.0
    b = load_bundle(make_bundle(tmp_path / "b", models=[weak, strong]))
    r = predict(b, make_head_volume(seed=4), example_affine(), tta=False)
    x = torch.from_numpy(r.resampled)[None, None]
    raw = [
        GradCAM(nn_module=m, target_layers="layer4", postprocessing=lambda m: m)(x, class_idx=1)[0, 0].detach().numpy()
        for m in b.models
    ]
    assert raw[1].max() > 5 * raw[0].max()

    def corr(a, b):
        return np.corrcoef(a.ravel(), b.ravel())[0, 1]

    assert corr(r.cam_network, raw[0] + raw[1]) >= 0.99
    equal_weights = raw[0] / raw[0].max() + raw[1] / raw[1].max()
    assert corr(r.cam_network, equal_weights) < corr(r.cam_network, raw[0] + raw[1]) - 0.02
    assert r.cam_network.max() == pytest.approx(1.0)


@pytest.mark.parametrize("layer", ["layer1", "layer2", "layer3"])
def test_cam_layer_moves_gradcam_to_an_earlier_stage_without_changing_the_output(tmp_path, layer):
    from conftest import SMALL_SIZE, SMALL_WIDTHS, make_bundle, make_small_model
    from monai.visualize import GradCAM

    plain = make_small_model(4)
    model = build_model("resnet10", widths=list(SMALL_WIDTHS), cam_layer=layer).eval()
    model.load_state_dict(plain.state_dict())  # same weights, same state_dict keys
    seen = {}
    getattr(plain, layer).register_forward_hook(lambda mod, inp, out: seen.update(shape=out.shape))
    x = torch.randn(2, 1, *SMALL_SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x))
        assert model.features(x).shape == seen["shape"]
    b = load_bundle(make_bundle(tmp_path / "b", models=[plain], arch_params={"cam_layer": layer}))
    vol, aff = make_head_volume(seed=3), example_affine()
    r = predict(b, vol, aff, tta=False)  # through the fast inference copy
    assert r.cam_network.shape == tuple(SMALL_SIZE)
    x1 = torch.from_numpy(r.resampled)[None, None]
    with torch.no_grad():
        assert r.probability == pytest.approx(torch.softmax(plain(x1), 1)[0, 1].item(), abs=1e-5)
    ref = GradCAM(nn_module=b.models[0], target_layers=layer, postprocessing=lambda m: m)(x1, class_idx=1)
    ref = ref[0, 0].detach().numpy()
    assert np.corrcoef(ref.ravel(), r.cam_network.ravel())[0, 1] >= 0.99


def test_unknown_cam_layer_is_refused():
    with pytest.raises(BundleError, match="cam_layer must be one of"):
        build_model("resnet10", cam_layer="layer5")

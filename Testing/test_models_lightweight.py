"""The lightweight depthwise-separable multi-receptive-field net (``--arch mrf_dsnet``): shapes, size,
the model contract (features / head / Grad-CAM through ``inference.predict``) and a tiny CV run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_WIDTHS, example_affine, make_head_volume, make_small_model
from GloResNetLib.bundle import default_metadata, load_bundle, save_bundle
from GloResNetLib.errors import BundleError
from GloResNetLib.inference import predict
from GloResNetLib.io import read_volume
from GloResNetLib.models import ARCHITECTURES, build_model, count_parameters
from GloResNetLib.models.lightweight import DEFAULT_WIDTHS, DepthwiseSeparable3d, MRFDSNet, MRFUnit
from GloResNetLib.preprocessing import PreprocessConfig
from test_compare import tiny_runs


def test_registered_with_default_widths():
    assert "mrf_dsnet" in ARCHITECTURES
    model = build_model("mrf_dsnet")
    assert isinstance(model, MRFDSNet) and model.fc.in_features == DEFAULT_WIDTHS[3]
    assert [s[0].pointwise.out_channels for s in model.stages] == list(DEFAULT_WIDTHS)
    units = [m for m in model.modules() if isinstance(m, MRFUnit)]
    assert [[b[0].dilation[0] for b in u.branches] for u in units] == [[1, 2, 3]] * 4
    assert isinstance(model.stem[2], torch.nn.ReLU) and model.stem[0].stride == (2, 2, 2)


@pytest.mark.parametrize("shape", [(32, 32, 32), (32, 40, 48), (48, 33, 36)])
def test_shapes_cubic_and_non_cubic(shape):
    torch.manual_seed(0)
    model = build_model("mrf_dsnet", num_classes=3).eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
    # stem stride 2, stage strides 2, 2, 2, 1: each strided convolution gives ceil(n / 2)
    assert feats.shape == (2, DEFAULT_WIDTHS[3], *(-(-s // 16) for s in shape))
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()


def test_parameter_count_is_at_most_3_percent_of_resnet10():
    light = count_parameters(build_model("mrf_dsnet"))
    heavy = count_parameters(build_model("resnet10"))
    assert heavy > 14e6 and light <= 0.03 * heavy
    assert light == 357_698  # documented figure (README, report); change both together


def test_forward_equals_head_of_pooled_features():
    torch.manual_seed(1)
    model = build_model("mrf_dsnet", widths=[8, 16, 32, 64], dropout=0.3)
    model.train()
    model(torch.randn(3, 1, 32, 32, 40))  # non-trivial BatchNorm statistics
    model.eval()
    x = torch.randn(2, 1, 32, 32, 40)
    with torch.no_grad():
        pooled = torch.flatten(F.adaptive_avg_pool3d(model.features(x), 1), 1)
        assert torch.allclose(model(x), model.head(pooled), atol=1e-6)
    assert isinstance(model.dropout, torch.nn.Dropout) and model.dropout.p == 0.3


def test_branches_are_depthwise_with_different_dilations():
    model = build_model("mrf_dsnet", widths=[8, 16, 32, 64], dilations=[1, 2, 4])
    units = [m for m in model.modules() if isinstance(m, MRFUnit)]
    assert len(units) == 4
    for unit in units:
        convs = [b[0] for b in unit.branches]
        c = unit.fuse.out_channels
        assert [conv.dilation for conv in convs] == [(1, 1, 1), (2, 2, 2), (4, 4, 4)]
        assert all(conv.groups == c and conv.in_channels == c and conv.kernel_size == (3, 3, 3) for conv in convs)
        assert all(conv.padding == conv.dilation for conv in convs)  # 'same' size
        assert unit.fuse.kernel_size == (1, 1, 1) and unit.fuse.in_channels == 3 * c
        # the receptive field of each branch really grows with its dilation: an impulse's response has 3 taps
        # per axis spread over 2d + 1 voxels
        x = torch.zeros(1, c, 11, 11, 11)
        x[:, :, 5, 5, 5] = 1.0
        with torch.no_grad():
            hits = [torch.nonzero(conv(x)[0, 0].abs().sum((1, 2)) > 0).flatten() for conv in convs]
        assert [len(h) for h in hits] == [3, 3, 3]
        assert [int(h.max() - h.min()) + 1 for h in hits] == [3, 5, 9]
    separable = [m for m in model.modules() if isinstance(m, DepthwiseSeparable3d)]
    assert len(separable) == 4 and all(m.depthwise.groups == m.depthwise.in_channels for m in separable)
    assert all(m.pointwise.kernel_size == (1, 1, 1) for m in separable)


def test_json_parameters_and_bad_values():
    model = build_model(
        "mrf_dsnet", widths=[4, 8, 8, 16], depths=[0, 1, 2, 1], strides=[2, 2, 2, 2], act="hardswish"
    ).eval()
    assert any(isinstance(m, torch.nn.Hardswish) for m in model.modules())
    assert sum(isinstance(m, MRFUnit) for m in model.modules()) == 4
    with torch.no_grad():
        assert model.features(torch.zeros(1, 1, 32, 32, 32)).shape == (1, 16, 1, 1, 1)
    for bad in (
        {"widths": [8, 16, 32]},
        {"act": "gelu"},
        {"strides": [2, 2, 3, 1]},
        {"dilations": [0, 1]},
        {"nonsense": 1},
    ):
        with pytest.raises(BundleError, match="mrf_dsnet"):
            build_model("mrf_dsnet", **bad)


def test_gradcam_through_a_bundle_is_on_the_input_grid(tmp_path):
    size = (48, 40, 32)
    model = make_small_model(seed=3, arch="mrf_dsnet")
    meta = default_metadata(
        "mrf",
        arch="mrf_dsnet",
        arch_params={"widths": list(SMALL_WIDTHS)},
        preprocess=PreprocessConfig(size=size),
        training_data={"description": "test", "synthetic": True, "trained": True},
    )
    bundle = load_bundle(save_bundle(tmp_path / "mrf", [model.state_dict()], meta))
    vol = make_head_volume((40, 48, 36))
    result = predict(bundle, vol, example_affine(), tta=True, cam=True)
    assert result.cam.shape == vol.shape and result.cam_network.shape == size
    assert 0.0 <= result.probability <= 1.0 and set(result.view_probabilities) == {"identity", "flip_x"}
    assert result.cam.min() >= 0 and 0.9 < result.cam.max() <= 1.0 + 1e-6  # resampled: peak near 1
    assert result.cam_network.max() == pytest.approx(1.0, abs=1e-6)
    # independent Grad-CAM: autograd through the model's own pass, trilinear upsampling, peak 1
    net = bundle.models[0]
    x = torch.from_numpy(np.ascontiguousarray(result.resampled))[None, None]
    feats = net.features(x)
    score = net.head(torch.flatten(F.adaptive_avg_pool3d(feats, 1), 1))[0, 1]
    (grad,) = torch.autograd.grad(score, feats)
    cam = F.relu((grad.mean((2, 3, 4), keepdim=True) * feats).sum(1, keepdim=True)).detach()
    assert cam.shape[2:] == (3, 3, 2) and float(cam.max()) > 0
    up = F.interpolate(cam, size=size, mode="trilinear", align_corners=False)[0, 0]
    np.testing.assert_allclose(result.cam_network, (up / up.max()).numpy(), atol=1e-4)


def test_tiny_cv_run_through_the_cli(tmp_path_factory):
    runs = tiny_runs(tmp_path_factory)
    run_dir = runs["mrf"]
    assert runs["rc"]["mrf"] == 0
    config = json.loads((run_dir / "config.json").read_text())
    assert config["arch"] == "mrf_dsnet" and config["arch_params"] == {"widths": [8, 16, 32, 64]}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["k"] == 3 and len(metrics["per_fold"]) == 3
    bundle = load_bundle(run_dir / "bundle")
    assert bundle.metadata["arch"] == "mrf_dsnet" and len(bundle.models) == 3
    assert all(isinstance(m, MRFDSNet) for m in bundle.models)
    oof = (run_dir / "oof.csv").read_text().splitlines()
    first = oof[1].split(",")
    array, affine = read_volume(first[1])
    result = predict(bundle, array, affine, tta=True, cam=True)
    assert result.cam.shape == array.shape and result.cam_network.shape == (16, 16, 16)
    # the fold model that never saw this volume reproduces its out-of-fold probability
    assert result.model_probabilities[int(first[5])] == pytest.approx(float(first[6]), abs=1e-5)

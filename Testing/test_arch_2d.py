"""2D-derived backbones: ACS ResNet-18 (``--arch acs_resnet18``) and the slice encoder with position embeddings
(``--arch slice_resnet18``): the ACS operator, shapes, the model contract, 2D weight files, Grad-CAM, a CV run."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL_WIDTHS, example_affine, make_head_volume
from GloResNetLib.bundle import default_metadata, load_bundle, save_bundle
from GloResNetLib.cli import main
from GloResNetLib.errors import BundleError
from GloResNetLib.inference import pool_features, predict
from GloResNetLib.models import build_model, load_pretrained_weights
from GloResNetLib.models.acs import ACSConv3d, acs_split
from GloResNetLib.models.resnet2d import resnet18_2d
from GloResNetLib.preprocessing import PreprocessConfig
from safetensors.torch import save_file
from training_fixtures import tiny_cli_args, write_cohort

ARCHS = [("acs_resnet18", {}), ("slice_resnet18", {}), ("slice_resnet18", {"pooling": "mean", "slice_axis": 0}),
         ("slice_resnet18", {"pooling": "max", "slice_axis": 1})]


def test_acs_convolution_equals_three_flat_3d_kernels():
    torch.manual_seed(0)
    conv = ACSConv3d(3, 8, 3, stride=2, padding=1, bias=True)
    x = torch.randn(2, 3, 9, 10, 11)
    got = conv(x)
    w, b = conv.weight.detach(), conv.bias.detach()
    n0, n1, n2 = acs_split(8)
    assert (n0, n1, n2) == (3, 3, 2)
    ref = torch.cat([  # built independently: explicit 3D kernels, zero-free padding per view
        F.conv3d(x, w[:n0].reshape(n0, 3, 1, 3, 3), b[:n0], 2, (0, 1, 1)),
        F.conv3d(x, w[n0:n0 + n1].reshape(n1, 3, 3, 1, 3), b[n0:n0 + n1], 2, (1, 0, 1)),
        F.conv3d(x, w[n0 + n1:].reshape(n2, 3, 3, 3, 1), b[n0 + n1:], 2, (1, 1, 0)),
    ], dim=1)
    assert got.shape == ref.shape == (2, 8, 5, 5, 6)
    assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize(("arch", "params"), ARCHS)
@pytest.mark.parametrize("shape", [(32, 32, 32), (48, 40, 33)])
def test_shapes_and_forward_equals_head_of_pooled_features(arch, params, shape):
    torch.manual_seed(0)
    model = build_model(arch, 3, widths=SMALL_WIDTHS, **params).eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        feats, logits = model.features(x), model(x)
        again = model.head(pool_features(model, feats))
    assert logits.shape == (2, 3) and torch.allclose(logits, again, atol=1e-5)
    if arch == "slice_resnet18":  # full resolution along the slice axis, stride 32 in-plane, axis order kept
        axis = params.get("slice_axis", 2)
        assert feats.shape[2 + axis] == shape[axis]
        assert [feats.shape[2 + a] for a in range(3) if a != axis] == [-(-shape[a] // 32) for a in range(3)
                                                                         if a != axis]
    else:
        assert tuple(feats.shape[2:]) == tuple(-(-s // 32) for s in shape)


def test_slice_position_embedding_fits_any_slice_count_and_matters():
    torch.manual_seed(0)
    model = build_model("slice_resnet18", widths=SMALL_WIDTHS, positions=8).eval()
    assert model.position_embedding(8).shape == (8, 64) and model.position_embedding(45).shape == (45, 64)
    assert torch.allclose(model.position_embedding(8), model.position.detach())
    x = torch.randn(1, 1, 32, 32, 24)
    with torch.no_grad():
        ref = model(x)
        model.position.mul_(5.0)
        assert not torch.allclose(model(x), ref, atol=1e-4)
    with pytest.raises(BundleError, match="pooling"):
        build_model("slice_resnet18", pooling="sum")


def test_slice_gradcam_weights_each_slice_by_its_own_gradient():
    torch.manual_seed(1)
    model = build_model("slice_resnet18", widths=SMALL_WIDTHS, slice_axis=0).eval()
    feats = torch.rand(1, 64, 6, 2, 2)
    cam = model.gradcam(feats, 1)
    a = feats.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.head(model.pool_features(a))[0, 1], a)
    ref = torch.stack([F.relu((grad[0, :, s].mean((1, 2))[:, None, None] * feats[0, :, s]).sum(0))
                       for s in range(6)])
    assert cam.shape == (1, 6, 2, 2) and torch.allclose(cam[0], ref, atol=1e-5)


@pytest.fixture(scope="module")
def weights_2d(tmp_path_factory):
    """A torchvision-layout 2D ResNet-18 (RGB stem, 1000 classes, small widths) saved as .pth and .safetensors."""
    torch.manual_seed(3)
    net = resnet18_2d(widths=SMALL_WIDTHS)
    state = {k: v for k, v in net.state_dict().items()}
    folder = tmp_path_factory.mktemp("w2d")
    torch.save(state, folder / "resnet18_2d.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "resnet18_2d.safetensors"))
    return state, folder


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("arch", ["acs_resnet18", "slice_resnet18"])
def test_2d_weights_load_from_a_file(weights_2d, suffix, arch):
    state, folder = weights_2d
    model = build_model(arch, 2, widths=SMALL_WIDTHS)
    report = load_pretrained_weights(model, str(folder / f"resnet18_2d{suffix}"))
    prefix = "encoder." if arch == "slice_resnet18" else ""
    own = model.state_dict()
    assert torch.equal(own[prefix + "conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))  # RGB -> grey
    for key in ("layer1.0.conv1.weight", "layer3.0.downsample.0.weight", "layer4.1.bn2.running_var"):
        assert torch.equal(own[prefix + key], state[key])
    assert not any(k.startswith("fc.") for k in report.loaded) and len(report.loaded) == len(state) - 2


def test_wrong_weight_files_are_refused_in_one_line(tmp_path):
    medicalnet = {f"module.{k}": v for k, v in build_model("resnet10", widths=SMALL_WIDTHS).state_dict().items()}
    torch.save({"state_dict": medicalnet}, tmp_path / "resnet_10.pth")
    torch.save({"weights": build_model("resnet10").fc}, tmp_path / "pickled_module.pth")
    torch.save({"encoder.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    model = build_model("acs_resnet18", widths=SMALL_WIDTHS)
    for name, match in (("resnet_10.pth", "3D checkpoint"), ("pickled_module.pth", "refused"),
                        ("other.pth", "not a torchvision-style"), ("missing.pth", "not found")):
        with pytest.raises(BundleError, match=match) as exc:
            load_pretrained_weights(model, str(tmp_path / name))
        assert "\n" not in str(exc.value) and name in str(exc.value)
    wide = resnet18_2d(widths=(16, 32, 64, 128)).state_dict()
    torch.save(wide, tmp_path / "wide.pth")
    with pytest.raises(BundleError, match="wrong architecture"):
        load_pretrained_weights(model, str(tmp_path / "wide.pth"))


@pytest.mark.parametrize(("arch", "params"), ARCHS[:3])
def test_gradcam_on_the_input_grid_through_predict(tmp_path, arch, params):
    torch.manual_seed(0)
    model = build_model(arch, 2, widths=SMALL_WIDTHS, **params).eval()
    with torch.no_grad():
        model.fc.weight[1].abs_()
    meta = default_metadata("tiny-" + arch, arch=arch, arch_params={"widths": list(SMALL_WIDTHS), **params},
                            preprocess=PreprocessConfig(size=48),
                            training_data={"description": "test", "synthetic": True, "trained": True})
    bundle = load_bundle(save_bundle(tmp_path / "b", [model.state_dict()], meta))
    vol, aff = make_head_volume(), example_affine()
    result = predict(bundle, vol, aff, tta=True, cam=True)
    assert result.cam.shape == vol.shape and result.cam_network.shape == (48, 48, 48)
    assert result.cam_network.max() == pytest.approx(1.0, abs=1e-5)  # scaled on the network grid
    assert 0.0 <= result.cam.min() and 0.5 < result.cam.max() <= 1.0 + 1e-5
    assert 0.0 < result.probability < 1.0 and len(result.view_probabilities) == 2


def test_tiny_cv_runs_through_the_cli_with_2d_weights(tmp_path, weights_2d):
    _, folder = weights_2d
    cohort = write_cohort(tmp_path / "cohort", n_subjects=9)
    for arch, extra in (("acs_resnet18", []), ("slice_resnet18", ["--arch-params", '{"pooling": "mean"}'])):
        out = tmp_path / arch
        args = tiny_cli_args(cohort, out, tmp_path / "cache", "--arch", arch, "--pretrained",
                             str(folder / "resnet18_2d.safetensors"), *extra)
        assert main(args) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["arch"] == arch
        bundle = load_bundle(out / "bundle")
        assert bundle.metadata["arch"] == arch and len(bundle.models) == 3
        vol, aff = make_head_volume(), example_affine()
        result = predict(bundle, vol, aff, tta=True, cam=True)
        assert result.cam.shape == vol.shape

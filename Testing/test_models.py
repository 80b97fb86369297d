"""ResNet-10 in MedicalNet's layout and loading weights files safely."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SMALL_WIDTHS
from GloResNetLib.errors import BundleError
from GloResNetLib.models import (
    ARCHITECTURES,
    build_model,
    count_parameters,
    load_medicalnet_weights,
    load_state_dict_file,
)


def medicalnet_checkpoint(path: Path, model: torch.nn.Module, drop_bn_counters: bool = True) -> Path:
    """A file in Tencent's format: {'state_dict': {'module.<name>': tensor}}, no classifier keys."""
    state = {
        f"module.{k}": v.clone()
        for k, v in model.state_dict().items()
        if not k.startswith("fc.") and not (drop_bn_counters and k.endswith("num_batches_tracked"))
    }
    torch.save({"state_dict": state}, str(path))
    return path


def test_resnet10_matches_medicalnet_size_and_shapes():
    model = build_model("resnet10")
    assert 14.35e6 < count_parameters(model) < 14.37e6  # MedicalNet resnet_10: 14.36M + 2-class head
    x = torch.randn(1, 1, 64, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (1, 2)
        assert model.features(x).shape == (1, 512, 2, 2, 2)  # stride 32
        dilated = build_model("resnet10_dilated")
        assert dilated.features(x).shape == (1, 512, 8, 8, 8)  # stride 8 (MedicalNet's segmentation layout)


def test_parameter_names_match_monai_medicalnet_layout():
    from monai.networks.nets import resnet10

    ref = resnet10(
        spatial_dims=3, n_input_channels=1, conv1_t_stride=2, shortcut_type="B", num_classes=2, bias_downsample=False
    )
    ours = build_model("resnet10")
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert ref_shapes == our_shapes


def test_unknown_architecture():
    with pytest.raises(BundleError, match="unknown architecture"):
        build_model("vgg3d")


def test_load_medicalnet_checkpoint(tmp_path):
    torch.manual_seed(1)
    source = build_model("resnet10", widths=SMALL_WIDTHS)
    path = medicalnet_checkpoint(tmp_path / "resnet_10_23dataset.pth", source)
    target = build_model("resnet10", widths=SMALL_WIDTHS)
    report = load_medicalnet_weights(target, path)
    assert report.unexpected == [] and set(report.missing) == {"fc.weight", "fc.bias"}
    for k, v in source.state_dict().items():
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
            assert torch.equal(target.state_dict()[k], v), k


def test_medicalnet_head_keys_dropped_and_unexpected_reported(tmp_path):
    source = build_model("resnet10", widths=SMALL_WIDTHS)
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(3, 3)
    state["module.extra.weight"] = torch.zeros(1)
    torch.save({"state_dict": state}, str(tmp_path / "m.pth"))
    report = load_medicalnet_weights(build_model("resnet10", widths=SMALL_WIDTHS), tmp_path / "m.pth")
    assert "conv_seg.0.weight" in report.dropped_head and "fc.weight" in report.dropped_head
    assert report.unexpected == ["extra.weight"]


def test_shape_mismatch_refused_with_clear_message(tmp_path):
    path = medicalnet_checkpoint(tmp_path / "small.pth", build_model("resnet10", widths=SMALL_WIDTHS))
    with pytest.raises(BundleError, match="has shape .*wrong architecture"):
        load_medicalnet_weights(build_model("resnet10"), path)


@pytest.mark.parametrize("payload", [[1, 2, 3], torch.zeros(3), {"state_dict": {"a": 1}}, {}])
def test_not_a_state_dict(tmp_path, payload):
    torch.save(payload, str(tmp_path / "x.pth"))
    with pytest.raises(BundleError, match="not a state dict"):
        load_state_dict_file(tmp_path / "x.pth")


class _Exploit:
    """Pickles to a call of os.system: loading it unsafely would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_and_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": _Exploit(marker)}, str(tmp_path / "evil.pth"))
    with pytest.raises(BundleError, match="refused"):
        load_state_dict_file(tmp_path / "evil.pth")
    assert not marker.exists()


def test_garbage_and_missing_weights_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(BundleError, match="not a PyTorch weights file"):
        load_state_dict_file(tmp_path / "junk.pth")
    with pytest.raises(BundleError, match="not found"):
        load_state_dict_file(tmp_path / "absent.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"nonsense")
    with pytest.raises(BundleError, match="safetensors"):
        load_state_dict_file(tmp_path / "junk.safetensors")


def test_without_the_stem_pool_the_feature_grid_is_twice_as_fine():
    x = torch.randn(1, 1, 48, 40, 32)
    pooled = build_model("resnet10_dilated", 2, widths=[4, 8, 8, 8])
    fine = build_model("resnet10_dilated", 2, widths=[4, 8, 8, 8], stem_pool=False)
    assert tuple(pooled.features(x).shape[2:]) == (6, 5, 4)
    assert tuple(fine.features(x).shape[2:]) == (12, 10, 8)
    fine.load_state_dict(pooled.state_dict())  # same parameters: MedicalNet weights load into both


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_keeps_the_backbone_contract(arch):
    """forward == head(pool(features)) with the shapes of GloResNetLib.models.contracts, for every --arch."""
    from GloResNetLib.inference import gradcam_map, pool_features
    from GloResNetLib.models import Backbone, GradCamBackbone, PoolingBackbone, PretrainedLoader

    torch.manual_seed(0)
    model = build_model(arch, 3, widths=SMALL_WIDTHS).eval()
    assert isinstance(model, Backbone)
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        feats = model.features(x)
        pooled = pool_features(model, feats)
        logits = model.head(pooled)
        assert feats.ndim == 5 and feats.shape[0] == 2
        assert pooled.shape[0] == 2 and pooled.ndim == 2 and logits.shape == (2, 3)
        torch.testing.assert_close(model(x), logits)
    cam = gradcam_map(model, feats, 1)
    assert cam.shape == (2, *feats.shape[2:]) and bool((cam >= 0).all())
    assert isinstance(model, PoolingBackbone) == (
        arch in ("resnet10", "resnet10_dilated", "resnet18", "slice_resnet18")
    )
    assert isinstance(model, GradCamBackbone) == (arch == "slice_resnet18")
    assert isinstance(model, PretrainedLoader) == (arch in ("acs_resnet18", "slice_resnet18"))

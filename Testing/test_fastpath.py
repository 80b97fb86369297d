"""The fast paths give the same results as the straightforward code: network, CAM, preprocessing, I/O."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import example_affine, make_head_volume, make_small_model
from GloResNetLib import fastnet
from GloResNetLib.inference import network_pass, upsample_cam
from GloResNetLib.io import read_volume, write_volume
from GloResNetLib.preprocessing import PreprocessConfig, memory_order_view, preprocess, undo_reorient
from test_preprocessing import flip_axis


@pytest.mark.parametrize(
    "arch", ["resnet10", "resnet10_dilated", "resnet18", "resnet10_dilated-nopool", "resnet10-layer2"]
)
@pytest.mark.parametrize("pack", [True, False])
def test_prepared_model_matches_the_model(arch, pack):
    arch, _, variant = arch.partition("-")
    extra = {"nopool": {"stem_pool": False}, "layer2": {"cam_layer": "layer2"}}.get(variant, {})
    model = make_small_model(arch=arch, **extra)
    fast = fastnet.FastResNet(
        model,
        torch.device("cpu"),
        pack=pack and fastnet._mkldnn_ops(),
        blocked_stem=pack and torch.backends.mkldnn.is_available(),
    )
    x = torch.randn(3, 1, 40, 35, 33)
    with torch.inference_mode():
        ref, got = model.features(x), fast.features(x)
    assert got.shape == ref.shape
    assert float((got - ref).abs().max()) <= 1e-4 * float(ref.abs().max())


def test_network_pass_uses_a_warm_copy_rebuilt_when_weights_change():
    model = make_small_model()
    x = torch.randn(3, 1, 48, 48, 48)
    probs, cam = network_pass(model, x, cam_class=1)
    first = fastnet.prepared(model, torch.device("cpu"))
    assert first is not None and fastnet.prepared(model, torch.device("cpu")) is first  # kept warm
    with torch.no_grad():
        ref = torch.softmax(model(x), 1)
    assert torch.allclose(probs, ref, atol=1e-5)
    with torch.no_grad():
        model.fc.weight.mul_(-1.0)
        model.layer1[0].conv1.weight.mul_(0.5)  # backbone change: the prepared copy must follow
    probs2, _ = network_pass(model, x, cam_class=1)
    assert fastnet.prepared(model, torch.device("cpu")) is not first
    with torch.no_grad():
        assert torch.allclose(probs2, torch.softmax(model(x), 1), atol=1e-5)


def test_gradients_still_flow_through_the_model_itself():
    model = make_small_model()
    x = torch.randn(2, 1, 32, 32, 32, requires_grad=True)
    model.features(x).sum().backward()  # grad mode: the prepared copy is never used
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("storage", ["ras", "lps", "permuted", "las_permuted"])
def test_cam_upsampling_equals_two_trilinear_resamplings(storage):
    vol, aff = make_head_volume(), example_affine()
    if storage == "lps":
        vol, aff = flip_axis(*flip_axis(vol, aff, 0), 1)
    elif storage == "permuted":
        vol, aff = vol.transpose(2, 0, 1).copy(), aff[:, [2, 0, 1, 3]]
    elif storage == "las_permuted":
        vol, aff = flip_axis(vol.transpose(1, 2, 0).copy(), aff[:, [1, 2, 0, 3]], 0)
    pre = preprocess(vol, aff, PreprocessConfig(size=(32, 32, 32)))
    small = torch.rand(3, 2, 4)
    up = F.interpolate(small[None, None], size=(32, 32, 32), mode="trilinear", align_corners=False)[0, 0]
    up = up / up.max()
    back = F.interpolate(up[None, None], size=pre.canonical_shape, mode="trilinear", align_corners=False)[0, 0]
    ref_input = undo_reorient(back.numpy(), pre.orientation)
    cam_net, cam_in = upsample_cam(small, pre)
    np.testing.assert_allclose(cam_net, up.numpy(), atol=1e-6)
    assert cam_in.shape == vol.shape and cam_in.dtype == np.float32
    np.testing.assert_allclose(cam_in, ref_input, atol=1e-6)


@pytest.mark.parametrize("layout", ["C", "F", "flipped", "int16_F"])
def test_preprocess_is_independent_of_memory_layout(layout):
    vol, aff = make_head_volume(), example_affine()
    ref = preprocess(vol, aff, PreprocessConfig(size=(24, 24, 24)))
    arr = {
        "C": vol,
        "F": np.asfortranarray(vol),
        "flipped": np.flip(np.flip(vol, 0).copy(), 0),
        "int16_F": np.asfortranarray(np.round(vol).astype(np.int16)),
    }[layout]
    view, perm, flipped = memory_order_view(arr)
    assert view.flags.c_contiguous
    np.testing.assert_array_equal(np.flip(arr, flipped).transpose(perm), view)
    got = preprocess(arr, aff, PreprocessConfig(size=(24, 24, 24)))
    tol = 2e-2 if layout.startswith("int16") else 1e-5  # int16 rounds the intensities
    np.testing.assert_allclose(got.array, ref.array, atol=tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8, ">f4", ">i2"])
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_streamed_nifti_reader_returns_what_nibabel_returns(tmp_path, dtype, suffix):
    rng = np.random.default_rng(0)
    data = rng.normal(100, 40, (9, 8, 7)).clip(0, 255).astype(dtype)
    aff = example_affine()
    hdr = nib.Nifti1Header(endianness=">" if np.dtype(dtype).byteorder == ">" else "<")
    img = nib.Nifti1Image(data, aff, hdr)
    img.set_qform(aff, code=1)
    img.header.extensions.append(nib.nifti1.Nifti1Extension(6, b"a comment to skip"))
    path = tmp_path / f"v{suffix}"
    nib.save(img, str(path))
    got, affine = read_volume(path)
    np.testing.assert_array_equal(got, nib.load(str(path)).get_fdata(dtype=np.float32))
    np.testing.assert_allclose(affine, aff, atol=1e-5)


def test_written_volume_reads_back_identically_in_any_memory_order(tmp_path):
    vol, aff = make_head_volume((17, 13, 11)), example_affine()
    for name, arr in (("c", vol), ("f", np.asfortranarray(vol))):
        path = write_volume(tmp_path / f"{name}.nii.gz", arr, aff)
        np.testing.assert_array_equal(nib.load(str(path)).get_fdata(dtype=np.float32), vol)
        np.testing.assert_array_equal(read_volume(path)[0], vol)

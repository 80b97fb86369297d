"""2D slice encoder with slice-position embeddings (``--arch slice_resnet18``): per-slice encoding along each
axis, shapes, the model contract, position embeddings for any slice count, mean / max / gated-attention pooling,
slice subsampling, per-slice Grad-CAM (own and through ``inference.predict`` in a constructed case),
torchvision-layout 2D weight files, and a tiny CV run through the real CLI with --pretrained and --arch-params."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from GloResNetLib.bundle import load_bundle
from GloResNetLib.cli import main
from GloResNetLib.errors import BundleError
from GloResNetLib.inference import gradcam_map, predict
from GloResNetLib.io import read_volume
from GloResNetLib.models import ARCHITECTURES, build_model, load_pretrained_weights
from GloResNetLib.models.slice_encoder import SliceEncoder
from safetensors.torch import save_file
from test_models_acs import WIDTHS, blob_bundle, blob_volume, one_thread, write_2d_weights  # noqa: F401
from training_fixtures import TINY_WIDTHS, tiny_cli_args, write_cohort


def trained_like(seed: int = 0, **params) -> SliceEncoder:
    """A tiny slice encoder with non-trivial BatchNorm statistics and a larger position table, in eval mode."""
    torch.manual_seed(seed)
    model = build_model("slice_resnet18", widths=WIDTHS, **params)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32, 32))
        model.position.normal_(0, 0.5)
    return model.eval()


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("pooling", ["mean", "max", "attention"])
def test_shapes_and_forward_equals_head_of_pooled_features(axis, pooling):
    model = trained_like(slice_axis=axis, pooling=pooling)
    shape = (40, 33, 48)  # non-cubic: every axis has its own size
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
        again = model.head(model.pool_features(feats))
    expected = [shape[a] if a == axis else -(-shape[a] // 32) for a in range(3)]
    assert tuple(feats.shape) == (2, 64, *expected)  # full resolution along the slice axis, axis order kept
    assert logits.shape == (2, 2) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, again, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # cubic input too
        assert model(torch.randn(1, 1, 32, 32, 32)).shape == (1, 2)


@pytest.mark.parametrize("axis", [0, 2])
def test_features_are_the_2d_encoder_applied_to_each_slice(axis):
    model = trained_like(slice_axis=axis, slice_batch=7)  # eval: chunks of 7 slices give the same maps
    x = torch.randn(2, 1, 32, 36, 40)
    with torch.no_grad():
        feats = model.features(x)
        for s in (0, 5, x.shape[2 + axis] - 1):
            image = x.select(2 + axis, s)  # (B, 1, H, W): the other two axes in increasing order
            torch.testing.assert_close(feats.select(2 + axis, s), model.encoder.features(image), atol=1e-5, rtol=1e-5)


def test_position_embedding_fits_any_slice_count():
    model = trained_like(positions=5)
    table = model.position.detach()
    torch.testing.assert_close(model.position_embedding(5), table)  # 5 slices: the table itself
    nine = model.position_embedding(9)  # 9 slices: the table's points and midpoints between them
    torch.testing.assert_close(nine[::2], table)
    torch.testing.assert_close(nine[1::2], (table[:-1] + table[1:]) / 2)
    assert model.position_embedding(117).shape == (117, 64)
    torch.testing.assert_close(model.position_embedding(1)[0], table[2])  # a single slice sits in the middle
    at = torch.tensor([0.0, 0.125, 1.0], dtype=torch.float64)  # explicit positions (slice subsampling)
    torch.testing.assert_close(model.position_embedding(3, at), torch.stack([table[0], table[:2].mean(0), table[4]]))
    # the embedding is learned: it gets a gradient
    loss = model(torch.randn(1, 1, 32, 32, 20)).sum()
    loss.backward()
    assert model.position.grad is not None and model.position.grad.abs().sum() > 0


@pytest.mark.parametrize("pooling", ["mean", "max", "attention"])
def test_pooling_is_permutation_invariant_up_to_the_position_embedding(pooling):
    model = trained_like(pooling=pooling)
    x = torch.randn(1, 1, 32, 32, 12)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        moved = model(x[..., perm]) - model(x)
        assert moved.abs().max() > 1e-4  # slice order matters only through the position embedding ...
        model.position.zero_()
        torch.testing.assert_close(model(x[..., perm]), model(x), atol=1e-5, rtol=1e-5)  # ... and only so


def test_gated_attention_pooling_is_ilse_et_al():
    model = trained_like(pooling="attention", attention_dim=16)
    assert model.attn_v.out_features == 16 and model.attn_w.in_features == 16
    feats = torch.rand(2, 64, 2, 2, 7)
    with torch.no_grad():
        pooled = model.pool_features(feats)
        h = model.norm(feats.mean((2, 3)).transpose(1, 2) + model.position_embedding(7))  # (B, S, C)
        v, u = torch.tanh(h @ model.attn_v.weight.T + model.attn_v.bias), torch.sigmoid(model.attn_u(h))
        a = torch.softmax((v * u) @ model.attn_w.weight[0] + model.attn_w.bias, dim=1)  # (B, S)
    torch.testing.assert_close(a.sum(1), torch.ones(2))
    torch.testing.assert_close(pooled, torch.einsum("bs,bsc->bc", a, h), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # max pooling: the channel-wise maximum over slices
        mx = trained_like(pooling="max")
        h = mx.norm(feats.mean((2, 3)).transpose(1, 2) + mx.position_embedding(7))
        torch.testing.assert_close(mx.pool_features(feats), h.amax(1))


def test_slices_per_step_subsamples_in_training_only():
    model = trained_like(slices_per_step=5)
    seen: list[int] = []
    hook = model.encoder.conv1.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    x = torch.randn(2, 1, 32, 32, 24)
    model.train()
    torch.manual_seed(0)
    logits = model(x)
    assert seen == [2 * 5] and logits.shape == (2, 2)
    torch.manual_seed(0)  # the same slices, at their true positions, reproduce the training forward
    idx = torch.randperm(24)[:5].sort().values
    feats = model.features(x[..., idx])
    again = model.head(model.pool_features(feats, idx.double() / 23))
    torch.testing.assert_close(logits, again)
    model.eval()
    with torch.no_grad():
        model(x)
    assert seen[-1] == 2 * 24  # evaluation sees every slice
    hook.remove()
    for bad in ({"slices_per_step": 0}, {"slice_axis": 3}, {"pooling": "sum"}, {"positions": 1}, {"widths": [8, 16]}):
        with pytest.raises(BundleError, match="slice_resnet18"):
            build_model("slice_resnet18", **bad)


def test_gradcam_weights_each_slice_by_its_own_gradient():
    model = trained_like(slice_axis=1, pooling="attention")
    x = torch.randn(1, 1, 64, 9, 64)
    with torch.no_grad():
        feats = model.features(x)
    cam = gradcam_map(model, feats, 1)  # what inference does: the model's own gradcam
    a = feats.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.head(model.pool_features(a))[0, 1], a)
    ref = torch.stack(
        [F.relu(torch.einsum("c,cxz->xz", grad[0, :, :, s].mean((1, 2)), feats[0, :, :, s])) for s in range(9)], dim=1
    )  # slice s's channels weighted by slice s's mean gradient
    assert cam.shape == (1, 2, 9, 2) and cam.min() >= 0 and cam.max() > 0
    torch.testing.assert_close(cam[0], ref, atol=1e-6, rtol=1e-5)
    # not the same as one set of weights for the whole volume
    alpha = grad.flatten(2).mean(2)
    whole = F.relu(torch.einsum("bc,bcxyz->bxyz", alpha, feats))
    assert not torch.allclose(cam, whole, atol=1e-6)


@pytest.mark.parametrize(("axis", "pooling"), [(2, "mean"), (0, "attention"), (1, "max")])
def test_gradcam_through_predict_lights_only_the_lesion_slices(tmp_path, axis, pooling):
    # non-negative kernels and neutral BatchNorm: slices without the ball have exactly zero features, so a
    # correct per-slice map is zero on them and positive on some of the ball's slices
    centre = (16, 40, 28)
    bundle = blob_bundle(
        tmp_path / "slice",
        "slice_resnet18",
        {"widths": WIDTHS, "stem_pool": False, "slice_axis": axis, "pooling": pooling},
    )
    vol = blob_volume(64, centre, radius=4.0)
    result = predict(bundle, vol, np.eye(4), tta=True, cam=True)
    assert result.cam.shape == vol.shape and result.cam_network.shape == (64, 64, 64)
    assert result.cam.max() == pytest.approx(1.0, abs=1e-5)
    profile = result.cam.max(axis=tuple(a for a in range(3) if a != axis))
    lit = np.nonzero(profile > 0)[0]
    assert lit.min() >= centre[axis] - 4 and lit.max() <= centre[axis] + 4  # only slices through the ball
    assert np.unravel_index(np.argmax(result.cam), vol.shape)[axis] in range(centre[axis] - 4, centre[axis] + 5)


@pytest.fixture(scope="module")
def weights_2d(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slice_w2d")
    return write_2d_weights(folder), folder


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_2d_weights_load_into_the_encoder(weights_2d, suffix):
    from GloResNetLib.models.resnet2d import resnet18_2d

    state, folder = weights_2d
    model = build_model("slice_resnet18", widths=WIDTHS)
    position = model.position.detach().clone()
    report = load_pretrained_weights(model, str(folder / f"resnet18_2d{suffix}"), arch="slice_resnet18")
    own = model.state_dict()
    assert torch.equal(own["encoder.conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))
    for key in ("layer1.1.conv2.weight", "layer3.0.downsample.0.weight", "layer4.0.bn1.running_mean", "bn1.bias"):
        assert torch.equal(own["encoder." + key], state[key]), key
    assert sorted(report.dropped_head) == ["fc.bias", "fc.weight"] and len(report.loaded) == len(state) - 2
    assert torch.equal(model.position, position)  # position, attention and head stay as they were
    # the encoder now computes what the 2D network computes on the grey RGB image (g, g, g)
    net = resnet18_2d(widths=WIDTHS)
    net.load_state_dict(state)
    net.eval()
    model.eval()
    g = torch.randn(3, 1, 40, 36)
    with torch.no_grad():
        torch.testing.assert_close(
            model.encoder.features(g), net.features(g.expand(3, 3, 40, 36)), atol=1e-4, rtol=1e-4
        )


def test_wrong_weight_files_are_refused(tmp_path, weights_2d):
    state, _ = weights_2d
    torch.save({"state_dict": build_model("resnet10", widths=WIDTHS).state_dict()}, tmp_path / "medicalnet.pth")
    torch.save({"model": torch.nn.Conv2d(1, 1, 1)}, tmp_path / "object.pth")
    prefixed = {f"encoder.{k}": v for k, v in state.items()}  # e.g. a slice_resnet18 bundle's weights
    save_file({k: v.contiguous() for k, v in prefixed.items()}, str(tmp_path / "prefixed.safetensors"))
    model = build_model("slice_resnet18", widths=WIDTHS)
    for name, match in (
        ("medicalnet.pth", "3D checkpoint"),
        ("object.pth", "refused"),
        ("prefixed.safetensors", "not a torchvision-style"),
    ):
        with pytest.raises(BundleError, match=match) as exc:
            load_pretrained_weights(model, str(tmp_path / name), arch="slice_resnet18")
        assert "\n" not in str(exc.value) and name in str(exc.value)


def test_tiny_cv_run_through_the_cli_with_2d_weights_and_arch_params(tmp_path):
    assert "slice_resnet18" in ARCHITECTURES
    folder = tmp_path / "w2d"
    write_2d_weights(folder, widths=TINY_WIDTHS)
    cohort = write_cohort(tmp_path / "cohort", n_subjects=8)
    out = tmp_path / "run"
    params = {"slice_axis": 1, "pooling": "max", "positions": 16}
    args = tiny_cli_args(
        cohort,
        out,
        tmp_path / "cache",
        "--arch",
        "slice_resnet18",
        "--size",
        "32",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--arch-params",
        json.dumps(params),
        "--pretrained",
        str(folder / "resnet18_2d.safetensors"),
    )
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "slice_resnet18" and config["arch_params"] == {**params, "widths": TINY_WIDTHS}
    assert "120 tensors loaded" in (out / "fold_1" / "result.json").read_text()
    bundle = load_bundle(out / "bundle")
    assert bundle.metadata["arch"] == "slice_resnet18" and len(bundle.models) == 2
    assert all(isinstance(m, SliceEncoder) and m.slice_axis == 1 and m.pooling == "max" for m in bundle.models)
    first = (out / "oof.csv").read_text().splitlines()[1].split(",")
    array, affine = read_volume(first[1])
    result = predict(bundle, array, affine, tta=True, cam=True)
    assert result.cam.shape == array.shape and result.cam_network.shape == (32, 32, 32)
    assert result.model_probabilities[int(first[5])] == pytest.approx(float(first[6]), abs=1e-5)

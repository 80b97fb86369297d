"""ACS ResNet-18 (``--arch acs_resnet18``): the ACS operator against full 3D convolutions with planar kernels,
shapes, the model contract, torchvision-layout 2D weight files (.pth / .safetensors) and wrong files, Grad-CAM
through ``inference.predict`` in a constructed case, and a tiny CV run through the real CLI with --pretrained.

The helpers :func:`write_2d_weights`, :func:`monotone`, :func:`blob_volume` and :func:`blob_bundle` are shared
with test_models_slice_encoder.py.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import example_affine, make_head_volume
from GloResNetLib.bundle import default_metadata, load_bundle, save_bundle
from GloResNetLib.cli import main
from GloResNetLib.errors import BundleError
from GloResNetLib.inference import predict
from GloResNetLib.io import read_volume
from GloResNetLib.models import ARCHITECTURES, build_model, count_parameters, load_pretrained_weights
from GloResNetLib.models.acs import ACSConv3d, ACSResNet, acs_split
from GloResNetLib.models.resnet2d import adapt_stem_weight, resnet18_2d
from GloResNetLib.preprocessing import PreprocessConfig
from safetensors.torch import save_file
from training_fixtures import TINY_WIDTHS, tiny_cli_args, write_cohort

WIDTHS = [8, 16, 32, 64]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread is as fast, and immune to a busy machine (2 threads can be 100x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_2d_weights(folder: Path, seed: int = 3, widths=WIDTHS) -> dict[str, torch.Tensor]:
    """A torchvision-layout 2D ResNet-18 (RGB stem, 1000-class fc, non-trivial BatchNorm buffers) written as
    ``resnet18_2d.pth`` (torch.save) and ``resnet18_2d.safetensors`` in ``folder``; returns its state dict."""
    torch.manual_seed(seed)
    net = resnet18_2d(widths=widths)
    net.train()
    with torch.no_grad():
        net(torch.randn(4, 3, 40, 40))  # running statistics differ from their defaults
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / "resnet18_2d.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "resnet18_2d.safetensors"))
    return state


def monotone(model: torch.nn.Module) -> torch.nn.Module:
    """Make a model's output rise with input intensity: convolution kernels non-negative, each output channel a
    weighted mean (no blow-up), BatchNorm at its neutral defaults; BI logit up with every feature."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 4:
                p.abs_().div_(p.sum(dim=tuple(range(1, p.dim())), keepdim=True))
        model.fc.weight[1] = model.fc.weight[1].abs() + 0.1
        model.fc.weight[0] = -model.fc.weight[1]
    return model.eval()


def blob_volume(n: int, centre, radius: float = 4.0) -> np.ndarray:
    """An n^3 volume, zero except a bright ball."""
    g = np.stack(np.meshgrid(*[np.arange(n)] * 3, indexing="ij")).astype(np.float64)
    d = np.sqrt(((g - np.asarray(centre, dtype=np.float64)[:, None, None, None]) ** 2).sum(0))
    return np.where(d <= radius, 1000.0, 0.0).astype(np.float32)


def blob_bundle(path: Path, arch: str, params: dict, size: int = 64):
    """A loaded one-model bundle of :func:`monotone` weights (network grid = a size^3 identity-affine input)."""
    torch.manual_seed(0)
    model = monotone(build_model(arch, **params))
    meta = default_metadata(
        path.name,
        arch=arch,
        arch_params=params,
        preprocess=PreprocessConfig(size=size),
        training_data={"description": "test", "synthetic": True, "trained": True},
    )
    return load_bundle(save_bundle(path, [model.state_dict()], meta))


def planar_reference(
    x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor | None, k: int, stride: int, padding: int, dilation: int
) -> torch.Tensor:
    """ACS by definition: one full k^3 convolution whose kernel is zero outside the central plane of each
    output group's view (group 0: plane orthogonal to axis 0, ...), split as acsconv 0.1.1 splits."""
    out = w2d.shape[0]
    sizes = {8: (3, 3, 2), 64: (22, 21, 21), 7: (3, 2, 2), 10: (4, 3, 3)}[out]
    full = torch.zeros(out, w2d.shape[1], k, k, k)
    start = 0
    for axis, n in enumerate(sizes):
        block = w2d[start : start + n]
        if axis == 0:
            full[start : start + n, :, k // 2, :, :] = block
        elif axis == 1:
            full[start : start + n, :, :, k // 2, :] = block
        else:
            full[start : start + n, :, :, :, k // 2] = block
        start += n
    return F.conv3d(x, full, bias, stride, padding, dilation)


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "padding", "dilation"),
    [
        (3, 8, 3, 1, 1, 1),
        (3, 8, 3, 2, 1, 1),
        (1, 64, 7, 2, 3, 1),
        (4, 10, 1, 2, 0, 1),
        (2, 7, 3, 1, 0, 1),
        (2, 7, 3, 2, 0, 1),
        (3, 8, 3, 1, 2, 2),
        (3, 8, 5, 2, 1, 1),
        (3, 8, 3, 2, 2, 1),
    ],
)
def test_acs_operator_equals_a_3d_convolution_with_planar_kernels(cin, cout, k, stride, padding, dilation):
    torch.manual_seed(k * 10 + stride)
    conv = ACSConv3d(cin, cout, k, stride=stride, padding=padding, dilation=dilation, bias=True)
    with torch.no_grad():
        conv.bias.normal_()
    assert tuple(conv.weight.shape) == (cout, cin, k, k)  # the 2D kernel itself is the parameter
    for shape in [(9, 10, 11), (12, 7, 16)]:
        x = torch.randn(2, cin, *shape)
        ref = planar_reference(x, conv.weight.detach(), conv.bias.detach(), k, stride, padding, dilation)
        got = conv(x)
        assert got.shape == ref.shape
        torch.testing.assert_close(got, ref, atol=2e-5, rtol=1e-5)


def test_acs_split_and_views_in_the_ras_grid():
    assert acs_split(64) == (22, 21, 21) and acs_split(8) == (3, 3, 2) and acs_split(3) == (1, 1, 1)
    # an impulse shows each group's kernel footprint: group 0 sagittal (1,k,k), 1 coronal (k,1,k), 2 axial (k,k,1)
    conv = ACSConv3d(1, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(1.0)
        x = torch.zeros(1, 1, 7, 7, 7)
        x[0, 0, 3, 3, 3] = 1.0
        y = conv(x)[0]
    spans = [tuple(int(v) for v in (y[g] != 0).nonzero().amax(0) - (y[g] != 0).nonzero().amin(0) + 1) for g in range(3)]
    assert spans == [(1, 3, 3), (3, 1, 3), (3, 3, 1)]
    with pytest.raises(ValueError, match="odd"):
        ACSConv3d(1, 3, 2)


@pytest.mark.parametrize("shape", [(32, 32, 32), (48, 40, 33)])
def test_shapes_and_forward_equals_head_of_pooled_features(shape):
    torch.manual_seed(0)
    model = build_model("acs_resnet18", num_classes=3, widths=WIDTHS, dropout=0.2)
    model.train()
    model(torch.randn(2, 1, *shape))  # non-trivial BatchNorm statistics
    model.eval()
    fine = build_model("acs_resnet18", widths=WIDTHS, stem_pool=False).eval()
    x = torch.randn(2, 1, *shape)
    with torch.no_grad():
        feats = model.features(x)
        logits = model(x)
        again = model.head(torch.flatten(F.adaptive_avg_pool3d(feats, 1), 1))
        fine_feats = fine.features(x)
    assert feats.shape == (2, 64, *(-(-s // 32) for s in shape))  # stride 32 (ceil), axis order kept
    assert fine_feats.shape == (2, 64, *(-(-s // 16) for s in shape))  # without the stem max-pool: 16
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    torch.testing.assert_close(logits, again, atol=1e-5, rtol=1e-5)
    assert not hasattr(model, "pool_features")  # global average pooling: the fast default Grad-CAM applies


def test_registered_and_parameter_count():
    assert "acs_resnet18" in ARCHITECTURES
    model = build_model("acs_resnet18")
    assert isinstance(model, ACSResNet)
    # torchvision resnet18 has 11,689,512 parameters: minus its fc (513,000), minus 2 x 64 x 7 x 7 for the
    # one-channel stem, plus a 2-class fc (1,026)
    assert count_parameters(model) == 11_689_512 - 513_000 - 2 * 64 * 49 + 1_026 == 11_171_266
    names_2d = {k for k in resnet18_2d().state_dict() if not k.startswith("fc.")}
    assert names_2d == {k for k in model.state_dict() if not k.startswith("fc.")}  # torchvision's names
    with pytest.raises(BundleError, match="acs_resnet18"):
        build_model("acs_resnet18", widths=[8, 16, 32])


@pytest.fixture(scope="module")
def weights_2d(tmp_path_factory):
    folder = tmp_path_factory.mktemp("acs_w2d")
    return write_2d_weights(folder), folder


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_2d_weights_map_one_to_one_into_acs_kernels(weights_2d, suffix):
    state, folder = weights_2d
    torch.manual_seed(1)
    model = build_model("acs_resnet18", widths=WIDTHS)
    fc_before = model.fc.weight.detach().clone()
    report = load_pretrained_weights(model, str(folder / f"resnet18_2d{suffix}"), arch="acs_resnet18")
    own = model.state_dict()
    assert torch.equal(own["conv1.weight"], state["conv1.weight"].sum(1, keepdim=True))  # RGB summed
    for key in (
        "layer1.0.conv1.weight",
        "layer2.0.downsample.0.weight",
        "layer3.1.conv2.weight",
        "layer4.1.bn2.weight",
        "layer4.1.bn2.running_var",
        "layer2.0.downsample.1.running_mean",
        "bn1.num_batches_tracked",
    ):
        assert torch.equal(own[key], state[key]), key
    assert sorted(report.dropped_head) == ["fc.bias", "fc.weight"] and report.unexpected == []
    assert report.missing == ["fc.bias", "fc.weight"] and len(report.loaded) == len(state) - 2
    assert torch.equal(model.fc.weight, fc_before) and model.fc.out_features == 2  # head stays random

    # what the 1:1 mapping means: on a volume whose axial slices are all the same grey image g, the axial
    # group of the ACS stem (group 2, kernels k x k x 1) gives in every slice exactly the 2D network's stem
    # response to the RGB image (g, g, g)
    g = torch.randn(1, 1, 24, 20)
    vol = g[..., None].expand(1, 1, 24, 20, 9)
    with torch.no_grad():
        ref = F.conv2d(g.expand(1, 3, 24, 20), state["conv1.weight"], stride=2, padding=3)
        acs = model.conv1(vol)
    n0, n1, _ = acs_split(WIDTHS[0])
    for z in (2, 3):  # interior slices (padding along z does not reach them)
        torch.testing.assert_close(acs[0, n0 + n1 :, :, :, z], ref[0, n0 + n1 :], atol=1e-4, rtol=1e-4)


def test_stem_adaptation_for_other_channel_counts():
    w = torch.randn(4, 3, 7, 7)
    assert torch.equal(adapt_stem_weight(w, 3), w)
    torch.testing.assert_close(adapt_stem_weight(w, 1), w.sum(1, keepdim=True))
    two = adapt_stem_weight(w, 2)  # same response to an image constant over channels
    torch.testing.assert_close(two.sum(1), w.sum(1))


def test_wrong_weight_files_are_refused_in_one_line(tmp_path, weights_2d):
    state, _ = weights_2d
    medicalnet = {f"module.{k}": v for k, v in build_model("resnet10", widths=WIDTHS).state_dict().items()}
    torch.save({"state_dict": medicalnet}, tmp_path / "resnet_10.pth")
    with open(tmp_path / "pickled_object.pth", "wb") as f:
        pickle.dump({"conv1.weight": Path("/etc/passwd")}, f, protocol=2)  # an object, not tensors
    torch.save({"weights": torch.nn.Linear(2, 2)}, tmp_path / "pickled_module.pth")
    deeper = dict(state, **{"layer1.2.conv1.weight": state["layer1.1.conv1.weight"]})  # a ResNet-34-like file
    torch.save(deeper, tmp_path / "resnet34ish.pth")
    partial = {k: v for k, v in state.items() if not k.startswith("layer4.1.")}
    save_file({k: v.contiguous() for k, v in partial.items()}, str(tmp_path / "partial.safetensors"))
    torch.save(resnet18_2d(widths=(16, 32, 64, 128)).state_dict(), tmp_path / "wider.pth")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path / "garbage.pth").write_bytes(b"not a zip file at all")
    model = build_model("acs_resnet18", widths=WIDTHS)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cases = {
        "resnet_10.pth": "3D checkpoint",
        "pickled_object.pth": "not a PyTorch weights file|refused",
        "pickled_module.pth": "refused",
        "resnet34ish.pth": "does not.*layer1.2",
        "partial.safetensors": "lacks 10 ResNet-18 tensors",
        "wider.pth": "wrong architecture",
        "garbage.safetensors": "safetensors",
        "garbage.pth": "not a PyTorch weights file",
        "absent.pth": "not found",
    }
    for name, match in cases.items():
        with pytest.raises(BundleError, match=match) as exc:
            load_pretrained_weights(model, str(tmp_path / name), arch="acs_resnet18")
        assert "\n" not in str(exc.value) and name in str(exc.value), str(exc.value)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # a refused file changes nothing


@pytest.mark.parametrize("centre", [(16, 48, 32), (48, 16, 48)])
def test_gradcam_through_predict_peaks_at_a_constructed_lesion(tmp_path, centre):
    bundle = blob_bundle(tmp_path / "acs", "acs_resnet18", {"widths": WIDTHS, "stem_pool": False})
    vol = blob_volume(64, centre)
    result = predict(bundle, vol, np.eye(4), tta=True, cam=True)
    assert result.cam.shape == vol.shape and result.cam_network.shape == (64, 64, 64)
    assert result.probability > 0.5 and set(result.view_probabilities) == {"identity", "flip_x"}
    peak = np.array(np.unravel_index(np.argmax(result.cam), vol.shape))
    # a 4^3 feature grid (stride 16): the peak is the cell holding the ball, within half a cell or so
    assert np.abs(peak - np.array(centre)).max() <= 8, peak
    far = tuple(63 - c for c in centre)
    assert result.cam[far] < 0.3 * result.cam.max()
    # and on an oblique, anisotropic input the map still comes back on the input's own grid
    head = make_head_volume((40, 48, 36))
    oblique = predict(bundle, head, example_affine(), tta=False, cam=True)
    assert oblique.cam.shape == head.shape and oblique.cam.min() >= 0 and oblique.cam.max() <= 1 + 1e-6


def test_tiny_cv_run_through_the_cli_with_2d_weights(tmp_path):
    folder = tmp_path / "w2d"
    write_2d_weights(folder, widths=TINY_WIDTHS)
    cohort = write_cohort(tmp_path / "cohort", n_subjects=8)
    out = tmp_path / "run"
    args = tiny_cli_args(
        cohort,
        out,
        tmp_path / "cache",
        "--arch",
        "acs_resnet18",
        "--size",
        "32",
        "--folds",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--pretrained",
        str(folder / "resnet18_2d.pth"),
    )
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["arch"] == "acs_resnet18" and config["arch_params"] == {"widths": TINY_WIDTHS}
    assert config["pretrained"].endswith("resnet18_2d.pth")
    fold = json.loads((out / "fold_0" / "result.json").read_text())
    assert "loaded" in json.dumps(fold) and "120 tensors loaded" in json.dumps(fold)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["k"] == 2 and len(metrics["per_fold"]) == 2
    bundle = load_bundle(out / "bundle")
    assert bundle.metadata["arch"] == "acs_resnet18" and len(bundle.models) == 2
    assert all(isinstance(m, ACSResNet) for m in bundle.models)
    assert "2D ResNet (torchvision layout) initialisation from resnet18_2d.pth" in bundle.provenance
    first = (out / "oof.csv").read_text().splitlines()[1].split(",")
    array, affine = read_volume(first[1])
    result = predict(bundle, array, affine, tta=True, cam=True)
    assert result.cam.shape == array.shape and result.cam_network.shape == (32, 32, 32)
    # the fold model that never saw this volume reproduces its out-of-fold probability
    assert result.model_probabilities[int(first[5])] == pytest.approx(float(first[6]), abs=1e-5)

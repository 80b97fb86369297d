"""Lesion-map supervision (``train --lesion-weight``): the lesion head of ResNet3D ("aux" and "mil"), its
multiple-instance score, the lesion masks (manifest column ``mask_path``: checked, resampled, cached), the
trainer's loss and augmentation of the masks (the command line end to end: test_lesion_training_cli.py).
Real NIfTI files and models."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from GloResNetLib.errors import BundleError, DatasetError
from GloResNetLib.models import build_model
from GloResNetLib.models.lesion_head import MIL_SHARPNESS, mil_score
from GloResNetLib.preprocessing import PreprocessConfig, to_network_grid
from GloResNetLib.training.augment import augment, plan_batch
from GloResNetLib.training.cache import VolumeStore
from GloResNetLib.training.config import TrainConfig
from GloResNetLib.training.distributed import Dist
from GloResNetLib.training.folds import Split
from GloResNetLib.training.lesion_masks import MaskCache, MaskStore
from GloResNetLib.training.lesion_trainer import POS_WEIGHT, LesionFoldTrainer
from GloResNetLib.training.progress import Reporter
from GloResNetLib.training.run import prepare_dataset
from GloResNetLib.training.stopping import StopSignal
from training_fixtures import TINY_WIDTHS, make_volume, read_manifest_rows, save_nifti, tiny_config, write_manifest

#: manifest columns of the lesion cohorts
MASK_COLUMNS = ("path", "label", "subject", "mask_path")
#: intensity above which a fixture volume's voxel belongs to the BI blob (head <= ~550, blob peak ~1300)
BLOB_THRESHOLD = 800.0
#: a flipped, shifted voxel-to-world matrix, so that the masks must be reoriented like their scans
FLIPPED = np.array([[-1.0, 0, 0, 10.0], [0, 1.0, 0, -5.0], [0, 0, 1.0, 2.0], [0, 0, 0, 1.0]])


def write_lesion_cohort(root: Path, n_subjects: int = 8, seed: int = 0, unmasked_bi: int = 0) -> Path:
    """Scans (labels alternating 0/1, every other one with :data:`FLIPPED` axes) and ``manifest.csv`` with a
    ``mask_path`` column: each BI scan gets a mask of its blob, except the last ``unmasked_bi`` BI scans."""
    rng = np.random.default_rng(seed)
    rows = []
    bi_rows = [s for s in range(n_subjects) if s % 2 == 1]
    unmasked = set(bi_rows[len(bi_rows) - unmasked_bi :]) if unmasked_bi else set()
    for s in range(n_subjects):
        label = s % 2
        affine = FLIPPED if s % 4 >= 2 else np.eye(4)
        vol = make_volume(rng, label)
        rel = f"images/sub{s:02d}.nii.gz"
        save_nifti(root / rel, vol, affine)
        mask_rel = ""
        if label == 1 and s not in unmasked:
            mask_rel = f"masks/sub{s:02d}_lesion.nii.gz"
            save_nifti(root / mask_rel, (vol > BLOB_THRESHOLD).astype(np.uint8), affine)
        rows.append({"path": rel, "label": label, "subject": f"sub{s:02d}", "mask_path": mask_rel})
    return write_manifest(root / "manifest.csv", rows, columns=MASK_COLUMNS)


def tiny(arch_head: str, seed: int = 0) -> torch.nn.Module:
    """A tiny ResNet-10 with a lesion head on layer1 (eval mode)."""
    torch.manual_seed(seed)
    return build_model("resnet10", 2, widths=TINY_WIDTHS, cam_layer="layer1", lesion_head=arch_head).eval()


# ---------------------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("head", ["aux", "mil"])
def test_forward_with_lesion_map_matches_forward(head: str) -> None:
    """The lesion pass gives the classifier's logits and a (B, 1, X/4, Y/4, Z/4) map; "mil"'s BI logit
    difference is the soft maximum of that map plus its bias."""
    model = tiny(head)
    x = torch.randn(3, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, lesion = model.forward_with_lesion_map(x)
        plain = model(x)
    assert logits.shape == (3, 2) and lesion.shape == (3, 1, 8, 8, 8)
    torch.testing.assert_close(logits, plain, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(lesion).all() and lesion.std() > 0
    if head == "mil":
        with torch.no_grad():
            model.mil_bias.fill_(0.7)
            logits, lesion = model.forward_with_lesion_map(x)
        diff = logits[:, 1] - logits[:, 0]
        torch.testing.assert_close(diff, (mil_score(lesion) + model.mil_bias)[:, 0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(model(x), logits, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("levels", [1, 2])
def test_mil_lesion_levels_build_only_the_stages_the_map_reads(levels: int) -> None:
    """``lesion_levels`` 1 (``layer1`` only, the demo's) or 2: a "mil" model builds no stage after those the lesion
    head reads, its map is on layer1's grid, its BI logit is the map's soft maximum, and the map at a voxel
    depends only on the input near it when only layer1 feeds it."""
    torch.manual_seed(0)
    model = build_model("resnet10", 2, widths=TINY_WIDTHS, cam_layer="layer1", lesion_head="mil", lesion_levels=levels)
    model.eval()
    assert model.layer3 is None and (model.layer2 is None) == (levels == 1)
    assert not any(k.startswith(("layer3.", "lesion_head.lateral3")) for k in model.state_dict())
    x = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits, lesion = model.forward_with_lesion_map(x)
        torch.testing.assert_close(model(x), logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(logits[:, 1] - logits[:, 0], mil_score(lesion)[:, 0], rtol=1e-5, atol=1e-6)
        assert lesion.shape == (2, 1, 8, 8, 8)
        if levels == 1:  # a change in one corner leaves the map beyond the receptive field (~29 voxels) unchanged
            big = torch.randn(1, 1, 64, 64, 64, generator=torch.Generator().manual_seed(2))
            changed = big.clone()
            changed[:, :, :6, :6, :6] += 5.0
            _, far = model.forward_with_lesion_map(big)
            _, far2 = model.forward_with_lesion_map(changed)
            assert torch.equal(far2[..., -3:, -3:, -3:], far[..., -3:, -3:, -3:])
            assert not torch.equal(far2[..., :1, :1, :1], far[..., :1, :1, :1])
    with pytest.raises(BundleError, match="lesion_levels"):
        build_model("resnet10", 2, widths=TINY_WIDTHS, cam_layer="layer1", lesion_head="mil", lesion_levels=4)


def test_mil_model_drops_layer4_and_fc() -> None:
    """ "mil" builds no layer4 nor linear head, so it has far fewer parameters than "aux"."""
    aux, mil = tiny("aux"), tiny("mil")
    assert aux.layer4 is not None and aux.fc is not None
    assert mil.layer4 is None and mil.fc is None
    assert not any(k.startswith(("layer4.", "fc.")) for k in mil.state_dict())
    n_aux = sum(p.numel() for p in aux.parameters())
    n_mil = sum(p.numel() for p in mil.parameters())
    n_layer4 = sum(p.numel() for p in aux.layer4.parameters())
    assert n_aux - n_mil == n_layer4 + sum(p.numel() for p in aux.fc.parameters()) - 1  # + mil_bias
    assert n_mil < 0.5 * n_aux


def test_aux_head_adds_only_lesion_head_parameters() -> None:
    """An "aux" head adds ``lesion_head.*`` entries and keeps every other entry's name and shape."""
    plain = build_model("resnet10", 2, widths=TINY_WIDTHS, lesion_head=False).state_dict()
    aux = build_model("resnet10", 2, widths=TINY_WIDTHS, lesion_head="aux").state_dict()
    assert set(plain) < set(aux) and all(k.startswith("lesion_head.") for k in set(aux) - set(plain))
    assert all(aux[k].shape == plain[k].shape for k in plain)


def test_aux_head_leaves_classifier_initialisation_unchanged() -> None:
    """With the same seed, a model with an "aux" head starts with the same backbone and classifier weights
    as one without, and so classifies identically (the lesion-map loss is then the only difference)."""
    torch.manual_seed(3)
    plain = build_model("resnet10", 2, widths=TINY_WIDTHS, lesion_head=False).eval()
    torch.manual_seed(3)
    aux = build_model("resnet10", 2, widths=TINY_WIDTHS, lesion_head="aux").eval()
    ps, ax = plain.state_dict(), aux.state_dict()
    differ = [k for k in ps if not torch.equal(ax[k], ps[k])]
    assert differ == []
    x = torch.randn(2, 1, 32, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(aux(x), plain(x), rtol=0, atol=0)


def test_bad_lesion_head_settings_are_refused() -> None:
    """ "mil" needs cam_layer layer1 (and 2 classes); unknown modes are refused; no head: no lesion map."""
    with pytest.raises(BundleError, match="layer1"):
        build_model("resnet10", 2, lesion_head="mil")
    with pytest.raises(BundleError, match="2 classes"):
        build_model("resnet10", 3, widths=TINY_WIDTHS, cam_layer="layer1", lesion_head="mil")
    with pytest.raises(BundleError, match="bogus"):
        build_model("resnet10", 2, lesion_head="bogus")
    plain = build_model("resnet10", 2, widths=TINY_WIDTHS).eval()
    with pytest.raises(ValueError, match="no lesion head"):
        plain.forward_with_lesion_map(torch.zeros(1, 1, 16, 16, 16))


# ------------------------------------------------------------------------------------------------- mil_score


def test_mil_score_is_a_smooth_maximum() -> None:
    """mil_score = (logsumexp(r l) - log N) / r: the formula (in numpy), a constant map, the r -> inf limit."""
    rng = np.random.default_rng(0)
    lesion = rng.normal(0, 2, (3, 1, 4, 5, 6))
    r = MIL_SHARPNESS
    flat = lesion.reshape(3, -1)
    top = flat.max(1, keepdims=True)
    expected = top[:, 0] + (np.log(np.exp(r * (flat - top)).sum(1)) - np.log(flat.shape[1])) / r
    got = mil_score(torch.from_numpy(lesion))
    assert got.shape == (3, 1)
    np.testing.assert_allclose(got[:, 0].numpy(), expected, rtol=1e-5)
    assert (got[:, 0].numpy() <= flat.max(1) + 1e-6).all() and (got[:, 0].numpy() >= flat.mean(1) - 1e-6).all()
    const = torch.full((2, 1, 3, 3, 3), -1.25)
    torch.testing.assert_close(mil_score(const), torch.full((2, 1), -1.25))
    sharp = mil_score(torch.from_numpy(lesion), sharpness=1e4)[:, 0].numpy()
    np.testing.assert_allclose(sharp, flat.max(1), atol=math.log(flat.shape[1]) / 1e4 + 1e-4)


# ---------------------------------------------------------------------------------------------- lesion masks


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A masked cohort of 8 scans (4 BI, the last without mask) and a scan cache folder."""
    root = tmp_path_factory.mktemp("lesion")
    manifest = write_lesion_cohort(root / "cohort", n_subjects=8, unmasked_bi=1)
    return {"root": root, "manifest": manifest, "cache": root / "cache"}


def masked_config(manifest: Path, root: Path, cache: Path, **kw: Any) -> TrainConfig:
    """A tiny configuration training a lesion map."""
    return tiny_config(manifest, root / "run", cache, folds=2, batch_size=4, lesion_weight=kw.pop("w", 1.0), **kw)


def test_prepare_masks_resamples_like_the_scans(cohort: dict) -> None:
    """Each mask is the scan-grid mask brought onto the network grid like its scan; no mask: zeros; known =
    a mask or label 0; the BI scan without a mask is noted."""
    cfg = masked_config(cohort["manifest"], cohort["root"], cohort["cache"])
    report, keys, cache, masks = prepare_dataset(cfg)
    assert not report.problems and isinstance(masks, MaskStore)
    assert len(masks) == len(keys) == len(report.samples) == 8
    rows = read_manifest_rows(cohort["manifest"])
    base = cohort["manifest"].parent
    pre = PreprocessConfig(size=(16, 16, 16))
    expected_known = [r["label"] == "0" or bool(r["mask_path"]) for r in rows]
    assert masks.known.tolist() == expected_known and expected_known.count(False) == 1
    assert any("1 BI scan(s) have no lesion mask" in n for n in report.notes)
    for i, (row, sample) in enumerate(zip(rows, report.samples)):
        got = masks[i]
        assert got.shape == (16, 16, 16) and got.dtype == np.float32
        if not row["mask_path"]:
            assert sample.mask_path is None and not got.any()
            continue
        assert sample.mask_path == (base / row["mask_path"]).resolve()
        img = nib.load(str(base / row["mask_path"]))
        ref = to_network_grid((np.asarray(img.dataobj) > 0).astype(np.float32), img.affine, pre)
        np.testing.assert_allclose(got, np.clip(ref, 0, 1), atol=1e-6)
        assert got.min() >= 0 and got.max() <= 1 and got.max() > 0.5
        # the mask lies on the blob of the network input, whatever the scan's axis order
        scan = cache.load(keys[i])
        assert scan[got > 0.5].mean() > scan[got == 0].mean() + 2.0


def test_bad_masks_are_problems_of_their_scans(tmp_path: Path) -> None:
    """A mask of another shape and a mask shifted by 1 mm are "bad lesion mask" problems naming the file;
    the other scans keep their masks."""
    manifest = write_lesion_cohort(tmp_path / "cohort", n_subjects=8)
    rows = read_manifest_rows(manifest)
    base = manifest.parent
    wrong_shape, shifted = rows[1]["mask_path"], rows[3]["mask_path"]
    save_nifti(base / wrong_shape, np.zeros((20, 20, 18), np.uint8))
    img = nib.load(str(base / shifted))
    moved = img.affine.copy()
    moved[0, 3] += 1.0
    save_nifti(base / shifted, np.asarray(img.dataobj), moved)
    cfg = masked_config(manifest, tmp_path, tmp_path / "cache")
    report, keys, _, masks = prepare_dataset(cfg)
    bad = [p for p in report.problems if p.kind == "bad lesion mask"]
    assert len(bad) == len(report.problems) == 2
    messages = sorted(p.message for p in bad)
    assert any(Path(wrong_shape).name in m and "shape" in m for m in messages), messages
    assert any(Path(shifted).name in m and "voxel-to-world" in m for m in messages), messages
    assert {p.where for p in bad} == {f"row 3 ({rows[1]['path']})", f"row 5 ({rows[3]['path']})"}
    assert len(report.samples) == len(keys) == len(masks) == 6
    assert all(
        s.mask_path is None or s.mask_path.name not in (Path(wrong_shape).name, Path(shifted).name)
        for s in report.samples
    )
    with pytest.raises(DatasetError, match="lesion mask"):
        report.raise_if_problems()


def test_a_mask_shared_by_two_scans_is_a_problem(tmp_path: Path) -> None:
    """A mask belongs to one scan (it is checked against and keyed by it): a second row naming the same mask
    is a "bad lesion mask" problem of that row; the first keeps it."""
    manifest = write_lesion_cohort(tmp_path / "cohort", n_subjects=8)
    rows = read_manifest_rows(manifest)
    masked = [i for i, r in enumerate(rows) if r["mask_path"]]
    first, second = masked[0], masked[1]
    rows[second]["mask_path"] = rows[first]["mask_path"]
    write_manifest(manifest, rows, columns=MASK_COLUMNS)
    report, keys, _, masks = prepare_dataset(masked_config(manifest, tmp_path, tmp_path / "cache"))
    bad = [p for p in report.problems if p.kind == "bad lesion mask"]
    assert len(bad) == 1 and "also the mask of" in bad[0].message
    assert bad[0].where == f"row {second + 2} ({rows[second]['path']})"
    assert len(report.samples) == len(keys) == len(masks) == len(rows) - 1


def test_no_mask_column_is_a_dataset_error(tmp_path: Path) -> None:
    """--lesion-weight on a manifest without masks is refused before training."""
    manifest = write_lesion_cohort(tmp_path / "cohort", n_subjects=6)
    write_manifest(manifest, read_manifest_rows(manifest), columns=("path", "label", "subject"))
    with pytest.raises(DatasetError, match="no scan has one"):
        prepare_dataset(masked_config(manifest, tmp_path, tmp_path / "cache"))
    _, _, _, masks = prepare_dataset(masked_config(manifest, tmp_path, tmp_path / "cache", w=0.0))
    assert masks is None


def test_mask_cache_key_follows_the_scan(tmp_path: Path) -> None:
    """A mask's cache key holds its scan's content: new scan bytes give a new mask key (the mask is checked
    again), unchanged scans keep theirs."""
    manifest = write_lesion_cohort(tmp_path / "cohort", n_subjects=6)
    cfg = masked_config(manifest, tmp_path, tmp_path / "cache")
    _, _, _, before = prepare_dataset(cfg)
    rows = read_manifest_rows(manifest)
    scan = manifest.parent / rows[1]["path"]
    img = nib.load(str(scan))
    save_nifti(scan, np.asarray(img.dataobj) + 1.0, img.affine)  # same grid, new bytes
    _, _, _, after = prepare_dataset(cfg)
    masked = [i for i, r in enumerate(rows) if r["mask_path"]]
    assert after.keys[1] != before.keys[1] and before.keys[1] is not None
    assert all(after.keys[i] == before.keys[i] for i in masked if i != 1)
    # the key is the mask cache's own: same mask, different scan hash -> different key
    mask = (manifest.parent / rows[1]["mask_path"]).resolve()
    cache = MaskCache(tmp_path / "cache", PreprocessConfig(size=(16, 16, 16)), {str(mask): scan.resolve()}, {})
    k1 = cache.key_for(mask)
    cache.scan_hashes = {str(scan.resolve()): "0" * 64}
    assert cache.key_for(mask) != k1 and k1 == after.keys[1]


# ----------------------------------------------------------------------------------------- trainer: loss path


@pytest.fixture(scope="module")
def trainer(cohort: dict, tmp_path_factory: pytest.TempPathFactory) -> LesionFoldTrainer:
    """A built LesionFoldTrainer (fold 0, aux head, lesion weight 5) on the masked cohort."""
    cfg = masked_config(cohort["manifest"], cohort["root"], cohort["cache"], w=5.0, affine_degrees=10.0)
    report, keys, cache, masks = prepare_dataset(cfg)
    n = len(report.samples)
    split = Split(0, train=np.arange(n), val=np.arange(2), test=np.arange(2, 4))
    run_dir = tmp_path_factory.mktemp("trainer_run")
    t = LesionFoldTrainer(
        cfg,
        split,
        VolumeStore(cache, keys),
        report.labels,
        Dist(),
        run_dir,
        Reporter(enabled=False),
        StopSignal(),
        0,
        report.samples,
        masks=masks,
    )
    t._build()
    t.net.eval()  # deterministic BatchNorm for the comparisons
    return t


def test_lesion_loss_is_class_loss_plus_weighted_bce(trainer: LesionFoldTrainer) -> None:
    """Per-sample loss = class-weighted soft CE + lesion_weight * known * mean BCE(map, max-pooled mask,
    pos_weight 10), computed here independently; a BI scan without mask gets the class loss only."""
    n = len(trainer.labels)
    bidx = np.arange(n)
    pos = np.arange(n)
    plan = plan_batch(np.random.default_rng(0), n, mixup_alpha=0.0, flip_prob=0.5)
    x, (y, m, known) = trainer._inputs(bidx, pos, plan)
    with torch.no_grad():
        logits, lesion = trainer.net(x)
        loss = trainer._per_sample_loss((logits, lesion), (y, m, known)).numpy().astype(np.float64)
    assert lesion.shape == (n, 1, 4, 4, 4) and m.shape == (n, 1, 16, 16, 16)
    lg = logits.double().numpy()
    logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
    onehot = np.eye(2)[trainer.labels]
    ce = -(onehot * trainer.cw[None, :] * logp).sum(1)
    target = m.double().numpy().reshape(n, 4, 4, 4, 4, 4, 4).max(axis=(2, 4, 6))
    z = lesion.double().numpy()[:, 0]
    log_sig, log_one_minus = -np.logaddexp(0, -z), -np.logaddexp(0, z)
    bce = -(POS_WEIGHT * target * log_sig + (1 - target) * log_one_minus).reshape(n, -1).mean(1)
    expected_known = np.array([s.mask_path is not None or s.label == 0 for s in trainer.samples], float)
    np.testing.assert_array_equal(known.numpy(), expected_known)
    np.testing.assert_allclose(loss, ce + trainer.cfg.lesion_weight * expected_known * bce, rtol=1e-4, atol=1e-5)
    assert (bce > 0).all() and (target.reshape(n, -1).max(1) > 0).sum() == int(expected_known.sum()) - n // 2
    unknown = np.flatnonzero(expected_known == 0)
    assert len(unknown) == 1
    np.testing.assert_allclose(loss[unknown], ce[unknown], rtol=1e-5)


def test_masks_are_augmented_with_their_scans(trainer: LesionFoldTrainer) -> None:
    """The masks go through the same per-position flips, affines and mixup as the scans."""
    n = len(trainer.labels)
    bidx = np.random.default_rng(1).permutation(n)
    rng = np.random.default_rng(5)
    plan = plan_batch(rng, n, mixup_alpha=0.0, flip_prob=1.0)
    pos = np.array([3, 0, 5])
    m = trainer._masks(bidx[pos], pos, plan)
    raw_masks = trainer.masks.batch(bidx[pos])
    np.testing.assert_array_equal(m[:, 0].numpy(), raw_masks[:, ::-1])
    x, (_, m2, _) = trainer._inputs(bidx, pos, plan)
    np.testing.assert_array_equal(x[:, 0].numpy(), trainer.store.batch(bidx[pos])[:, ::-1])
    np.testing.assert_array_equal(m2.numpy(), m.numpy())
    # mixed flips, small rotations and mixup: the mask of each position is transformed like its scan
    plan = plan_batch(np.random.default_rng(7), n, mixup_alpha=1.0, flip_prob=0.5, affine_degrees=10.0)
    assert plan.flips.any() and not plan.flips.all() and plan.mixing
    pos = np.arange(n)
    x, (_, m, known) = trainer._inputs(bidx, pos, plan)

    def aug(arr: np.ndarray, at: np.ndarray) -> torch.Tensor:
        return augment(torch.from_numpy(arr).unsqueeze(1), plan.flips[at], plan.thetas[at])

    partners = plan.perm[pos]
    lam = plan.lam
    expect_x = lam * aug(trainer.store.batch(bidx), pos) + (1 - lam) * aug(
        trainer.store.batch(bidx[partners]), partners
    )

    # with an affine the masks are resampled on a grid half as fine (max-pooled first): the loss max-pools
    # them onto the lesion map's grid (a quarter of the input's here) anyway
    def aug_mask(arr: np.ndarray, at: np.ndarray) -> torch.Tensor:
        coarse = F.max_pool3d(torch.from_numpy(arr).unsqueeze(1), 2, ceil_mode=True)
        return augment(coarse, plan.flips[at], plan.thetas[at])

    expect_m = lam * aug_mask(trainer.masks.batch(bidx), pos) + (1 - lam) * aug_mask(
        trainer.masks.batch(bidx[partners]), partners
    )
    assert m.shape[2:] == tuple(n // 2 for n in x.shape[2:])
    torch.testing.assert_close(x, expect_x, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m, expect_m, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(
        known.numpy(), (trainer.masks.known[bidx] & trainer.masks.known[bidx[partners]]).astype(np.float32)
    )
    # a mask follows its own scan: the flipped blob lies where the flipped scan is bright
    one = plan_batch(np.random.default_rng(0), n, mixup_alpha=0.0, flip_prob=1.0)
    i = int(np.flatnonzero(trainer.masks.known & (trainer.labels == 1))[0])
    xi, (_, mi, _) = trainer._inputs(np.array([i]), np.array([0]), one)
    sel = mi[0, 0] > 0.5
    assert sel.any() and float(xi[0, 0][sel].mean()) > float(xi[0, 0][~sel].mean()) + 2.0

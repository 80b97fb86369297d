"""Synthetic neonatal T2w cohort generator: geometry, reproducibility, lesions, contrast, files, CLI."""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from GloResNetLib import synth
from GloResNetLib.errors import InputError
from scipy.ndimage import map_coordinates

SMALL = 40  # max_dim for fast tests (voxels of about 3-4 mm)


def _read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def _read_manifest(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert tuple(reader.fieldnames) == synth.MANIFEST_COLUMNS
        return list(reader)


def test_random_geometry_affines_and_orientations():
    codes, shapes = set(), set()
    for seed in range(14):
        img, affine, mask, info = synth.synth_volume(seed, age_weeks=28 + seed, max_dim=SMALL)
        assert img.dtype == np.float32 and img.ndim == 3 and np.all(np.isfinite(img)) and img.min() >= 0
        assert img.shape == tuple(info["shape"]) == mask.shape == info["labels"].shape
        assert max(img.shape) <= SMALL
        assert mask.dtype == np.uint8 and mask.sum() == 0  # healthy
        np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), info["voxel_size"], rtol=1e-6)
        assert abs(np.linalg.det(affine[:3, :3])) > 0
        code = "".join(nib.aff2axcodes(affine))
        assert code == info["orientation"]  # also for slightly oblique grids
        codes.add(code)
        shapes.add(img.shape)
    assert "RAS" in codes and len(codes - {"RAS"}) >= 2  # LPS, permuted axes... occur
    assert len(shapes) > 5


def test_explicit_geometry_and_anisotropic_voxels():
    img, affine, _, info = synth.synth_volume(
        1, 32, shape=(30, 36, 20), voxel_size=(0.8, 0.8, 1.2), orientation="PSR", rotation_deg=(2, -3, 4)
    )
    assert img.shape == (30, 36, 20)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), [0.8, 0.8, 1.2])
    assert nib.aff2axcodes(affine) == ("P", "S", "R")
    # the matrix cap enlarges voxels but keeps isotropic voxels isotropic
    _, affine, _, info = synth.synth_volume(2, 40, voxel_size=0.5, max_dim=32)
    sizes = np.linalg.norm(affine[:3, :3], axis=0)
    assert np.ptp(sizes) < 1e-9 and sizes[0] > 0.5 and max(info["shape"]) <= 32


def test_same_seed_same_arrays_different_seed_differs():
    a = synth.synth_volume(3, 34, ("pwml", "ivh"), max_dim=SMALL)
    b = synth.synth_volume(3, 34, ("pwml", "ivh"), max_dim=SMALL)
    c = synth.synth_volume(4, 34, ("pwml", "ivh"), max_dim=SMALL)
    assert a[0].tobytes() == b[0].tobytes()
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(a[3]["labels"], b[3]["labels"])
    assert a[0].shape != c[0].shape or not np.array_equal(a[0], c[0])
    gen = synth.synth_volume(np.random.default_rng(5), 40, max_dim=24)[0]
    assert gen.tobytes() == synth.synth_volume(np.random.default_rng(5), 40, max_dim=24)[0].tobytes()


@pytest.mark.parametrize("injury", synth.INJURY_TYPES)
@pytest.mark.parametrize("difficulty", [0.0, 1.0])
def test_lesion_masks_inside_brain(injury, difficulty):
    for seed in range(3):
        img, _, mask, info = synth.synth_volume(seed, 30 + 5 * seed, (injury,), difficulty=difficulty, max_dim=SMALL)
        brain = info["brain_mask"].astype(bool)
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert mask.sum() > 0, (injury, seed)
        assert not np.any(mask.astype(bool) & ~brain)
        assert brain.sum() > 20 * mask.sum() or injury == "phvd"


def test_difficulty_scales_lesions():
    easy = synth.synth_volume(11, 38, ("pwml", "cpvl"), difficulty=0.0, max_dim=64, noise=False)[2].sum()
    hard = synth.synth_volume(11, 38, ("pwml", "cpvl"), difficulty=1.0, max_dim=64, noise=False)[2].sum()
    assert easy > 2 * hard > 0
    easy = synth.synth_volume(12, 38, ("phvd",), difficulty=0.0, max_dim=48, noise=False)[2].sum()
    hard = synth.synth_volume(12, 38, ("phvd",), difficulty=1.0, max_dim=48, noise=False)[2].sum()
    assert easy > 2 * hard > 0


def test_diffuse_component_is_independent_of_the_label():
    """The diffuse white-matter change (not in the lesion mask) comes with healthy and injured brains alike,
    so that it is no label cue; the same seed gives the same draw whatever the injuries."""

    def diffuse(seed, injuries):
        return synth.synth_volume(seed, 40, injuries, max_dim=12, noise=False, bias=False)[3]["diffuse_injury"]

    healthy = [diffuse(seed, ()) for seed in range(16)]
    injured = [diffuse(seed, ("pwml",)) for seed in range(16)]
    assert [h > 0 for h in healthy] == [i > 0 for i in injured]
    assert 0 < sum(h > 0 for h in healthy) < len(healthy)


@pytest.mark.parametrize("age", [29.0, 41.0])
def test_neonatal_t2_contrast(age):
    img, _, _, info = synth.synth_volume(6, age, max_dim=72, noise=False, bias=False)
    lab = info["labels"]

    def mean(*labels):  # the median: thin layers (extra-axial CSF) are partial-volumed at 2-3 mm voxels
        return float(np.median(img[np.isin(lab, labels)]))

    csf, wm = mean(synth.CSF, synth.VENTRICLE), mean(synth.WM)
    cortex, deep = mean(synth.CORTEX), mean(synth.DGM)
    assert csf > wm > cortex
    assert wm > deep
    assert mean(synth.NONBRAIN) < wm
    background = img[lab == 0]
    assert background.size and background.mean() < 0.02 * csf and np.median(background) == 0
    assert set(np.unique(lab)) >= {0, 1, 2, 3, 4, 5, 6, 7, 8}


def test_brain_grows_and_folds_with_age():
    young = synth.synth_volume(9, 28, voxel_size=1.5, orientation="RAS", max_dim=None, noise=False)
    old = synth.synth_volume(9, 42, voxel_size=1.5, orientation="RAS", max_dim=None, noise=False)
    vol_young, vol_old = (v[3]["brain_mask"].sum() for v in (young, old))
    assert vol_old > 1.8 * vol_young
    assert old[3]["head_circumference_cm"] > young[3]["head_circumference_cm"] + 5
    # folding by age: test_synth_anatomy.test_folding_grows_with_age (on the templates, free of voxel size)


@pytest.mark.parametrize("other", ["LPS", "PSR", "ILA"])
def test_storage_order_keeps_world_position(other):
    # isotropic voxels and no storage-axis artefacts (slice profile, ghosting, Gibbs ringing act along the
    # storage axes, as in a scanner): then only the storage order differs
    kwargs = dict(
        age_weeks=36,
        injuries=("pwml",),
        rotation_deg=(3, -2, 4),
        noise=False,
        bias=False,
        voxel_size=2.5,
        max_dim=None,
        artefact_strength=0.0,
    )
    ras_img, ras_aff, ras_mask, _ = synth.synth_volume(7, orientation="RAS", **kwargs)
    img, aff, mask, _ = synth.synth_volume(7, orientation=other, **kwargs)
    assert nib.aff2axcodes(aff) == tuple(other)
    grid = np.meshgrid(*[np.arange(2, n - 2, 3) for n in ras_img.shape], indexing="ij")
    ijk = np.stack(grid).reshape(3, -1)
    world = ras_aff[:3, :3] @ ijk + ras_aff[:3, 3:]
    inv = np.linalg.inv(aff)
    ijk_other = inv[:3, :3] @ world + inv[:3, 3:]
    values = map_coordinates(img, ijk_other, order=1)
    expected = ras_img[tuple(ijk)]
    assert np.abs(values - expected).max() < 1e-3 * expected.max()
    assert np.abs(map_coordinates(mask.astype(float), ijk_other, order=0) - ras_mask[tuple(ijk)]).max() == 0


def test_plan_balance_sessions_and_ages():
    plans = synth.plan_cohort(60, seed=0)
    assert len(plans) == 60
    labels = [p.label for p in plans]
    assert abs(sum(labels) - round(0.42 * 60)) <= 1
    by_subject = defaultdict(list)
    for p in plans:
        by_subject[p.subject].append(p)
        assert 24 <= p.ga_weeks <= 36 and 28 <= p.age_weeks <= 44 and p.age_weeks >= p.ga_weeks
        assert bool(p.injury_types) == bool(p.label)
        assert p.radiology_score in (("1", "2") if p.label == 0 else ("3", "4", "5"))
    twice = [s for s, v in by_subject.items() if len(v) == 2]
    assert 3 <= len(twice) <= 25 and all(len(v) <= 2 for v in by_subject.values())
    for s in twice:
        first, second = by_subject[s]
        assert first.label == second.label and first.injury_types == second.injury_types
        assert second.age_weeks > first.age_weeks and second.ga_weeks == first.ga_weeks
    assert len({p.session for p in plans}) == 60
    for n in (20, 100):
        assert abs(sum(p.label for p in synth.plan_cohort(n, seed=3)) - round(0.42 * n)) <= 1
    assert synth.plan_cohort(60, seed=0) == plans
    assert synth.plan_cohort(60, seed=1) != plans
    # a scan's image depends on its plan entry only, not on the size of the cohort
    small = {(p.subject, p.session): p for p in synth.plan_cohort(10, seed=2)}
    large = {(p.subject, p.session): p for p in synth.plan_cohort(30, seed=2)}
    same = [key for key in small if key in large and small[key] == large[key]]
    assert same
    a = synth.synth_session(small[same[0]], 2, max_dim=24)[0]
    b = synth.synth_session(large[same[0]], 2, max_dim=24)[0]
    assert a.tobytes() == b.tobytes()


def test_generate_cohort_manifest(tmp_path):
    out = tmp_path / "cohort"
    result = synth.generate_cohort(out, n=8, seed=1, max_dim=28)
    assert result.manifest == out / "manifest.csv" and result.n_volumes == 8
    rows = _read_manifest(result.manifest)
    assert len(rows) == 8
    assert {r["label"] for r in rows} <= {"0", "1"} and {r["label"] for r in rows} == {"0", "1"}
    for r in rows:
        image = nib.load(out / r["path"])
        assert image.get_data_dtype() == np.float32 and len(image.shape) == 3
        assert not Path(r["path"]).is_absolute()
        float(r["age_weeks"]), float(r["ga_weeks"])
        if r["label"] == "1":
            assert r["injury_types"] and r["mask_path"]
            mask = nib.load(out / r["mask_path"])
            assert mask.shape == image.shape and np.allclose(mask.affine, image.affine)
            assert mask.get_data_dtype() == np.uint8 and np.asarray(mask.dataobj).sum() > 0
            assert set(r["injury_types"].split("+")) <= set(synth.INJURY_TYPES)
        else:
            assert r["injury_types"] == "" and r["mask_path"] == ""
        header = image.header
        assert header["qform_code"] == 1 and header["sform_code"] == 1
    meta = json.loads((out / "cohort.json").read_text())
    assert meta["seed"] == 1 and meta["n"] == 8 and meta["generator_version"] == synth.GENERATOR_VERSION
    assert "synthetic data, demonstration only, not for clinical use" in json.dumps(meta)
    assert meta["synthetic"] is True and meta["label_rule"] and meta["counts"]["volumes"] == 8
    # same seed -> identical files
    again = synth.generate_cohort(tmp_path / "again", n=8, seed=1, max_dim=28)
    for r in rows:
        assert (out / r["path"]).read_bytes() == (again.out_dir / r["path"]).read_bytes()


def test_bids_layout(tmp_path):
    out = tmp_path / "bids"
    synth.generate_cohort(out, n=7, seed=4, bids=True, max_dim=24, second_session_fraction=0.5)
    root = out / "dhcp"
    participants = _read_tsv(root / "participants.tsv")
    assert list(participants[0]) == ["participant_id", "sex", "birth_age", "birth_weight", "singleton"]
    rows = _read_manifest(out / "manifest.csv")
    labels = {(r["subject"], r["session"]): int(r["label"]) for r in rows}
    scores = Counter()
    n_sessions = 0
    for part in participants:
        sub = part["participant_id"]
        assert part["sex"] in ("male", "female") and 24 <= float(part["birth_age"]) <= 36
        assert float(part["birth_weight"]) > 0
        sessions = _read_tsv(root / f"sub-{sub}" / f"sub-{sub}_sessions.tsv")
        assert list(sessions[0]) == [
            "session_id",
            "scan_age",
            "scan_head_circumference",
            "radiology_score",
            "scan_number",
            "sedation",
        ]
        for ses in sessions:
            n_sessions += 1
            anat = root / f"sub-{sub}" / f"ses-{ses['session_id']}" / "anat"
            stem = f"sub-{sub}_ses-{ses['session_id']}"
            image = anat / f"{stem}_desc-restore_T2w.nii.gz"
            brain = anat / f"{stem}_desc-brain_mask.nii.gz"
            assert image.exists() and brain.exists()
            assert nib.load(brain).shape == nib.load(image).shape
            assert float(ses["scan_age"]) >= float(part["birth_age"])
            assert 15 < float(ses["scan_head_circumference"]) < 45
            score = ses["radiology_score"]
            scores[score] += 1
            key = (sub, ses["session_id"])
            if score == "Q":
                assert key not in labels  # failed QC: image exists but not in the manifest
            else:
                assert labels[key] == (1 if score in ("3", "4", "5") else 0)
                assert score in ("1", "2", "3", "4", "5")
    assert scores["Q"] == 1 and n_sessions == 8 and len(rows) == 7
    assert (root / "dataset_description.json").exists()
    assert all(r["path"].startswith("dhcp/") for r in rows)


def test_bad_arguments_raise_input_error(tmp_path):
    with pytest.raises(InputError):
        synth.generate_cohort(tmp_path / "x", n=1)
    with pytest.raises(InputError):
        synth.generate_cohort(tmp_path / "x", n=4, difficulty=1.5)
    with pytest.raises(InputError):
        synth.generate_cohort(tmp_path / "x", n=4, seed=-1)
    with pytest.raises(InputError):
        synth.plan_cohort(10, bi_fraction=2.0)
    with pytest.raises(InputError):
        synth.synth_volume(0, 40, orientation="RRS")
    with pytest.raises(InputError):
        synth.synth_volume(0, 40, injuries=("stroke",))
    with pytest.raises(InputError):
        synth.synth_volume(0, 70)
    with pytest.raises(InputError):
        synth.synth_volume(0, 40, voxel_size=-1.0)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError):
        synth.generate_cohort(tmp_path / "file", n=4)


def test_quality_fail_volume_is_degraded():
    kwargs = dict(shape=(40, 40, 40), voxel_size=4.0, orientation="RAS", noise=False)
    clean, _, _, info = synth.synth_volume(2, 40, **kwargs)
    bad = synth.synth_volume(2, 40, quality_fail=True, **kwargs)[0]
    background = info["labels"] == 0
    assert bad[background].mean() > 5 * clean[background].mean()  # ghosts outside the head


def test_cli_parser_and_handler(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="gloresnet")
    sub = parser.add_subparsers()
    synth.add_parser(sub)
    args = parser.parse_args(
        [
            "synth",
            "--n",
            "3",
            "--out",
            str(tmp_path / "c"),
            "--seed",
            "2",
            "--difficulty",
            "0.2",
            "--bids",
            "--max-dim",
            "20",
        ]
    )
    assert args.func is synth.run_synth
    assert args.func(args) == 0
    line = capsys.readouterr().out.strip()
    assert "\n" not in line and "3 volumes" in line and "not for clinical use" in line
    assert len(_read_manifest(tmp_path / "c" / "manifest.csv")) == 3
    assert (tmp_path / "c" / "dhcp" / "participants.tsv").exists()

"""Training data: manifest and dHCP readers, the problem report, the cache, folds, metrics, augmentation."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from GloResNetLib.cli import main
from GloResNetLib.errors import DatasetError
from GloResNetLib.preprocessing import PreprocessConfig
from GloResNetLib.training.augment import flip_lr, mixup, one_hot, plan_batch, soft_cross_entropy
from GloResNetLib.training.cache import PreprocessCache
from GloResNetLib.training.config import TrainConfig
from GloResNetLib.training.datasets import load_dataset, read_dhcp, read_manifest
from GloResNetLib.training.folds import make_folds
from GloResNetLib.training.metrics import binary_metrics, summarize
from GloResNetLib.training.run import check_dataset
from training_fixtures import (
    make_volume,
    read_manifest_rows,
    save_nifti,
    tiny_cli_args,
    tiny_config,
    write_cohort,
    write_dhcp_tree,
    write_manifest,
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("cohort"), n_subjects=12)


# ------------------------------------------------------------------------------------------- manifest


def test_manifest_reads_relative_paths_subjects_and_sessions(cohort):
    report = read_manifest(cohort)
    assert not report.problems and report.kind == "manifest"
    assert len(report.samples) == 16 and len(set(report.subjects)) == 12
    assert all(s.path.is_absolute() and s.path.is_file() for s in report.samples)
    assert report.class_counts() == {"no BI": 8, "BI": 8}
    assert report.samples[0].age_weeks == 32.0 and report.samples[1].session == "ses1"
    assert not report.synthetic


def test_every_problem_is_reported_at_once(tmp_path, cohort):
    rows = read_manifest_rows(cohort)
    for r in rows:
        r["path"] = str(cohort.parent / r["path"])
    (tmp_path / "broken.nii.gz").write_bytes(b"this is not a NIfTI file")
    rows[1]["path"] = str(tmp_path / "missing.nii.gz")  # missing file
    rows[2]["path"] = str(tmp_path / "broken.nii.gz")  # unreadable image
    rows[3]["label"] = ""  # missing label
    rows[4]["label"] = "2"  # invalid label
    rows.append(dict(rows[5]))  # duplicate row
    manifest = write_manifest(tmp_path / "bad.csv", rows)
    cfg = tiny_config(manifest, tmp_path / "run", tmp_path / "cache")
    report = check_dataset(cfg)
    kinds = sorted(p.kind for p in report.problems)
    assert kinds == ["duplicate row", "invalid label", "missing file", "missing label", "unreadable image"]
    with pytest.raises(DatasetError) as err:
        report.raise_if_problems()
    text = str(err.value)
    for needle in ("missing.nii.gz", "broken.nii.gz", "row 5", "row 6", "duplicate", "--skip-bad"):
        assert needle in text

    # the CLI: one report on stderr, exit 2, nothing trained
    code = main(tiny_cli_args(manifest, tmp_path / "run", tmp_path / "cache"))
    assert code == 2 and not (tmp_path / "run" / "fold_0").exists()
    # --check-only prints the report and exits 2 too
    assert main(tiny_cli_args(manifest, tmp_path / "run2", tmp_path / "cache", "--check-only")) == 2


def test_skip_bad_trains_on_the_valid_rows_only(tmp_path, cohort):
    rows = read_manifest_rows(cohort)
    for r in rows:
        r["path"] = str(cohort.parent / r["path"])
    rows.append({"path": str(tmp_path / "nope.nii.gz"), "label": "1", "subject": "x", "session": "1"})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    report = check_dataset(tiny_config(manifest, tmp_path / "run", tmp_path / "cache"))
    assert len(report.problems) == 1 and len(report.samples) == 16
    report.raise_if_problems(skip_bad=True)


def test_max_volumes_keeps_whole_subjects_and_both_classes(tmp_path, cohort):
    cfg = tiny_config(cohort, tmp_path / "run", tmp_path / "cache", max_volumes=8)
    report = load_dataset(cfg)
    full = read_manifest(cohort)
    assert 6 <= len(report.samples) <= 10 and set(report.labels) == {0, 1}
    kept = set(report.subjects)
    assert sum(1 for s in full.samples if s.subject in kept) == len(report.samples)  # whole subjects
    assert [s.path for s in load_dataset(cfg).samples] == [s.path for s in report.samples]  # seeded


def test_manifest_without_required_column_and_bad_options(tmp_path):
    (tmp_path / "m.csv").write_text("file,label\na.nii.gz,1\n")
    with pytest.raises(DatasetError, match="lacks column"):
        read_manifest(tmp_path / "m.csv")
    assert main(["train", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "r")]) == 2
    assert main(["train", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "r"), "--folds", "1"]) == 2
    assert main(["train", "--out", str(tmp_path / "r")]) == 2  # no dataset
    assert main(["evaluate", str(tmp_path)]) == 2  # not a run folder


def test_synthetic_marker_is_detected(tmp_path):
    manifest = write_cohort(tmp_path / "c", n_subjects=4, synthetic_marker=True)
    assert read_manifest(manifest).synthetic


# ------------------------------------------------------------------------------------------- dHCP


def test_dhcp_reader_default_rule_preterm_filter_and_q(tmp_path):
    tree = write_dhcp_tree(tmp_path / "dhcp")
    report = read_dhcp(tree["root"])
    found = {(s.subject, s.session): s for s in report.samples}
    # D is term-born (39 w): filtered; C's only session is Q: excluded and counted
    assert set(found) == {
        ("sub-A", "ses-101"),
        ("sub-A", "ses-102"),
        ("sub-B", "ses-201"),
        ("sub-E", "ses-501"),
        ("sub-E", "ses-502"),
        ("sub-F", "ses-601"),
    }
    labels = {k: s.label for k, s in found.items()}
    assert labels == {
        ("sub-A", "ses-101"): 0,
        ("sub-A", "ses-102"): 1,
        ("sub-B", "ses-201"): 1,
        ("sub-E", "ses-501"): 1,
        ("sub-E", "ses-502"): 0,
        ("sub-F", "ses-601"): 0,
    }
    assert report.excluded["'Q' (poor quality) sessions"] == 1
    assert report.excluded["born at >= 37 weeks (subjects)"] == 1
    # bias-corrected image preferred; plain T2w when there is no restore image
    assert found[("sub-A", "ses-101")].path.name == "sub-A_ses-101_desc-restore_T2w.nii.gz"
    assert found[("sub-B", "ses-201")].path.name == "sub-B_ses-201_T2w.nii.gz"
    assert found[("sub-A", "ses-102")].age_weeks == 40.0
    assert not report.problems and "Q" in report.format()


def test_dhcp_reader_3or5_rule_and_all_ages(tmp_path):
    tree = write_dhcp_tree(tmp_path / "dhcp")
    report = read_dhcp(tree["root"], label_rule="3or5", preterm_only=False)
    subjects = {(s.subject, s.session): s.label for s in report.samples}
    assert ("sub-B", "ses-201") not in subjects  # score 4: non-brain finding, excluded
    assert report.excluded["score 4 sessions (rule 3or5)"] == 1
    assert subjects[("sub-D", "ses-401")] == 1  # term-born kept without the filter
    # the pipeline folder itself is also accepted as ROOT
    assert len(read_dhcp(tree["anat_root"]).samples) == 6
    first = read_dhcp(tree["root"], sessions="first")
    assert {s.session for s in first.samples if s.subject == "sub-A"} == {"ses-101"}


def test_dhcp_problems_listed(tmp_path):
    tree = write_dhcp_tree(tmp_path / "dhcp")
    anat = tree["anat_root"] / "sub-F" / "ses-601" / "anat"
    for p in anat.iterdir():
        p.unlink()
    tsv = tree["anat_root"] / "sub-E" / "sub-E_sessions.tsv"
    tsv.write_text(tsv.read_text().replace("\t5\t", "\tn/a\t"))
    report = read_dhcp(tree["root"])
    assert sorted(p.kind for p in report.problems) == ["missing file", "missing label"]
    cfg = TrainConfig(dhcp=str(tree["root"]), out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    assert (
        main(
            [
                "train",
                "--dhcp",
                str(tree["root"]),
                "--out",
                str(tmp_path / "run"),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--folds",
                "2",
            ]
        )
        == 2
    )
    assert cfg.validate().dhcp_label_rule == "ge3"


# ------------------------------------------------------------------------------------------- cache


def test_cache_hit_miss_and_staleness(tmp_path):
    rng = np.random.default_rng(0)
    src = save_nifti(tmp_path / "v.nii.gz", make_volume(rng, 1))
    cache = PreprocessCache(tmp_path / "cache", PreprocessConfig(size=(16, 16, 16)))
    a = cache.get(src)
    assert isinstance(a, np.memmap) and a.shape == (16, 16, 16) and a.dtype == np.float32
    assert (cache.hits, cache.misses) == (0, 1)
    b = cache.get(src)
    assert (cache.hits, cache.misses) == (1, 1) and np.array_equal(a, b)
    entries = list((tmp_path / "cache").rglob("*.npy"))
    assert len(entries) == 1 and not list((tmp_path / "cache").rglob("*.tmp*"))

    # same name, new content (mtime restored): recomputed, never stale
    stat = os.stat(src)
    save_nifti(src, make_volume(rng, 0))
    os.utime(src, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    c = cache.get(src)
    assert cache.misses == 2 and not np.array_equal(a, c)

    # another preprocessing setting: another entry; the old one still served for the old setting
    other = PreprocessCache(tmp_path / "cache", PreprocessConfig(size=(16, 16, 16), normalization="zscore_foreground"))
    other.get(src)
    assert other.misses == 1 and len(list((tmp_path / "cache").rglob("*.npy"))) == 3
    again = PreprocessCache(tmp_path / "cache", PreprocessConfig(size=(16, 16, 16)))
    again.get(src)
    assert (again.hits, again.misses) == (1, 0)

    # a corrupt entry is rebuilt
    key = again.key_for(src)
    again.entry_path(key).write_bytes(b"garbage")
    again.get(src)
    assert again.misses == 1


# ------------------------------------------------------------------------------------------- folds


def _grouped_labels():
    rng = np.random.default_rng(3)
    subjects, labels = [], []
    for s in range(30):
        label = int(s < 13)
        for _ in range(1 + int(rng.random() < 0.4)):
            subjects.append(f"s{s}")
            labels.append(label)
    return np.array(labels), np.array(subjects)


def test_folds_grouped_stratified_reproducible():
    labels, groups = _grouped_labels()
    splits = make_folds(labels, groups, k=5, seed=0)
    tests = np.concatenate([s.test for s in splits])
    assert sorted(tests.tolist()) == list(range(len(labels)))  # every sample tested once
    for s in splits:
        assert not set(groups[s.test]) & set(groups[s.train]) and not set(groups[s.test]) & set(groups[s.val])
        assert not set(groups[s.val]) & set(groups[s.train])  # inner split grouped too
        assert set(np.concatenate([s.train, s.val, s.test])) == set(range(len(labels)))
        frac = labels[s.test].mean()
        assert abs(frac - labels.mean()) < 0.2  # stratified
        assert len(set(labels[s.val])) == 2
    again = make_folds(labels, groups, k=5, seed=0)
    assert all(np.array_equal(a.test, b.test) and np.array_equal(a.val, b.val) for a, b in zip(splits, again))
    other = make_folds(labels, groups, k=5, seed=1)
    assert any(not np.array_equal(a.test, b.test) for a, b in zip(splits, other))
    paper = make_folds(labels, groups, k=5, seed=0, protocol="paper")
    assert all(np.array_equal(p.val, p.test) for p in paper)
    with pytest.raises(DatasetError, match="needs at least"):
        make_folds(labels[:6], groups[:6], k=5)


def test_folds_cli_writes_the_split(tmp_path, cohort, capsys):
    out = tmp_path / "folds.json"
    assert main(["folds", "--manifest", str(cohort), "--folds", "3", "--seed", "0", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["k"] == 3 and len(doc["samples"]) == 16 and "honest" in doc["note"]
    for f in doc["folds"]:
        test_subjects = {doc["samples"][i]["subject"] for i in f["test"]}
        train_subjects = {doc["samples"][i]["subject"] for i in f["train"] + f["val"]}
        assert not test_subjects & train_subjects
    assert "test subjects" in capsys.readouterr().out
    out2 = tmp_path / "folds2.json"
    main(["folds", "--manifest", str(cohort), "--folds", "3", "--seed", "0", "--out", str(out2)])
    assert json.loads(out2.read_text()) == doc


# ------------------------------------------------------------------------- metrics, augmentation


def test_binary_metrics_match_sklearn():
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p = np.array([0.1, 0.6, 0.3, 0.8, 0.4, 0.9, 0.7, 0.2])
    m = binary_metrics(y, p)
    pred = (p >= 0.5).astype(int)
    assert m["confusion_matrix"] == [[3, 1], [1, 3]]
    assert m["accuracy"] == 0.75 and m["sensitivity"] == 0.75 and m["specificity"] == 0.75
    assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert m["f1"] == pytest.approx(f1_score(y, pred)) and m["balanced_accuracy"] == balanced_accuracy_score(y, pred)
    assert binary_metrics([1, 1], [0.3, 0.9])["auc"] is None
    s = summarize([dict(m, fold=0), dict(m, fold=1, accuracy=0.5)])
    assert s["accuracy"]["mean"] == 0.625 and s["accuracy"]["best"] == 0.75 and s["accuracy"]["best_fold"] == 0
    assert s["accuracy"]["sd"] == pytest.approx(np.std([0.75, 0.5], ddof=1))


def test_flip_is_left_right_and_mixup_soft_targets():
    x = torch.arange(2 * 4 * 3 * 2, dtype=torch.float32).reshape(2, 1, 4, 3, 2)
    out = flip_lr(x, np.array([True, False]))
    assert torch.equal(out[0], x[0].flip(1)) and torch.equal(out[1], x[1])  # tensor dim 2 = x (L-R)
    y = one_hot(torch.tensor([0, 1]))
    xm, ym = mixup(x, y, 0.7, np.array([1, 0]))
    assert torch.allclose(xm[0], 0.7 * x[0] + 0.3 * x[1]) and torch.allclose(ym[0], torch.tensor([0.7, 0.3]))
    assert torch.allclose(ym.sum(1), torch.ones(2))
    plan = plan_batch(np.random.default_rng(0), 32, mixup_alpha=1.0)
    assert 0 < plan.lam < 1 and sorted(plan.perm) == list(range(32)) and 5 < plan.flips.sum() < 27
    same = plan_batch(np.random.default_rng(0), 32, mixup_alpha=1.0)
    assert same.lam == plan.lam and np.array_equal(same.perm, plan.perm)
    assert plan_batch(np.random.default_rng(0), 4, mixup_alpha=0.0).lam == 1.0
    affine = plan_batch(np.random.default_rng(0), 3, affine_degrees=10, affine_scale=0.1)
    assert affine.thetas.shape == (3, 3, 4)
    # class-weighted soft cross-entropy = weighted hard CE for one-hot targets
    logits = torch.tensor([[2.0, -1.0], [0.5, 0.3]])
    w = torch.tensor([0.5, 2.0])
    ce = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]), weight=w, reduction="none")
    assert torch.allclose(soft_cross_entropy(logits, one_hot(torch.tensor([0, 1])), w), ce)

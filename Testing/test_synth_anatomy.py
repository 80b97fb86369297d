"""Generator 2.0 anatomy invariants: volumes by age, tissue adjacency, PHVD ventricular index, lesions in their
tissue, whole-head / brain-extracted, the template cache and rendering from the user's own label maps."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
from conftest import subprocess_env
from GloResNetLib import synth
from GloResNetLib.synth import anatomy as A
from GloResNetLib.synth.lesions import HOSTS
from scipy import ndimage

RAS = dict(
    orientation="RAS",
    rotation_deg=0.0,
    max_dim=None,
    noise=False,
    bias=False,
    artefact_strength=0.0,
    brain_extracted=False,
)


def _render(seed, age, injuries=(), voxel=1.5, **kw):
    return synth.synth_volume(seed, age, injuries, voxel_size=voxel, **{**RAS, **kw})


@pytest.mark.parametrize("age", [28.0, 34.0, 40.0, 44.0])
def test_brain_volume_follows_the_neonatal_norm(age):
    """Brain tissue + ventricles counted on the rendered label map is within 20% of the Serag et al. norm."""
    norm = A.BRAIN_VOLUME_ML[int(age)]
    for seed in range(2):
        _, _, _, info = _render(seed, age, voxel=1.5)
        measured = np.isin(info["labels_full"], A.BRAIN_LABELS).sum() * 1.5**3 / 1000.0
        assert abs(measured - norm) < 0.2 * norm, (age, seed, measured, norm)
        assert abs(info["brain_volume_ml"] - measured) < 0.1 * norm


def test_tissue_adjacency_and_layers():
    _, _, _, info = _render(3, 40.0, voxel=1.25)
    lab = info["labels_full"]

    def touches(a, b):
        return bool((ndimage.binary_dilation(lab == a) & (lab == b)).any())

    for outer in (A.SKULL, A.SCALP, A.BG, A.EYE):
        assert not touches(A.VENTRICLE, outer)
        assert not touches(A.WM, outer)
    assert touches(A.CORTEX, A.WM) and touches(A.CORTEX, A.CSF)
    assert touches(A.VENTRICLE, A.WM) and touches(A.DGM, A.VENTRICLE)
    assert touches(A.BRAINSTEM, A.CEREBELLUM) or touches(A.BRAINSTEM, A.CB_WM)
    assert not touches(A.CSF, A.SCALP) or touches(A.SKULL, A.SCALP)  # the skull lies between them on the vault
    # deep grey matter sits between the ventricles and the cortex: nearer the brain centre than the cortex
    centre = np.argwhere(lab == A.VENTRICLE).mean(0)
    d = {k: np.linalg.norm(np.argwhere(lab == k) - centre, axis=1).mean() for k in (A.DGM, A.CORTEX)}
    assert d[A.DGM] < 0.6 * d[A.CORTEX]
    assert set(np.unique(info["labels"])) >= set(range(10)) - {4} and info["labels"].max() <= 9


def test_folding_grows_with_age():
    """The white-matter surface is more folded at term than at 28 weeks (surface per volume^(2/3))."""

    def folding(age):
        lab = A.template(age).labels
        wm = np.isin(lab, (A.WM, A.PLIC, A.DGM, A.VENTRICLE, A.HIPPO))
        surface = (wm & ~ndimage.binary_erosion(wm)).sum()
        return surface / wm.sum() ** (2 / 3), (lab == A.CORTEX).sum() / np.isin(lab, A.BRAIN_LABELS).sum()

    (f28, c28), (f40, c40) = folding(28.0), folding(40.0)
    assert f40 > 1.05 * f28
    assert c40 > c28  # the cortex takes a larger share of the brain at term


def test_phvd_enlarges_the_ventricles_and_their_index():
    healthy = _render(5, 38.0)[3]
    _, _, mask, info = _render(5, 38.0, ("phvd",))
    vi_h, vi = max(healthy["ventricular_index_mm"]), max(info["ventricular_index_mm"])
    assert vi > vi_h + 1.5
    vent_h = (healthy["labels_full"] == A.VENTRICLE).sum()
    vent = (info["labels_full"] == A.VENTRICLE).sum()
    assert vent > 1.3 * vent_h
    assert mask.any() and np.all(info["labels_full"][mask.astype(bool)] == A.VENTRICLE)


@pytest.mark.parametrize("kind", ["pwml", "cpvl", "cbh", "ivh"])
def test_lesions_lie_in_their_tissue(kind):
    hosts = set(HOSTS["gmh"]) | set(HOSTS["clot"]) if kind == "ivh" else set(HOSTS[kind])
    for seed in range(2):
        img, _, mask, info = _render(seed, 36.0, (kind,), voxel=1.25, difficulty=0.0)
        m = mask.astype(bool)
        assert m.sum() > 0, (kind, seed)
        assert set(np.unique(info["labels_full"][m])) <= hosts, (kind, seed)
        healthy = _render(seed, 36.0, (), voxel=1.25)[0]
        dark = kind != "cpvl"  # blood and PWML are T2-hypointense, cysts bright
        diff = float(np.median(img[m] - healthy[m]))
        assert (diff < 0) if dark else (diff > 0), (kind, seed, diff)


def test_whole_head_and_brain_extracted():
    head, _, _, info = synth.synth_volume(2, 40.0, (), voxel_size=2.0, max_dim=None, brain_extracted=False)
    bet, _, _, info_b = synth.synth_volume(2, 40.0, (), voxel_size=2.0, max_dim=None, brain_extracted=True)
    brain = info_b["brain_mask"].astype(bool)
    assert info_b["brain_extracted"] and not info["brain_extracted"]
    assert np.all(bet[~brain] == 0) and bet[brain].mean() > 0
    scalp = info["labels_full"] == A.SCALP
    assert scalp.any() and head[scalp].mean() > 0.3 * head[brain].mean()


def test_artefacts_are_seeded():
    a = synth.synth_volume(11, 33.0, ("ivh",), max_dim=40)
    b = synth.synth_volume(11, 33.0, ("ivh",), max_dim=40)
    c = synth.synth_volume(11, 33.0, ("ivh",), max_dim=40, artefact_strength=0.0)
    assert a[0].tobytes() == b[0].tobytes() and a[2].tobytes() == b[2].tobytes()
    assert not np.array_equal(a[0], c[0]) and np.array_equal(a[2], c[2])
    assert np.all(np.isfinite(a[0]))


def test_template_cache_is_checked_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("GLORESNET_CACHE", str(tmp_path / "cache" / "preprocessed"))
    first = A._cached_fold(44.0)
    path = A._cache_file(44.0)
    assert path.is_file() and path.with_suffix(".sha256").is_file()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    again = A._cached_fold(44.0)  # checksum mismatch: rebuilt, same result
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert A._cached_fold(44.0)[0].tobytes() == first[0].tobytes()


def _cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "GloResNetLib", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=cwd,
        timeout=600,
    )


def test_synth_from_user_label_maps(tmp_path):
    """DRAW-EM 9-tissue maps (here: written by the generator's own dHCP layout) drive the anatomy."""
    _, affine, _, info = synth.synth_volume(4, 40.0, (), voxel_size=1.2, orientation="LPS", max_dim=None)
    maps = tmp_path / "sub-x_desc-drawem9_dseg.nii.gz"
    nib.save(nib.Nifti1Image(info["labels"].astype(np.uint8), affine), maps)
    out = tmp_path / "cohort"
    proc = _cli("synth", "--out", str(out), "--n", "4", "--seed", "2", "--max-dim", "48", "--anatomy", str(maps))
    assert proc.returncode == 0, proc.stderr
    meta = json.loads((out / "cohort.json").read_text())
    assert "user label maps" in meta["anatomy"] and meta["counts"]["volumes"] == 4
    rows = (out / "manifest.csv").read_text().splitlines()[1:]
    img = nib.load(out / rows[0].split(",")[0])
    assert np.isfinite(img.get_fdata()).all() and img.get_fdata().max() > 0
    # the user's brain keeps its size: no rescaling to the plan's age
    brain_user = np.isin(info["labels"], [2, 3, 5, 6, 7, 8, 9]).sum() * 1.2**3 / 1000
    vols = [s["brain_volume_ml"] for s in meta["scans"]]
    assert all(abs(v - brain_user) < 0.25 * brain_user for v in vols), (vols, brain_user)

    bad = tmp_path / "map.json"
    bad.write_text(json.dumps({"0": "background", "1": "not-a-tissue"}))
    proc = _cli("synth", "--out", str(tmp_path / "x"), "--n", "2", "--anatomy", str(maps), "--anatomy-labels", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps({str(k): k for k in range(4)}))  # labels 4-9 missing
    proc = _cli(
        "synth", "--out", str(tmp_path / "y"), "--n", "2", "--anatomy", str(maps), "--anatomy-labels", str(partial)
    )
    assert proc.returncode == 2 and "not in the label mapping" in proc.stderr

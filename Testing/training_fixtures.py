"""Small real datasets for the training tests (plain functions; import them in test files).

Volumes are 20^3 NIfTI files: a noisy ellipsoid 'head'; brain injury (label 1) adds a bright blob at a
random place inside it, so a tiny network can learn the task in a few epochs. No mocks, no synthetic
generator dependency.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
LIB_PARENT = REPO / "GloResNet"
if str(LIB_PARENT) not in sys.path:
    sys.path.insert(0, str(LIB_PARENT))

from GloResNetLib.slicer_side.training_params import TrainingParameters  # noqa: E402
from GloResNetLib.training.config import TrainConfig  # noqa: E402

SHAPE = (20, 20, 20)
TINY_WIDTHS = [8, 16, 32, 64]
#: GloResNetTraining parameters of a tiny, quick CPU run (:func:`tiny_params`).
TINY_PARAMS = dict(
    size=16,
    widths=tuple(TINY_WIDTHS),
    folds=2,
    epochs=3,
    batch_size=4,
    seed=0,
    num_threads=1,
    tensorboard=False,
    device="cpu",
)


def make_volume(rng: np.random.Generator, label: int, shape=SHAPE) -> np.ndarray:
    """Noisy ellipsoid head; label 1 adds a bright blob (radius ~3 voxels) somewhere inside it."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij"))
    centre = (np.array(shape) - 1) / 2
    r = np.sqrt((((grid - centre[:, None, None, None]) / (np.array(shape)[:, None, None, None] * 0.42)) ** 2).sum(0))
    vol = np.where(r < 1, 400.0, 30.0) * rng.uniform(0.8, 1.2)
    if label == 1:
        c = centre + rng.uniform(-3.5, 3.5, size=3)
        d = np.sqrt(((grid - c[:, None, None, None]) ** 2).sum(0))
        vol = vol + 900.0 * np.exp(-((d / 2.5) ** 2))
    return (vol + rng.normal(0, 25, shape)).astype(np.float32)


def save_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    affine = np.diag([1.0, 1.0, 1.0, 1.0]) if affine is None else affine
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def write_cohort(
    root: Path,
    n_subjects: int = 12,
    seed: int = 0,
    two_sessions_every: int = 3,
    synthetic_marker: bool = False,
) -> Path:
    """Write volumes and ``manifest.csv`` (relative paths) into ``root``; every ``two_sessions_every``-th
    subject has two sessions. Labels alternate by subject (balanced). Returns the manifest path."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in range(n_subjects):
        label = s % 2
        n_ses = 2 if s % two_sessions_every == 0 else 1
        for ses in range(n_ses):
            rel = f"images/sub{s:02d}_ses{ses}.nii.gz"
            save_nifti(root / rel, make_volume(rng, label))
            rows.append(
                {
                    "path": rel,
                    "label": label,
                    "subject": f"sub{s:02d}",
                    "session": f"ses{ses}",
                    "age_weeks": f"{32 + s % 8 + 2 * ses:.1f}",
                }
            )
    write_manifest(root / "manifest.csv", rows)
    if synthetic_marker:
        (root / "cohort.json").write_text('{"generator": "test", "synthetic": true}\n')
    return root / "manifest.csv"


def write_manifest(path: Path, rows: list[dict], columns=("path", "label", "subject", "session", "age_weeks")) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path


def read_manifest_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def write_dhcp_tree(root: Path, seed: int = 0) -> dict:
    """A tiny dHCP-like BIDS tree; returns what the reader should find.

    Subjects: A (preterm, 2 sessions: scores 1 and 3, restore + plain images), B (preterm, score 4, plain
    image only), C (preterm, score Q), D (term-born 39 w, score 5), E (preterm, scores 5 and 2), F (preterm,
    score 2).
    """
    rng = np.random.default_rng(seed)
    anat_root = root / "derivatives" / "dhcp_anat_pipeline"
    participants = [("A", 30.1), ("B", 28.0), ("C", 33.0), ("D", 39.0), ("E", 25.5), ("F", 31.0)]
    sessions = {
        "A": [("101", 31.0, "1"), ("102", 40.0, "3")],
        "B": [("201", 36.0, "4")],
        "C": [("301", 35.0, "Q")],
        "D": [("401", 40.5, "5")],
        "E": [("501", 29.0, "5"), ("502", 41.0, "2")],
        "F": [("601", 33.0, "2")],
    }
    with open(_mk(anat_root) / "participants.tsv", "w") as f:
        f.write("participant_id\tsex\tbirth_age\tbirth_weight\tsingleton\n")
        for pid, ga in participants:
            f.write(f"{pid}\tfemale\t{ga}\t1.2\tS\n")
    for pid, rows in sessions.items():
        sub = f"sub-{pid}"
        with open(_mk(anat_root / sub) / f"{sub}_sessions.tsv", "w") as f:
            f.write("session_id\tscan_age\tscan_head_circumference\tradiology_score\tscan_number\tsedation\n")
            for sid, age, score in rows:
                f.write(f"{sid}\t{age}\t30.0\t{score}\t1\t0\n")
        for sid, _, score in rows:
            anat = anat_root / sub / f"ses-{sid}" / "anat"
            label = 1 if score in ("3", "4", "5") else 0
            save_nifti(anat / f"{sub}_ses-{sid}_T2w.nii.gz", make_volume(rng, label))
            if pid != "B":
                save_nifti(anat / f"{sub}_ses-{sid}_desc-restore_T2w.nii.gz", make_volume(rng, label))
    return {"root": root, "anat_root": anat_root}


def _mk(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def tiny_config(manifest: Path, out: Path, cache: Path, **kw) -> TrainConfig:
    """A CPU-sized configuration: 16^3 input, tiny ResNet-10, 3 folds, 2 epochs, batch 8."""
    base = dict(
        manifest=str(manifest),
        out=str(out),
        cache_dir=str(cache),
        size=16,
        folds=3,
        epochs=2,
        batch_size=8,
        seed=0,
        arch_params={"widths": list(TINY_WIDTHS)},
        tensorboard=False,
        num_threads=1,  # tiny tensors: one thread is as fast, and immune to a busy machine
    )
    base.update(kw)
    return TrainConfig(**base)


#: The tiny run's training options on the command line (:func:`tiny_config`'s values).
TINY_CLI_OPTIONS = (
    "--size",
    "16",
    "--folds",
    "3",
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--seed",
    "0",
    "--widths",
    "8,16,32,64",
    "--no-tensorboard",
    "--num-threads",
    "1",
)


def tiny_cli_args(manifest: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    """``gloresnet train`` arguments equal to :func:`tiny_config`."""
    return [
        "train",
        "--manifest",
        str(manifest),
        "--out",
        str(out),
        "--cache-dir",
        str(cache),
        *TINY_CLI_OPTIONS,
        *extra,
    ]


def tiny_params(cohort: dict, out: Path, **changes) -> TrainingParameters:
    """Module parameters of a tiny run on ``cohort`` (``manifest`` and ``cache`` paths) into ``out/tiny``."""
    base = dict(
        source="manifest",
        manifest=str(cohort["manifest"]),
        output_folder=str(out),
        run_name="tiny",
        cache_dir=str(cohort["cache"]),
        **TINY_PARAMS,
    )
    return TrainingParameters(**{**base, **changes})


def subprocess_env(threads: int = 1) -> dict[str, str]:
    """Environment for ``python -m GloResNetLib`` in a real subprocess."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(LIB_PARENT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cli(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    """``python -m GloResNetLib ARGS`` as a real process (captured text output)."""
    return subprocess.run(
        [sys.executable, "-m", "GloResNetLib", *args],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=timeout,
    )


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single stderr line of a refused command (exit 2, no traceback)."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    return lines[0]

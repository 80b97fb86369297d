"""Preprocessing-cache integrity and duplicate content (issue 16, items 4 and 5), with real files:
entries overwritten with zeros and with NaN (same size) are caught by their checksum and rebuilt; a cache
folder on a real read-only mount, or under a file, falls back to no cache with one warning; the same image
content under another row and subject is a dataset problem."""

from __future__ import annotations

import shutil
import subprocess
import sys

import numpy as np
import pytest
from GloResNetLib.bundle import sha256_file
from GloResNetLib.cli import main
from training_fixtures import read_manifest_rows, subprocess_env, tiny_cli_args, write_cohort, write_manifest

COLUMNS = ("path", "label", "subject", "session", "age_weeks")


def train_args(manifest, out, cache, *extra: str) -> list[str]:
    return tiny_cli_args(manifest, out, cache, "--folds", "2", "--epochs", "1", "--batch-size", "4", *extra)


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=240)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("cachecohort")
    return write_cohort(root / "cohort", n_subjects=8, two_sessions_every=100)


def test_zeroed_and_nan_filled_entries_fail_their_checksum_and_are_rebuilt(cohort, tmp_path):
    cache = tmp_path / "cache"
    assert main(["train", "--check-only", "--manifest", str(cohort), "--size", "16", "--cache-dir", str(cache)]) == 0
    entries = sorted(cache.glob("*/*.npy"))
    assert len(entries) == 9
    good = {e: np.load(e).copy() for e in entries[:2]}
    zeroed, nan_filled = entries[:2]
    np.save(zeroed, np.zeros_like(good[zeroed]))  # same size, valid .npy, wrong content
    np.save(nan_filled, np.full_like(good[nan_filled], np.nan))
    assert zeroed.stat().st_size == nan_filled.stat().st_size == entries[2].stat().st_size

    proc = run([sys.executable, "-m", "GloResNetLib", *train_args(cohort, tmp_path / "run", cache)])
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for entry in (zeroed, nan_filled):
        assert f"cache entry {entry} of " in proc.stderr
        np.testing.assert_array_equal(np.load(entry), good[entry])  # rebuilt, not used
    assert proc.stderr.count("is corrupt (its content does not match its checksum); rebuilding it") == 2
    assert "7 hit(s), 2 volume(s) decoded" in (tmp_path / "run" / "train.log").read_text()
    assert all(e.with_suffix(".sha256").read_text().strip() == sha256_file(e) for e in entries)


def _read_only_mount_works(folder) -> bool:
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && ! touch "$0/probe"'
    try:
        probe = subprocess.run(["unshare", "-m", "sh", "-c", script, str(folder)], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0 and not (folder / "probe").exists()


def test_a_read_only_cache_folder_falls_back_to_no_cache_with_one_warning(cohort, tmp_path, caplog):
    cache = tmp_path / "ro-cache"
    cache.mkdir()
    if sys.platform != "linux" or shutil.which("unshare") is None or not _read_only_mount_works(cache):
        pytest.skip("needs a private read-only bind mount (unshare -m, mount: root on Linux)")
    # the training process sees the cache folder through a real read-only mount (its own mount namespace)
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    out = tmp_path / "run"
    proc = run(
        [
            "unshare",
            "-m",
            "sh",
            "-c",
            script,
            str(cache),
            sys.executable,
            "-m",
            "GloResNetLib",
            *train_args(cohort, out, cache),
        ]
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("cannot be written") == 1 and "Read-only file system" in proc.stderr
    assert "unreadable image" not in proc.stderr and (out / "bundle" / "metadata.json").is_file()
    assert list(cache.iterdir()) == []

    # a file where the cache folder should be: the same fallback (as root, chmod would not stop a write)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code = main(
        ["train", "--check-only", "--manifest", str(cohort), "--size", "16", "--cache-dir", str(blocker / "cache")]
    )
    assert code == 0 and caplog.text.count("cannot be written (Not a directory)") == 1
    assert "unreadable image" not in caplog.text


def test_identical_content_under_another_row_is_a_dataset_problem(cohort, tmp_path, capsys):
    rows = read_manifest_rows(cohort)
    folder = tmp_path / "cohort"
    shutil.copytree(cohort.parent, folder)
    src = next(r for r in rows if r["label"] == "1")
    shutil.copyfile(folder / src["path"], folder / "images" / "renamed.nii.gz")
    rows.append(dict(src, path="images/renamed.nii.gz", label="0", subject="sub99", session="ses0"))
    manifest = write_manifest(folder / "manifest.csv", rows, COLUMNS)
    code = main(
        ["train", "--check-only", "--manifest", str(manifest), "--size", "16", "--cache-dir", str(tmp_path / "cache")]
    )
    out = capsys.readouterr().out
    assert code == 2
    assert "1 problem(s): 1 duplicate image" in out
    line = next(ln for ln in out.splitlines() if "duplicate image:" in ln)
    assert line.startswith("  - row 11 (images/renamed.nii.gz): duplicate image: same file content as row ")
    assert line.endswith(f"({src['path']}) (subject {src['subject']}, label 1)")

"""Write faults and output sets (issue 16, items 2, 3 and 8), injected for real: a file-size limit in a child
process (EFBIG), a full tmpfs (ENOSPC) and a read-only mount (EROFS) where this runs as root (a read-only folder
otherwise), a file where a folder should be, a closed pipe on standard output, and a model whose finite weights
overflow to NaN. Each must give exit 2 and one line, and leave the previous output set untouched."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import example_affine, make_bundle, make_head_volume, make_small_model, save_nifti, subprocess_env
from GloResNetLib.cli import main

SET = ("case.json", "case_cam.nii.gz", "case_resampled.nii.gz")


def _snapshot(folder: Path) -> dict[str, str]:
    """Every entry of ``folder`` (hidden ones too) -> SHA-256 of its content."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>" for p in sorted(folder.iterdir())
    }


def _predict(case: Path, bundle: Path, out: Path, *extra: str) -> int:
    return main(["predict", str(case), "--model", str(bundle), "--out", str(out), "--device", "cpu", "--json", *extra])


@pytest.fixture
def case(tmp_path) -> Path:
    return save_nifti(tmp_path / "case.nii.gz", make_head_volume(), example_affine())


@pytest.fixture(scope="module")
def other_bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("other") / "other", seed=7)


@contextlib.contextmanager
def _tmpfs(path: Path, size: str, read_only: bool = False):
    """A real small tmpfs at ``path`` (root only); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    opts = f"size={size}" + (",ro" if read_only else "")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _file_size_limit(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_file_size_limit_keeps_the_previous_set(tmp_path, case, small_bundle, other_bundle, capsys):
    out = tmp_path / "out"
    assert _predict(case, small_bundle, out) == 0
    capsys.readouterr()
    before = _snapshot(out)
    assert set(before) == set(SET)
    env = dict(subprocess_env(), PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "GloResNetLib",
            "predict",
            str(case),
            "--model",
            str(other_bundle),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        preexec_fn=_file_size_limit(64 << 10),
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert "File too large" in done.stderr and "previous files were kept" in done.stderr
    assert _snapshot(out) == before  # no new _cam beside the old JSON, no staging folder left


def test_full_disk_keeps_the_previous_set(tmp_path, case, small_bundle, other_bundle, capsys):
    with _tmpfs(tmp_path / "disk", "4m") as disk:
        out = disk / "out"
        assert _predict(case, small_bundle, out) == 0
        before = _snapshot(out)
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(bytes(max(0, free - (96 << 10))))  # leave ~96 kB: less than one set
        capsys.readouterr()
        assert _predict(case, other_bundle, out) == 2
        err = capsys.readouterr().err
        assert "No space left on device" in err and len(err.strip().splitlines()) == 1
        assert _snapshot(out) == before


def test_read_only_out_refused_before_any_computing(tmp_path, case, small_bundle, capsys):
    out = tmp_path / "ro"
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:
            stack.enter_context(_tmpfs(out, "1m", read_only=True))
        else:
            out.mkdir()
            out.chmod(0o555)
            stack.callback(out.chmod, 0o755)
        code = main(["predict", str(case), "--model", str(small_bundle), "--out", str(out / "sub"), "--progress-json"])
        err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [err.strip()] and "cannot write to the --out folder" in err
    assert "Read-only file system" in err or "Permission denied" in err  # and no "loading model" event: refused first


def test_file_where_a_folder_should_be(tmp_path, case, small_bundle, capsys):
    (tmp_path / "afile").write_text("x")
    assert _predict(case, small_bundle, tmp_path / "afile" / "out") == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot write to the --out folder" in err
    # another command writing there: the same promise (exit 2, one line)
    assert main(["synth", "--out", str(tmp_path / "afile" / "cohort"), "--n", "4"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "afile" in err and "Not a directory" in err
    # a folder in the way of one file of the set: nothing of the set is written
    out = tmp_path / "out"
    (out / "case_cam.nii.gz").mkdir(parents=True)
    assert _predict(case, small_bundle, out) == 2
    assert "a folder is in the way" in capsys.readouterr().err
    assert _snapshot(out) == {"case_cam.nii.gz": "<dir>"}


def test_rerun_without_cam_removes_the_stale_cam(tmp_path, case, small_bundle, capsys):
    out = tmp_path / "out"
    assert _predict(case, small_bundle, out) == 0
    assert _predict(case, small_bundle, out, "--no-cam") == 0
    assert sorted(p.name for p in out.iterdir()) == ["case.json", "case_resampled.nii.gz"]
    assert "cam" not in json.loads((out / "case.json").read_text())["outputs"]


def test_nan_output_is_refused_and_nothing_written(tmp_path, case, capsys):
    model = make_small_model(0)
    with torch.no_grad():
        model.fc.weight.fill_(3e38)  # finite weights (they pass the load checks) whose logits overflow
    bundle = make_bundle(tmp_path / "overflow", models=[model])
    out = tmp_path / "out"
    assert _predict(case, bundle, out) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite outputs" in err and len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


def test_closed_stdout_ends_quietly(small_bundle):
    proc = subprocess.Popen(
        [sys.executable, "-m", "GloResNetLib", "bundle", "info", str(small_bundle), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=subprocess_env(),
    )
    proc.stdout.close()  # the reader is gone before anything is written, as `| head` after its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141
    assert err == ""


def test_standard_output_on_a_full_disk_is_one_line(tmp_path, small_bundle):
    # stdout redirected to a file that cannot grow (EFBIG from a real file-size limit in the child)
    with open(tmp_path / "info.json", "wb") as stdout:
        done = subprocess.run(
            [sys.executable, "-m", "GloResNetLib", "bundle", "info", str(small_bundle), "--json"],
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            env=dict(subprocess_env(), PYTHONDONTWRITEBYTECODE="1"),
            preexec_fn=_file_size_limit(100),
        )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "File too large" in done.stderr


def test_staged_folder_puts_a_whole_folder_in_place_or_nothing(tmp_path):
    from GloResNetLib.outputs import staged_folder

    target = tmp_path / "models" / "b"
    with staged_folder(target) as stage:
        assert stage.parent == target.parent and stage.name.startswith(".") and not target.exists()
        (stage / "metadata.json").write_text("{}")
    assert (target / "metadata.json").read_text() == "{}"
    with pytest.raises(RuntimeError), staged_folder(target, replace=True) as stage:
        (stage / "metadata.json").write_text("new")
        raise RuntimeError("failed while writing")
    assert (target / "metadata.json").read_text() == "{}"  # the previous folder is untouched
    with pytest.raises(OSError), staged_folder(target) as stage:  # not replacing: an existing folder stays
        (stage / "x").write_text("x")
    with staged_folder(target, replace=True) as stage:
        (stage / "other.json").write_text("[]")
    assert sorted(p.name for p in target.parent.iterdir()) == ["b"]  # no staging folder left behind
    assert sorted(p.name for p in target.iterdir()) == ["other.json"]

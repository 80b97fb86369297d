"""The background-process helper shared by the Slicer modules, with real child processes (no mocks)."""

from __future__ import annotations

import json
import os
import signal
import sys
import textwrap
import time
from pathlib import Path

import pytest
from GloResNetLib.slicer_side.background import (
    LOG,
    PROCESS_EXIT,
    RESULT,
    BackgroundProcess,
    active_processes,
    cancel_all,
    descendants,
    pid_alive,
)
from GloResNetLib.slicer_side.bundles import MODELS_FOLDER_ENV, default_models_folder, find_bundles, register_bundle
from GloResNetLib.slicer_side.command import (
    LIB_PARENT,
    child_env,
    gloresnet_command,
    predict_args,
    python_executable,
    start_gloresnet,
)
from GloResNetLib.slicer_side.devices import describe_devices, device_probe_command
from GloResNetLib.slicer_side.diagnosis import diagnose
from GloResNetLib.slicer_side.requirements import has_module, missing_requirements, pin_installed, read_requirements

PY = sys.executable


def child(code: str, **kwargs) -> BackgroundProcess:
    """Start ``python -c code`` in the background."""
    cmd = [PY, "-u", "-c", textwrap.dedent(code)]
    return BackgroundProcess(cmd, env=child_env(), **kwargs).start()


def drain(proc: BackgroundProcess, timeout: float = 90.0) -> list[dict]:
    """Poll like a GUI timer until the exit event arrives."""
    events, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = proc.poll()
        events += batch
        if any(e["event"] == PROCESS_EXIT for e in batch):
            return events
        time.sleep(0.02)
    proc.cancel()
    raise AssertionError(f"process did not finish in {timeout} s: {proc.log_text()}")


def wait_gone(pids: list[int], timeout: float = 30.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if pid_alive(p)]
        time.sleep(0.05)
    return alive


def test_command_and_environment(tmp_path, monkeypatch):
    cmd = gloresnet_command(["predict", Path("a b.nii")])
    assert cmd[:3] == [sys.executable, "-m", "GloResNetLib"] and cmd[3:] == ["predict", "a b.nii"]
    env = child_env({"X_TEST": "1"}, base={"PYTHONPATH": "/elsewhere"})
    paths = env["PYTHONPATH"].split(os.pathsep)
    assert paths[0] == str(LIB_PARENT) and "/elsewhere" in paths
    assert (LIB_PARENT / "GloResNetLib" / "__init__.py").is_file()
    assert env["PYTHONUNBUFFERED"] == "1" and env["X_TEST"] == "1"
    # outside Slicer: this Python; inside Slicer: PythonSlicer from PATH
    assert python_executable() == sys.executable
    fake = tmp_path / "PythonSlicer"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert python_executable(prefer_slicer=True) == str(fake)

    args = predict_args(["x.nii"], "m", "out", device="cpu", tta=False, cam=False)
    assert args[:2] == ["predict", "x.nii"] and "--json" in args and "--progress-json" in args
    assert {"--no-tta", "--no-cam"} <= set(args) and args[args.index("--device") + 1] == "cpu"
    assert predict_args(["x"], "m", "o", tta_axes=[0, 2])[-2:] == ["--tta-axes", "0,2"]
    assert "--saliency" not in predict_args(["x"], "m", "o")  # gradcam: the command's default
    for method in ("gradient", "all", "gradcam,gradient"):
        assert predict_args(["x"], "m", "o", saliency=method)[-2:] == ["--saliency", method]
    assert predict_args(["x"], "m", "o", saliency="all", occlusion_mask=8)[-4:] == [
        "--saliency",
        "all",
        "--occlusion-mask",
        "8",
    ]
    assert "--saliency" not in predict_args(["x"], "m", "o", cam=False, saliency="gradient")


def test_events_are_parsed_from_both_streams():
    proc = child("""
        import json, sys
        stage = {"event": "stage", "stage": "loading", "fraction": 0.0}
        print(json.dumps(stage), file=sys.stderr, flush=True)
        print("a human log line", file=sys.stderr, flush=True)
        print(json.dumps({"probability": 0.25, "input": "x"}), flush=True)
        print(json.dumps({"event": "error", "input": "y", "message": "y: bad"}), file=sys.stderr, flush=True)
        print("{not json", flush=True)
        print(json.dumps({"event": "done", "fraction": 1.0}), file=sys.stderr, flush=True)
    """)
    assert proc.running and proc.pid
    events = drain(proc)
    kinds = [e["event"] for e in events]
    assert kinds[-1] == PROCESS_EXIT and events[-1]["returncode"] == 0
    assert {"stage", "error", "done", RESULT, LOG} <= set(kinds)
    stderr_order = [e["event"] for e in events if e["event"] in ("stage", "error", "done")]
    assert stderr_order == ["stage", "error", "done"]  # order within a stream is kept
    (result,) = [e for e in events if e["event"] == RESULT]
    assert result["record"] == {"probability": 0.25, "input": "x"}
    assert proc.errors == ["y: bad"]
    assert set(proc.last_log()) == {"a human log line", "{not json"}
    assert not proc.running and proc.finished and proc.returncode == 0
    assert proc.poll() == []  # the exit is reported once
    assert proc.failure() is not None  # an error event counts as failure even with exit code 0


def test_last_log_lines_are_kept_and_failure_message_uses_them():
    proc = child(
        """
        import sys
        for i in range(50):
            print(f"line {i}", flush=True)
        print("RuntimeError: something broke", file=sys.stderr, flush=True)
        sys.exit(3)
    """,
        log_lines=10,
    )
    events = proc.wait(timeout=90)
    assert events[-1]["returncode"] == 3
    assert len(proc.last_log(100)) == 10
    # stdout and stderr are read by separate threads: order is kept within a stream, not between them
    assert [line for line in proc.last_log(100) if line.startswith("line")][-2:] == ["line 48", "line 49"]
    assert proc.last_log(5, "stderr") == ["RuntimeError: something broke"]
    message = proc.failure(n=3)
    assert "exit code 3" in message and "something broke" in message and "line 47" not in message


def test_real_gloresnet_command_runs_with_the_library_on_pythonpath(tmp_path):
    proc = start_gloresnet(["--version"])
    proc.wait(timeout=60)
    assert proc.returncode == 0 and any("gloresnet" in line for line in proc.last_log())
    args = predict_args([tmp_path / "missing.nii.gz"], tmp_path, tmp_path / "o")
    proc = start_gloresnet(args)
    proc.wait(timeout=60)
    assert proc.returncode == 2
    assert "file not found" in proc.failure()


def test_cancel_kills_the_whole_tree():
    proc = child("""
        import json, os, subprocess, sys, time
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
        same_group = subprocess.Popen(sleeper)
        own_session = subprocess.Popen(sleeper, start_new_session=True)   # escapes the process group
        print(json.dumps({"event": "pids", "pids": [same_group.pid, own_session.pid]}), flush=True)
        time.sleep(60)
    """)
    pids = None
    deadline = time.monotonic() + 60
    while pids is None and time.monotonic() < deadline:
        for event in proc.poll():
            if event["event"] == "pids":
                pids = event["pids"]
        time.sleep(0.02)
    assert pids and all(pid_alive(p) for p in pids)
    assert set(pids) <= set(descendants(proc.pid))
    t0 = time.monotonic()
    assert proc.cancel()
    events = proc.wait(timeout=60)
    assert time.monotonic() - t0 < 10
    assert events[-1]["cancelled"] and events[-1]["returncode"] == -signal.SIGKILL
    assert wait_gone([proc.pid, *pids]) == []
    assert proc.failure() is None  # a cancel is not an error
    assert not proc.cancel()  # nothing left to cancel


def test_stop_sends_sigint_for_a_clean_shutdown():
    proc = child("""
        import json, time
        from GloResNetLib.cli import accept_stop_signals
        accept_stop_signals()  # as `gloresnet` does: the test runner may have left SIGINT ignored or blocked
        try:  # the signal may come as soon as "start" is out: already inside the try
            print(json.dumps({"event": "start"}), flush=True)
            for _ in range(1200):
                time.sleep(0.1)
        except KeyboardInterrupt:
            print(json.dumps({"event": "stopped", "checkpoint": "saved"}), flush=True)
            raise SystemExit(130)
    """)
    deadline = time.monotonic() + 60
    started = False
    while not started and time.monotonic() < deadline:
        started = any(e["event"] == "start" for e in proc.poll())
        time.sleep(0.02)
    assert started and proc.stop()
    events = proc.wait(timeout=90)  # generous: CI machines may be loaded
    assert [e for e in events if e["event"] == "stopped"][0]["checkpoint"] == "saved"
    assert events[-1]["returncode"] == 130 and events[-1]["stopped"] and not events[-1]["cancelled"]
    assert diagnose(130, "", stopped=True).kind == "stopped" and proc.failure() is None
    assert not proc.stop()


def test_registry_cancels_every_child_at_exit():
    procs = [child("import time; time.sleep(60)") for _ in range(2)]
    assert set(procs) <= set(active_processes())
    assert cancel_all() >= 2
    for p in procs:
        assert p.wait(timeout=60)[-1]["cancelled"]
    assert not set(procs) & set(active_processes())
    assert wait_gone([p.pid for p in procs]) == []


def test_follow_times_out_and_start_twice_is_refused():
    proc = child("import time; time.sleep(30)")
    with pytest.raises(RuntimeError):
        proc.start()
    with pytest.raises(TimeoutError):
        proc.wait(timeout=0.3)
    assert proc.running
    proc.cancel()
    proc.wait(timeout=60)
    assert not proc.running


@pytest.mark.parametrize(
    ("rc", "log", "kind"),
    [
        (1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate", "cuda_oom"),
        (2, "gloresnet: error: --device cuda requested but CUDA is not available", "cuda_missing"),
        (1, "ModuleNotFoundError: No module named 'nibabel'", "missing_dependency"),
        (2, "gloresnet: error: x.nii: file not found", "user_error"),
        (-9, "", "killed"),
        (1, "Segmentation fault", "crashed"),
        (0, "", "ok"),
    ],
)
def test_diagnose(rc, log, kind):
    diag = diagnose(rc, log)
    assert diag.kind == kind
    assert diag.offer_cpu == (kind in ("cuda_oom", "cuda_missing"))
    if kind == "missing_dependency":
        assert "nibabel" in diag.message


def _bundle_dir(root: Path, name: str, **meta) -> Path:
    path = root / name
    path.mkdir(parents=True)
    body = {
        "format_version": 1,
        "name": name,
        "arch": "resnet10",
        "num_classes": 2,
        "class_names": ["no BI", "BI"],
        "preprocess": {"size": [64, 64, 64]},
        "weights": [{"file": "model.safetensors", "sha256": "0" * 64}],
        "training_data": {"description": "synthetic phantoms", "synthetic": True, "trained": True},
        "provenance": "test",
        "threshold": 0.5,
        "cv_metrics": {"auc": {"mean": 0.7, "sd": 0.05}},
        **meta,
    }
    (path / "metadata.json").write_text(json.dumps(body))
    return path


def test_models_folder_and_bundle_listing(tmp_path, monkeypatch):
    monkeypatch.delenv(MODELS_FOLDER_ENV, raising=False)
    assert default_models_folder(tmp_path) == tmp_path / "GloResNet" / "models"
    monkeypatch.setenv(MODELS_FOLDER_ENV, str(tmp_path / "env"))
    assert default_models_folder(tmp_path) == tmp_path / "env"

    _bundle_dir(tmp_path / "models", "b_model")
    _bundle_dir(tmp_path / "models", "a_model", training_data={"description": "dHCP", "synthetic": False})
    (tmp_path / "models" / "broken").mkdir()
    (tmp_path / "models" / "broken" / "metadata.json").write_text("{oops")
    (tmp_path / "models" / "not_a_bundle").mkdir()
    extra = _bundle_dir(tmp_path / "elsewhere", "c_model")
    _bundle_dir(tmp_path / "models", "d_model", tta_axes=[5])  # the list applies the same schema as loading
    infos = find_bundles(tmp_path / "models", extra, tmp_path / "missing")
    assert [i.name for i in infos] == ["a_model", "b_model", "c_model", "broken", "d_model"]
    assert "tta_axes" in infos[-1].error and "unusable" in infos[-1].label
    a, b = infos[0], infos[1]
    assert not a.synthetic and a.flag == "" and "dHCP" in a.description
    assert b.synthetic and "SYNTHETIC" in b.label and "SYNTHETIC" in b.description
    assert "auc 0.700 ± 0.050" in b.description
    assert infos[-2].error and "unusable" in infos[-2].label


def test_register_bundle_verifies_checksums_in_a_child(tmp_path):
    from conftest import make_bundle

    src = make_bundle(tmp_path / "src" / "tiny")
    dst = register_bundle(src, tmp_path / "models")
    assert dst == tmp_path / "models" / "tiny" and (dst / "metadata.json").is_file()
    assert [b.name for b in find_bundles(tmp_path / "models")] == ["tiny"]
    with pytest.raises(ValueError, match="already installed"):
        register_bundle(src, tmp_path / "models")
    weights = next(src.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-8] + b"corrupt!")
    with pytest.raises(ValueError, match="checksum"):
        register_bundle(src, tmp_path / "models2")
    assert not (tmp_path / "models2" / "tiny").exists()


def test_requirements_and_torch_pinning(tmp_path):
    reqs = tmp_path / "requirements.txt"
    reqs.write_text(
        "# comment\nnumpy>=1.0  # fine\n\n-c constraints.txt\nnumpy>=999\n"
        "definitely-not-installed-gloresnet-xyz>=1\nnibabel; python_version < '3'\n"
    )
    lines = read_requirements(reqs)
    assert lines[0] == "numpy>=1.0" and len(lines) == 4
    assert missing_requirements(lines) == ["numpy>=999", "definitely-not-installed-gloresnet-xyz>=1"]
    shipped = LIB_PARENT / "Resources" / "GloResNet-requirements.txt"
    assert not any(r.lower().startswith("torch") for r in read_requirements(shipped))
    pinned = pin_installed(["torch", "definitely-not-installed-gloresnet-xyz"], tmp_path / "c.txt")
    import torch

    assert pinned.read_text().strip() == f"torch=={torch.__version__}"
    assert pin_installed(["definitely-not-installed-gloresnet-xyz"], tmp_path / "d.txt") is None
    assert has_module("numpy") and not has_module("definitely_not_installed_gloresnet_xyz")


def test_device_probe_reports_torch_and_cuda():
    proc = BackgroundProcess(device_probe_command(), env=child_env()).start()
    events = proc.wait(timeout=60)
    (info,) = [e["record"] for e in events if e["event"] == RESULT]
    import torch

    assert info["torch"] == torch.__version__ and info["cuda"] == torch.cuda.is_available()
    text = describe_devices(info)
    assert ("CUDA" in text) if info["cuda"] else text.startswith("CPU only")
    assert "not installed" in describe_devices({"torch": None})


def test_one_job_wrapper_follows_any_gloresnet_command():
    """slicer_side.jobs.Job, the base of the prediction, dataset-check and training jobs."""
    from GloResNetLib.slicer_side.jobs import Job

    ok = Job(["--version"])
    assert not ok.running and ok.poll() == [] and ok.elapsed_s == 0.0
    events = ok.wait(timeout=120)
    assert events[-1]["event"] == PROCESS_EXIT and ok.finished and ok.succeeded and not ok.running
    assert ok.diagnosis() is None and ok.failure_message() is None and ok.elapsed_s > 0
    with pytest.raises(RuntimeError, match="already started"):
        ok.start()
    bad = Job(["predict", "missing.nii.gz", "--model", "nowhere"]).start()
    seen = []
    bad.wait(timeout=120, on_event=seen.append)
    assert seen and not bad.succeeded and bad.diagnosis().kind == "user_error"
    message = bad.failure_message()
    assert message.startswith(bad.diagnosis().message) and "Last output:" in message
    assert not bad.stop() and not bad.cancel()  # ended: nothing to stop

"""The one list of progress events (GloResNetLib.progress_events) and the one stream they go to."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from GloResNetLib import progress_events
from GloResNetLib.progress_events import EVENTS, emit

LIB = Path(__file__).resolve().parents[1] / "GloResNet" / "GloResNetLib"


def emitted_kinds() -> dict[str, set[str]]:
    """Event kinds written in the library: ``{"event": "x", ...}`` literals and ``event="x"`` keywords."""
    found: dict[str, set[str]] = {}
    for path in LIB.rglob("*.py"):
        if "slicer_side" in path.parts:  # the reader's side
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            kinds = []
            if isinstance(node, ast.Dict):
                kinds = [
                    v.value
                    for k, v in zip(node.keys, node.values)
                    if isinstance(k, ast.Constant) and k.value == "event" and isinstance(v, ast.Constant)
                ]
            elif isinstance(node, ast.Call):
                kinds = [
                    kw.value.value for kw in node.keywords if kw.arg == "event" and isinstance(kw.value, ast.Constant)
                ]
            for kind in kinds:
                found.setdefault(kind, set()).add(path.name)
    return found


def test_every_event_the_library_emits_is_listed():
    found = emitted_kinds()
    assert {"stage", "start", "epoch", "done", "dataset"} <= set(found)  # predict, train and the check report
    unlisted = {kind: sorted(files) for kind, files in found.items() if kind not in EVENTS}
    assert not unlisted, f"add these kinds to GloResNetLib.progress_events.EVENTS: {unlisted}"


def test_events_go_to_stdout_one_json_object_per_line(capsys):
    emit({"event": progress_events.STAGE, "stage": "loading model", "fraction": 0.0})
    emit({"event": progress_events.DONE, "fraction": 1.0})
    captured = capsys.readouterr()
    assert progress_events.STREAM == "stdout" and captured.err == ""
    assert [json.loads(line)["event"] for line in captured.out.splitlines()] == ["stage", "done"]


def test_training_reports_through_the_same_function(capsys):
    from GloResNetLib.training.progress import Reporter

    seen = []
    Reporter(seen.append, json_stdout=True).emit({"event": "epoch", "fold": 0, "epoch": 1})
    captured = capsys.readouterr()
    assert json.loads(captured.out) == seen[0] == {"event": "epoch", "fold": 0, "epoch": 1} and not captured.err

"""The live view of a training run: progress events -> state and MRML nodes updated in place (per-fold curve
tables, a loss chart and a validation-metric chart, the cross-validation metrics table); on ``done`` the
ensemble bundle is registered in the models folder so that the GloResNet module lists it."""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import slicer

from ..errors import InputError
from ..training.metrics import SUMMARY_METRICS, summarize
from .bundles import register_run_bundle
from .files import read_json
from .scene import PLOT_ROLE, find_node, get_scene
from .scene_dataset import PREFIX
from .tables import plot_chart, table_from_columns

TRAINING_ROLE = "GloResNetTraining"
CURVE_COLUMNS = {
    "Epoch": "double",
    "Training loss": "double",
    "Validation loss": "double",
    "Validation AUC": "double",
    "Validation accuracy": "double",
    "Learning rate": "double",
}


METRIC_NAMES = {
    "accuracy": "Accuracy",
    "balanced_accuracy": "Balanced accuracy",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "auc": "AUC",
    "f1": "F1",
}


HISTORY_KEYS = ("train_loss", "val_loss", "val_auc", "val_accuracy", "lr")


FOLD_COLORS = (
    (0.12, 0.47, 0.71),
    (1.0, 0.5, 0.05),
    (0.17, 0.63, 0.17),
    (0.84, 0.15, 0.16),
    (0.58, 0.4, 0.74),
    (0.55, 0.34, 0.29),
    (0.89, 0.47, 0.76),
    (0.5, 0.5, 0.5),
    (0.74, 0.74, 0.13),
    (0.09, 0.75, 0.81),
)


def format_duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 20 s``, ``1 h 05 min``; "?" when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def _number(value: Any) -> float | None:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


@dataclass
class TrainingMonitor:
    """Follows one training run: progress state, curve tables and charts, the metrics table, the bundle.

    Feed it every event (:meth:`handle`); nodes are created once (found again by name in the scene) and
    updated in place. With ``models_folder`` the ensemble bundle is registered there on ``done``.
    """

    scene: Any = None
    models_folder: str | os.PathLike | None = None
    prefix: str = PREFIX
    register_verify: bool = False
    run_dir: Path | None = None
    folds: int = 0
    epochs: int = 0
    n_train: int = 0
    fold: int | None = None
    epoch: int | None = None
    step: int | None = None
    steps: int | None = None
    fraction: float = 0.0
    eta_s: float | None = None
    status: str = "not started"
    history: dict[int, dict[int, dict[str, Any]]] = field(default_factory=dict)
    fold_metrics: dict[int, dict[str, Any]] = field(default_factory=dict)
    summary: dict[str, dict[str, Any]] = field(default_factory=dict)
    bundle: Path | None = None
    registered: Path | None = None
    registration_error: str | None = None
    warning: str | None = None
    stopped_at: tuple[int | None, int | None] | None = None
    errors: list[str] = field(default_factory=list)
    finished: bool = False

    # -- state -------------------------------------------------------------------------------------------
    def reset(self, run_dir: str | os.PathLike | None = None) -> None:
        """Forget the previous run (its nodes are reused and emptied when the new run reports)."""
        self.run_dir = Path(run_dir) if run_dir else None
        self.folds = self.epochs = self.n_train = 0
        self.fold = self.epoch = self.step = self.steps = None
        self.fraction, self.eta_s, self.status = 0.0, None, "starting"
        self.history, self.fold_metrics, self.summary = {}, {}, {}
        self.bundle = self.registered = None
        self.registration_error = self.warning = None
        self.stopped_at, self.errors, self.finished = None, [], False
        self._clear_nodes()

    def handle_all(self, events: Iterable[Mapping[str, Any]]) -> None:
        """:meth:`handle` each event in order."""
        for event in events:
            self.handle(event)

    def handle(self, event: Mapping[str, Any]) -> None:
        """Update the state and the nodes from one progress event (unknown events are ignored)."""
        kind = event.get("event")
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(event)

    def _on_stage(self, e: Mapping[str, Any]) -> None:
        done, total = e.get("done"), e.get("total")
        stage = str(e.get("stage", "preparing"))
        self.status = f"{stage}: {done}/{total} volumes" if total else stage

    def _on_start(self, e: Mapping[str, Any]) -> None:
        run_dir = Path(e["run_dir"]) if e.get("run_dir") else self.run_dir
        if run_dir is not None and (self.run_dir is None or run_dir.resolve() != self.run_dir.resolve()):
            self.reset(run_dir)
        self.run_dir = run_dir
        self.folds, self.epochs = int(e.get("folds", 0)), int(e.get("epochs", 0))
        self.n_train = int(e.get("n_train", 0))
        self.finished, self.stopped_at = False, None
        if run_dir is not None and not self.history and not self.fold_metrics:
            self.load_run(run_dir)  # a resumed run: show the folds finished before
        self.status = f"training {self.n_train} volumes, {self.folds} folds x {self.epochs} epochs"

    def _on_step(self, e: Mapping[str, Any]) -> None:
        self.fold, self.epoch = int(e["fold"]), int(e["epoch"])
        self.step, self.steps = int(e.get("step", 0)), int(e.get("steps", 0) or 0)
        self.fraction = max(0.0, min(1.0, float(e.get("fraction", self.fraction))))
        loss = _number(e.get("loss"))
        self.status = self.progress_text() + (f" - batch loss {loss:.3f}" if loss is not None else "")

    def _on_epoch(self, e: Mapping[str, Any]) -> None:
        fold, epoch = int(e["fold"]), int(e["epoch"])
        self.fold, self.epoch, self.step = fold, epoch, None
        self.epochs = int(e.get("epochs", self.epochs) or self.epochs)
        self.fraction = max(0.0, min(1.0, float(e.get("fraction", self.fraction))))
        self.eta_s = _number(e.get("eta_s"))
        self.history.setdefault(fold, {})[epoch] = {k: e.get(k) for k in HISTORY_KEYS}
        self.update_curves(fold)
        self.status = self.progress_text()

    def _on_fold_end(self, e: Mapping[str, Any]) -> None:
        self.fold_metrics[int(e["fold"])] = dict(e.get("metrics") or {})
        self.summary = summarize([dict(m, fold=k) for k, m in sorted(self.fold_metrics.items())])
        self.update_metrics_table()
        self.status = f"fold {int(e['fold']) + 1} finished: " + _metric_line(e.get("metrics") or {})

    def _on_done(self, e: Mapping[str, Any]) -> None:
        self.finished, self.fraction, self.eta_s = True, 1.0, 0.0
        if e.get("run_dir"):
            self.run_dir = Path(e["run_dir"])
        if e.get("metrics"):
            self.summary = {k: dict(v) for k, v in e["metrics"].items()}
            self.summary = self._with_best_folds(self.summary)
        self.warning = e.get("warning")
        self.update_metrics_table()
        self.bundle = Path(e["bundle"]) if e.get("bundle") else None
        self.status = "done: " + self.summary_text()
        if self.bundle is not None and self.models_folder:
            try:
                self.registered = register_run_bundle(self.bundle, self.models_folder, verify=self.register_verify)
                self.status += f" - model registered as {self.registered.name}"
            except (OSError, ValueError, InputError) as exc:
                self.registration_error = f"could not register the bundle in {self.models_folder}: {exc}"
                self.errors.append(self.registration_error)
                self.status += f" - {self.registration_error}"

    def _on_stopped(self, e: Mapping[str, Any]) -> None:
        fold, epoch = e.get("fold"), e.get("epoch")
        self.stopped_at = (fold, epoch)
        self.eta_s = None
        if fold is None or epoch is None:
            self.status = "stopped while preparing the data, before training began"
            return
        self.status = (
            f"stopped at fold {int(fold) + 1}, epoch {int(epoch) + 1}; the checkpoint is kept - Resume continues"
        )

    def _on_error(self, e: Mapping[str, Any]) -> None:
        self.errors.append(str(e.get("message", "")))
        self.status = "error: " + str(e.get("message", "")).splitlines()[0]

    def progress_text(self) -> str:
        """``fold 2/5, epoch 13/150 (step 3/9) - 41% - ETA 12 min 05 s``."""
        parts = []
        if self.fold is not None:
            parts.append(f"fold {self.fold + 1}/{self.folds or '?'}")
        if self.epoch is not None:
            text = f"epoch {self.epoch + 1}/{self.epochs or '?'}"
            if self.step is not None and self.steps:
                text += f" (step {self.step + 1}/{self.steps})"
            parts.append(text)
        text = ", ".join(parts) or self.status
        text += f" - {100 * self.fraction:.0f}%"
        if self.eta_s is not None and not self.finished:
            text += f" - ETA {format_duration(self.eta_s)}"
        return text

    def summary_text(self) -> str:
        """Cross-validation figures: ``accuracy 0.812 ± 0.050 (best 0.875), ...``."""
        if not self.summary:
            return "no cross-validation metrics yet"
        k = len(self.fold_metrics) or self.folds
        return f"{k}-fold CV: " + ", ".join(
            f"{METRIC_NAMES[m]} {_fmt(s.get('mean'))} ± {_fmt(s.get('sd'))} (best {_fmt(s.get('best'))})"
            for m in ("accuracy", "sensitivity", "specificity", "auc")
            if (s := self.summary.get(m))
        )

    def _with_best_folds(self, summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, s in summary.items():
            if s.get("best") is None or "best_fold" in s:
                continue
            for k, m in sorted(self.fold_metrics.items()):
                if m.get(name) is not None and abs(float(m[name]) - float(s["best"])) < 1e-9:
                    s["best_fold"] = k
                    break
        return summary

    # -- run folder ----------------------------------------------------------------------------------------
    def load_run(self, run_dir: str | os.PathLike) -> None:
        """Show what a run folder already holds: finished folds' curves and metrics, the merged metrics."""
        run_dir = Path(run_dir)
        config = read_json(run_dir / "config.json")
        self.folds = int(config.get("folds", self.folds) or 0)
        self.epochs = int(config.get("epochs", self.epochs) or 0)
        for path in sorted(run_dir.glob("fold_*/result.json")):
            result = read_json(path)
            if "fold" not in result:
                continue
            k = int(result["fold"])
            for h in result.get("history") or []:
                if h and "epoch" in h:
                    record = {key: h.get(key) for key in HISTORY_KEYS}
                    self.history.setdefault(k, {})[int(h["epoch"])] = record
            if result.get("test"):
                self.fold_metrics[k] = {m: result["test"].get(m) for m in SUMMARY_METRICS}
            self.update_curves(k)
        if self.fold_metrics:
            self.summary = summarize([dict(m, fold=k) for k, m in sorted(self.fold_metrics.items())])
            self.update_metrics_table()
        if self.folds and self.epochs:
            done = sum(1 for k in range(self.folds) if (run_dir / f"fold_{k}" / "result.json").is_file())
            self.fraction = done / self.folds

    # -- nodes -----------------------------------------------------------------------------------------------
    @property
    def loss_chart_name(self) -> str:
        return f"{self.prefix} loss"

    @property
    def metric_chart_name(self) -> str:
        return f"{self.prefix} validation metrics"

    @property
    def metrics_table_name(self) -> str:
        return f"{self.prefix} cross-validation metrics"

    def curve_table_name(self, fold: int) -> str:
        return f"{self.prefix} fold {fold} curves"

    def _find(self, class_name: str, name: str):

        return find_node(get_scene(self.scene), class_name, PLOT_ROLE, name)

    def curve_table(self, fold: int):
        return self._find("vtkMRMLTableNode", self.curve_table_name(fold))

    @property
    def loss_chart(self):
        return self._find("vtkMRMLPlotChartNode", self.loss_chart_name)

    @property
    def metric_chart(self):
        return self._find("vtkMRMLPlotChartNode", self.metric_chart_name)

    @property
    def metrics_table(self):
        return self._find("vtkMRMLTableNode", self.metrics_table_name)

    def update_curves(self, fold: int) -> None:
        """Rewrite fold ``fold``'s curve table from the history (one row per epoch, in order) and make sure
        both charts plot it (series are added once; the charts redraw when the table changes)."""

        scene = get_scene(self.scene)
        rows = sorted(self.history.get(fold, {}).items())
        columns = {
            "Epoch": [e + 1 for e, _ in rows],
            "Training loss": [_number(r.get("train_loss")) for _, r in rows],
            "Validation loss": [_number(r.get("val_loss")) for _, r in rows],
            "Validation AUC": [_number(r.get("val_auc")) for _, r in rows],
            "Validation accuracy": [_number(r.get("val_accuracy")) for _, r in rows],
            "Learning rate": [_number(r.get("lr")) for _, r in rows],
        }
        existing = self.curve_table(fold)
        table = table_from_columns(
            self.curve_table_name(fold), columns, scene=scene, node=existing, types=CURVE_COLUMNS
        )
        table.SetAttribute(TRAINING_ROLE, "curves")
        color = FOLD_COLORS[fold % len(FOLD_COLORS)]
        for chart_name, ys, labels, y_title in (
            (
                self.loss_chart_name,
                ["Training loss", "Validation loss"],
                [f"fold {fold} training", f"fold {fold} validation"],
                "loss (weighted cross-entropy)",
            ),
            (
                self.metric_chart_name,
                ["Validation AUC", "Validation accuracy"],
                [f"fold {fold} AUC", f"fold {fold} accuracy"],
                "validation metric",
            ),
        ):
            chart = plot_chart(
                chart_name,
                table,
                "Epoch",
                ys,
                scene=scene,
                x_title="epoch",
                y_title=y_title,
                series_names=labels,
                colors=[color, color],
            )
            chart.SetAttribute(TRAINING_ROLE, "chart")
            dashed = find_node(scene, "vtkMRMLPlotSeriesNode", PLOT_ROLE, f"{chart_name}: {labels[1]}")
            if dashed is not None:
                dashed.SetLineStyle(dashed.LineStyleDash)

    def update_metrics_table(self) -> None:
        """Rewrite the metrics table: one row per finished fold, then mean, sd and best (per metric)."""

        folds = sorted(self.fold_metrics)
        labels = [f"fold {k}" for k in folds]
        rows = [self.fold_metrics[k] for k in folds]
        notes = [""] * len(folds)
        if self.summary:
            for stat in ("mean", "sd", "best"):
                labels.append(stat)
                rows.append({m: (self.summary.get(m) or {}).get(stat) for m in SUMMARY_METRICS})
                notes.append(self._stat_note(stat))
        columns: dict[str, list[Any]] = {"Fold": labels}
        for m in SUMMARY_METRICS:
            columns[METRIC_NAMES[m]] = [_number(r.get(m)) for r in rows]
        columns["Note"] = notes
        types = {"Fold": "string", "Note": "string", **{METRIC_NAMES[m]: "double" for m in SUMMARY_METRICS}}
        table = table_from_columns(
            self.metrics_table_name, columns, scene=get_scene(self.scene), node=self.metrics_table, types=types
        )
        table.SetAttribute(TRAINING_ROLE, "metrics")

    def _stat_note(self, stat: str) -> str:
        k = len(self.fold_metrics) or self.folds
        if stat == "mean":
            note = f"mean over {k} folds"
            return note + (f"; {self.warning}" if self.warning else "")
        if stat == "sd":
            return "sample standard deviation over folds"
        best = [
            f"{METRIC_NAMES[m]}: fold {s['best_fold']}"
            for m in SUMMARY_METRICS
            if (s := self.summary.get(m)) and s.get("best_fold") is not None
        ]
        return "best fold per metric" + (f" ({', '.join(best)})" if best else "")

    def _clear_nodes(self) -> None:
        """Empty this monitor's tables: a new run reuses the nodes (the charts keep their series)."""

        scene = self.scene if self.scene is not None else getattr(slicer, "mrmlScene", None)
        if scene is None:
            return
        for i in range(scene.GetNumberOfNodesByClass("vtkMRMLTableNode")):
            table = scene.GetNthNodeByClass(i, "vtkMRMLTableNode")
            role = table.GetAttribute(TRAINING_ROLE)
            if role in ("curves", "metrics") and (table.GetName() or "").startswith(self.prefix):
                columns = CURVE_COLUMNS if role == "curves" else {"Fold": "string"}
                table_from_columns(table.GetName(), {c: [] for c in columns}, scene=scene, node=table, types=columns)

    def nodes(self) -> dict[str, Any]:
        """The nodes showing this run (charts, metrics table, curve tables by fold) that exist so far."""
        curves = {k: self.curve_table(k) for k in sorted(self.history)}
        return {
            "loss_chart": self.loss_chart,
            "metric_chart": self.metric_chart,
            "metrics_table": self.metrics_table,
            "curve_tables": {k: v for k, v in curves.items() if v},
        }


def _fmt(value: Any) -> str:
    value = _number(value)
    return "n/a" if value is None else f"{value:.3f}"


def _metric_line(metrics: Mapping[str, Any]) -> str:
    return ", ".join(
        f"{METRIC_NAMES[m]} {_fmt(metrics.get(m))}" for m in ("accuracy", "sensitivity", "specificity", "auc")
    )


__all__ = [
    "CURVE_COLUMNS",
    "FOLD_COLORS",
    "HISTORY_KEYS",
    "METRIC_NAMES",
    "TRAINING_ROLE",
    "TrainingMonitor",
    "format_duration",
]

"""``TrainConfig``: every option of ``gloresnet train`` (defaults from the GloResNet authors' code).

Torch-free so that the command line can build and validate it cheaply. Fields are either *run-level* (they
define the experiment and are stored in ``RUN_DIR/config.json``; a resumed or joined run must use the same
values) or *job-level* (:data:`JOB_FIELDS`: how this process runs it - device, which fold, progress output -
free to differ between jobs of one run).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InputError

PROTOCOLS = ("honest", "paper")
SELECT_METRICS = ("auto", "loss", "auc", "accuracy", "balanced_accuracy")
LABEL_RULES = ("ge3", "3or5")
SESSION_CHOICES = ("all", "first", "last")

#: Options that describe how one process runs (not what the experiment is); they may differ on resume.
JOB_FIELDS = frozenset(
    {
        "fold",
        "device",
        "resume",
        "progress_json",
        "progress_bar",
        "log_to_stderr",
        "cache_dir",
        "tensorboard",
        "amp",
        "check_only",
        "num_threads",
    }
)


@dataclass
class TrainConfig:
    """All options of a cross-validated training run (see ``gloresnet train --help``)."""

    # data
    manifest: str | None = None
    dhcp: str | None = None
    out: str | None = None
    skip_bad: bool = False
    synthetic: bool = False
    max_volumes: int | None = None
    dhcp_label_rule: str = "ge3"
    dhcp_preterm_only: bool = True
    dhcp_max_birth_age: float = 37.0
    dhcp_sessions: str = "all"
    # preprocessing (re-applied at prediction from the bundle)
    size: int = 128
    normalization: str = "zscore"
    antialias: bool = False
    reorient: bool = True
    # model
    arch: str = "resnet10"
    arch_params: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    # cross-validation
    folds: int = 5
    seed: int = 42
    protocol: str = "honest"
    val_fraction: float = 0.2
    select_metric: str = "auto"
    # optimisation
    epochs: int = 150
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_epochs: int = 0
    patience: int | None = None
    grad_accum: int = 1
    class_weights: bool = True
    # augmentation
    mixup_alpha: float = 1.0
    flip_prob: float = 0.5
    affine_degrees: float = 0.0
    affine_scale: float = 0.0
    # evaluation and bundle
    tta: bool = True
    threshold: float = 0.5
    name: str | None = None
    # job-level
    fold: int | None = None
    device: str = "auto"
    resume: str | None = None
    progress_json: bool = False
    progress_bar: bool = False
    log_to_stderr: bool = False
    cache_dir: str | None = None
    tensorboard: bool = True
    amp: bool = True
    check_only: bool = False
    num_threads: int | None = None

    def validate(self) -> TrainConfig:
        """Check option values; raises :class:`InputError` naming the bad option."""
        if self.resume is None and self.check_only is False and not self.out:
            raise InputError("--out RUN_DIR is required (or --resume RUN_DIR)")
        if self.resume is None and bool(self.manifest) == bool(self.dhcp):
            raise InputError("give exactly one of --manifest CSV or --dhcp ROOT")
        checks = [
            (self.folds >= 2, "--folds must be at least 2"),
            (self.epochs >= 1, "--epochs must be at least 1"),
            (self.batch_size >= 2, "--batch-size must be at least 2"),
            (self.lr > 0, "--lr must be positive"),
            (self.weight_decay >= 0, "--weight-decay must be >= 0"),
            (self.mixup_alpha >= 0, "--mixup-alpha must be >= 0 (0 disables mixup)"),
            (0 <= self.flip_prob <= 1, "--flip-prob must lie in [0, 1]"),
            (0 <= self.affine_degrees <= 45, "--affine-degrees must lie in [0, 45]"),
            (0 <= self.affine_scale < 0.5, "--affine-scale must lie in [0, 0.5)"),
            (0 < self.val_fraction < 0.5, "--val-fraction must lie in (0, 0.5)"),
            (
                self.warmup_epochs >= 0 and self.warmup_epochs < self.epochs,
                "--warmup-epochs must be >= 0 and below --epochs",
            ),
            (self.patience is None or self.patience >= 1, "--patience must be at least 1"),
            (self.grad_accum >= 1, "--grad-accum must be at least 1"),
            (0 < self.threshold < 1, "--threshold must lie strictly between 0 and 1"),
            (
                self.max_volumes is None or self.max_volumes >= 2 * self.folds,
                "--max-volumes must be at least twice --folds",
            ),
            (self.fold is None or 0 <= self.fold < self.folds, f"--fold must lie in 0..{self.folds - 1}"),
            (self.protocol in PROTOCOLS, f"--protocol must be one of {PROTOCOLS}"),
            (self.select_metric in SELECT_METRICS, f"--select-metric must be one of {SELECT_METRICS}"),
            (self.dhcp_label_rule in LABEL_RULES, f"--dhcp-label-rule must be one of {LABEL_RULES}"),
            (self.dhcp_sessions in SESSION_CHOICES, f"--dhcp-sessions must be one of {SESSION_CHOICES}"),
            (8 <= int(self.size) <= 512, "--size must lie between 8 and 512"),
            (self.batch_size >= 2 * self.grad_accum, "--batch-size must be at least twice --grad-accum"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        return self

    @property
    def selection(self) -> str:
        """The checkpoint-selection metric used ('auto': loss; accuracy under the paper's protocol)."""
        if self.select_metric != "auto":
            return self.select_metric
        return "accuracy" if self.protocol == "paper" else "loss"

    def run_fields(self) -> dict[str, Any]:
        """The run-level options (stored in ``config.json``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in JOB_FIELDS}

    def to_json(self) -> str:
        return json.dumps(self.run_fields(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. ``config.json``); unknown keys are refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown training options {unknown}")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    @property
    def source(self) -> Path:
        """The dataset source path (manifest file or dHCP root)."""
        return Path(self.manifest or self.dhcp or "")

"""``TrainConfig``: every option of ``gloresnet train``, each defined once (defaults from the GloResNet authors' code).

Each option is one dataclass field carrying its default and, in the field's metadata (:func:`option`), its
help text, allowed range or choices, command-line flag and the commands that offer it. The ``train`` and
``pretrain-age`` parsers (:mod:`.options`; the generic machinery: :mod:`.optionspec`),
:meth:`TrainConfig.to_argv`, :meth:`TrainConfig.validate` and the GUI's field list (:func:`list_options`) are
all built from these fields, so no default is written twice.

Torch-free so that the command line can build and validate it cheaply. Fields are either *run-level* (they
define the experiment and are stored in ``RUN_DIR/config.json``; a resumed or joined run must use the same
values) or *job-level* (:data:`JOB_FIELDS`: how this process runs it - device, which fold, progress output -
free to differ between jobs of one run). :class:`AgeConfig` (``pretrain-age``) is a ``TrainConfig`` with two
more options and its own mixup default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ..errors import InputError
from .optionspec import AGE, TRAIN, OptionSpec, Range, change_option, config_argv, list_options, option

__all__ = [
    "AGE",
    "JOB_FIELDS",
    "TRAIN",
    "AgeConfig",
    "OptionSpec",
    "Range",
    "TrainConfig",
    "list_options",
    "option",
]

PROTOCOLS = ("honest", "paper")
SELECT_METRICS = ("auto", "loss", "auc", "accuracy", "balanced_accuracy", "last")
LABEL_RULES = ("ge3", "3or5")
SESSION_CHOICES = ("all", "first", "last")
NORMALIZATIONS = ("zscore", "zscore_foreground")
LOSSES = ("smooth_l1", "l1")
FINAL_CHOICES = ("all", "best-fold")
#: architectures that can carry a lesion head (``models.resnet.ResNet3D``; ``train --lesion-weight``)
LESION_HEAD_ARCHS = ("resnet10", "resnet10_dilated", "resnet18")


@dataclass
class TrainConfig:
    """All options of a cross-validated training run (see ``gloresnet train --help``)."""

    #: the command whose options these are (:meth:`to_argv`)
    COMMAND: ClassVar[str] = TRAIN

    # data
    manifest: str | None = option(
        help="CSV with path,label[,subject,session,age_weeks,site]; label 0 = no BI, 1 = BI (pretrain-age: "
        "needs age_weeks)",
        metavar="CSV",
        data=True,
        exclusive="source",
    )
    dhcp: str | None = option(
        help="dHCP BIDS folder (participants.tsv, sub-*/sub-*_sessions.tsv, sub-*/ses-*/anat/)",
        metavar="ROOT",
        data=True,
        exclusive="source",
    )
    out: str | None = option(help="run folder to create", metavar="RUN_DIR")
    skip_bad: bool = option(False, "leave out rows with problems instead of refusing to train", data=True)
    synthetic: bool = option(
        False,
        "mark the training data as synthetic in the bundle (automatic when the data folder has a "
        "cohort.json from `gloresnet synth`)",
    )
    max_volumes: int | None = option(
        help="use a seeded, class-balanced subset of about N volumes (whole subjects)", metavar="N", data=True
    )
    dhcp_label_rule: str = option(
        "ge3",
        "radiology score -> label: ge3 = 1-2 no BI, 3-5 BI (GloResNet authors); 3or5 = 3 or 5 BI, 4 "
        "(non-brain finding) excluded. 'Q' sessions are always excluded",
        choices=LABEL_RULES,
        data=True,
    )
    dhcp_preterm_only: bool = option(
        True,
        "keep term-born infants too (default: preterm only, birth_age < --dhcp-max-birth-age)",
        flag="--dhcp-all-ages",
        data=True,
    )
    dhcp_max_birth_age: float = option(
        37.0, "preterm filter: gestational age at birth below this", metavar="WEEKS", data=True
    )
    dhcp_sessions: str = option(
        "all", "which sessions of each infant to use (folds are grouped by infant)", choices=SESSION_CHOICES, data=True
    )
    # preprocessing (re-applied at prediction from the bundle)
    size: int = option(128, "network input size per axis", range=Range(8, 512))
    normalization: str = option(
        "zscore", "z-score over the whole volume (paper) or the Otsu foreground", choices=NORMALIZATIONS
    )
    antialias: bool = option(False, "Gaussian anti-aliasing before shrinking")
    reorient: bool = option(True, "reorient to the canonical (RAS) axes before resizing", cli=False)
    # model
    arch: str = option(
        "resnet10", "architecture (also resnet10_dilated, resnet18, mrf_dsnet, acs_resnet18, slice_resnet18)"
    )
    arch_params: dict[str, Any] = option(
        help="extra architecture parameters (--widths W1,W2,W3,W4 sets 'widths')", metavar="JSON", default_factory=dict
    )
    pretrained: str | None = option(
        help="backbone weights, classifier keys dropped: MedicalNet resnet_10*.pth (resnet10/18), a torchvision "
        "2D resnet18 state dict (acs_resnet18, slice_resnet18) or pretrain-age's age_backbone.safetensors",
        metavar="WEIGHTS",
        default_text="random initialisation",
    )
    # cross-validation
    folds: int = option(5, "number of cross-validation folds", data=True, range=Range(low=2))
    seed: int = option(42, "seed of the split and the training", data=True)
    protocol: str = option(
        "honest",
        "honest: checkpoint chosen on a grouped validation split inside the training fold; paper: "
        "chosen on the test fold, as the authors' code (OPTIMISTIC figures; train only)",
        choices=PROTOCOLS,
        data=True,
    )
    val_fraction: float = option(
        0.2,
        "share of a training fold's subjects held out for validation",
        data=True,
        range=Range(0, 0.5, low_open=True, high_open=True),
    )
    select_metric: str = option(
        "auto",
        "checkpoint choice (auto: validation loss; accuracy under --protocol paper; last: the last epoch, a fixed "
        "schedule)",
        choices=SELECT_METRICS,
        commands=frozenset({TRAIN}),
    )
    # optimisation
    epochs: int = option(150, "epochs per fold (pretrain-age: and for the final model)", range=Range(low=1))
    batch_size: int = option(32, "optimizer batch size", range=Range(low=2))
    lr: float = option(2e-3, "AdamW learning rate", range=Range(low=0, low_open=True))
    weight_decay: float = option(0.01, "AdamW weight decay", range=Range(low=0))
    warmup_epochs: int = option(0, "linear warm-up epochs before the cosine (below --epochs)", range=Range(low=0))
    patience: int | None = option(
        help="early stopping after this many epochs without a better validation score",
        metavar="EPOCHS",
        range=Range(low=1),
        default_text="off",
    )
    grad_accum: int = option(
        1, "split each batch into N micro-batches (less memory, same batch)", metavar="N", range=Range(low=1)
    )
    class_weights: bool = option(
        True,
        "unweighted cross-entropy (default: class weights N / (2 N_c) of the training fold)",
        commands=frozenset({TRAIN}),
    )
    lesion_weight: float = option(
        0.0,
        "weight of an auxiliary lesion-map loss learnt from lesion masks (manifest column mask_path: a mask on "
        "each BI scan's grid; 0 = off); adds a lesion head to resnet architectures",
        range=Range(0, 100),
        commands=frozenset({TRAIN}),
    )
    # augmentation
    mixup_alpha: float = option(1.0, "mixup Beta(alpha, alpha), 0 = off", range=Range(low=0))
    flip_prob: float = option(0.5, "random left-right flip probability", range=Range(0, 1))
    affine_degrees: float = option(0.0, "random rotation up to +/- degrees (0 = off)", range=Range(0, 45))
    affine_scale: float = option(
        0.0, "random zoom up to +/- this fraction (0 = off)", range=Range(0, 0.5, high_open=True)
    )
    # evaluation and bundle
    tta: bool = option(True, "evaluate without the left-right flip test-time augmentation")
    threshold: float = option(
        0.5,
        "decision threshold on P(BI)",
        range=Range(0, 1, low_open=True, high_open=True),
        commands=frozenset({TRAIN}),
    )
    name: str | None = option(help="bundle name", default_text="the run folder's name", commands=frozenset({TRAIN}))
    # job-level
    fold: int | None = option(
        help="train only fold K (0-based) in RUN_DIR; run the others as separate jobs",
        metavar="K",
        job=True,
        commands=frozenset({TRAIN}),
    )
    device: str = option("auto", "auto (CUDA if available), cpu or cuda", job=True)
    resume: str | None = option(
        help="continue a stopped or killed run (finished folds are kept), or merge a finished one; refused "
        "(exit 2, holder named) while another job holds RUN_DIR",
        metavar="RUN_DIR",
        job=True,
        commands=frozenset({TRAIN}),
    )
    progress_json: bool = option(False, "one JSON progress event per line on stdout (human log on stderr)", job=True)
    progress_bar: bool = option(False, "a progress bar on stderr", job=True, cli=False)
    log_to_stderr: bool = option(False, "the human log on stderr", job=True, cli=False)
    cache_dir: str | None = option(
        help="preprocessing cache",
        metavar="DIR",
        job=True,
        default_text="$GLORESNET_CACHE or ~/.cache/gloresnet/preprocessed",
    )
    tensorboard: bool = option(True, "do not write TensorBoard event files", job=True)
    amp: bool = option(True, "no mixed precision on CUDA", job=True)
    check_only: bool = option(
        False,
        "read and decode the dataset, print its report and exit (2 if it has problems)",
        job=True,
        commands=frozenset({TRAIN}),
    )
    num_threads: int | None = option(
        help="CPU threads for torch; stored with the run, --resume reuses it", job=True, default_text="torch's choice"
    )

    def validate(self) -> TrainConfig:
        """Check option values.

        Returns:
            ``self``.
        Raises:
            InputError: naming the bad option.
        """
        if self.resume is None and self.check_only is False and not self.out:
            raise InputError("--out RUN_DIR is required (or --resume RUN_DIR)")
        if self.resume is None and bool(self.manifest) == bool(self.dhcp):
            raise InputError("give exactly one of --manifest CSV or --dhcp ROOT")
        for spec in list_options(type(self)):
            value = getattr(self, spec.name)
            if spec.range is not None and value is not None and value not in spec.range:
                raise InputError(f"{spec.flag} must be {spec.range.text()}")
            if spec.choices is not None and value not in spec.choices:
                raise InputError(f"{spec.flag} must be one of {spec.choices}")
        checks = [
            (self.warmup_epochs < self.epochs, "--warmup-epochs must be below --epochs"),
            (
                self.max_volumes is None or self.max_volumes >= 2 * self.folds,
                "--max-volumes must be at least twice --folds",
            ),
            (self.fold is None or 0 <= self.fold < self.folds, f"--fold must lie in 0..{self.folds - 1}"),
            (self.batch_size >= 2 * self.grad_accum, "--batch-size must be at least twice --grad-accum"),
            (
                not self.lesion_weight or self.arch in LESION_HEAD_ARCHS,
                f"--lesion-weight needs an architecture with a lesion head ({', '.join(LESION_HEAD_ARCHS)})",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)
        return self

    @property
    def model_params(self) -> dict[str, Any]:
        """The parameters the network is built with: ``arch_params``, with ``lesion_head="aux"`` when a lesion-map
        loss is trained (``lesion_weight`` > 0) and ``arch_params`` names no lesion head (``"mil"`` makes the lesion
        map the classifier), so that bundles rebuild the same modules."""
        if self.lesion_weight and self.arch_params.get("lesion_head") in (None, False, "none"):
            return {**self.arch_params, "lesion_head": "aux"}
        return dict(self.arch_params)

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
        """The run-level options as JSON text."""
        return json.dumps(self.run_fields(), indent=2, sort_keys=True)

    def to_argv(self, command: str | None = None) -> list[str]:
        """The command line that gives this configuration back (:func:`.options.parse_config`).

        Args:
            command: ``train`` or ``pretrain-age`` (default: this class's command); not part of the result.
        Returns:
            Flags and values of the options that differ from their defaults, in field order (fields the
            program sets itself, such as ``progress_bar``, are not command-line options and are left out).
        """
        return config_argv(self, command)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict (e.g. ``config.json``); unknown keys are refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise InputError(f"unknown training options {unknown}")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some options changed."""
        return dataclasses.replace(self, **changes)

    @property
    def source(self) -> Path:
        """The dataset source path (manifest file or dHCP root)."""
        return Path(self.manifest or self.dhcp or "")


@dataclass
class AgeConfig(TrainConfig):
    """The options of ``gloresnet pretrain-age``: the training options it offers, mixup off by default, and
    the loss and the exported model. :meth:`train_config` gives the ``TrainConfig`` part."""

    COMMAND: ClassVar[str] = AGE

    mixup_alpha: float = change_option(
        TrainConfig, "mixup_alpha", 0.0, help="mixup Beta(alpha, alpha) with linearly mixed ages, 0 = off"
    )
    loss: str = option(
        "smooth_l1",
        "loss on the standardised age: smooth L1 (Huber, beta 1 SD) or L1",
        choices=LOSSES,
        commands=frozenset({AGE}),
    )
    final: str = option(
        "all",
        "exported weights: all = a final model trained on all data, last epoch; best-fold = the fold "
        "model with the lowest inner-validation MAE (no extra training)",
        choices=FINAL_CHOICES,
        commands=frozenset({AGE}),
    )

    def train_config(self) -> TrainConfig:
        """The :class:`TrainConfig` fields of these options."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(TrainConfig)})


#: Options that describe how one process runs (not what the experiment is); they may differ on resume.
JOB_FIELDS = frozenset(s.name for s in list_options(TrainConfig) if s.job)

"""``OUT/bundle/`` of ``gloresnet pretrain-age``: the fold models as a brain-age model bundle.

The bundle has the classifier bundles' format and checks (:func:`~GloResNetLib.bundle.save_bundle`: one
safetensors file per fold model, ``metadata.json`` with their SHA-256) with ``task: "age_regression"`` and a
``target`` (:mod:`GloResNetLib.age_target`): each fold model predicts ``(age - mean) / sd`` with the mean and
sd of its own training fold, recorded per model as ``offset`` and ``scale``. ``gloresnet predict --model
OUT/bundle`` averages the fold models' ages over the TTA views. Its CV metrics are those fold models' test MAEs
(each on data it never saw), so they describe exactly the ensemble's members; the transfer backbone
``age_backbone.safetensors`` (``--final all``: a model trained on all data) is written separately and is not
part of the bundle.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..age_target import AGE_REGRESSION, age_target
from ..bundle import default_metadata, save_bundle
from .config import TrainConfig
from .merge import training_data
from .runfolder import preprocess_config, read_json

__all__ = ["BUNDLE_DIR", "age_training_data", "write_age_bundle"]

BUNDLE_DIR = "bundle"


def age_training_data(dataset_doc: dict[str, Any], ages: np.ndarray) -> dict[str, Any]:
    """The bundle's ``training_data`` (as for classifiers, ``synthetic`` flag included) with the age range
    instead of the label counts, which brain-age training does not use."""
    td = training_data(dataset_doc)
    td.pop("classes", None)
    td["age_weeks"] = {
        "min": float(ages.min()),
        "max": float(ages.max()),
        "mean": float(ages.mean()),
        "sd": float(ages.std()),
    }
    td["description"] = (
        f"{'SYNTHETIC data (demonstration only): ' if td['synthetic'] else ''}{td['n']} volumes of "
        f"{td['n_subjects']} subjects, age at scan {ages.min():.1f}-{ages.max():.1f} weeks, from "
        f"{td['source_kind']} {td['source']}"
    )
    return td


def write_age_bundle(run_dir: Path, cfg: TrainConfig, loss: str, summary: dict[str, Any], ages: np.ndarray) -> Path:
    """Write ``RUN_DIR/bundle`` from the finished folds (``fold_K/model.safetensors`` and ``result.json``).

    Args:
        run_dir: the pretrain-age run folder; cfg: its options; loss: its loss name.
        summary: its ``metrics.json`` document (:func:`~GloResNetLib.training.age.finalize_age_run`).
        ages: ages at scan (weeks) of every training volume, shape (N,).
    Returns:
        The bundle folder (replaced atomically when it exists).
    """
    from safetensors.torch import load_file

    from ..models import describe_pretrained

    folds = [run_dir / f"fold_{k}" for k in range(cfg.folds)]
    states = [load_file(str(d / "model.safetensors")) for d in folds]
    targets = [read_json(d / "result.json")["target"] for d in folds]
    td = age_training_data(read_json(run_dir / "dataset.json"), ages)
    cv = {
        "protocol": "honest",
        "k": cfg.folds,
        "note": summary["note"],
        "mae_weeks": {k: summary["mae_weeks"][k] for k in ("mean", "sd")},
        "baseline_mae_weeks": {k: summary["baseline_mae_weeks"][k] for k in ("mean", "sd")},
        "per_fold_mae_weeks": summary["mae_weeks"]["values"],
        "pooled": summary["pooled"],
        "pooled_baseline_mae_weeks": summary["pooled_baseline_mae_weeks"],
    }
    init = describe_pretrained(cfg.pretrained, cfg.arch) if cfg.pretrained else "random initialisation"
    provenance = (
        f"GloResNet brain-age {cfg.folds}-fold cross-validation ensemble ({cfg.arch}, {cfg.size}^3 input), trained "
        f"by gloresnet {__version__} pretrain-age on {td['description']}; {cfg.epochs} epochs, AdamW lr "
        f"{cfg.lr:g} wd {cfg.weight_decay:g}, batch {cfg.batch_size}, loss {loss} on the standardised age, {init}, "
        f"seed {cfg.seed}; each fold model's epoch chosen on its inner validation split (lowest MAE). "
        "The transfer backbone age_backbone.safetensors of the same run is not part of this bundle."
    )
    meta = default_metadata(
        cfg.name or run_dir.name,
        arch=cfg.arch,
        arch_params=cfg.arch_params,
        preprocess=preprocess_config(cfg),
        training_data=td,
        provenance=provenance,
        cv_metrics=cv,
        tta_axes=(0,),
        extra={
            "task": AGE_REGRESSION,
            "num_classes": 1,
            "target": age_target(
                [t["mean"] for t in targets],
                [t["sd"] for t in targets],
                standardisation="each fold model predicts (age - mean) / sd with the mean and sd of its own "
                "training fold: offset = mean, scale = sd (weeks)",
            ),
            "loss": loss,
        },
    )
    for key in ("class_names", "threshold"):  # a regression has neither
        meta.pop(key)
    return save_bundle(run_dir / BUNDLE_DIR, states, meta, overwrite=True)

"""Checks that keep a run honest and its folder usable: identical images under different rows, and the
refusals of a fold made before the run folder is written (so that a refused start blocks nothing)."""

from __future__ import annotations

from .config import TrainConfig
from .datasets import DatasetReport
from .folds import Split

SYNTHETIC_NOTE = "trained on SYNTHETIC data: demonstration only, not clinical evidence"


def flag_identical_content(report: DatasetReport, file_hashes: dict[str, str]) -> int:
    """Report each sample whose file content (SHA-256 of its bytes, as hashed by the preprocessing cache)
    equals an earlier sample's as a ``duplicate image`` problem, like a duplicate path: the same scan under
    two rows could land in the training and the test data of one fold. The first row is kept.

    Args:
        report: the dataset report (its ``samples`` in dataset order); problems are added to it.
        file_hashes: source path (as ``str``) -> SHA-256 hex digest; samples without a hash are skipped.

    Returns:
        The number of samples reported.
    """
    first: dict[str, object] = {}
    found = []
    for s in report.samples:
        digest = file_hashes.get(str(s.path))
        if digest is None:
            continue
        if digest in first:
            found.append((s, first[digest]))
        else:
            first[digest] = s
    for s, original in found:
        same_subject = "" if original.subject == s.subject else f" (subject {original.subject}, label {original.label})"
        report.add_problem(s, "duplicate image", f"same file content as {original.where}{same_subject}")
    return len(found)


def preflight(cfg: TrainConfig, splits: list[Split], world: int = 1) -> None:
    """Refuse, before anything is written, what a fold would refuse after the run folder holds the run.

    Checks every fold's training size against the processes and micro-batches, builds the model once and
    loads ``--pretrained`` into it (a wrong architecture or file is refused here).

    Raises:
        InputError: with the fold and what to change.
    """
    from ..errors import InputError
    from ..models import build_model, load_pretrained_weights

    for sp in splits:
        if len(sp.train) < 2 * world * cfg.grad_accum:
            raise InputError(
                f"fold {sp.fold}: {len(sp.train)} training volumes cannot be split into {world} process(es) x "
                f"{cfg.grad_accum} micro-batch(es) of at least 2"
            )
    model = build_model(cfg.arch, 2, **cfg.model_params)
    if cfg.pretrained:
        load_pretrained_weights(model, cfg.pretrained, arch=cfg.arch)

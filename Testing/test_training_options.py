"""Training options: one definition per option (``training.config``), the parsers and argv built from it."""

from __future__ import annotations

import argparse
import dataclasses

import pytest
from GloResNetLib.cli import build_parser
from GloResNetLib.errors import InputError
from GloResNetLib.training.config import AGE, TRAIN, AgeConfig, Range, TrainConfig, list_options
from GloResNetLib.training.options import given_options, parse_config

NON_DEFAULT = TrainConfig(
    manifest="data/m.csv",
    out="runs/r1",
    skip_bad=True,
    synthetic=True,
    max_volumes=40,
    dhcp_label_rule="3or5",
    dhcp_preterm_only=False,
    dhcp_max_birth_age=35.5,
    dhcp_sessions="first",
    size=96,
    normalization="zscore_foreground",
    antialias=True,
    arch="resnet10_dilated",
    arch_params={"widths": [16, 32, 64, 128], "dropout": 0.2},
    pretrained="w.pth",
    folds=3,
    seed=7,
    protocol="paper",
    val_fraction=0.25,
    select_metric="auc",
    epochs=20,
    batch_size=8,
    lr=1e-4,
    weight_decay=0.0,
    warmup_epochs=2,
    patience=5,
    grad_accum=2,
    class_weights=False,
    lesion_weight=2.0,
    mixup_alpha=0.4,
    flip_prob=0.0,
    affine_degrees=10.0,
    affine_scale=0.1,
    tta=False,
    threshold=0.4,
    name="n",
    fold=1,
    device="cpu",
    progress_json=True,
    cache_dir="c",
    tensorboard=False,
    amp=False,
    num_threads=2,
)


@pytest.mark.parametrize("cfg", [TrainConfig(), NON_DEFAULT, TrainConfig(dhcp="root", resume="r", check_only=True)])
def test_train_round_trip(cfg):
    assert parse_config(cfg.to_argv()) == cfg
    # the real `gloresnet train` parser reads the same arguments into the same configuration
    parsed = build_parser().parse_args(["train", *cfg.to_argv()])
    assert TrainConfig(**given_options(parsed, TrainConfig)) == cfg


def test_every_command_line_option_of_train_is_exercised():
    # each option of `train` differs from its default in one of the round-trip configurations
    other = TrainConfig(dhcp="root", resume="r", check_only=True)
    for spec in list_options(TrainConfig, TRAIN):
        assert spec.default != getattr(NON_DEFAULT, spec.name) or spec.default != getattr(other, spec.name), spec.name


def test_age_round_trip_and_shared_fields():
    age = AgeConfig(manifest="m.csv", out="o", loss="l1", final="best-fold", mixup_alpha=0.2, epochs=3)
    assert parse_config(age.to_argv(), AGE) == age
    assert parse_config(AgeConfig(out="o").to_argv(), AGE) == AgeConfig(out="o")  # --out is required
    assert AgeConfig().mixup_alpha == 0.0 and TrainConfig().mixup_alpha == 1.0
    assert age.train_config() == TrainConfig(manifest="m.csv", out="o", mixup_alpha=0.2, epochs=3)
    # pretrain-age offers the shared options, not those only `train` has
    names = {s.name for s in list_options(AgeConfig, AGE)}
    assert {"epochs", "lr", "arch", "manifest", "loss", "final"} <= names
    assert not names & {"select_metric", "class_weights", "threshold", "fold", "resume", "check_only", "name"}
    with pytest.raises(ValueError, match="select_metric"):
        AgeConfig(select_metric="auc").to_argv()
    assert TrainConfig(progress_bar=True).to_argv() == []  # set by the handler, not an option


def test_option_list_for_the_gui():
    specs = {s.name: s for s in list_options(TrainConfig, TRAIN)}
    epochs = specs["epochs"]
    assert (epochs.flag, epochs.type, epochs.default, epochs.range) == ("--epochs", int, 150, Range(low=1))
    assert epochs.help and "150" not in epochs.help  # the default comes from the field, not the text
    assert specs["tta"].flag == "--no-tta" and specs["tta"].type is bool
    assert specs["patience"].optional and specs["patience"].default is None
    assert specs["protocol"].choices == ("honest", "paper")
    assert "progress_bar" not in specs and "reorient" not in specs
    for spec in list_options(TrainConfig):
        assert spec.help, spec.name
        if spec.default is not None and spec.type in (int, float):
            assert str(spec.default) not in spec.help.replace("0.5)", ""), spec.name


def test_help_shows_the_field_defaults():
    sub = build_parser()._subparsers._group_actions[0].choices  # noqa: SLF001
    for command, default in ((TRAIN, "(default 1)"), (AGE, "(default 0)")):
        text = sub[command].format_help()
        assert "(default 150)" in text and "--mixup-alpha" in text
        options = text[text.index("options:") :]
        mixup = options[options.index("--mixup-alpha MIXUP_ALPHA") : options.index("--flip-prob FLIP_PROB")]
        assert default in " ".join(mixup.split())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"flip_prob": 1.5}, r"--flip-prob must be in \[0, 1\]"),
        ({"val_fraction": 0.5}, r"--val-fraction must be in \(0, 0.5\)"),
        ({"lr": 0.0}, "--lr must be positive"),
        ({"protocol": "other"}, "--protocol must be one of"),
        ({"warmup_epochs": 150}, "--warmup-epochs must be below --epochs"),
        ({"fold": 5}, r"--fold must lie in 0..4"),
    ],
)
def test_validation_from_the_field_ranges(change, message):
    with pytest.raises(InputError, match=message):
        TrainConfig(manifest="m.csv", out="o", **change).validate()
    TrainConfig(manifest="m.csv", out="o").validate()


def test_bad_option_values_are_refused_by_the_parser():
    with pytest.raises(argparse.ArgumentError):
        parse_config(["--widths", "1,2"])
    with pytest.raises(argparse.ArgumentError):
        parse_config(["--arch-params", "[1]"])
    assert dataclasses.fields(AgeConfig)[0].name == "manifest"

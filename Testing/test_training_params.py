"""The GloResNetTraining module's parameters (GloResNetLib.slicer_side.training_params): the paper's defaults
and the CPU demo preset from ``TrainConfig``'s fields, the ``gloresnet train`` command line written by
``TrainConfig.to_argv`` and read back by the real parser, the parameter node's fields and tooltips, and bad
values refused before anything runs. Plain Python (no Slicer needed)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from GloResNetLib.errors import InputError
from GloResNetLib.slicer_side import training_params
from GloResNetLib.slicer_side.training_params import (
    GUI_FIELDS,
    SOURCE_LABELS,
    TRAINING_REQUIREMENTS,
    TrainingParameters,
    can_resume,
    check_args,
    read_training_requirements,
    resume_args,
    train_args,
)
from GloResNetLib.training.config import TrainConfig
from training_fixtures import tiny_params, write_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """A small cohort's manifest (the files the checks look for) and a cache folder."""
    root = tmp_path_factory.mktemp("training_params")
    return {"manifest": write_cohort(root / "cohort", n_subjects=4), "cache": root / "cache"}


def test_paper_defaults_cpu_demo_preset_and_the_command_line(tmp_path):
    from GloResNetLib.cli import build_parser
    from GloResNetLib.training.options import given_options

    paper = TrainingParameters()
    fields = ("arch", "folds", "epochs", "batch_size", "lr", "mixup_alpha", "class_weights", "size", "seed")
    assert (
        tuple(getattr(paper, k) for k in fields)
        == ("resnet10", 5, 150, 32, 2e-3, 1.0, True, 128, 42)
        == tuple(getattr(TrainConfig(), k) for k in fields)
    )
    assert paper.widths is None and paper.pretrained == "" and paper.device == "auto"
    demo = TrainingParameters.cpu_demo(manifest="m.csv", seed=7)
    assert (demo.arch, demo.widths, demo.size, demo.epochs, demo.batch_size, demo.device, demo.seed) == (
        "resnet10_dilated",
        (16, 32, 64, 128),
        64,
        30,
        8,
        "cpu",
        7,
    )
    assert demo.apply_paper_defaults().replace(seed=42, manifest="") == paper.replace(device="auto")

    manifest = tmp_path / "data" / "manifest.csv"
    weights = tmp_path / "resnet_10.pth"
    p = TrainingParameters(
        manifest=str(manifest),
        output_folder=str(tmp_path / "runs"),
        run_name="r1",
        folds=3,
        epochs=20,
        batch_size=8,
        lr=1e-4,
        mixup_alpha=0.4,
        class_weights=False,
        size=96,
        pretrained=str(weights),
        device="cuda",
        seed=3,
        synthetic=True,
        num_threads=2,
    )
    args = train_args(p)
    # TrainConfig.to_argv: the options that differ from their defaults, in TrainConfig's field order
    assert args == [
        "train",
        "--manifest",
        str(manifest),
        "--out",
        str(tmp_path / "runs" / "r1"),
        "--synthetic",
        "--size",
        "96",
        "--pretrained",
        str(weights),
        "--folds",
        "3",
        "--seed",
        "3",
        "--epochs",
        "20",
        "--batch-size",
        "8",
        "--lr",
        "0.0001",
        "--no-class-weights",
        "--mixup-alpha",
        "0.4",
        "--device",
        "cuda",
        "--progress-json",
        "--num-threads",
        "2",
    ]
    assert args == ["train", *p.config().to_argv()]
    # the real command-line parser reads these arguments back into exactly the GUI's configuration
    for params in (
        p,
        demo.replace(output_folder=str(tmp_path), run_name="d", manifest=str(manifest)),
        paper.replace(
            source="dhcp",
            dhcp=str(tmp_path),
            output_folder=str(tmp_path),
            run_name="x",
            tensorboard=False,
            cache_dir=str(tmp_path / "c"),
        ),
    ):
        parsed = build_parser().parse_args(train_args(params))
        assert parsed.command == "train" and parsed.progress_json
        assert TrainConfig(**given_options(parsed, TrainConfig)).run_fields() == params.config().run_fields()
    assert train_args(paper.replace(source="dhcp", dhcp=str(tmp_path), output_folder=str(tmp_path), run_name="x"))[
        1:3
    ] == ["--dhcp", str(tmp_path)]
    assert "--widths" in train_args(demo.replace(output_folder=str(tmp_path), run_name="d"))

    assert resume_args(tmp_path / "runs" / "r1", device="cpu", num_threads=1) == [
        "train",
        "--device",
        "cpu",
        "--resume",
        str(tmp_path / "runs" / "r1"),
        "--progress-json",
        "--num-threads",
        "1",
    ]
    assert check_args(p) == ["train", "--manifest", str(manifest), "--size", "96", "--progress-json", "--check-only"]
    named = TrainingParameters(output_folder=str(tmp_path)).with_run_name()
    assert named.run_name.startswith("gloresnet-") and named.run_dir.parent == tmp_path
    assert named.with_run_name() is named
    with pytest.raises(InputError, match="run name"):
        _ = TrainingParameters(output_folder=str(tmp_path)).run_dir
    reqs = tmp_path / "requirements.txt"
    reqs.write_text("# comment\nnibabel>=5.0\nscikit-learn>=1.4\n")
    assert read_training_requirements(reqs) == ["nibabel>=5.0", "scikit-learn>=1.4", "matplotlib>=3.7"]
    assert read_training_requirements(None) == list(TRAINING_REQUIREMENTS)


def test_gui_fields_map_to_the_parameters_and_their_defaults_are_the_papers():
    """GUI_FIELDS against GloResNetTraining.py's parameter node (parsed, never imported: it imports Qt)."""
    import ast

    module = Path(__file__).resolve().parents[1] / "GloResNetTraining" / "GloResNetTraining.py"
    tree = ast.parse(module.read_text())
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name.endswith("ParameterNode")]
    fields = {f.target.id: f for f in cls.body if isinstance(f, ast.AnnAssign)}
    namespace = {
        "tp": training_params,
        "list": list,
        "DEFAULTS": TrainingParameters(),
        "SOURCE_NAMES": {v: k for k, v in SOURCE_LABELS.items()},
    }
    defaults = {name: eval(ast.unparse(fields[name].value), namespace) for name in GUI_FIELDS}
    assert defaults == TrainingParameters().to_gui()  # the GUI starts with the paper's settings
    for name, value in TrainingParameters.cpu_demo(source="scene").to_gui().items():
        annotation = fields[name].annotation
        if isinstance(annotation, ast.Subscript):  # Annotated[type, Choice(...) / WithinRange(...)]
            base, *extras = annotation.slice.elts
            for extra in extras:
                args = [eval(ast.unparse(a), namespace) for a in extra.args]
                if extra.func.id == "Choice":
                    assert value in args[0], (name, value)
                else:
                    assert args[0] <= value <= args[1], (name, value)
                    option_range = training_params.OPTIONS[GUI_FIELDS[name]].range  # the GUI's is narrower
                    assert option_range is None or (args[0] in option_range and args[1] in option_range), name
            annotation = base
        assert type(value).__name__ == ast.unparse(annotation), name
    for params in (TrainingParameters(), TrainingParameters.cpu_demo(source="dhcp", dhcp="/d", seed=5)):
        assert TrainingParameters.from_gui(params.to_gui()) == params
    with pytest.raises(InputError, match="preset"):
        TrainingParameters(widths=(3, 3, 3, 3)).to_gui()
    tips = training_params.option_tooltips()  # from TrainConfig's help and defaults, not restated in the .ui
    assert tips["epochs"] == "epochs per fold (pretrain-age: and for the final model) (default 150)"
    assert tips["classWeights"].startswith("Unchecked (--no-class-weights): ") and "width" not in tips
    ui = (module.parent / "Resources" / "UI" / "GloResNetTraining.ui").read_text()
    for widget in re.findall(r'<widget class="\w+" name="(\w+)">\n(.*?)</widget>', ui, re.S):
        bound = re.search(r'"SlicerParameterName".*?<string>(\w+)</string>', widget[1], re.S)
        if bound and bound.group(1) in tips:
            assert "toolTip" not in widget[1], widget[0]


def test_bad_parameters_are_refused_before_anything_runs(tmp_path, cohort):
    good = tiny_params(cohort, tmp_path)
    assert good.validate() is good
    for changes, match in (
        ({"folds": 1}, "--folds"),
        ({"batch_size": 1}, "--batch-size"),
        ({"lr": 0.0}, "--lr"),
        ({"mixup_alpha": -1.0}, "--mixup-alpha"),
        ({"arch": "vgg"}, "architecture"),
        ({"device": "tpu"}, "device"),
        ({"pretrained": str(tmp_path / "w.pth")}, "full network width"),
        ({"pretrained": str(tmp_path / "w.pth"), "widths": None}, "not found"),
        # pretrain-age weights (safetensors) may have any width: only the file is checked
        ({"pretrained": str(tmp_path / "age.safetensors")}, "not found"),
        ({"manifest": str(tmp_path / "none.csv")}, "manifest not found"),
        ({"source": "dhcp", "dhcp": str(tmp_path / "none")}, "dHCP folder not found"),
        ({"output_folder": ""}, "output folder"),
        ({"run_name": "a/b"}, "plain folder"),
        ({"source": "pacs"}, "unknown dataset source"),
    ):
        with pytest.raises(InputError, match=match):
            good.replace(**changes).validate()
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "config.json").write_text("{}")
    with pytest.raises(InputError, match="already exists"):
        good.validate()
    assert can_resume(tmp_path / "tiny") and not can_resume(tmp_path) and not can_resume(None)


def test_gui_offers_every_registered_architecture():
    from GloResNetLib.models import ARCHITECTURES as REGISTERED
    from GloResNetLib.training.options import parse_config

    assert set(REGISTERED) == set(training_params.ARCHITECTURES)
    for arch in REGISTERED:  # each passes the GUI's own checks and reaches the command line
        params = TrainingParameters(arch=arch, manifest="m.csv", output_folder="out", run_name="r")
        params.validate(check_files=False)
        assert parse_config(train_args(params)[1:]).arch == arch

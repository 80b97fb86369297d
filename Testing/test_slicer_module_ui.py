"""The module file (parsed with ``ast``, never imported: it imports Qt) against its Qt Designer ``.ui`` file,
checked without Slicer: every ``self.ui.X`` exists with the expected class, every SlicerParameterName names a
parameter-node field whose type the widget can represent; the module file follows the wizard layout and stays
thin; the library's Slicer glue imports Qt only where allowed and its widget helpers name widgets of the ``.ui``.

The extension tree (CMake, catalog entry, icons, requirements): test_slicer_module_files.py.
"""

from __future__ import annotations

import ast
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from test_slicer_module_files import REPO, module_file, modules

# ------------------------------------------------------------------------------------------------------------
# Module file <-> .ui
# ------------------------------------------------------------------------------------------------------------

#: What each module's GUI must offer: widgets (by name), parameter-node bindings, the module file's size limit
#: (thin: the logic lives in GloResNetLib.slicer_side, at most 400 lines) and texts its source must contain.
EXPECTED = {
    "GloResNet": {
        "widgets": {
            "inputVolumeSelector",
            "modelComboBox",
            "browseModelButton",
            "deviceComboBox",
            "ttaCheckBox",
            "predictButton",
            "cancelButton",
            "progressBar",
            "statusLabel",
            "probabilityValueLabel",
            "labelValueLabel",
            "spreadValueLabel",
            "modelValueLabel",
            "deviceValueLabel",
            "timeValueLabel",
            "researchNoticeLabel",
            "jumpToPeakButton",
            "logTextEdit",
        },
        "bindings": {"inputVolume", "device", "useTTA", "camOpacity", "camThreshold", "showResampled"},
        "max_lines": 400,
        "source": ("dependencies.ensure_dependencies",),  # installed on demand, on first Predict
    },
    "GloResNetTraining": {
        "widgets": {
            "sourceComboBox",
            "manifestPathLineEdit",
            "dhcpPathLineEdit",
            "labelsTableView",
            "addSceneVolumesButton",
            "syntheticCheckBox",
            "checkDatasetButton",
            "datasetReportTextEdit",
            "outputFolderPathLineEdit",
            "runNameLineEdit",
            "paperDefaultsButton",
            "cpuDemoButton",
            "archComboBox",
            "widthComboBox",
            "foldsSpinBox",
            "epochsSpinBox",
            "batchSizeSpinBox",
            "learningRateDoubleSpinBox",
            "mixupAlphaDoubleSpinBox",
            "classWeightsCheckBox",
            "inputSizeSpinBox",
            "pretrainedPathLineEdit",
            "deviceComboBox",
            "seedSpinBox",
            "startButton",
            "stopButton",
            "resumeButton",
            "cancelButton",
            "progressBar",
            "statusLabel",
            "metricsSummaryLabel",
            "showResultsButton",
            "openInGloResNetButton",
            "researchNoticeLabel",
            "logTextEdit",
        },
        "bindings": {
            "source",
            "syntheticData",
            "runName",
            "arch",
            "width",
            "folds",
            "epochs",
            "batchSize",
            "learningRate",
            "mixupAlpha",
            "classWeights",
            "inputSize",
            "device",
            "seed",
        },
        "max_lines": 400,  # a larger GUI (dataset, settings, run, results); the logic is in slicer_side
        "source": (
            "dependencies.ensure_dependencies",
            "ensureDependencies",
            "training_logic",
            "cancel_all",
            "shutdown",
            "training_gui.setup_path_fields",
            "paths.sync_field",
        ),
    },
}
#: The class of GloResNetLib.slicer_side each module's logic is made of (as the module file names it).
LOGIC_MIXINS = {"GloResNet": "predict_logic.PredictionLogic", "GloResNetTraining": "training_logic.TrainingLogic"}
#: Naming convention of the widgets -> Qt class (the longest matching suffix wins).
SUFFIX_CLASSES = {
    "CollapsibleButton": "ctkCollapsibleButton",
    "Button": "QPushButton",
    "Label": "QLabel",
    "ComboBox": "QComboBox",
    "CheckBox": "QCheckBox",
    "SliderWidget": "ctkSliderWidget",
    "Selector": "qMRMLNodeComboBox",
    "TextEdit": "QPlainTextEdit",
    "progressBar": "QProgressBar",
    "SpinBox": "QSpinBox",
    "DoubleSpinBox": "QDoubleSpinBox",
    "PathLineEdit": "ctkPathLineEdit",
    "LineEdit": "QLineEdit",
    "TableView": "qMRMLTableView",
}
#: Parameter type -> widget classes the parameter node wrapper can bind to it.
BINDABLE = {
    "bool": {"QCheckBox", "QPushButton"},
    "float": {"ctkSliderWidget", "QDoubleSpinBox"},
    "int": {"QSpinBox", "QSlider"},
    "str": {"QLineEdit", "QComboBox", "QTextEdit"},
    "node": {"qMRMLNodeComboBox"},
    "path": {"ctkPathLineEdit", "ctkDirectoryButton"},
}
MODULES = modules()


def ui_file(module: Path) -> Path:
    return module / "Resources" / "UI" / f"{module.name}.ui"


def ui_widgets(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()
    return {w.get("name"): w for w in root.iter("widget")}


def module_tree(module: Path) -> ast.Module:
    path = module_file(module)
    return ast.parse(path.read_text(), filename=str(path))


def used_ui_names(tree: ast.Module) -> set[str]:
    names = {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Attribute)
        and node.value.attr == "ui"
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id == "self"
    }
    return names | {widget for widget, _ in path_fields(tree)}


def path_fields(tree: ast.Module) -> list[tuple[str, str]]:
    """``PATH_FIELDS = ((widget, field), ...)`` of a widget class: path line edits synced by hand with str
    fields of the parameter node (the wrapper binds ctkPathLineEdit to pathlib.Path only)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "PATH_FIELDS" for t in node.targets):
            if "paths.TRAINING_PATH_FIELDS" in ast.unparse(node.value):
                from GloResNetLib.slicer_side.paths import TRAINING_PATH_FIELDS

                return [(f.widget, f.field) for f in TRAINING_PATH_FIELDS]
            return [tuple(pair) for pair in ast.literal_eval(node.value)]
    return []


def parameter_fields(tree: ast.Module) -> dict[str, ast.expr]:
    (cls,) = [
        n
        for n in tree.body
        if isinstance(n, ast.ClassDef)
        and any(getattr(d, "id", None) == "parameterNodeWrapper" for d in n.decorator_list)
    ]
    return {s.target.id: s.annotation for s in cls.body if isinstance(s, ast.AnnAssign)}


def annotation_kind(annotation: ast.expr) -> tuple[str, set[str]]:
    """('bool' | 'float' | ... | 'node', names of the Annotated extras)."""
    extras = set()
    if isinstance(annotation, ast.Subscript) and getattr(annotation.value, "id", "") == "Annotated":
        elts = annotation.slice.elts
        annotation = elts[0]
        extras = {e.func.id for e in elts[1:] if isinstance(e, ast.Call) and isinstance(e.func, ast.Name)}
    name = ast.unparse(annotation)
    if name.startswith("vtkMRML") or name.startswith("slicer.vtkMRML"):
        return "node", extras
    if name in ("Path", "pathlib.Path"):
        return "path", extras
    return name, extras


def test_both_modules_are_checked():
    assert {m.name for m in MODULES} == set(EXPECTED)


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_ui_file_is_valid_designer_xml(module: Path):
    root = ET.parse(ui_file(module)).getroot()
    assert root.tag == "ui" and root.get("version") == "4.0"
    top = root.find("widget")
    assert top.get("class") == "qMRMLWidget" and top.get("name") == module.name
    declared = {c.findtext("class") for c in root.iter("customwidget")}
    qt_classes = {w.get("class") for w in root.iter("widget")}
    custom = {c for c in qt_classes if c.startswith(("ctk", "qMRML", "qSlicer"))}
    assert custom <= declared, f"custom widgets not declared: {custom - declared}"
    names = [w.get("name") for w in root.iter("widget")]
    assert len(names) == len(set(names)), "duplicate widget names"
    widgets = ui_widgets(ui_file(module))
    for connection in root.iter("connection"):
        assert connection.findtext("sender") in widgets and connection.findtext("receiver") in widgets
    mrml_widgets = {n for n, w in widgets.items() if w.get("class") in ("qMRMLNodeComboBox", "qMRMLTableView")}
    scene_receivers = {
        c.findtext("receiver")
        for c in root.iter("connection")
        if c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
    }
    assert mrml_widgets <= scene_receivers, "every MRML widget must receive the scene"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_every_widget_the_code_uses_exists_with_the_expected_class(module: Path):
    widgets = ui_widgets(ui_file(module))
    used = used_ui_names(module_tree(module))
    assert EXPECTED[module.name]["widgets"] <= used | set(widgets)
    missing = sorted(used - set(widgets))
    assert not missing, f"{module.name}.py uses widgets absent from {module.name}.ui: {missing}"
    for name in sorted(used | set(widgets)):
        suffix = max((s for s in SUFFIX_CLASSES if name.endswith(s)), key=len, default=None)
        if suffix is not None and name in widgets:
            found = widgets[name].get("class")
            assert found == SUFFIX_CLASSES[suffix], f"{name}: {found}, expected {SUFFIX_CLASSES[suffix]}"
    log = widgets["logCollapsibleButton"]
    assert log.get("class") == "ctkCollapsibleButton"
    assert any(p.get("name") == "collapsed" and p.findtext("bool") == "true" for p in log.findall("property"))
    assert "logTextEdit" in {w.get("name") for w in log.iter("widget")}
    notice = widgets["researchNoticeLabel"].find("property[@name='text']/string").text
    assert "Research use only" in notice and "medical device" in notice


def test_predict_module_widgets_by_role():
    widgets = ui_widgets(ui_file(REPO / "GloResNet"))
    assert widgets["opacitySliderWidget"].get("class") == "ctkSliderWidget"
    assert widgets["thresholdSliderWidget"].get("class") == "ctkSliderWidget"
    assert widgets["resampledBackgroundCheckBox"].get("class") == "QCheckBox"
    # the Saliency choice offers every method the job accepts (its torch-free copy of inference's list, whose
    # equality test_slicer_side checks), the tooltip says what each is, the result nodes have their fields
    fields = parameter_fields(module_tree(REPO / "GloResNet"))
    choice = ast.literal_eval(fields["saliencyMethod"].slice.elts[1].args[0])
    job = ast.parse((REPO / "GloResNet" / "GloResNetLib" / "slicer_side" / "prediction_job.py").read_text())
    (methods,) = [
        ast.literal_eval(n.value)
        for n in job.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "SALIENCY_METHODS"
    ]
    assert tuple(choice) == methods and {"gradient", "all"} <= set(methods)
    tip = widgets["saliencyMethodComboBox"].find("property[@name='toolTip']/string").text
    assert all(f"{m}:" in tip for m in methods)
    assert {"camVolume", "occlusionVolume", "gradientVolume"} <= set(fields)


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_every_parameter_binding_names_a_field_the_widget_can_represent(module: Path):
    tree = module_tree(module)
    fields = parameter_fields(tree)
    widgets = ui_widgets(ui_file(module))
    bound = {}
    for name, widget in widgets.items():
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[name] = prop.findtext("string")
    assert bound, "no SlicerParameterName bindings in the .ui"
    assert set(bound.values()) >= EXPECTED[module.name]["bindings"]
    for widget_name, field in bound.items():
        assert field in fields, f"{widget_name}: SlicerParameterName '{field}' is not a parameter node field"
        kind, extras = annotation_kind(fields[field])
        cls = widgets[widget_name].get("class")
        assert cls in BINDABLE[kind], f"{widget_name} ({cls}) cannot represent {field}: {kind}"
        if cls == "QComboBox":
            assert "Choice" in extras, f"{field}: a QComboBox binding needs a Choice annotation"
            # the connector clears the combo box and adds the Choice's values: items in the .ui would be lost
            assert widgets[widget_name].find("item") is None, f"{widget_name}: items come from the Choice"
        if cls in ("ctkSliderWidget", "QSpinBox", "QDoubleSpinBox"):
            assert "WithinRange" in extras, f"{field}: a {cls} binding needs WithinRange"
    assert len(bound.values()) == len(set(bound.values())), "a field is bound to two widgets"
    for widget_name, field in path_fields(tree):  # synced by hand, never bound
        assert widgets[widget_name].get("class") == "ctkPathLineEdit" and widget_name not in bound
        assert annotation_kind(fields[field])[0] == "str", f"{field} must be a str field"


@pytest.mark.parametrize("module", MODULES, ids=lambda p: p.name)
def test_module_file_follows_the_wizard_layout_and_stays_thin(module: Path):
    name = module.name
    source = module_file(module).read_text()
    tree = module_tree(module)
    classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
    assert classes[name] == ["ScriptedLoadableModule"]
    assert classes[f"{name}Widget"] == [
        "common.ModuleWidgetHelpers",
        "ScriptedLoadableModuleWidget",
        "VTKObservationMixin",
    ]
    # the logic itself is a Qt-free class of GloResNetLib.slicer_side, mixed in before Slicer's base class
    assert classes[f"{name}Logic"] == [LOGIC_MIXINS[name], "ScriptedLoadableModuleLogic"]
    assert classes[f"{name}Test"] == ["ScriptedLoadableModuleTest"]
    assert f"{name}ParameterNode" in classes
    assert len(source.splitlines()) <= EXPECTED[name]["max_lines"], (
        "keep the module file thin: move logic to GloResNetLib"
    )
    assert f'loadUI(self.resourcePath("UI/{name}.ui"))' in source and "childWidgetVariables" in source
    assert "Research use only" in source and "not a medical device" in source
    assert "StartCloseEvent" in source and "EndCloseEvent" in source and "aboutToQuit" in source
    for text in EXPECTED[name]["source"]:
        assert text in source, f"{name}.py: '{text}' expected"
    # nothing is installed or imported heavily at import time, no deprecated imp
    imported = {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom) and n.module}
    assert not imported & {"torch", "monai", "nibabel", "imp", "PyTorchUtils"}
    for node in tree.body:
        allowed = (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef, ast.Assign, ast.Expr)
        assert isinstance(node, allowed), f"statement at import time: {ast.unparse(node)[:60]}"
        if isinstance(node, ast.Expr):
            assert isinstance(node.value, ast.Constant), f"call at import time: {ast.unparse(node)[:60]}"


#: Files of GloResNetLib/slicer_side that may touch Qt widgets (``qt`` / ``ctk`` imported inside functions); the
#: others are tested with slicer-core, which has no Qt.
QT_FILES = {"common.py", "predict_gui.py", "selftest.py", "training_gui.py"}
#: Files that need neither the MRML nor the application: processes, jobs, parameters, bundles.
PLAIN_FILES = {
    "background.py",
    "bundles.py",
    "command.py",
    "devices.py",
    "diagnosis.py",
    "files.py",
    "jobs.py",
    "requirements.py",
    "training_jobs.py",
    "training_params.py",
}


def imported_roots(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, inside functions too."""
    nodes = list(ast.walk(ast.parse(path.read_text())))
    imported = {a.name.split(".")[0] for n in nodes if isinstance(n, ast.Import) for a in n.names}
    return imported | {
        n.module.split(".")[0] for n in nodes if isinstance(n, ast.ImportFrom) and n.module and not n.level
    }


def test_library_glue_never_imports_qt():
    side = REPO / "GloResNet" / "GloResNetLib" / "slicer_side"
    files = {p.name: p for p in side.glob("*.py")}
    assert QT_FILES | PLAIN_FILES <= set(files)
    for name, path in files.items():
        forbidden = {"torch"} if name != "selftest.py" else set()  # the self-test's tiny bundle needs torch
        forbidden |= {"qt", "ctk", "PythonQt"} if name not in QT_FILES else set()
        forbidden |= {"slicer", "vtk"} if name in PLAIN_FILES else set()
        assert not imported_roots(path) & forbidden, f"{name} imports {imported_roots(path) & forbidden}"


def test_widget_helpers_name_widgets_of_the_ui():
    """The library's widget helpers use the .ui widgets by name: each name exists in that module's .ui."""
    side = REPO / "GloResNet" / "GloResNetLib" / "slicer_side"
    from GloResNetLib.slicer_side import paths

    WIDGET_SUFFIXES = (*SUFFIX_CLASSES, "Widget")
    for module, helper, names in (
        ("GloResNet", "predict_gui.py", set()),
        ("GloResNetTraining", "training_gui.py", {f.widget for f in paths.TRAINING_PATH_FIELDS}),
    ):
        tree = ast.parse((side / helper).read_text())
        names |= {
            n.attr
            for n in ast.walk(tree)
            if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id == "ui"
        }
        names |= {
            k.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Dict)
            for k in n.keys
            if isinstance(k, ast.Constant) and str(k.value).endswith(WIDGET_SUFFIXES)
        }
        names |= {
            v.value
            for n in ast.walk(tree)
            if isinstance(n, ast.Dict)
            for v in n.values
            if isinstance(v, ast.Constant) and str(v.value).endswith(WIDGET_SUFFIXES)
        }
        widgets = ui_widgets(ui_file(REPO / module))
        assert len(names) >= 8, names
        missing = sorted(names - set(widgets))
        assert not missing, f"{helper} uses widgets absent from {module}.ui: {missing}"

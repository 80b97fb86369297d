"""The GloResNetTraining module's path line edits and dataset-source fields, set up from the library's lists.
``ctk`` and ``slicer`` are imported inside the functions; the arguments are the ``.ui`` widgets (``ui``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .paths import FILE, FOLDER, TRAINING_PATH_FIELDS
from .scene_dataset import labels_table
from .training_params import SOURCE_LABELS, option_tooltips

#: Name filters of the file fields (widget name -> filters of the file dialog).
NAME_FILTERS = {
    "manifestPathLineEdit": ["CSV manifest (*.csv)", "All files (*)"],
    "pretrainedPathLineEdit": ["Weights (*.pth *.pt *.safetensors)", "All files (*)"],
}
#: Widgets shown for each dataset source ("manifest", "dhcp", "scene"); the others are hidden.
SOURCE_WIDGETS = {
    "manifestLabel": "manifest",
    "manifestPathLineEdit": "manifest",
    "dhcpLabel": "dhcp",
    "dhcpPathLineEdit": "dhcp",
    "sceneDatasetWidget": "scene",
}


def setup_path_fields(ui: Any, on_text: Callable[[str, str], None]) -> None:
    """Give each path line edit its filters and send every text change of the line edit inside it to
    ``on_text(field, text)``: ``currentPathChanged`` skips what the validator refuses (an empty field, other
    extensions), so the text is followed instead and the logic validates the paths (:mod:`.paths`)."""
    import ctk
    import slicer

    kinds = {FILE: ctk.ctkPathLineEdit.Files | ctk.ctkPathLineEdit.Readable, FOLDER: ctk.ctkPathLineEdit.Dirs}
    for spec in TRAINING_PATH_FIELDS:
        pathLineEdit = getattr(ui, spec.widget)
        pathLineEdit.filters = kinds.get(spec.kind, ctk.ctkPathLineEdit.Dirs | ctk.ctkPathLineEdit.Writable)
        if spec.widget in NAME_FILTERS:
            pathLineEdit.nameFilters = NAME_FILTERS[spec.widget]
        combo = pathLineEdit.comboBox()
        lineEdit = combo.lineEdit() if combo else slicer.util.findChildren(pathLineEdit, className="QLineEdit")[0]
        lineEdit.connect("textChanged(QString)", lambda text, field=spec.field: on_text(field, text))


def set_option_tooltips(ui: Any) -> None:
    """Give each widget bound to a training option (``SlicerParameterName`` in the ``.ui``) the option's help
    and default from their one definition (:func:`.training_params.option_tooltips`); the ``.ui`` has none."""
    tips = option_tooltips()
    for widget in vars(ui).values():
        name = widget.property("SlicerParameterName") if hasattr(widget, "property") else None
        if name in tips:
            widget.toolTip = tips[name]


def show_paths_and_source(ui: Any, parameterNode: Any) -> str:
    """Show the parameter node's paths in their line edits (without signals) and only the dataset fields of
    its source.

    Returns:
        The source: "manifest", "dhcp" or "scene".
    """
    for spec in TRAINING_PATH_FIELDS:
        widget, value = getattr(ui, spec.widget), getattr(parameterNode, spec.field)
        if widget.currentPath != value:
            wasBlocked = widget.blockSignals(True)
            widget.currentPath = value
            widget.blockSignals(wasBlocked)
    source = SOURCE_LABELS.get(parameterNode.source, "manifest")
    for name, shown_for in SOURCE_WIDGETS.items():
        getattr(ui, name).visible = source == shown_for
    return source


def show_dataset(ui: Any, parameterNode: Any) -> None:
    """Show the parameter node's dataset: its paths, the fields of its source and, for the scene source, the
    labels table (created when first needed, not in every scene)."""
    p = parameterNode
    if show_paths_and_source(ui, p) == "scene" and not p.labelsTable:
        p.labelsTable = labels_table()
    if ui.labelsTableView.mrmlTableNode() is not p.labelsTable:
        ui.labelsTableView.setMRMLTableNode(p.labelsTable)


def update_run_widgets(ui: Any, parameterNode: Any, logic: Any) -> None:
    """Enable the buttons for what can be done now (nothing is started while a job runs) and show the
    registered model and the held-out case.

    Args:
        ui: the widgets. parameterNode: the parameter node (None after a scene close). logic: the module's
            logic (a :class:`.training_logic.TrainingLogic`), None before the GUI exists.
    """
    p = parameterNode
    busy = logic is not None and logic.busy
    ui.startButton.enabled = bool(p) and not busy
    ui.checkDatasetButton.enabled = bool(p) and not busy
    ui.stopButton.enabled = logic is not None and logic.running
    ui.cancelButton.enabled = busy
    ui.resumeButton.enabled = bool(p) and not busy and bool(logic.resumableRun(p))
    ui.showResultsButton.enabled = bool(p and (p.metricsTable or p.lossChart))
    ui.openInGloResNetButton.enabled = bool(p and p.bundlePath) and not busy
    ui.openRunFolderButton.enabled = bool(p and p.runDir and Path(p.runDir).is_dir())
    if p:
        ui.bundleValueLabel.text = p.bundlePath or "(not yet)"
        ui.heldOutValueLabel.text = Path(p.heldOutCase).name if p.heldOutCase else "(none)"


__all__ = [
    "NAME_FILTERS",
    "SOURCE_WIDGETS",
    "setup_path_fields",
    "show_dataset",
    "show_paths_and_source",
    "update_run_widgets",
]

"""The GloResNet module's widgets filled from what the library knows: the models combo box and the result texts.
Qt is imported inside the functions (Slicer's ``qt``); the arguments are the ``.ui`` widgets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from .bundles import BundleInfo, bundle_info

#: Style of a text that must not be missed (untrained or synthetic-data models).
WARNING_STYLE = "color: #c00000; font-weight: bold;"


def fill_model_combo(combo, infos: Iterable[BundleInfo], current: str = "") -> None:
    """List the bundles (label shown, folder as item data, description as tooltip) without signals; select
    ``current`` if listed, else the first.

    Args:
        combo: the QComboBox. infos: the bundles (:func:`.bundles.find_bundles`). current: a bundle folder.
    """
    import qt

    wasBlocked = combo.blockSignals(True)
    combo.clear()
    for info in infos:
        combo.addItem(info.label, str(info.path))
        combo.setItemData(combo.count - 1, info.description, qt.Qt.ToolTipRole)
    index = combo.findData(current) if current else -1
    combo.setCurrentIndex(index if index >= 0 else (0 if combo.count else -1))
    combo.blockSignals(wasBlocked)


def show_model_info(label, path: str | Path) -> BundleInfo:
    """Show a bundle's description in ``label`` (in red when it carries a flag).

    Returns:
        The :class:`.bundles.BundleInfo`.
    """
    info = bundle_info(path)
    label.text = info.description
    label.styleSheet = WARNING_STYLE if info.flag else ""
    return info


#: What each saliency method of the module's Saliency choice is (its help text, as HTML; the .ui tooltip says
#: the same). Which map is shown when several are computed: :data:`.results.OVERLAY_ORDER`.
SALIENCY_HELP = (
    "<b>gradcam</b>: Grad-CAM, from the prediction pass itself (no extra cost): where the network's features "
    "raise P(BI); coarse, and blind to evidence the network reads from dark voxels. "
    "<b>gradient</b>: the smoothed magnitude of the input gradient of the ensemble's BI logit, one backward "
    "pass per model (seconds): shows evidence the network reads from dark voxels too (a T2-hypointense focus). "
    "<b>occlusion</b>: how much P(BI) drops when each region is hidden (thousands of network passes: a minute "
    "or more per model on a 2-core CPU). "
    "<b>both</b>: Grad-CAM and occlusion. <b>all</b>: the three. Every map computed is kept as a volume node; "
    "the slice views show the gradient map if computed, else the occlusion map, else Grad-CAM."
)


#: Result texts (:func:`.results.result_texts`) -> label of GloResNet.ui showing them.
RESULT_LABELS = {
    "caption": "probabilityLabel",
    "probability": "probabilityValueLabel",
    "label": "labelValueLabel",
    "spread": "spreadValueLabel",
    "model": "modelValueLabel",
    "training_data": "trainingDataValueLabel",
    "device": "deviceValueLabel",
    "time": "timeValueLabel",
}


def show_result_texts(ui, texts: Mapping[str, str]) -> None:
    """Fill the results section (the caption says "P(brain injury):" or, for a brain-age model, the age) and
    show the model's name in red when it carries a flag."""
    for key, name in RESULT_LABELS.items():
        getattr(ui, name).text = texts[key]
    ui.modelValueLabel.styleSheet = WARNING_STYLE if "[" in texts["model"] else ""
    ui.resultsCollapsibleButton.collapsed = False


__all__ = [
    "RESULT_LABELS",
    "SALIENCY_HELP",
    "WARNING_STYLE",
    "fill_model_combo",
    "show_model_info",
    "show_result_texts",
]


def show_results(ui, parameterNode, nodes) -> None:
    """The result nodes of one input (``nodes``: overlay, resampled, table, occlusion, gradient) into the
    parameter node, their texts into the panel."""
    p = parameterNode
    p.camVolume, p.resampledVolume, p.resultsTable = nodes.overlay, nodes.resampled, nodes.table
    p.occlusionVolume, p.gradientVolume = nodes.occlusion, nodes.gradient
    show_result_texts(ui, nodes.texts())

"""Charts and tables into a layout's own views, through their view nodes.

``qMRMLLayoutManager.plotWidget(i)`` / ``tableWidget(i)`` index every plot/table view of the scene in hash order
(qMRMLLayoutViewFactory: ``d->Views.values().at(id)``), so two charts can swap or land in a view that is not in
the layout. Here each chart or table goes to the singleton view node the layout XML names (``singletontag``),
which Slicer's layout logic creates when the layout is shown (vtkMRMLLayoutLogic::CreateMissingViews).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Mapping

PLOT_VIEW = "vtkMRMLPlotViewNode"
TABLE_VIEW = "vtkMRMLTableViewNode"

#: GloResNetTraining's results layout: loss and validation-metric charts side by side over the metrics table.
TRAINING_RESULTS_LAYOUT_ID = 48601
LOSS_VIEW, METRIC_VIEW, TABLE_VIEW_TAG = "GloResNetTrainingLoss", "GloResNetTrainingMetrics", "GloResNetTrainingTable"
TRAINING_RESULTS_LAYOUT = (
    '<layout type="vertical" split="true"><item splitSize="500"><layout type="horizontal" split="true">'
    f'<item><view class="{PLOT_VIEW}" singletontag="{LOSS_VIEW}"/></item>'
    f'<item><view class="{PLOT_VIEW}" singletontag="{METRIC_VIEW}"/></item></layout></item>'
    f'<item splitSize="300"><view class="{TABLE_VIEW}" singletontag="{TABLE_VIEW_TAG}"/></item>'
    "</layout>"
)


def layout_views(description: str) -> dict[str, str]:
    """The views of a layout XML: ``{singletontag: view node class}``."""
    return {
        v.get("singletontag"): v.get("class") for v in ET.fromstring(description).iter("view") if v.get("singletontag")
    }


def show_layout(layout_node, layout_id: int, description: str) -> None:
    """Register ``description`` under ``layout_id`` (replaced if it changed) and show it; what
    ``layoutManager.setLayout`` does (qMRMLLayoutManager::setLayout sets the view arrangement)."""
    if not layout_node.IsLayoutDescription(layout_id):
        layout_node.AddLayoutDescription(layout_id, description)
    elif layout_node.GetLayoutDescription(layout_id) != description:
        layout_node.SetLayoutDescription(layout_id, description)
    layout_node.SetViewArrangement(layout_id)


def layout_view_node(scene, description: str, tag: str, view_class: str):
    """The view node of the layout's view ``tag`` (it must be a ``view_class`` view of ``description``)."""
    views = layout_views(description)
    if views.get(tag) != view_class:
        raise ValueError(f"the layout has no {view_class} view '{tag}' (it has {views})")
    node = scene.GetSingletonNode(tag, view_class)
    if node is None:
        raise RuntimeError(f"{view_class} '{tag}' is not in the scene: show the layout first")
    return node


def place_in_layout(
    layout_node,
    layout_id: int,
    description: str,
    plots: Mapping[str, object] | None = None,
    tables: Mapping[str, object] | None = None,
) -> dict[str, object]:
    """Show the layout, then each chart / table in the view the layout XML names.

    Args:
        layout_node: the scene's vtkMRMLLayoutNode (``layoutManager.layoutLogic().GetLayoutNode()``).
        layout_id, description: the layout (registered if needed).
        plots: ``{plot view singletontag: vtkMRMLPlotChartNode or None}`` (None: left as it is).
        tables: ``{table view singletontag: vtkMRMLTableNode or None}``.
    Returns:
        ``{singletontag: view node}`` of the views that were given a node.
    """
    show_layout(layout_node, layout_id, description)
    scene = layout_node.GetScene()
    placed = {}
    for items, view_class, setter in (
        (plots or {}, PLOT_VIEW, "SetPlotChartNodeID"),
        (tables or {}, TABLE_VIEW, "SetTableNodeID"),
    ):
        for tag, node in items.items():
            view = layout_view_node(scene, description, tag, view_class)
            if node is not None:
                getattr(view, setter)(node.GetID())
                placed[tag] = view
    return placed


def show_training_results(layout_node, loss_chart=None, metric_chart=None, metrics_table=None) -> dict[str, object]:
    """GloResNetTraining's results layout with its two charts and the metrics table (see :func:`place_in_layout`)."""
    return place_in_layout(
        layout_node,
        TRAINING_RESULTS_LAYOUT_ID,
        TRAINING_RESULTS_LAYOUT,
        plots={LOSS_VIEW: loss_chart, METRIC_VIEW: metric_chart},
        tables={TABLE_VIEW_TAG: metrics_table},
    )


def show_table(table) -> bool:
    """Show a table node in Slicer's four-up table layout (the results table); False if there is none."""
    import slicer

    if not table:
        return False
    slicer.app.layoutManager().setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
    slicer.app.applicationLogic().GetSelectionNode().SetActiveTableID(table.GetID())
    slicer.app.applicationLogic().PropagateTableSelection()
    return True


__all__ = [
    "LOSS_VIEW",
    "METRIC_VIEW",
    "PLOT_VIEW",
    "TABLE_VIEW",
    "TABLE_VIEW_TAG",
    "TRAINING_RESULTS_LAYOUT",
    "TRAINING_RESULTS_LAYOUT_ID",
    "layout_view_node",
    "layout_views",
    "place_in_layout",
    "show_layout",
    "show_table",
    "show_training_results",
]

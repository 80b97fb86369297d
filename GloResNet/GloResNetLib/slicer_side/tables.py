"""Table and plot-chart nodes created once and updated in place (the results table, the training curves)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import slicer
import vtk

from .scene import PLOT_ROLE, find_node, get_scene, mark_node


def _is_number(value: Any) -> bool:
    return value is None or (isinstance(value, (int, float, np.number, bool, np.bool_)) and not isinstance(value, str))


def _new_column(name: str, kind: str, n_rows: int):
    array = vtk.vtkDoubleArray() if kind == "double" else vtk.vtkStringArray()
    array.SetName(name)
    array.SetNumberOfValues(n_rows)
    for row in range(n_rows):
        array.SetValue(row, math.nan if kind == "double" else "")
    return array


def _set_value(array, row: int, value: Any) -> None:
    if isinstance(array, vtk.vtkStringArray):
        array.SetValue(row, "" if value is None else str(value))
        return
    try:
        array.SetValue(row, math.nan if value is None else float(value))
    except (TypeError, ValueError):
        array.SetValue(row, math.nan)


def table_from_columns(
    name: str,
    columns: Mapping[str, Sequence[Any]],
    scene=None,
    node=None,
    types: Mapping[str, str] | None = None,
    role: str = PLOT_ROLE,
):
    """Create, or replace the contents of, a table node from ``{column: values}``; returns the node.

    Column types: ``types[column]`` ("double" or "string"), else "double" when every value is a number or
    None (None -> NaN), else "string". The node is found again by ``name`` and ``role``.
    """
    scene = get_scene(scene)
    if node is None:
        node = find_node(scene, "vtkMRMLTableNode", role, name)
    if node is None:
        node = scene.AddNewNodeByClass("vtkMRMLTableNode", name)
        mark_node(node, role)
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"table '{name}': columns have different lengths {sorted(lengths)}")
    n_rows = lengths.pop() if lengths else 0
    was_modifying = node.StartModify()
    try:
        node.RemoveAllColumns()
        for col, values in columns.items():
            numeric = bool(values) and all(map(_is_number, values))
            kind = (types or {}).get(col) or ("double" if numeric else "string")
            array = _new_column(col, kind, n_rows)
            for row, value in enumerate(values):
                _set_value(array, row, value)
            node.AddColumn(array)
        node.GetTable().Modified()
    finally:
        node.EndModify(was_modifying)
    node.Modified()
    return node


def append_table_row(table, values: Mapping[str, Any]) -> int:
    """Append one row (missing columns are added, absent values left empty / NaN); returns its index.

    Plot series reading the table update at once (the live training curves use this).
    """
    vtable = table.GetTable()
    n_rows = table.GetNumberOfRows()
    for col, value in values.items():
        if vtable.GetColumnByName(col) is None:
            table.AddColumn(_new_column(col, "double" if _is_number(value) else "string", n_rows))
    row = table.AddEmptyRow()
    for c in range(vtable.GetNumberOfColumns()):
        array = vtable.GetColumn(c)
        _set_value(array, row, values.get(array.GetName()))
    vtable.Modified()
    table.Modified()
    return row


def table_column(table, name: str) -> list[Any]:
    """Values of a column (floats or strings)."""
    array = table.GetTable().GetColumnByName(name)
    if array is None:
        raise KeyError(f"table '{table.GetName()}' has no column '{name}'")
    return [array.GetValue(i) for i in range(array.GetNumberOfValues())]


def table_rows(table) -> list[dict[str, Any]]:
    """All rows as dicts (column name -> value)."""
    vtable = table.GetTable()
    names = [vtable.GetColumn(c).GetName() for c in range(vtable.GetNumberOfColumns())]
    cols = {n: table_column(table, n) for n in names}
    return [{n: cols[n][r] for n in names} for r in range(table.GetNumberOfRows())]


def plot_chart(
    name: str,
    table,
    x_column: str,
    y_columns: Sequence[str],
    scene=None,
    title: str | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
    series_names: Sequence[str] | None = None,
    colors: Sequence[Sequence[float]] | None = None,
    markers: bool = True,
):
    """Create, or update in place, a plot chart with one line series per ``y_columns`` read from ``table``.

    Series are found again by name, so calling it again (or appending table rows) never duplicates them.
    Show it in the app with ``slicer.modules.plots.logic().ShowChartInLayout(chart)``.
    """
    scene = get_scene(scene)
    chart = find_node(scene, "vtkMRMLPlotChartNode", PLOT_ROLE, name)
    if chart is None:
        chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", name)
        mark_node(chart, PLOT_ROLE)
    chart.SetTitle(title if title is not None else name)
    chart.SetXAxisTitle(x_title if x_title is not None else x_column)
    if y_title is not None:
        chart.SetYAxisTitle(y_title)
    chart.SetLegendVisibility(True)
    for index, column in enumerate(y_columns):
        label = series_names[index] if series_names else column
        series_name = f"{name}: {label}"
        series = find_node(scene, "vtkMRMLPlotSeriesNode", PLOT_ROLE, series_name)
        if series is None:
            series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", series_name)
            mark_node(series, PLOT_ROLE)
            if colors and index < len(colors):
                series.SetColor(*[float(c) for c in colors[index]][:3])
            else:
                series.SetUniqueColor()
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(x_column)
        series.SetYColumnName(column)
        series.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        series.SetMarkerStyle(
            slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle if markers else slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone
        )
        if not chart.HasPlotSeriesNodeID(series.GetID()):
            chart.AddAndObservePlotSeriesNodeID(series.GetID())
    return chart


__all__ = ["append_table_row", "plot_chart", "table_column", "table_from_columns", "table_rows"]

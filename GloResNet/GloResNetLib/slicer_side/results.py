"""Prediction results -> nodes: saliency and resampled volumes on the input, one results-table row, the texts
the module shows; and prediction in Slicer's own Python (:func:`predict_nodes`)."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..bundle_meta import training_flag
from ..errors import InputError
from .display import (
    DEFAULT_CAM_OPACITY,
    DEFAULT_CAM_THRESHOLD,
    configure_cam_display,
    heat_color_node,
    set_slice_layers,
)
from .scene import CAM_ROLE, GRADIENT_ROLE, OCCLUSION_ROLE, RESAMPLED_ROLE, RESULTS_ROLE, find_node, get_scene
from .tables import append_table_row, table_from_columns
from .volumes import output_volume, peak_ras, volume_to_array

RESULTS_TABLE_NAME = "GloResNet results"

#: Which saliency map the slice views show when a prediction has several (saliency "all", "both" or a comma
#: list): the first present of gradient (its peak lies on the lesion most often in the demo, and it reads dark
#: voxels too), occlusion (a direct measurement of the drop of P(BI), but coarse), Grad-CAM. A single method
#: is always the one shown. Every map computed is kept as its own volume node.
OVERLAY_ORDER = ("gradient", "occlusion", "gradcam")


#: Columns of the results table (one row per prediction) and their types. A brain-age bundle's row has the
#: estimated age and its spread (weeks) and leaves P(BI), label, threshold and TTA spread empty; a classifier's
#: row leaves the age columns empty.
RESULT_COLUMNS: dict[str, str] = {
    "Volume": "string",
    "Model": "string",
    "Training data": "string",
    "P(BI)": "double",
    "Label": "string",
    "Threshold": "double",
    "TTA spread": "double",
    "Age (weeks)": "double",
    "Age spread (weeks)": "double",
    "Device": "string",
    "Time (s)": "double",
    "Date": "string",
}


def results_table(scene=None, name: str = RESULTS_TABLE_NAME):
    """The results table node (one row per prediction), created once per scene with typed columns."""
    scene = get_scene(scene)
    node = find_node(scene, "vtkMRMLTableNode", RESULTS_ROLE)
    if node is None:
        node = table_from_columns(
            name, {c: [] for c in RESULT_COLUMNS}, scene=scene, types=RESULT_COLUMNS, role=RESULTS_ROLE
        )
    return node


def model_label(summary: Mapping[str, Any]) -> str:
    """Model name with a loud flag for synthetic-data or untrained models (shown wherever a result is).

    Args:
        summary: a prediction record (``model``, ``training_data``, optional ``synthetic_model``).
    Returns:
        ``NAME`` or ``NAME [FLAG]`` with :func:`GloResNetLib.bundle_meta.training_flag`'s words.
    """
    name = str(summary.get("model", "?"))
    flag = training_flag(summary.get("training_data"), synthetic=bool(summary.get("synthetic_model")))
    return f"{name} [{flag}]" if flag else name


def total_time_s(summary: Mapping[str, Any]) -> float:
    """Time taken for one prediction (sum of the reported stages, model loading excluded)."""
    return float(sum(float(v) for v in (summary.get("timings_s") or {}).values()))


def result_texts(summary: Mapping[str, Any]) -> dict[str, str]:
    """The texts the module shows for one result: caption and value of the first row ("probability"), label,
    spread, model, training data, device, time. For a brain-age result (``age_weeks``) the first row is the
    estimated age in weeks and the label says that there is none."""
    training = summary.get("training_data") or {}
    texts = {
        "model": model_label(summary),
        "training_data": str(training.get("description", "unknown")),
        "device": str(summary.get("device", "?")),
        "time": f"{total_time_s(summary):.2f} s",
    }
    if "age_weeks" in summary:
        mae = summary.get("cv_mae_weeks")
        n = len(summary.get("view_age_weeks") or {}) * len(summary.get("model_age_weeks") or [])
        return {
            "caption": "Estimated age (PMA):",
            "probability": f"{float(summary['age_weeks']):.1f} weeks"
            + (f" (CV MAE {float(mae):.2f} weeks)" if mae is not None else ""),
            "label": "n/a (brain-age model: no injury label)",
            "spread": f"{float(summary.get('spread_weeks', 0.0)):.2f} weeks over {n} estimates"
            if n > 1
            else "n/a (one estimate)",
            **texts,
        }
    views = summary.get("view_probabilities") or {}
    spread = float(summary.get("spread", 0.0))
    return {
        "caption": "P(brain injury):",
        "probability": f"{float(summary['probability']):.3f}",
        "label": f"{summary.get('label_name', summary.get('label'))} "
        f"(threshold {float(summary.get('threshold', 0.5)):g})",
        "spread": f"{spread:.3f} over {len(views)} views" if len(views) > 1 else "n/a (no TTA)",
        **texts,
    }


def append_result_row(table, summary: Mapping[str, Any], volume_name: str) -> int:
    """Append one prediction to the results table; returns the row index. A brain-age result fills the age
    columns and leaves P(BI), label, threshold and TTA spread empty (NaN / "")."""
    training = summary.get("training_data") or {}
    row = {
        "Volume": volume_name,
        "Model": model_label(summary),
        "Training data": str(training.get("description", "unknown")),
        "Device": str(summary.get("device", "")),
        "Time (s)": round(total_time_s(summary), 3),
        "Date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    if "age_weeks" in summary:
        row.update(
            {"Age (weeks)": float(summary["age_weeks"]), "Age spread (weeks)": float(summary.get("spread_weeks", 0.0))}
        )
    else:
        row.update(
            {
                "P(BI)": float(summary["probability"]),
                "Label": str(summary.get("label_name", summary.get("label"))),
                "Threshold": float(summary.get("threshold", 0.5)),
                "TTA spread": float(summary.get("spread", 0.0)),
            }
        )
    return append_table_row(table, row)


@dataclass
class PredictionNodes:
    """The nodes showing one prediction: input, saliency maps (Grad-CAM ``cam``, ``gradient``, ``occlusion``:
    those computed, on the input grid; ``overlay`` is the one shown, by :data:`OVERLAY_ORDER`), resampled
    volume, table row."""

    input: Any
    cam: Any
    resampled: Any
    table: Any
    row: int
    summary: dict[str, Any] = field(repr=False)
    occlusion: Any = None
    overlay: Any = None
    gradient: Any = None

    @property
    def probability(self) -> float:
        if "probability" not in self.summary:
            raise InputError(f"{self.input.GetName()}: a brain-age result has no P(BI) (see age_weeks)")
        return float(self.summary["probability"])

    @property
    def age_weeks(self) -> float | None:
        """Estimated post-menstrual age at scan (weeks) of a brain-age bundle's result, else None."""
        value = self.summary.get("age_weeks")
        return None if value is None else float(value)

    def peak_ras(self) -> list[float] | None:
        """World RAS position of the peak of the saliency map shown."""
        return peak_ras(self.overlay) if self.overlay is not None else None

    def texts(self) -> dict[str, str]:
        """The texts the module shows for this result (:func:`result_texts`)."""
        return result_texts(self.summary)


def _saliency_node(input_node, array: np.ndarray, label: str, role: str, scene, color_node, threshold: float):
    name = input_node.GetName()
    dims = tuple(input_node.GetImageData().GetDimensions())
    if tuple(np.shape(array)) != dims:
        raise InputError(f"{name}: {label} map of shape {np.shape(array)} does not match the volume {dims}")
    node = output_volume(
        np.asarray(array, dtype=np.float32),
        f"{name} GloResNet {label}",
        reference=input_node,
        source=input_node,
        role=role,
        scene=scene,
    )
    configure_cam_display(node, color_node or heat_color_node(scene), threshold)
    return node


def show_prediction(
    input_node,
    summary: Mapping[str, Any],
    cam: np.ndarray | None,
    resampled: np.ndarray,
    resampled_affine: np.ndarray,
    scene=None,
    table=None,
    color_node=None,
    threshold: float = DEFAULT_CAM_THRESHOLD,
    opacity: float = DEFAULT_CAM_OPACITY,
    show: bool = True,
    occlusion: np.ndarray | None = None,
    gradient: np.ndarray | None = None,
) -> PredictionNodes:
    """Put one prediction into the scene: the saliency volumes (those given of Grad-CAM ``cam``, the
    ``gradient`` map and the ``occlusion`` map) with exactly the input's geometry, the resampled network input
    with its own affine, one results-table row; optionally show one saliency map (chosen by
    :data:`OVERLAY_ORDER`) as the foreground layer over the input. Nodes from an earlier run on the same input
    are reused."""
    scene = get_scene(scene)
    name = input_node.GetName()
    maps = {
        "gradcam": (cam, "saliency", CAM_ROLE),
        "gradient": (gradient, "gradient", GRADIENT_ROLE),
        "occlusion": (occlusion, "occlusion", OCCLUSION_ROLE),
    }
    saliency = {
        method: _saliency_node(input_node, array, label, role, scene, color_node, threshold)
        for method, (array, label, role) in maps.items()
        if array is not None
    }
    overlay = next((saliency[m] for m in OVERLAY_ORDER if m in saliency), None)
    resampled_node = output_volume(
        np.asarray(resampled, dtype=np.float32),
        f"{name} GloResNet resampled",
        affine=resampled_affine,
        source=input_node,
        role=RESAMPLED_ROLE,
        scene=scene,
    )
    resampled_node.SetAndObserveTransformNodeID(input_node.GetTransformNodeID())
    table = table if table is not None else results_table(scene)
    row = append_result_row(table, summary, name)
    if show:
        set_slice_layers(background=input_node, foreground=overlay, foreground_opacity=opacity, scene=scene)
    return PredictionNodes(
        input=input_node,
        cam=saliency.get("gradcam"),
        resampled=resampled_node,
        table=table,
        row=row,
        summary=dict(summary),
        occlusion=saliency.get("occlusion"),
        overlay=overlay,
        gradient=saliency.get("gradient"),
    )


def add_prediction_result(input_node, result, **kwargs: Any) -> PredictionNodes:
    """Show an in-process :class:`GloResNetLib.inference.PredictionResult` (see :func:`show_prediction`)."""
    return show_prediction(
        input_node,
        result.to_json_dict(),
        result.cam,
        result.resampled,
        result.resampled_affine,
        occlusion=result.occlusion,
        gradient=getattr(result, "gradient", None),
        **kwargs,
    )


def add_prediction_record(input_node, record: Mapping[str, Any], **kwargs: Any) -> PredictionNodes:
    """Show one result of ``gloresnet predict --json`` on the volume node it was computed from.

    The output files are read in their stored voxel order (GloResNetLib.io, as the command line wrote
    them), not with Slicer's reader, which would reverse the k axis of left-handed geometries.
    """
    from ..io import read_volume

    outputs = record.get("outputs") or {}
    cam = read_volume(outputs["cam"])[0] if outputs.get("cam") else None
    occlusion = read_volume(outputs["occlusion"])[0] if outputs.get("occlusion") else None
    gradient = read_volume(outputs["gradient"])[0] if outputs.get("gradient") else None
    resampled, resampled_affine = read_volume(outputs["resampled"])
    return show_prediction(
        input_node, record, cam, resampled, resampled_affine, occlusion=occlusion, gradient=gradient, **kwargs
    )


def predict_nodes(
    volume_nodes: Iterable,
    bundle,
    tta: bool = True,
    device: str | None = None,
    cam: bool = True,
    saliency: str = "gradcam",
    occlusion: Any = None,
    **kwargs: Any,
) -> list[PredictionNodes]:
    """Predict volume nodes in this Python process (console, batch, self-test); blocks while it runs.
    ``saliency``: gradcam, gradient, occlusion, both (Grad-CAM and occlusion), all, or a comma list (the map
    shown: :data:`OVERLAY_ORDER`); ``occlusion``: an :class:`GloResNetLib.occlusion.OcclusionConfig` (see
    :func:`GloResNetLib.inference.predict`).

    ``bundle`` is a loaded :class:`GloResNetLib.bundle.Bundle` or a bundle folder. The GUI uses
    :class:`.prediction_job.PredictionJob` instead, which keeps Slicer responsive.
    """
    from ..bundle import Bundle, load_bundle
    from ..inference import predict

    if not isinstance(bundle, Bundle):
        bundle = load_bundle(bundle, device=device or "auto")
    results = []
    for node in volume_nodes:
        array, affine = volume_to_array(node)
        result = predict(bundle, array, affine, tta=tta, cam=cam, device=device, saliency=saliency, occlusion=occlusion)
        results.append(add_prediction_result(node, result, **kwargs))
    return results


__all__ = [
    "OVERLAY_ORDER",
    "RESULTS_TABLE_NAME",
    "RESULT_COLUMNS",
    "PredictionNodes",
    "add_prediction_record",
    "add_prediction_result",
    "append_result_row",
    "model_label",
    "predict_nodes",
    "result_texts",
    "results_table",
    "show_prediction",
    "total_time_s",
]

"""Figures and a self-contained HTML report (images embedded) for predictions and CV runs.

Saliency figures show the network input (the resampled volume, RAS) with each saliency method's map (Grad-CAM,
occlusion, ...) in three orthogonal planes through that map's peak, a colour bar per map and an optional lesion
outline; :func:`montage_png` shows example scans in three planes each.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .inference import DISCLAIMER, PredictionResult


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    plt = _figure()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


#: The three orthogonal planes of a RAS volume: (name, axis the plane is normal to, orientation note).
PLANES = (("axial", 2, "R on the right"), ("coronal", 1, "R on the right"), ("sagittal", 0, "A on the right"))


def orthogonal_planes(volume: np.ndarray, point: Sequence[int] | None = None) -> list[np.ndarray]:
    """Axial, coronal and sagittal cuts of a RAS-ordered volume through ``point``, ready for display.

    Args:
        volume: (X, Y, Z) array on a RAS grid (the network input, or any canonical volume).
        point: voxel indices (i, j, k) the planes go through; default the centre.

    Returns:
        Three 2-D arrays, each transposed so that ``imshow(..., origin="lower")`` shows it the radiological way
        round: axial (Y, X), coronal (Z, X), sagittal (Z, Y).
    """
    vol = np.asarray(volume)
    point = tuple(s // 2 for s in vol.shape) if point is None else tuple(int(v) for v in point)
    return [np.take(vol, point[axis], axis=axis).T for _, axis, _ in PLANES]


def _peak(volume: np.ndarray | None, shape: Sequence[int]) -> tuple[int, ...]:
    if volume is None or not np.isfinite(volume).any() or float(np.nanmax(volume)) <= 0:
        return tuple(s // 2 for s in shape)
    return tuple(int(v) for v in np.unravel_index(int(np.nanargmax(volume)), volume.shape))


def saliency_png(
    volume: np.ndarray,
    affine: np.ndarray,
    maps: Mapping[str, np.ndarray | None],
    lesion: np.ndarray | None = None,
    title: str = "",
    floor: float = 0.2,
    lesion_row: bool = False,
) -> bytes:
    """One row per saliency method: three orthogonal planes through that map's peak, with a colour bar.

    Methods sit one above the other, the same planes and scale for each, so that a second method (occlusion
    sensitivity, ...) is compared with Grad-CAM at a glance. Values below ``floor`` times the map's maximum are
    transparent; the peak is marked with a green cross; the lesion (if given) is outlined in cyan.

    Args:
        volume: (X, Y, Z) network input on its RAS grid.
        affine: 4x4 voxel-to-world affine of ``volume`` (only the voxel sizes are used, for the aspect ratio).
        maps: method name -> (X, Y, Z) saliency map on the same grid (None: no map; the row shows the anatomy).
            An empty dict gives one row of anatomy.
        lesion: (X, Y, Z) lesion mask on the same grid, or None.
        title: figure title (say SYNTHETIC where the data are).
        floor: share of each map's maximum below which it is not drawn.
        lesion_row: add a last row through the lesion's centre (with the first method's map), to show where a
            missed lesion is.

    Returns:
        PNG bytes.
    """
    plt = _figure()
    vol = np.asarray(volume)
    spacing = np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)
    rows = [(m, sal, None) for m, sal in maps.items()] or [("", None, None)]
    if lesion_row and lesion is not None and (np.asarray(lesion) >= 0.5).any():
        centre = np.round(np.argwhere(np.asarray(lesion) >= 0.5).mean(axis=0)).astype(int)
        rows.append(
            (f"{rows[0][0]} through the lesion centre" if rows[0][0] else "lesion centre", rows[0][1], tuple(centre))
        )
    fig, axes = plt.subplots(len(rows), 3, figsize=(12, 3.9 * len(rows)), squeeze=False)
    lo, hi = np.percentile(vol, [1, 99.5])
    for row_axes, (method, sal, point) in zip(axes, rows):
        sal = None if sal is None else np.asarray(sal, dtype=np.float32)
        peak = point if point is not None else _peak(sal, vol.shape)
        vmax = float(np.nanmax(sal)) if sal is not None and np.isfinite(sal).any() else 0.0
        cuts = zip(
            PLANES,
            orthogonal_planes(vol, peak),
            orthogonal_planes(sal, peak) if sal is not None else [None] * 3,
            orthogonal_planes(lesion, peak) if lesion is not None else [None] * 3,
        )
        shown = None
        for ax, ((name, axis, note), img, sal_cut, les_cut) in zip(row_axes, cuts):
            rest = [i for i in range(3) if i != axis]
            extent = (0, vol.shape[rest[0]] * spacing[rest[0]], 0, vol.shape[rest[1]] * spacing[rest[1]])
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent)
            if sal_cut is not None and vmax > 0:
                shown = ax.imshow(
                    np.ma.masked_less(sal_cut, floor * vmax),
                    cmap="inferno",
                    vmin=0,
                    vmax=vmax,
                    alpha=0.6,
                    origin="lower",
                    extent=extent,
                )
            if les_cut is not None and float(les_cut.max()) >= 0.5:
                ax.contour(les_cut, levels=[0.5], colors="cyan", linewidths=1.0, origin="lower", extent=extent)
            if point is None:
                ax.plot(
                    [(peak[rest[0]] + 0.5) * spacing[rest[0]]],
                    [(peak[rest[1]] + 0.5) * spacing[rest[1]]],
                    "+",
                    color="lime",
                    markersize=12,
                    markeredgewidth=1.5,
                )
            ax.set_title(f"{method + ' - ' if method and axis == 1 else ''}{name} ({note})", fontsize=8)
            ax.set_axis_off()
        if shown is not None:
            bar = fig.colorbar(shown, ax=list(row_axes), fraction=0.025, pad=0.01)
            bar.set_label(f"{method.split(' through')[0]} (transparent below {floor:.0%} of max)", fontsize=8)
            bar.ax.tick_params(labelsize=7)
        elif sal is not None:
            row_axes[1].set_title(f"{method}: empty map (no saliency)", fontsize=8, color="#b00020")
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def overlay_png(
    result: PredictionResult, lesion_network: np.ndarray | None = None, title: str = "", cam_floor: float = 0.2
) -> bytes:
    """Grad-CAM of a prediction over its network input (see :func:`saliency_png`), lesion outline in cyan.

    Args:
        result: a prediction (its ``resampled`` (X, Y, Z) input and ``cam_network`` on the same grid).
        lesion_network: (X, Y, Z) lesion mask on the network grid, or None.
        title: figure title.
        cam_floor: share of the maximum below which the map is transparent.

    Returns:
        PNG bytes.
    """
    return saliency_png(
        result.resampled, result.resampled_affine, {"Grad-CAM": result.cam_network}, lesion_network, title, cam_floor
    )


def montage_png(examples: Sequence[tuple], columns: int = 2, title: str = "") -> bytes:
    """A grid of examples, three orthogonal planes each (for instance synthetic scans across ages, with and
    without each lesion type).

    Args:
        examples: ``(title, planes)`` or ``(title, planes, mask_planes)`` per example, where ``planes`` are three
            2-D arrays (axial, coronal, sagittal, as :func:`orthogonal_planes` returns them, square pixels) and
            ``mask_planes`` three 2-D masks of the same shapes drawn as a cyan outline (or None).
        columns: examples per row of the grid.
        title: figure title (say SYNTHETIC where the data are).

    Returns:
        PNG bytes.
    """
    if not examples:
        raise ValueError("montage_png needs at least one example")
    plt = _figure()
    columns = max(1, min(columns, len(examples)))
    n_rows = -(-len(examples) // columns)
    fig, axes = plt.subplots(n_rows, 3 * columns, figsize=(5 * columns, 2.3 * n_rows), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for i, example in enumerate(examples):
        name, planes = example[0], example[1]
        masks = example[2] if len(example) > 2 and example[2] is not None else [None] * 3
        if len(planes) != 3 or len(masks) != 3:
            raise ValueError(f"example {name!r}: expected 3 planes (axial, coronal, sagittal), got {len(planes)}")
        lo, hi = np.percentile(np.concatenate([np.ravel(p) for p in planes]), [1, 99.5])
        row, col = divmod(i, columns)
        for j, (plane, mask) in enumerate(zip(planes, masks)):
            ax = axes[row, 3 * col + j]
            ax.imshow(np.asarray(plane), cmap="gray", vmin=lo, vmax=hi, origin="lower")
            if mask is not None and float(np.max(mask)) >= 0.5:
                ax.contour(
                    np.asarray(mask, dtype=np.float32), levels=[0.5], colors="cyan", linewidths=0.8, origin="lower"
                )
            ax.set_title(f"{name if j == 1 else ''}\n{PLANES[j][0]}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return png_bytes(fig)


def img_tag(png: bytes, alt: str, width: int | None = None) -> str:
    """An <img> element with the PNG embedded as base64."""
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}"{w} src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def table_html(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain HTML table (cells escaped)."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def details_html(summary: str, body: str, open_: bool = False) -> str:
    """A collapsible block (``<details>``): ``summary`` is always shown, ``body`` (HTML) on a click."""
    return f"<details{' open' if open_ else ''}><summary>{html.escape(summary)}</summary>\n{body}</details>"


def header_html(items: Sequence[tuple[str, object]]) -> str:
    """The report's identity card: one ``name: value`` line per item (date, version, seed, bundle, ...)."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items)
    return f"<table class='header'>{rows}</table>"


#: One line each for the figures a reader may not know (shown under the tables that use them).
EXPLAIN = {
    "tta_spread": "TTA spread: the largest minus the smallest P(BI) over the test-time-augmentation views (the "
    "scan and its left-right / other flips); a large spread means the call depends on the view.",
    "pooled_oof": "Pooled out-of-fold: every scan predicted once, by the fold model that never saw it in "
    "training; the metric is computed once over all these predictions together (the other columns "
    "average the per-fold figures).",
    "peak_distance": "Peak to lesion: distance in millimetres from the saliency maximum to the nearest lesion "
    "voxel (0 inside the lesion); within 5 mm counts as a hit in the pointing game.",
}


def explain_html(*keys: str) -> str:
    """The :data:`EXPLAIN` lines for ``keys`` as a small note."""
    return "".join(f"<p class='note'>{html.escape(EXPLAIN[k])}</p>" for k in keys)


STYLE = """
body { font-family: sans-serif; max-width: 1150px; margin: 1em auto; color: #222; }
.banner { background: #b00020; color: white; padding: 0.6em 1em; font-weight: bold; border-radius: 4px; }
.warn { background: #fff3cd; border: 2px solid #b00020; padding: 0.6em 1em; font-weight: bold; margin: 0.6em 0; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th { background: #eee; } td:first-child { text-align: left; }
table.header th { text-align: left; } table.header td { text-align: left; }
details { margin: 0.5em 0 1em; } summary { cursor: pointer; font-weight: bold; }
img { max-width: 100%; height: auto; }
.note { color: #555; font-size: 90%; margin: 0.2em 0; }
"""


def write_html(
    path: str | Path,
    title: str,
    sections: Sequence[tuple[str, str]],
    banner: str = DISCLAIMER,
    header: Sequence[tuple[str, object]] = (),
    warning: str = "",
) -> Path:
    """Write a self-contained HTML page atomically.

    Args:
        path: the ``.html`` file.
        title: page title and first heading.
        sections: (heading, HTML body) pairs, in order.
        banner: warning banner at the top and the bottom of the page.
        header: (name, value) lines under the title (date, library version, seed, bundle, ...).
        warning: an extra boxed warning under the header (for instance: these figures mean nothing).

    Returns:
        The path written.
    """
    from .io import write_text_atomic

    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<div class='banner'>{html.escape(banner)}</div>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if header:
        parts.append(header_html(header))
    if warning:
        parts.append(f"<div class='warn'>{html.escape(warning)}</div>")
    parts += [f"<h2>{html.escape(h)}</h2>\n{body}" for h, body in sections]
    parts.append(f"<p class='note'>{html.escape(banner)}</p></body></html>")
    return write_text_atomic(path, "\n".join(parts) + "\n")

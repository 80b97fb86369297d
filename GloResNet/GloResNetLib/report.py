"""Figures and a self-contained HTML report (images embedded) for predictions and CV runs.

Overlays show the network input (the 128^3 resampled volume, RAS) with the Grad-CAM in three orthogonal
planes through the saliency peak, and an optional lesion outline.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
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


def overlay_png(result: PredictionResult, lesion_network: np.ndarray | None = None, title: str = "",
                cam_floor: float = 0.2) -> bytes:
    """Three planes (axial, coronal, sagittal) of the network input through the CAM peak, CAM in colour
    (values below ``cam_floor`` transparent), lesion outline in cyan."""
    plt = _figure()
    vol, cam = result.resampled, result.cam_network
    spacing = np.linalg.norm(result.resampled_affine[:3, :3], axis=0)
    peak = np.unravel_index(int(np.argmax(cam)), cam.shape) if cam is not None else tuple(s // 2 for s in vol.shape)
    planes = [("axial", 2), ("coronal", 1), ("sagittal", 0)]
    fig, axes = plt.subplots(1, 3, figsize=(11, 4))
    lo, hi = np.percentile(vol, [1, 99.5])
    for ax, (name, axis) in zip(axes, planes):
        def cut(a, axis=axis):
            return np.take(a, peak[axis], axis=axis).T  # rows = second remaining axis (A or S), origin lower
        rest = [i for i in range(3) if i != axis]
        extent = (0, vol.shape[rest[0]] * spacing[rest[0]], 0, vol.shape[rest[1]] * spacing[rest[1]])
        ax.imshow(cut(vol), cmap="gray", vmin=lo, vmax=hi, origin="lower", extent=extent)
        if cam is not None:
            ax.imshow(np.ma.masked_less(cut(cam), cam_floor), cmap="inferno", vmin=0, vmax=1, alpha=0.55,
                      origin="lower", extent=extent)
        if lesion_network is not None and cut(lesion_network).max() >= 0.5:
            ax.contour(cut(lesion_network), levels=[0.5], colors="cyan", linewidths=1.0, origin="lower",
                       extent=extent)
        ax.plot([(peak[rest[0]] + 0.5) * spacing[rest[0]]], [(peak[rest[1]] + 0.5) * spacing[rest[1]]], "+",
                color="lime", markersize=12, markeredgewidth=1.5)
        ax.set_title(name + (" (patient right on the right)" if axis != 0 else " (anterior on the right)"),
                     fontsize=8)
        ax.set_axis_off()
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


STYLE = """
body { font-family: sans-serif; max-width: 1150px; margin: 1em auto; color: #222; }
.banner { background: #b00020; color: white; padding: 0.6em 1em; font-weight: bold; border-radius: 4px; }
table { border-collapse: collapse; margin: 0.5em 0 1em; }
td, th { border: 1px solid #bbb; padding: 3px 8px; text-align: right; }
th { background: #eee; } td:first-child { text-align: left; }
.note { color: #555; font-size: 90%; }
"""


def write_html(path: str | Path, title: str, sections: Sequence[tuple[str, str]], banner: str = DISCLAIMER) -> Path:
    """Write a self-contained HTML page: a warning banner, then (heading, html) sections; atomically."""
    from .io import write_text_atomic

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<div class='banner'>{html.escape(banner)}</div>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<h2>{html.escape(h)}</h2>\n{body}" for h, body in sections]
    parts.append(f"<p class='note'>{html.escape(banner)}</p></body></html>")
    return write_text_atomic(path, "\n".join(parts) + "\n")

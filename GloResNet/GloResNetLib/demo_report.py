"""The demo's ``report.html``: header, summary, curves, saliency check per method, chosen overlays, held-out table.

Held-out records (one per scan, made by ``demo._predict_heldout``) are dicts with ``case``, ``true_label``,
``result`` (a :class:`~GloResNetLib.inference.PredictionResult`), ``injuries`` (``"pwml+ivh"``, empty for a
healthy scan), ``lesion_network`` (the lesion mask on the network grid, or None), ``maps`` (saliency method name
-> map on the network grid, e.g. ``{"Grad-CAM": result.cam_network}``) and ``scores`` (method name ->
:class:`~GloResNetLib.saliency.SaliencyScore`, injured scans only). Every section loops over the methods in
``maps``, so a second saliency method appears beside Grad-CAM by adding its map and score to each record.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__, report
from .saliency import SaliencyScore, pointing_game, pointing_game_interval

#: Said on the console and at the top of the report whenever ``--quick`` settings were used.
QUICK_WARNING = (
    "QUICK SETTINGS: a smoke test of the pipeline (few scans, few epochs, a handful of held-out "
    "cases). Its figures mean nothing: they say the code runs, not how well the method works."
)


def methods_of(heldout: Sequence[dict[str, Any]]) -> list[str]:
    """Saliency method names in the order the records first list them."""
    names: list[str] = []
    for h in heldout:
        names += [m for m in h.get("maps", {}) if m not in names]
    return names


def injury_types(record: dict[str, Any]) -> list[str]:
    """The record's lesion types (``"pwml+ivh"`` -> ``["pwml", "ivh"]``); empty for a healthy scan."""
    return [t for t in str(record.get("injuries") or "").split("+") if t]


def metric_rows(metrics: dict[str, Any]) -> list[list[str]]:
    """CV table rows: metric, mean, sd, best fold, pooled out-of-fold (from a run's ``metrics.json``)."""
    summary, pooled = metrics.get("summary", {}), metrics.get("pooled", {})
    rows = []
    for name in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "auc", "f1"):
        m = summary.get(name)
        if not m:
            continue
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        rows.append([name, fmt(m.get("mean")), fmt(m.get("sd")), fmt(m.get("best")), fmt(pooled.get(name))])
    return rows


def _scores(heldout: Sequence[dict[str, Any]], method: str) -> list[tuple[dict[str, Any], SaliencyScore]]:
    return [(h, h["scores"][method]) for h in heldout if method in (h.get("scores") or {})]


def saliency_summary(heldout: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per saliency method: pointing game, its 95% interval, hits, injured scans and hits by lesion type
    (for ``demo_summary.json``)."""
    out = {}
    for m in methods_of(heldout):
        injured = _scores(heldout, m)
        scores = [sc for _, sc in injured]
        out[m] = {
            "pointing_game": pointing_game(scores),
            "pointing_game_95ci": pointing_game_interval(scores),
            "hits": sum(sc.hit for sc in scores),
            "n_injured": len(scores),
            "by_lesion_type": {t: {"hits": h, "n": n} for t, (h, n) in pointing_by_type(injured).items()},
        }
    return out


def pointing_by_call(injured: list[tuple[dict[str, Any], SaliencyScore]], method: str) -> str:
    """Pointing game split by the ensemble's call: a case it calls healthy has little evidence to show."""
    parts = []
    for called, words in ((1, "called BI"), (0, "called no BI")):
        hits = [sc.hit for h, sc in injured if h["result"].label == called]
        if hits:
            parts.append(f"{sum(hits)}/{len(hits)} hits among injured cases the ensemble {words}")
    return f"Pointing game by the ensemble's call ({method}): " + "; ".join(parts) + "."


def pointing_by_type(injured: list[tuple[dict[str, Any], SaliencyScore]]) -> dict[str, tuple[int, int]]:
    """Lesion type -> (hits, injured scans with that type); a scan with two types counts under both."""
    out: dict[str, tuple[int, int]] = {}
    for h, sc in injured:
        for t in injury_types(h):
            hits, n = out.get(t, (0, 0))
            out[t] = (hits + int(sc.hit), n + 1)
    return out


def saliency_section(heldout: Sequence[dict[str, Any]], methods: Sequence[str]) -> str:
    """Pointing game of each method (95% interval), by lesion type and by the ensemble's call, CAM energy."""
    types = sorted({t for h in heldout for t in injury_types(h)})
    rows, lines = [], []
    for m in methods:
        injured = _scores(heldout, m)
        if not injured:
            continue
        scores = [sc for _, sc in injured]
        low, high = pointing_game_interval(scores)
        per_type = pointing_by_type(injured)
        ratio = float(np.median([sc.energy_ratio for sc in scores]))
        rows.append(
            [
                m,
                f"{pointing_game(scores):.2f}",
                f"{low:.2f}-{high:.2f}",
                f"{sum(sc.hit for sc in scores)}/{len(scores)}",
                *[("{}/{}".format(*per_type[t]) if t in per_type else "-") for t in types],
                f"{ratio:.2f}",
            ]
        )
        lines.append(f"<p>{html.escape(pointing_by_call(injured, m), quote=False)}</p>")
    if not rows:
        return "<p>No injured held-out case: nothing to score.</p>"
    return (
        "<p>Pointing game: is the saliency maximum within 5 mm of the lesion mask? Scored on the injured "
        "held-out cases; a case with two lesion types counts under both. Inside/outside ratio: the mean saliency "
        "inside the lesion over the mean outside it (median over cases; above 1: saliency gathers on the "
        "lesion).</p>"
        + report.table_html(
            ["method", "pointing game", "95% interval (Wilson)", "hits", *types, "median inside/outside ratio"], rows
        )
        + "".join(lines)
        + report.explain_html("peak_distance")
    )


def choose_overlays(heldout: Sequence[dict[str, Any]], method: str, healthy: int = 2) -> list[tuple[str, dict]]:
    """Cases that show what the saliency does: a hit and a miss (by ``method``) of each lesion type, then
    healthy scans (a false positive first, if any).

    Single-lesion scans are preferred so that the type is unambiguous; ties go to the highest P(BI) for hits
    and the lowest for misses. Returns (tag, record) pairs, each record once.
    """
    injured = _scores(heldout, method)
    chosen: list[tuple[str, dict]] = []
    seen: set[str] = set()
    for t in sorted({t for h, _ in injured for t in injury_types(h)}):
        for hit, word in ((True, "hit"), (False, "miss")):
            cands = [h for h, sc in injured if sc.hit == hit and t in injury_types(h) and h["case"] not in seen]
            cands.sort(
                key=lambda h: (
                    len(injury_types(h)),
                    -h["result"].probability if hit else h["result"].probability,
                    h["case"],
                )
            )
            if cands:
                chosen.append((f"{t}: {word}", cands[0]))
                seen.add(cands[0]["case"])
    fit = [h for h in heldout if not injury_types(h) and h["case"] not in seen]
    fit.sort(key=lambda h: (-h["result"].label, h["case"]))  # false positives (called BI) first
    chosen += [("healthy: " + ("false positive" if h["result"].label else "called no BI"), h) for h in fit[:healthy]]
    return chosen


def overlays_section(heldout: Sequence[dict[str, Any]], methods: Sequence[str]) -> str:
    """One figure per chosen case, every method's map in its own row with its colour bar."""
    if not methods:
        return "<p>No saliency maps were computed.</p>"
    figures = []
    for tag, h in choose_overlays(heldout, methods[0]):
        r, sc = h["result"], (h.get("scores") or {}).get(methods[0])
        dist = f", {methods[0]} peak {sc.peak_distance_mm:.1f} mm from the lesion" if sc else ""
        title = (
            f"{tag.upper()} - {h['case']}: true {'BI (' + h['injuries'] + ')' if h['true_label'] else 'no BI'}"
            f", P(BI) {r.probability:.2f}{dist} - SYNTHETIC"
        )
        png = report.saliency_png(
            r.resampled,
            r.resampled_affine,
            h["maps"],
            h.get("lesion_network"),
            title,
            lesion_row=sc is not None and not sc.hit,
        )
        figures.append(report.img_tag(png, f"{tag} {h['case']}", 1000))
    return (
        "<p class='note'>Network input in three planes through each map's peak (green cross); cyan: lesion "
        "outline; one row and colour bar per saliency method (for a miss, a last row through the lesion's "
        "centre). Chosen to show a hit and a miss of each lesion "
        "type (by " + html.escape(methods[0]) + ") and healthy scans, not the first files.</p>" + "".join(figures)
    )


def heldout_table(heldout: Sequence[dict[str, Any]], methods: Sequence[str]) -> str:
    """All held-out predictions, collapsed (``<details>``) under a one-line summary."""
    rows = []
    for h in heldout:
        r, scores = h["result"], h.get("scores") or {}
        cells = [
            h["case"],
            h["true_label"],
            f"{r.probability:.3f}",
            r.label_name,
            f"{r.spread:.3f}",
            h["injuries"] or "-",
        ]
        for m in methods:
            sc = scores.get(m)
            cells += ["-", "-"] if sc is None else ["hit" if sc.hit else "miss", f"{sc.peak_distance_mm:.1f}"]
        rows.append(cells)
    header = ["case", "true label", "P(BI)", "predicted", "TTA spread", "injuries"]
    for m in methods:
        header += [f"pointing game ({m})", f"peak to lesion mm ({m})"]
    correct = sum(h["result"].label == h["true_label"] for h in heldout)
    summary = (
        f"{len(heldout)} held-out scans, {correct} called right "
        f"(accuracy {correct / max(len(heldout), 1):.2f}): click to show the table"
    )
    return report.explain_html("tta_spread") + report.details_html(summary, report.table_html(header, rows))


def write_demo_report(
    out: Path,
    settings: Any,
    flavour: str,
    seed: int,
    run_dir: Path,
    metrics: dict[str, Any],
    heldout: list[dict[str, Any]],
    timings: dict[str, float],
    bundle_name: str,
    banner: str,
    examples: Sequence[tuple] = (),
    faithfulness: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Write ``out/report.html``.

    Args:
        out: demo folder.
        settings: the ``demo.DemoSettings`` used.
        flavour: ``"cpu"``, ``"quick"`` or ``"gpu"`` (quick adds :data:`QUICK_WARNING`).
        seed: the demo's seed.
        run_dir: training run folder (``roc.png`` and ``learning_curves.png`` are embedded from it).
        metrics: the run's ``metrics.json``.
        heldout: held-out records (see the module docstring).
        timings: stage -> seconds.
        bundle_name: the ensemble bundle's name.
        banner: the synthetic-data banner.
        faithfulness: per saliency method, the demo's deletion-test summary (``fractions``, ``saliency_drop``,
            ``random_drop``, ``score``, ``n_cases``); None or empty: no section.
        examples: optional synthetic examples for a montage section after "About this report":
            ``(title, 3 planes[, 3 mask planes])`` each (see :func:`report.montage_png`).

    Returns:
        The report's path.
    """
    s = settings
    methods = methods_of(heldout)
    header = [
        ("date", datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")),
        ("GloResNet library", __version__),
        ("seed", seed),
        ("settings", flavour),
        ("bundle", f"{bundle_name} ({run_dir.name}/bundle)"),
        ("saliency", ", ".join(methods) or "none"),
    ]
    t = settings.training
    about = (
        f"<p>Settings '{flavour}': {s.n} synthetic scans, subject-grouped {t.folds}-fold cross-validation, "
        f"input {t.size}^3, {t.arch} {t.arch_params or ''}, {t.epochs} epochs, batch {t.batch_size}, "
        f"learning rate {t.lr:g}, mixup alpha {t.mixup_alpha}, class weighting, left-right flips, lesion "
        f"difficulty {s.difficulty}, "
        f"anti-aliased resampling {t.antialias}; checkpoint chosen on a validation split inside each training "
        "fold (honest protocol). The paper uses 128^3, ResNet-10 and 150 epochs on dHCP data; these are "
        f"CPU-sized settings on synthetic data. {len(heldout)} freshly generated held-out scans.</p>"
    )
    correct = sum(h["result"].label == h["true_label"] for h in heldout)
    glance = [f"held-out accuracy {correct / max(len(heldout), 1):.2f} ({correct}/{len(heldout)})"]
    for m in methods:
        scores = [sc for _, sc in _scores(heldout, m)]
        if scores:
            glance.append(
                f"pointing game ({m}) {pointing_game(scores):.2f} "
                f"({sum(sc.hit for sc in scores)}/{len(scores)} injured)"
            )
    summary = (
        report.table_html(["metric", "mean", "sd", "best fold", "pooled out-of-fold"], metric_rows(metrics))
        + report.explain_html("pooled_oof")
        + f"<p>{html.escape('; '.join(glance))}.</p>"
    )
    sections = [("About this report", about)]
    if examples:
        sections.append(montage_section(examples))
    sections += [("Summary: cross-validation (test folds) and held-out scans", summary)]
    for name, heading, width in (("learning_curves", "Learning curves", 1100), ("roc", "ROC curve", 560)):
        png = run_dir / f"{name}.png"
        if png.exists():
            sections.append((heading, report.img_tag(png.read_bytes(), name, width)))
    deletion = [("Saliency faithfulness: deletion test", faithfulness_section(faithfulness))] if faithfulness else []
    sections += [
        ("Saliency check", saliency_section(heldout, methods)),
        *deletion,
        ("Saliency overlays: hits and misses of each lesion type", overlays_section(heldout, methods)),
        ("Held-out synthetic cases (ensemble bundle, TTA)", heldout_table(heldout, methods)),
        ("Run time", report.table_html(["stage", "seconds"], [[k, f"{v:.0f}"] for k, v in timings.items()])),
    ]
    return report.write_html(
        out / "report.html",
        "GloResNet demo on synthetic neonatal T2w data",
        sections,
        banner=banner,
        header=header,
        warning=QUICK_WARNING if flavour == "quick" else "",
    )


def faithfulness_section(faithfulness: dict[str, dict[str, Any]]) -> str:
    """HTML table of the deletion test: per method and fraction, the mean drop of P(BI) for the most salient
    voxels beside that for random blobs of the same size."""
    rows = []
    for method, f in faithfulness.items():
        for frac, sal, rnd in zip(f["fractions"], f["saliency_drop"], f["random_drop"], strict=True):
            rows.append([method, f"{100 * frac:g}%", f"{sal:.3f}", f"{rnd:.3f}", f"{sal - rnd:+.3f}"])
    n = max(f["n_cases"] for f in faithfulness.values())
    text = (
        f"<p>On {n} injured held-out scans the ensemble calls BI: hiding (setting to the brain's mean) the most "
        "salient brain voxels of each map should lower P(BI) more than hiding random blobs of the same size. "
        "A method whose drop is not above the random one does not show what the model uses.</p>"
    )
    return text + report.table_html(
        ["method", "brain voxels hidden", "drop of P(BI): salient", "drop: random blobs", "difference"], rows
    )


def montage_section(examples: Sequence[tuple], title: str = "SYNTHETIC examples") -> tuple[str, str]:
    """A (heading, HTML) report section with :func:`report.montage_png` of ``(title, 3 planes[, 3 mask planes])``
    examples (e.g. synthetic scans across ages, with and without each lesion type; cyan: lesion outline)."""
    return (
        "Synthetic examples",
        report.img_tag(report.montage_png(examples, columns=2, title=title), "synthetic examples montage", 1100),
    )

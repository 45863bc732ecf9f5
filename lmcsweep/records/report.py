"""`lmcsweep report`: figures and an HTML page made from the stored query records of a sweep.

- instability vs rewind point (mean ± std over pairs and replicates), one line per split and
  level/control, the 2% stability threshold drawn in;
- test accuracy vs density for IMP subnetworks and their controls (median over replicates);
- an index.html with the figures and the records as tables.
"""

from __future__ import annotations

import html
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from ..interpolate import STABLE_THRESHOLD
from ..plots import pyplot


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _save(plt, fig, ax, xlabel: str, ylabel: str, path: Path) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def instability_figure(records: list[dict[str, Any]], path: Path) -> bool:
    groups: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("trained") is False:  # a collapsed pair (an end at chance): no instability to show
            continue
        key = (r["split"], r.get("level"), r.get("control"), r.get("trial"))
        groups[key][r["rewind"]].append(100 * r["instability"])
    if not groups:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (split, level, control, trial), by_k in sorted(groups.items(), key=lambda kv: str(kv[0])):
        ks = sorted(by_k)
        stats = [_mean_std(by_k[k]) for k in ks]
        label = split + (f", level {level}" if level is not None else "") + (f", {control}" if control else "") \
            + (f", trial {trial}" if trial is not None else "")
        xs = ks
        ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=label)
    ax.axhline(100 * STABLE_THRESHOLD, color="grey", ls="--", lw=1)
    all_k = sorted({k for g in groups.values() for k in g})
    threshold = max(1, min([k for k in all_k if k > 0], default=1))
    ax.set_xscale("symlog", linthresh=threshold)
    ax.set_xlim(-0.3 * threshold, max(all_k) * 1.5 + 1)
    ax.set_xticks(all_k, [str(k) for k in all_k])
    _save(plt, fig, ax, "rewind iteration k", "instability (%)", path)
    return True


def sparsity_figure(records: list[dict[str, Any]], path: Path) -> bool:
    groups: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("accuracy") is None or r.get("density") is None:
            continue
        groups[(r.get("control") or "imp", r.get("rewind"), r.get("trial"))][round(r["density"], 4)].append(
            100 * r["accuracy"])
    if not groups:
        return False
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for (control, rewind, trial), by_d in sorted(groups.items(), key=lambda kv: str(kv[0])):
        ds = sorted(by_d, reverse=True)
        label = f"{control}, k={rewind}" + (f", trial {trial}" if trial is not None else "")
        ax.plot([100 * d for d in ds], [statistics.median(by_d[d]) for d in ds], marker="o", label=label)
    ax.set_xscale("log")
    ax.invert_xaxis()
    _save(plt, fig, ax, "weights remaining (%)", "test accuracy (%), median over replicates", path)
    return True


def _table(records: list[dict[str, Any]]) -> str:
    if not records:
        return "<p>(no records)</p>"
    cols = [c for c in records[0] if c != "run_id"]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)

    def cell(v: Any) -> str:
        return f"{v:.4f}" if isinstance(v, float) else html.escape("" if v is None else str(v))

    rows = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in records)
    return f"<table><tr>{head}</tr>{rows}</table>"


def write_report(sweep: str, instability: list[dict[str, Any]], imp: list[dict[str, Any]], out: Path) -> Path:
    """Write the figures and index.html for `sweep` into out/<sweep>/; returns the index path."""
    folder = Path(out) / sweep
    folder.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>lmcsweep report: {html.escape(sweep)}</h1>"]
    if instability_figure(instability, folder / "instability.png"):
        parts.append('<h2>Instability vs rewind point</h2><img src="instability.png">')
    if sparsity_figure(imp, folder / "sparsity.png"):
        parts.append('<h2>Accuracy vs density</h2><img src="sparsity.png">')
    parts.append("<h2>Instability records</h2>" + _table(instability))
    if imp:
        parts.append("<h2>IMP records</h2>" + _table(imp))
    style = "<style>body{font-family:sans-serif}table{border-collapse:collapse;font-size:12px}" \
            "td,th{border:1px solid #ccc;padding:2px 6px}</style>"
    index = folder / "index.html"
    index.write_text(f"<!doctype html><html><head><meta charset='utf-8'>{style}</head><body>"
                     + "\n".join(parts) + "</body></html>")
    return index

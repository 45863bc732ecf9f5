"""`lmcsweep report`: one self-contained HTML page of a sweep's figures, made from its stored query
records (`query`) and the error curves of its interpolation runs, written to out/<sweep>/index.html
beside the figures as PNG files and a figures.json of their data, and logged as artifacts
(report/...) on the sweep's MLflow run.

The figures (`charts`, from the rows of `figures`):

- instability vs rewind point k, one line per split, IMP level/control and trial;
- error along the path for each k (the paper's Fig. 2/5), of the dense network and each IMP level;
- instability vs k of IMP subnetworks beside both controls, a panel per density (Fig. 6/7);
- the earliest stable and earliest matching k vs density (Fig. 9);
- test accuracy vs density of IMP and its controls.

Each image is embedded in the page (base64 PNG), with its caption and the data it was drawn from;
a figure the sweep has no data for is left out with a note saying what it needs.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

from ..interpolate import STABLE_THRESHOLD
from . import charts
from .figures import control_rows, hp_text, onset_rows, path_rows, trial_text

# what the page is called in the report folder and under the sweep run's artifacts
PAGE, DATA, ARTIFACT_DIR = "index.html", "figures.json", "report"


def read_curves(tracker: Any, records: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """run id -> {"alpha": [...], "error_<split>": [...]} of the interpolation runs of `records`, from
    their logged metric histories (reuse records carry them too)."""
    splits = sorted({r["split"] for r in records})
    keys = ["alpha"] + [f"error_{s}" for s in splits]
    if any(r.get("align") not in (None, "", "none") for r in records):  # the path after alignment too
        keys += [f"aligned_error_{s}" for s in splits]
    return tracker.histories(sorted({r["run_id"] for r in records}), keys)


def _table(rows: list[dict[str, Any]], skip: tuple[str, ...] = ("run_id",)) -> str:
    if not rows:
        return "<p>(no records)</p>"
    cols = [c for c in rows[0] if c not in skip]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        if isinstance(v, list):
            return " ".join(cell(x) for x in v)
        return html.escape("" if v is None else str(v))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


class _Page:
    """The page being written: its sections, the PNG files and the data of each figure."""

    def __init__(self, folder: Path):
        self.folder, self.parts, self.data = folder, [], {}

    def figure(self, name: str, title: str, drawn: Any, rows: list[dict[str, Any]], table: bool = True) -> None:
        fig, caption = drawn
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        png = buf.getvalue()
        (self.folder / f"{name}.png").write_bytes(png)
        self.data[name] = rows
        src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        data = json.dumps(rows).replace("</", "<\\/")
        self.parts.append(
            f'<section class="figure" id="{name}"><h3>{html.escape(title)}</h3><figure>'
            f'<img src="{src}" alt="{html.escape(title)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
            + (f"<details><summary>the data of this figure ({len(rows)} rows)</summary>{_table(rows)}</details>"
               if table else "")
            + f'<script type="application/json" class="figure-data" data-figure="{name}">{data}</script></section>')

    def note(self, name: str, text: str) -> None:
        self.parts.append(f'<p class="note" data-figure="{name}">{html.escape(text)}</p>')

    def heading(self, text: str) -> None:
        self.parts.append(f"<h2>{html.escape(text)}</h2>")


def _slug(trial: int | None, *rest: Any) -> str:
    return "-".join(([f"trial{trial}"] if trial is not None else []) + [str(x) for x in rest if x is not None])


def write_report(sweep: str, instability: list[dict[str, Any]], imp: list[dict[str, Any]], out: Path,
                 curves: dict[str, dict[str, list[float]]] | None = None, threshold: float = STABLE_THRESHOLD) -> Path:
    """Write out/<sweep>/index.html (self-contained), the figures as PNG files and figures.json;
    returns the page's path. `curves`: the interpolation runs' error curves (`read_curves`);
    `threshold`: the stability threshold drawn and used for the earliest stable k (an onset
    search's own, else 2%)."""
    folder = Path(out) / sweep
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("*.png"), folder / DATA]:  # figures of an earlier report of this sweep
        old.unlink(missing_ok=True)
    page = _Page(folder)
    used = ["sweep", "trial", "replicate", "level", "density", "rewind", "control", "split", "instability", "trained"]

    page.heading("Instability vs rewind point")
    drawn = charts.instability_chart(instability, threshold)
    if drawn:
        rows = [{**{k: r.get(k) for k in used}, "hp": hp_text(r)} for r in instability
                if r.get("trained") is not False and r.get("level") is None]
        page.figure("instability", "Instability vs rewind point k (dense network)", drawn, rows, table=False)
    else:
        page.note("instability", "No instability records of the dense network: the sweep has no `instability` "
                                 "section (or none finished); IMP levels' instability is drawn further down.")

    page.heading("Error along the path for each k (paper Fig. 2/5)")
    path = path_rows(instability, curves or {}) + path_rows(instability, curves or {}, aligned=True)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in path:
        groups.setdefault((r["trial"], r["level"], r["aligned"]), []).append(r)
    for (trial, level, aligned), rows in groups.items():
        what = "dense network" if level is None else f"IMP level {level}"
        after = f", after alignment ({aligned})" if aligned else ""
        page.figure(_slug(trial, "path", None if level is None else f"level{level}", "aligned" if aligned else None),
                    charts.label(f"Error along the path, {what}{after}", trial_text(rows[0])),
                    charts.path_chart(rows), rows)
    if not groups:
        page.note("path", "No stored error curves of trained pairs: nothing to draw along the path.")

    page.heading("Instability of sparse subnetworks beside the controls (paper Fig. 6/7)")
    controls = control_rows(instability)
    by_trial: dict[tuple, list[dict[str, Any]]] = {}
    for r in controls:
        by_trial.setdefault((r["trial"], r["split"]), []).append(r)
    for (trial, split), rows in by_trial.items():
        page.figure(_slug(trial, "controls", split), charts.label(f"{split} instability vs k at each density",
                    trial_text(rows[0])), charts.control_chart(rows, threshold), rows)
    if not by_trial:
        page.note("controls", "No instability records of IMP subnetworks: the sweep needs `imp` with "
                              "`instability: true` (and `controls`) for this figure.")

    page.heading("Earliest stable and matching k vs density (paper Fig. 9)")
    levelled = [r for r in instability if r.get("level") is not None]
    split = "test" if any(r["split"] == "test" for r in levelled) or not levelled else levelled[0]["split"]
    onset = onset_rows(instability, imp, split, threshold)
    if onset and any(r["stable_rewinds"] or r["matching_rewinds"] for r in onset):
        page.figure("onset", f"Earliest {charts.stable_text(threshold)} and earliest matching k vs density",
                    charts.onset_chart(onset), onset)
    else:
        page.note("onset", "No IMP levels in this sweep: the earliest stable / matching k per density needs `imp` "
                           "(with `instability: true` for the stable k).")

    page.heading("Accuracy vs density")
    drawn = charts.sparsity_chart(imp)
    if drawn:
        rows = [{k: r.get(k) for k in ("sweep", "trial", "replicate", "level", "density", "rewind", "control",
                                       "accuracy")} for r in imp if r.get("accuracy") is not None]
        page.figure("sparsity", "Test accuracy vs density", drawn, rows, table=False)
    else:
        page.note("sparsity", "No IMP records: the sweep has no `imp` section (or no level finished).")

    page.parts.append("<h2>Instability records</h2>" + _table(instability))
    if imp:
        page.parts.append("<h2>IMP records</h2>" + _table(imp))
    (folder / DATA).write_text(json.dumps(page.data, indent=1))
    intro = (f"<p>{len(instability)} instability records (one per interpolation and split), {len(imp)} IMP records "
             f"(one per trained subnetwork), read from the store as <code>lmcsweep query --sweep "
             f"{html.escape(sweep)}</code> gives them. Each figure's data is under it (and in {DATA}).</p>")
    style = ("<style>body{font-family:sans-serif;max-width:1100px}table{border-collapse:collapse;font-size:11px}"
             "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}figcaption{font-size:13px;color:#333}"
             ".note{color:#a40}</style>")
    index = folder / PAGE
    index.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>lmcsweep report: "
                     f"{html.escape(sweep)}</title>{style}</head><body><h1>lmcsweep report: {html.escape(sweep)}</h1>"
                     + intro + "\n".join(page.parts) + "</body></html>")
    return index


def sweep_run(tracker: Any, sweep: str) -> str | None:
    """The run id of `sweep`'s sweep run (in the experiment `sweep_experiments` names), None if none."""
    experiment = tracker.sweep_experiments().get(sweep)
    runs = tracker.runs_of_sweep(sweep, kind="sweep")
    runs = [r for r in runs if r.info.experiment_id == experiment] or runs
    return max(runs, key=lambda r: r.info.start_time).info.run_id if runs else None


def publish(tracker: Any, sweep: str, index: Path) -> str | None:
    """Logs the page, its PNG files and figures.json under report/ on the sweep's run; its run id."""
    run_id = sweep_run(tracker, sweep)
    if run_id is None:
        return None
    folder = index.parent
    for path in [index, folder / DATA, *sorted(folder.glob("*.png"))]:
        tracker.log_artifact(run_id, path, ARTIFACT_DIR)
    return run_id

"""Query records read back from MLflow: one per interpolation and split (instability), one per
trained subnetwork (IMP). The same records feed `lmcsweep query`, `report` and Optuna objectives."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from typing import Any

from ..plan.graph import same_study
from ..tracking import FINISHED, TAG, Tracker, tag
from .matching import add_matching

INSTABILITY_FIELDS = ["sweep", "run_id", "trial", "preset", "dataset", "replicate", "level", "density", "rewind",
                      "control", "split", "instability", "error_endpoints", "error_max", "stable"] + [
                      "trained", "loss_barrier", "error_barrier_linear", "loss_barrier_linear", "disagreement",
                      "l2_distance", "cosine_similarity", "init", "align"] + [
                      "aligned_instability", "aligned_loss_barrier", "aligned_error_barrier_linear",
                      "aligned_loss_barrier_linear", "aligned_l2_distance", "aligned_cosine_similarity"]
# the path metrics (`run.paths`): None on a run finished before them that no sweep run has backfilled
PATH_FIELDS = ["loss_barrier", "error_barrier_linear", "loss_barrier_linear", "disagreement"]
PAIR_FIELDS = ["l2_distance", "cosine_similarity"]
# the same path after permutation alignment (`instability.align`): None on unaligned runs
ALIGNED_FIELDS = ["aligned_instability", "aligned_loss_barrier", "aligned_error_barrier_linear",
                  "aligned_loss_barrier_linear"]
ALIGNED_PAIR_FIELDS = ["aligned_l2_distance", "aligned_cosine_similarity"]


def _int(value: Any) -> int | None:
    return None if value in (None, "", "None") else int(value)


def _float(value: Any) -> float | None:
    return None if value in (None, "", "None") else float(value)


def _hp(run: Any) -> dict[str, Any]:
    out = {}
    for key, value in run.data.params.items():
        if key.startswith("hp."):
            try:
                out[key] = json.loads(value)
            except (ValueError, TypeError):
                out[key] = value
    return out


def _superseded(run: Any, current: dict[str, Any] | None) -> bool:
    """Whether `run` is not of its sweep's current definition (`status.current_jobs`)."""
    now = None if current is None else current.get(tag(run, "sweep"))
    return now is not None and not now.has(tag(run, "job"), tag(run, "study"))


def instability_records(tracker: Tracker, sweep: str | None = None, trial: int | None = None,
                        jobs: dict[str, Any] | None = None, superseded: bool = False) -> list[dict[str, Any]]:
    """One record per FINISHED interpolation run and split (of one Optuna trial when `trial` is set);
    with `jobs` (sweep -> `status.Current`), only those of the sweeps' current definitions, or with
    `superseded` all of them, each marked `superseded` true or false."""
    flt = f"tags.`{TAG}kind` = 'interpolate' and attributes.status = '{FINISHED}'"
    if sweep:
        flt += f" and tags.`{TAG}sweep` = '{sweep}'"
    if trial is not None:
        flt += f" and tags.`{TAG}trial` = '{trial}'"
    records, seen = [], set()
    for run in tracker.search(flt):
        ident = (tag(run, "sweep"), tag(run, "trial"), tag(run, "study"), tag(run, "job"))
        gone = _superseded(run, jobs)
        if (gone and not superseded) or ident in seen:  # (a job computed again, e.g. after a retry: once)
            continue
        seen.add(ident)
        m = run.data.metrics
        for split in ("test", "train"):
            if f"instability_{split}" not in m:
                continue
            records.append({
                "sweep": tag(run, "sweep"), "run_id": run.info.run_id, "trial": _int(tag(run, "trial")),
                "preset": tag(run, "preset"), "dataset": tag(run, "dataset"),
                "replicate": _int(tag(run, "replicate")), "level": _int(tag(run, "level")),
                "density": _float(m.get("density", tag(run, "density", 1.0))),
                "rewind": _int(tag(run, "rewind")), "control": tag(run, "control"), "split": split,
                "instability": m[f"instability_{split}"], "error_endpoints": m[f"error_endpoints_{split}"],
                "error_max": m[f"error_max_{split}"], "stable": bool(m[f"stable_{split}"]),
                "trained": None if "trained" not in m else bool(m["trained"]),
                **{f: m.get(f"{f}_{split}") for f in PATH_FIELDS}, **{f: m.get(f) for f in PAIR_FIELDS},
                "init": tag(run, "init") or "shared", "align": tag(run, "align") or "none",
                **{f: m.get(f"{f}_{split}") for f in ALIGNED_FIELDS}, **{f: m.get(f) for f in ALIGNED_PAIR_FIELDS},
                "pair": tag(run, "pair"), **_hp(run), **({"superseded": gone} if superseded else {}),
            })
    records.sort(key=lambda r: (r["sweep"] or "", r["trial"] or -1, r["replicate"] or 0, r["level"] or -1,
                                r["control"] or "", r["rewind"] or 0, r["pair"] or "", r["split"]))
    return records


IMP_FIELDS = ["sweep", "run_id", "trial", "preset", "dataset", "replicate", "level", "density", "rewind",
              "control", "accuracy", "instability_test", "instability_train", "accuracy_mean", "accuracy_median",
              "dense_accuracy", "dense_std", "dense_median", "matching_std", "matching_02"]


def imp_records(tracker: Tracker, sweep: str | None = None, jobs: dict[str, Any] | None = None,
                superseded: bool = False) -> list[dict[str, Any]]:
    """One record per trained IMP subnetwork: the copy-0 branch of every level and control (the
    network the next level prunes; level 0, the dense network under the full mask, is the reference
    for matching). `density` is measured
    (the branch's `density` metric); instability_<split> is the mean over the pairs of its
    interpolations (None without them); matching fields as in `imp.add_matching`. `jobs` and
    `superseded` as in `instability_records`."""

    base = f"attributes.status = '{FINISHED}'" + (f" and tags.`{TAG}sweep` = '{sweep}'" if sweep else "")
    pairs: dict[tuple, dict[str, list[float]]] = {}
    for run in tracker.search(base + f" and tags.`{TAG}kind` = 'interpolate'"):
        if tag(run, "level") is None or (_superseded(run, jobs) and not superseded):
            continue
        by_split = pairs.setdefault(_imp_key(run), {})
        if run.data.metrics.get("trained") == 0.0:  # a collapsed pair: no instability to average
            continue
        for split in ("test", "train"):
            if f"instability_{split}" in run.data.metrics:
                by_split.setdefault(split, []).append(run.data.metrics[f"instability_{split}"])
    records, seen = [], set()
    for run in tracker.search(base + f" and tags.`{TAG}kind` = 'branch' and tags.`{TAG}copy` = '0'"):
        m = run.data.metrics
        gone = _superseded(run, jobs)
        if tag(run, "level") is None or "final_test_accuracy" not in m or (gone and not superseded):
            continue
        ident = (tag(run, "sweep"), tag(run, "trial"), tag(run, "study"), tag(run, "job"))
        if ident in seen:
            continue
        seen.add(ident)
        inst = pairs.get(_imp_key(run), {})
        records.append({
            "sweep": tag(run, "sweep"), "run_id": run.info.run_id, "trial": _int(tag(run, "trial")),
            "preset": tag(run, "preset"), "dataset": tag(run, "dataset"),
            "replicate": _int(tag(run, "replicate")), "level": _int(tag(run, "level")),
            "density": _float(m.get("density", tag(run, "density", 1.0))),
            "rewind": _int(tag(run, "rewind")), "control": tag(run, "control"),
            "accuracy": m["final_test_accuracy"],
            **{f"instability_{s}": (sum(inst[s]) / len(inst[s]) if inst.get(s) else None) for s in ("test", "train")},
            **_hp(run), **({"superseded": gone} if superseded else {}),
        })
    add_matching(records)
    records = [{**{k: r.get(k) for k in IMP_FIELDS}, **r} for r in records]
    records.sort(key=lambda r: (r["sweep"] or "", -1 if r["trial"] is None else r["trial"], r["replicate"] or 0,
                                r["rewind"] or 0, r["level"] or 0, r["control"] or ""))
    return records


def _imp_key(run: Any) -> tuple:
    return tuple(tag(run, t) for t in ("sweep", "trial", "replicate", "rewind", "level", "control"))


def render(records: list[dict[str, Any]], fmt: str, fields: list[str] | tuple[str, ...] = ()) -> str:
    """Records as a text table, CSV or JSON (`fields`: the CSV header when there are no records)."""
    if fmt == "json":
        return json.dumps(records, indent=2)
    columns: list[str] = [] if records else list(fields)
    for r in records:
        columns += [k for k in r if k not in columns]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return buf.getvalue().rstrip("\n")
    if not records:
        return "(no records)"
    shown = [c for c in columns if c != "run_id"]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4f}"
        return "" if v is None else str(v)

    rows = [[cell(r.get(c)) for c in shown] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(shown)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(shown, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class Current:
    """A sweep's current definition: its jobs' hashes, and for a search its Optuna study's name."""

    jobs: set[str]
    study: str | None = None

    def has(self, job: str | None, study: str | None) -> bool:
        """Whether a run of `job` (tagged with `study`, for a trial's) belongs to it: runs of jobs it
        no longer has, or of the trials of an earlier study of an edited search, do not."""
        return job in self.jobs and same_study(study, self.study)


def log_matching(tracker: Any, sweep: str, jobs: set[str] | None = None) -> int:
    """Logs matching_std / matching_02 (1 or 0) and the group's accuracy_mean on every copy-0
    branch run of an IMP level in `sweep` (of the jobs `jobs` only: the sweep's current
    definition), and IMP's (control none) on its level run. Returns how many runs were written to."""
    records = imp_records(tracker, sweep, None if jobs is None else {sweep: Current(jobs)})
    level_runs = {}
    for run in tracker.runs_of_sweep(sweep, kind="level", status="FINISHED"):
        t = run.data.tags
        key = (t.get("lmcsweep.trial"), t.get("lmcsweep.replicate"), t.get("lmcsweep.rewind"),
               t.get("lmcsweep.level"))
        level_runs[key] = run.info.run_id
    written = 0
    for r in records:
        if r["matching_std"] is None:
            continue
        metrics = [("matching_std", float(r["matching_std"]), 0), ("matching_02", float(r["matching_02"]), 0),
                   ("accuracy_mean", r["accuracy_mean"], 0)]
        tracker.log_metrics(r["run_id"], metrics)
        written += 1
        if r["control"] is None:
            key = (None if r["trial"] is None else str(r["trial"]), str(r["replicate"]), str(r["rewind"]),
                   str(r["level"]))
            if key in level_runs:
                tracker.log_metrics(level_runs[key], metrics)
                written += 1
    return written

"""The data of `lmcsweep report`'s figures, prepared from the stored query records (`query`) and
the stored error curves of the interpolation runs. Plain rows, no drawing: the page shows each
figure's rows beside it, and the tests check them against `lmcsweep query`.

- `path_rows`: error along the path for each rewind point k (the paper's Fig. 2/5);
- `control_rows`: instability vs k of IMP subnetworks beside random pruning and random
  reinitialisation, at each density (Fig. 6/7);
- `onset_rows`: the earliest stable and the earliest matching k at each density (Fig. 9).

Pairs with an end at chance (`trained` false) are left out, as in the instability objective.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from ..interpolate import STABLE_THRESHOLD
from .objective import earliest_stable


def hp_text(r: dict[str, Any]) -> str:
    """A search trial's hyperparameters as legend text ("lr=0.003, warmup=20it"), '' for none."""
    items = [(k[3:], v) for k, v in r.items() if k.startswith("hp.")]
    return ", ".join(f"{k.removeprefix('train.')}={v}" for k, v in sorted(items))


def trial_text(r: dict[str, Any]) -> str:
    """'trial 1 (lr=0.003)' for a record of a search trial, '' otherwise."""
    if r.get("trial") is None:
        return ""
    hp = r["hp"] if "hp" in r else hp_text(r)  # a figure row carries its text already
    return f"trial {r['trial']}" + (f" ({hp})" if hp else "")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _trained(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("trained") is not False]


def path_rows(records: list[dict[str, Any]], curves: dict[str, dict[str, list[float]]],
              aligned: bool = False) -> list[dict[str, Any]]:
    """One row per (trial, level, split, rewind point k) of the dense network and of the IMP
    subnetworks (controls left out): the alphas and the mean and sample std over the pairs of every
    replicate of the error at each alpha. `curves`: run id -> {"alpha": [...], "error_<split>": [...],
    "aligned_error_<split>": [...]} (`Tracker.histories`). With `aligned`, the path after alignment
    (`instability.align`) of the records that have one. A run without a stored curve is left out."""
    groups: dict[tuple, list[tuple[dict[str, Any], list[float], list[float]]]] = defaultdict(list)
    for r in _trained(records):
        if r.get("control") or (aligned and r.get("align") in (None, "", "none")):
            continue
        curve = curves.get(r["run_id"], {})
        alphas, error = curve.get("alpha"), curve.get(f"{'aligned_' if aligned else ''}error_{r['split']}")
        if not alphas or not error or len(alphas) != len(error):
            continue
        groups[(r["trial"], r["level"], r["split"], r["rewind"], tuple(alphas))].append((r, alphas, error))
    rows = []
    for (trial, level, split, k, alphas), members in groups.items():
        columns = list(zip(*(error for _, _, error in members)))
        stats = [mean_std(list(c)) for c in columns]
        first = members[0][0]
        rows.append({"trial": trial, "hp": hp_text(first), "level": level,
                     "density": statistics.fmean(m[0]["density"] for m in members), "split": split, "rewind": k,
                     "alpha": list(alphas), "error_mean": [m for m, _ in stats], "error_std": [s for _, s in stats],
                     "pairs": len(members), "replicates": len({m[0]["replicate"] for m in members}),
                     "init": first.get("init") or "shared", "aligned": first.get("align") if aligned else None})
    return sorted(rows, key=lambda r: (_order(r["trial"]), _order(r["level"]), r["split"], r["rewind"]))


def control_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (trial, split, IMP level, control, k): the mean and sample std over the pairs of
    every replicate of the instability of IMP subnetworks (control "imp") and of their controls."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in _trained(records):
        if r.get("level") is not None:
            groups[(r["trial"], r["split"], r["level"], r.get("control") or "imp", r["rewind"])].append(r)
    rows = []
    for (trial, split, level, control, k), members in groups.items():
        mean, std = mean_std([m["instability"] for m in members])
        rows.append({"trial": trial, "hp": hp_text(members[0]), "split": split, "level": level,
                     "density": statistics.fmean(m["density"] for m in members), "control": control,
                     "rewind": k, "instability_mean": mean, "instability_std": std, "pairs": len(members),
                     "replicates": len({m["replicate"] for m in members})})
    return sorted(rows, key=lambda r: (_order(r["trial"]), r["split"], r["level"], _CONTROLS.index(r["control"]),
                                       r["rewind"]))


def earliest_from(by_k: dict[int, bool]) -> int | None:
    """The first k from which on (at k and every later k measured) the property holds; None if none."""
    failing = [k for k, ok in by_k.items() if not ok]
    holding = [k for k in by_k if not any(f >= k for f in failing)]
    return min(holding) if holding else None


def onset_rows(instability: list[dict[str, Any]], imp: list[dict[str, Any]],
               split: str = "test", threshold: float = STABLE_THRESHOLD) -> list[dict[str, Any]]:
    """One row per (trial, control, IMP level): its density, the rewind points measured, the earliest
    stable k (mean instability over the pairs of every replicate on `split` below `threshold`, 2%
    unless an onset search sets its own, at k and every later k: `objective.earliest_stable`) and the earliest matching k (`matching_std`: the mean test
    accuracy over replicates within one std of the dense network's, level 0 at the same k, at k and
    every later k). None: not in the grid; a level without instability records (or without a dense
    reference) has None and an empty list of the rewind points measured for it."""
    by_k: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    density: dict[tuple, list[float]] = defaultdict(list)
    hp: dict[tuple, str] = {}
    for r in _trained(instability):
        if r.get("level") is None or r["split"] != split:
            continue
        key = (r["trial"], r.get("control") or "imp", r["level"])
        by_k[key][r["rewind"]].append(r["instability"])
        density[key].append(r["density"])
        hp[key] = hp_text(r)
    matching: dict[tuple, dict[int, bool]] = defaultdict(dict)
    replicates: dict[tuple, set] = defaultdict(set)
    for r in imp:
        key = (r["trial"], r.get("control") or "imp", r["level"])
        density[key].append(r["density"])
        replicates[key].add(r["replicate"])
        hp[key] = hp_text(r)
        if r.get("matching_std") is not None:
            matching[key][r["rewind"]] = bool(r["matching_std"])
    rows = []
    for key in set(by_k) | set(matching):
        trial, control, level = key
        stable = earliest_stable(by_k[key], threshold) if by_k.get(key) else None
        rows.append({"trial": trial, "hp": hp[key], "control": control, "level": level,
                     "density": statistics.fmean(density[key]), "split": split, "threshold": threshold,
                     "stable_rewinds": sorted(by_k.get(key, {})), "matching_rewinds": sorted(matching.get(key, {})),
                     "earliest_stable": None if stable is None or math.isinf(stable) else int(stable),
                     "earliest_matching": earliest_from(matching[key]) if matching.get(key) else None,
                     "replicates": len(replicates[key])})
    return sorted(rows, key=lambda r: (_order(r["trial"]), _CONTROLS.index(r["control"]), r["level"]))


_CONTROLS = ["imp", "random_prune", "random_reinit"]


def _order(value: int | None) -> int:
    return -1 if value is None else value

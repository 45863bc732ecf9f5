"""Matching (a property of a group of replicates): computed when IMP records are read
(`query.imp_records`) and, at the end of a sweep run, logged on the copy-0 branch runs and on the
level runs (`query.log_matching`)."""

from __future__ import annotations

import statistics
from typing import Any


def add_matching(records: list[dict[str, Any]]) -> None:
    """Sets, in place, on IMP records (one per trained subnetwork, replicate by replicate):

    - ``accuracy_mean`` / ``accuracy_median``: over the replicates of its (sweep, trial, rewind,
      level, control) group;
    - ``dense_accuracy`` / ``dense_std`` / ``dense_median``: mean, sample std (0 with one replicate)
      and median over replicates of the dense reference, level 0 of the same (sweep, trial, rewind);
    - ``matching_std``: accuracy_mean >= dense_accuracy - dense_std (the paper's "within one std",
      on its mean ± std figures);
    - ``matching_02``: accuracy_median >= dense_median - 0.002 (the sparsity sweep's 0.2 points; its
      figures show medians).

    Without a level-0 record for the group's rewind point the reference and matching fields are None.
    """
    groups: dict[tuple, list[float]] = {}
    for r in records:
        groups.setdefault(_group(r), []).append(r["accuracy"])
    for r in records:
        ref = groups.get(_group({**r, "level": 0, "control": None}))
        mean, median = statistics.fmean(groups[_group(r)]), statistics.median(groups[_group(r)])
        r.update(accuracy_mean=mean, accuracy_median=median)
        if not ref:
            r.update(dense_accuracy=None, dense_std=None, dense_median=None, matching_std=None, matching_02=None)
            continue
        dense, dense_median = statistics.fmean(ref), statistics.median(ref)
        std = statistics.stdev(ref) if len(ref) > 1 else 0.0
        r.update(dense_accuracy=dense, dense_std=std, dense_median=dense_median,
                 matching_std=bool(mean >= dense - std - 1e-12),
                 matching_02=bool(median >= dense_median - 0.002 - 1e-12))


def _group(r: dict[str, Any]) -> tuple:
    return (r["sweep"], r["trial"], r["rewind"], r["level"], r["control"])

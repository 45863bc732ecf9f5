"""The figures of `lmcsweep report`, drawn from the rows of `figures` (and, for the first two, from
the query records). Each returns a matplotlib figure whose caption (axes, legend, error bars and
the number of pairs and replicates behind them) is written inside the figure, under the axes; the
same text is the caption on the page.
"""

from __future__ import annotations

import statistics
import textwrap
from collections import defaultdict
from typing import Any

from ..interpolate import STABLE_THRESHOLD
from ..plots import pyplot
from .figures import mean_std, trial_text

CONTROL_NAMES = {"imp": "IMP", "random_prune": "random pruning", "random_reinit": "random reinit"}
CONTROL_COLORS = {"imp": "C0", "random_prune": "C3", "random_reinit": "C2"}


def count_text(pairs: list[int], replicates: list[int], what: str = "pairs of copies") -> str:
    """'4 pairs of copies from 2 replicates' (or a range of each when the lines differ)."""
    def span(values: list[int]) -> str:
        lo, hi = min(values), max(values)
        return str(lo) if lo == hi else f"{lo}–{hi}"

    return f"{span(pairs)} {what} from {span(replicates)} replicate" + ("" if max(replicates) == 1 else "s")


def _finish(plt, fig, axes, caption: str, legend: bool = True):
    """Caption under the axes (wrapped to the figure's width) and a compact legend on each axis."""
    width = fig.get_size_inches()[0]
    lines = textwrap.wrap(caption, width=int(width * 15))
    extra = 0.14 * len(lines) + 0.1
    fig.set_size_inches(width, fig.get_size_inches()[1] + extra)
    for ax in axes:
        if legend and ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout(rect=(0, extra / fig.get_size_inches()[1], 1, 1))
    fig.text(0.01, 0.01, "\n".join(lines), fontsize=7, va="bottom", ha="left")
    plt.close(fig)
    return fig


def _k_axis(ax, ks: list[int], axis: str = "x") -> None:
    """A symlog axis of rewind points (k = 0 shown), ticked at the points measured."""
    linthresh = max(1, min([k for k in ks if k > 0], default=1))
    if axis == "x":
        ax.set_xscale("symlog", linthresh=linthresh)
        ax.set_xlim(-0.3 * linthresh, max(ks) * 1.5 + 1)
        ax.set_xticks(ks, [str(k) for k in ks])
    else:
        ax.set_yscale("symlog", linthresh=linthresh)
        ax.set_yticks(ks, [str(k) for k in ks])


def _density_axis(ax, percents: list[float]) -> None:
    """A log axis of weights remaining (%), densest on the left, ticked at the densities measured."""
    ticks = sorted({round(p, 1) for p in percents}, reverse=True)
    ax.set_xscale("log")
    ax.set_xticks(ticks, [f"{p:g}" for p in ticks])
    ax.minorticks_off()
    ax.invert_xaxis()
    ax.set_xlabel("weights remaining (%), log scale")


def label(*parts: str) -> str:
    return ", ".join(p for p in parts if p)


def threshold_text(threshold: float) -> str:
    """Which stability threshold: 'the 2% stability threshold', or an onset search's own."""
    if threshold == STABLE_THRESHOLD:
        return "the 2% stability threshold"
    return f"the onset search's stability threshold, {100 * threshold:g}%"


def stable_text(threshold: float) -> str:
    """'stable (instability < 2%)': the stability rule in a legend or title."""
    return f"stable (instability < {100 * threshold:g}%)"


def instability_chart(records: list[dict[str, Any]], threshold: float = STABLE_THRESHOLD):
    """Instability vs k of the dense network (IMP levels: `control_chart`), one line per split and
    trial; None without records of it. `threshold`: the dashed line (an onset search's)."""
    groups: dict[tuple, dict[int, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("trained") is not False and r.get("level") is None:
            groups[(r["split"], r.get("trial"))][r["rewind"]].append(r)
    if not groups:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    pairs, reps = [], []
    for (split, _), by_k in sorted(groups.items(), key=lambda kv: str(kv[0])):
        ks = sorted(by_k)
        stats = [mean_std([100 * r["instability"] for r in by_k[k]]) for k in ks]
        pairs += [len(by_k[k]) for k in ks]
        reps += [len({r["replicate"] for r in by_k[k]}) for k in ks]
        first = by_k[ks[0]][0]
        ax.errorbar(ks, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3,
                    label=label(split, trial_text(first)))
    ax.axhline(100 * threshold, color="grey", ls="--", lw=1)
    _k_axis(ax, sorted({k for g in groups.values() for k in g}))
    ax.set_xlabel("rewind iteration k (the copies train from iteration k to T)")
    ax.set_ylabel("instability (%)")
    caption = (f"Instability (error barrier: max error along the path minus the mean of the two ends) of two "
               f"copies of the dense network trained from iteration k with different SGD noise. Points: mean over "
               f"{count_text(pairs, reps)} at each k; error bars: ±1 sample std over them. Dashed: "
               f"{threshold_text(threshold)}. One line per split (test/train) and search trial (its hyperparameters in "
               f"brackets).")
    return _finish(plt, fig, [ax], caption), caption


def sparsity_chart(records: list[dict[str, Any]]):
    """Test accuracy vs density (median over replicates, min–max bars); None without records."""
    groups: dict[tuple, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r.get("accuracy") is not None and r.get("density") is not None:
            groups[(r.get("control") or "imp", r.get("rewind"), r.get("trial"))][round(r["density"], 4)].append(r)
    if not groups:
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    reps = []
    rewinds = sorted({k for _, k, _ in groups}, key=lambda k: -1 if k is None else k)
    for (control, rewind, _), by_d in sorted(groups.items(), key=lambda kv: str(kv[0])):
        ds = sorted(by_d, reverse=True)
        values = [[100 * r["accuracy"] for r in by_d[d]] for d in ds]
        med = [statistics.median(v) for v in values]
        reps += [len(v) for v in values]
        ax.errorbar([100 * d for d in ds], med, yerr=[[m - min(v) for m, v in zip(med, values)],
                                                      [max(v) - m for m, v in zip(med, values)]],
                    marker="o", capsize=3, color=CONTROL_COLORS.get(control),
                    ls=["-", "--", ":"][rewinds.index(rewind) % 3],
                    label=label(CONTROL_NAMES[control], f"k={rewind}", trial_text(by_d[ds[0]][0])))
    _density_axis(ax, [100 * d for g in groups.values() for d in g])
    ax.set_ylabel("test accuracy (%)")
    caption = (f"Final test accuracy of IMP subnetworks and their controls (random pruning: a random mask of the "
               f"same density; random reinit: the IMP mask on fresh weights) at each density, rewound to k. "
               f"Points: median over {count_text(reps, reps, 'networks')}; error bars: min–max over them.")
    return _finish(plt, fig, [ax], caption), caption


def path_chart(rows: list[dict[str, Any]]):
    """Error vs alpha, one curve per k with a ±1 std band, a panel per split, for the rows of one
    (trial, level)."""
    plt = pyplot()
    splits = sorted({r["split"] for r in rows}, key=lambda s: (s != "test", s))
    fig, axes = plt.subplots(1, len(splits), figsize=(4.2 * len(splits) + 0.6, 3.6), squeeze=False)
    ks = sorted({r["rewind"] for r in rows})
    cmap = plt.get_cmap("viridis")
    for ax, split in zip(axes[0], splits):
        for r in sorted((r for r in rows if r["split"] == split), key=lambda r: r["rewind"]):
            color = cmap(ks.index(r["rewind"]) / max(1, len(ks) - 1) * 0.9)
            mean = [100 * v for v in r["error_mean"]]
            std = [100 * v for v in r["error_std"]]
            ax.plot(r["alpha"], mean, marker="o", ms=3, color=color, label=f"k={r['rewind']} (n={r['pairs']})")
            ax.fill_between(r["alpha"], [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                            color=color, alpha=0.2, lw=0)
        ax.set_title(f"{split} set", fontsize=9)
        ax.set_xlabel("alpha (0: copy A, 1: copy B)")
        ax.set_ylabel(f"{split} error (%)")
    first = rows[0]
    what = "the dense network" if first["level"] is None else \
        f"IMP level {first['level']} ({100 * first['density']:.1f}% of weights)"
    fig.suptitle(label(what, trial_text(first)), fontsize=9)
    pair = (f"two networks of {what} trained from different initialisations (no shared k)"
            if first.get("init") == "different" else
            f"two copies of {what} trained from iteration k with different SGD noise")
    if first.get("aligned"):
        pair += f", B's hidden units permuted to match A's first (align: {first['aligned']})"
    caption = (f"Error of the network (1 − alpha)·A + alpha·B on the straight path between {pair}, "
               f"one curve per rewind point k (colour). Curve: "
               f"mean over {count_text([r['pairs'] for r in rows], [r['replicates'] for r in rows])} at each "
               f"alpha; band: ±1 sample std over them; n in the legend: pairs behind each curve.")
    return _finish(plt, fig, list(axes[0]), caption), caption


def control_chart(rows: list[dict[str, Any]], threshold: float = STABLE_THRESHOLD):
    """Instability vs k at each IMP level (a panel each), IMP beside its controls, for one (trial, split)."""
    plt = pyplot()
    levels = sorted({r["level"] for r in rows})
    cols = min(4, len(levels))
    nrows = (len(levels) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(3.3 * cols + 0.5, 2.9 * nrows + 0.3), squeeze=False)
    ks = sorted({r["rewind"] for r in rows})
    flat = [ax for line in axes for ax in line]
    for ax, level in zip(flat, levels):
        at = [r for r in rows if r["level"] == level]
        for control in CONTROL_NAMES:
            line = sorted((r for r in at if r["control"] == control), key=lambda r: r["rewind"])
            if line:
                ax.errorbar([r["rewind"] for r in line], [100 * r["instability_mean"] for r in line],
                            yerr=[100 * r["instability_std"] for r in line], marker="o", capsize=3,
                            color=CONTROL_COLORS[control], label=CONTROL_NAMES[control])
        ax.axhline(100 * threshold, color="grey", ls="--", lw=1)
        _k_axis(ax, ks)
        ax.set_title(f"level {level}: {100 * statistics.fmean(r['density'] for r in at):.1f}% of weights", fontsize=8)
        ax.set_xlabel("rewind iteration k")
        ax.set_ylabel("instability (%)")
    for ax in flat[len(levels):]:
        ax.set_visible(False)
    first = rows[0]
    fig.suptitle(label(f"{first['split']} instability of sparse subnetworks", trial_text(first)), fontsize=9)
    present = sorted({r["control"] for r in rows}, key=list(CONTROL_NAMES).index)
    missing = [CONTROL_NAMES[c] for c in CONTROL_NAMES if c not in present]
    count = count_text([r["pairs"] for r in rows], [r["replicates"] for r in rows])
    caption = (f"Instability vs rewind point k of IMP subnetworks (blue) beside random pruning (red: a random mask "
               f"of the same density) and random reinitialisation (green: the IMP mask on fresh weights), one panel "
               f"per density. Points: mean over {count}"
               f"; error bars: ±1 sample std over them. Dashed: {threshold_text(threshold)}."
               + (f" Not in this sweep: {', '.join(missing)}." if missing else ""))
    return _finish(plt, fig, flat[:len(levels)], caption), caption


def onset_chart(rows: list[dict[str, Any]]):
    """Earliest stable and earliest matching k vs density, a line per control (and trial); stable
    below the rows' `threshold` (`figures.onset_rows`)."""
    threshold = rows[0]["threshold"]
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ks = sorted({k for r in rows for k in r["stable_rewinds"] + r["matching_rewinds"]})
    none_at = (max(ks) * 3 + 1) if ks else 1
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["trial"], r["control"])].append(r)
    for (_, control), line in sorted(groups.items(), key=lambda kv: str(kv[0])):
        line = sorted(line, key=lambda r: -r["density"])
        for what, style in (("stable", "-"), ("matching", "--")):
            field, marker = f"earliest_{what}", "o" if what == "stable" else "s"
            measured = [r for r in line if r[f"{what}_rewinds"]]
            if not measured:
                continue
            xs = [100 * r["density"] for r in measured]
            ys = [none_at if r[field] is None else r[field] for r in measured]
            name = stable_text(threshold) if what == "stable" else what
            ax.plot(xs, ys, ls=style, marker=marker, color=CONTROL_COLORS[control], mfc="none" if what == "matching"
                    else None, label=label(f"{CONTROL_NAMES[control]}: {name}", trial_text(line[0])))
    _density_axis(ax, [100 * r["density"] for r in rows])
    _k_axis(ax, ks + [none_at], axis="y")
    ax.set_yticks(ks + [none_at], [str(k) for k in ks] + ["none"])
    ax.set_ylabel("earliest rewind iteration k")
    split = rows[0]["split"]
    reps = [r["replicates"] for r in rows if r["replicates"]] or [0]
    caption = (f"The earliest rewind point k from which on (at k and every later k measured) the subnetwork is "
               f"stable (solid, filled: mean {split} instability over the pairs of copies of every replicate "
               f"below {threshold_text(threshold)}) and matching (dashed, open: mean test "
               f"accuracy over {count_text(reps, reps, 'networks')} within one std of the dense network's at "
               f"the same k), for IMP and its controls at each density. 'none': not reached at any k measured "
               f"({', '.join(map(str, ks))}).")
    return _finish(plt, fig, [ax], caption), caption

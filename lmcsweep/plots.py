"""Figures logged with the runs, and matplotlib for the others (`sweep.report`): the one module that
imports it, headless. A run's figure takes plain data and returns a closed figure, so that it can
be drawn in another process (`Tracker.log_plot`)."""

from __future__ import annotations

from typing import Any


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def error_curve(result: dict[str, Any], title: str):
    """Error (%) along the linear path between two trained networks, one line per split, with each
    split's instability in its label. `result` is an interpolation's curve.json."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for split in ("test", "train"):
        if split in result:
            r = result[split]
            ax.plot(result["alphas"], [100 * e for e in r["error"]], marker="o", ms=3,
                    label=f"{split} (instability {100 * r['instability']:.2f}%)")
    ax.set_xlabel("alpha")
    ax.set_ylabel("error (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig

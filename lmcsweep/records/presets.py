"""The Table-1 presets (`config.presets`) as rows for `lmcsweep presets`: the preset's settings
joined with the parameter count of the network it builds (counted, not copied from the paper)."""

from __future__ import annotations

import json
from typing import Any

from ..config import PRESETS, Preset
from ..models import build_model, count_parameters

SHAPES = {"mnist": ((1, 28, 28), 10), "cifar10": ((3, 32, 32), 10), "imagenet": ((3, 224, 224), 1000)}


def _schedule(p: Preset) -> str:
    if p.schedule == "step":
        return f"÷{round(1 / p.gamma)} at " + ", ".join(str(m) for m in p.milestones)
    if p.schedule == "linear":
        return f"linear to {p.final_lr:g}"
    return "constant"


def preset_rows() -> list[dict[str, Any]]:
    rows = []
    for p in PRESETS.values():
        shape, classes = SHAPES[p.dataset]
        params = count_parameters(build_model(p.model, classes, shape, 0))
        rows.append({
            "preset": p.name, "dataset": p.dataset, "model": p.model, "parameters": params,
            "optimizer": p.optimizer + (f" (momentum {p.momentum:g})" if p.momentum else ""), "lr": p.lr,
            "weight_decay": p.weight_decay, "schedule": _schedule(p), "warmup": str(p.warmup),
            "iterations": str(p.iterations), "batch_size": p.batch_size, "augmentation": p.augmentation,
            "imp": f"{p.imp_style}, density {100 * p.imp_density:.1f}%"
                   + (f", exempt {','.join(p.imp_exempt)}" if p.imp_exempt else ""),
            "paper_accuracy": p.paper_accuracy, "paper_parameters": p.paper_params,
        })
    return rows


def render_rows(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    cols = ["preset", "dataset", "model", "parameters", "optimizer", "lr", "schedule", "warmup", "iterations",
            "batch_size", "imp", "paper_accuracy"]
    cells = [[f"{r[c]:,}" if c == "parameters" else str(r[c]) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    out = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    out += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(out)

"""Tickets you can take away: a subnetwork found by IMP (its mask and its weights rewound to
iteration k, the pruned ones zero) with what it takes to build it again, as one file of plain
tensors and dicts (`torch.save`), and the call that loads it into a working PyTorch module.

    import lmcsweep.export
    net = lmcsweep.export.load_ticket("ticket.pt")   # torch.nn.Module, the mask applied
    info = lmcsweep.export.read_ticket("ticket.pt")  # the dict: mask, weights, model, level, ...

The module's masked weights are held at zero by `torch.nn.utils.prune` (their gradients are masked
too), so training it from k keeps the subnetwork; `keep_masked=False` gives the plain module with
the masked weights loaded (zeros that training may move). No file I/O beyond the ticket itself, no
tracking.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .models import build_model

FORMAT = "lmcsweep-ticket/1"


def make_ticket(model: dict[str, Any], weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor],
                info: dict[str, Any]) -> dict[str, Any]:
    """The ticket's content: `model` (name, options, input_shape, classes), the weights multiplied by
    `masks` (bool, by parameter name), and `info` (level, density, rewind, job hashes, seeds, ...)."""
    masks = {n: m.detach().to("cpu", torch.bool).clone() for n, m in masks.items()}
    state = {n: t.detach().to("cpu").clone() for n, t in weights.items()}
    for name, mask in masks.items():
        state[name] = state[name] * mask.to(state[name].dtype)
    return {"format": FORMAT, "model": dict(model), "state_dict": state, "mask": masks, **info}


def read_ticket(path: str | Path) -> dict[str, Any]:
    """The ticket file's dict (plain tensors and Python values: loaded with weights_only)."""
    data = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{path}: not an lmcsweep ticket (expected format {FORMAT!r})")
    return data


def build_ticket(ticket: dict[str, Any], device: str | torch.device = "cpu",
                 keep_masked: bool = True) -> torch.nn.Module:
    """The module of a ticket's dict (`read_ticket`), in eval mode."""
    spec = ticket["model"]
    model = build_model(spec["name"], int(spec["classes"]), tuple(spec["input_shape"]), 0, **spec["options"])
    model.load_state_dict(ticket["state_dict"])
    if keep_masked:
        from torch.nn.utils import prune as torch_prune

        for name, mask in ticket["mask"].items():
            module_name, _, param = name.rpartition(".")
            torch_prune.custom_from_mask(model.get_submodule(module_name), param, mask)
    return model.to(device).eval()


def load_ticket(path: str | Path, device: str | torch.device = "cpu", keep_masked: bool = True) -> torch.nn.Module:
    """The subnetwork of a ticket file as a PyTorch module at its rewind point, its mask applied."""
    return build_ticket(read_ticket(path), device, keep_masked)

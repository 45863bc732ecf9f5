"""Permutation alignment of two networks before they are interpolated (`instability.align`).

`align(model, state_a, state_b, method, ...)` returns network B with its hidden units permuted to
match network A's (`match.weight_matching` or `match.activation_matching`, over the permutation
groups of `spec.permutation_spec`), after checking on a batch that the permuted B computes what B
did: otherwise `AlignmentError`, naming the network family and the pair, so a wrong spec never
gives a silently wrong barrier. Torch only: no tracking, no files.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch

from .match import activation_matching, output_difference, permute, weight_matching
from .spec import AlignmentError, PermSpec, check_spec, permutation_spec

METHODS = ("weights", "activations")


def checked(spec: PermSpec, model: torch.nn.Module, state: dict[str, torch.Tensor],
            permuted: dict[str, torch.Tensor], x: torch.Tensor, label: str = "") -> tuple[float, float]:
    """The output difference of `permuted` against `state` on `x` and its tolerance; `AlignmentError`
    if it is above the tolerance."""
    diff, tol = output_difference(model, state, permuted, x)
    if not diff <= tol:  # (NaN fails too)
        raise AlignmentError(f"aligned network{' ' + label if label else ''} computes something else than before "
                             f"its permutation: outputs differ by up to {diff:.3g} (tolerance {tol:.3g}); the "
                             f"permutation spec of {spec.name} does not preserve the function")
    return diff, tol


def align(model: torch.nn.Module, state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor],
          method: str, batches: list[torch.Tensor], seed: int = 0, label: str = "",
          spec: PermSpec | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """B's state permuted to match A (`method`: weights | activations; `batches`: input batches for
    activation matching, the first also checks the result; `seed`: weight matching's order of
    visits), and what it did: rounds (weight matching), the fraction of units that moved, the output
    difference the check measured and its tolerance. `spec` defaults to the model's own."""
    if method not in METHODS:
        raise ValueError(f"alignment method must be one of {METHODS}, got {method!r}")
    if not batches:
        raise ValueError("alignment needs at least one batch (to check the aligned network)")
    spec = spec or permutation_spec(model)
    sizes = check_spec(spec, state_b)
    info: dict[str, Any] = {"method": method}
    if method == "weights":
        params = {n for n, _ in model.named_parameters()}
        perms, info["rounds"] = weight_matching(spec, state_a, state_b, sizes, params, seed)
    else:
        model_a, model_b = copy.deepcopy(model), copy.deepcopy(model)
        model_a.load_state_dict(state_a)
        model_b.load_state_dict(state_b)
        perms = activation_matching(spec, model_a, model_b, batches, sizes)
    aligned = permute(spec, state_b, perms)
    moved = sum(int((p != torch.arange(len(p))).sum()) for p in perms.values())
    info["moved"] = moved / max(1, sum(sizes.values()))
    info["check_difference"], info["check_tolerance"] = checked(spec, model, state_b, aligned, batches[0], label)
    return aligned, info


__all__ = ["METHODS", "AlignmentError", "PermSpec", "align", "checked", "permutation_spec", "permute"]

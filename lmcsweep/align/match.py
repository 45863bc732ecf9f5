"""Finding the permutation of network B's hidden units that best matches network A's, two ways
(Ainsworth et al., 2023, Git Re-Basin), and applying it.

- Weight matching: maximise sum over layers of <W_A, P W_B P'^T>, one permutation at a time by a
  linear assignment with the others held fixed, the permutations visited in a seeded random order,
  until a full round improves none.
- Activation matching: on a few training batches, correlate every unit of A with every unit of B at
  the points the spec names (post-ReLU outputs; for a residual stream every block's output of the
  stage at once) and assign each of A's units the most correlated of B's (linear assignment on the
  correlation matrix).

A permutation `perm` of n units is a LongTensor: unit i of the aligned B is unit perm[i] of B.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from scipy.optimize import linear_sum_assignment

from .spec import PermSpec

State = dict[str, torch.Tensor]


def permute(spec: PermSpec, state: State, perms: dict[str, torch.Tensor]) -> State:
    """`state` with every axis the spec names reordered by its permutation (other tensors as they are)."""
    out = {}
    for key, tensor in state.items():
        for axis, perm in enumerate(spec.axes.get(key, ())):
            if perm is not None:
                tensor = tensor.index_select(axis, perms[perm].to(tensor.device))
        out[key] = tensor
    return out


def identity(sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    return {p: torch.arange(n) for p, n in sizes.items()}


def _assign(score: torch.Tensor) -> torch.Tensor:
    """The permutation maximising sum_i score[i, perm[i]]."""
    _, cols = linear_sum_assignment(score.cpu().numpy(), maximize=True)
    return torch.as_tensor(cols, dtype=torch.long)


def weight_matching(spec: PermSpec, state_a: State, state_b: State, sizes: dict[str, int], params: set[str],
                    seed: int, max_rounds: int = 100) -> tuple[dict[str, torch.Tensor], int]:
    """Permutations of B matching A's weights (only the tensors in `params`: learned parameters, not
    BatchNorm statistics), and how many rounds it took."""
    groups = {p: [(k, a) for k, a in g if k in params] for p, g in spec.groups().items()}
    names = sorted(groups)
    perms = identity(sizes)
    a64 = {k: state_a[k].detach().double().cpu() for k in params}
    b64 = {k: state_b[k].detach().double().cpu() for k in params}
    gen = torch.Generator().manual_seed(seed)
    rounds = 0
    while rounds < max_rounds:
        rounds += 1
        improved = False
        for i in torch.randperm(len(names), generator=gen).tolist():
            p, n = names[i], sizes[names[i]]
            score = torch.zeros(n, n, dtype=torch.float64)
            for key, axis in groups[p]:
                wb = b64[key]
                for other, q in enumerate(spec.axes[key]):
                    if q is not None and other != axis:
                        wb = wb.index_select(other, perms[q])
                score += a64[key].movedim(axis, 0).reshape(n, -1) @ wb.movedim(axis, 0).reshape(n, -1).T
            new = _assign(score)
            rows = torch.arange(n)
            gain = float(score[rows, new].sum() - score[rows, perms[p]].sum())
            if gain > 1e-12 * max(1.0, float(score[rows, perms[p]].sum().abs())):
                perms[p], improved = new, True
        if not improved:
            break
    return perms, rounds


def _units(out: torch.Tensor, relu: bool) -> torch.Tensor:
    """A module's output as rows of units: [examples (x positions), channels]."""
    out = torch.relu(out) if relu else out
    out = out.detach().double()
    return out.movedim(1, -1).reshape(-1, out.shape[1]) if out.dim() > 2 else out


@torch.no_grad()
def activation_matching(spec: PermSpec, model_a: torch.nn.Module, model_b: torch.nn.Module,
                        batches: Iterable[torch.Tensor], sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Permutations of B maximising the correlation of its units with A's on `batches` (inputs only),
    both networks in eval mode (their own BatchNorm statistics)."""
    seen: dict[str, list[list[torch.Tensor]]] = {}
    hooks = []
    for which, model in enumerate((model_a, model_b)):
        model.eval()
        modules = dict(model.named_modules())
        for perm, points in spec.points.items():
            for name, relu in points:
                def hook(_m, _i, out, perm=perm, relu=relu, which=which):
                    seen.setdefault(perm, [[], []])[which].append(_units(out, relu))
                hooks.append(modules[name].register_forward_hook(hook))
    stats: dict[str, list] = {}
    try:
        for x in batches:
            seen.clear()
            model_a(x)
            model_b(x)
            for perm, (ua, ub) in seen.items():
                a, b = torch.cat(ua), torch.cat(ub)
                s = stats.setdefault(perm, [0, 0.0, 0.0, 0.0, 0.0, 0.0])
                s[0] += len(a)
                s[1], s[2] = s[1] + a.sum(0), s[2] + b.sum(0)
                s[3], s[4], s[5] = s[3] + (a * a).sum(0), s[4] + (b * b).sum(0), s[5] + a.T @ b
    finally:
        for h in hooks:
            h.remove()
    perms = identity(sizes)
    for perm, (n, sa, sb, saa, sbb, sab) in stats.items():
        mean_a, mean_b = sa / n, sb / n
        std_a = (saa / n - mean_a ** 2).clamp_min(0).sqrt()
        std_b = (sbb / n - mean_b ** 2).clamp_min(0).sqrt()
        cov = sab / n - torch.outer(mean_a, mean_b)
        perms[perm] = _assign(cov / (torch.outer(std_a, std_b) + 1e-12))
    return perms


@torch.no_grad()
def output_difference(model: torch.nn.Module, state: State, permuted: State, x: torch.Tensor) -> tuple[float, float]:
    """The largest difference between the outputs on `x` of the network before and after its
    permutation (eval mode), and the tolerance it is held to: 1e-4 of the larger of 1 and the largest
    output, room for the different order of float sums, far below what a wrong permutation does."""
    model.eval()
    model.load_state_dict(state)
    ref = model(x).float()
    model.load_state_dict(permuted)
    out = model(x).float()
    return float((out - ref).abs().max()), 1e-4 * max(1.0, float(ref.abs().max()))

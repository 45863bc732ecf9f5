"""Linear interpolation between two trained networks and the error barrier (instability).

Instability of a pair = max over alpha of error(alpha * W1 + (1 - alpha) * W2) minus the mean of
the two end errors (Frankle et al., 2020, Algorithm 1). BatchNorm running statistics are either
interpolated with the weights (`bn="interpolate"`), re-estimated on training batches at every
alpha (`bn="reset"`), or every hidden unit's statistics repaired to the blend of the end
networks' (`bn="repair"`, `repair`). No file I/O, no tracking.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

from .repair import blend, repair, unit_stats
from .train import evaluate, evaluate_group

Batches = Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor]]]
STABLE_THRESHOLD = 0.02


def alphas(n: int) -> list[float]:
    """`n` evenly spaced points in [0, 1], endpoints included."""
    return [i / (n - 1) for i in range(n)]


def interpolate_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """alpha * a + (1 - alpha) * b for floating tensors; integer buffers (BatchNorm's
    num_batches_tracked) are taken from `a`. alpha = 1 gives `a` exactly, alpha = 0 gives `b`."""
    out = {}
    for name, ta in a.items():
        tb = b[name]
        if not ta.is_floating_point():
            out[name] = ta.clone()
        elif alpha == 1.0:
            out[name] = ta.clone()
        elif alpha == 0.0:
            out[name] = tb.clone()
        else:
            out[name] = alpha * ta + (1.0 - alpha) * tb
    return out


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def reset_batchnorm(model: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Re-estimate BatchNorm running statistics as the plain average over `batches`."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average = plain mean over the batches
    model.train()
    for x, _ in batches:
        model(x)
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    model.eval()


def error_curve(
    model: torch.nn.Module,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    points: list[float],
    eval_batches: Batches,
    bn: str = "interpolate",
    bn_batches: Batches | None = None,
) -> list[float]:
    """Error of the interpolated network at each alpha of `points` (alpha weights `state_a`)."""
    curve = []
    for alpha in points:
        model.load_state_dict(interpolate_state(state_a, state_b, alpha))
        if bn == "reset" and has_batchnorm(model):
            if bn_batches is None:
                raise ValueError("bn='reset' needs training batches")
            reset_batchnorm(model, bn_batches())
        curve.append(evaluate(model, eval_batches())["error"])
    return curve


def barrier(curve: list[float]) -> dict[str, float | bool]:
    """Instability (error barrier height) of a curve whose ends are the two trained networks."""
    # Rounded to 12 decimals: errors are counts over at most millions of examples, so this drops
    # only the float noise of the subtraction (0.005699999999999983 -> 0.0057), nothing measured.
    ends = round((curve[0] + curve[-1]) / 2, 12)
    top = max(curve)
    height = round(top - ends, 12)
    return {
        "instability": height,
        "error_endpoints": ends,
        "error_max": top,
        "stable": height < STABLE_THRESHOLD,
    }


def linear_barrier(points: list[float], curve: list[float]) -> float:
    """The barrier against the straight line between the end values: max over alpha of
    value(alpha) - (alpha * value(1) + (1 - alpha) * value(0)); 0 at the ends, so never negative."""
    return max(v - (a * curve[-1] + (1.0 - a) * curve[0]) for a, v in zip(points, curve))


def path_barriers(points: list[float], error: list[float], loss: list[float]) -> dict[str, float]:
    """What the loss curve adds to `barrier`: the loss barrier (max loss - mean of the end losses),
    its ends and top, and the barriers against the straight line for error and loss."""
    ends = (loss[0] + loss[-1]) / 2
    return {"loss_barrier": max(loss) - ends, "loss_endpoints": ends, "loss_max": max(loss),
            "error_barrier_linear": linear_barrier(points, error), "loss_barrier_linear": linear_barrier(points, loss)}


@torch.no_grad()
def endpoint_stats(model: torch.nn.Module, state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor],
                   batches: Batches) -> dict[str, float]:
    """The two end networks as trained (own BatchNorm statistics) on one split: each one's error and
    mean loss, and their disagreement (fraction of examples whose predicted classes differ)."""
    preds, out = [], {}
    for end, state in (("a", state_a), ("b", state_b)):
        model.load_state_dict(state)
        model.eval()
        wrong, loss, n, pred = 0, 0.0, 0, []
        for x, y in batches():
            logits = model(x).float()
            pred.append(logits.argmax(1).cpu())
            wrong += int((pred[-1] != y.cpu()).sum())
            loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum").double())
            n += len(y)
        preds.append(torch.cat(pred))
        out[f"error_{end}"], out[f"loss_{end}"] = wrong / max(1, n), loss / max(1, n)
    out["disagreement"] = float((preds[0] != preds[1]).double().mean()) if len(preds[0]) else 0.0
    return out


def weight_distance(model: torch.nn.Module, state_a: dict[str, torch.Tensor],
                    state_b: dict[str, torch.Tensor]) -> dict[str, float]:
    """L2 distance and cosine similarity of the two networks' parameters (BatchNorm running
    statistics left out), all layers as one vector."""
    names = [n for n, _ in model.named_parameters()]
    a = torch.cat([state_a[n].detach().double().flatten().cpu() for n in names])
    b = torch.cat([state_b[n].detach().double().flatten().cpu() for n in names])
    norm = float(a.norm() * b.norm())
    return {"l2_distance": float((a - b).norm()), "cosine_similarity": float(a @ b) / norm if norm > 0 else 0.0}


def degenerate(ends: dict[str, float], classes: int) -> bool:
    """Whether an end network is at or near chance: error above 1 - 1.5 / classes, or a non-finite
    loss (`endpoint_stats` of a split)."""
    limit = 1.0 - 1.5 / classes
    return any(ends[f"error_{e}"] > limit or not math.isfinite(ends[f"loss_{e}"]) for e in ("a", "b"))


def stacked_states(state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor],
                   points: list[float]) -> dict[str, torch.Tensor]:
    """`interpolate_state` at every alpha of `points`, stacked on a leading axis (same arithmetic)."""
    states = [interpolate_state(state_a, state_b, alpha) for alpha in points]
    return {name: torch.stack([s[name] for s in states]) for name in state_a}


def chunk_size(model: torch.nn.Module, budget_bytes: float = 512e6) -> int:
    """How many interpolated networks to stack at once: all of them for small nets, fewer for big."""
    size = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return max(1, int(budget_bytes // max(1, size)))


def error_curves(model: torch.nn.Module, state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor],
                 points: list[float], eval_batches: dict[str, Batches], **options) -> dict[str, list[float]]:
    """The error of `path_curves` on every split."""
    return {split: c["error"] for split, c in path_curves(model, state_a, state_b, points, eval_batches,
                                                          **options).items()}


@torch.no_grad()
def path_curves(
    model: torch.nn.Module,
    state_a: dict[str, torch.Tensor],
    state_b: dict[str, torch.Tensor],
    points: list[float],
    eval_batches: dict[str, Batches],
    bn: str = "interpolate",
    bn_batches: Batches | None = None,
    endpoint_trick: bool = True,
    max_stack: int | None = None,
) -> dict[str, dict[str, list[float]]]:
    """Error and mean loss ({split: {"error": [...], "loss": [...]}}) along the path, `error_curve` on every split of `eval_batches` at once: the networks of many alphas stacked in
    one module (`models.stacked`), each batch read once for all of them.

    With `endpoint_trick` the first layer (when it is a Linear/Conv2d applied to the input) computes
    its output at every alpha as alpha * f(W_a, x) + (1 - alpha) * f(W_b, x): two evaluations of the
    layer instead of one per alpha. That equals evaluating W(alpha) up to float rounding (the curves
    agree to within rare argmax flips on near-ties; see tests/test_batched.py). With `bn='reset'`
    the statistics of all alphas are re-estimated together, once for all splits.
    """
    from .models.stacked import StackedLinear, first_layer, stack

    if bn == "reset" and has_batchnorm(model) and bn_batches is None:
        raise ValueError("bn='reset' needs training batches")
    if bn == "repair":
        return repaired_curves(model, state_a, state_b, points, eval_batches, bn_batches)
    model.load_state_dict(state_a)
    example = next(iter(next(iter(eval_batches.values()))()))[0][:1]
    first = first_layer(model, example) if endpoint_trick else None
    per = max_stack or chunk_size(model)
    curves: dict[str, dict[str, list[float]]] = {split: {"error": [], "loss": []} for split in eval_batches}
    for lo in range(0, len(points), per):
        chunk = points[lo:lo + per]
        net = stack([model] * len(chunk))
        for layer in net.modules():  # one batched matmul per Linear for all alphas (faster here)
            if isinstance(layer, StackedLinear):
                layer.grouped = True
        net.load_state_dict(stacked_states(state_a, state_b, chunk))
        shared = first is not None
        if shared:
            layer = net.get_submodule(first)
            layer.shared = True
            if endpoint_trick:
                ends = [tuple(s.get(f"{first}.{n}") for n in ("weight", "bias")) for s in (state_a, state_b)]
                layer.endpoints = (torch.tensor(chunk, device=example.device), ends[0], ends[1])
        if bn == "reset" and has_batchnorm(model):
            _reset_stacked_batchnorm(net, bn_batches(), shared)
        for split, batches in eval_batches.items():
            for m in evaluate_group(net, batches(), shared=shared):
                curves[split]["error"].append(m["error"])
                curves[split]["loss"].append(m["loss"])
    return curves


@torch.no_grad()
def repaired_curves(model: torch.nn.Module, state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor],
                    points: list[float], eval_batches: dict[str, Batches],
                    bn_batches: Batches | None) -> dict[str, dict[str, list[float]]]:
    """`path_curves` with REPAIR (`repair.repair`): each alpha's network, its hidden units given
    the blend of the end networks' statistics on `bn_batches`, evaluated on every split."""
    if bn_batches is None:
        raise ValueError("bn='repair' needs training batches")
    ends = []
    for state in (state_a, state_b):
        model.load_state_dict(state)
        ends.append(unit_stats(model, bn_batches))
    curves: dict[str, dict[str, list[float]]] = {split: {"error": [], "loss": []} for split in eval_batches}
    for alpha in points:
        model.load_state_dict(interpolate_state(state_a, state_b, alpha))
        repair(model, blend(ends[0], ends[1], alpha), bn_batches)
        for split, batches in eval_batches.items():
            m = evaluate(model, batches())
            curves[split]["error"].append(m["error"])
            curves[split]["loss"].append(m["loss"])
    return curves


def _reset_stacked_batchnorm(net: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                             shared: bool) -> None:
    """`reset_batchnorm` for every copy of a stacked module at once."""
    bns = [m for m in net.modules() if hasattr(m, "running_mean") and m.running_mean is not None]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.running_mean.zero_()
        m.running_var.fill_(1.0)
        m.num_batches_tracked.zero_()
        m.momentum = None
    net.train()
    for x, _ in batches:
        net(x if shared else x.repeat(net.copies, *([1] * (x.dim() - 1))))
    for m, momentum in zip(bns, saved):
        m.momentum = momentum
    net.eval()

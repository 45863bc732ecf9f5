"""Linear interpolation between two trained networks and the error barrier (instability).

Instability of a pair = max over alpha of error(alpha * W1 + (1 - alpha) * W2) minus the mean of
the two end errors (Frankle et al., 2020, Algorithm 1). BatchNorm running statistics are either
interpolated with the weights (`bn="interpolate"`) or re-estimated on training batches at every
alpha (`bn="reset"`). No file I/O, no tracking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from .train import evaluate

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
    ends = (curve[0] + curve[-1]) / 2
    top = max(curve)
    height = top - ends
    return {
        "instability": height,
        "error_endpoints": ends,
        "error_max": top,
        "stable": height < STABLE_THRESHOLD,
    }

"""The optimizer: SGD with momentum or Adam, one fused kernel per step, without `torch.optim`.

Every `torch.optim.Optimizer` imports `torch._dynamo` the first time it is built (about a second on
a laptop CPU, paid by every `lmcsweep` process and every test), although nothing here compiles it.
`Fused` calls the same fused kernels as `torch.optim.SGD/Adam(fused=True)` (`torch._fused_sgd_`,
`torch._fused_adam_`) with the same arguments and state, so its updates are bit-identical to theirs
(tests/test_optim.py), and its `state_dict` has torch's layout: checkpoints load in either.

Weight decay is coupled (added to the gradient), as in OpenLTH; Adam uses torch's defaults
(betas 0.9, 0.999; eps 1e-8). Parameters whose gradient is None are skipped, as in torch.
"""

from __future__ import annotations

from typing import Any

import torch

BETAS, EPS = (0.9, 0.999), 1e-8


class Fused:
    """A drop-in for the part of `torch.optim.Optimizer` the training loop uses: `param_groups`
    (one group; the loop sets its "lr" every step), `state` (per parameter), `zero_grad`, `step`,
    `state_dict`, `load_state_dict`."""

    def __init__(self, params, kind: str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        if kind not in ("sgd", "adam"):
            raise ValueError(f"unknown optimizer {kind!r} (sgd or adam)")
        self.kind = kind
        params = list(params)
        group: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay, "maximize": False,
                                 "foreach": None, "differentiable": False, "fused": True}
        if self.kind == "adam":
            group.update(betas=BETAS, eps=EPS, amsgrad=False, capturable=False, decoupled_weight_decay=False)
        else:
            group.update(momentum=momentum, dampening=0.0, nesterov=False)
        self.param_groups = [{**group, "params": params}]
        self.state: dict[torch.Tensor, dict[str, torch.Tensor]] = {}

    @property
    def params(self) -> list[torch.Tensor]:
        return self.param_groups[0]["params"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        group = self.param_groups[0]
        by_kind: dict[tuple, list[torch.Tensor]] = {}  # the kernels take one device and dtype a call
        for p in self.params:
            if p.grad is not None:
                by_kind.setdefault((p.device, p.dtype), []).append(p)
        for params in by_kind.values():
            grads = [p.grad for p in params]
            if self.kind == "adam":
                self._adam(group, params, grads)
            else:
                self._sgd(group, params, grads)

    def _sgd(self, group, params, grads) -> None:
        momentum = group["momentum"]
        buffers = []
        first = False
        if momentum != 0:
            first = all("momentum_buffer" not in self.state.get(p, {}) for p in params)
            for p, g in zip(params, grads):
                if first:  # the kernel sets a new buffer to the (decayed) gradient
                    self.state.setdefault(p, {})["momentum_buffer"] = torch.empty_like(g)
                buffers.append(self.state[p]["momentum_buffer"])
        torch._fused_sgd_(params, grads, buffers, weight_decay=group["weight_decay"], momentum=momentum,
                          lr=group["lr"], dampening=group["dampening"], nesterov=group["nesterov"],
                          maximize=False, is_first_step=first, grad_scale=None, found_inf=None)

    def _adam(self, group, params, grads) -> None:
        for p in params:
            if p not in self.state:
                self.state[p] = {"step": torch.zeros((), dtype=torch.float32, device=p.device),
                                 "exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
        states = [self.state[p] for p in params]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        torch._fused_adam_(params, grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states], [],
                           steps, amsgrad=False, lr=group["lr"], beta1=group["betas"][0], beta2=group["betas"][1],
                           weight_decay=group["weight_decay"], eps=group["eps"], maximize=False, grad_scale=None,
                           found_inf=None)

    def state_dict(self) -> dict[str, Any]:
        """torch's layout: per-parameter state by position, and the group with parameter positions.
        The tensors are this optimizer's own (clone them to keep a snapshot)."""
        index = {id(p): i for i, p in enumerate(self.params)}
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {index[id(p)]: dict(s) for p, s in self.state.items()},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        """Take the per-parameter state of `saved` (from this class or torch.optim.SGD/Adam), moved
        to each parameter's device; tensors already there are used as they are, not copied, as torch
        does. The learning rate is set by the loop each step; the other hyperparameters stay this
        optimizer's own (they are the job's)."""
        groups = saved["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"optimizer state has {sum(len(g['params']) for g in groups)} parameters in "
                             f"{len(groups)} groups; this network has {len(self.params)} in one")
        self.param_groups[0]["lr"] = groups[0]["lr"]
        self.state = {}
        for i, p in zip(groups[0]["params"], self.params):
            if i in saved["state"]:
                self.state[p] = {k: v.to(device=p.device, dtype=torch.float32 if k == "step" else p.dtype)
                                 for k, v in saved["state"][i].items() if v is not None}

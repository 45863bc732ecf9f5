"""Networks of one architecture as one module: each parameter and buffer stacked on a leading axis.

Used to evaluate the networks along an interpolation path together (`interpolate.error_curves`):
`stack(models)` deep-copies the first model and swaps its Linear, Conv2d and BatchNorm layers for
stacked versions holding every network's tensors ([C, ...], same names as in the plain model). The
model's own forward runs unchanged on a batch with the networks folded into the batch axis:
network c's examples are rows c*N .. (c+1)*N-1. Activations, pooling, flatten and residual adds
never mix rows, so only the swapped layers need to know about copies.

By default Linear, Conv2d and BatchNorm run network by network with the plain layers' own
functions (each BatchNorm with its own statistics), so outputs equal the plain models' bit for bit.
`grouped=True` runs all Linear layers as one batched matmul and the convolutions as one grouped
convolution: fewer, bigger kernels, equal up to float rounding.

`shared` (on the first layer): it may take the plain batch [N, ...] once for all networks; with
`endpoints` set it computes its output at every alpha from the two end networks' outputs (it is
linear in its weights).

(Training copies stacked this way was tried and dropped: see `copies`.)
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _stacked(modules: list[nn.Module], name: str) -> nn.Parameter | None:
    tensors = [getattr(m, name) for m in modules]
    if tensors[0] is None:
        return None
    return nn.Parameter(torch.stack([t.detach() for t in tensors]), requires_grad=tensors[0].requires_grad)


class _Stacked(nn.Module):
    copies: int
    shared: bool = False                    # takes the plain batch, gives every copy's output
    endpoints: tuple | None = None          # (alphas [C], (weight_a, bias_a), (weight_b, bias_b))

    def _per_copy(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(self.copies, x.shape[0] // self.copies, *x.shape[1:])

    def _from_endpoints(self, x: torch.Tensor) -> torch.Tensor:
        alphas, (wa, ba), (wb, bb) = self.endpoints
        ya, yb = self.plain(x, wa, ba), self.plain(x, wb, bb)
        a = alphas.to(ya.dtype).view((-1,) + (1,) * ya.dim())
        out = torch.addcmul(yb, a, ya - yb)  # yb + alpha (ya - yb): one pass; exact at alpha 0
        out[alphas == 1] = ya                # and at alpha 1
        return out.flatten(0, 1)


class StackedLinear(_Stacked):
    def __init__(self, layers: list[nn.Linear], grouped: bool = False):
        super().__init__()
        self.copies = len(layers)
        self.grouped = grouped
        self.weight = _stacked(layers, "weight")
        self.bias = _stacked(layers, "bias")

    @staticmethod
    def plain(x, weight, bias):
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.endpoints is not None:
            return self._from_endpoints(x)
        if not self.grouped:
            weights = self.weight.unbind(0)
            biases = [None] * self.copies if self.bias is None else self.bias.unbind(0)
            xs = [x] * self.copies if self.shared else x.chunk(self.copies)
            return torch.cat([F.linear(xs[c], weights[c], biases[c]) for c in range(self.copies)])
        w = self.weight.transpose(1, 2)
        if self.shared:
            xs = x.reshape(1, -1, x.shape[-1]).expand(self.copies, -1, -1)
        else:
            xs = x.reshape(self.copies, -1, x.shape[-1])
        out = torch.bmm(xs, w) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), xs, w)
        return out.reshape(-1, *x.shape[1:-1], out.shape[-1])


class StackedConv2d(_Stacked):
    def __init__(self, layers: list[nn.Conv2d], grouped: bool = False):
        super().__init__()
        first = layers[0]
        if first.padding_mode != "zeros":
            raise TypeError("stacked convolutions support padding_mode='zeros' only")
        self.copies = len(layers)
        self.weight = _stacked(layers, "weight")
        self.bias = _stacked(layers, "bias")
        self.stride, self.padding, self.dilation, self.groups = first.stride, first.padding, first.dilation, first.groups
        self.grouped = grouped

    def plain(self, x, weight, bias):
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.endpoints is not None:
            return self._from_endpoints(x)
        C = self.copies
        if self.grouped:  # all copies as one grouped convolution: [N, C*ch, H, W]
            xs = x.unsqueeze(0).expand(C, *x.shape) if self.shared else self._per_copy(x)
            n = xs.shape[1]
            xg = xs.transpose(0, 1).reshape(n, -1, *x.shape[2:])
            w = self.weight.flatten(0, 1)
            if x.is_cuda:  # channels_last: the fast layout for cuDNN (and bf16 tensor cores)
                xg, w = xg.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
            b = None if self.bias is None else self.bias.flatten()
            y = F.conv2d(xg, w, b, self.stride, self.padding, self.dilation, self.groups * C)
            return y.view(n, C, -1, *y.shape[2:]).transpose(0, 1).reshape(C * n, -1, *y.shape[2:])
        xs = [x] * C if self.shared else self._per_copy(x)
        weights = self.weight.unbind(0)  # one backward (a stack) for all copies' gradients
        biases = [None] * C if self.bias is None else self.bias.unbind(0)
        return torch.cat([self.plain(xs[c], weights[c], biases[c]) for c in range(C)])


class StackedBatchNorm(_Stacked):
    """Copy by copy, each with its own statistics; the same arithmetic as torch's _BatchNorm."""

    def __init__(self, layers: list[_BatchNorm]):
        super().__init__()
        first = layers[0]
        self.copies = len(layers)
        self.eps, self.momentum, self.track_running_stats = first.eps, first.momentum, first.track_running_stats
        self.weight = _stacked(layers, "weight")
        self.bias = _stacked(layers, "bias")
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            value = getattr(first, name)
            self.register_buffer(name, None if value is None else
                                 torch.stack([getattr(m, name).detach().clone() for m in layers]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shared:
            raise TypeError("BatchNorm cannot be the first layer of a shared-input stack")
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        xs = self._per_copy(x)
        use_batch = self.training or self.running_mean is None
        weights = [None] * self.copies if self.weight is None else self.weight.unbind(0)
        biases = [None] * self.copies if self.bias is None else self.bias.unbind(0)
        out = []
        for c in range(self.copies):
            if self.training and self.track_running_stats and self.momentum is None:
                factor = 1.0 / float(self.num_batches_tracked[c])
            keep = self.running_mean is not None and (not self.training or self.track_running_stats)
            out.append(F.batch_norm(
                xs[c], self.running_mean[c] if keep else None, self.running_var[c] if keep else None,
                weights[c], biases[c],
                use_batch, factor, self.eps))
        return torch.cat(out)


def stack(models: list[nn.Module], grouped: bool = False) -> nn.Module:
    """One module holding every model of `models` (same architecture) as a copy; see the module doc."""
    net = copy.deepcopy(models[0])
    for name, module in list(models[0].named_modules()):
        layers = [m.get_submodule(name) for m in models] if name else models
        if isinstance(module, nn.Linear):
            new: nn.Module | None = StackedLinear(layers, grouped)
        elif isinstance(module, nn.Conv2d):
            new = StackedConv2d(layers, grouped)
        elif isinstance(module, _BatchNorm):
            new = StackedBatchNorm(layers)
        else:
            if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
                raise TypeError(f"cannot stack layer {name!r} ({type(module).__name__})")
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, new)
    net.copies = len(models)
    return net.to(next(models[0].parameters()).device)


def first_layer(model: nn.Module, example: torch.Tensor) -> str | None:
    """Name of the first Linear/Conv2d that `model` applies to its input, if the first parameterised
    layer applied is one (found by running `example` [1, ...] with hooks); else None."""
    order: list[str] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: order.append(n))
             for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if not order:
        return None
    module = model.get_submodule(order[0])
    return order[0] if isinstance(module, (nn.Linear, nn.Conv2d)) else None

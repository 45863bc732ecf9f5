"""LeNet-300-100 style fully connected network (MNIST / Fashion-MNIST)."""

from __future__ import annotations

import math

import torch
from torch import nn


class LeNet(nn.Module):
    """Flatten -> [Linear -> ReLU] per hidden width -> Linear output.

    With the default ``hidden=(300, 100)`` and a 1x28x28 input this is 784-300-100-10 with
    266,610 parameters (every Linear has a bias).
    """

    def __init__(self, num_classes: int, shape: tuple[int, int, int], hidden=(300, 100)):
        super().__init__()
        widths = [math.prod(shape), *hidden]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.fc(x)

"""VGG-16 for CIFAR as in OpenLTH's cifar_vgg_16: 13 conv-BN-ReLU layers, one linear output."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Output channels of the 13 conv layers; "M" is a 2x2 max pool. No pool after the last stage:
# a global average pool feeds the single linear output layer.
VGG16_PLAN = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)


class VGGCifar(nn.Module):
    """VGG-16 with BatchNorm. ``width`` scales every conv's channels (at least 1); ``widths`` gives
    the 13 conv widths directly. Defaults: 14,728,266 parameters for 10 classes (convs have biases)."""

    def __init__(self, num_classes: int, shape: tuple[int, int, int], width: float = 1.0,
                 widths: list[int] | None = None):
        super().__init__()
        n_conv = sum(1 for p in VGG16_PLAN if p != "M")
        if widths is None:
            widths = [max(1, round(c * width)) for c in VGG16_PLAN if c != "M"]
        if len(widths) != n_conv:
            raise ValueError(f"vgg16 needs {n_conv} conv widths, got {len(widths)}")
        layers: list[nn.Module] = []
        c_in, it = shape[0], iter(widths)
        for p in VGG16_PLAN:
            if p == "M":
                layers.append(nn.MaxPool2d(2))
                continue
            c_out = next(it)
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)

"""torchvision's ImageNet networks (ResNet-50, Inception-v3), built without pretrained weights.

Initialisation is done by `lmcsweep.models.build_model` from the init seed, not by torchvision.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import Inception3, resnet50 as _tv_resnet50

from lmcsweep.models.dropout import SeededDropout


def resnet50(num_classes: int, shape: tuple[int, int, int]) -> nn.Module:
    """torchvision resnet50 (25,557,032 parameters at 1000 classes); forward returns logits."""
    if shape[0] != 3:
        raise ValueError(f"resnet50 expects 3 input channels, got shape {shape}")
    return _tv_resnet50(weights=None, num_classes=num_classes)


class InceptionV3(Inception3):
    """torchvision Inception-v3 whose forward always returns the main logits (train and eval).

    The auxiliary head (``AuxLogits``) is kept by default only so the parameter count matches the
    paper's 27.1M (27,161,264 at 1000 classes; 23,834,568 without it). It is never run, so it gets no
    gradient, stays at its initial values, and is left out of `prunable_names`. ``aux_logits=False``
    drops it. The dropout before ``fc`` (p = 0.5) is a `SeededDropout`: its masks come from the
    job's augmentation seed and the iteration, not torch's global generator.
    """

    # Modules under these prefixes are not pruned (see lmcsweep.models.prunable_names).
    unprunable_prefixes = ("AuxLogits.",)

    _TRUNK = (
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1",
        "Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
        "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "avgpool", "dropout",
    )

    def __init__(self, num_classes: int, shape: tuple[int, int, int], aux_logits: bool = True):
        if shape[0] != 3:
            raise ValueError(f"inception_v3 expects 3 input channels, got shape {shape}")
        super().__init__(num_classes=num_classes, aux_logits=aux_logits, transform_input=False,
                         init_weights=False)
        self.dropout = SeededDropout(self.dropout.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for name in self._TRUNK:
            x = getattr(self, name)(x)
        return self.fc(torch.flatten(x, 1))

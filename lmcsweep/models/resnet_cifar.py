"""The CIFAR ResNets of He et al. (2016): depth 6n+2, three stages of width w, 2w, 4w."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SHORTCUTS = ("B", "A")


class Block(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus the shortcut, then ReLU.

    Where the shape changes the shortcut is either option B (1x1 conv + BN projection, as OpenLTH)
    or option A (stride-2 subsampling with zero-padded channels, parameter-free).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.reshape = stride != 1 or c_in != c_out
        self.shortcut_type = shortcut
        self.pad = c_out - c_in
        self.stride = stride
        if self.reshape and shortcut == "B":
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out)
            )
        else:
            self.shortcut = nn.Sequential()

    def _skip(self, x: torch.Tensor) -> torch.Tensor:
        if not self.reshape or self.shortcut_type == "B":
            return self.shortcut(x)
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._skip(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for small images.

    Defaults (depth 20, width 16, option-B shortcuts) give 272,474 parameters for 10 classes; with
    option A it is 269,722. B is OpenLTH's choice; counting B's 1,568 BatchNorm running statistics
    too gives 274,042, which is likely the paper's 274K.
    """

    def __init__(self, num_classes: int, shape: tuple[int, int, int], depth: int = 20,
                 width: int = 16, shortcut: str = "B"):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"resnet depth must be 6n+2 with n >= 1, got {depth}")
        if shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {SHORTCUTS}, got {shortcut!r}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(shape[0], width, 3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks = []
        c_in = width
        for stage in range(3):
            c_out = width * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(Block(c_in, c_out, stride, shortcut))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(x)))
        x = self.blocks(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)

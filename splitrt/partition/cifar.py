"""CIFAR-10 ResNets (He et al. 2016, section 4.2): 6n+2 layers, "option A" identity shortcuts.

Three stages of n basic blocks with 16, 32 and 64 channels; the first block of stages 2 and 3 halves the
resolution, and its shortcut subsamples the input (::2) and pads the new channels with zeros, so the
shortcut has no parameters. Weights: `torch.save`d dicts whose `state_dict` keys carry a `module.` prefix.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DEFAULT_WEIGHTS_DIR = Path("../shared/models/cifar10-resnet")
WEIGHT_FILES = {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}


class ZeroPadShortcut(nn.Module):
    """Option A: take every second pixel and append zero channels, `extra_channels` on each side."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra_channels = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra_channels, self.extra_channels))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        changes_shape = stride != 1 or in_channels != channels
        self.shortcut: nn.Module = ZeroPadShortcut(channels // 4) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has 6n+2 layers; {depth} is not of that form")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_channels: int, channels: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_channels, channels, stride)]
        layers += [BasicBlock(channels, channels, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.linear(x)


def load_cifar_resnet(depth: int, weights_dir: str | Path | None = None) -> CifarResNet:
    """The pretrained ResNet-`depth`; a clear error when the weights are not there."""
    folder = Path(weights_dir) if weights_dir is not None else DEFAULT_WEIGHTS_DIR
    if depth not in WEIGHT_FILES:
        raise ValueError(f"pretrained CIFAR-10 weights exist for ResNet-{sorted(WEIGHT_FILES)}, not ResNet-{depth}")
    path = folder / WEIGHT_FILES[depth]
    if not path.is_file():
        raise FileNotFoundError(
            f"resnet{depth}-cifar10 needs its weights at {path}: pass --weights-dir DIR "
            f"(the folder holding {WEIGHT_FILES[depth]}; default {DEFAULT_WEIGHTS_DIR})"
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict with a 'state_dict', got {type(checkpoint).__name__}")
    state = {key.removeprefix("module."): value for key, value in state.items()}
    net = CifarResNet(depth)
    net.load_state_dict(state, strict=True)
    return net.eval()

"""The student networks (torch): a compressor that turns the teacher's activation at a split point into a
few-channel latent at half the resolution (stride 2) or at the activation's own (stride 1, for deep split
points whose maps are already small), and a decompressor that restores the activation for the tail.

Two transforms: `conv` (small convolutional networks, trained from scratch) and `linear` (a 1x1 convolution
each way, started from the Karhunen-Loeve transform of the teacher's activation, i.e. its principal axes, and
then distilled like the other; it is the transform-coding baseline made trainable, and it generalises from few
training images because it has few parameters and starts from a transform that fits any input).

The rate term of the training loss comes from a factorized prior: one logistic density per latent channel
(learned location and scale), integrated over each quantisation bin. At export the prior is replaced by
integer frequency tables (see `entropy.py`), so the bitstream never depends on floating-point maths.
"""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F


class Compressor(nn.Module):
    """activation (N, C_in, H, W) -> latent (N, C_latent, H/stride, W/stride), before rounding."""

    def __init__(self, in_channels: int, latent_channels: int, hidden: int = 128, stride: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, stride=stride, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, latent_channels, 1),
        )
        with torch.no_grad():  # start with latents spread over several integers, not all rounded to zero
            self.net[-1].weight.mul_(8.0)
        self.register_buffer("mean", torch.zeros(1, in_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, in_channels, 1, 1))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean.view_as(self.mean))
        self.std.copy_(std.view_as(self.std))

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        return self.net((activation - self.mean) / self.std)


class Decompressor(nn.Module):
    """rounded latent (N, C_latent, H/stride, W/stride) -> activation (N, C_out, H, W)."""

    def __init__(self, latent_channels: int, out_channels: int, hidden: int = 128, upsampled: int = 48,
                 stride: int = 2) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(latent_channels, hidden, 1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, stride * stride * upsampled, 1),
            nn.PixelShuffle(stride),
            nn.ReLU(),
            nn.Conv2d(upsampled, out_channels, 3, padding=1),
        )
        self.register_buffer("mean", torch.zeros(1, out_channels, 1, 1))
        self.register_buffer("std", torch.ones(1, out_channels, 1, 1))

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean.view_as(self.mean))
        self.std.copy_(std.view_as(self.std))

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent) * self.std + self.mean


class LinearCompressor(nn.Module):
    """activation (N, C_in, H, W) -> latent (N, C_latent, H, W): a 1x1 convolution (a per-position linear map)."""

    def __init__(self, in_channels: int, latent_channels: int) -> None:
        super().__init__()
        self.net = nn.Conv2d(in_channels, latent_channels, 1)

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        return self.net(activation)


class LinearDecompressor(nn.Module):
    """latent (N, C_latent, H, W) -> activation (N, C_out, H, W): a 1x1 convolution."""

    def __init__(self, latent_channels: int, out_channels: int) -> None:
        super().__init__()
        self.net = nn.Conv2d(latent_channels, out_channels, 1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)


def principal_axes(sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (C,) and principal axes (C, C; columns by decreasing variance) of the per-position channel vectors
    of an activation sample (N, C, H, W)."""
    vectors = sample.permute(0, 2, 3, 1).reshape(-1, sample.shape[1]).double()
    mean = vectors.mean(0)
    covariance = (vectors - mean).T @ (vectors - mean) / max(1, len(vectors) - 1)
    _, axes = torch.linalg.eigh(covariance)  # ascending eigenvalues
    return mean.float(), axes.flip(1).float()


class FactorizedLogistic(nn.Module):
    """Per-channel logistic prior; `bits(y)` is -log2 P(bin of y), the rate a coder would spend."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(channels))
        self.log_scale = nn.Parameter(torch.zeros(channels))

    def bits(self, y: torch.Tensor) -> torch.Tensor:
        loc = self.loc.view(1, -1, 1, 1)
        scale = torch.exp(self.log_scale).view(1, -1, 1, 1) + 1e-3
        upper = torch.sigmoid((y + 0.5 - loc) / scale)
        lower = torch.sigmoid((y - 0.5 - loc) / scale)
        probability = torch.clamp(upper - lower, min=1e-9)
        return -torch.log(probability) / math.log(2.0)


TRANSFORMS = ("conv", "linear")


class Bottleneck(nn.Module):
    """Compressor + prior + decompressor; `forward` returns (restored activation, bits per sample)."""

    def __init__(self, channels: int, latent_channels: int, stride: int = 2, transform: str = "conv") -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"latent stride must be 1 or 2, got {stride}")
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
        if transform == "linear" and (stride != 1 or latent_channels > channels):
            raise ValueError(f"a linear transform keeps the resolution (stride 1) and at most the activation's "
                             f"{channels} channels; got stride {stride}, {latent_channels} channels")
        self.channels = channels
        self.latent_channels = latent_channels
        self.stride = stride
        self.transform = transform
        self.compressor: nn.Module
        self.decompressor: nn.Module
        if transform == "linear":
            self.compressor = LinearCompressor(channels, latent_channels)
            self.decompressor = LinearDecompressor(latent_channels, channels)
        else:
            self.compressor = Compressor(channels, latent_channels, stride=stride)
            self.decompressor = Decompressor(latent_channels, channels, stride=stride)
        self.prior = FactorizedLogistic(latent_channels)

    def initialise(self, sample: torch.Tensor) -> None:
        """Start from a sample of the teacher's activation (N, C, H, W). `conv`: standardise per channel.
        `linear`: the principal axes, scaled so that one latent unit is one standard deviation of the activation
        (the quantisation step of operating point 1), with the prior started at each axis's spread."""
        if self.transform == "conv":
            mean, std = sample.mean(dim=(0, 2, 3)), sample.std(dim=(0, 2, 3), unbiased=False) + 1e-3
            self.compressor.set_statistics(mean, std)
            self.decompressor.set_statistics(mean, std)
            return
        mean, axes = principal_axes(sample)
        axes = axes[:, : self.latent_channels]
        unit = float(sample.std()) + 1e-6
        with torch.no_grad():
            self.compressor.net.weight.copy_((axes.T / unit)[:, :, None, None])
            self.compressor.net.bias.copy_(-(axes.T @ mean) / unit)
            self.decompressor.net.weight.copy_((axes * unit)[:, :, None, None])
            self.decompressor.net.bias.copy_(mean)
            spread = self.compressor(sample).std(dim=(0, 2, 3))
            self.prior.log_scale.copy_(torch.log(spread * 0.55 + 1e-3))  # logistic scale = std * sqrt(3) / pi

    def forward(self, activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        latent = self.compressor(activation)
        if self.training:
            noisy = latent + torch.empty_like(latent).uniform_(-0.5, 0.5)
            bits = self.prior.bits(noisy).flatten(1).sum(1)
            rounded = latent + (torch.round(latent) - latent).detach()  # straight-through rounding
        else:
            rounded = torch.round(latent)
            bits = self.prior.bits(rounded).flatten(1).sum(1)
        return self.decompressor(rounded), bits


class EdgeEncoder(nn.Module):
    """What the edge runs: the teacher's head up to the split, then the compressor; the float latent comes out
    divided by the operating point's quantisation step (the codec rounds it)."""

    def __init__(self, head: nn.Module, compressor: nn.Module, step: float = 1.0) -> None:
        super().__init__()
        self.head, self.compressor, self.step = head, compressor, float(step)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.compressor(self.head(image)) / self.step


class CloudTail(nn.Module):
    """What the cloud runs: the latent times the step, the decompressor, then the teacher's tail."""

    def __init__(self, decompressor: nn.Module, tail: nn.Module, step: float = 1.0) -> None:
        super().__init__()
        self.decompressor, self.tail, self.step = decompressor, tail, float(step)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.tail(self.decompressor(latent * self.step))


def distillation_loss(
    restored: torch.Tensor, target: torch.Tensor, student_logits: torch.Tensor | None, teacher_logits: torch.Tensor | None,
    target_variance: float, temperature: float = 1.0,
) -> torch.Tensor:
    """Normalised activation MSE, plus KL(teacher || student) on the logits when they are given."""
    loss = F.mse_loss(restored, target) / target_variance
    if student_logits is not None and teacher_logits is not None:
        teacher = F.log_softmax(teacher_logits / temperature, dim=1)
        student = F.log_softmax(student_logits / temperature, dim=1)
        loss = loss + F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2
    return loss

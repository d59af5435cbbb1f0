"""The student networks (torch): a compressor that turns the teacher's activation at a split point into a
few-channel latent at half the resolution (stride 2) or at the activation's own (stride 1, for deep split
points whose maps are already small), and a decompressor that restores the activation for the tail.

Two transforms: `conv` (small convolutional networks, trained from scratch) and `linear` (one linear map per
stride x stride block of positions each way, started from the Karhunen-Loeve transform of the teacher's
activation blocks, i.e. their principal axes, and then distilled like the other; it is the transform-coding
baseline made trainable, and it generalises from few training images because it has few parameters and starts
from a transform that fits any input).

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
    """activation (N, C_in, H, W) -> latent (N, C_latent, H/patch, W/patch): one linear map per non-overlapping
    patch x patch block of positions (a convolution whose kernel is its stride)."""

    def __init__(self, in_channels: int, latent_channels: int, patch: int = 1) -> None:
        super().__init__()
        self.net = nn.Conv2d(in_channels, latent_channels, patch, stride=patch)

    def forward(self, activation: torch.Tensor) -> torch.Tensor:
        return self.net(activation)


class LinearDecompressor(nn.Module):
    """latent (N, C_latent, H/patch, W/patch) -> activation (N, C_out, H, W): the linear map back, per block
    (a 1x1 convolution for patch 1, a transposed convolution whose kernel is its stride otherwise)."""

    def __init__(self, latent_channels: int, out_channels: int, patch: int = 1) -> None:
        super().__init__()
        self.net: nn.Module
        if patch == 1:
            self.net = nn.Conv2d(latent_channels, out_channels, 1)
        else:
            self.net = nn.ConvTranspose2d(latent_channels, out_channels, patch, stride=patch)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.net(latent)


def patch_vectors(sample: torch.Tensor, patch: int) -> torch.Tensor:
    """(N, C, H, W) -> (N * H/patch * W/patch, C * patch * patch): each block's values in (C, dy, dx) order,
    the order of a Conv2d kernel."""
    n, c, h, w = sample.shape
    blocks = sample.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return blocks.reshape(-1, c * patch * patch)


def principal_axes(vectors: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """Principal axes (D, D; columns by decreasing variance) of `vectors` (M, D) around `mean` (D,)."""
    centred = vectors.double() - mean.double()
    covariance = centred.T @ centred / max(1, len(vectors) - 1)
    _, axes = torch.linalg.eigh(covariance)  # ascending eigenvalues
    return axes.flip(1).float()


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
CONV_STRIDES = (1, 2)
LINEAR_STRIDES = (1, 2, 4)  # the block size of the linear map


class Bottleneck(nn.Module):
    """Compressor + prior + decompressor; `forward` returns (restored activation, bits per sample)."""

    def __init__(self, channels: int, latent_channels: int, stride: int = 2, transform: str = "conv") -> None:
        super().__init__()
        if transform not in TRANSFORMS:
            raise ValueError(f"transform must be one of {', '.join(TRANSFORMS)}, got {transform!r}")
        strides = LINEAR_STRIDES if transform == "linear" else CONV_STRIDES
        if stride not in strides:
            raise ValueError(f"latent stride of a {transform} transform must be one of {strides}, got {stride}")
        if transform == "linear" and latent_channels > channels * stride * stride:
            raise ValueError(f"a linear transform keeps at most the {channels * stride * stride} values of a "
                             f"{stride}x{stride} block of {channels} channels; got {latent_channels} latent channels")
        self.channels = channels
        self.latent_channels = latent_channels
        self.stride = stride
        self.transform = transform
        self.compressor: nn.Module
        self.decompressor: nn.Module
        if transform == "linear":
            self.compressor = LinearCompressor(channels, latent_channels, stride)
            self.decompressor = LinearDecompressor(latent_channels, channels, stride)
        else:
            self.compressor = Compressor(channels, latent_channels, stride=stride)
            self.decompressor = Decompressor(latent_channels, channels, stride=stride)
        self.prior = FactorizedLogistic(latent_channels)

    def initialise(self, sample: torch.Tensor) -> None:
        """Start from a sample of the teacher's activation (N, C, H, W). `conv`: standardise per channel.
        `linear`: the principal axes of its stride x stride blocks, scaled so that one latent unit is one standard
        deviation of the activation (the quantisation step of operating point 1), around the per-channel mean,
        with the prior started at each axis's spread."""
        if self.transform == "conv":
            mean, std = sample.mean(dim=(0, 2, 3)), sample.std(dim=(0, 2, 3), unbiased=False) + 1e-3
            self.compressor.set_statistics(mean, std)
            self.decompressor.set_statistics(mean, std)
            return
        patch, channels = self.stride, self.channels
        if sample.shape[2] % patch or sample.shape[3] % patch:
            raise ValueError(f"a linear transform with stride {patch} needs an activation whose height and width "
                             f"it divides; got {tuple(sample.shape[2:])}")
        channel_mean = sample.mean(dim=(0, 2, 3))
        mean = channel_mean.repeat_interleave(patch * patch)  # (C, dy, dx) order, like the kernels
        axes = principal_axes(patch_vectors(sample, patch), mean)[:, : self.latent_channels]
        unit = float(sample.std()) + 1e-6
        kernels = axes.T.reshape(self.latent_channels, channels, patch, patch)
        with torch.no_grad():
            self.compressor.net.weight.copy_(kernels / unit)
            self.compressor.net.bias.copy_(-(axes.T @ mean) / unit)
            if patch == 1:  # Conv2d weight: (out, in, 1, 1)
                self.decompressor.net.weight.copy_(kernels.permute(1, 0, 2, 3) * unit)
            else:  # ConvTranspose2d weight: (in, out, k, k)
                self.decompressor.net.weight.copy_(kernels * unit)
            self.decompressor.net.bias.copy_(channel_mean)
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

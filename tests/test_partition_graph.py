"""Split points found in the traced graph: only cuts where exactly one tensor crosses are offered."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from splitrt.bundle import HEAD_INPUT_NAME, TAIL_INPUT_NAME, Bundle
from splitrt.devices.ort import create_session
from splitrt.imaging import Preprocess
from splitrt.partition.export import export_bundle
from splitrt.partition.graph import TraceError
from splitrt.partition.traced import TracedModel

PREPROCESS = Preprocess(resize_short_side=16, crop=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class TwoBranch(nn.Module):
    """An inception-like block: two branches from one input, concatenated."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.left = nn.Conv2d(channels, channels, 1)
        self.right = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.left(x), self.right(x)], dim=1)


class Branchy(nn.Module):
    """stem -> two-branch block -> residual block -> a long skip from `mid` over `deep` -> head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.branch = TwoBranch(4)
        self.res_conv1 = nn.Conv2d(8, 8, 3, padding=1)
        self.res_conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.mid = nn.Conv2d(8, 8, 1)
        self.deep = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.branch(x)
        x = F.relu(x + self.res_conv2(F.relu(self.res_conv1(x))))  # residual in the top-level forward
        m = self.mid(x)
        x = m + self.deep(m)  # a skip over a whole submodule
        x = x.view(x.size(0), x.size(1), -1).mean(-1)  # batch size read from the tensor
        return self.fc(x)


def branchy() -> TracedModel:
    torch.manual_seed(0)
    net = Branchy()
    with torch.no_grad():
        net.stem[1].running_mean.uniform_(-0.3, 0.3)
        net.stem[1].running_var.uniform_(0.5, 1.5)
    return TracedModel("branchy", net, PREPROCESS, [f"c{i}" for i in range(5)])


def test_only_single_tensor_cuts_are_offered() -> None:
    model = branchy()
    names = model.split_names
    assert names[:4] == ["stem.0", "stem.1", "stem", "branch"]
    # Never inside the two branches, the residual, or the long skip.
    for inside in ("branch.left", "branch.right", "branch.right.0", "res_conv1", "res_conv2", "relu", "deep", "deep.0", "deep.1"):
        assert inside not in names, inside
    assert "relu_1" in names and "mid" in names  # after the residual; before the long skip (only `m` crosses)
    assert names[-1] == "mean"  # pooled features, before the classifier


def test_head_plus_tail_equals_full_for_every_offered_point(tmp_path: Path) -> None:
    model = branchy()
    bundle = export_bundle(model, tmp_path / "branchy", progress=False)
    assert bundle.manifest.split_names[1:] == model.split_names
    images = np.random.default_rng(3).integers(0, 256, size=(4, 16, 16, 3), dtype=np.uint8)
    with torch.no_grad():
        reference = model.reference(model.normalizer()(torch.from_numpy(images))).numpy()
    full = create_session(bundle.path(bundle.manifest.full_file)).run(None, {HEAD_INPUT_NAME: images})[0]
    np.testing.assert_allclose(full, reference, rtol=1e-4, atol=1e-5)
    for point in bundle.manifest.splits[1:]:
        activation = create_session(bundle.path(point.head_file)).run(None, {HEAD_INPUT_NAME: images})[0]
        assert activation.shape[1:] == point.activation.shape
        out = create_session(bundle.path(point.tail_file)).run(None, {TAIL_INPUT_NAME: activation})[0]
        np.testing.assert_allclose(out, reference, rtol=1e-4, atol=1e-5, err_msg=point.name)
    assert Bundle.load(bundle.root).content_hash == bundle.content_hash


class SharedActivation(nn.Module):
    """One activation module called twice, as EfficientNet's `_swish` (stem and head)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv2(self.act(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_a_module_called_twice_has_a_cut_after_each_call() -> None:
    torch.manual_seed(2)
    model = TracedModel("shared", SharedActivation(), PREPROCESS, ["a", "b", "c"])
    assert model.split_names[:4] == ["conv1", "act", "conv2", "act@1"]  # torch.fx's keys for the two calls
    image = torch.randint(0, 256, (2, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model.full()(image)
        assert model.head("act")(image).shape == (2, 4, 16, 16) and model.head("act@1")(image).shape == (2, 6, 16, 16)
        for name in model.split_names:
            torch.testing.assert_close(model.tail(name)(model.head(name)(image)), reference, msg=name)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:  # control flow on a value: torch.fx cannot follow it
            return self.conv(x)
        return -self.conv(x)


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.gate = DataDependent()
        self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.gate(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_an_untraceable_module_is_named_with_the_fix() -> None:
    with pytest.raises(TraceError, match=r"cannot trace module 'gate' \(DataDependent\).*split points by module name"):
        TracedModel("untraceable", Untraceable(), PREPROCESS, ["a", "b", "c"])


def test_explicit_split_modules_keep_them_whole(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = TracedModel("untraceable", Untraceable(), PREPROCESS, ["a", "b", "c"], split_modules=["stem", "gate", "body"])
    assert model.split_names == ["stem", "gate", "body"]
    bundle = export_bundle(model, tmp_path / "u", progress=False)  # verifies head+tail == full in ONNX Runtime
    assert bundle.manifest.split("gate").activation.shape == (4, 16, 16)
    with pytest.raises(KeyError, match="no submodule 'nope'"):
        TracedModel("untraceable", Untraceable(), PREPROCESS, ["a", "b", "c"], split_modules=["nope"])


def test_unknown_split_names_the_offered_ones() -> None:
    with pytest.raises(KeyError, match="split points: stem.0"):
        branchy().head("deep.0")

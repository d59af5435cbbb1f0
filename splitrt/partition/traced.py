"""A model partitioned from its traced graph: split points are the graph's single-tensor cuts."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import fx, nn

from splitrt.imaging import Preprocess
from splitrt.partition.graph import Cut, find_cuts, head_module, tail_module, trace
from splitrt.partition.models import InputNormalize


@dataclass
class TracedModel:
    """Any image model: traced with torch.fx, cut wherever exactly one tensor crosses.

    `split_modules` (module names) keeps those modules whole and offers cuts only right after them: the
    fix for a model whose forward cannot be traced in full.
    """

    model_id: str
    reference: nn.Module
    preprocess: Preprocess
    labels: list[str]
    description: str = ""
    split_modules: Sequence[str] | None = None
    granularity: str = "module"
    max_depth: int | None = None
    cuts: list[Cut] = field(init=False)
    graph_module: fx.GraphModule = field(init=False)

    def __post_init__(self) -> None:
        self.reference.eval()
        self.graph_module = trace(self.reference, keep_whole=self.split_modules or ())
        crop = self.preprocess.crop
        example = self.normalizer()(torch.zeros(1, crop, crop, 3, dtype=torch.uint8))
        with torch.no_grad():
            self.cuts = find_cuts(
                self.graph_module, example, self.split_modules, granularity=self.granularity, max_depth=self.max_depth
            )
        if not self.cuts:
            raise ValueError(
                f"{self.model_id}: the traced graph has no cut where exactly one tensor crosses; "
                "give explicit split points by module name (split_modules / --split-modules)"
            )
        self._by_name = {cut.name: cut for cut in self.cuts}

    @property
    def split_names(self) -> list[str]:
        return [cut.name for cut in self.cuts]

    def normalizer(self) -> InputNormalize:
        return InputNormalize(self.preprocess.mean, self.preprocess.std)

    def cut(self, split: str) -> Cut:
        if split not in self._by_name:
            raise KeyError(f"{self.model_id} has no split point {split!r}; split points: {', '.join(self.split_names)}")
        return self._by_name[split]

    def head(self, split: str) -> nn.Module:
        return nn.Sequential(self.normalizer(), head_module(self.graph_module, self.cut(split))).eval()

    def tail(self, split: str) -> nn.Module:
        return tail_module(self.graph_module, self.cut(split)).eval()

    def full(self) -> nn.Module:
        return nn.Sequential(self.normalizer(), self.graph_module).eval()

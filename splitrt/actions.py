"""What a policy decides for one frame: skip it, run it locally, split it, or offload it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class Skip:
    """Reuse the last result: a prefilter found nothing new."""

    def describe(self) -> str:
        return "skip"


@dataclass(frozen=True)
class Local:
    """Run the whole model on the device; `exit` names an early exit, None the final classifier."""

    exit: str | None = None

    def describe(self) -> str:
        return "local" if self.exit is None else f"local@{self.exit}"


@dataclass(frozen=True)
class Split:
    """Run the head up to `point` on the device, send the activation encoded by `codec`."""

    point: str
    codec: str = "fp16"

    def describe(self) -> str:
        return f"split@{self.point}/{self.codec}"


@dataclass(frozen=True)
class Offload:
    """Send the (cropped) input image encoded by an image codec; the cloud runs the whole model."""

    codec: str = "jpeg-q90"

    def describe(self) -> str:
        return f"offload/{self.codec}"


Action = Union[Skip, Local, Split, Offload]

# The split point name under which a bundle's manifest describes the model input (used by Offload).
INPUT_POINT = "input"


def parse_action(text: str, default_codec: str | None = None) -> Action:
    """Parse the CLI form: `local`, `offload`, `skip`, or a split point name (optionally `point/codec`)."""
    name, _, codec = text.partition("/")
    codec = codec or (default_codec or "")
    if name == "local":
        return Local()
    if name == "skip":
        return Skip()
    if name in ("offload", INPUT_POINT):
        return Offload(codec) if codec else Offload()
    if not name:
        raise ValueError("empty action: use local, offload or a split point name such as b4")
    return Split(name, codec) if codec else Split(name)

"""What a policy decides for one frame: skip it, run it locally, split it, or offload it."""
from __future__ import annotations

from dataclasses import dataclass, replace
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


# How a remote action names its hedge in `describe()`: `offload/jpeg-q25/hedge:local@skip9`.
HEDGE_SEPARATOR = "/hedge:"


@dataclass(frozen=True)
class Split:
    """Run the head up to `point` on the device, send the activation encoded by `codec`.

    `hedge`: a local action the device runs while the request is in flight; its answer stands when the cloud's
    does not arrive by the deadline (SPINN's progressive inference: a late reply costs accuracy, not the frame).
    """

    point: str
    codec: str = "fp16"
    hedge: Local | None = None

    def describe(self) -> str:
        return f"split@{self.point}/{self.codec}{_hedge_suffix(self.hedge)}"


@dataclass(frozen=True)
class Offload:
    """Send the (cropped) input image encoded by an image codec; the cloud runs the whole model.

    `hedge`: as for `Split`, a local action run on the device while the image is on its way.
    """

    codec: str = "jpeg-q90"
    hedge: Local | None = None

    def describe(self) -> str:
        return f"offload/{self.codec}{_hedge_suffix(self.hedge)}"


def _hedge_suffix(hedge: Local | None) -> str:
    return "" if hedge is None else f"{HEDGE_SEPARATOR}{hedge.describe()}"


Action = Union[Skip, Local, Split, Offload]

# The split point name under which a bundle's manifest describes the model input (used by Offload).
INPUT_POINT = "input"


def parse_action(text: str, default_codec: str | None = None) -> Action:
    """Parse the CLI form: `local`, `local@EXIT`, `offload`, `skip`, or a split point name (optionally
    `point/codec`, or `split@point/codec` as `describe()` writes it); a remote one may end in `/hedge:local` or
    `/hedge:local@EXIT` (see `Split.hedge`)."""
    text, separator, hedge_text = text.partition(HEDGE_SEPARATOR)
    if separator:
        hedge = parse_action(hedge_text)
        if not isinstance(hedge, Local):
            raise ValueError(f"a hedge runs on the device: local or local@EXIT, not {hedge_text!r}")
        remote = parse_action(text, default_codec)
        if not isinstance(remote, (Split, Offload)):
            raise ValueError(f"only a split or an offload can be hedged, not {text!r}")
        return replace(remote, hedge=hedge)
    if text.startswith("local@"):
        return Local(text.removeprefix("local@"))
    name, _, codec = text.removeprefix("split@").partition("/")  # `split@b4/fp16`, as `describe()` writes it
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

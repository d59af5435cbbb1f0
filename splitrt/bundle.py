"""The deployable artifact: a directory with `manifest.json` and ONNX files, identified by a content hash.

Edge and cloud both load a bundle with `Bundle.load`, which checks every file against the sha256 in the
manifest and recomputes the content hash, so the two ends agree on exactly the same computation.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitrt.imaging import Preprocess
from splitrt.protocol import TensorSpec

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
INPUT_POINT = "input"
# Tensor names inside the exported ONNX files.
HEAD_INPUT_NAME = "image"  # uint8 NHWC crop: input of every head and of the full model
TAIL_INPUT_NAME = "activation"  # input of a tail, output of its head
OUTPUT_NAME = "logits"  # output of every tail and of the full model
# Measurements, not part of the model's identity: excluded from the content hash.
_UNHASHED_KEYS = ("content_hash", "profiles")


class BundleError(Exception):
    """A bundle that is missing, malformed or does not match its hashes."""


class UnknownSplit(BundleError):
    pass


@dataclass(frozen=True)
class SplitPoint:
    """A cut after stage `name`: the head (uint8 image -> activation) runs on the edge, the tail on the cloud."""

    name: str
    index: int
    head_file: str | None  # None for the input point: nothing runs on the edge
    tail_file: str
    activation: TensorSpec  # per sample, without the batch dimension
    raw_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "index": self.index,
            "head": self.head_file,
            "tail": self.tail_file,
            "activation": {"dtype": self.activation.dtype, "shape": list(self.activation.shape)},
            "raw_bytes": self.raw_bytes,
        }


@dataclass(frozen=True)
class ExitPoint:
    """An early exit at split point `point`: `file` maps the image to (activation, calibrated logits).

    An exit with an empty `point` is a complete shallower model: `file` maps the image to logits alone.
    """

    name: str
    point: str
    file: str
    temperature: float
    accuracy: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "point": self.point, "file": self.file, "temperature": self.temperature,
                "accuracy": self.accuracy}


@dataclass(frozen=True)
class BottleneckPoint:
    """A learned bottleneck at teacher split `split`: the edge runs `encoder_file` (uint8 image -> float latent),
    codes the rounded latent with `codec` and the integer tables in `tables_file` (hash `table_hash`), and
    the cloud runs `tail_file` (latent -> output). Actions name it like a split point, by `name`."""

    name: str
    split: str
    encoder_file: str
    tail_file: str
    latent: TensorSpec  # per sample, without the batch dimension
    codec: str
    tables_file: str
    table_hash: str

    def as_split_point(self) -> SplitPoint:
        return SplitPoint(self.name, -1, self.encoder_file, self.tail_file, self.latent, self.latent.nbytes)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "split": self.split,
            "encoder": self.encoder_file,
            "tail": self.tail_file,
            "latent": {"dtype": self.latent.dtype, "shape": list(self.latent.shape)},
            "codec": self.codec,
            "tables": self.tables_file,
            "table_hash": self.table_hash,
        }


@dataclass(frozen=True)
class Manifest:
    model_id: str
    content_hash: str
    input: TensorSpec  # per sample: (H, W, 3) uint8
    output: TensorSpec  # per sample, e.g. (1000,) float32 logits
    preprocess: Preprocess
    full_file: str
    labels_file: str | None
    splits: tuple[SplitPoint, ...]
    files: dict[str, str]
    profiles: dict[str, Any] = field(default_factory=dict)
    exits: tuple[ExitPoint, ...] = ()
    format_version: int = FORMAT_VERSION
    bottlenecks: tuple[BottleneckPoint, ...] = ()  # optional section "bottlenecks"; absent in older bundles

    def exit(self, name: str) -> ExitPoint:
        for point in self.exits:
            if point.name == name:
                return point
        known = ", ".join(e.name for e in self.exits) or "none (train them with `splitrt train exits`)"
        raise BundleError(f"bundle {self.model_id} has no early exit {name!r}; exits: {known}")

    def split(self, name: str) -> SplitPoint:
        for point in self.splits:
            if point.name == name:
                return point
        bottleneck = self.bottleneck(name)
        if bottleneck is not None:
            return bottleneck.as_split_point()
        raise UnknownSplit(
            f"bundle {self.model_id} has no split point {name!r}; it has: {', '.join(p.name for p in self.splits)}"
        )

    @property
    def tail_points(self) -> list[SplitPoint]:
        """Every point the cloud may run a tail for: the split points, then the bottlenecks' (latent -> output)."""
        return [*self.splits, *(b.as_split_point() for b in self.bottlenecks)]

    def bottleneck(self, name: str) -> BottleneckPoint | None:
        for point in self.bottlenecks:
            if point.name == name:
                return point
        return None

    @property
    def split_names(self) -> list[str]:
        return [p.name for p in self.splits]

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "model_id": self.model_id,
            "content_hash": self.content_hash,
            "input": {"dtype": self.input.dtype, "shape": list(self.input.shape), "layout": "NHWC"},
            "output": {"dtype": self.output.dtype, "shape": list(self.output.shape)},
            "preprocess": self.preprocess.to_json(),
            "full": self.full_file,
            "labels": self.labels_file,
            "splits": [p.to_json() for p in self.splits],
            "files": dict(sorted(self.files.items())),
            "profiles": self.profiles,
        } | ({"exits": [e.to_json() for e in self.exits]} if self.exits else {}) | (
            {"bottlenecks": [b.to_json() for b in self.bottlenecks]} if self.bottlenecks else {}
        )  # optional sections are left out when empty, so older manifests keep their content hash


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def content_hash(manifest_json: dict[str, Any]) -> str:
    """sha256 over the canonical JSON of the manifest without its measurements (the file hashes are in it)."""
    identity = {k: v for k, v in manifest_json.items() if k not in _UNHASHED_KEYS}
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def _spec(data: Any, where: str) -> TensorSpec:
    try:
        spec = TensorSpec(str(data["dtype"]), tuple(int(d) for d in data["shape"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"manifest: {where} must be {{'dtype': str, 'shape': [int, ...]}}, got {data!r}") from exc
    return spec


def parse_manifest(data: Any) -> Manifest:
    """Validate a manifest's JSON; errors name the bad key."""
    if not isinstance(data, dict):
        raise BundleError("manifest: top level must be a JSON object")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(f"manifest: format_version {version!r} is not supported (this splitrt reads {FORMAT_VERSION})")
    try:
        splits = tuple(
            SplitPoint(
                name=str(s["name"]),
                index=int(s["index"]),
                head_file=None if s["head"] is None else str(s["head"]),
                tail_file=str(s["tail"]),
                activation=_spec(s["activation"], f"splits[{i}].activation"),
                raw_bytes=int(s["raw_bytes"]),
            )
            for i, s in enumerate(data["splits"])
        )
        manifest = Manifest(
            model_id=str(data["model_id"]),
            content_hash=str(data["content_hash"]),
            input=_spec(data["input"], "input"),
            output=_spec(data["output"], "output"),
            preprocess=Preprocess.from_json(data["preprocess"]),
            full_file=str(data["full"]),
            labels_file=None if data.get("labels") is None else str(data["labels"]),
            splits=splits,
            files={str(k): str(v) for k, v in data["files"].items()},
            profiles=dict(data.get("profiles") or {}),
            exits=tuple(
                ExitPoint(str(e["name"]), str(e["point"]), str(e["file"]), float(e["temperature"]),
                          float(e["accuracy"]))
                for e in data.get("exits") or []
            ),
            bottlenecks=tuple(
                BottleneckPoint(
                    name=str(b["name"]),
                    split=str(b["split"]),
                    encoder_file=str(b["encoder"]),
                    tail_file=str(b["tail"]),
                    latent=_spec(b["latent"], f"bottlenecks[{i}].latent"),
                    codec=str(b["codec"]),
                    tables_file=str(b["tables"]),
                    table_hash=str(b["table_hash"]),
                )
                for i, b in enumerate(data.get("bottlenecks") or [])
            ),
        )
    except KeyError as exc:
        raise BundleError(f"manifest: missing key {exc.args[0]!r}") from exc
    except (TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"manifest: malformed ({exc})") from exc
    split_names = {p.name for p in splits}
    for bottleneck in manifest.bottlenecks:
        if bottleneck.name in split_names or bottleneck.split not in split_names:
            raise BundleError(f"manifest: bottleneck {bottleneck.name!r} must have a new name and an existing split")
        for name in (bottleneck.encoder_file, bottleneck.tail_file, bottleneck.tables_file):
            if name not in manifest.files:
                raise BundleError(f"manifest: bottleneck {bottleneck.name}: file {name} is not in the file list")
    for point in splits:
        expected = point.activation.nbytes
        if point.raw_bytes != expected:
            raise BundleError(f"manifest: split {point.name}: raw_bytes {point.raw_bytes} != activation size {expected}")
    return manifest


@dataclass
class Bundle:
    root: Path
    manifest: Manifest
    labels: list[str]

    @property
    def content_hash(self) -> str:
        return self.manifest.content_hash

    @property
    def model_id(self) -> str:
        return self.manifest.model_id

    def path(self, file_name: str) -> Path:
        return self.root / file_name

    @classmethod
    def load(cls, root: str | Path, verify: bool = True) -> "Bundle":
        """Load and (by default) verify every file hash and the content hash."""
        root = Path(root)
        manifest_path = root / MANIFEST_NAME
        if not manifest_path.is_file():
            raise BundleError(
                f"{root} is not a bundle (no {MANIFEST_NAME}); create one with "
                f"`splitrt partition export --model NAME --out {root}`"
            )
        try:
            data = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise BundleError(f"{manifest_path}: not valid JSON ({exc})") from exc
        manifest = parse_manifest(data)
        for name in manifest.files:
            if Path(name).name != name:
                raise BundleError(f"manifest: file name {name!r} must be a plain name inside the bundle")
        if verify:
            for name, expected in manifest.files.items():
                path = root / name
                if not path.is_file():
                    raise BundleError(f"{root}: file {name} listed in the manifest is missing")
                actual = sha256_file(path)
                if actual != expected:
                    raise BundleError(f"{root}: {name} does not match its sha256 in the manifest (corrupt or edited)")
            recomputed = content_hash(data)
            if recomputed != manifest.content_hash:
                raise BundleError(
                    f"{root}: content hash {manifest.content_hash} does not match the manifest ({recomputed})"
                )
        labels: list[str] = []
        if manifest.labels_file:
            labels = (root / manifest.labels_file).read_text(encoding="utf-8").splitlines()
        return cls(root=root, manifest=manifest, labels=labels)

    def label(self, class_index: int) -> str:
        if 0 <= class_index < len(self.labels):
            return self.labels[class_index]
        return f"class {class_index}"


def publish(staging: Path, out_dir: Path) -> Bundle:
    """Replace `out_dir` with a finished staging directory in one rename, so a reader never sees half a bundle."""
    staging.chmod(0o755)  # mkdtemp makes it private; a bundle is read by other users (a service account)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(staging, out_dir)
    return Bundle.load(out_dir)

"""Bottlenecks inside a bundle: add trained ones to a copy of a bundle (torch), and build their entropy codec
from the bundle's tables at run time (numpy + constriction only)."""
from __future__ import annotations

import json
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from splitrt.bundle import MANIFEST_NAME, BottleneckPoint, Bundle, BundleError, content_hash, publish, sha256_file
from splitrt.codecs.bottleneck.entropy import ENTROPY_CODEC_ID, EntropyCodec, EntropyTables, TableError

POINT_PREFIX = "bn-"
_CODECS: dict[tuple[str, str], EntropyCodec] = {}


def point_name(artifact: str, step: float) -> str:
    """The bundle's name for one operating point of a trained bottleneck: `bn-<artifact name>-s<step>`."""
    return f"{POINT_PREFIX}{artifact}-s{step:g}"


def parse_point_name(name: str) -> tuple[str, str] | None:
    """(artifact name, step as written) of a bottleneck point's name; None for any other split point."""
    if not name.startswith(POINT_PREFIX) or "-s" not in name:
        return None
    artifact, step = name[len(POINT_PREFIX):].rsplit("-s", 1)
    return artifact, step
_LOCK = threading.Lock()


def entropy_codec(bundle: Bundle, point: BottleneckPoint) -> EntropyCodec:
    """The entropy codec of a bundle's bottleneck, built once per (bundle, point); checks the table hash."""
    key = (bundle.content_hash, point.name)
    codec = _CODECS.get(key)
    if codec is None:
        with _LOCK:
            codec = _CODECS.get(key)
            if codec is None:
                try:
                    data = json.loads(bundle.path(point.tables_file).read_text(encoding="utf-8"))
                    tables = EntropyTables.from_json(data)
                except (OSError, json.JSONDecodeError, TableError) as exc:
                    raise BundleError(f"bottleneck {point.name}: cannot read its tables ({exc})") from exc
                if tables.table_hash != point.table_hash:
                    raise BundleError(f"bottleneck {point.name}: tables hash {tables.table_hash}, "
                                      f"the manifest says {point.table_hash}")
                codec = EntropyCodec(tables)
                _CODECS[key] = codec
    return codec


def add_bottlenecks(bundle_dir: str | Path, artifacts: Sequence[Path], out_dir: str | Path) -> Bundle:
    """Copy the bundle at `bundle_dir` to `out_dir` (atomically) with the trained bottlenecks in `artifacts`
    exported as ONNX (edge encoder, cloud tail) and listed in the manifest's `bottlenecks` section."""
    from splitrt.codecs.bottleneck.train import export_onnx, load_artifact
    from splitrt.partition.models import load_model

    base = Bundle.load(bundle_dir)
    model = load_model(base.model_id)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        data = json.loads((base.root / MANIFEST_NAME).read_text(encoding="utf-8"))
        for name in data["files"]:
            shutil.copy2(base.root / name, staging / name)
        points = [b.to_json() for b in base.manifest.bottlenecks]
        for folder in artifacts:
            net, description = load_artifact(folder)
            split = str(description["config"]["split"])
            if description["config"]["model"] != base.model_id:
                raise BundleError(f"{folder}: trained for {description['config']['model']}, the bundle is {base.model_id}")
            if not description.get("operating_points"):
                raise BundleError(f"{folder}: no operating points; run `splitrt codecs fit-tables` first")
            for point in description["operating_points"]:
                step = float(point["step"])
                name = point_name(str(description["name"]), step)
                files = {"encoder": f"{name}_encoder.onnx", "tail": f"{name}_tail.onnx", "tables": f"{name}_tables.json"}
                export_onnx(model, net, split, staging / files["encoder"], staging / files["tail"], step)
                shutil.copy2(Path(folder) / point["tables"], staging / files["tables"])
                tables = EntropyTables.from_json(json.loads((staging / files["tables"]).read_text(encoding="utf-8")))
                points = [p for p in points if p["name"] != name] + [{
                    "name": name,
                    "split": split,
                    **files,
                    "latent": {"dtype": "float32", "shape": list(tables.latent_shape)},
                    "codec": ENTROPY_CODEC_ID,
                    "table_hash": tables.table_hash,
                }]
        data["bottlenecks"] = points
        data["files"] = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file() and p.name != MANIFEST_NAME}
        data["content_hash"] = content_hash(data)
        (staging / MANIFEST_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        check_bottlenecks(Bundle.load(staging))
        return publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def check_bottlenecks(bundle: Bundle, seed: int = 0) -> None:
    """Run every bottleneck through ONNX Runtime and its entropy codec on a random image: the decoded latent
    equals the rounded one and the output has the model's shape; raises BundleError otherwise."""
    from splitrt.bundle import HEAD_INPUT_NAME, TAIL_INPUT_NAME
    from splitrt.devices.ort import create_session
    from splitrt.protocol import TensorSpec

    crop = bundle.manifest.preprocess.crop
    image = np.random.default_rng(seed).integers(0, 256, (1, crop, crop, 3), dtype=np.uint8)
    for point in bundle.manifest.bottlenecks:
        latent = create_session(bundle.path(point.encoder_file)).run(None, {HEAD_INPUT_NAME: image})[0]
        codec = entropy_codec(bundle, point)
        spec = TensorSpec("float32", (1, *point.latent.shape))
        decoded = codec.decode(codec.encode(latent), spec)
        expected = codec.tables.symbols(latent) + np.asarray(codec.tables.offsets).reshape(1, -1, 1, 1)
        if not np.array_equal(decoded, expected.astype(np.float32)):
            raise BundleError(f"bottleneck {point.name}: entropy round trip does not restore the latent")
        output = create_session(bundle.path(point.tail_file)).run(None, {TAIL_INPUT_NAME: decoded})[0]
        if output.shape[1:] != bundle.manifest.output.shape:
            raise BundleError(f"bottleneck {point.name}: tail output {output.shape}, expected {bundle.manifest.output.shape}")

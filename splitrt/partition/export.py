"""Export a partitioned model to a bundle: the full model, and a head and a tail ONNX file per split point."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from splitrt.bundle import (
    FORMAT_VERSION,
    HEAD_INPUT_NAME,
    INPUT_POINT,
    MANIFEST_NAME,
    OUTPUT_NAME,
    TAIL_INPUT_NAME,
    Bundle,
    content_hash,
    publish,
    sha256_file,
)
from splitrt.bundle import BundleError
from splitrt.partition.models import PartitionedModel, load_model
from splitrt.protocol import TensorSpec

OPSET = 17


def _torch_dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_name: str) -> None:
    """Export with a dynamic batch dimension; the exporter's chatter is kept off the console."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (example,),
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
        )


def export_bundle(
    model: PartitionedModel,
    out_dir: str | Path,
    splits: Iterable[str] | None = None,
    verify: bool = True,
    progress: bool = True,
) -> Bundle:
    """Write a bundle for `model` into `out_dir` (replaced atomically) and return it, loaded and verified.

    `splits` chooses a subset of the model's split points (default: all). With `verify`, every head + tail
    is run through ONNX Runtime on a random image and compared with the full model. Profiles stored in the
    bundle being replaced are kept when its content hash is the new one (the same files: the measurements
    still hold); what else the replaced bundle had (other profiles, trained exits, bottlenecks) is named in
    a warning (`kept_profiles`).
    """
    out_dir = Path(out_dir)
    chosen = list(model.split_names if splits is None else splits)
    for name in chosen:
        if name not in model.split_names:
            raise KeyError(f"{model.model_id} has no split point {name!r}; split points: {', '.join(model.split_names)}")
    crop = model.preprocess.crop
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (1, crop, crop, 3), dtype=torch.uint8, generator=generator)

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        with torch.no_grad():
            full = model.full()
            output = full(image)
            _export_onnx(full, image, staging / "full.onnx", HEAD_INPUT_NAME, OUTPUT_NAME)
            points = [
                {
                    "name": INPUT_POINT,
                    "index": 0,
                    "head": None,
                    "tail": "full.onnx",
                    "activation": {"dtype": "uint8", "shape": [crop, crop, 3]},
                    "raw_bytes": crop * crop * 3,
                }
            ]
            for name in tqdm(chosen, desc=f"export {model.model_id}", unit="split", disable=not progress):
                index = model.split_names.index(name) + 1
                head, tail = model.head(name), model.tail(name)
                activation = head(image)
                _export_onnx(head, image, staging / f"head_{name}.onnx", HEAD_INPUT_NAME, TAIL_INPUT_NAME)
                _export_onnx(tail, activation, staging / f"tail_{name}.onnx", TAIL_INPUT_NAME, OUTPUT_NAME)
                spec = TensorSpec(_torch_dtype_name(activation), tuple(activation.shape[1:]))
                points.append(
                    {
                        "name": name,
                        "index": index,
                        "head": f"head_{name}.onnx",
                        "tail": f"tail_{name}.onnx",
                        "activation": {"dtype": spec.dtype, "shape": list(spec.shape)},
                        "raw_bytes": spec.nbytes,
                    }
                )
        (staging / "labels.txt").write_text("\n".join(model.labels) + "\n", encoding="utf-8")
        files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        manifest = {
            "format_version": FORMAT_VERSION,
            "model_id": model.model_id,
            "input": {"dtype": "uint8", "shape": [crop, crop, 3], "layout": "NHWC"},
            "output": {"dtype": _torch_dtype_name(output), "shape": list(output.shape[1:])},
            "preprocess": model.preprocess.to_json(),
            "full": "full.onnx",
            "labels": "labels.txt",
            "splits": points,
            "files": files,
            "profiles": {},
        }
        manifest["content_hash"] = content_hash(manifest)
        manifest["profiles"] = kept_profiles(out_dir, manifest["content_hash"])
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        if verify:
            verify_bundle(Bundle.load(staging), image.numpy())
        return publish(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def kept_profiles(out_dir: Path, new_content_hash: str) -> dict[str, Any]:
    """The profiles stored in the bundle at `out_dir` that still hold for a bundle of `new_content_hash`:
    all of them when the content hash is unchanged (and each profile was measured on that content), none
    otherwise. What the replaced bundle had and the new one will not (profiles, trained early exits,
    bottlenecks) is named in a warning."""
    manifest_path = out_dir / MANIFEST_NAME
    try:
        previous = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}  # no bundle there, or not one we can read: nothing to keep
    if not isinstance(previous, dict):
        return {}
    profiles = previous.get("profiles")
    profiles = profiles if isinstance(profiles, dict) else {}
    same_content = previous.get("content_hash") == new_content_hash
    kept = {
        name: profile
        for name, profile in profiles.items()
        if same_content and isinstance(profile, dict) and profile.get("content_hash") == new_content_hash
    }
    lost = [f"its stored profiles {', '.join(sorted(set(profiles) - set(kept)))}"] if set(profiles) - set(kept) else []
    for section, what in (("exits", "early exits"), ("bottlenecks", "bottlenecks")):
        names = [str(entry.get("name")) for entry in previous.get(section) or [] if isinstance(entry, dict)]
        if names:
            lost.append(f"its {what} {', '.join(names)}")
    if lost:
        warnings.warn(
            f"{out_dir}: replacing a bundle of content {str(previous.get('content_hash'))[:19]} with "
            f"{new_content_hash[:19]} drops {'; '.join(lost)} (export to a new directory to keep them)",
            stacklevel=3,
        )
    return kept


def verify_bundle(bundle: Bundle, image: np.ndarray, rtol: float = 1e-3, atol: float = 1e-4) -> None:
    """Run every head + tail in ONNX Runtime and compare with the full model; raises AssertionError."""
    from splitrt.devices.ort import create_session

    full = create_session(bundle.path(bundle.manifest.full_file))
    expected = full.run(None, {HEAD_INPUT_NAME: image})[0]
    for point in bundle.manifest.splits:
        if point.head_file is None:
            continue
        activation = create_session(bundle.path(point.head_file)).run(None, {HEAD_INPUT_NAME: image})[0]
        got = create_session(bundle.path(point.tail_file)).run(None, {TAIL_INPUT_NAME: activation})[0]
        if not np.allclose(got, expected, rtol=rtol, atol=atol):
            diff = float(np.abs(got - expected).max())
            raise AssertionError(f"split {point.name}: head+tail differs from the full model by up to {diff:.3g}")


def load_or_export(path: str | Path, model_id: str) -> Bundle:
    """The bundle at `path` if it is a valid bundle of `model_id`, else a fresh export of it there."""
    path = Path(path)
    try:
        bundle = Bundle.load(path)
        if bundle.model_id == model_id:
            print(f"bundle: {path} ({bundle.model_id}, {bundle.content_hash[:19]}, cached)")
            return bundle
    except BundleError:
        pass
    print(f"bundle: exporting {model_id} to {path} (once; later runs reuse it)")
    return export_bundle(load_model(model_id), path)

"""Early exits: small heads attached at a few depths, trained by self-distillation, calibrated, exported.

An exit head maps the activation at its point to the model's own pooled feature (the input of its final
classifier) and reuses that classifier, frozen: it learns a feature mapping rather than 1000 class
boundaries, so what it learns on some classes carries over to others. The loss is the feature error plus
the KL divergence to the full model's softened logits (no labels). A temperature fitted on held-out
images makes a confidence threshold mean what it says. Each exit is exported as ONNX: uint8 image in,
the activation at its point (to continue locally when it is not confident) and calibrated logits out.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F
from tqdm import tqdm

from splitrt.bundle import HEAD_INPUT_NAME, MANIFEST_NAME, TAIL_INPUT_NAME, Bundle, content_hash, sha256_file
from splitrt.imaging import Preprocess, crop_for_model, load_rgb
from splitrt.partition.models import StagedModel

EXIT_OUTPUT_NAME = "exit_logits"
DEFAULT_EXIT_POINTS = {"efficientnet-lite0": ("b4", "b7", "b10", "b14")}
# Shallower variants: identity-residual blocks dropped. EfficientNet is trained with stochastic depth
# (drop-connect), so it degrades gracefully when such blocks are skipped at inference; no training needed.
DEFAULT_SKIP_VARIANTS = {
    "efficientnet-lite0": {
        "skip2": ("b13", "b14"),
        "skip4": ("b7", "b10", "b13", "b14"),
        "skip6": ("b6", "b7", "b9", "b10", "b13", "b14"),
        "skip9": ("b2", "b4", "b6", "b7", "b9", "b10", "b12", "b13", "b14"),
    }
}


POOLED_SIDE = 7  # exit heads first average-pool their input to 7x7: cheap on the device and to train


def pooled_side(side: int) -> int:
    """7 where the activation's side is a multiple of 7 (exportable as a plain average pool), else unpooled."""
    return POOLED_SIDE if side % POOLED_SIDE == 0 else side


class ExitHead(nn.Module):
    """activation (N, C, H, W) -> 7x7 average pool -> predicted pooled feature -> the model's classifier (frozen)."""

    def __init__(
        self, in_channels: int, side: int, feature_dim: int, classifier: nn.Module, hidden: int = 256
    ) -> None:
        super().__init__()
        factor = side // pooled_side(side)
        self.pool = nn.AvgPool2d(factor) if factor > 1 else nn.Identity()  # fixed kernel: exportable
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(hidden, feature_dim),
        )
        self.classifier = classifier
        for parameter in self.classifier.parameters():
            parameter.requires_grad_(False)

    def forward(self, activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_pooled(self.pool(activation))

    def from_pooled(self, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head after its pooling (training runs on pooled activations cached once)."""
        feature = self.body(pooled)
        return feature, self.classifier(feature)


class ExitModel(nn.Module):
    """What is exported: image -> (activation at the exit point, calibrated exit logits)."""

    def __init__(self, head: nn.Module, exit_head: ExitHead, temperature: float) -> None:
        super().__init__()
        self.head, self.exit_head, self.temperature = head, exit_head, temperature

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        activation = self.head(image)
        return activation, self.exit_head(activation)[1] / self.temperature


@dataclass(frozen=True)
class ExitReport:
    name: str
    point: str
    temperature: float
    accuracy: float  # top-1 against labels on the evaluation images
    agreement: float  # top-1 equal to the full model's
    ece_before: float
    ece_after: float
    file: str


def augmented_crops(paths: Sequence[Path], copies: int, prep: Preprocess, seed: int) -> list[np.ndarray]:
    """The center crop of each image plus `copies - 1` random resized crops with flips (uint8 HWC)."""
    rng = random.Random(seed)
    out = []
    for path in paths:
        pixels = load_rgb(path)
        image = Image.fromarray(pixels)
        out.append(crop_for_model(pixels, prep))
        for _ in range(copies - 1):
            width, height = image.size
            scale = rng.uniform(0.35, 1.0)
            side = int(min(width, height) * math.sqrt(scale))
            left, top = rng.randint(0, width - side), rng.randint(0, height - side)
            patch = image.crop((left, top, left + side, top + side)).resize((prep.crop, prep.crop), Image.BILINEAR)
            if rng.random() < 0.5:
                patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
            out.append(np.asarray(patch, dtype=np.uint8))
    return out


@torch.no_grad()
def teacher_pass(model: StagedModel, crops: Sequence[np.ndarray], points: Sequence[str], batch: int = 32,
                 desc: str = "teacher") -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Activations at `points` pooled to 7x7 (fp16, to save memory), pooled features and logits of the full model."""
    normalize = model.normalizer()
    stored: dict[str, list[torch.Tensor]] = {p: [] for p in points}
    features, logits = [], []
    for start in tqdm(range(0, len(crops), batch), desc=desc, unit="batch"):
        x = normalize(torch.from_numpy(np.stack(crops[start : start + batch])))
        for name, stage in model.stages[:-1]:
            x = stage(x)
            if name in stored:
                stored[name].append(F.adaptive_avg_pool2d(x, pooled_side(x.shape[-1])).half())
        features.append(x)
        logits.append(model.stages[-1][1](x))
    return {p: torch.cat(v) for p, v in stored.items()}, torch.cat(features), torch.cat(logits)


def train_exit(activations: torch.Tensor, features: torch.Tensor, logits: torch.Tensor, classifier: nn.Module,
               epochs: int, side: int, temperature: float = 2.0, seed: int = 0, desc: str = "exit") -> ExitHead:
    """Train on pooled activations (from `teacher_pass`) of a point whose activation side is `side`."""
    torch.manual_seed(seed)
    head = ExitHead(activations.shape[1], side, features.shape[1], classifier)
    optimizer = torch.optim.AdamW([p for p in head.body.parameters()], lr=2e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(activations) / 64)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    feature_scale = features.pow(2).mean()
    head.train()
    for _ in tqdm(range(epochs), desc=desc, unit="epoch"):
        order = torch.randperm(len(activations))
        for start in range(0, len(order), 64):
            index = order[start : start + 64]
            predicted_feature, predicted_logits = head.from_pooled(activations[index].float())
            loss = F.mse_loss(predicted_feature, features[index]) / feature_scale + temperature**2 * F.kl_div(
                F.log_softmax(predicted_logits / temperature, 1), F.softmax(logits[index] / temperature, 1),
                reduction="batchmean",
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    return head.eval()


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between confidence and accuracy, averaged over confidence bins weighted by their size."""
    confidence = probabilities.max(1)
    correct = probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    error = 0.0
    for low, high in zip(edges[:-1], edges[1:]):
        inside = (confidence > low) & (confidence <= high)
        if inside.any():
            error += inside.mean() * abs(confidence[inside].mean() - correct[inside].mean())
    return float(error)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature that minimises the negative log-likelihood of the labels (temperature scaling)."""
    log_t = torch.zeros(1, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def export_exit(model: StagedModel, point: str, head: ExitHead, temperature: float, path: Path) -> None:
    exit_model = ExitModel(model.head(point), head, temperature).eval()
    crop = model.preprocess.crop
    example = torch.zeros((1, crop, crop, 3), dtype=torch.uint8)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            exit_model, (example,), str(path), dynamo=False, opset_version=17,
            input_names=[HEAD_INPUT_NAME], output_names=[TAIL_INPUT_NAME, EXIT_OUTPUT_NAME],
            dynamic_axes={HEAD_INPUT_NAME: {0: "batch"}, TAIL_INPUT_NAME: {0: "batch"}, EXIT_OUTPUT_NAME: {0: "batch"}},
        )


def add_exits_to_bundle(bundle_dir: Path, entries: list[dict[str, object]]) -> Bundle:
    """Record exit files in the manifest (replacing earlier exits) and recompute the hashes."""
    manifest_path = bundle_dir / MANIFEST_NAME
    data = json.loads(manifest_path.read_text(encoding="utf-8"))
    for old in data.get("exits", []):
        if old["file"] not in {e["file"] for e in entries}:
            (bundle_dir / old["file"]).unlink(missing_ok=True)
            data["files"].pop(old["file"], None)
    data["exits"] = entries
    for entry in entries:
        data["files"][str(entry["file"])] = sha256_file(bundle_dir / str(entry["file"]))
    data["files"] = dict(sorted(data["files"].items()))
    data["content_hash"] = content_hash(data)
    manifest_path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return Bundle.load(bundle_dir)


def _activation_sides(model: StagedModel) -> list[int]:
    crop = model.preprocess.crop
    sides = []
    with torch.no_grad():
        x = model.normalizer()(torch.zeros((1, crop, crop, 3), dtype=torch.uint8))
        for _, stage in model.stages[:-1]:
            x = stage(x)
            sides.append(int(x.shape[-1]) if x.ndim == 4 else 1)
    return sides


def _split_labelled(images_dir: Path) -> tuple[list[tuple[Path, int]], list[tuple[Path, int]], list[tuple[Path, int]]]:
    """Even class_index: training (4 of 5) and calibration (1 of 5) images; odd class_index: evaluation."""
    from splitrt.bench.common import read_labelled_images, select_parity

    items = read_labelled_images(images_dir)
    even = [(i.path, i.class_index) for i in select_parity(items, "even")]
    odd = [(i.path, i.class_index) for i in select_parity(items, "odd")]
    calibration = even[::5]
    train = [item for index, item in enumerate(even) if index % 5 != 0]
    return train, calibration, odd


def measure_ms(path: Path, image: np.ndarray, runs: int = 30) -> float:
    """Median ONNX Runtime time (one thread) of a model taking the uint8 image."""
    from splitrt.devices.ort import create_session
    from splitrt.devices.timing import time_calls_ms

    session = create_session(path)
    return time_calls_ms(lambda: session.run(None, {HEAD_INPUT_NAME: image}), repeats=runs).p50_ms


def train_exits(
    model: StagedModel,
    bundle_dir: str | Path,
    images_dir: str | Path,
    points: Sequence[str],
    copies: int = 8,
    epochs: int = 12,
) -> tuple[Bundle, list[dict[str, object]]]:
    """Train, calibrate, evaluate and export one exit per point into the bundle; returns the rows of the report."""
    bundle_dir = Path(bundle_dir)
    bundle = Bundle.load(bundle_dir)
    if bundle.model_id != model.model_id:
        raise ValueError(f"bundle {bundle_dir} holds {bundle.model_id}, not {model.model_id}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    prep = model.preprocess
    train, calibration, evaluation = _split_labelled(Path(images_dir))
    cache = bundle_dir.parent / f".{bundle_dir.name}-exit-teacher-{copies}-{'-'.join(points)}.pt"
    if cache.is_file():  # our own file of plain tensors: loaded without unpickling arbitrary objects
        saved = torch.load(cache, weights_only=True)
        acts, features, logits = saved["acts"], saved["features"], saved["logits"]
    else:
        crops = augmented_crops([p for p, _ in train], copies, prep, seed=0)
        acts, features, logits = teacher_pass(model, crops, points, desc="teacher (training crops)")
        torch.save({"acts": acts, "features": features, "logits": logits}, cache)
    calib_crops = [crop_for_model(load_rgb(p), prep) for p, _ in calibration]
    calib_acts, _, _ = teacher_pass(model, calib_crops, points, desc="teacher (calibration)")
    eval_crops = [crop_for_model(load_rgb(p), prep) for p, _ in evaluation]
    eval_acts, _, eval_logits = teacher_pass(model, eval_crops, points, desc="teacher (evaluation)")
    calib_labels = torch.tensor([c for _, c in calibration])
    eval_labels = np.array([c for _, c in evaluation])
    teacher_top1 = eval_logits.argmax(1).numpy()
    classifier = model.stages[-1][1]
    probe_image = eval_crops[0][None]
    full_ms = measure_ms(bundle.path(bundle.manifest.full_file), probe_image)
    rows: list[dict[str, object]] = [{
        "exit": "final", "point": "-", "temperature": 1.0,
        "accuracy": float((teacher_top1 == eval_labels).mean()), "agreement": 1.0,
        "ece_before": expected_calibration_error(F.softmax(eval_logits, 1).numpy(), eval_labels),
        "ece_after": float("nan"), "device_ms_p50": full_ms, "device_share": 1.0,
    }]
    entries = []
    for point in points:
        side = dict(zip(model.split_names, _activation_sides(model)))[point]
        head = train_exit(acts[point], features, logits, classifier, epochs, side, desc=f"train exit@{point}")
        with torch.no_grad():
            calib_logits = head.from_pooled(calib_acts[point].float())[1]
            raw_eval = head.from_pooled(eval_acts[point].float())[1]
        temperature = fit_temperature(calib_logits, calib_labels)
        before = F.softmax(raw_eval, 1).numpy()
        after = F.softmax(raw_eval / temperature, 1).numpy()
        file_name = f"exit_{point}.onnx"
        export_exit(model, point, head, temperature, bundle_dir / file_name)
        device_ms = measure_ms(bundle_dir / file_name, probe_image)
        row = {
            "exit": f"exit@{point}", "point": point, "temperature": round(temperature, 4),
            "accuracy": float((before.argmax(1) == eval_labels).mean()),
            "agreement": float((before.argmax(1) == teacher_top1).mean()),
            "ece_before": expected_calibration_error(before, eval_labels),
            "ece_after": expected_calibration_error(after, eval_labels),
            "device_ms_p50": device_ms, "device_share": device_ms / full_ms,
        }
        rows.append(row)
        entries.append({"name": point, "point": point, "file": file_name, "temperature": temperature,
                        "accuracy": row["accuracy"]})
    kept = [e.to_json() for e in bundle.manifest.exits if not e.point]  # shallower variants stay
    return add_exits_to_bundle(bundle_dir, kept + entries), rows


def skipped_model(model: StagedModel, skip: Sequence[str]) -> nn.Module:
    """The full model (uint8 image in) with the named stages removed; each must keep its input's shape."""
    crop = model.preprocess.crop
    stages = []
    with torch.no_grad():
        x = model.normalizer()(torch.zeros((1, crop, crop, 3), dtype=torch.uint8))
        for name, stage in model.stages:
            y = stage(x)
            if name in skip:
                if y.shape != x.shape:
                    raise ValueError(f"stage {name} changes the shape {tuple(x.shape)} -> {tuple(y.shape)}: it cannot be skipped")
            else:
                stages.append(stage)
            x = y
    missing = set(skip) - {n for n, _ in model.stages}
    if missing:
        raise KeyError(f"{model.model_id} has no stage(s) {', '.join(sorted(missing))}")
    return nn.Sequential(model.normalizer(), *stages).eval()


def add_skip_variants(model: StagedModel, bundle_dir: str | Path, images_dir: str | Path,
                      variants: dict[str, Sequence[str]]) -> tuple[Bundle, list[dict[str, object]]]:
    """Export each variant (a complete local model), measure it on the odd-class images, record it as an exit."""
    bundle_dir = Path(bundle_dir)
    bundle = Bundle.load(bundle_dir)
    _, _, evaluation = _split_labelled(Path(images_dir))
    crops = [crop_for_model(load_rgb(p), model.preprocess) for p, _ in evaluation]
    labels = np.array([c for _, c in evaluation])
    batch = torch.from_numpy(np.stack(crops))
    with torch.no_grad():
        full_top1 = model.full()(batch).argmax(1).numpy()
    full_ms = measure_ms(bundle.path(bundle.manifest.full_file), crops[0][None])
    entries = [e.to_json() for e in bundle.manifest.exits if e.point != ""]
    rows = []
    for name, skip in variants.items():
        network = skipped_model(model, skip)
        with torch.no_grad():
            top1 = network(batch).argmax(1).numpy()
        file_name = f"exit_{name}.onnx"
        example = torch.zeros((1, model.preprocess.crop, model.preprocess.crop, 3), dtype=torch.uint8)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (example,), str(bundle_dir / file_name), dynamo=False, opset_version=17,
                              input_names=[HEAD_INPUT_NAME], output_names=[EXIT_OUTPUT_NAME],
                              dynamic_axes={HEAD_INPUT_NAME: {0: "batch"}, EXIT_OUTPUT_NAME: {0: "batch"}})
        device_ms = measure_ms(bundle_dir / file_name, crops[0][None])
        accuracy = float((top1 == labels).mean())
        rows.append({"exit": name, "skipped": ",".join(skip), "accuracy": accuracy,
                     "agreement": float((top1 == full_top1).mean()), "device_ms_p50": device_ms,
                     "device_share": device_ms / full_ms})
        entries = [e for e in entries if e["name"] != name]
        entries.append({"name": name, "point": "", "file": file_name, "temperature": 1.0, "accuracy": accuracy})
    return add_exits_to_bundle(bundle_dir, entries), rows

"""Early exits: small heads attached at a few depths, trained by self-distillation, calibrated, exported.

An exit head maps the activation at its point to the model's own pooled feature (the input of its final
classifier) and reuses that classifier, frozen: it learns a feature mapping rather than class boundaries,
so that what it learns on some classes may carry over to others. The loss is the feature error plus
the KL divergence to the full model's softened logits (no labels). A temperature fitted on held-out
images makes a confidence threshold mean what it says. Each exit is exported as ONNX: uint8 image in,
the activation at its point (to continue locally when it is not confident) and calibrated logits out.
Any staged or traced model works: EfficientNet-Lite0 on ImageNet images, the CIFAR-10 ResNets on CIFAR.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import fx, nn
from torch.nn import functional as F
from tqdm import tqdm

from splitrt.bundle import HEAD_INPUT_NAME, MANIFEST_NAME, TAIL_INPUT_NAME, Bundle, content_hash, sha256_file
from splitrt.partition.exit_data import ExitImages, load_exit_images
from splitrt.partition.models import PartitionedModel, StagedModel

EXIT_OUTPUT_NAME = "exit_logits"
DEFAULT_EXIT_POINTS = {
    "efficientnet-lite0": ("b4", "b7", "b10", "b14"),
    # the end of stage 1, the middle and end of stage 2, the middle of stage 3 (of 27 residual blocks)
    "resnet56-cifar10": ("layer1.8", "layer2.4", "layer2.8", "layer3.4"),
}
CONFIDENCE_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95)
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


POOLED_SIDES = (7, 8)  # exit heads first average-pool their input to 7x7 or 8x8: cheap on the device and to train


def pooled_side(side: int) -> int:
    """7 or 8 where the activation's side is a multiple of it (exportable as a plain average pool), else unpooled."""
    return next((p for p in POOLED_SIDES if side % p == 0), side)


class ExitHead(nn.Module):
    """activation (N, C, H, W) -> 7x7 or 8x8 average pool -> predicted pooled feature -> the model's classifier
    (frozen)."""

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


def feature_point(model: PartitionedModel) -> str:
    """The last split point: the pooled feature that the model's final classifier takes."""
    return model.split_names[-1]


def final_classifier(model: PartitionedModel) -> nn.Module:
    """The model after its feature point (a linear layer for the models here); exit heads reuse it, frozen."""
    return model.tail(feature_point(model))


class _ValueRecorder(fx.Interpreter):
    """Runs a traced graph and keeps the values of the named nodes."""

    def __init__(self, graph_module: fx.GraphModule, nodes: set[str]) -> None:
        super().__init__(graph_module)
        self.nodes, self.values = nodes, {}

    def run_node(self, node: fx.Node) -> object:
        value = super().run_node(node)
        if node.name in self.nodes:  # a copy: a later in-place op (x += y, relu_) would change the value kept
            self.values[node.name] = value.clone()
        return value


def activation_recorder(model: PartitionedModel, points: Sequence[str]) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """uint8 image batch -> the activation at each of `points`, in one pass of the model."""
    normalize = model.normalizer()
    wanted = set(points)
    unknown = wanted - set(model.split_names)
    if unknown:
        raise KeyError(f"{model.model_id} has no split point(s) {', '.join(sorted(unknown))}; "
                       f"split points: {', '.join(model.split_names)}")
    if isinstance(model, StagedModel):
        def staged(images: torch.Tensor) -> dict[str, torch.Tensor]:
            x, out = normalize(images), {}
            for name, stage in model.stages[:-1]:
                x = stage(x)
                if name in wanted:
                    out[name] = x.clone()  # as below: safe from a later stage's in-place ops
            return out
        return staged
    cut = getattr(model, "cut", None)
    graph_module = getattr(model, "graph_module", None)
    if cut is None or graph_module is None:
        raise TypeError(f"{type(model).__name__} is neither staged nor traced: cannot record its activations")
    node_of = {p: cut(p).node for p in points}

    def traced(images: torch.Tensor) -> dict[str, torch.Tensor]:
        recorder = _ValueRecorder(graph_module, set(node_of.values()))
        recorder.run(normalize(images))
        return {p: recorder.values[node] for p, node in node_of.items()}
    return traced


@torch.no_grad()
def teacher_pass(model: PartitionedModel, crops: Sequence[np.ndarray], points: Sequence[str], batch: int = 32,
                 desc: str = "teacher") -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Activations at `points` pooled to 7x7 or 8x8, pooled features and logits of the full model. The pooled
    activations are kept in fp16 to save memory (the exported exit runs in fp32; the difference is rounding)."""
    features_at = feature_point(model)
    record = activation_recorder(model, [*points, features_at])
    classifier = final_classifier(model)
    stored: dict[str, list[torch.Tensor]] = {p: [] for p in points}
    features, logits = [], []
    for start in tqdm(range(0, len(crops), batch), desc=desc, unit="batch"):
        values = record(torch.from_numpy(np.stack(crops[start : start + batch])))
        for point in points:
            x = values[point]
            stored[point].append(F.adaptive_avg_pool2d(x, pooled_side(x.shape[-1])).half())
        features.append(values[features_at])
        logits.append(classifier(values[features_at]))
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


def export_exit(model: PartitionedModel, point: str, head: ExitHead, temperature: float, path: Path) -> None:
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


def activation_shapes(model: PartitionedModel, points: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """Each point's activation shape for one image (C, H, W); an exit needs a spatial activation."""
    crop = model.preprocess.crop
    with torch.no_grad():
        values = activation_recorder(model, points)(torch.zeros((1, crop, crop, 3), dtype=torch.uint8))
    shapes = {p: tuple(values[p].shape[1:]) for p in points}
    flat = [p for p, shape in shapes.items() if len(shape) != 3]
    if flat:
        raise ValueError(f"an exit needs a (C, H, W) activation; {', '.join(flat)} of {model.model_id} is not one")
    return shapes


def median_ms_side_by_side(models: dict[str, tuple[Path, dict[str, np.ndarray]]], repeats: int = 30,
                           min_sample_ms: float = 10.0) -> dict[str, float]:
    """Median ONNX Runtime time (one thread) of each model on its feeds, timed in alternation (a sample of each
    per round, each sample at least `min_sample_ms` of back-to-back calls), so that the host's swings touch
    them all alike."""
    from splitrt.devices.ort import create_session
    from splitrt.devices.timing import time_interleaved_ms

    sessions = {name: (create_session(path), feeds) for name, (path, feeds) in models.items()}
    calls = {name: (lambda s=session, f=feeds: s.run(None, f)) for name, (session, feeds) in sessions.items()}
    timings = time_interleaved_ms(calls, repeats=repeats, min_sample_ms=min_sample_ms)
    return {name: timing.p50_ms for name, timing in timings.items()}


TEACHER_CACHE_FORMAT = 2  # bump when what the teacher pass stores, or how the training crops are made, changes


def _teacher_cache(bundle: Bundle, model: PartitionedModel, source: Path, copies: int, points: Sequence[str]) -> Path:
    """Where the training crops' teacher outputs are kept, keyed by everything they depend on: the model (its
    exported file's hash), its preprocessing, the images (the archive, or the folder's labels.csv), the copies,
    the points and the format."""
    stamp = source / "labels.csv" if source.is_dir() else source
    stat = stamp.stat()
    parts = (TEACHER_CACHE_FORMAT, model.model_id, bundle.manifest.files[bundle.manifest.full_file], model.preprocess,
             stamp.resolve(), stat.st_size, stat.st_mtime_ns, copies, ",".join(points))
    key = hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:12]
    return bundle.root.parent / f".{bundle.root.name}-exit-teacher-{key}.pt"


def _training_targets(model: PartitionedModel, bundle: Bundle, source: Path, images: ExitImages, copies: int,
                      points: Sequence[str]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    cache = _teacher_cache(bundle, model, source, copies, points)
    if cache.is_file():  # our own file of plain tensors: loaded without unpickling arbitrary objects
        saved = torch.load(cache, weights_only=True)
        if len(saved["features"]) == len(images.train):
            return saved["acts"], saved["features"], saved["logits"]
    acts, features, logits = teacher_pass(model, images.train, points, desc="teacher (training crops)")
    torch.save({"acts": acts, "features": features, "logits": logits}, cache)
    return acts, features, logits


def threshold_rows(exit_name: str, probabilities: np.ndarray, final_top1: np.ndarray, labels: np.ndarray,
                   exit_ms: float, tail_ms: float, thresholds: Sequence[float] = CONFIDENCE_THRESHOLDS,
                   ) -> list[dict[str, object]]:
    """What `EdgeRuntime(exit_threshold=t)` does with this exit: a frame whose calibrated confidence reaches t
    ends there, any other finishes the model from the exit's point; its accuracy and mean device time."""
    confidence, exit_top1 = probabilities.max(1), probabilities.argmax(1)
    rows = []
    for threshold in thresholds:
        stops = confidence >= threshold
        answer = np.where(stops, exit_top1, final_top1)
        rows.append({
            "exit": exit_name, "threshold": threshold, "stopped": float(stops.mean()),
            "accuracy": float((answer == labels).mean()),
            "accuracy_of_stopped": float((exit_top1[stops] == labels[stops]).mean()) if stops.any() else float("nan"),
            "device_ms_mean": exit_ms + float(1.0 - stops.mean()) * tail_ms,
        })
    return rows


@dataclass(frozen=True)
class ExitsReport:
    bundle: Bundle  # with the exits recorded
    rows: list[dict[str, object]]  # the final classifier, then one per exit
    thresholds: list[dict[str, object]]  # `threshold_rows` of each exit
    split: str  # which images trained, calibrated and evaluated


def train_exits(
    model: PartitionedModel,
    bundle_dir: str | Path,
    images_source: str | Path,
    points: Sequence[str],
    copies: int = 8,
    epochs: int = 12,
) -> ExitsReport:
    """Train, calibrate, evaluate and export one exit per point into the bundle."""
    bundle_dir, images_source = Path(bundle_dir), Path(images_source)
    bundle = Bundle.load(bundle_dir)
    if bundle.model_id != model.model_id:
        raise ValueError(f"bundle {bundle_dir} holds {bundle.model_id}, not {model.model_id}")
    shapes = activation_shapes(model, points)
    images = load_exit_images(images_source, model.preprocess, copies)
    acts, features, logits = _training_targets(model, bundle, images_source, images, copies, points)
    calib_acts, _, _ = teacher_pass(model, images.calibration, points, desc="teacher (calibration)")
    eval_acts, _, eval_logits = teacher_pass(model, images.evaluation, points, desc="teacher (evaluation)")
    eval_labels = images.evaluation_labels
    final_top1 = eval_logits.argmax(1).numpy()
    classifier = final_classifier(model)
    probe = {HEAD_INPUT_NAME: images.evaluation[0][None]}
    timed = {"final": (bundle.path(bundle.manifest.full_file), probe)}
    rows: list[dict[str, object]] = [{
        "exit": "final", "point": "-", "temperature": 1.0,
        "accuracy": float((final_top1 == eval_labels).mean()), "agreement": 1.0,
        "ece_before": expected_calibration_error(F.softmax(eval_logits, 1).numpy(), eval_labels),
        "ece_after": float("nan"),
    }]
    calibrated: dict[str, np.ndarray] = {}
    entries = []
    for point in points:
        head = train_exit(acts[point], features, logits, classifier, epochs, shapes[point][-1], desc=f"train exit@{point}")
        with torch.no_grad():
            calib_logits = head.from_pooled(calib_acts[point].float())[1]
            raw_eval = head.from_pooled(eval_acts[point].float())[1]
        temperature = fit_temperature(calib_logits, torch.from_numpy(images.calibration_labels))
        before = F.softmax(raw_eval, 1).numpy()
        after = F.softmax(raw_eval / temperature, 1).numpy()
        file_name = f"exit_{point}.onnx"
        export_exit(model, point, head, temperature, bundle_dir / file_name)
        activation = np.zeros((1, *shapes[point]), dtype=np.float32)
        timed[f"exit@{point}"] = (bundle_dir / file_name, probe)
        timed[f"tail@{point}"] = (bundle.path(bundle.manifest.split(point).tail_file), {TAIL_INPUT_NAME: activation})
        calibrated[point] = after
        rows.append({
            "exit": f"exit@{point}", "point": point, "temperature": round(temperature, 4),
            "accuracy": float((before.argmax(1) == eval_labels).mean()),
            "agreement": float((before.argmax(1) == final_top1).mean()),
            "ece_before": expected_calibration_error(before, eval_labels),
            "ece_after": expected_calibration_error(after, eval_labels),
        })
        entries.append({"name": point, "point": point, "file": file_name, "temperature": temperature,
                        "accuracy": rows[-1]["accuracy"]})
    device_ms = median_ms_side_by_side(timed)
    thresholds: list[dict[str, object]] = []
    for row in rows:
        row["device_ms_p50"] = device_ms[str(row["exit"])]
        row["device_share"] = device_ms[str(row["exit"])] / device_ms["final"]
    for point in points:
        thresholds += threshold_rows(f"exit@{point}", calibrated[point], final_top1, eval_labels,
                                     device_ms[f"exit@{point}"], device_ms[f"tail@{point}"])
    kept = [e.to_json() for e in bundle.manifest.exits if not e.point]  # shallower variants stay
    return ExitsReport(add_exits_to_bundle(bundle_dir, kept + entries), rows, thresholds, images.split)


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
    """Export each variant (a complete local model), measure it on the evaluation images (`load_exit_images`),
    record it as an exit."""
    bundle_dir = Path(bundle_dir)
    bundle = Bundle.load(bundle_dir)
    images = load_exit_images(images_dir, model.preprocess, copies=1)
    crops, labels = images.evaluation, images.evaluation_labels
    batch = torch.from_numpy(np.stack(crops))
    with torch.no_grad():
        full_top1 = model.full()(batch).argmax(1).numpy()
    probe = {HEAD_INPUT_NAME: crops[0][None]}
    timed = {"final": (bundle.path(bundle.manifest.full_file), probe)}
    entries = [e.to_json() for e in bundle.manifest.exits if e.point]  # trained exits stay
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
        timed[name] = (bundle_dir / file_name, probe)
        accuracy = float((top1 == labels).mean())
        rows.append({"exit": name, "skipped": ",".join(skip), "accuracy": accuracy,
                     "agreement": float((top1 == full_top1).mean())})
        entries = [e for e in entries if e["name"] != name]
        entries.append({"name": name, "point": "", "file": file_name, "temperature": 1.0, "accuracy": accuracy})
    device_ms = median_ms_side_by_side(timed)
    for row in rows:
        row["device_ms_p50"] = device_ms[str(row["exit"])]
        row["device_share"] = device_ms[str(row["exit"])] / device_ms["final"]
    return add_exits_to_bundle(bundle_dir, entries), rows

"""Head-network distillation of a bottleneck at a split point (torch, CPU).

1. Views: each training image's standard crop plus random resized crops and flips of it.
2. The teacher runs once over all views; its activation at the split and its logits are cached (fp16).
3. Phase 1 trains compressor + prior + decompressor on the cache alone: the restored activation must match
   the teacher's (normalised MSE) at a rate of `beta` per kilobit (cheap: the tail does not run).
4. Phase 2 adds the logits: the restored activation goes through the teacher's frozen tail and the student's
   logits must match the teacher's (KL divergence), still with the rate term.
5. Export: integer entropy tables fitted on the training latents, the student weights (npz) and a JSON
   description; `export_onnx` turns them into the edge encoder and the cloud tail.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from splitrt.codecs.bottleneck.entropy import EntropyCodec, fit_tables
from splitrt.codecs.bottleneck.model import Bottleneck, CloudTail, EdgeEncoder, distillation_loss
from splitrt.imaging import crop_for_model, load_rgb
from splitrt.partition.models import StagedModel

ARTIFACT_FORMAT = "splitrt-bottleneck-1"


@dataclass(frozen=True)
class TrainConfig:
    model: str = "efficientnet-lite0"
    split: str = "b4"
    latent_channels: int = 24
    latent_stride: int = 2  # 2: latent at half the activation's resolution; 1: at the same
    transform: str = "conv"  # "conv": small networks from scratch; "linear": per-block maps from the principal axes
    beta_per_kbit: float = 0.01
    views_per_image: int = 6
    phase1_epochs: int = 5
    phase2_steps: int = 40
    batch_size: int = 32
    learning_rate: float = 1e-3
    seed: int = 0
    init_from: str = ""  # a trained bottleneck folder to start from (fine-tuning at another beta)
    unlabelled: str = ""  # a folder of extra images (any labels or none; searched recursively), one view each

    @property
    def name(self) -> str:
        stride = "" if self.latent_stride == 2 else f"-s{self.latent_stride}"
        transform = "" if self.transform == "conv" else f"-{self.transform}"
        return f"{self.split}-c{self.latent_channels}{stride}{transform}-beta{self.beta_per_kbit:g}"


def split_images(images_dir: str | Path, parity: str) -> list[Path]:
    """Images of `labels.csv` whose class_index is even (`parity="even"`) or odd; all for `"all"`."""
    from splitrt.bench.common import read_labelled_images, select_parity

    return [item.path for item in select_parity(read_labelled_images(images_dir), parity)]


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def unlabelled_images(folder: str | Path) -> list[Path]:
    """Every image file under `folder`, in sorted order: extra training inputs whose labels are never read."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such folder of unlabelled images")
    paths = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths


def training_views(config: TrainConfig, labelled: Sequence[Path], model: StagedModel) -> Iterator[np.ndarray]:
    """`views_per_image` views of each labelled training image, then the standard crop of each unlabelled one."""
    yield from augmented_views(labelled, model, config.views_per_image, config.seed)
    if config.unlabelled:
        yield from augmented_views(unlabelled_images(config.unlabelled), model, 1, config.seed)


def augmented_views(paths: Sequence[Path], model: StagedModel, views_per_image: int, seed: int) -> Iterator[np.ndarray]:
    """The standard crop of each image, then `views_per_image - 1` random resized crops (scale 0.3-1), flipped
    half of the time."""
    rng = np.random.default_rng(seed)
    crop = model.preprocess.crop
    for path in paths:
        pixels = load_rgb(path)
        yield crop_for_model(pixels, model.preprocess)
        image = Image.fromarray(pixels)
        width, height = image.size
        for _ in range(views_per_image - 1):
            area = width * height * rng.uniform(0.3, 1.0)
            ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
            w = int(min(width, round(math.sqrt(area * ratio))))
            h = int(min(height, round(math.sqrt(area / ratio))))
            left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            view = image.crop((left, top, left + w, top + h)).resize((crop, crop), Image.BILINEAR)
            if rng.random() < 0.5:
                view = view.transpose(Image.FLIP_LEFT_RIGHT)
            yield np.asarray(view, dtype=np.uint8)


def teacher_cache(
    model: StagedModel, split: str, paths: Sequence[Path], views_per_image: int, seed: int, cache_dir: Path,
    batch_size: int = 32, unlabelled: str = "",
) -> tuple[np.ndarray, np.ndarray]:
    """The teacher's activation at `split` (fp16) and logits (fp16) for every view; cached on disk by content."""
    names: list[object] = [p.name for p in paths]
    extra = [str(p.relative_to(unlabelled)) for p in unlabelled_images(unlabelled)] if unlabelled else []
    if extra:  # the key of a cache without unlabelled images is unchanged
        names.append(extra)
    key = hashlib.sha256(
        json.dumps([model.model_id, split, names, views_per_image, seed]).encode()
    ).hexdigest()[:16]
    folder = cache_dir / f"{model.model_id}-{split}-{key}"
    if (folder / "logits.npy").is_file():
        return np.load(folder / "activations.npy", allow_pickle=False), np.load(folder / "logits.npy", allow_pickle=False)
    head, tail = model.head(split), model.tail(split)
    activations: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        with torch.no_grad():
            act = head(torch.from_numpy(np.stack(batch)))
            activations.append(act.numpy().astype(np.float16))
            logits.append(tail(act).numpy().astype(np.float16))
        batch.clear()

    total = len(paths) * views_per_image + len(extra)
    config = TrainConfig(views_per_image=views_per_image, seed=seed, unlabelled=unlabelled)
    for view in tqdm(training_views(config, paths, model), total=total, desc="teacher", unit="view"):
        batch.append(view)
        if len(batch) == batch_size:
            flush()
    if batch:
        flush()
    folder.mkdir(parents=True, exist_ok=True)
    act_all, logit_all = np.concatenate(activations), np.concatenate(logits)
    np.save(folder / "activations.npy", act_all)
    np.save(folder / "logits.npy", logit_all)
    return act_all, logit_all


def _batches(count: int, batch_size: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    order = rng.permutation(count)
    for start in range(0, count, batch_size):
        yield order[start : start + batch_size]


def train_bottleneck(
    model: StagedModel, config: TrainConfig, activations: np.ndarray, logits: np.ndarray,
    log: "callable[[str], None]" = print,
) -> Bottleneck:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    channels = activations.shape[1]
    sample = activations[rng.permutation(len(activations))[:512]].astype(np.float32)
    if config.init_from:
        net, _ = load_artifact(config.init_from)
        have = (net.channels, net.latent_channels, net.stride, net.transform)
        want = (channels, config.latent_channels, config.latent_stride, config.transform)
        if have != want:
            raise ValueError(f"{config.init_from} is (channels, latent channels, stride, transform) {have}, "
                             f"this run wants {want}")
    else:
        net = Bottleneck(channels, config.latent_channels, config.latent_stride, config.transform)
        net.initialise(torch.from_numpy(sample))
    variance = float(np.var(sample))
    tail = model.tail(config.split)
    for parameter in tail.parameters():
        parameter.requires_grad_(False)
    tail.eval()
    steps_per_epoch = math.ceil(len(activations) / config.batch_size)
    phase2_epochs = math.ceil(config.phase2_steps / steps_per_epoch)
    epochs = config.phase1_epochs + phase2_epochs
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    phase1_steps = config.phase1_epochs * steps_per_epoch

    def lr_factor(step: int) -> float:  # cosine over phase 1, then a lower, linearly decaying rate for phase 2
        if step < phase1_steps:
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / phase1_steps))
        return 0.3 * (1 - 0.9 * min(1.0, (step - phase1_steps) / max(1, config.phase2_steps)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    for epoch in range(epochs):
        with_logits = epoch >= config.phase1_epochs
        net.train()
        sums = {"loss": 0.0, "kbit": 0.0}
        batches = list(_batches(len(activations), config.batch_size, rng))
        if with_logits:
            done = (epoch - config.phase1_epochs) * steps_per_epoch
            batches = batches[: max(0, config.phase2_steps - done)]
        bar = tqdm(batches,
                   desc=f"{config.name} epoch {epoch + 1}/{epochs} ({'kd' if with_logits else 'mse'})", unit="batch")
        for step, index in enumerate(bar, start=1):
            target = torch.from_numpy(activations[index].astype(np.float32))
            restored, bits = net(target)
            student_logits = tail(restored) if with_logits else None
            teacher_logits = torch.from_numpy(logits[index].astype(np.float32)) if with_logits else None
            distortion = distillation_loss(restored, target, student_logits, teacher_logits, variance)
            kbits = bits.mean() / 1000.0
            warm_up = 1.0 if config.init_from else min(1.0, (epoch * steps_per_epoch + step) / steps_per_epoch)
            loss = distortion + warm_up * config.beta_per_kbit * kbits
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            sums["loss"] += float(distortion.detach())
            sums["kbit"] += float(kbits.detach())
            bar.set_postfix(distortion=f"{sums['loss'] / step:.4f}", bytes=f"{sums['kbit'] / step * 125:.0f}")
        steps = max(1, len(batches))
        log(f"{config.name} epoch {epoch + 1}: distortion {sums['loss'] / steps:.4f}, "
            f"rate {sums['kbit'] / steps * 125:.0f} bytes/sample (prior estimate)")
    net.eval()
    return net


def latents_of(net: Bottleneck, activations: np.ndarray, step: float = 1.0, batch_size: int = 64) -> np.ndarray:
    out = []
    with torch.no_grad():
        for start in range(0, len(activations), batch_size):
            act = torch.from_numpy(activations[start : start + batch_size].astype(np.float32))
            out.append(torch.round(net.compressor(act) / step).numpy().astype(np.int16))
    return np.concatenate(out)


def tables_name(step: float) -> str:
    return f"tables_s{step:g}.json"


def save_artifact(net: Bottleneck, config: TrainConfig, out_dir: Path, extra: dict[str, object]) -> dict[str, object]:
    """Write `weights.npz` (the student) and `bottleneck.json` (its description)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    np.savez_compressed(out_dir / "weights.npz", **state)
    description = {
        "format": ARTIFACT_FORMAT,
        "name": config.name,
        "config": asdict(config),
        "channels": net.channels,
        "operating_points": [],
        **extra,
    }
    (out_dir / "bottleneck.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return description


def fit_operating_points(folder: Path, activations: np.ndarray, steps: Sequence[float]) -> dict[str, object]:
    """For each quantisation step (the rate knob: a coarser step, fewer bits), fit integer entropy tables on the
    training latents and record them in `bottleneck.json`."""
    net, description = load_artifact(folder)
    points = []
    for step in steps:
        if not step > 0:
            raise ValueError(f"latent steps must be positive, got {step}")
        tables = fit_tables(latents_of(net, activations, step))
        EntropyCodec(tables)  # the tables build valid models
        (folder / tables_name(step)).write_text(json.dumps(tables.to_json(), separators=(",", ":")) + "\n", encoding="utf-8")
        points.append({"step": float(step), "tables": tables_name(step), "table_hash": tables.table_hash,
                       "latent_shape": list(tables.latent_shape)})
    description["operating_points"] = points
    (folder / "bottleneck.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return description


def load_artifact(folder: str | Path) -> tuple[Bottleneck, dict[str, object]]:
    folder = Path(folder)
    description = json.loads((folder / "bottleneck.json").read_text(encoding="utf-8"))
    if description.get("format") != ARTIFACT_FORMAT:
        raise ValueError(f"{folder}: not a bottleneck artifact (format {description.get('format')!r})")
    config = description["config"]
    net = Bottleneck(int(description["channels"]), int(config["latent_channels"]), int(config.get("latent_stride", 2)),
                     str(config.get("transform", "conv")))
    with np.load(folder / "weights.npz", allow_pickle=False) as weights:
        net.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
    return net.eval(), description


def export_onnx(model: StagedModel, net: Bottleneck, split: str, encoder_path: Path, tail_path: Path,
                step: float = 1.0) -> None:
    """Edge encoder (uint8 image -> float latent) and cloud tail (latent -> logits) as ONNX."""
    from splitrt.bundle import HEAD_INPUT_NAME, OUTPUT_NAME, TAIL_INPUT_NAME
    from splitrt.partition.export import _export_onnx

    crop = model.preprocess.crop
    image = torch.zeros((1, crop, crop, 3), dtype=torch.uint8)
    encoder = EdgeEncoder(model.head(split), net.compressor, step).eval()
    cloud = CloudTail(net.decompressor, model.tail(split), step).eval()
    with torch.no_grad():
        latent = encoder(image)
    _export_onnx(encoder, image, encoder_path, HEAD_INPUT_NAME, TAIL_INPUT_NAME)
    _export_onnx(cloud, torch.round(latent), tail_path, TAIL_INPUT_NAME, OUTPUT_NAME)


def run_training(images: str | Path, out_dir: str | Path, configs: Sequence[TrainConfig], cache_dir: str | Path,
                 steps: Sequence[float] = (1.0,)) -> list[dict[str, object]]:
    from splitrt.partition.models import load_model

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    started = time.monotonic()
    first = configs[0]
    model = load_model(first.model)
    train_paths = split_images(images, "even")
    activations, logits = teacher_cache(model, first.split, train_paths, first.views_per_image, first.seed, Path(cache_dir),
                                        unlabelled=first.unlabelled)
    extra_images = len(unlabelled_images(first.unlabelled)) if first.unlabelled else 0
    print(f"teacher cache: {len(activations)} views of {len(train_paths)} training images "
          f"and {extra_images} unlabelled ones, "
          f"activation {tuple(activations.shape[1:])} ({time.monotonic() - started:.0f} s)")
    results = []
    for config in configs:
        shared = ("model", "split", "views_per_image", "seed", "unlabelled")
        if any(getattr(config, f) != getattr(first, f) for f in shared):
            raise ValueError("all operating points of one run share model, split, views, seed and unlabelled images")
        t = time.monotonic()
        net = train_bottleneck(model, config, activations, logits)
        extra: dict[str, object] = {"train_images": len(train_paths), "unlabelled_images": extra_images,
                                    "train_views": len(activations),
                                    "train_seconds": round(time.monotonic() - t, 1)}
        folder = Path(out_dir) / config.name
        save_artifact(net, config, folder, extra)
        results.append(fit_operating_points(folder, activations, steps))
        print(f"{config.name}: wrote {folder}")
    print(f"trained {len(configs)} bottleneck(s) in {time.monotonic() - started:.0f} s")
    return results


def refit_operating_points(folder: str | Path, images: str | Path, cache_dir: str | Path,
                           steps: Sequence[float]) -> dict[str, object]:
    """Tables for new quantisation steps of a trained bottleneck (the teacher cache is reused or rebuilt)."""
    from splitrt.partition.models import load_model

    _, description = load_artifact(folder)
    config = TrainConfig(**description["config"])  # type: ignore[arg-type]
    model = load_model(config.model)
    activations, _ = teacher_cache(model, config.split, split_images(images, "even"), config.views_per_image,
                                   config.seed, Path(cache_dir), unlabelled=config.unlabelled)
    return fit_operating_points(Path(folder), activations, steps)

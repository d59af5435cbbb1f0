"""The learned bottleneck through the real path: entropy tables in the bundle, byte-exact decoding in another
process, and every bad request (unknown codec, other tables, corrupted payload) ending with a reason."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitrt.actions import Split
from splitrt.bundle import Bundle, BundleError
from splitrt.codecs import CodecError, UnknownCodec, codec_for_point
from splitrt.codecs.bottleneck.entropy import EntropyCodec, EntropyTables, TableError, fit_tables
from splitrt.edge.link import CloudLink
from splitrt.edge.runtime import EdgeRuntime
from splitrt.frame import Status
from splitrt.protocol import Infer, Reject, RejectReason, TensorSpec, decode, encode
from tests.conftest import RunningService, start_service

ROOT = Path(__file__).resolve().parents[1]


def small_tables(rng: np.random.Generator, shape: tuple[int, int, int] = (3, 4, 5)) -> EntropyTables:
    latents = np.rint(rng.laplace(0.0, [[[1.0]], [[3.0]], [[0.3]]], size=(50, *shape)))
    return fit_tables(latents)


def test_tables_are_hashed_validated_and_json_only(rng: np.random.Generator) -> None:
    tables = small_tables(rng)
    again = EntropyTables.from_json(json.loads(json.dumps(tables.to_json())))
    assert again == tables and again.table_hash == tables.table_hash
    changed = tables.to_json()
    changed["frequencies"][0][0] += 1
    assert EntropyTables.from_json(changed).table_hash != tables.table_hash
    for bad in ({"format": "other"}, {**tables.to_json(), "offsets": [0]}, {**tables.to_json(), "frequencies": [[0]] * 3}):
        with pytest.raises(TableError):
            EntropyTables.from_json(bad)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_entropy_round_trip_is_exact_on_integers_in_range_and_bounded_otherwise(data: st.DataObject) -> None:
    tables = small_tables(np.random.default_rng(0))
    codec = EntropyCodec(tables)
    batch = data.draw(st.integers(1, 3))
    latent = data.draw(hnp.arrays(np.float32, (batch, 3, 4, 5), elements=st.floats(-40, 40, width=32)))
    decoded = codec.decode(codec.encode(latent), TensorSpec("float32", latent.shape))
    assert np.abs(decoded - latent).max() <= codec.max_abs_error(latent)
    in_range = codec.tables.symbols(latent) + np.asarray(tables.offsets).reshape(1, -1, 1, 1)
    exact = codec.decode(codec.encode(in_range.astype(np.float32)), TensorSpec("float32", latent.shape))
    assert np.array_equal(exact, in_range)


def test_payload_coded_with_other_tables_is_refused(rng: np.random.Generator) -> None:
    ours, theirs = EntropyCodec(small_tables(rng)), EntropyCodec(small_tables(rng))
    assert ours.version_hash != theirs.version_hash
    latent = np.zeros((1, 3, 4, 5), np.float32)
    with pytest.raises(CodecError, match="tables"):
        ours.decode(theirs.encode(latent), TensorSpec("float32", latent.shape))
    payload = bytearray(ours.encode(latent))
    with pytest.raises(CodecError):
        ours.decode(bytes(payload[:-2]), TensorSpec("float32", latent.shape))
    with pytest.raises(CodecError):
        ours.decode(bytes(payload), TensorSpec("float32", (1, 3, 4, 6)))


DECODE_ELSEWHERE = """
import hashlib, json, sys
import numpy as np
from splitrt.codecs.bottleneck.entropy import EntropyCodec, EntropyTables
from splitrt.protocol import TensorSpec
tables = EntropyTables.from_json(json.loads(open(sys.argv[1]).read()))
codec = EntropyCodec(tables)
payload = open(sys.argv[2], "rb").read()
latent = codec.decode(payload, TensorSpec("float32", tuple(json.loads(sys.argv[3]))))
again = bytes(codec.encode(latent))
print(hashlib.sha256(latent.tobytes()).hexdigest(), hashlib.sha256(again).hexdigest(), codec.version_hash)
"""


def test_a_payload_decodes_byte_exactly_in_another_process(tmp_path: Path, rng: np.random.Generator) -> None:
    import hashlib

    tables = small_tables(rng)
    codec = EntropyCodec(tables)
    latent = np.rint(rng.laplace(0, 2, size=(2, 3, 4, 5))).astype(np.float32)
    payload = bytes(codec.encode(latent))
    (tmp_path / "tables.json").write_text(json.dumps(tables.to_json()))
    (tmp_path / "payload.bin").write_bytes(payload)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123"}
    out = subprocess.run(
        [sys.executable, "-c", DECODE_ELSEWHERE, str(tmp_path / "tables.json"), str(tmp_path / "payload.bin"),
         json.dumps(list(latent.shape))],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60, check=True,
    ).stdout.split()
    expected = codec.decode(payload, TensorSpec("float32", latent.shape))
    assert out == [hashlib.sha256(expected.tobytes()).hexdigest(), hashlib.sha256(payload).hexdigest(), codec.version_hash]


# --------------------------------------------------------------------------- a bottleneck in a real bundle


@pytest.fixture(scope="module")
def bottleneck_bundle(tiny_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    """The tiny bundle plus an (untrained, seeded) bottleneck at `down`, through the real export path."""
    import torch

    from splitrt.codecs.bottleneck.install import add_bottlenecks
    from splitrt.codecs.bottleneck.model import Bottleneck
    from splitrt.codecs.bottleneck.train import TrainConfig, fit_operating_points, save_artifact
    from splitrt.partition.models import load_model

    torch.manual_seed(0)
    model = load_model("tiny-cnn")
    images = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8))
    with torch.no_grad():
        activations = model.head("down")(images).numpy()
    config = TrainConfig(model="tiny-cnn", split="down", latent_channels=4)
    folder = tmp_path_factory.mktemp("bottleneck") / config.name
    net = Bottleneck(activations.shape[1], 4)
    net.initialise(torch.from_numpy(activations))
    save_artifact(net.eval(), config, folder, {})
    fit_operating_points(folder, activations, [1.0, 2.0])
    return add_bottlenecks(tiny_bundle.root, [folder], tmp_path_factory.mktemp("bundles") / "tiny-bn")


@pytest.fixture()
def bn_service(bottleneck_bundle: Bundle):  # type: ignore[no-untyped-def]
    running = start_service([bottleneck_bundle])
    yield running
    running.service.stop()
    running.thread.join(10)


def test_bundle_lists_the_bottlenecks_and_hashes_their_files(bottleneck_bundle: Bundle, tiny_bundle: Bundle) -> None:
    names = [b.name for b in bottleneck_bundle.manifest.bottlenecks]
    assert names == ["bn-down-c4-beta0.01-s1", "bn-down-c4-beta0.01-s2"]
    hashes = {b.table_hash for b in bottleneck_bundle.manifest.bottlenecks}
    assert len(hashes) == 2, "each operating point has its own tables"
    assert bottleneck_bundle.content_hash != tiny_bundle.content_hash
    assert tiny_bundle.manifest.bottlenecks == ()  # a bundle without the section still loads
    point = bottleneck_bundle.manifest.split(names[0])
    assert point.head_file and point.activation == TensorSpec("float32", (4, 4, 4))
    assert names[0] not in bottleneck_bundle.manifest.split_names  # actions name it, the teacher's list is unchanged
    tables = bottleneck_bundle.path(bottleneck_bundle.manifest.bottlenecks[0].tables_file)
    original = tables.read_bytes()
    try:
        tables.write_bytes(original.replace(b"1", b"2", 1))
        with pytest.raises(BundleError, match="sha256"):
            Bundle.load(bottleneck_bundle.root)
    finally:
        tables.write_bytes(original)


def test_warm_up_loads_the_bottleneck_tails_too(bottleneck_bundle: Bundle) -> None:
    from splitrt.cloud.tails import TailExecutor

    executor = TailExecutor([bottleneck_bundle])
    executor.warm_up()
    loaded = {name for _, name in executor._sessions}
    assert {"bn-down-c4-beta0.01-s1", "bn-down-c4-beta0.01-s2"} <= loaded
    assert set(bottleneck_bundle.manifest.split_names) <= loaded


def test_bottleneck_split_runs_end_to_end(bn_service: RunningService, bottleneck_bundle: Bundle) -> None:
    photo = np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    with CloudLink(bn_service.endpoint, bottleneck_bundle.content_hash) as link:
        welcome = link.handshake()
        assert "bn-down-c4-beta0.01-s1" in welcome.splits
        runtime = EdgeRuntime(bottleneck_bundle, link)
        for name in ("bn-down-c4-beta0.01-s1", "bn-down-c4-beta0.01-s2"):
            outcome = runtime.infer(photo, Split(name, "ans"), budget_ms=20_000)
            assert outcome.ok, outcome.reason
            assert outcome.logits is not None and outcome.logits.shape == (10,)
            assert outcome.bytes_sent < 600
        wrong = runtime.infer(photo, Split("bn-down-c4-beta0.01-s1", "fp16"))
        assert wrong.status is Status.FAILED and "unknown codec" in wrong.reason


def test_bench_serve_sends_a_bottleneck_latent_the_service_answers(bn_service: RunningService,
                                                                   bottleneck_bundle: Bundle) -> None:
    from splitrt.bench.serve import encoded_activations, fetch_outputs

    name = "bn-down-c4-beta0.01-s1"
    dtype, shape, bundle_hash, payloads = encoded_activations(str(bottleneck_bundle.root), name, "ans",
                                                              ["chelsea", "astronaut"])
    assert (dtype, shape, bundle_hash) == ("float32", (1, 4, 4, 4), bottleneck_bundle.content_hash)
    assert all(p[:3] == b"SBN" for p in payloads)  # the bottleneck's own entropy-coded latent
    outputs = fetch_outputs(bn_service.endpoint, bundle_hash, name, "ans", dtype, shape, payloads)
    assert all(isinstance(outputs[i], np.ndarray) and outputs[i].shape == (1, 10) for i in (0, 1)), outputs
    with pytest.raises(UnknownCodec):
        encoded_activations(str(bottleneck_bundle.root), name, "fp16", ["chelsea"])


class CorruptingLink(CloudLink):
    """A real link that flips one payload byte after the checksum was computed: damage on the wire."""

    def request(self, frames, frame_id, timeout_ms):  # type: ignore[no-untyped-def,override]
        payload = bytearray(memoryview(frames[1]).cast("B"))
        payload[len(payload) // 2] ^= 0x40
        return super().request([frames[0], bytes(payload)], frame_id, timeout_ms)


def test_a_corrupted_payload_is_caught_and_the_frame_ends_with_a_reason(
    bn_service: RunningService, bottleneck_bundle: Bundle
) -> None:
    photo = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with CorruptingLink(bn_service.endpoint, bottleneck_bundle.content_hash) as link:
        link.handshake()
        outcome = EdgeRuntime(bottleneck_bundle, link).infer(photo, Split("bn-down-c4-beta0.01-s1", "ans"), budget_ms=20_000)
    assert outcome.status is Status.REJECTED
    assert outcome.reason.startswith("bad_payload") and "crc32" in outcome.reason


def test_unknown_codec_or_table_hash_is_rejected(bn_service: RunningService, bottleneck_bundle: Bundle) -> None:
    name = "bn-down-c4-beta0.01-s1"
    codec = codec_for_point(bottleneck_bundle, name, "ans")
    latent = np.zeros((1, 4, 4, 4), np.float32)
    spec = TensorSpec("float32", latent.shape)
    payload = bytes(codec.encode(latent))
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(bn_service.endpoint)

    def send(**fields: object) -> Reject:
        body = fields.pop("payload", payload)
        base = dict(frame_id=9, bundle_hash=bottleneck_bundle.content_hash, split=name, codec="ans", tensor=spec,
                    deadline_ms=time.time() * 1000 + 5000, codec_hash=codec.version_hash)
        base.update(fields)
        socket.send_multipart(encode(Infer(**base), [body]))  # type: ignore[arg-type,list-item]
        assert socket.poll(5000)
        message = decode(socket.recv_multipart()).message
        assert isinstance(message, Reject), message
        return message

    try:
        assert send(codec="ans2").reason is RejectReason.UNKNOWN_CODEC
        assert send(codec="fp32").reason is RejectReason.UNKNOWN_CODEC  # a bottleneck takes only its own codec
        unknown = send(codec_hash="0123456789abcdef")
        assert unknown.reason is RejectReason.UNKNOWN_CODEC and codec.version_hash in unknown.detail
        other = codec_for_point(bottleneck_bundle, "bn-down-c4-beta0.01-s2", "ans")
        assert send(codec_hash=other.version_hash).reason is RejectReason.UNKNOWN_CODEC
        mislabelled = send(payload=bytes(other.encode(latent)))  # right labels, other tables inside
        assert mislabelled.reason is RejectReason.BAD_PAYLOAD and "tables" in mislabelled.detail
        assert send(split="down", codec="q8", codec_hash="ffffffffffffffff",
                    tensor=TensorSpec("float32", (1, 16, 8, 8))).reason is RejectReason.UNKNOWN_CODEC
    finally:
        socket.close()


def test_codec_for_point_refuses_other_codecs_at_a_bottleneck(bottleneck_bundle: Bundle) -> None:
    with pytest.raises(UnknownCodec):
        codec_for_point(bottleneck_bundle, "bn-down-c4-beta0.01-s1", "q8")
    assert codec_for_point(bottleneck_bundle, "down", "q8+zstd").codec_id == "q8+zstd"


def test_stride_one_latent_keeps_the_resolution_and_reloads(tmp_path: Path) -> None:
    import torch

    from splitrt.codecs.bottleneck.model import Bottleneck
    from splitrt.codecs.bottleneck.train import TrainConfig, load_artifact, save_artifact

    torch.manual_seed(0)
    activation = torch.randn(2, 6, 7, 7)
    for stride, latent_side in ((1, 7), (2, 4)):
        net = Bottleneck(6, 3, stride=stride).eval()
        assert net.compressor(activation).shape == (2, 3, latent_side, latent_side)
        restored, bits = net(activation)
        assert restored.shape[:2] == (2, 6) and bits.shape == (2,)
    config = TrainConfig(model="tiny-cnn", split="down", latent_channels=3, latent_stride=1)
    assert config.name == "down-c3-s1-beta0.01"
    save_artifact(net := Bottleneck(6, 3, stride=1).eval(), config, tmp_path / config.name, {})
    again, description = load_artifact(tmp_path / config.name)
    assert again.stride == 1 and description["config"]["latent_stride"] == 1
    with torch.no_grad():
        assert torch.equal(again(activation)[0], net(activation)[0])
    with pytest.raises(ValueError, match="stride"):
        Bottleneck(6, 3, stride=3)


def test_linear_transform_starts_from_the_principal_axes_and_reloads(tmp_path: Path) -> None:
    import torch

    from splitrt.codecs.bottleneck.model import Bottleneck
    from splitrt.codecs.bottleneck.train import TrainConfig, load_artifact, save_artifact

    torch.manual_seed(0)
    mixing = torch.randn(6, 6)
    scales = torch.tensor([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]).view(1, 6, 1, 1)
    activation = torch.einsum("oc,nchw->nohw", mixing, torch.randn(64, 6, 7, 7) * scales) + 2.0
    full = Bottleneck(6, 6, stride=1, transform="linear")
    full.initialise(activation)
    with torch.no_grad():  # all axes kept: the map is invertible (before rounding)
        assert torch.allclose(full.decompressor(full.compressor(activation)), activation, atol=1e-3)
        spread = full.compressor(activation).std(dim=(0, 2, 3))
    assert torch.all(spread[:-1] >= spread[1:] - 1e-4)  # ordered by variance, in units of the activation's std
    channel_variance = float(activation.var(dim=(0, 2, 3)).sum())  # an orthogonal map keeps the total variance
    assert abs(float((spread**2).sum() * activation.std() ** 2) - channel_variance) < 0.01 * channel_variance
    config = TrainConfig(model="tiny-cnn", split="down", latent_channels=3, latent_stride=1, transform="linear")
    assert config.name == "down-c3-s1-linear-beta0.01"
    net = Bottleneck(6, 3, stride=1, transform="linear")
    net.initialise(activation)
    save_artifact(net.eval(), config, tmp_path / config.name, {})
    again, description = load_artifact(tmp_path / config.name)
    assert again.transform == "linear" and description["config"]["transform"] == "linear"
    with torch.no_grad():
        assert torch.equal(again(activation)[0], net(activation)[0])
    blocks = Bottleneck(6, 24, stride=2, transform="linear")  # 2x2 blocks: 24 values each, all kept
    blocks.initialise(activation[:, :, :6, :6])
    with torch.no_grad():
        assert blocks.compressor(activation[:, :, :6, :6]).shape == (64, 24, 3, 3)
        assert torch.allclose(blocks.decompressor(blocks.compressor(activation[:, :, :6, :6])),
                              activation[:, :, :6, :6], atol=1e-3)
    with pytest.raises(ValueError, match="divides"):
        Bottleneck(6, 24, stride=2, transform="linear").initialise(activation)  # 7x7 is not made of 2x2 blocks
    with pytest.raises(ValueError, match="stride"):
        Bottleneck(6, 3, stride=3, transform="linear")
    with pytest.raises(ValueError, match="at most"):
        Bottleneck(6, 7, stride=1, transform="linear")
    with pytest.raises(ValueError, match="transform"):
        Bottleneck(6, 3, stride=1, transform="fourier")


def test_unlabelled_images_add_one_standard_view_each(tmp_path: Path) -> None:
    from PIL import Image

    from splitrt.codecs.bottleneck.train import TrainConfig, training_views, unlabelled_images
    from splitrt.partition.models import load_model

    rng = np.random.default_rng(0)
    (tmp_path / "extra" / "a").mkdir(parents=True)
    for name in ("extra/a/0.jpg", "extra/b.png", "labelled.png"):
        Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "extra" / "notes.txt").write_text("not an image\n")
    assert [p.name for p in unlabelled_images(tmp_path / "extra")] == ["0.jpg", "b.png"]
    with pytest.raises(FileNotFoundError):
        unlabelled_images(tmp_path / "missing")
    model = load_model("tiny-cnn")
    config = TrainConfig(model="tiny-cnn", views_per_image=3, unlabelled=str(tmp_path / "extra"))
    views = list(training_views(config, [tmp_path / "labelled.png"], model))
    crop = model.preprocess.crop
    assert len(views) == 3 + 2 and all(v.shape == (crop, crop, 3) and v.dtype == np.uint8 for v in views)
    assert len(list(training_views(TrainConfig(model="tiny-cnn", views_per_image=3), [tmp_path / "labelled.png"], model))) == 3

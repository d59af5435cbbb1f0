"""Profiling a real (tiny) bundle with ONNX Runtime, storing the profile, plotting it, planning from it."""
from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest

from splitrt.bundle import Bundle
from splitrt.devices.profiles import get_profile
from splitrt.partition.planner import LinkState, plan
from splitrt.partition.profile import compare_profiles, plot_profile, profile_bundle, save_profile, stored_profile


@pytest.fixture(scope="module")
def tiny_profile(tiny_bundle: Bundle) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no cgroup here: thread count only
        return profile_bundle(tiny_bundle, get_profile("x86"), repeats=3, warmup=1, fallback="threads", progress=False)


def test_every_split_point_is_measured(tiny_bundle: Bundle, tiny_profile: dict) -> None:
    names = [s["name"] for s in tiny_profile["splits"]]
    assert names == tiny_bundle.manifest.split_names
    for split in tiny_profile["splits"]:
        assert split["cloud_ms_p50"] > 0 and split["edge_ms_p95"] >= split["edge_ms_p50"] >= 0
        assert split["activation_bytes"] == tiny_bundle.manifest.split(split["name"]).raw_bytes
    assert tiny_profile["splits"][0]["edge_ms_p50"] == 0.0  # offload: nothing on the edge
    assert tiny_profile["local"]["edge_ms_p50"] > 0
    assert tiny_profile["splits"][1]["shape"] == [8, 16, 16]


def test_profile_is_saved_in_the_manifest_without_changing_the_hash(tiny_bundle: Bundle, tiny_profile: dict, tmp_path: Path) -> None:
    root = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.root, root)
    save_profile(root, tiny_profile)
    loaded = Bundle.load(root)
    assert loaded.content_hash == tiny_bundle.content_hash
    assert stored_profile(loaded, "x86")["splits"] == tiny_profile["splits"]
    with pytest.raises(KeyError, match="partition profile --bundle"):
        stored_profile(loaded, "pi4")
    other = dict(tiny_profile, content_hash="sha256:other")
    with pytest.raises(ValueError, match="profile this bundle again"):
        save_profile(root, other)


def test_re_exporting_the_same_content_keeps_the_stored_profiles(tiny_bundle: Bundle, tiny_profile: dict, tmp_path: Path) -> None:
    """`make bench` and any `partition export` over an existing bundle: identical files keep their measurements."""
    from splitrt.partition.export import export_bundle
    from splitrt.partition.models import load_model

    root = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.root, root)
    save_profile(root, tiny_profile)
    again = export_bundle(load_model("tiny-cnn"), root, progress=False)
    assert again.content_hash == tiny_bundle.content_hash  # the export is deterministic
    assert stored_profile(again, "x86") == tiny_profile
    # Different content (a subset of the split points): the profile no longer holds and is dropped, by name.
    with pytest.warns(UserWarning, match="drops its stored profiles x86"):
        subset = export_bundle(load_model("tiny-cnn"), root, splits=["stem", "res"], progress=False)
    assert subset.content_hash != tiny_bundle.content_hash and subset.manifest.profiles == {}


def test_a_cached_bundle_is_reused_with_its_profiles(tiny_bundle: Bundle, tiny_profile: dict, tmp_path: Path) -> None:
    """What `make bench` (through `bench codecs`) and the demo do: a valid bundle of the model is not exported again."""
    from splitrt.partition.export import load_or_export

    root = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.root, root)
    save_profile(root, tiny_profile)
    manifest_written_ns = (root / "manifest.json").stat().st_mtime_ns
    cached = load_or_export(root, "tiny-cnn")
    assert stored_profile(cached, "x86") == tiny_profile
    assert (root / "manifest.json").stat().st_mtime_ns == manifest_written_ns
    fresh = load_or_export(tmp_path / "missing", "tiny-cnn")  # none there: exported once
    assert fresh.content_hash == tiny_bundle.content_hash and fresh.manifest.profiles == {}


def test_two_runs_compare_per_split(tiny_profile: dict) -> None:
    slower = json.loads(json.dumps(tiny_profile))
    for split in slower["splits"]:
        split["edge_ms_p50"] *= 1.1
        split["cloud_ms_p50"] *= 1.1
    rows = compare_profiles(tiny_profile, slower)
    assert all(r["edge_diff_pct"] is None or r["edge_diff_pct"] == pytest.approx(10.0, abs=0.1) for r in rows[:-1])
    assert rows[0]["edge_diff_pct"] is None  # the input point has no edge part


def test_plot_and_plan_from_a_measured_profile(tiny_profile: dict, tmp_path: Path) -> None:
    plot_profile(tiny_profile, tmp_path / "profile.png")
    assert (tmp_path / "profile.png").stat().st_size > 10_000
    split_bytes = {s["name"]: s["activation_bytes"] // 2 for s in tiny_profile["splits"][1:]}
    result = plan(tiny_profile, LinkState(10.0, 40.0), split_bytes, offload_bytes=1_500)
    assert len(result.estimates) == len(tiny_profile["splits"]) + 1
    assert result.best.total_ms == min(e.total_ms for e in result.estimates)


def test_plan_command_on_a_stored_profile(tiny_bundle: Bundle, tiny_profile: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from splitrt.cli import main

    root = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.root, root)
    save_profile(root, tiny_profile)
    out = tmp_path / "plan.json"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = main(["partition", "plan", "--bundle", str(root), "--device-profile", "x86", "--bandwidth-mbps", "0.5,50",
                     "--rtt-ms", "40", "--offload-bytes", "1500", "--allow-thread-fallback", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "choice:" in printed
    report = json.loads(out.read_text())
    assert [p["bandwidth_mbps"] for p in report["plans"]] == [0.5, 50.0]
    assert report["plans"][0]["estimates"][0]["action"] == "local"
    # The plan names the stored profile it was computed from.
    assert report["profile"]["device_profile"] == "x86"
    assert report["profile"]["measured_at"] == tiny_profile["measured_at"]
    assert report["profile"]["content_hash"] == tiny_bundle.content_hash
    assert report["profile"]["repeats"] == 3 and report["profile"]["host"] == tiny_profile["host"]
    assert printed.startswith(f"tiny-cnn: profile x86, measured {tiny_profile['measured_at']} (cpu share 1.0, ")

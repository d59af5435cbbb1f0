"""`bench policy` end to end on the tiny model: real measurements, a generated trace, JSON and plot out."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


from splitrt.bench.policy import run_policy_bench
from splitrt.policies.options_file import action_from_key
from splitrt.bundle import Bundle
from tests.conftest import write_labelled_images


def test_policy_bench_writes_a_row_per_policy(tiny_bundle: Bundle, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # the options cache goes under ./.cache
    images = write_labelled_images(tmp_path / "images", 12, 5)
    trace = tmp_path / "two-mbps.up"
    trace.write_text("\n".join(str(t) for t in range(1, 3001, 6)) + "\n")  # one packet per 6 ms: 2 Mbit/s
    bundle = shutil.copytree(tiny_bundle.root, tmp_path / "bundle")
    out = tmp_path / "policy.json"
    results = run_policy_bench([trace], bundle, images, out, "pi4", deadline_ms=100, fps=5, rtt_ms=20,
                               plot=tmp_path / "policy.png", candidates="base", edge_cost_samples=3)
    rows = results["two-mbps.up"]
    names = [r["policy"] for r in rows]
    assert {"latency", "deadline", "deadline-cautious", "oracle", "static:local", "static:offload/jpeg-q90"} <= set(names)
    assert not any("webp" in n or "q8+zstd" in n for n in names)
    wide = run_policy_bench([trace], bundle, images, tmp_path / "wide.json", "pi4", deadline_ms=100, fps=5,
                            rtt_ms=20, candidates="wide", edge_cost_samples=0)["two-mbps.up"]
    wide_names = {r["policy"] for r in wide}
    assert {"static:offload/webp-q50", "static:offload/jpeg-q10"} <= wide_names
    assert any(n.startswith("static:split@") and n.endswith("/q4c+zstd") for n in wide_names)
    assert len(list((tmp_path / ".cache").glob("policy-options-*.json"))) == 2  # one cache per candidate set
    assert all(0.0 <= r["accuracy_at_deadline"] <= r["deadline_hit"] + 1e-9 for r in rows)
    document = json.loads(out.read_text())
    assert document["scenario"] == "policy" and document["settings"]["device_profile"] == "pi4"
    assert (tmp_path / "policy.png").stat().st_size > 10_000
    assert action_from_key("split@pool/fp16").describe() == "split@pool/fp16"
    assert action_from_key("split@b4/q8+zstd").describe() == "split@b4/q8+zstd"


def test_measurements_kept_in_a_directory_replay_the_same_rows(tiny_bundle: Bundle, tmp_path: Path,
                                                              monkeypatch) -> None:
    """`--measurements DIR`: the options and the device times are measured once into DIR (nothing under .cache) and
    a second replay that reads them gives the same rows to the last digit: what makes a committed table
    reproducible where the host's timings would differ."""
    monkeypatch.chdir(tmp_path)
    images = write_labelled_images(tmp_path / "images", 12, 5)
    trace = tmp_path / "two-mbps.up"
    trace.write_text("\n".join(str(t) for t in range(1, 3001, 6)) + "\n")
    bundle = shutil.copytree(tiny_bundle.root, tmp_path / "bundle")
    kept = tmp_path / "kept"
    runs = [run_policy_bench([trace], bundle, images, tmp_path / f"run{i}.json", "0.5", deadline_ms=100, fps=5,
                             rtt_ms=20, candidates="base", edge_cost_samples=3, device_emulation="dilation",
                             measurements_dir=kept)["two-mbps.up"] for i in range(2)]
    assert sorted(p.name.split("-")[0] + "-" + p.name.split("-")[1] for p in kept.iterdir()) == [
        "device-costs", "policy-options"]
    assert not (tmp_path / ".cache").exists()
    assert json.dumps(runs[0]) == json.dumps(runs[1])  # (as text: NaN is not equal to itself)


def test_a_slowed_device_replays_every_action_s_samples_stretched() -> None:
    from splitrt.actions import Local
    from splitrt.bench.policy import slowed_device
    from splitrt.policies.policies import ActionOption

    skip6 = ActionOption(Local("skip6"), 60.0, accuracy=0.8, edge_samples_ms=(50.0, 70.0))
    full = ActionOption(Local(), 80.0, accuracy=0.9)  # no samples: its point estimate
    device = slowed_device([skip6, full], 40, 1.25)
    assert len(device) == 40 and {v["local@skip6"] for v in device.values()} == {62.5, 87.5}
    assert {v["local"] for v in device.values()} == {100.0}


def test_on_a_slowed_device_the_oracle_knows_the_device_as_it_runs_and_the_policies_do_not() -> None:
    """Measured, the full model (80 ms) fits a 90 ms deadline; replayed 1.25x slower it takes 100 ms and only skip6
    (62.5 ms) is in time. An oracle told the measurements would run the full model on every frame and score 0."""
    import numpy as np

    from splitrt.actions import Local
    from splitrt.bench.policy import options_told_to, slowed_device
    from splitrt.policies.policies import ActionOption, DeadlinePolicy, OraclePolicy
    from splitrt.policies.simulate import SimConfig, simulate, summarize
    from splitrt.policies.trace import UplinkTrace

    options = [ActionOption(Local(), 80.0, accuracy=0.9), ActionOption(Local("skip6"), 50.0, accuracy=0.7)]
    correctness = {o.key: np.ones(50, dtype=bool) for o in options}
    trace = UplinkTrace.from_opportunities("steady", list(range(1, 1001)))
    config = SimConfig(fps=5, deadline_ms=90, rtt_ms=20, duration_s=10)
    device = slowed_device(options, 60, 1.25)

    def score(policy: object, told: list[ActionOption] | object) -> float:
        records = simulate(policy, told, correctness, trace, config, frame_edge_ms=device)  # type: ignore[arg-type]
        return float(summarize("p", records)["accuracy_at_deadline"])

    assert options_told_to(DeadlinePolicy(), options, 1.25) is options
    assert options_told_to(OraclePolicy(), options, 1.0) is options
    assert [o.edge_ms for o in options_told_to(OraclePolicy(), options, 1.25)] == [100.0, 62.5]
    assert score(OraclePolicy(), options) == 0.0
    assert score(OraclePolicy(), options_told_to(OraclePolicy(), options, 1.25)) == 1.0

"""Action options as JSON: what `bench policy` writes loads back; anything malformed is refused with where and why."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from splitrt.actions import Local, Offload, Split
from splitrt.policies.options_file import (OptionsError, load_options, option_from_json, option_to_json,
                                           options_from_document)
from splitrt.policies.policies import ActionOption, hedged

SKIP6 = ActionOption(Local("skip6"), 60.0, accuracy=0.8, edge_samples_ms=(59.0, 61.0))
JPEG = ActionOption(Offload("jpeg-q25"), 8.0, 3000, 20.0, 0.85, cloud_samples_ms=(19.0,))


def test_options_round_trip_with_their_samples_and_hedges() -> None:
    options = [SKIP6, JPEG, hedged(JPEG, SKIP6), ActionOption(Split("pool", "fp16"), 55.0, 2560, 0.1, 0.88)]
    document = json.loads(json.dumps({"options": [option_to_json(o) for o in options]}))
    assert options_from_document(document) == options
    assert options_from_document(document["options"]) == options  # a bare list too


def test_what_bench_policy_wrote_loads() -> None:
    written = Path(__file__).parents[1] / "docs" / "results" / "policy.json"
    options = load_options(written)
    assert len(options) == len(json.loads(written.read_text())["options"])
    assert {"local", "split@pool/fp16"} <= {o.key for o in options}


@pytest.mark.parametrize(("item", "message"), [
    ({"action": "local"}, r"edge_ms: missing"),
    ({"action": "local", "edge_ms": 10**400, "accuracy": 0.5}, r"edge_ms: expected a finite number >= 0, got 1000"),
    ({"action": "local", "edge_ms": -1, "accuracy": 0.5}, r"edge_ms: expected a finite number >= 0, got -1"),
    ({"action": "local", "edge_ms": 1, "accuracy": 1.5}, r"accuracy: expected at most 1"),
    ({"action": "local", "edge_ms": 1, "accuracy": 0.5, "payload_bytes": 1.5}, r"payload_bytes: expected an integer"),
    ({"action": "local", "edge_ms": 1, "accuracy": 0.5, "edge_samples_ms": "fast"}, r"edge_samples_ms: expected a list"),
    ({"action": "local", "edge_ms": 1, "accuracy": 0.5, "edge_ms_p50": 1}, r"unknown key\(s\) edge_ms_p50"),
    ({"action": "pool/fp16", "edge_ms": 1, "accuracy": 0.5}, r"action: not an action key: 'pool/fp16'"),
    ({"action": "skip", "edge_ms": 0, "accuracy": 0.5}, r"action: skip is the prefilter's"),
    ({"action": 7}, r"action: expected an action key"),
    ({"action": "offload/jpeg-q25", "edge_ms": 1, "accuracy": 0.5,
      "hedge": {"action": "local@skip6", "edge_ms": 1, "accuracy": 0.5}}, r"hedge: the action names none"),
    ({"action": "offload/jpeg-q25/hedge:local@skip6", "edge_ms": 1, "accuracy": 0.5}, r"hedge: missing"),
    ({"action": "offload/jpeg-q25/hedge:local@skip6", "edge_ms": 1, "accuracy": 0.5,
      "hedge": {"action": "local@skip9", "edge_ms": 1, "accuracy": 0.5}},
     r"hedge: the action names local@skip6, the hedge's costs are local@skip9's"),
])
def test_a_bad_option_is_refused_with_its_index_action_and_key(item: dict[str, object], message: str) -> None:
    good = option_to_json(SKIP6)
    name = f" \\({item['action']}\\)" if isinstance(item.get("action"), str) else ""
    with pytest.raises(OptionsError, match=rf"^options\[1\]{name}: {message}"):
        options_from_document({"options": [good, item]})


def test_bad_files_are_refused_naming_the_file(tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match=r"missing\.json: no such file"):
        load_options(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(OptionsError, match=r"broken\.json: cannot read it as JSON"):
        load_options(tmp_path / "broken.json")
    (tmp_path / "empty.json").write_text('{"options": []}')
    with pytest.raises(OptionsError, match=r"empty\.json: expected a non-empty list of options"):
        load_options(tmp_path / "empty.json")
    (tmp_path / "twice.json").write_text(json.dumps([option_to_json(SKIP6)] * 2))
    with pytest.raises(OptionsError, match=r"twice\.json: action\(s\) listed twice: local@skip6"):
        load_options(tmp_path / "twice.json")


def test_an_option_alone() -> None:
    assert option_from_json({"action": "local", "edge_ms": 5, "accuracy": 0.7}) == ActionOption(Local(), 5.0,
                                                                                                accuracy=0.7)

"""Action options as JSON: what the benchmarks write and the edge daemon's policy reads.

An option is `{"action": KEY, "edge_ms": ..., "payload_bytes": ..., "cloud_ms": ..., "accuracy": ...}`, with
optional `edge_samples_ms` and `cloud_samples_ms` lists and a `hedge` (another option, local). KEY is an action's
`describe()`: `local`, `local@skip6`, `split@pool/fp16`, `offload/jpeg-q25/hedge:local@skip6`. A file holds a list
of them, or an object with an `options` list (what `splitrt bench policy --json` writes). Everything is checked on
loading: a bad item is an `OptionsError` naming the file, the item and the key, never a frame that fails later.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from splitrt.actions import Action, Skip, parse_action
from splitrt.policies.policies import ActionOption


class OptionsError(ValueError):
    """An options file or item that cannot be used; the message says where and why."""


def action_from_key(key: str) -> Action:
    """The inverse of `Action.describe()`: `parse_action` on the key, refused unless it describes back to it (so a
    bare point name or a missing codec is not a key)."""
    action = parse_action(key)
    if action.describe() != key:
        raise ValueError(f"not an action key: {key!r}")
    return action


def option_to_json(option: ActionOption) -> dict[str, object]:
    return {"action": option.key, "edge_ms": option.edge_ms, "payload_bytes": option.payload_bytes,
            "cloud_ms": option.cloud_ms, "accuracy": option.accuracy,
            "edge_samples_ms": [round(v, 3) for v in option.edge_samples_ms],
            "cloud_samples_ms": [round(v, 3) for v in option.cloud_samples_ms],
            **({"hedge": option_to_json(option.hedge)} if option.hedge is not None else {})}


def _number(item: dict[str, Any], key: str, default: float | None = None, high: float | None = None) -> float:
    if key not in item and default is None:
        raise OptionsError(f"{key}: missing")
    value = item.get(key, default)
    try:
        finite = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        finite = False
    if not finite or value < 0:
        raise OptionsError(f"{key}: expected a finite number >= 0, got {repr(value)[:40]}")
    if high is not None and value > high:
        raise OptionsError(f"{key}: expected at most {high:g}, got {value!r}")
    return float(value)


def _samples(item: dict[str, Any], key: str) -> tuple[float, ...]:
    values = item.get(key, [])
    if not isinstance(values, list):
        raise OptionsError(f"{key}: expected a list of numbers, got {values!r}")
    return tuple(_number({key: v}, key) for v in values)


def option_from_json(item: object) -> ActionOption:
    """One option from its JSON; raises OptionsError on anything missing or out of range."""
    if not isinstance(item, dict):
        raise OptionsError(f"expected an object with an action and its costs, got {item!r}")
    unknown = set(item) - {"action", "edge_ms", "payload_bytes", "cloud_ms", "accuracy", "edge_samples_ms",
                           "cloud_samples_ms", "hedge"}
    if unknown:
        raise OptionsError(f"unknown key(s) {', '.join(sorted(unknown))}")
    key = item.get("action")
    if not isinstance(key, str):
        raise OptionsError(f"action: expected an action key such as \"split@pool/fp16\", got {key!r}")
    try:
        action = action_from_key(key)
    except ValueError as exc:
        raise OptionsError(f"action: {exc}") from None
    if isinstance(action, Skip):
        raise OptionsError("action: skip is the prefilter's, not an option")
    payload_bytes = _number(item, "payload_bytes", 0.0)
    if payload_bytes != int(payload_bytes):
        raise OptionsError(f"payload_bytes: expected an integer, got {item['payload_bytes']!r}")
    hedge_item = item.get("hedge")
    hedge = None
    named = getattr(action, "hedge", None)  # the hedge the action's key names, if any
    if (hedge_item is None) != (named is None):
        raise OptionsError("hedge: missing, the action names one" if hedge_item is None else
                           "hedge: the action names none (a hedged action's key ends /hedge:<local action>)")
    if hedge_item is not None:
        try:
            hedge = option_from_json(hedge_item)
        except OptionsError as exc:
            raise OptionsError(f"hedge: {exc}") from None
        if hedge.action != named:
            raise OptionsError(f"hedge: the action names {named.describe()}, the hedge's costs are {hedge.key}'s")
    return ActionOption(action, _number(item, "edge_ms"), int(payload_bytes), _number(item, "cloud_ms", 0.0),
                        _number(item, "accuracy", high=1.0), _samples(item, "edge_samples_ms"),
                        _samples(item, "cloud_samples_ms"), hedge)


def options_from_document(document: object) -> list[ActionOption]:
    """The options of a parsed JSON document: a list of options, or an object with an `options` list."""
    items = document.get("options") if isinstance(document, dict) else document
    if not isinstance(items, list) or not items:
        raise OptionsError("expected a non-empty list of options, or an object with one under \"options\"")
    options: list[ActionOption] = []
    for index, item in enumerate(items):
        try:
            options.append(option_from_json(item))
        except OptionsError as exc:
            name = item.get("action") if isinstance(item, dict) else None
            raise OptionsError(f"options[{index}]{f' ({name})' if isinstance(name, str) else ''}: {exc}") from None
    keys = [o.key for o in options]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise OptionsError(f"action(s) listed twice: {', '.join(duplicates)}")
    return options


def load_options(path: str | Path) -> list[ActionOption]:
    """The options in a JSON file; raises OptionsError naming the file."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OptionsError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise OptionsError(f"{path}: cannot read it as JSON: {exc}") from None
    try:
        return options_from_document(document)
    except OptionsError as exc:
        raise OptionsError(f"{path}: {exc}") from None

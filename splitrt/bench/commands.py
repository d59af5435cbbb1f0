"""`splitrt bench ...`: each scenario module registers its own subcommand."""
from __future__ import annotations

import argparse
import importlib

# One line per scenario module; each defines `register(subparsers)`.
SCENARIOS = (
    "splitrt.bench.codecs_command",
    "splitrt.bench.serve",
    "splitrt.bench.prefilter",
    "splitrt.bench.policy",
    "splitrt.bench.failover",
    "splitrt.bench.e2e",
    "splitrt.bench.device_load",
)


def register(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmark scenarios (tables + JSON)")
    sub = bench.add_subparsers(dest="bench_command", required=True)
    for module in SCENARIOS:
        importlib.import_module(module).register(sub)

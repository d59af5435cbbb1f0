"""Benchmark scenarios: each prints a table and writes JSON {"scenario", "rows", "env"}."""

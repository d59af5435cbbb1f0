"""Offline tooling (needs torch): model registry, export to bundles."""

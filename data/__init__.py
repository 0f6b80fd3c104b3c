"""Bundled data sets and the scripts that generate them (importable from tests)."""

"""Test setup for vividhead/models tests."""

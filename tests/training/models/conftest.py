"""Test setup for training/models tests."""

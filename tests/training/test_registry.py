"""The trainer-mode registry: every mode has a trainer of its kind, a config of the shared sections
plus its own, a command, and an exported module its trainer checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from vividhead.training.trainers.config import TrainConfig
from vividhead.training.trainers.registry import TRAIN_SPECS, TrainSpec, get_train_spec, register_train_spec


def test_every_mode_is_complete():
    assert list(TRAIN_SPECS) == ["sft", "distill", "finetune"]
    shared = [f.name for f in dataclasses.fields(TrainConfig)]
    for kind, spec in TRAIN_SPECS.items():
        assert spec.trainer_class().kind == kind
        cfg = spec.config_class()
        assert issubclass(cfg, TrainConfig)
        names = [f.name for f in dataclasses.fields(cfg)]
        # its own section(s): sft flow, distill distill, finetune flow (stage 1's objective) + finetune
        own = {"sft": ["flow"], "distill": ["distill"], "finetune": ["flow", "finetune"]}[kind]
        assert names[: len(shared)] == shared and names[len(shared):] == own


def test_each_mode_is_a_train_command():
    from vividhead.cli import build_app

    res = CliRunner().invoke(build_app(), ["train", "--help"])
    assert res.exit_code == 0
    for kind in TRAIN_SPECS:
        assert kind in res.output
        sub = CliRunner().invoke(build_app(), ["train", kind, "--help"])
        assert sub.exit_code == 0 and "--config" in sub.output and "--resume" in sub.output


def test_unknown_and_duplicate_kinds():
    with pytest.raises(KeyError, match="known: sft, distill, finetune"):
        get_train_spec("nope")
    with pytest.raises(ValueError, match="already registered"):
        register_train_spec(TrainSpec("sft", "a:B", "a:C", "transformer", "again"))

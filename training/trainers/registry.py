"""The trainer modes: one :class:`TrainSpec` each (like torchtitan's ``TrainSpec`` registry).

A mode is a :class:`~vividhead.training.trainers.runtime.Trainer` subclass (its objective in
``train_step``) and a config dataclass (:class:`~vividhead.training.trainers.config.TrainConfig`
plus its own section). Adding one is one new file (the trainer, with its config) and one
:func:`register_train_spec` call below: ``vividhead train <kind>`` (training/cli.py), the export
(which module's weights a checkpoint of that kind exports) and a stage-2 start from a checkpoint of
that kind all read this registry.

The classes are named by import path, not imported: the ``vividhead`` command lists the modes
without importing torch.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class TrainSpec:
    """One trainer mode.

    Attributes:
        kind: the mode's name: ``vividhead train <kind>``, the trainer's ``kind`` attribute, and
            ``"kind"`` in its checkpoints' ``meta.json``.
        trainer: ``module:Class`` of the trainer.
        config: ``module:Class`` of its config dataclass.
        exported_module: the checkpointed module ``vividhead train export`` writes as the DiT
            (``self.modules[...]`` of the trainer; its EMA when the run kept one).
        help: the command's one-line help.
    """

    kind: str
    trainer: str
    config: str
    exported_module: str
    help: str

    def trainer_class(self) -> type:
        return _load(self.trainer)

    def config_class(self) -> type:
        return _load(self.config)


def _load(path: str) -> type:
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


#: Every registered mode, by kind, in registration order.
TRAIN_SPECS: dict[str, TrainSpec] = {}


def register_train_spec(spec: TrainSpec) -> TrainSpec:
    """Add a mode (its ``kind`` must be new)."""
    if spec.kind in TRAIN_SPECS:
        raise ValueError(f"trainer mode {spec.kind!r} is already registered")
    TRAIN_SPECS[spec.kind] = spec
    return spec


def get_train_spec(kind: str) -> TrainSpec:
    """The mode ``kind`` (checkpoints written before modes were recorded are ``sft``).

    Raises:
        KeyError: an unknown kind, naming the known ones.
    """
    try:
        return TRAIN_SPECS[kind]
    except KeyError:
        raise KeyError(f"unknown trainer kind {kind!r} (known: {', '.join(TRAIN_SPECS)})") from None


_T = "vividhead.training.trainers."
for _spec in (
    TrainSpec("sft", _T + "sft:SFTTrainer", _T + "config:SFTConfig", "transformer",
              "Stage 1: streaming-aware flow-matching pre-training (FlashHead §3.2)."),
    TrainSpec("distill", _T + "distill:DistillTrainer", _T + "distill_config:DistillConfig", "generator",
              "Stage 2: DMD distillation to the 4-step streaming generator (oracle or self-correcting)."),
    TrainSpec("finetune", _T + "finetune:FinetuneTrainer", _T + "finetune:FinetuneConfig", "transformer",
              "Fine-tune a released or exported FlashHead on your clips: LoRA (peft) or full."),
):
    register_train_spec(_spec)

"""Export a trainer checkpoint as a self-contained folder that ``vividhead infer --checkpoint``,
``serve`` and ``eval run`` load. The folder's layout, metadata, writer and reader are
:mod:`vividhead.export_format`; this module turns a checkpoint into the modules it writes.

The DiT weights are the EMA (when the run kept one and ``weights="ema"``) or the raw weights.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Literal

import torch

from vividhead.export_format import write_export_folder
from vividhead.models.configs import FlashHeadVariant
from vividhead.models.flashhead import FlashHeadTransformer
from vividhead.training.trainers.checkpoint import CheckpointError, latest_checkpoint
from vividhead.training.trainers.models import FrozenEncoders


def write_export(
    out: str | Path,
    state_dict: dict[str, torch.Tensor],
    variant: FlashHeadVariant,
    encoders: FrozenEncoders,
    *,
    weights: str,
    step: int,
    source: str,
    kind: str | None = None,
) -> Path:
    """Write the export folder (:func:`vividhead.export_format.write_export_folder`, atomic).

    Args:
        out: target folder (replaced if it exists).
        state_dict: full (unsharded) DiT state dict in the released key layout.
        variant: shapes and streaming geometry of the trained model.
        encoders: the frozen VAE and Wav2Vec the model was trained with.
        weights: ``ema`` or ``raw`` (recorded).
        step: optimiser steps of the source checkpoint.
        source: the checkpoint folder.
        kind: the trainer (``sft`` / ``distill``), recorded when given.

    Returns:
        the export folder.

    Raises:
        KeyError: the state dict does not match the variant's DiT.
    """
    from vividhead.models.loading import load_strict

    with torch.device("meta"):
        dit = FlashHeadTransformer.from_config_dataclass(variant.transformer)
    dit = dit.to_empty(device="cpu")
    load_strict(dit, {k: v.float() for k, v in state_dict.items()})
    return write_export_folder(out, dit, encoders.vae.model.to("cpu", torch.float32), encoders.audio.model.to("cpu"),
                               variant, weights=weights, step=step, source=source, kind=kind)


def read_checkpoint_weights(checkpoint: str | Path, weights: Literal["ema", "raw", "auto"] = "auto"):
    """The trained DiT of a stage-1 or stage-2 checkpoint, unsharded on the CPU (one process).

    Reads the DCP checkpoint's full state (no process group needed) and takes the EMA (when the
    run kept one and ``weights`` allows) or the raw weights of the module its trainer mode exports
    (:attr:`TrainSpec.exported_module <vividhead.training.trainers.registry.TrainSpec.exported_module>`:
    ``transformer`` for stage 1, ``generator`` for stage 2). Also the stage-2 trainer's way to start from a stage-1 checkpoint.

    Args:
        checkpoint: a checkpoint folder or a run's output folder (newest checkpoint).
        weights: ``ema``, ``raw``, or ``auto`` (EMA when the run kept one).

    Returns:
        ``(cfg, state_dict, info)``: the run's config (its mode's config class, from the registry),
        the float32 DiT state dict in the released key layout, and
        ``{"checkpoint", "step", "weights" ("ema"/"raw"), "kind"}``.

    Raises:
        CheckpointError: no checkpoint, an unknown trainer kind, or ``ema`` asked of a run without one.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from vividhead.training.trainers.config import config_from_dict
    from vividhead.training.trainers.registry import get_train_spec

    ckpt = latest_checkpoint(checkpoint)
    if ckpt is None:
        raise CheckpointError(f"no complete checkpoint under {checkpoint}")
    meta = json.loads((ckpt / "meta.json").read_text())
    kind = meta.get("kind", "sft")
    try:
        spec = get_train_spec(kind)
    except KeyError as exc:
        raise CheckpointError(f"{ckpt}: {exc.args[0]}") from None
    module = spec.exported_module
    cfg = config_from_dict(meta["config"], spec.config_class())
    with tempfile.TemporaryDirectory(prefix="vividhead_dcp_") as tmp_dir:
        tmp = Path(tmp_dir) / "state.pt"
        dcp_to_torch_save(str(ckpt), str(tmp))
        full = torch.load(tmp, weights_only=True, map_location="cpu")
    ema_key = f"ema.{module}"
    if weights == "ema" and ema_key not in full:
        raise CheckpointError(f"{ckpt} has no EMA (the run kept none); export with --weights raw")
    use_ema = weights == "ema" or (weights == "auto" and ema_key in full)
    sd = dict(full[f"model.{module}"])
    if use_ema:
        sd.update(full[ema_key])  # EMA shadows the trainable parameters; buffers come from the model
    info = {"checkpoint": str(ckpt), "step": int(meta["step"]), "weights": "ema" if use_ema else "raw", "kind": kind}
    return cfg, sd, info


def export_checkpoint(checkpoint: str | Path, out: str | Path,
                      weights: Literal["ema", "raw", "auto"] = "auto") -> Path:
    """Export a stage-1 or stage-2 checkpoint (one process, on the CPU).

    Reads the DCP checkpoint's full state (:func:`read_checkpoint_weights`), takes the EMA (stage 1)
    or the generator's EMA / weights (stage 2), and writes :func:`write_export`'s folder.

    Args:
        checkpoint: a checkpoint folder or a run's output folder (newest checkpoint).
        out: the export folder.
        weights: ``ema``, ``raw``, or ``auto`` (EMA when the run kept one).

    Raises:
        CheckpointError: no checkpoint, or ``ema`` asked of a run without one.
    """
    from vividhead.training.trainers.models import build_encoders, resolve_variant

    cfg, sd, info = read_checkpoint_weights(checkpoint, weights)
    variant = resolve_variant(cfg.model)
    encoders = build_encoders(cfg.model, variant, torch.device("cpu"), torch.float32)
    return write_export(out, sd, variant, encoders, weights=info["weights"], step=info["step"],
                        source=info["checkpoint"], kind=info["kind"])

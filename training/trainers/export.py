"""Export a trainer checkpoint as a self-contained folder that ``vividhead infer --checkpoint``,
``serve`` and ``eval run`` load::

    EXPORT/
        vividhead_export.json      variant, transformer and streaming config, weights kind, step
        transformer/               diffusers format: config.json + diffusion_pytorch_model.safetensors
                                   (the released FlashHead key layout; loads strictly)
        vae/                       the frozen VAE, diffusers format
        audio_encoder/             the frozen Wav2Vec 2.0, transformers format

The DiT weights are the EMA (when the run kept one and ``weights="ema"``) or the raw weights.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Literal

import torch

from vividhead.config import to_dict
from vividhead.models.configs import FlashHeadVariant
from vividhead.models.flashhead import FlashHeadTransformer
from vividhead.training.trainers.checkpoint import CheckpointError, latest_checkpoint
from vividhead.training.trainers.models import EXPORT_META, FrozenEncoders


def write_export(
    out: str | Path,
    state_dict: dict[str, torch.Tensor],
    variant: FlashHeadVariant,
    encoders: FrozenEncoders,
    *,
    weights: str,
    step: int,
    source: str,
) -> Path:
    """Write the export folder atomically (``OUT.tmp`` then rename).

    Args:
        out: target folder (replaced if it exists).
        state_dict: full (unsharded) DiT state dict in the released key layout.
        variant: shapes and streaming geometry of the trained model.
        encoders: the frozen VAE and Wav2Vec the model was trained with.
        weights: ``ema`` or ``raw`` (recorded).
        step: optimiser steps of the source checkpoint.
        source: the checkpoint folder.

    Returns:
        the export folder.

    Raises:
        KeyError: the state dict does not match the variant's DiT.
    """
    from vividhead.models.loading import load_strict

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with torch.device("meta"):
        dit = FlashHeadTransformer.from_config_dataclass(variant.transformer)
    dit = dit.to_empty(device="cpu")
    load_strict(dit, {k: v.float() for k, v in state_dict.items()})
    dit.save_pretrained(tmp / "transformer", safe_serialization=True)
    encoders.vae.model.to("cpu", torch.float32).save_pretrained(tmp / "vae", safe_serialization=True)
    encoders.audio.model.to("cpu").save_pretrained(tmp / "audio_encoder", safe_serialization=True)
    meta = {
        "format": 1,
        "variant": variant.name,
        "vae": variant.vae.value,
        "transformer": to_dict(variant.transformer),
        "streaming": to_dict(variant.streaming),
        "weights": weights,
        "step": step,
        "source": str(source),
    }
    (tmp / EXPORT_META).write_text(json.dumps(meta, indent=2, sort_keys=True))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def read_export_variant(path: str | Path) -> FlashHeadVariant:
    """The :class:`FlashHeadVariant` an export folder was trained as.

    Raises:
        FileNotFoundError: not an export folder.
    """
    from vividhead.models.configs import FlashHeadTransformerConfig, StreamingConfig, VAEKind, get_variant

    p = Path(path) / EXPORT_META
    if not p.exists():
        raise FileNotFoundError(f"{path} is not a vividhead export (no {EXPORT_META})")
    meta = json.loads(p.read_text())
    tcfg = FlashHeadTransformerConfig(**{k: tuple(v) if isinstance(v, list) else v
                                         for k, v in meta["transformer"].items()})
    scfg = StreamingConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta["streaming"].items()})
    try:
        base = get_variant(meta["variant"])
    except ValueError:  # a variant defined outside VARIANTS: the folder describes it fully
        return FlashHeadVariant(meta["variant"], tcfg, scfg, VAEKind(meta["vae"]))
    return dataclasses.replace(base, transformer=tcfg, streaming=scfg, vae=VAEKind(meta["vae"]))


def read_checkpoint_weights(checkpoint: str | Path, weights: Literal["ema", "raw", "auto"] = "auto"):
    """The trained DiT of a stage-1 or stage-2 checkpoint, unsharded on the CPU (one process).

    Reads the DCP checkpoint's full state (no process group needed) and takes the EMA (when the
    run kept one and ``weights`` allows) or the raw weights of ``transformer`` (stage 1) or
    ``generator`` (stage 2). Also the stage-2 trainer's way to start from a stage-1 checkpoint.

    Args:
        checkpoint: a checkpoint folder or a run's output folder (newest checkpoint).
        weights: ``ema``, ``raw``, or ``auto`` (EMA when the run kept one).

    Returns:
        ``(cfg, state_dict, info)``: the run's config (:class:`SFTConfig` or ``DistillConfig``),
        the float32 DiT state dict in the released key layout, and
        ``{"checkpoint", "step", "weights" ("ema"/"raw"), "kind"}``.

    Raises:
        CheckpointError: no checkpoint, or ``ema`` asked of a run without one.
    """
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from vividhead.training.trainers.config import config_from_dict

    ckpt = latest_checkpoint(checkpoint)
    if ckpt is None:
        raise CheckpointError(f"no complete checkpoint under {checkpoint}")
    meta = json.loads((ckpt / "meta.json").read_text())
    kind = meta.get("kind", "sft")
    if kind == "sft":
        from vividhead.training.trainers.config import SFTConfig as cfg_cls

        module = "transformer"
    else:
        from vividhead.training.trainers.distill_config import DistillConfig as cfg_cls

        module = "generator"
    cfg = config_from_dict(meta["config"], cfg_cls)
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
                        source=info["checkpoint"])

"""Export a trainer checkpoint as a self-contained folder that ``vividhead infer --checkpoint``,
``serve`` and ``eval run`` load. The folder's layout, metadata, writer and reader are
:mod:`vividhead.export_format`; this module turns a checkpoint into the modules it writes.

The DiT weights are the EMA (when the run kept one and ``weights="ema"``) or the raw weights. A
LoRA fine-tune (``vividhead train finetune``, ``finetune.method: lora``) checkpoints only its
adapters: the base is rebuilt from the run's ``model`` section (the same released or exported
weights must be at ``model.init_path``), the adapters (EMA or raw) loaded into peft's model, and
then merged into the DiT (the default), or kept apart in the export's ``lora/`` folder
(``merge=False``, ``vividhead train export --no-merge``).
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
    lora: dict | None = None,
    adapters=None,
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
        kind: the trainer (``sft`` / ``distill`` / ``finetune``), recorded when given.
        lora: a LoRA fine-tune's settings, recorded (``merged`` unless ``adapters`` is given).
        adapters: a ``peft.PeftModel`` whose adapters the export keeps apart (``state_dict`` then
            being its base).

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
                               variant, weights=weights, step=step, source=source, kind=kind, lora=lora,
                               adapters=adapters)


def is_lora(cfg) -> bool:
    """Whether a run's config is a LoRA fine-tune (its checkpoints hold only adapters)."""
    ft = getattr(cfg, "finetune", None)
    return ft is not None and ft.method == "lora"


def lora_model(cfg, adapter_state: dict[str, torch.Tensor], base: FlashHeadTransformer | None = None):
    """peft's model of a LoRA fine-tune: the base of the run's ``model`` section (float32, CPU, frozen;
    or ``base``) with the adapter tensors of its checkpoint loaded.

    Raises:
        CheckpointError: adapter tensors that are not exactly the ones the run's ``finetune`` section makes.
    """
    from vividhead.models.lora import add_lora, lora_config
    from vividhead.training.trainers.models import build_transformer, resolve_variant

    ft = cfg.finetune
    if base is None:
        base = build_transformer(cfg.model, resolve_variant(cfg.model))
    peft_model = add_lora(base.float().requires_grad_(False), lora_config(ft.rank, ft.alpha, ft.dropout, ft.targets))
    dit = peft_model.base_model.model
    expected = {n for n, p in dit.named_parameters() if p.requires_grad}
    if set(adapter_state) != expected:
        raise CheckpointError(f"the checkpoint's adapters do not match finetune settings (missing "
                              f"{sorted(expected - set(adapter_state))[:3]}, unexpected "
                              f"{sorted(set(adapter_state) - expected)[:3]})")
    dit.load_state_dict({k: v.float() for k, v in adapter_state.items()}, strict=False)
    return peft_model.eval()


def read_checkpoint_weights(checkpoint: str | Path, weights: Literal["ema", "raw", "auto"] = "auto"):
    """The trained DiT of a stage-1, stage-2 or fine-tuning checkpoint, unsharded on the CPU (one
    process); a LoRA fine-tune's adapters merged into its base (:func:`read_checkpoint_state` gives
    them apart).

    Returns:
        ``(cfg, state_dict, info)`` as :func:`read_checkpoint_state`, the state dict always the whole
        DiT in the released key layout.

    Raises:
        CheckpointError: as :func:`read_checkpoint_state`.
    """
    from vividhead.models.lora import merge_lora

    cfg, sd, info = read_checkpoint_state(checkpoint, weights)
    if is_lora(cfg):
        sd = {k: v.detach().clone() for k, v in merge_lora(lora_model(cfg, sd)).state_dict().items()}
    return cfg, sd, info


def read_checkpoint_state(checkpoint: str | Path, weights: Literal["ema", "raw", "auto"] = "auto"):
    """The trained tensors of a checkpoint, unsharded on the CPU (one process): the whole DiT, or a
    LoRA fine-tune's adapters (``info["lora"]`` then holds its settings).

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
        ``{"checkpoint", "step", "weights" ("ema"/"raw"), "kind"}`` (and ``"lora"``, the adapter
        settings, for a LoRA fine-tune; the state dict then holds the adapters, peft's key names).

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
    if is_lora(cfg):
        ft = cfg.finetune
        info["lora"] = {"rank": ft.rank, "alpha": ft.alpha, "dropout": ft.dropout, "targets": list(ft.targets)}
    return cfg, sd, info


def export_checkpoint(checkpoint: str | Path, out: str | Path,
                      weights: Literal["ema", "raw", "auto"] = "auto", merge: bool = True) -> Path:
    """Export a stage-1, stage-2 or fine-tuning checkpoint (one process, on the CPU).

    Reads the DCP checkpoint's full state (:func:`read_checkpoint_state`), takes the EMA (stage 1)
    or the generator's EMA / weights (stage 2), and writes :func:`write_export`'s folder. A LoRA
    fine-tune's adapters are merged into the base (``merge``), or written apart to ``lora/`` over
    the base (an export of format version 2 that ``infer`` / ``serve`` apply at load).

    Args:
        checkpoint: a checkpoint folder or a run's output folder (newest checkpoint).
        out: the export folder.
        weights: ``ema``, ``raw``, or ``auto`` (EMA when the run kept one).
        merge: LoRA only: fold the adapters into the DiT (True) or keep them apart (False).

    Raises:
        CheckpointError: no checkpoint, ``ema`` asked of a run without one, or ``merge=False`` for a
            checkpoint without adapters.
    """
    from vividhead.models.lora import merge_lora
    from vividhead.training.trainers.models import build_encoders, build_transformer, resolve_variant

    cfg, sd, info = read_checkpoint_state(checkpoint, weights)
    variant = resolve_variant(cfg.model)
    adapters = None
    if is_lora(cfg):
        base = build_transformer(cfg.model, variant)
        base_sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
        peft_model = lora_model(cfg, sd, base)
        if merge:
            sd = merge_lora(peft_model).state_dict()
        else:
            sd, adapters = base_sd, peft_model
    elif not merge:
        raise CheckpointError(f"{info['checkpoint']}: --no-merge needs a LoRA fine-tune (finetune.method: lora); "
                              f"this is a {info['kind']} checkpoint of the whole DiT")
    encoders = build_encoders(cfg.model, variant, torch.device("cpu"), torch.float32)
    return write_export(out, sd, variant, encoders, weights=info["weights"], step=info["step"],
                        source=info["checkpoint"], kind=info["kind"], lora=info.get("lora"), adapters=adapters)

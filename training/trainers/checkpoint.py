"""Atomic, resumable trainer checkpoints with ``torch.distributed.checkpoint`` (DCP).

Layout under ``OUTPUT/checkpoints/``::

    step_00000500/            one complete checkpoint
        *.distcp, .metadata   DCP: sharded model, optimiser and EMA state (every rank writes its shards)
        rank00000.pt          per-rank state: RNG states (torch, CUDA, Python, NumPy), data position
        meta.json             step, scheduler state, the run's config, the world size
    latest                    the name of the newest complete checkpoint

A checkpoint is written into ``step_N.tmp/`` and renamed once every rank has finished, so a
killed run never leaves a half-written checkpoint that looks complete; ``latest`` is replaced
atomically. Resume is exact: same weights, optimiser moments, RNG streams and data position.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from vividhead.errors import UserError
from vividhead.training.trainers.distributed import DistEnv, barrier

logger = logging.getLogger(__name__)

_STEP_DIR = "step_{:08d}"


class CheckpointError(UserError, RuntimeError):
    """A checkpoint is missing, incomplete or does not match the run (one-line reason; the CLI prints
    it as ``error: ...`` and exits with code 2)."""


def rng_state() -> dict[str, Any]:
    """This process's RNG states (torch CPU, CUDA if present, Python ``random``, NumPy)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # As tensors and ints, so the rank file loads with ``weights_only=True``.
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _module_state(modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
                  trainable_only: bool = False) -> dict:
    state: dict[str, Any] = {}
    opts = StateDictOptions(ignore_frozen_params=trainable_only)
    for name, module in modules.items():
        state[f"model.{name}"] = get_model_state_dict(module, options=opts)
    for name, opt in optimizers.items():
        state[f"optim.{name}"] = get_optimizer_state_dict(modules[name], opt)
    return state


def latest_checkpoint(path: str | Path) -> Path | None:
    """The newest complete checkpoint under a run's output dir, its ``checkpoints/`` dir, or
    ``path`` itself when it is a checkpoint; ``None`` if there is none."""
    p = Path(path)
    if (p / "meta.json").exists():
        return p
    ckpt_dir = p / "checkpoints" if (p / "checkpoints").is_dir() else p
    pointer = ckpt_dir / "latest"
    if pointer.exists():
        cand = ckpt_dir / pointer.read_text().strip()
        if (cand / "meta.json").exists():
            return cand
    done = sorted(d for d in ckpt_dir.glob("step_*") if d.is_dir() and (d / "meta.json").exists())
    return done[-1] if done else None


def save_checkpoint(
    ckpt_dir: str | Path,
    step: int,
    env: DistEnv,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    tensors: dict[str, dict[str, torch.Tensor]],
    meta: dict[str, Any],
    rank_state: dict[str, Any],
    keep: int = 3,
    trainable_only: bool = False,
) -> Path:
    """Write one checkpoint (all ranks call this).

    Args:
        ckpt_dir: ``OUTPUT/checkpoints``.
        step: optimiser steps done.
        modules: named trained/frozen modules (``{"transformer": dit}``); FSDP2 modules save
            sharded.
        optimizers: named optimisers, keyed like the module they update.
        tensors: other tensor dicts saved with DCP (e.g. ``{"ema.transformer": {...}}``), sharded
            like the parameters they shadow.
        meta: JSON-serialisable run state written by rank 0 (scheduler state, config, ...).
        rank_state: this rank's picklable state (RNG, data position).
        keep: newest complete checkpoints kept.
        trainable_only: save only parameters with ``requires_grad`` (LoRA adapters over a frozen
            base the trainer rebuilds from its ``model`` section: a checkpoint of megabytes).

    Returns:
        the final checkpoint directory.

    Raises:
        OSError: the directory cannot be written.
    """
    root = Path(ckpt_dir)
    final = root / _STEP_DIR.format(step)
    tmp = root / (final.name + ".tmp")
    if env.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    barrier(env)
    state = _module_state(modules, optimizers, trainable_only)
    for name, td in tensors.items():
        state[name] = td
    dcp.save(state, checkpoint_id=str(tmp))
    torch.save(rank_state, tmp / f"rank{env.rank:05d}.pt")
    barrier(env)
    if env.is_main:
        meta = {**meta, "step": step, "world_size": env.world_size}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        pointer_tmp = root / "latest.tmp"
        pointer_tmp.write_text(final.name)
        os.replace(pointer_tmp, root / "latest")
        done = sorted(d for d in root.glob("step_*") if d.is_dir() and not d.name.endswith(".tmp"))
        for old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    barrier(env)
    return final


def load_checkpoint(
    path: str | Path,
    env: DistEnv,
    modules: dict[str, nn.Module],
    optimizers: dict[str, torch.optim.Optimizer],
    tensors: dict[str, dict[str, torch.Tensor]],
    trainable_only: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Load a checkpoint into the (already wrapped) modules, optimisers and tensor dicts in place.

    Args:
        path: a checkpoint dir, a run's ``checkpoints/`` dir or its output dir (newest is taken).
        trainable_only: the checkpoint holds only the parameters with ``requires_grad``
            (:func:`save_checkpoint`); the frozen ones keep the values the trainer built.

    Returns:
        ``(meta, rank_state)``.

    Raises:
        CheckpointError: no complete checkpoint at ``path``, or it was written by another world
            size (the data position and RNG states are per rank).
    """
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise CheckpointError(f"no complete checkpoint under {path}")
    meta = json.loads((ckpt / "meta.json").read_text())
    if meta.get("world_size") != env.world_size:
        raise CheckpointError(
            f"{ckpt} was written by {meta.get('world_size')} ranks, this run has {env.world_size}"
        )
    state = _module_state(modules, optimizers, trainable_only)
    for name, td in tensors.items():
        state[name] = td
    dcp.load(state, checkpoint_id=str(ckpt))
    for name, module in modules.items():
        # Every saved key is loaded (DCP above fails on a missing one); frozen keys are absent by design.
        set_model_state_dict(module, state[f"model.{name}"],
                             options=StateDictOptions(ignore_frozen_params=trainable_only, strict=not trainable_only))
    for name, opt in optimizers.items():
        set_optimizer_state_dict(modules[name], opt, state[f"optim.{name}"])
    for name, td in tensors.items():  # DCP loads in place; copy back in case a tensor was replaced
        for key, value in state[name].items():
            if value is not td[key]:
                td[key].copy_(value)
    rank_file = ckpt / f"rank{env.rank:05d}.pt"
    rank_state = torch.load(rank_file, weights_only=True) if rank_file.exists() else {}
    logger.info("resumed from %s (step %d)", ckpt, meta["step"])
    return meta, rank_state


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded state dict on CPU (collective: every rank calls it; rank 0 gets the tensors)."""
    return get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def full_tensors(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Unsharded CPU copies of (possibly DTensor) tensors (collective for DTensors)."""
    out = {}
    for k, v in tensors.items():
        full = v.full_tensor() if hasattr(v, "full_tensor") else v
        out[k] = full.detach().cpu()
    return out

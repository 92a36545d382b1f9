"""LoRA adapters on the FlashHead DiT, through Hugging Face ``peft`` (one home for the target groups,
used by the fine-tuning trainer, the export and ``vividhead infer --lora``).

Target groups (``finetune.targets``) and the :class:`~vividhead.models.flashhead.FlashHeadTransformer`
``nn.Linear`` modules they name (every block ``i``):

=============  ==============================================  =========================
group          modules                                         shapes (Pro / Lite 1.3B)
=============  ==============================================  =========================
``self_attn``  ``blocks.{i}.self_attn.{q,k,v,o}``              dim x dim
``cross_attn`` ``blocks.{i}.cross_attn.{q,k,v,o}`` (audio)     dim x dim
``ffn``        ``blocks.{i}.ffn.0``, ``blocks.{i}.ffn.2``      dim x ffn_dim, ffn_dim x dim
=============  ==============================================  =========================

An adapter folder is peft's ``save_pretrained`` layout (``adapter_config.json`` +
``adapter_model.safetensors``); its ``target_modules`` is the regular expression
:func:`target_pattern` builds, so the folder applies to any FlashHead DiT with the same width.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Group name -> regular expression of the module names (relative to the DiT) it adapts.
LORA_GROUPS: dict[str, str] = {
    "self_attn": r"blocks\.\d+\.self_attn\.(q|k|v|o)",
    "cross_attn": r"blocks\.\d+\.cross_attn\.(q|k|v|o)",
    "ffn": r"blocks\.\d+\.ffn\.(0|2)",
}


def target_pattern(groups: tuple[str, ...] | list[str]) -> str:
    """peft's ``target_modules`` (a full-match regular expression) for ``groups``.

    Raises:
        ValueError: an unknown or empty group list.
    """
    bad = [g for g in groups if g not in LORA_GROUPS]
    if bad or not groups:
        raise ValueError(f"LoRA target groups must be some of {list(LORA_GROUPS)}, got {list(groups)}")
    return "(" + "|".join(LORA_GROUPS[g] for g in sorted(set(groups), key=list(LORA_GROUPS).index)) + ")"


def target_modules(model: nn.Module, groups: tuple[str, ...] | list[str]) -> list[str]:
    """The names of ``model``'s modules the groups adapt (what peft will wrap)."""
    pat = re.compile(target_pattern(groups))
    return [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and pat.fullmatch(n)]


def lora_config(rank: int, alpha: float, dropout: float, groups: tuple[str, ...] | list[str]):
    """A ``peft.LoraConfig`` over the groups (B initialised to zero: the adapted model starts equal
    to the base)."""
    from peft import LoraConfig

    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_pattern(groups),
                      bias="none")


def add_lora(model: nn.Module, config: Any):
    """Wrap ``model`` (frozen by the caller) in a ``peft.PeftModel`` with fresh adapters.

    The adapters are float32 whatever the base dtype (peft's default), and the only parameters
    with ``requires_grad``. The DiT stays reachable as ``peft_model.base_model.model``, with the
    LoRA layers injected in place (its keys gain ``.base_layer.`` / ``.lora_A.default.``).
    """
    from peft import get_peft_model

    return get_peft_model(model, config)


def load_lora(model: nn.Module, path: str | Path, merge: bool = True) -> nn.Module:
    """Apply the adapter folder ``path`` to ``model`` (a FlashHead DiT, any dtype / device).

    Args:
        merge: fold ``W + (alpha/r) B A`` into the base weights and return the plain DiT (as fast as
            the base at inference); ``False`` returns the ``PeftModel`` (adapters kept apart).

    Raises:
        FileNotFoundError: no ``adapter_config.json`` in ``path``.
        ValueError: the adapters do not fit the model (other width, missing target modules).
    """
    from peft import PeftModel

    p = Path(path)
    if not (p / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{p}: no adapter_config.json (not a LoRA adapter folder written by "
                                "`vividhead train export --no-merge`)")
    requires_grad = any(q.requires_grad for q in model.parameters())
    try:
        peft_model = PeftModel.from_pretrained(model, str(p), is_trainable=False)
    except (RuntimeError, ValueError, KeyError) as exc:
        raise ValueError(f"{p}: the LoRA adapters do not fit this model ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0]})") from exc
    if not merge:
        return peft_model
    merged = merge_lora(peft_model)
    return merged.requires_grad_(requires_grad)


def apply_lora(model: nn.Module, path: str | Path) -> nn.Module:
    """:func:`load_lora` merged, for inference: the DiT with ``path``'s adapters folded in, marked
    with ``lora_source`` (the folder) so that a loader applies an export's adapters only once.

    Raises:
        FileNotFoundError, ValueError: see :func:`load_lora`.
    """
    training = model.training
    merged = load_lora(model, path, merge=True).train(training)
    merged.lora_source = str(path)
    return merged


@torch.no_grad()
def merge_lora(peft_model) -> nn.Module:
    """The DiT with the adapters folded into its weights (peft's ``merge_and_unload``): released key
    layout again, no LoRA layers left."""
    return peft_model.merge_and_unload()


def adapter_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable (adapter) tensors of a module, by name."""
    return {n: p for n, p in module.named_parameters() if p.requires_grad}


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in module.parameters())

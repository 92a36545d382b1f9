"""Fine-tuning a released (or exported) FlashHead on your own clips: LoRA through ``peft``, or full
fine-tuning.

The objective is stage 1's (:class:`~vividhead.training.trainers.sft.SFTTrainer`: the streaming-aware
flow-matching loss on curated windows, or a latent cache); what changes is what trains:

* ``finetune.method: lora`` -- the DiT is frozen, cast to ``finetune.base_dtype`` (bf16 on CUDA,
  float32 on the CPU), and peft's LoRA adapters (float32) wrap the ``nn.Linear`` modules of the
  selected groups (:data:`vividhead.models.lora.LORA_GROUPS`: ``self_attn``, ``cross_attn`` (audio),
  ``ffn``). The optimiser (and the EMA, when kept) hold only the adapters, and so does a checkpoint
  (DCP, ``trainable_only``): megabytes, with exact resume (the base is rebuilt from the ``model``
  section, which must point at the same weights). ``vividhead train export`` merges the adapters
  into the DiT, or keeps them apart with ``--no-merge`` (:mod:`vividhead.training.trainers.export`).
* ``finetune.method: full`` -- every DiT weight trains, with stage-1 checkpoints, exactly as
  ``vividhead train sft``.

Command: ``vividhead train finetune --config examples/finetune_pro_lora.yaml [--resume auto]``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Literal

import torch

from vividhead.config import ConfigError, check
from vividhead.models.lora import LORA_GROUPS, add_lora, count_parameters, lora_config
from vividhead.training.trainers.config import ParallelConfig, SFTConfig
from vividhead.training.trainers.distributed import shards
from vividhead.training.trainers.models import build_transformer
from vividhead.training.trainers.sft import SFTTrainer

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneSection:
    """What trains.

    Attributes:
        method: ``lora`` (adapters over a frozen base) or ``full`` (every DiT weight, as stage 1).
        rank: LoRA rank ``r``.
        alpha: LoRA ``alpha`` (the update is scaled by ``alpha / r``).
        dropout: dropout on the adapters' input.
        targets: the groups adapted: any of ``self_attn``, ``cross_attn`` (the audio
            cross-attention), ``ffn`` (:data:`vividhead.models.lora.LORA_GROUPS`).
        base_dtype: dtype of the frozen base under LoRA: ``auto`` (bf16 on CUDA, float32 on the
            CPU), ``bf16`` or ``fp32``.
    """

    method: Literal["lora", "full"] = "lora"
    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("self_attn", "cross_attn", "ffn")
    base_dtype: Literal["auto", "bf16", "fp32"] = "auto"

    def validate(self, section: str) -> None:
        check(self.rank >= 1, f"{section}.rank", "must be >= 1")
        check(self.alpha > 0, f"{section}.alpha", "must be > 0")
        check(0 <= self.dropout < 1, f"{section}.dropout", "must be in [0, 1)")
        check(len(self.targets) > 0 and all(t in LORA_GROUPS for t in self.targets), f"{section}.targets",
              f"must be a non-empty list of {list(LORA_GROUPS)}")


@dataclass(frozen=True)
class FinetuneConfig(SFTConfig):
    """``vividhead train finetune``: stage 1's sections (``flow`` included) and ``finetune``. One
    process by default (``parallel.strategy: none``): the frozen base is replicated, not sharded."""

    parallel: ParallelConfig = field(default_factory=lambda: ParallelConfig(strategy="none"))
    finetune: FinetuneSection = field(default_factory=FinetuneSection)


class FinetuneTrainer(SFTTrainer):
    """Stage 1's objective over a LoRA-adapted (or fully trained) DiT (see the module docstring).

    Attributes (after :meth:`build`, LoRA): ``peft_model`` (the ``peft.PeftModel``), ``transformer``
    (the DiT inside it, LoRA layers injected; the checkpointed module), ``trainable_params`` /
    ``total_params``.

    Raises:
        ConfigError: LoRA with FSDP sharding over several ranks (use ``ddp`` or ``none``).
    """

    kind = "finetune"

    def __init__(self, cfg: FinetuneConfig, resume: str | None = None) -> None:
        super().__init__(cfg, resume)
        self.lora = cfg.finetune.method == "lora"
        self.checkpoint_trainable_only = self.lora
        if self.lora and shards(cfg.parallel, self.env):
            raise ConfigError("parallel.strategy: fsdp shards over several ranks; LoRA keeps the frozen base "
                              "whole on every rank: use ddp (or none on one GPU)")

    def base_dtype(self) -> torch.dtype:
        """The frozen base's dtype under LoRA."""
        name = self.cfg.finetune.base_dtype
        if name == "auto":
            return torch.bfloat16 if self.env.device.type == "cuda" else torch.float32
        return torch.bfloat16 if name == "bf16" else torch.float32

    def build(self) -> None:
        if not self.lora:
            super().build()  # full fine-tuning: stage 1 exactly (checkpoints, EMA, export)
            return
        cfg, env, ft = self.cfg, self.env, self.cfg.finetune
        base = build_transformer(cfg.model, self.variant).requires_grad_(False)
        # nn.Module.to: diffusers' ModelMixin.to warns about fp32-pinned modules on any dtype cast
        # (FlashHeadTransformer pins none).
        base = torch.nn.Module.to(base, env.device, self.base_dtype())
        self.peft_model = add_lora(base, lora_config(ft.rank, ft.alpha, ft.dropout, ft.targets))
        model = self.peft_model.base_model.model  # the DiT, LoRA layers in place
        model.train()
        self.trainable_params, self.total_params = count_parameters(model)
        logger.info("LoRA r=%d alpha=%g on %s: %d trainable parameters of %d (%.2f%%), base %s", ft.rank, ft.alpha,
                    ",".join(ft.targets), self.trainable_params, self.total_params,
                    100.0 * self.trainable_params / self.total_params, self.base_dtype())
        self.build_around(model)


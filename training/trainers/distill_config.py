"""Config of ``vividhead train distill`` (stage 2: DMD distillation with a K-chunk rollout).

The shared sections (:class:`~vividhead.training.trainers.config.TrainConfig`: ``model``, ``data``,
``optim``, ``parallel``, ``checkpoint``, ``log``, ``run``; ``optim`` without warm-up by default)
plus ``distill``. Shipped examples:
``examples/distill_pro.yaml`` (1.3B Pro on one or more H200s) and ``examples/distill_tiny_cpu.yaml``.

Sources: FlashHead report §3.2 stage 2 (eq. 4-5) and §4; LiveTalk §2.2 stage 2 (eq. 2-3), §3
(Tables 2-3); DMD2 / Self-Forcing for the loss form and the 1:5 update ratio; SPEC.md §3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from vividhead.config import bounded, check
from vividhead.training.trainers.config import OptimConfig, TrainConfig


@dataclass(frozen=True)
class DistillSection:
    """The stage-2 method.

    Attributes:
        mode: the generator objective, a name of
            :data:`vividhead.training.trainers.objectives.OBJECTIVES`: ``oracle`` (FlashHead:
            ``real_score`` conditioned on ground-truth motion latents, plus
            ``regression_weight * ||z_student^(k) - z_gt^(k)||^2``, eq. 5) or ``self_correcting``
            (LiveTalk: ``real_score`` sees the generator's predicted motion latents noised like the
            rest of the sample; no loss on motion latents, Table 3's best row).
        init_checkpoint: the stage-1 model all three networks start from: a ``vividhead train
            export`` folder or a stage-1 checkpoint (folder or run folder, newest checkpoint). It
            also defines the model (variant, shapes, frame size, VAE, Wav2Vec): the ``model``
            section is taken from it. ``null``: the three networks come from ``model`` (e.g.
            ``init: random`` for the benchmark).
        init_weights: with a stage-1 checkpoint, its ``ema``, ``raw`` weights, or ``auto`` (the EMA
            when the run kept one, as ``vividhead train export`` does).
        max_chunks: K: the rollout generates k ~ U(1, K) chunks (LiveTalk Table 2: random in
            [1, 5] is best); fewer when the data window holds fewer chunks (see ``data``).
        reencode_motion: each chunk's motion latents are the VAE re-encoding of the previous
            chunk's last ``motion_frames`` decoded, colour-corrected frames, exactly as
            :class:`vividhead.inference.pipeline.StreamingSession` does (default, what the released
            inference does); ``false`` takes the previous chunk's last motion-latent slots directly
            (cheaper, no VAE in the loop, but not what inference feeds the model).
        regression_weight: lambda of eq. 5 (oracle mode; the report gives no value). 0.05: the
            regression gradient ``2 lambda (z - z_gt)`` then stays well below the normalised DMD
            gradient (mean |grad| is O(0.1-1) by construction), so it anchors the trajectory
            without turning the student into a conditional-mean (blurry) regressor; the trainer
            logs both gradient magnitudes (``dmd_grad_abs``, ``reg_grad_abs``) to tune it.
        guidance_scale: audio classifier-free guidance of the teacher,
            ``v = v_uncond + s (v_cond - v_uncond)`` with zeroed audio features as the
            unconditional branch (the released teacher path: 3.0); 1 turns it off (one pass).
            Self-Forcing writes the same guidance as ``cond + s' (cond - uncond)``, ``s' = s - 1``.
        fake_updates_per_generator_update: the generator steps after every N-th fake-score update
            (1:5, Self-Forcing's ``dfake_gen_update_ratio``).
        generator_lr, fake_score_lr: AdamW learning rates (2e-6 and 4e-7: LiveTalk §3, FlashHead
            §4). The ``optim`` section gives betas, eps, weight decay, warm-up (in updates of each
            network) and the gradient clip of both.
        generator_ema_decay: EMA of the generator, updated after every trainer step (each fake
            update), so 0.998 is ~0.99 per generator update (Self-Forcing's ``ema_weight``); the
            export takes the EMA when there is one. 0 disables it.
        min_sigma, max_sigma: clamp of the noise levels drawn (uniform, shifted) for the DMD loss
            and the fake-score loss (Self-Forcing: 0.02 / 0.98 of the 1000 steps).
        timestep_shift: shift of those draws (Wan's 5, as stage 1 trains).
    """

    mode: str = "oracle"
    init_checkpoint: Optional[str] = None
    init_weights: Literal["auto", "ema", "raw"] = "auto"
    max_chunks: int = bounded(5, ">= 1")
    reencode_motion: bool = True
    regression_weight: float = bounded(0.05, ">= 0")
    guidance_scale: float = bounded(3.0, ">= 0")
    fake_updates_per_generator_update: int = bounded(5, ">= 1")
    generator_lr: float = bounded(2e-6, "> 0")
    fake_score_lr: float = bounded(4e-7, "> 0")
    generator_ema_decay: float = bounded(0.0, "in [0, 1)")
    min_sigma: float = 0.02
    max_sigma: float = 0.98
    timestep_shift: float = bounded(5.0, "> 0")

    def validate(self, section: str) -> None:
        from vividhead.training.trainers.objectives import OBJECTIVES  # torch: only when a config is checked

        check(self.mode in OBJECTIVES, f"{section}.mode", f"must be one of {list(OBJECTIVES)}, got {self.mode!r}")
        check(0.0 <= self.min_sigma < self.max_sigma <= 1.0, f"{section}.min_sigma",
              "need 0 <= min_sigma < max_sigma <= 1")


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """``vividhead train distill`` (FlashHead Oracle-Guided / LiveTalk Self-Correcting Bidirectional
    Distillation).

    ``data``: ``num_frames`` / ``motion_frames`` are one chunk's geometry (33 / 5 for Pro); a
    training window holds up to ``distill.max_chunks`` consecutive chunks (``motion_frames + k *
    (num_frames - motion_frames)`` frames); ``batch_size`` must be 1 (batch 1 per GPU, as both
    reports; scale with GPUs); ``latent_cache`` is not supported (the rollout needs whole windows).
    ``cold_start_prob`` applies to the first chunk's ground-truth motion frames.
    """

    optim: OptimConfig = field(default_factory=lambda: OptimConfig(warmup_steps=0))
    distill: DistillSection = field(default_factory=DistillSection)

    def validate(self, section: str) -> None:
        check(self.data.batch_size == 1, "data.batch_size", "must be 1 for distillation (batch 1 per GPU)")
        check(self.data.latent_cache is None, "data.latent_cache",
              "not supported by distillation (the rollout needs whole multi-chunk windows)")
        check(self.optim.lr == OptimConfig.lr, "optim.lr",
              "not used by distillation; set distill.generator_lr and distill.fake_score_lr")
        check(self.optim.ema_decay == 0, "optim.ema_decay",
              "not used by distillation; set distill.generator_ema_decay")

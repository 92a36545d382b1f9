"""Stage 1: streaming-aware spatiotemporal flow-matching pre-training of the FlashHead DiT.

FlashHead report §3.2 ("Streaming-Aware Spatiotemporal Pre-training") and §4; LiveTalk §2.2
("Latency-Aware Spatiotemporal Adaptation"); SPEC.md §2-3. Each step draws a window of a curated
clip, encodes it with the frozen VAE and Wav2Vec exactly as streaming inference conditions a chunk
(:mod:`vividhead.training.trainers.conditioning`), puts the ground-truth motion latents in the first
latent slots (5 frames -> 2 latents with p = 0.9, one first frame with p = 0.1), noises the rest on
Wan's shifted schedule and regresses the velocity there (:func:`flow_matching_loss`). Audio and
reference are dropped with configurable probabilities, so the model supports the audio guidance of
the stage-2 teacher.

Command: ``vividhead train sft --config sft.yaml [--resume PATH]`` under ``torchrun`` (or alone).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from vividhead.flow_matching import (
    FlowMatchingSchedule,
    flow_matching_loss,
    sample_chunk,
    sample_training_sigmas,
)
from vividhead.shard_format import SAMPLES_PER_FRAME
from vividhead.training.trainers.conditioning import ChunkInputs, encode_batch
from vividhead.training.trainers.config import SFTConfig
from vividhead.training.trainers.distributed import all_reduce_mean, autocast, wrap_model
from vividhead.training.trainers.flops import dit_forward_flops, dit_tokens
from vividhead.training.trainers.models import build_encoders, build_transformer, resolve_variant
from vividhead.training.trainers.runtime import EMA, Trainer, make_optimizer, make_scheduler

logger = logging.getLogger(__name__)

#: Sigma buckets of the per-timestep loss curves.
SIGMA_BUCKETS = (0.25, 0.5, 0.75, 1.0)


def condition_dropout(inputs: ChunkInputs, audio_p: float, ref_p: float,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero the audio context and / or the reference latent per sample.

    Returns:
        ``(context, ref_latent)`` with dropped samples zeroed (the unconditional inputs of the
        teacher's audio guidance are zeroed audio features).
    """
    b = inputs.latents.shape[0]
    dev = inputs.latents.device
    keep_a = (torch.rand(b, generator=generator, device=dev) >= audio_p).float()
    keep_r = (torch.rand(b, generator=generator, device=dev) >= ref_p).float()
    context = inputs.context * keep_a.view(b, 1, 1, 1, 1)
    ref = inputs.ref_latent * keep_r.view(b, 1, 1, 1, 1)
    return context, ref


class SFTTrainer(Trainer):
    """The stage-1 trainer (see the module docstring).

    Args:
        cfg: :class:`SFTConfig`.
        resume: checkpoint to resume from (``"auto"``: the run's newest, if any).
    """

    kind = "sft"

    def __init__(self, cfg: SFTConfig, resume: str | None = None) -> None:
        super().__init__(cfg, resume)
        self.variant = resolve_variant(cfg.model)
        self.compute_dtype = torch.bfloat16 if cfg.parallel.precision == "bf16" else torch.float32
        self._flops = 0.0
        self._tokens = 0

    # -- building -------------------------------------------------------------------------------
    def build(self) -> None:
        self.build_around(build_transformer(self.cfg.model, self.variant).to(self.env.device))

    def build_around(self, model: torch.nn.Module) -> None:
        """Everything but the DiT: wrap ``model`` (parallelism, compile), the frozen encoders, the
        optimiser over its trainable parameters, the scheduler, the EMA and the data stream (shared by
        the fine-tuning trainer, whose DiT carries adapters)."""
        cfg, env = self.cfg, self.env
        self.transformer = model
        self.dit = wrap_model(model, model.blocks, cfg.parallel, env)
        enc_dtype = self.compute_dtype if env.device.type == "cuda" else torch.float32
        self.encoders = build_encoders(cfg.model, self.variant, env.device, enc_dtype, cfg.parallel)
        opt = make_optimizer([p for p in model.parameters() if p.requires_grad], cfg.optim, device=env.device)
        self.modules = {"transformer": model}
        self.optimizers = {"transformer": opt}
        self.schedulers = {"transformer": make_scheduler(opt, cfg.optim.warmup_steps)}
        if cfg.optim.ema_decay > 0:
            self.emas = {"transformer": EMA(model, cfg.optim.ema_decay)}
        self.build_data()

    def build_data(self) -> None:
        """The training stream: curated windows (held-out clips excluded), or a latent cache."""
        cfg, env = self.cfg, self.env
        if cfg.data.latent_cache:
            from vividhead.training.trainers.latent_cache import LatentCacheDataset, check_cache_geometry

            check_cache_geometry(cfg.data.latent_cache, cfg)
            self.val_keys = []
            self.dataset = LatentCacheDataset(
                cfg.data.latent_cache, self.variant.transformer.audio_window, cfg.data.num_frames,
                motion_latents=1 + (cfg.data.motion_frames - 1) // self.encoders.vae.temporal_stride,
                cold_start_prob=cfg.data.cold_start_prob, seed=cfg.run.seed, rank=env.rank, world_size=env.world_size,
            )
        else:
            self.dataset = self.make_dataset(cfg.data, self._train_filter())
        self.val_batches: list[Any] | None = None
        self.val_audio: Any = None  # float32 [640 * F] of the preview window (set with val_batches)

    def _train_filter(self) -> dict:
        keys = self.held_out_keys()
        self.val_keys = keys
        return {"exclude_keys": keys} if keys else {}

    def data_stream(self):
        return self.batches(self.dataset, self.cfg.data)

    # -- accounting -----------------------------------------------------------------------------
    def train_flops_per_step(self) -> float:
        return self._flops

    def tokens_per_step(self) -> int:
        return self._tokens

    def _account(self, inputs: ChunkInputs) -> None:
        b, _, f, h, w = inputs.latents.shape
        tcfg = self.variant.transformer
        self._flops = 3 * dit_forward_flops(tcfg, (f, h, w), b)
        self._tokens = b * dit_tokens(tcfg, (f, h, w))

    # -- the step -------------------------------------------------------------------------------
    def velocity_fn(self, context: torch.Tensor, ref: torch.Tensor):
        """The DiT closed over its conditioning, in the compute dtype."""
        dit = self.dit

        def velocity(x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            with autocast(self.cfg.parallel, self.env):
                return dit(x_t, timestep, context, ref)

        return velocity

    def loss(self, inputs: ChunkInputs):
        """The flow-matching loss of one batch (graph kept)."""
        flow = self.cfg.flow
        b = inputs.latents.shape[0]
        dev = inputs.latents.device
        sigma = sample_training_sigmas(b, shift=flow.shift, method=flow.timestep_sampling,
                                       logit_mean=flow.logit_mean, logit_std=flow.logit_std,
                                       generator=self.generator, device=dev)
        noise = torch.randn(inputs.latents.shape, generator=self.generator, device=dev)
        context, ref = condition_dropout(inputs, flow.audio_dropout, flow.reference_dropout, self.generator)
        return flow_matching_loss(self.velocity_fn(context, ref), inputs.latents, inputs.num_motion, sigma, noise,
                                  flow.loss_weighting)

    def encode(self, batch) -> ChunkInputs:
        """Frozen-encoder inputs of a batch (a latent-cache batch is already encoded)."""
        if hasattr(batch, "inputs"):  # a CachedBatch
            return batch.inputs.to(self.env.device)
        s = self.variant.streaming
        return encode_batch(batch, self.encoders, self.variant.transformer.audio_window, self.env.device,
                            size=(s.height_px, s.width_px))

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        inputs = self.encode(batch)
        self._account(inputs)
        out = self.loss(inputs)
        grad_norm = self.update("transformer", out.loss)
        scalars = {"loss": all_reduce_mean(out.loss.detach(), self.env), "grad_norm": grad_norm}
        for lo, hi in zip((0.0,) + SIGMA_BUCKETS[:-1], SIGMA_BUCKETS):
            sel = ((out.sigma >= lo) & (out.sigma < hi if hi < 1.0 else out.sigma <= hi)).float()
            # NaN when no sample fell in the bucket (skipped when averaged for the log)
            scalars[f"loss_sigma_{lo:.2f}-{hi:.2f}"] = (out.per_sample * sel).sum() / sel.sum()
        return scalars

    # -- validation and previews ----------------------------------------------------------------
    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Mean flow-matching loss on the held-out clips at fixed sigmas and noise (deterministic)."""
        if not self.val_keys:
            return None
        if self.val_batches is None:
            # Every rank reads every held-out clip: the same number of FSDP forwards on all ranks.
            ds = self.make_dataset(self.cfg.data, {"keys": self.val_keys}, seed=12345, shuffle=False,
                                   rank=0, world_size=1)
            ds.cold_start_prob = 0.0
            self.val_batches = []
            for b in self.make_loader(ds, self.cfg.data):
                if not self.val_batches:  # the preview's window: its last F frames' audio
                    self.val_audio = b.audio[0, -SAMPLES_PER_FRAME * b.frames.shape[1]:].float().numpy()
                self.val_batches.append(self.encode(b).to(torch.device("cpu")))
        g = torch.Generator(device=self.env.device).manual_seed(777)
        losses = []
        for cpu_inputs in self.val_batches:
            inputs = cpu_inputs.to(self.env.device)
            b = inputs.latents.shape[0]
            for s in (0.2, 0.5, 0.8):
                sigma = torch.full((b,), s, device=self.env.device)
                noise = torch.randn(inputs.latents.shape, generator=g, device=self.env.device)
                out = flow_matching_loss(self.velocity_fn(inputs.context, inputs.ref_latent), inputs.latents,
                                         inputs.num_motion, sigma, noise)
                losses.append(float(all_reduce_mean(out.loss, self.env)))
        return sum(losses) / max(1, len(losses))

    @torch.no_grad()
    def preview(self, path: Path) -> Path | None:
        """Sample the first held-out window with the inference sampler and write an MP4 with the
        window's audio (rank 0)."""
        if not self.val_keys:
            return None
        if self.val_batches is None:
            self.validation_loss()
        if not self.val_batches:
            return None
        inputs = self.val_batches[0].to(self.env.device)
        g = torch.Generator(device=self.env.device).manual_seed(0)
        noise = torch.randn(inputs.latents[:1].shape, generator=g, device=self.env.device)
        motion = inputs.latents[:1, :, : int(inputs.num_motion[0])]
        schedule = FlowMatchingSchedule(self.variant.streaming.timesteps, self.variant.streaming.shift)
        x = sample_chunk(self.velocity_fn(inputs.context[:1], inputs.ref_latent[:1]), noise, motion, schedule,
                         generator=g, dtype=torch.float32)
        if not self.env.is_main:
            return None
        vae = self.encoders.vae
        video = vae.decode(x.to(next(vae.parameters()).dtype))[0]  # [3, F, H, W]
        from vividhead.media import write_video

        return write_video(path, video, self.variant.streaming.fps, audio=self.val_audio)

    def on_log(self, scalars: dict[str, float]) -> None:
        log = self.cfg.log
        if log.validate_every_steps and self.step % log.validate_every_steps == 0:
            val = self.validation_loss()
            if val is not None:
                self.log_scalars({"val/loss": val})
        if log.preview_every_steps and self.step % log.preview_every_steps == 0:
            self.preview(self.out / "previews" / f"step_{self.step:08d}.mp4")

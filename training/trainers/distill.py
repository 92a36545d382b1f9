"""Stage 2: DMD distillation of the stage-1 model into the 4-step streaming generator, with a
K-chunk autoregressive rollout, stochastic truncation and oracle (FlashHead) or self-correcting
(LiveTalk) teacher conditioning.

Sources: FlashHead report §3.2 stage 2 (eq. 4-5) and §4; LiveTalk §2.2 stage 2 (eq. 2-3) and §3
(Tables 2-3); DMD2 / Self-Forcing (``model/dmd.py``: the normalised DMD gradient written as
``0.5 * MSE(x0, stopgrad(x0 - grad))``; ``trainer/distillation.py``: the 1:5 update ratio); SPEC.md §3.

One trainer step (:meth:`DistillTrainer.train_step`, one window of a curated clip per GPU):

1. **window** -- up to K consecutive chunks of a clip (:class:`RolloutWindowDataset`): chunk ``j``
   covers frames ``[j * n, j * n + frame_num)`` with ``n = frame_num - motion_frames`` new frames,
   so its first ``motion_frames`` frames are the previous chunk's last ones, as in streaming; each
   chunk's audio context is Wav2Vec of its own 8 s cache ending at its last frame.
2. **fake-score update** -- draw ``k ~ U(1, K)`` and ``t' ~ U(1, T)`` (rank 0, broadcast), roll the
   generator out for k chunks without graph (:meth:`DistillTrainer.rollout`), train ``fake_score``
   with the flow-matching loss on the detached output of step t' of chunk k
   (:func:`vividhead.flow_matching.flow_matching_loss`; motion slots clean, no loss there).
3. **generator update** (after every 5th fake update) -- a fresh draw and rollout in which only
   step t' of chunk k keeps its graph (``sample_chunk(exit_step=t', grad_step=t')``; every earlier
   chunk and step runs under ``no_grad``), then the generator objective of ``distill.mode``
   (:mod:`vividhead.training.trainers.objectives`): the DMD loss (:func:`distribution_matching_loss`)
   against ``real_score`` (audio CFG) and ``fake_score``, plus in ``oracle`` mode
   ``lambda * ||z_student^(k) - z_gt^(k)||^2``.

Chunk ``j > 1`` is conditioned on motion latents from the generator's own chunk ``j - 1``: the VAE
re-encoding of its last ``motion_frames`` decoded, colour-corrected frames (exactly what
:class:`vividhead.inference.pipeline.StreamingSession` feeds the model), or with
``distill.reencode_motion: false`` its last motion-latent slots directly. Chunk 1 takes the
window's ground-truth motion latents (a single first frame with ``data.cold_start_prob``).

Motion slots in the scores' inputs (:meth:`DistillTrainer.generator_loss`), with ``x_s`` the
generator's ``x0`` noised to the drawn sigma on every slot:

=================  ====================================  ========================================
network            ``oracle``                            ``self_correcting``
=================  ====================================  ========================================
``fake_score``     predicted motion latents, clean       predicted motion latents, clean
``real_score``     ground-truth motion latents, clean    predicted motion latents, noised (``x_s``)
=================  ====================================  ========================================

Generated slots are ``x_s`` for both; motion slots never take a loss.

Command: ``vividhead train distill --config distill.yaml [--resume PATH]`` under ``torchrun`` (or
alone); gloo on CPU for tiny configs.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from vividhead.config import ConfigError, to_dict
from vividhead.export_format import is_export, read_export
from vividhead.flow_matching import (
    NUM_TRAIN_TIMESTEPS,
    flow_matching_loss,
    motion_latent_count,
    motion_loss_mask,
    predict_x0,
    sample_training_sigmas,
)
from vividhead.shard_format import SAMPLES_PER_FRAME
from vividhead.streaming.color import reference_lab_stats
from vividhead.streaming.step import ChunkStep, StreamState
from vividhead.training.data import ClipWindowDataset
from vividhead.training.trainers.checkpoint import CheckpointError, latest_checkpoint
from vividhead.training.trainers.conditioning import (
    encode_audio_context,
    encode_frames,
    encode_reference,
    model_frames,
)
from vividhead.training.trainers.config import ModelConfig, config_from_dict
from vividhead.training.trainers.distill_config import DistillConfig
from vividhead.training.trainers.distributed import all_reduce_mean, autocast, broadcast_ints, wrap_model
from vividhead.training.trainers.flops import dit_forward_flops
from vividhead.training.trainers.models import (
    UNUSED_MODULES,
    build_encoders,
    build_transformer,
    resolve_variant,
)
from vividhead.training.trainers.objectives import (
    DMDLoss,
    GeneratorObjective,
    distribution_matching_loss,
    make_objective,
    masked_mean,
)
from vividhead.training.trainers.registry import get_train_spec
from vividhead.training.trainers.runtime import EMA, Trainer, make_optimizer, make_scheduler

logger = logging.getLogger(__name__)

#: The three networks, by role (Self-Forcing's names).
ROLES = ("generator", "fake_score", "real_score")


# ----------------------------------------------------------------------------------------------
# Data: windows of up to K consecutive chunks
# ----------------------------------------------------------------------------------------------
def window_chunks(clip_num_frames: int, chunk_frames: int, motion_frames: int, max_chunks: int) -> int:
    """Chunks in the longest window a clip holds (at least one frame left for the reference).

    A window of ``c`` chunks has ``motion_frames + c * (chunk_frames - motion_frames)`` frames.

    Returns:
        ``min(max_chunks, (N - 1 - motion_frames) // new_frames)``; 0 when not even one chunk fits.
    """
    new = chunk_frames - motion_frames
    return max(0, min(max_chunks, (clip_num_frames - 1 - motion_frames) // new))


class RolloutWindowDataset(ClipWindowDataset):
    """:class:`ClipWindowDataset` windows of up to ``max_chunks`` consecutive streaming chunks.

    A clip of ``N`` frames gives a window of ``c = window_chunks(N, num_frames, num_motion_frames,
    max_chunks)`` chunks (``motion_frames + c * new_frames`` frames, e.g. 5 + 28c for Pro), drawn at a
    uniform start with a reference frame outside it; the audio is ``audio_context_s`` plus the
    window's extra ``(c - 1) * new_frames`` frames, ending at the window's last frame, so every
    chunk's own 8 s cache is a slice of it (:meth:`RolloutWindow.chunk_audio`). Clips shorter than
    K chunks give fewer chunks (at least one: the manifest selection already requires
    ``num_frames + 1`` frames); the trainer then draws k up to what every rank's window holds.

    Args:
        max_chunks: K.
        num_frames, num_motion_frames: one chunk's geometry (33 / 5 for Pro).
        **kwargs: :class:`ClipWindowDataset` arguments.
    """

    def __init__(self, *args: Any, max_chunks: int = 5, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if max_chunks < 1:
            raise ValueError(f"max_chunks must be >= 1, got {max_chunks}")
        self.max_chunks = max_chunks
        self.chunk_frames = self.num_frames

    def window_geometry(self, clip_num_frames: int) -> tuple[int, int]:
        chunks = max(1, window_chunks(clip_num_frames, self.chunk_frames, self.num_motion_frames, self.max_chunks))
        new = self.chunk_frames - self.num_motion_frames
        return self.num_motion_frames + chunks * new, self.audio_samples + (chunks - 1) * new * SAMPLES_PER_FRAME


@dataclass
class RolloutWindow:
    """One ground-truth window on the device, encoded lazily (only what a rollout asks for).

    Attributes:
        frames: uint8 ``[1, W, 3, H0, W0]`` the window's frames (``W = motion + chunks * new``).
        audio: float32 ``[1, S]``: 8 s before the first chunk's end through the window's end.
        num_chunks: chunks in the window.
        num_motion_frames: ground-truth motion frames of chunk 1 (5, or 1 for a cold start).
        ref_latent: float32 ``[1, C, F, h, w]`` reference latent of a chunk.
        ref_stats: Lab mean/std of the reference (colour correction, as inference).
        first_motion: float32 ``[1, C, M, h, w]`` ground-truth motion latents of chunk 1.
        trainer: the trainer whose encoders and geometry encode the rest.
        key: the clip's sample key.
    """

    frames: torch.Tensor
    audio: torch.Tensor
    num_chunks: int
    num_motion_frames: int
    ref_latent: torch.Tensor
    ref_stats: tuple[torch.Tensor, torch.Tensor]
    first_motion: torch.Tensor
    trainer: DistillTrainer
    key: str = ""
    _contexts: torch.Tensor | None = None
    _gt: dict[int, torch.Tensor] = field(default_factory=dict)

    def chunk_frames(self, j: int) -> torch.Tensor:
        """uint8 ``[1, frame_num, 3, H0, W0]`` the ground-truth frames of chunk ``j`` (0-based)."""
        s = self.trainer.variant.streaming
        return self.frames[:, j * s.new_frames : j * s.new_frames + s.frame_num]

    def chunk_audio(self, j: int) -> torch.Tensor:
        """float32 ``[1, cache_samples]``: chunk ``j``'s Temporal Audio Context Cache (ends at its last frame)."""
        s = self.trainer.variant.streaming
        end = self.audio.shape[1] - (self.num_chunks - 1 - j) * s.samples_per_chunk
        return self.audio[:, end - s.cache_samples : end]

    def context(self, j: int) -> torch.Tensor:
        """float32 ``[1, frame_num, W, L, D]`` audio context of chunk ``j`` (all chunks encoded at the
        first call, one Wav2Vec batch)."""
        if self._contexts is None:
            t = self.trainer
            audio = torch.cat([self.chunk_audio(i) for i in range(self.num_chunks)])  # [chunks, S]
            self._contexts = encode_audio_context(audio, t.encoders.audio, t.variant.streaming.frame_num,
                                                  t.variant.transformer.audio_window, t.env.device)
        return self._contexts[j : j + 1]

    def gt_latents(self, j: int) -> torch.Tensor:
        """float32 ``[1, C, F, h, w]`` ground-truth latents of chunk ``j`` (its first motion slots are
        the VAE latents of its first ``motion_frames`` frames alone, as inference re-encodes them)."""
        if j not in self._gt:
            t = self.trainer
            self._gt[j] = encode_frames(self.chunk_frames(j), t.encoders.vae, t.env.device, t.frame_size)
        return self._gt[j]


@dataclass
class RolloutOutput:
    """Result of :meth:`DistillTrainer.rollout`.

    Attributes:
        x0: float32 ``[1, C, F, h, w]``: chunk k's ``x0`` at step t' (motion slots overwritten with
            its motion latents); with ``grad`` it carries the graph of that one DiT call.
        motion: float32 ``[1, C, M, h, w]`` the motion latents chunk k was conditioned on.
        chunk: 0-based index of chunk k (``k - 1``).
        exit_step: 0-based step t' (``None``: the full schedule).
        chunks: float32 latents of every chunk (full schedule), when asked for (previews).
        frames: uint8 ``[n_emit, H, W, 3]`` the frames the chunk step emitted for every chunk, with
            ``chunks``.
    """

    x0: torch.Tensor
    motion: torch.Tensor
    chunk: int
    exit_step: int | None
    chunks: list[torch.Tensor] | None = None
    frames: list[torch.Tensor] | None = None

    @property
    def num_motion(self) -> int:
        return self.motion.shape[2]


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------
def resolve_init_model(cfg: DistillConfig) -> DistillConfig:
    """``cfg`` with its ``model`` section taken from ``distill.init_checkpoint`` (when set).

    An export folder gives ``init: checkpoint`` at that folder (DiT, VAE and Wav2Vec from it, its
    transformer shape and frame size); a stage-1 checkpoint gives that run's ``model`` section (its
    VAE and Wav2Vec; the DiT weights are read from the checkpoint by :meth:`DistillTrainer.build`).

    Raises:
        CheckpointError: no export or complete checkpoint at the path.
        ConfigError: a ``model`` section that disagrees with the checkpoint's.
    """
    path = cfg.distill.init_checkpoint
    if path is None:
        return cfg
    p = Path(path)
    if is_export(p):
        v = read_export(p).variant
        model = ModelConfig(variant=v.name, init="checkpoint", init_path=str(p),
                            transformer=to_dict(v.transformer), height_px=v.streaming.height_px,
                            width_px=v.streaming.width_px)
    else:
        ckpt = latest_checkpoint(p)
        if ckpt is None:
            raise CheckpointError(f"distill.init_checkpoint: no export or complete checkpoint under {path}")
        meta = json.loads((ckpt / "meta.json").read_text())
        cls = get_train_spec(meta.get("kind", "sft")).config_class()
        model = config_from_dict(meta["config"], cls).model
    if cfg.model != ModelConfig() and cfg.model != model:
        raise ConfigError("model: the model comes from distill.init_checkpoint; leave the model section out")
    return dataclasses.replace(cfg, model=model)


class DistillTrainer(Trainer):
    """The stage-2 trainer (see the module docstring).

    Attributes (after :meth:`build`):
        nets: the three networks to call, by role (FSDP2 modules, DDP wrappers or plain modules).
        modules: ``generator`` and ``fake_score`` (checkpointed with their optimisers; ``real_score``
            is rebuilt from the init checkpoint on resume).
        encoders: the frozen VAE and Wav2Vec.
        draws: every rollout's ``(role, k, t')`` (1-based), in order (tests, histograms).

    Args:
        cfg: :class:`DistillConfig`.
        resume: checkpoint to resume from (``"auto"``: the run's newest, if any).

    Raises:
        ConfigError: chunk geometry of ``data`` that is not the model's streaming geometry, or a
            ``model`` section that disagrees with ``distill.init_checkpoint``.
        CheckpointError: ``distill.init_checkpoint`` holds no export or checkpoint.
    """

    kind = "distill"

    def __init__(self, cfg: DistillConfig, resume: str | None = None) -> None:
        cfg = resolve_init_model(cfg)
        self.variant = resolve_variant(cfg.model)
        s = self.variant.streaming
        if cfg.data.num_frames != s.frame_num:
            raise ConfigError(f"data.num_frames: must be the model's chunk length {s.frame_num}")
        if cfg.data.motion_frames != s.motion_frames:
            raise ConfigError(f"data.motion_frames: must be the model's motion frames {s.motion_frames}")
        super().__init__(cfg, resume)
        self.compute_dtype = torch.bfloat16 if cfg.parallel.precision == "bf16" else torch.float32
        self.frame_size = (s.height_px, s.width_px)
        self.schedule = s.schedule
        self.draws: list[tuple[str, int, int]] = []
        self._hist: dict[str, list[float]] = {"k": [], "t": []}
        self._calls = {"no_grad": 0, "grad": 0}
        self._flops = 0.0
        self.val_keys: list[str] = []
        self.val_window: Any = None

    # -- building -------------------------------------------------------------------------------
    def initial_transformer(self):
        """The stage-1 DiT all three networks start from (float32, CPU).

        Raises:
            CheckpointError, FileNotFoundError, KeyError: unreadable or mismatching weights.
        """
        d = self.cfg.distill
        if d.init_checkpoint is None or is_export(d.init_checkpoint):
            return build_transformer(self.cfg.model, self.variant)
        from vividhead.models.flashhead import FlashHeadTransformer
        from vividhead.models.loading import load_strict
        from vividhead.training.trainers.export import read_checkpoint_weights

        _, sd, info = read_checkpoint_weights(d.init_checkpoint, d.init_weights)
        logger.info("distillation starts from %s (%s weights, step %d)", info["checkpoint"], info["weights"],
                    info["step"])
        model = FlashHeadTransformer.from_config_dataclass(self.variant.transformer)
        load_strict(model, {k: v.float() for k, v in sd.items()})
        return model.float()

    def build(self) -> None:
        cfg, env, d = self.cfg, self.env, self.cfg.distill
        base = self.initial_transformer()
        self.raw: dict[str, torch.nn.Module] = {}
        self.nets: dict[str, torch.nn.Module] = {}
        for role in ROLES:
            trainable = role != "real_score"
            model = base if role == "real_score" else copy.deepcopy(base)
            model.requires_grad_(trainable).train(trainable)  # the one place roles get their grad flags
            for name in UNUSED_MODULES:  # key-parity modules the forward pass never uses
                getattr(model, name).requires_grad_(False)
            model = model.to(env.device)
            self.raw[role] = model
            self.nets[role] = wrap_model(model, model.blocks, cfg.parallel, env, trainable=trainable)
        enc_dtype = self.compute_dtype if env.device.type == "cuda" else torch.float32
        self.encoders = build_encoders(cfg.model, self.variant, env.device, enc_dtype, cfg.parallel)
        lrs = {"generator": d.generator_lr, "fake_score": d.fake_score_lr}
        self.modules = {role: self.raw[role] for role in lrs}
        self.optimizers = {role: make_optimizer([p for p in self.raw[role].parameters() if p.requires_grad],
                                                cfg.optim, lr=lr, device=env.device) for role, lr in lrs.items()}
        self.schedulers = {role: make_scheduler(opt, cfg.optim.warmup_steps) for role, opt in self.optimizers.items()}
        if d.generator_ema_decay > 0:
            self.emas = {"generator": EMA(self.raw["generator"], d.generator_ema_decay)}
        self.build_data()

    def build_data(self) -> None:
        """The training stream's :class:`RolloutWindowDataset` (held-out clips excluded)."""
        self.val_keys = self.held_out_keys()
        flt = {"exclude_keys": self.val_keys} if self.val_keys else {}
        self.dataset = self.make_dataset(self.cfg.data, flt, dataset_cls=RolloutWindowDataset,
                                         max_chunks=self.cfg.distill.max_chunks)

    def data_stream(self):
        return self.batches(self.dataset, self.cfg.data)

    # -- accounting -----------------------------------------------------------------------------
    def train_flops_per_step(self) -> float:
        return self._flops

    def _account(self, latent_shape: tuple[int, ...]) -> None:
        f, h, w = latent_shape[2:]
        fwd = dit_forward_flops(self.variant.transformer, (f, h, w))
        self._flops = fwd * (self._calls["no_grad"] + 3 * self._calls["grad"])
        self._calls = {"no_grad": 0, "grad": 0}

    # -- the networks -----------------------------------------------------------------------------
    def velocity(self, role: str, context: torch.Tensor, ref: torch.Tensor):
        """The network ``role`` closed over its conditioning: ``(x_t, timestep [B or 1] on 0..1000) ->
        v`` in the compute dtype (:data:`vividhead.flow_matching.VelocityFn`)."""
        net = self.nets[role]

        def velocity(x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
            self._calls["grad" if torch.is_grad_enabled() else "no_grad"] += x_t.shape[0]
            with autocast(self.cfg.parallel, self.env):
                return net(x_t, timestep, context, ref)

        return velocity

    @torch.no_grad()
    def predict(self, role: str, x_t: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor,
                ref: torch.Tensor, guidance: float = 1.0) -> torch.Tensor:
        """x0 prediction of ``role`` at ``x_t`` (no graph), with audio CFG when ``guidance != 1``:
        ``v = v_uncond + guidance * (v_cond - v_uncond)``, the unconditional branch on zeroed audio
        features, both branches in one batch-2 call.

        Args:
            x_t: float32 ``[1, C, F, h, w]``.
            sigma: float32 ``[1]``.
            context: float32 ``[1, F_v, W, L, D]``.
            ref: float32 ``[1, C, F, h, w]``.

        Returns:
            float32 ``[1, C, F, h, w]``.
        """
        t = sigma * NUM_TRAIN_TIMESTEPS
        if guidance == 1.0:
            v = self.velocity(role, context, ref)(x_t, t).float()
        else:
            both = self.velocity(role, torch.cat([context, torch.zeros_like(context)]), torch.cat([ref, ref]))
            v_cond, v_uncond = both(torch.cat([x_t, x_t]), t).float().chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        return predict_x0(x_t, v, sigma)

    # -- data -------------------------------------------------------------------------------------
    @torch.no_grad()
    def prepare_window(self, batch) -> RolloutWindow:
        """A :class:`RolloutWindow` of a batch of one :class:`RolloutWindowDataset` window: reference
        latent, colour statistics and the first chunk's ground-truth motion latents (the rest is
        encoded when a rollout asks for it).

        Raises:
            ValueError: a batch of more than one window.
        """
        if batch.frames.shape[0] != 1:
            raise ValueError(f"distillation takes one window per rank, got {batch.frames.shape[0]}")
        s, dev, vae = self.variant.streaming, self.env.device, self.encoders.vae
        frames = batch.frames.to(dev, non_blocking=True)
        num_chunks = (frames.shape[1] - s.motion_frames) // s.new_frames
        nmf = int(batch.num_motion_frames[0])
        ref = model_frames(batch.reference, torch.float32, dev, self.frame_size)  # [1, 3, H, W]
        return RolloutWindow(
            frames=frames,
            audio=batch.audio.to(dev, non_blocking=True),
            num_chunks=num_chunks,
            num_motion_frames=nmf,
            ref_latent=encode_reference(batch.reference, vae, s.frame_num, dev, self.frame_size),
            ref_stats=reference_lab_stats(ref[:, :, None]),
            first_motion=encode_frames(frames[:, :nmf], vae, dev, self.frame_size),
            trainer=self,
            key=str(batch.meta[0].get("key", "")),
        )

    # -- the rollout ------------------------------------------------------------------------------
    def draw_rollout(self, role: str, available: int) -> tuple[int, int]:
        """Draw k ~ U(1, min(K, chunks every rank's window holds)) and t' ~ U(1, T) on rank 0 and
        broadcast them, so every rank runs the same sequence of FSDP collectives.

        Returns:
            ``(k, t')``, both 1-based.
        """
        env = self.env
        limit = min(self.cfg.distill.max_chunks, available)
        if env.mesh is not None:
            t = torch.tensor([limit], dtype=torch.int64, device=env.device if env.device.type == "cuda" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            limit = int(t.item())
        k = int(torch.randint(1, limit + 1, (1,), generator=self.generator, device=env.device).item())
        t_exit = int(torch.randint(1, self.schedule.num_steps + 1, (1,), generator=self.generator,
                                   device=env.device).item())
        k, t_exit = broadcast_ints([k, t_exit], env)
        self.draws.append((role, k, t_exit))
        self._hist["k"].append(k)
        self._hist["t"].append(t_exit)
        return k, t_exit

    @property
    def chunk_step(self) -> ChunkStep:
        """The streaming chunk step (:class:`vividhead.streaming.step.ChunkStep`, the one ``infer`` and
        ``serve`` run) over the generator and the frozen encoders: the rollout advances through it."""
        step = self.__dict__.get("_chunk_step")
        if step is None:
            s = dataclasses.replace(self.variant.streaming, fast_start=False)
            step = ChunkStep(
                lambda x, t, ctx, ref: self.velocity("generator", ctx, ref)(x, t),
                self.encoders.vae, self.encoders.audio, s, self.schedule, self.variant.transformer.audio_window,
                dtype=self.compute_dtype, cond_dtype=torch.float32,
                reencode_motion=self.cfg.distill.reencode_motion,
            )
            self._chunk_step = step
        return step

    def rollout(self, window: RolloutWindow, k: int, exit_step: int | None, grad: bool,
                rng: torch.Generator | None = None, keep_chunks: bool = False) -> RolloutOutput:
        """Generate chunks 1..k autoregressively through the streaming chunk step
        (:attr:`chunk_step`, exactly what ``infer`` and ``serve`` run), each conditioned on motion
        latents from its own previous output (``distill.reencode_motion``: the VAE re-encoding of its
        last ``motion_frames`` decoded, colour-corrected frames; otherwise its last motion-latent
        slots); chunk k stops at step ``exit_step`` (stochastic truncation).

        Args:
            window: the ground-truth window (chunk 1's motion latents, audio contexts, reference).
            k: chunks (1-based, <= ``window.num_chunks``).
            exit_step: 0-based step t' of chunk k whose ``x0`` is the output; ``None``: chunk k runs
                the full schedule (previews).
            grad: keep the graph of step ``exit_step`` of chunk k (only that DiT call).
            rng: noise generator (default: the trainer's, checkpointed).
            keep_chunks: also return every chunk's latents (previews).

        Returns:
            :class:`RolloutOutput`.

        Raises:
            ValueError: ``k`` outside ``1..window.num_chunks``, or ``grad`` without ``exit_step``.
        """
        if not 1 <= k <= window.num_chunks:
            raise ValueError(f"k={k} outside 1..{window.num_chunks}")
        if grad and exit_step is None:
            raise ValueError("grad needs an exit_step")
        state = StreamState(ref_latent=window.ref_latent, ref_stats=window.ref_stats,
                            motion_latents=window.first_motion,
                            generator=self.generator if rng is None else rng)
        step = self.chunk_step
        chunks: list[torch.Tensor] = []
        frames: list[torch.Tensor] = []
        for j in range(k):
            if j == k - 1 and exit_step is not None:
                out = step([state], context=window.context(j), exit_step=exit_step,
                           grad_step=exit_step if grad else None)
                return RolloutOutput(x0=out.latents, motion=out.motion[0], chunk=k - 1, exit_step=exit_step)
            out = step([state], context=window.context(j), emit=keep_chunks)
            if keep_chunks:
                chunks.append(out.latents.float())
                frames.append(out.frames[0])
        return RolloutOutput(x0=out.latents.float(), motion=out.motion[0], chunk=k - 1, exit_step=exit_step,
                             chunks=chunks if keep_chunks else None, frames=frames if keep_chunks else None)

    # -- losses -----------------------------------------------------------------------------------
    @property
    def objective(self) -> GeneratorObjective:
        """The generator objective of ``distill.mode``
        (:data:`~vividhead.training.trainers.objectives.OBJECTIVES`), over the current config."""
        return make_objective(self.cfg.distill)

    def generator_loss(self, window: RolloutWindow, out: RolloutOutput) -> dict[str, torch.Tensor]:
        """The generator objective of ``distill.mode`` on chunk k's output (:attr:`objective`):
        ``oracle``: DMD (eq. 4) plus ``lambda * ||z_student^(k) - z_gt^(k)||^2`` (eq. 5, a mean over
        generated slots); ``self_correcting``: DMD alone (LiveTalk eq. 2-3).

        The sample is noised on every slot to ``sigma`` (uniform on the shifted schedule, clamped to
        ``[min_sigma, max_sigma]``); motion slots then hold what each score is conditioned on (the
        module docstring's table).

        Returns:
            ``loss`` (with graph) and the objective's metrics; for the DMD objectives ``dmd_loss``,
            ``reg_loss``, ``dmd_grad_abs``, ``reg_grad_abs``, and the draws ``sigma`` (``[1]``) and
            ``noise`` (``[1, C, F, h, w]``) (no graph).
        """
        return self.objective(self, window, out)

    def fake_score_step(self, window: RolloutWindow) -> dict[str, torch.Tensor]:
        """One fake-score update: a rollout without graph, then the flow-matching loss of
        ``fake_score`` on chunk k's detached output (motion slots clean, no loss there)."""
        d, dev = self.cfg.distill, self.env.device
        k, t = self.draw_rollout("fake_score", window.num_chunks)
        with torch.no_grad():
            out = self.rollout(window, k, exit_step=t - 1, grad=False)
        sigma = sample_training_sigmas(1, shift=d.timestep_shift, min_sigma=d.min_sigma, max_sigma=d.max_sigma,
                                       generator=self.generator, device=dev)
        noise = torch.randn(out.x0.shape, generator=self.generator, device=dev)
        res = flow_matching_loss(self.velocity("fake_score", window.context(out.chunk), window.ref_latent),
                                 out.x0.detach(), torch.tensor([out.num_motion], device=dev), sigma, noise)
        norm = self.update("fake_score", res.loss)
        return {"fake_score_loss": res.loss.detach(), "fake_score_grad_norm": norm,
                "fake_k": torch.tensor(float(k)), "fake_t": torch.tensor(float(t))}

    def generator_step(self, window: RolloutWindow) -> dict[str, torch.Tensor]:
        """One generator update: a rollout in which only step t' of chunk k keeps its graph, then
        :meth:`generator_loss`; logs ``generator_loss`` and the objective's ``metric_names``."""
        k, t = self.draw_rollout("generator", window.num_chunks)
        out = self.rollout(window, k, exit_step=t - 1, grad=True)
        losses = self.generator_loss(window, out)
        norm = self.update("generator", losses["loss"])
        return {"generator_loss": losses["loss"].detach(),
                **{name: losses[name] for name in self.objective.metric_names}, "generator_grad_norm": norm,
                "generator_k": torch.tensor(float(k)), "generator_t": torch.tensor(float(t))}

    def is_generator_step(self, step: int | None = None) -> bool:
        """Whether trainer step ``step`` (0-based; default: the current) also updates the generator:
        after every ``fake_updates_per_generator_update``-th fake-score update."""
        step = self.step if step is None else step
        return (step + 1) % self.cfg.distill.fake_updates_per_generator_update == 0

    def train_step(self, batch) -> dict[str, torch.Tensor]:
        """One fake-score update, then a generator update on every N-th step (1:N, N = 5).

        Returns:
            ``loss`` (the fake-score loss, every step), ``fake_score_*``, ``fake_k``/``fake_t``, and on
            generator steps ``dmd_loss``, ``reg_loss``, ``generator_*``, ``dmd_grad_abs``,
            ``reg_grad_abs``, ``generator_k``/``generator_t`` (k and t' 1-based).
        """
        window = self.prepare_window(batch)
        scalars = self.fake_score_step(window)
        if self.is_generator_step():
            scalars.update(self.generator_step(window))
        self._account(window.ref_latent.shape)
        for key in ("fake_score_loss", *self.objective.reduced_metrics, "generator_loss"):
            if key in scalars:
                scalars[key] = all_reduce_mean(scalars[key], self.env)
        return {"loss": scalars["fake_score_loss"], **scalars}

    # -- previews -------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, video_path: Path | None = None) -> dict[str, float] | None:
        """Roll the generator out over the first held-out window with the full 4-step schedule (as
        inference: fixed noise, re-encoded motion) and compare with the ground truth.

        Every rank runs it (same window, same collectives); rank 0 writes ``video_path`` (an MP4 of
        the emitted frames, ground truth left, generated right).

        Returns:
            ``{"val/rollout_mse": mean latent MSE over chunks, "val/rollout_mse_last": of the last
            chunk, "val/chunks": chunks}`` (generated slots), or None without held-out clips.
        """
        if not self.val_keys:
            return None
        if self.val_window is None:
            ds = self.make_dataset(self.cfg.data, {"keys": self.val_keys}, seed=12345, shuffle=False,
                                   dataset_cls=RolloutWindowDataset, max_chunks=self.cfg.distill.max_chunks,
                                   rank=0, world_size=1)
            ds.cold_start_prob = 0.0
            self.val_window = next(iter(self.make_loader(ds, self.cfg.data)))
        window = self.prepare_window(self.val_window)
        rng = torch.Generator(device=self.env.device).manual_seed(0)
        out = self.rollout(window, window.num_chunks, exit_step=None, grad=False, rng=rng, keep_chunks=True)
        mses = []
        for j, lat in enumerate(out.chunks):
            m = window.num_motion_frames if j == 0 else self.variant.streaming.motion_frames
            keep = motion_loss_mask(lat.shape[2], torch.tensor([motion_latent_count(m, self.encoders.vae.temporal_stride)],
                                                                device=lat.device))
            mses.append(float(masked_mean((lat - window.gt_latents(j)).pow(2), keep)))
        if video_path is not None and self.env.is_main:
            self._write_preview(window, out.frames, video_path)
        return {"val/rollout_mse": sum(mses) / len(mses), "val/rollout_mse_last": mses[-1],
                "val/chunks": float(len(mses))}

    def _write_preview(self, window: RolloutWindow, frames: list[torch.Tensor], path: Path) -> Path:
        from vividhead.media import write_video

        s = self.variant.streaming
        # the frames the chunk step emitted (uint8 [n_emit, H, W, 3] each), as infer shows them
        generated = torch.cat(frames).permute(3, 0, 1, 2).float() / 127.5 - 1  # [3, N, H, W] in [-1, 1]
        n = generated.shape[1]
        truth = model_frames(window.frames[0, s.motion_frames : s.motion_frames + n], torch.float32,
                             self.env.device, self.frame_size).permute(1, 0, 2, 3)  # [3, N, H, W]
        both = torch.cat([truth, generated.float()], dim=3)
        # window.audio ends at the window's last frame: the emitted frames' audio, cut from the end
        total = window.frames.shape[1]
        end = window.audio.shape[1] - SAMPLES_PER_FRAME * (total - s.motion_frames - n)
        audio = window.audio[0, end - SAMPLES_PER_FRAME * n : end].float().cpu().numpy()
        return write_video(path, both, s.fps, audio=audio)

    def on_log(self, scalars: dict[str, float]) -> None:
        log = self.cfg.log
        self.log_histogram("rollout/k", self._hist["k"])
        self.log_histogram("rollout/t_exit", self._hist["t"])
        self._hist = {"k": [], "t": []}
        want_val = bool(log.validate_every_steps) and self.step % log.validate_every_steps == 0
        want_preview = bool(log.preview_every_steps) and self.step % log.preview_every_steps == 0
        if want_val or want_preview:
            path = self.out / "previews" / f"step_{self.step:08d}.mp4" if want_preview else None
            metrics = self.evaluate(path)
            if metrics is not None and want_val:
                self.log_scalars(metrics)


__all__ = [
    "DMDLoss",
    "DistillConfig",
    "DistillTrainer",
    "RolloutOutput",
    "RolloutWindow",
    "RolloutWindowDataset",
    "distribution_matching_loss",
    "masked_mean",
    "resolve_init_model",
    "window_chunks",
]

"""Typed configs of the trainers, loaded from YAML (:mod:`vividhead.config`: unknown keys and bad
values fail at load, naming the key).

Sections shared by every trainer mode (:class:`TrainConfig`): ``model``, ``data``, ``optim``,
``parallel``, ``checkpoint``, ``log`` and ``run``; a mode's config subclasses it and adds its own
section (stage 1 ``flow``: :class:`SFTConfig`; stage 2 ``distill``:
:class:`~vividhead.training.trainers.distill_config.DistillConfig`). Shipped examples: ``examples/sft_pro.yaml``, ``sft_lite.yaml``, ``sft_14b.yaml``,
``sft_tiny_cpu.yaml``, ``distill_pro.yaml``, ``distill_tiny_cpu.yaml``; fine-tuning
(:mod:`~vividhead.training.trainers.finetune`): ``finetune_pro_lora.yaml``, ``finetune_lite_lora.yaml``,
``finetune_tiny_lora_cpu.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, get_args

from vividhead.config import ConfigError, bounded, build_dataclass, check, read_yaml
from vividhead.shard_format import CHUNK_FRAMES, MOTION_FRAMES


@dataclass(frozen=True)
class ModelConfig:
    """What to train and where its frozen parts come from.

    Attributes:
        variant: a name from :data:`vividhead.models.configs.VARIANTS` (``pro``, ``lite``,
            ``14b``) or ``custom`` with ``transformer`` overrides.
        init: ``random`` (tests), ``flashhead`` (a released or exported FlashHead DiT folder,
            strict keys), ``wan_t2v`` (a diffusers Wan2.1-T2V transformer folder: backbone mapped
            strictly, reference-latent input channels zero-initialised, audio projection fresh),
            ``checkpoint`` (an exported vividhead checkpoint folder: DiT, VAE, Wav2Vec together).
        init_path: folder for every ``init`` but ``random``.
        vae_path: VAE weights (Wan2.1 ``.pth`` / diffusers folder, or LTX folder); ``null`` with
            ``init: random`` builds a random VAE of the variant's kind.
        wav2vec_path: local ``wav2vec2-base-960h`` folder; ``null`` with ``init: random`` builds a
            random Wav2Vec of ``transformer.audio_layers`` x ``audio_channels``.
        transformer: overrides of :class:`FlashHeadTransformerConfig` fields (e.g. a tiny DiT).
        height_px, width_px: frame size the model trains at (default: the variant's).
        tiny_encoders: without weight paths, a few-channel random VAE and Wav2Vec (CPU tests)
            instead of random ones of the real shapes.
        seed: seed of random initialisation.
    """

    variant: str = "pro"
    init: Literal["random", "flashhead", "wan_t2v", "checkpoint"] = "random"
    init_path: Optional[str] = None
    vae_path: Optional[str] = None
    wav2vec_path: Optional[str] = None
    transformer: dict = field(default_factory=dict)
    height_px: Optional[int] = None
    width_px: Optional[int] = None
    tiny_encoders: bool = False
    seed: int = 0

    def validate(self, section: str) -> None:
        from vividhead.models.configs import VARIANTS

        check(self.variant in VARIANTS, f"{section}.variant", f"unknown variant (known: {sorted(VARIANTS)})")
        check(self.init == "random" or self.init_path is not None, f"{section}.init_path",
              f"required with init: {self.init}")
        if self.init not in ("random", "checkpoint"):
            check(self.vae_path is not None, f"{section}.vae_path", f"required with init: {self.init}")
            check(self.wav2vec_path is not None, f"{section}.wav2vec_path", f"required with init: {self.init}")


@dataclass(frozen=True)
class DataConfig:
    """Curated shards and how windows are drawn from them (:class:`ClipWindowDataset`).

    Attributes:
        shards: a curation output folder or prefix (``OUT`` with ``shards/`` and
            ``manifest.parquet``), local, ``s3://`` or ``hf://``.
        latent_cache: a folder written by ``vividhead train cache-latents``: read precomputed VAE
            latents and Wav2Vec features instead of decoding and encoding on the fly.
        storage_options: fsspec options (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).
        clip_filter: :class:`ClipFilter` fields on manifest columns (e.g. ``min_asd_score: 0.5``).
        num_frames: frames per window (33 Pro / 14B, 33 Lite: 4k+1 and 8k+1).
        motion_frames: leading ground-truth frames of a normal sample (5 Pro, 9 Lite).
        cold_start_prob: probability of a single first frame instead (0.1).
        batch_size: windows per GPU per step.
        num_workers: DataLoader worker processes per rank.
        shuffle_buffer: samples in the webdataset shuffle buffer.
        validation_clips: clips (by ``clip_id`` order of the manifest) held out for the validation
            loss; 0 disables validation.
    """

    shards: str = ""
    latent_cache: Optional[str] = None
    storage_options: dict = field(default_factory=dict)
    clip_filter: dict = field(default_factory=dict)
    num_frames: int = bounded(CHUNK_FRAMES, ">= 1")
    motion_frames: int = MOTION_FRAMES
    cold_start_prob: float = bounded(0.1, "in [0, 1]")
    batch_size: int = bounded(1, ">= 1")
    num_workers: int = bounded(2, ">= 0")
    shuffle_buffer: int = 16
    validation_clips: int = bounded(0, ">= 0")

    def validate(self, section: str) -> None:
        check(bool(self.shards) or bool(self.latent_cache), f"{section}.shards", "required")
        check(0 < self.motion_frames < self.num_frames, f"{section}.motion_frames", "must be in 1..num_frames-1")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with linear warm-up then constant, gradient clipping, EMA (FlashHead §4: lr 2e-4).

    Attributes:
        lr: peak learning rate.
        betas, eps, weight_decay: AdamW.
        warmup_steps: linear warm-up from 0.
        grad_clip: max global grad norm (0 disables).
        ema_decay: EMA decay per step (0 disables the EMA); the EMA is kept sharded like the weights.
    """

    lr: float = bounded(2e-4, "> 0")
    betas: tuple[float, float] = bounded((0.9, 0.999), "in [0, 1)")
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = bounded(100, ">= 0")
    grad_clip: float = bounded(1.0, ">= 0")
    ema_decay: float = bounded(0.0, "in [0, 1)")


CheckpointingMode = Literal["none", "all", "every_other", "attention", "save_matmuls"]
AttentionBackend = Literal["auto", "flash", "cudnn", "efficient", "math"]
#: ``parallel.activation_checkpointing`` modes (:func:`~vividhead.training.trainers.distributed.apply_activation_checkpointing`).
CHECKPOINTING_MODES: tuple[str, ...] = get_args(CheckpointingMode)
#: ``parallel.attention_backend`` choices (``auto``: PyTorch picks per call).
ATTENTION_BACKENDS: tuple[str, ...] = get_args(AttentionBackend)
VaeCompileMode = Literal["default", "max-autotune-no-cudagraphs"]
#: ``parallel.vae_compile`` modes: :data:`vividhead.models.wan_vae_fast.COMPILE_MODES` (a test keeps
#: them equal; this module imports no torch).
VAE_COMPILE_MODES: tuple[str, ...] = get_args(VaeCompileMode)


@dataclass(frozen=True)
class ParallelConfig:
    """How the model is spread and executed.

    Attributes:
        strategy: ``fsdp`` (FSDP2 ``fully_shard`` per transformer block, bf16 params / fp32
            reduce), ``ddp``, or ``none`` (one process).
        precision: ``bf16`` (autocast over fp32 master weights, or FSDP2's mixed precision) or
            ``fp32``.
        activation_checkpointing: what the backward pass recomputes instead of keeping
            (:data:`CHECKPOINTING_MODES`): ``none``; ``all`` (every block); ``every_other`` (blocks
            0, 2, 4, ...); ``attention`` (the self-attention of every block: projections, norms,
            RoPE and the attention kernel); ``save_matmuls`` (every block, but the outputs of its
            matmuls and attention kernels are kept: only norms, RoPE, activations and modulation are
            recomputed). ``false`` / ``true`` are read as ``none`` / ``all``.
        attention_backend: the ``F.scaled_dot_product_attention`` kernel of the DiT's attention
            (:data:`ATTENTION_BACKENDS`, ``torch.nn.attention.sdpa_kernel``); ``auto`` lets PyTorch
            choose; ``cudnn`` and ``efficient`` need CUDA.
        compile: ``torch.compile`` each transformer block.
        fast_vae: run the frozen VAE as streaming inference does on a GPU
            (:func:`vividhead.models.vae.accelerate_vae`, the code ``vividhead infer`` / ``serve``
            run): a Wan VAE channels-last with fused norms and one-pass decode / encode (exact in
            float32, within bf16 rounding of stock), on CUDA with its fused norms and
            (``vae_compile``) its decoder and encoder compiled; an LTX VAE with its decode and
            encoder moments compiled (CUDA only). The stage-2 rollout decodes and re-encodes every
            chunk through it; stage 1 (without a latent cache) and ``cache-latents`` encode windows
            through it. ``auto`` (default): on CUDA only, the CPU keeps the stock VAE as ``infer``
            does (the eager rewrites measured mixed on a 2-core CPU: slower encodes and small
            decodes, faster large decodes); ``true``: also on the CPU (a Wan VAE's eager rewrites;
            tests); ``false``: the stock diffusers VAE everywhere.
        vae_compile: ``torch.compile`` mode of the Wan decoder and encoder with ``fast_vae`` on CUDA
            (:data:`VAE_COMPILE_MODES`; ``default``, inference's default: one graph per chunk
            shape); ``null``: only the fused norms are compiled.
        backend: process-group backend; ``auto`` is NCCL with CUDA, gloo without.
    """

    strategy: Literal["fsdp", "ddp", "none"] = "fsdp"
    precision: Literal["bf16", "fp32"] = "bf16"
    activation_checkpointing: Literal[CheckpointingMode, False, True] = "none"
    attention_backend: AttentionBackend = "auto"
    compile: bool = False
    fast_vae: Literal["auto", True, False] = "auto"
    vae_compile: Optional[VaeCompileMode] = "default"
    backend: Literal["auto", "nccl", "gloo"] = "auto"

    def __post_init__(self) -> None:
        ac = self.activation_checkpointing
        if isinstance(ac, bool) or ac in (0, 1):  # the boolean form of earlier configs and checkpoints
            object.__setattr__(self, "activation_checkpointing", "all" if ac else "none")


@dataclass(frozen=True)
class CheckpointConfig:
    """``torch.distributed.checkpoint`` snapshots under ``run.output_dir/checkpoints``.

    Attributes:
        every_steps: save every N steps (and at the end, and on SIGTERM).
        keep: newest complete checkpoints kept (older ones deleted).
    """

    every_steps: int = bounded(500, ">= 1")
    keep: int = bounded(3, ">= 1")


@dataclass(frozen=True)
class LogConfig:
    """Observability.

    Attributes:
        every_steps: TensorBoard scalars every N steps.
        progress: a progress bar on rank 0.
        validate_every_steps: validation loss on held-out clips every N steps (0: never).
        preview_every_steps: a preview MP4 sampled with the inference sampler every N steps (0: never).
        wandb_project: also log to Weights & Biases (needs ``wandb`` installed and configured).
    """

    every_steps: int = 10
    progress: bool = True
    validate_every_steps: int = 0
    preview_every_steps: int = 0
    wandb_project: Optional[str] = None


@dataclass(frozen=True)
class RunConfig:
    """Run-wide settings.

    Attributes:
        output_dir: checkpoints, TensorBoard logs, previews, exports.
        max_steps: the run ends after this many optimiser steps.
        seed: base seed (data order, noise, timesteps, motion schedule).
        device: ``auto`` (CUDA if present), ``cuda`` or ``cpu``.
    """

    output_dir: str = "out/train"
    max_steps: int = bounded(1000, ">= 1")
    seed: int = 0
    device: Literal["auto", "cuda", "cpu"] = "auto"


@dataclass(frozen=True)
class FlowConfig:
    """Stage-1 flow-matching objective (the recipe itself is :mod:`vividhead.flow_matching`).

    Attributes:
        shift: timestep shift of the training sigmas (Wan: 5).
        timestep_sampling: ``uniform`` over the shifted schedule or ``logit_normal``.
        logit_mean, logit_std: parameters of ``logit_normal``.
        loss_weighting: ``none`` or ``cosmap``.
        audio_dropout: probability of zeroed audio features (the unconditional branch of the
            stage-2 teacher's audio guidance).
        reference_dropout: probability of a zeroed reference latent.
    """

    shift: float = bounded(5.0, "> 0")
    timestep_sampling: Literal["uniform", "logit_normal"] = "uniform"
    logit_mean: float = 0.0
    logit_std: float = 1.0
    loss_weighting: Literal["none", "cosmap"] = "none"
    audio_dropout: float = bounded(0.1, "in [0, 1]")
    reference_dropout: float = bounded(0.05, "in [0, 1]")


@dataclass(frozen=True)
class TrainConfig:
    """The sections every trainer mode has; a mode's config subclasses this and adds its own section
    (and may change a section's defaults by redefining the field)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=lambda: DataConfig(shards="out/demo"))
    optim: OptimConfig = field(default_factory=OptimConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    run: RunConfig = field(default_factory=RunConfig)


@dataclass(frozen=True)
class SFTConfig(TrainConfig):
    """``vividhead train sft`` (FlashHead stage 1: streaming-aware spatiotemporal pre-training):
    the shared sections and ``flow``."""

    flow: FlowConfig = field(default_factory=FlowConfig)


def load_train_config(path: str | Path, cls: type) -> object:
    """Load a trainer YAML into ``cls`` (:class:`SFTConfig` or the distillation config).

    Raises:
        ConfigError: unreadable file, bad YAML, unknown section or key, invalid value.
    """
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return build_dataclass("", cls, raw)


def config_from_dict(raw: dict, cls: type) -> object:
    """Like :func:`load_train_config` from an already parsed mapping (the checkpoint's copy)."""
    return build_dataclass("", cls, raw)

"""Configurations of the SoulX-FlashHead family: transformer shapes and streaming geometry.

One frozen dataclass per concern, with units in the field names:

* :class:`FlashHeadTransformerConfig` -- the DiT hyperparameters. Field names match the keyword
  arguments of :class:`vividhead.models.flashhead.FlashHeadTransformer` (and therefore the upstream
  ``config.json`` of ``Soul-AILab/SoulX-FlashHead-1_3B/Model_Pro`` / ``Model_Lite``).
* :class:`StreamingConfig` -- chunk geometry used by the streaming pipeline (``inference/``) and by the
  trainers (clips of 4k+1 frames at 25 fps).
* :class:`FlashHeadVariant` -- a named pair of the two plus the VAE kind.

Sources: FlashHead report §3.1 and §3.3 (arXiv 2602.07449); the public inference code
(``flash_head/src/modules/flash_head_model.py``, ``flash_head/configs/infer_params.yaml``);
LiveTalk §2.3 for the 14B / 720x416 geometry.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from vividhead.shard_format import AUDIO_CONTEXT_S, CHUNK_FRAMES, FPS, FRAME_SIZE_PX, MOTION_FRAMES, SAMPLE_RATE_HZ

if TYPE_CHECKING:
    from vividhead.flow_matching import FlowMatchingSchedule


class VAEKind(str, enum.Enum):
    """Which video VAE a variant decodes with (closed set: unknown names raise ``ValueError``)."""

    WAN = "wan"  # Wan2.1 VAE: 4x8x8 down, 16 latent channels (Pro, 14B)
    LTX = "ltx"  # LTX-Video VAE: 8x32x32 down, 128 latent channels (Lite)


@dataclass(frozen=True)
class FlashHeadTransformerConfig:
    """Hyperparameters of :class:`~vividhead.models.flashhead.FlashHeadTransformer`.

    Defaults are the released 1.3B Pro model (Wan2.1-T2V-1.3B backbone: 30 layers, dim 1536,
    FFN 8960, 12 heads, patch 1x2x2). ``in_dim`` is twice the VAE latent channels because the
    reference latent is concatenated on channels with the noisy latent.

    Raises:
        ValueError: on inconsistent shapes (``dim`` not divisible by ``num_heads``, head dim odd,
            ``in_dim != 2 * out_dim``, bad ``audio_window``).
    """

    dim: int = 1536
    in_dim: int = 32
    ffn_dim: int = 8960
    out_dim: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    eps: float = 1e-6
    vae_stride: tuple[int, int, int] = (4, 8, 8)
    patch_size: tuple[int, int, int] = (1, 2, 2)
    num_heads: int = 12
    num_layers: int = 30
    has_image_input: bool = False
    # Audio adapter (hard-coded upstream: window 5, wav2vec2-base 12 layers x 768, 512 hidden, 32 tokens).
    audio_window: int = 5
    audio_layers: int = 12
    audio_channels: int = 768
    audio_intermediate_dim: int = 512
    audio_context_tokens: int = 32

    def __post_init__(self) -> None:
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if (self.dim // self.num_heads) % 2:
            raise ValueError("head dim must be even for rotary embeddings")
        if self.in_dim != 2 * self.out_dim:
            raise ValueError(f"in_dim={self.in_dim} must be 2 * out_dim={self.out_dim} (reference latent concat)")
        if self.audio_window < 3 or self.audio_window % 2 == 0:
            raise ValueError(f"audio_window={self.audio_window} must be odd and >= 3")

    def to_kwargs(self) -> dict:
        """Plain ``dict`` of the fields (tuples kept), for ``FlashHeadTransformer(**cfg.to_kwargs())``."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class StreamingConfig:
    """Chunk geometry of streaming inference (FlashHead §3.3, public ``infer_params.yaml``).

    Attributes:
        frame_num: frames decoded per chunk (33 = 4k+1 for the Wan VAE, 8k+1 for LTX).
        motion_frames: trailing decoded frames re-encoded as the next chunk's motion latents
            (Pro 5 -> 2 latent frames, Lite 9 -> 2 latent frames).
        fps: video frame rate (frames per second).
        sample_rate_hz: audio sample rate.
        cache_seconds: Temporal Audio Context Cache length T_max (s).
        height_px, width_px: output frame size.
        (Every default, frame rate, sample rate, frame size, chunk, motion frames and audio
        context, is a constant of :mod:`vividhead.shard_format`, the one home the loader, the
        trainers, the streaming audio cache and evaluation share, so the model streams what it
        was trained on.)
        timesteps: flow-matching timesteps on the 0..1000 scale before the shift.
        shift: timestep shift ``t' = s t / (1 + (s - 1) t)``.
        color_correction_strength: 0..1 blend of Lab mean/std transfer to the reference image.
        fast_start: latency option (not in the papers): the first chunk after a cold start
            generates only ``motion_frames`` frames (the reference latent frame + one latent frame)
            and emits ``motion_frames - 1`` of them, which are exactly the next chunk's motion
            frames; later chunks are unchanged. Cuts the time to the first frames by the ratio of
            chunk lengths at the cost of one short chunk the model was not trained on.
    """

    frame_num: int = CHUNK_FRAMES
    motion_frames: int = MOTION_FRAMES
    fps: int = FPS
    sample_rate_hz: int = SAMPLE_RATE_HZ
    cache_seconds: float = AUDIO_CONTEXT_S
    height_px: int = FRAME_SIZE_PX
    width_px: int = FRAME_SIZE_PX
    timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0
    color_correction_strength: float = 1.0
    fast_start: bool = False

    def __post_init__(self) -> None:
        if self.sample_rate_hz % self.fps:
            raise ValueError("sample_rate_hz must be a multiple of fps (exact samples per frame)")
        if not 0 < self.motion_frames < self.frame_num:
            raise ValueError("need 0 < motion_frames < frame_num")
        if not 0.0 <= self.color_correction_strength <= 1.0:
            raise ValueError("color_correction_strength must be in [0, 1]")
        if self.cache_frames < self.frame_num:
            raise ValueError("audio cache shorter than one chunk")

    @property
    def schedule(self) -> FlowMatchingSchedule:
        """The sampling schedule (:class:`vividhead.flow_matching.FlowMatchingSchedule`)."""
        from vividhead.flow_matching import FlowMatchingSchedule

        return FlowMatchingSchedule(self.timesteps, self.shift)

    @property
    def samples_per_frame(self) -> int:
        """Audio samples per video frame (640 at 16 kHz / 25 fps)."""
        return self.sample_rate_hz // self.fps

    @property
    def new_frames(self) -> int:
        """New frames emitted per chunk (Pro 28, Lite 24)."""
        return self.frame_num - self.motion_frames

    @property
    def samples_per_chunk(self) -> int:
        """Audio samples consumed per chunk (Pro 17920)."""
        return self.new_frames * self.samples_per_frame

    def chunk_frames(self, index: int) -> tuple[int, int]:
        """``(frames generated, frames emitted)`` of chunk ``index`` (0 = first after a cold start):
        ``(frame_num, new_frames)``, or ``(motion_frames, motion_frames - 1)`` for chunk 0 with
        ``fast_start``."""
        if self.fast_start and index == 0:
            return self.motion_frames, self.motion_frames - 1
        return self.frame_num, self.new_frames

    @property
    def cache_samples(self) -> int:
        """Length of the audio ring buffer in samples (128000 for 8 s)."""
        return int(round(self.cache_seconds * self.sample_rate_hz))

    @property
    def cache_frames(self) -> int:
        """Video frames covered by the audio cache (200 for 8 s at 25 fps)."""
        return self.cache_samples * self.fps // self.sample_rate_hz


@dataclass(frozen=True)
class FlashHeadVariant:
    """A named model variant: transformer config, streaming geometry and VAE kind."""

    name: str
    transformer: FlashHeadTransformerConfig
    streaming: StreamingConfig
    vae: VAEKind
    checkpoint_subdir: str = ""  # folder inside the upstream HF repo (Model_Pro / Model_Lite)
    extra: dict = field(default_factory=dict, compare=False)


PRO_1_3B = FlashHeadVariant(
    name="pro",
    transformer=FlashHeadTransformerConfig(),
    streaming=StreamingConfig(motion_frames=5),
    vae=VAEKind.WAN,
    checkpoint_subdir="Model_Pro",
)

LITE_1_3B = FlashHeadVariant(
    name="lite",
    transformer=FlashHeadTransformerConfig(
        in_dim=256, out_dim=128, vae_stride=(8, 32, 32), patch_size=(1, 1, 1)
    ),
    streaming=StreamingConfig(motion_frames=9),
    vae=VAEKind.LTX,
    checkpoint_subdir="Model_Lite",
)

# LiveTalk-style 14B: Wan2.1-14B backbone (40 layers, dim 5120, FFN 13824, 40 heads) at 720x416x33.
LIVETALK_14B = FlashHeadVariant(
    name="14b",
    transformer=FlashHeadTransformerConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    streaming=StreamingConfig(motion_frames=5, height_px=416, width_px=720),
    vae=VAEKind.WAN,
)

#: Variants by name (the CLI's ``--variant``, a trainer config's ``model.variant``).
#: Toy configs for CPU tests live with the tests (``tests/tiny_models.py``).
VARIANTS: dict[str, FlashHeadVariant] = {v.name: v for v in (PRO_1_3B, LITE_1_3B, LIVETALK_14B)}


def get_variant(name: str) -> FlashHeadVariant:
    """Look up a variant by name.

    Raises:
        ValueError: unknown name (lists the known ones).
    """
    try:
        return VARIANTS[name]
    except KeyError:
        raise ValueError(f"unknown variant {name!r}; known: {sorted(VARIANTS)}") from None

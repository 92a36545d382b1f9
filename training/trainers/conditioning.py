"""From a batch of curated windows to the DiT's inputs, exactly as streaming inference builds them
(FlashHead report §3.1-3.3; the recipe is :mod:`vividhead.flow_matching`):

* ``latents``: VAE latents of the window (the causal VAE makes the first ``1 + (m - 1) / stride``
  of them the latents of the ``m`` motion frames alone, as inference re-encodes them);
* ``ref_latent``: VAE latent of the reference frame repeated over the window;
* ``context``: Wav2Vec 2.0 features (all layers) of the 8 s Temporal Audio Context Cache that ends
  at the window's last frame, cut into one window per video frame;
* ``num_motion``: motion latent slots per sample (2, or 1 for a cold start).

The same :class:`ChunkInputs` come from a latent cache (``vividhead train cache-latents``), which
stores them per window.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vividhead.flow_matching import chunk_audio_context, motion_latent_count, reference_video
from vividhead.shard_format import SAMPLES_PER_FRAME
from vividhead.training.data import ClipWindowBatch, to_unit_range
from vividhead.training.trainers.models import FrozenEncoders


@dataclass
class ChunkInputs:
    """Conditioning and targets of one batch of windows.

    Attributes:
        latents: float32 ``[B, C, F, h, w]`` clean latents ``x0`` of the window.
        ref_latent: float32 ``[B, C, F, h, w]`` reference latent.
        context: float32 ``[B, F_v, W, L, D]`` audio windows per video frame.
        num_motion: int64 ``[B]`` motion latent slots (ground truth in front, no loss there).
    """

    latents: torch.Tensor
    ref_latent: torch.Tensor
    context: torch.Tensor
    num_motion: torch.Tensor

    def to(self, device: torch.device) -> ChunkInputs:
        """A copy on ``device``."""
        return ChunkInputs(*(t.to(device, non_blocking=True) for t in
                             (self.latents, self.ref_latent, self.context, self.num_motion)))


def fit_frames(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Scale to cover ``height x width`` (bilinear, antialiased) and centre-crop, as inference
    prepares its reference image; a no-op at the shards' own size.

    Args:
        frames: float ``[N, 3, H, W]``.

    Returns:
        ``[N, 3, height, width]``, same dtype.
    """
    h0, w0 = frames.shape[-2:]
    if (h0, w0) == (height, width):
        return frames
    scale = max(height / h0, width / w0)
    nh, nw = max(height, round(h0 * scale)), max(width, round(w0 * scale))
    x = F.interpolate(frames.float(), size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
    top, left = (nh - height) // 2, (nw - width) // 2
    return x[:, :, top : top + height, left : left + width].to(frames.dtype)


def model_frames(frames: torch.Tensor, dtype: torch.dtype, device: torch.device,
                 size: tuple[int, int] | None = None) -> torch.Tensor:
    """Frames as the VAE takes them: on ``device``, ``dtype``, in [-1, 1], fitted to ``size``.

    Args:
        frames: uint8 in [0, 255] or float in [-1, 1], ``[..., 3, H, W]`` (any leading dims).
        size: ``(height, width)`` (:func:`fit_frames`), or None to keep the size.

    Returns:
        ``dtype`` ``[..., 3, height, width]``.
    """
    x = frames.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        x = to_unit_range(x, dtype)
    if size is not None:
        lead = x.shape[:-3]
        x = fit_frames(x.reshape(-1, *x.shape[-3:]), *size).reshape(*lead, 3, *size)
    return x.to(dtype)


@torch.no_grad()
def encode_frames(frames: torch.Tensor, vae, device: torch.device,
                  size: tuple[int, int] | None = None) -> torch.Tensor:
    """VAE latents of windows of frames (the causal VAE makes the first ``1 + (m - 1) / stride``
    latents those of the first ``m`` frames alone).

    Args:
        frames: ``[B, F, 3, H, W]`` uint8 or float in [-1, 1] (F = 1 + k * stride).
        vae: the frozen :class:`vividhead.models.vae.VideoVAE`.

    Returns:
        float32 ``[B, C, F', h, w]``.
    """
    dtype = next(vae.parameters()).dtype
    video = model_frames(frames, dtype, device, size).permute(0, 2, 1, 3, 4).contiguous()  # [B, 3, F, H, W]
    return vae.encode(video).float()


@torch.no_grad()
def encode_reference(reference: torch.Tensor, vae, num_frames: int, device: torch.device,
                     size: tuple[int, int] | None = None) -> torch.Tensor:
    """Reference latent: the VAE latent of the reference frame repeated over ``num_frames``.

    Args:
        reference: ``[B, 3, H, W]`` uint8 or float in [-1, 1].

    Returns:
        float32 ``[B, C, F', h, w]``.
    """
    dtype = next(vae.parameters()).dtype
    ref = model_frames(reference, dtype, device, size)
    return vae.encode(reference_video(ref, num_frames)).float()


@torch.no_grad()
def encode_audio_context(audio: torch.Tensor, audio_encoder, num_frames: int, audio_window: int,
                         device: torch.device) -> torch.Tensor:
    """Audio context of windows: Wav2Vec features of each 8 s Temporal Audio Context Cache, cut
    into one window per video frame for the last ``num_frames`` frames (the cache ends at the
    window's last frame).

    Args:
        audio: float32 ``[B, S]`` caches (S = 128000 for 8 s at 16 kHz).
        audio_encoder: :class:`vividhead.models.audio_encoder.Wav2VecFeatures`.

    Returns:
        float32 ``[B, num_frames, audio_window, L, D]``.
    """
    audio = audio.to(device, non_blocking=True)
    feats = audio_encoder(audio, audio.shape[1] // SAMPLES_PER_FRAME)  # [B, S, L, D], S = 200 for 8 s
    return chunk_audio_context(feats, num_frames, audio_window).float()


@torch.no_grad()
def encode_batch(batch: ClipWindowBatch, enc: FrozenEncoders, audio_window: int,
                 device: torch.device, size: tuple[int, int] | None = None) -> ChunkInputs:
    """Encode a :class:`ClipWindowBatch` with the frozen VAE and Wav2Vec.

    Args:
        batch: frames ``[B, F, 3, H, W]`` (uint8 or float in [-1, 1]), reference ``[B, 3, H, W]``,
            audio float32 ``[B, S]`` (the 8 s cache), ``num_motion_frames`` ``[B]``.
        enc: frozen encoders.
        audio_window: Wav2Vec frames per video frame (5).
        device: where to encode.
        size: ``(height, width)`` the model trains at (frames are fitted with :func:`fit_frames`).

    Returns:
        float32 :class:`ChunkInputs` on ``device``.

    Raises:
        ValueError: a motion frame count that is not ``1 + k * stride``.
    """
    vae = enc.vae
    n_frames = batch.frames.shape[1]
    latents = encode_frames(batch.frames, vae, device, size)
    ref_latent = encode_reference(batch.reference, vae, n_frames, device, size)
    context = encode_audio_context(batch.audio, enc.audio, n_frames, audio_window, device)
    num_motion = torch.tensor(
        [motion_latent_count(int(m), vae.temporal_stride) for m in batch.num_motion_frames.tolist()],
        dtype=torch.int64, device=device,
    )
    return ChunkInputs(latents, ref_latent, context, num_motion)

"""From a batch of curated windows to the DiT's inputs, exactly as streaming inference builds them
(FlashHead report §3.1-3.3; the recipe is :mod:`vividhead.training.flow_matching`):

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

from vividhead.shard_format import SAMPLES_PER_FRAME
from vividhead.training.data import ClipWindowBatch, to_unit_range
from vividhead.training.flow_matching import chunk_audio_context, motion_latent_count, reference_video
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
    dtype = next(vae.parameters()).dtype
    frames = batch.frames.to(device, non_blocking=True)
    reference = batch.reference.to(device, non_blocking=True)
    if frames.dtype == torch.uint8:
        frames, reference = to_unit_range(frames, dtype), to_unit_range(reference, dtype)
    if size is not None:
        b, f = frames.shape[:2]
        frames = fit_frames(frames.flatten(0, 1), *size).unflatten(0, (b, f))
        reference = fit_frames(reference, *size)
    video = frames.to(dtype).permute(0, 2, 1, 3, 4).contiguous()  # [B, 3, F, H, W]
    n_frames = video.shape[2]
    latents = vae.encode(video).float()
    ref_latent = vae.encode(reference_video(reference.to(dtype), n_frames)).float()
    audio = batch.audio.to(device, non_blocking=True)
    feats = enc.audio(audio, audio.shape[1] // SAMPLES_PER_FRAME)  # [B, S, L, D], S = 200 for 8 s
    context = chunk_audio_context(feats, n_frames, audio_window).float()
    num_motion = torch.tensor(
        [motion_latent_count(int(m), vae.temporal_stride) for m in batch.num_motion_frames.tolist()],
        dtype=torch.int64, device=device,
    )
    return ChunkInputs(latents, ref_latent, context, num_motion)

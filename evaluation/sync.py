"""Sync-C / Sync-D (LSE-C / LSE-D) per video, with the curation's SyncNet code (one copy).

Protocol (``joonson/syncnet_python`` ``SyncNetInstance.evaluate``, as in the talking-head
literature): 25 fps video, 16 kHz audio, face track and 224 x 224 crops
(:mod:`vividhead.evaluation.faces`), 13 MFCCs at 100 Hz, 5-frame windows, offsets
+/- 15 frames; ``m[j]`` = mean over windows of the lip/audio embedding distance at offset ``j``;
**Sync-C** = median(m) - min(m), **Sync-D** = min(m), AV offset = 15 - argmin(m) frames.
Implemented by :func:`vividhead.curation.stages.syncnet.lipsync_distances` and
:func:`~vividhead.curation.stages.syncnet.sync_scores`; this module only adapts the inputs.

Real figures need ``syncnet_v2.model`` (registry ``syncnet_v2``), which a user downloads
(``joonson/syncnet_python`` ``download_model.sh``); it is not available on the development machine.
"""

from __future__ import annotations

import numpy as np
import torch

from vividhead.curation.stages.syncnet import LipSyncScore, lipsync_distances, sync_scores
from vividhead.evaluation.frames import to_pcm16

#: Offsets searched on each side, in frames.
VSHIFT = 15


def sync_distances(crops_bgr224: np.ndarray, audio: np.ndarray, model, vshift: int = VSHIFT,
                   batch_size: int = 20, device: str = "cpu") -> torch.Tensor:
    """Window x offset distances of a video (rows = 5-frame windows by start frame).

    Args:
        crops_bgr224: uint8 [T, 224, 224, 3] BGR face crops at 25 fps.
        audio: float32 [S] mono in [-1, 1] at 16 kHz, aligned with frame 0.
        model: :class:`vividhead.curation.models.syncnet.SyncNet` in eval mode on ``device``.

    Returns:
        float32 [W, 2 * vshift + 1], ``W = min(T, S // 640) - 5``.

    Raises:
        vividhead.curation.stage.MediaError: ``too_short`` (fewer than 6 frames with audio).
    """
    return lipsync_distances(crops_bgr224, to_pcm16(audio), model, vshift, batch_size, device)


def sync_metrics(crops_bgr224: np.ndarray, audio: np.ndarray, model, vshift: int = VSHIFT,
                 batch_size: int = 20, device: str = "cpu") -> LipSyncScore:
    """Sync-C (``lse_c``), Sync-D (``lse_d``) and the AV offset of one video (arguments as
    :func:`sync_distances`)."""
    return sync_scores(sync_distances(crops_bgr224, audio, model, vshift, batch_size, device), vshift)


def window_sync(dists: torch.Tensor, start: int, stop: int, vshift: int = VSHIFT) -> LipSyncScore | None:
    """Sync scores of the windows starting in frames ``[start, stop)`` of a longer video's
    :func:`sync_distances` (the same embeddings; audio next to the range is real audio, not the
    zero padding a separate clip would get). None when no window starts there."""
    rows = dists[start : min(stop, dists.shape[0])]
    return sync_scores(rows, vshift) if rows.shape[0] > 0 else None

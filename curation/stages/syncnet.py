"""syncnet: SyncNet lip-sync scores LSE-C, LSE-D and the audio-visual offset (FlashHead 2.1.2).

The protocol is the one behind the LSE-C / LSE-D numbers in the literature (``joonson/syncnet_python``
``SyncNetInstance.evaluate``, reused by the Wav2Lip evaluation):

1. A smoothed face track over every frame; each frame is cropped around the face (crop scale 0.4,
   see :mod:`vividhead.curation.face_track`) to 224 x 224 BGR.
2. 13 MFCCs at 100 Hz from the 16 kHz audio (:func:`vividhead.curation.audio_io.mfcc_100hz`).
3. For each start frame ``i`` (``W = min(frames, samples // 640) - 5`` windows), a 5-frame lip
   window ``frames[i:i+5]`` and a 20-step MFCC window ``mfcc[4i:4i+20]`` are embedded by SyncNet.
4. ``d[i, j]`` = Euclidean distance between lip embedding ``i`` and audio embedding ``i + j - v``
   for ``j = 0..2v`` (``v = vshift_frames``, 15), audio embeddings zero-padded at both ends.
5. ``m[j]`` = mean over windows of ``d[:, j]``. **LSE-D** = ``min_j m[j]``; **LSE-C** =
   ``median_j m[j] - min_j m[j]``; **AV offset** = ``v - argmin_j m[j]`` frames. With this sign,
   audio delayed by ``n`` frames against the video gives an offset of ``-n``.

Reasons: ``low_sync_confidence`` (LSE-C < ``min_lse_c``), ``high_sync_distance`` (LSE-D > ``max_lse_d``),
``av_offset`` (|offset| > ``max_abs_av_offset_frames``), ``no_face_track``, ``too_short``.
Columns: ``lse_c``, ``lse_d``, ``av_offset_frames``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from vividhead.config import bounded
from vividhead.curation.audio_io import mfcc_100hz
from vividhead.curation.decoded_clip import DecodedClip
from vividhead.curation.face_scorer import FaceScorerConfig, FaceScorerStage, clip_and_pcm, no_grad
from vividhead.curation.records import Row
from vividhead.curation.stage import FrameStage
from vividhead.errors import MediaError
from vividhead.models.face_detector import FaceDetector
from vividhead.shard_format import SAMPLE_RATE_HZ, SAMPLES_PER_FRAME

if TYPE_CHECKING:  # torch and the model load in the functions that run them (importing this module is cheap)
    import torch

    from vividhead.curation.models.syncnet import SyncNet


@dataclass(frozen=True)
class SyncNetConfig(FaceScorerConfig):
    """SyncNet lip-sync scores LSE-C / LSE-D / AV offset (FlashHead section 2.1.2).

    The face-track fields (``weights_path``: explicit path of ``syncnet_v2.model``, else the
    registry's ``syncnet_v2``; ``detector_weights_path``, ``min_confidence``, ``min_face_share``,
    ``crop_scale``) are :class:`~vividhead.curation.face_scorer.FaceScorerConfig`'s.

    Attributes:
        vshift_frames: offsets searched on each side, in video frames (15 in the LSE protocol).
        batch_size: 5-frame windows per forward pass.
        min_lse_c: reject ``low_sync_confidence`` below this LSE-C; ``None`` = off.
        max_lse_d: reject ``high_sync_distance`` above this LSE-D; ``None`` = off.
        max_abs_av_offset_frames: reject ``av_offset`` when |offset| exceeds this many frames
            (1 frame = 40 ms at 25 fps); ``None`` = off.
    """

    memory_gib: float = 3.0  # a decoded 50 s clip (1 GiB), its 224 px face crops (0.2 GiB) and SyncNet activations

    vshift_frames: int = bounded(15, ">= 1")
    batch_size: int = bounded(20, ">= 1")
    min_lse_c: Optional[float] = 3.0
    max_lse_d: Optional[float] = bounded(None, "> 0 or null")
    max_abs_av_offset_frames: Optional[int] = bounded(3, "in [0, vshift_frames] or null")


#: Video frames per SyncNet window and MFCC steps per video frame (25 fps video, 100 Hz MFCC).
WINDOW_FRAMES = 5
MFCC_PER_FRAME = 4


@dataclass(frozen=True)
class LipSyncScore:
    """Result of :func:`sync_scores`.

    Attributes:
        lse_c: LSE-C (confidence), distance units (median minus minimum of ``mean_dists``).
        lse_d: LSE-D (distance at the best offset), Euclidean distance between embeddings.
        av_offset_frames: ``vshift - argmin``, in video frames (40 ms each at 25 fps).
        mean_dists: float32 [2 * vshift + 1] mean distance per offset index ``j``.
        num_windows: number of 5-frame windows scored.
    """

    lse_c: float
    lse_d: float
    av_offset_frames: int
    mean_dists: np.ndarray
    num_windows: int


def offset_distances(video_emb: torch.Tensor, audio_emb: torch.Tensor, vshift: int) -> torch.Tensor:
    """Distances between every lip window and the audio windows within ``+/- vshift`` frames.

    Args:
        video_emb: float [W, D] lip embeddings, one per window start frame.
        audio_emb: float [W, D] audio embeddings, same windows.
        vshift: offsets searched on each side, in frames.

    Returns:
        float [W, 2 * vshift + 1]: ``out[i, j] = ||video_emb[i] - audio_emb[i + j - vshift] + 1e-6||_2``,
        with zero vectors for audio indices outside ``[0, W)`` (``F.pairwise_distance``, as the reference).
    """
    import torch
    import torch.nn.functional as F

    w = video_emb.shape[0]
    padded = F.pad(audio_emb, (0, 0, vshift, vshift))  # [W + 2v, D]
    idx = torch.arange(w).unsqueeze(1) + torch.arange(2 * vshift + 1).unsqueeze(0)  # [W, 2v+1]
    return F.pairwise_distance(video_emb.unsqueeze(1).expand(-1, idx.shape[1], -1), padded[idx], p=2.0)


def sync_scores(dists: torch.Tensor | np.ndarray, vshift: int) -> LipSyncScore:
    """LSE-C, LSE-D and AV offset from a window x offset distance matrix.

    Args:
        dists: float [W, 2 * vshift + 1] from :func:`offset_distances`.
        vshift: offsets on each side; column ``vshift`` is offset 0.

    Returns:
        :class:`LipSyncScore`. The median is ``torch.median`` (the lower middle value for an even
        count; ``2 * vshift + 1`` is odd, so it is the exact median).
    """
    import torch

    d = torch.as_tensor(dists, dtype=torch.float32)
    mdist = d.mean(dim=0)
    minval, minidx = torch.min(mdist, 0)
    conf = torch.median(mdist) - minval
    return LipSyncScore(
        lse_c=float(conf),
        lse_d=float(minval),
        av_offset_frames=int(vshift - int(minidx)),
        mean_dists=mdist.numpy().astype(np.float32),
        num_windows=int(d.shape[0]),
    )


@no_grad
def embed_windows(
    crops: np.ndarray, mfcc: np.ndarray, num_windows: int, model: SyncNet, batch_size: int = 20, device: str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """SyncNet embeddings of the lip and audio windows.

    Args:
        crops: [T, 224, 224, 3] BGR face crops, 0-255 (uint8 or float).
        mfcc: float [M, 13] MFCCs at 100 Hz (``M >= 4 * (num_windows - 1) + 20``).
        num_windows: windows to embed; window ``i`` uses ``crops[i:i+5]`` and ``mfcc[4i:4i+20]``.
        model: SyncNet in eval mode on ``device``.

    Returns:
        (lip embeddings float32 [W, D], audio embeddings float32 [W, D]) on the CPU.
    """
    import torch

    cc = torch.from_numpy(np.ascontiguousarray(mfcc.T, dtype=np.float32))  # [13, M]
    video_out, audio_out = [], []
    for start in range(0, num_windows, batch_size):
        idx = range(start, min(num_windows, start + batch_size))
        lips = np.stack([crops[i : i + WINDOW_FRAMES] for i in idx])  # [B, 5, 224, 224, 3]
        lips_t = torch.from_numpy(lips).to(device=device, dtype=torch.float32).permute(0, 4, 1, 2, 3)  # [B, 3, 5, H, W]
        video_out.append(model.forward_lip(lips_t).float().cpu())
        aud = torch.stack([cc[:, MFCC_PER_FRAME * i : MFCC_PER_FRAME * i + MFCC_PER_FRAME * WINDOW_FRAMES] for i in idx])
        audio_out.append(model.forward_aud(aud.unsqueeze(1).to(device)).float().cpu())  # [B, 1, 13, 20] in
    return torch.cat(video_out), torch.cat(audio_out)


def lipsync_from_crops(
    crops: np.ndarray, pcm: np.ndarray, model: SyncNet, vshift: int = 15, batch_size: int = 20, device: str = "cpu"
) -> LipSyncScore:
    """Score face crops against their audio (steps 2-5 of the module docstring).

    Args:
        crops: [T, 224, 224, 3] BGR face crops at 25 fps, 0-255.
        pcm: int16 [N] mono samples at 16 kHz, aligned with frame 0.
        model: SyncNet in eval mode on ``device``.

    Returns:
        :class:`LipSyncScore`.

    Raises:
        MediaError: ``too_short`` when fewer than 6 frames (one window) overlap the audio.
    """
    return sync_scores(lipsync_distances(crops, pcm, model, vshift, batch_size, device), vshift)


def lipsync_distances(
    crops: np.ndarray, pcm: np.ndarray, model: SyncNet, vshift: int = 15, batch_size: int = 20, device: str = "cpu"
) -> torch.Tensor:
    """The window x offset distance matrix of a clip (steps 2-4), before :func:`sync_scores`.

    Rows are 5-frame windows by start frame, so the rows of a frame range (e.g. one window of a
    long generation in the evaluation's drift curve) score that range with the same embeddings.

    Args:
        crops: [T, 224, 224, 3] BGR face crops at 25 fps, 0-255.
        pcm: int16 [N] mono samples at 16 kHz, aligned with frame 0.
        model: SyncNet in eval mode on ``device``.

    Returns:
        float32 [W, 2 * vshift + 1] on the CPU, ``W = min(T, N // 640) - 5``.

    Raises:
        MediaError: ``too_short`` when fewer than 6 frames (one window) overlap the audio.
    """
    min_length = min(len(crops), len(pcm) // SAMPLES_PER_FRAME)
    num_windows = min_length - WINDOW_FRAMES  # the reference's range(0, min_length - 5)
    if num_windows < 1:
        raise MediaError("too_short", f"{min_length} frames with audio; SyncNet needs at least {WINDOW_FRAMES + 1}")
    mfcc = mfcc_100hz(pcm, SAMPLE_RATE_HZ)
    video_emb, audio_emb = embed_windows(crops, mfcc, num_windows, model, batch_size, device)
    return offset_distances(video_emb, audio_emb, vshift)


def score_lipsync(
    clip: DecodedClip | bytes, audio: Optional[bytes], model: SyncNet, detector: FaceDetector, cfg: SyncNetConfig,
    device: str = "cpu",
) -> LipSyncScore:
    """Track and crop the face of a clip and score lip sync.

    Args:
        clip: the decoded clip (face track and crops shared with the other frame stages), or
            encoded clip bytes at 25 fps (the pipeline's face-centred 512x512 crop).
        audio: WAV bytes, 16 kHz mono PCM16 aligned with the video (None: the clip's own).
        model: SyncNet in eval mode on ``device``.
        detector: face detector for the track.

    Returns:
        :class:`LipSyncScore`.

    Raises:
        MediaError: ``decode_failed``, ``bad_audio``, ``no_face_track``, ``too_short``.
    """
    clip, pcm = clip_and_pcm(clip, audio)
    crops = clip.face_crops(detector, cfg.crop_scale, 224, cfg.min_face_share)
    return lipsync_from_crops(crops, pcm, model, cfg.vshift_frames, cfg.batch_size, device)


class SyncNetStage(FaceScorerStage, FrameStage):
    """Scores LSE-C / LSE-D / AV offset and rejects clips outside the configured bounds."""

    name = "syncnet"
    config_class = SyncNetConfig
    writes_columns = ("lse_c", "lse_d", "av_offset_frames")

    def model_weights(self) -> str:
        return "syncnet_v2"

    def load_model(self, path, device: str) -> SyncNet:
        from vividhead.curation.models.syncnet import load_syncnet

        return load_syncnet(path, device)

    def process_clip(self, row: Row, clip: DecodedClip) -> list[Row]:
        s = score_lipsync(clip, None, self._model, self._detector, self.cfg, self._device)
        row.update(lse_c=round(s.lse_c, 4), lse_d=round(s.lse_d, 4), av_offset_frames=s.av_offset_frames)
        cfg = self.cfg
        if cfg.min_lse_c is not None and s.lse_c < cfg.min_lse_c:
            raise MediaError("low_sync_confidence", f"LSE-C {s.lse_c:.2f} < {cfg.min_lse_c:g}")
        if cfg.max_lse_d is not None and s.lse_d > cfg.max_lse_d:
            raise MediaError("high_sync_distance", f"LSE-D {s.lse_d:.2f} > {cfg.max_lse_d:g}")
        if cfg.max_abs_av_offset_frames is not None and abs(s.av_offset_frames) > cfg.max_abs_av_offset_frames:
            raise MediaError("av_offset", f"AV offset {s.av_offset_frames} frames")
        return [row]

"""transition: optical-flow detection of abrupt transitions inside a clip (FlashHead 2.1.2).

For each pair of consecutive frames (grayscale, downscaled), dense Farneback optical flow warps the
next frame back onto the current one. Motion (head turns, gestures) is explained by the flow and
leaves a small residual; a hard cut is not, and leaves a large one. A frame pair is a transition when
its residual exceeds ``min_residual`` grey levels and ``min_spike_ratio`` times the median residual
of its neighbours, so gradual fades (small, steady residuals) do not fire.

Reason: ``abrupt_transition``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vividhead.config import bounded
from vividhead.curation.decoded_clip import DecodedClip, as_decoded
from vividhead.curation.records import Row
from vividhead.curation.stage import FrameStage, StageConfig
from vividhead.errors import MediaError


@dataclass(frozen=True)
class TransitionConfig(StageConfig):
    """Optical-flow transition filter (FlashHead section 2.1.2).

    Attributes:
        analysis_size_px: frames are downscaled to this square size (grayscale) before flow.
        min_residual: flow-warp residual (mean absolute error, 0-255 grey levels) a frame pair must
            exceed to count as a transition.
        min_spike_ratio: the residual must also exceed this multiple of the median residual of the
            neighbouring ``context_frames`` on each side, so slow fades and motion do not fire.
    """

    memory_gib: float = 2.0  # a decoded 50 s clip (1 GiB at 512x512) and its small grey copy

    # 64 px: a third of the flow's CPU time at 128 px, the same decisions on the fixtures (the hard
    # cut's residual 49.4 against 51.5 at 128 px, motion at most 11.7 against 10.2; threshold 20):
    # docs/benchmarks.md.
    analysis_size_px: int = bounded(64, ">= 16")
    min_residual: float = bounded(20.0, "> 0")
    min_spike_ratio: float = bounded(8.0, ">= 1")
    context_frames: int = bounded(5, ">= 1")


@dataclass(frozen=True)
class TransitionScore:
    """Result of :func:`transition_score`.

    Attributes:
        residuals: float32 [T-1] flow-warp residual per consecutive frame pair (grey levels, 0-255).
        spike_ratios: float32 [T-1] residual / (median residual of the neighbours + 1).
        frame: index of the frame after the strongest transition candidate.
        is_transition: whether any pair passes both thresholds.
    """

    residuals: np.ndarray
    spike_ratios: np.ndarray
    frame: int
    is_transition: bool

    @property
    def score(self) -> float:
        """Largest residual among pairs whose spike ratio passes (else the largest residual)."""
        return float(self.residuals.max()) if len(self.residuals) else 0.0


def flow_residuals(frames: list[np.ndarray]) -> np.ndarray:
    """Flow-warp residual for each consecutive pair.

    Args:
        frames: uint8 [H, W] grayscale frames, all the same size.

    Returns:
        float32 [T-1]: mean absolute difference between frame t and frame t+1 warped by the
        Farneback flow from t to t+1, in grey levels.
    """
    import cv2

    if len(frames) < 2:
        return np.zeros(0, np.float32)
    h, w = frames[0].shape
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    out = np.empty(len(frames) - 1, np.float32)
    for i, (a, b) in enumerate(zip(frames[:-1], frames[1:])):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        warped = cv2.remap(b, gx + flow[..., 0], gy + flow[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        out[i] = np.mean(np.abs(warped.astype(np.float32) - a.astype(np.float32)))
    return out


def transition_score(frames: list[np.ndarray], cfg: TransitionConfig) -> TransitionScore:
    """Find abrupt transitions in a clip.

    Args:
        frames: uint8 [H, W] grayscale frames in order.

    Returns:
        :class:`TransitionScore`.
    """
    res = flow_residuals(frames)
    k = cfg.context_frames
    ratios = np.zeros_like(res)
    for i in range(len(res)):
        neighbours = np.concatenate([res[max(0, i - k) : i], res[i + 1 : i + 1 + k]])
        ratios[i] = res[i] / ((np.median(neighbours) if len(neighbours) else 0.0) + 1.0)
    hits = (res > cfg.min_residual) & (ratios > cfg.min_spike_ratio)
    idx = int(np.argmax(np.where(hits, res, -1.0))) if hits.any() else (int(np.argmax(res)) if len(res) else 0)
    return TransitionScore(res, ratios, idx + 1, bool(hits.any()))


def clip_transition_score(clip: DecodedClip | bytes | str, cfg: TransitionConfig) -> TransitionScore:
    """Score a clip's frames, grayscale and scaled to ``analysis_size_px`` square (area
    interpolation, :meth:`DecodedClip.gray`), with :func:`transition_score`.

    Args:
        clip: the decoded clip, or encoded clip bytes or a path.

    Raises:
        MediaError: ``decode_failed``.
    """
    return transition_score(list(as_decoded(clip).gray(cfg.analysis_size_px)), cfg)


class TransitionStage(FrameStage):
    """Rejects clips with an abrupt transition; records the residual and the frame index."""

    name = "transition"
    config_class = TransitionConfig
    writes_columns = ("transition_score", "transition_frame")

    def process_clip(self, row: Row, clip: DecodedClip) -> list[Row]:
        result = clip_transition_score(clip, self.cfg)
        row.update(transition_score=round(result.score, 3), transition_frame=result.frame)
        if result.is_transition:
            raise MediaError("abrupt_transition", f"residual {result.score:.1f} at frame {result.frame}")
        return [row]

"""FVD: Frechet distance between I3D features of 16-frame clips (Unterthiner et al. 2019).

Protocol (the StyleGAN-V one, with the I3D of :mod:`vividhead.evaluation.i3d`; read that
module for why that I3D and how it differs from StyleGAN-V's TorchScript file):

* clips: every non-overlapping run of 16 consecutive frames of each 25 fps video
  (:func:`vividhead.evaluation.frames.clip_starts`), generated and real alike;
* input: RGB resized to 224 x 224 (bilinear, ``align_corners=False``), scaled to [-1, 1]
  (``x / 127.5 - 1``), float32 ``[B, 3, 16, 224, 224]``;
* features: the 400 Kinetics logits (before the softmax), float64;
* distance: ``|mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2))`` with the square-root trace from
  the eigenvalues of ``S_g S_r`` (as torch-fidelity computes FID; StyleGAN-V uses
  ``scipy.linalg.sqrtm``, the same value up to rounding).

Few clips make FVD unreliable: with fewer clips than feature dimensions (400) the covariances are
singular, and the estimate is biased upwards and noisy (StyleGAN-V uses 2048 clips). The report
prints the clip counts next to the figure.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from vividhead.evaluation.frames import clip_starts

#: Frames per FVD clip.
CLIP_LEN = 16
#: I3D input side in pixels.
SIZE = 224


def clips_to_i3d_input(clips: np.ndarray, size: int = SIZE) -> torch.Tensor:
    """uint8 clips ``[B, T, H, W, 3]`` RGB -> float32 ``[B, 3, T, size, size]`` in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(clips)).float()
    b, t, h, w, _ = x.shape
    x = x.reshape(b * t, h, w, 3).permute(0, 3, 1, 2)
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = x / 127.5 - 1.0
    return x.reshape(b, t, 3, size, size).permute(0, 2, 1, 3, 4).contiguous()


def video_clips(frames: np.ndarray, clip_len: int = CLIP_LEN, stride: int | None = None) -> np.ndarray:
    """The FVD clips of one video: uint8 ``[K, clip_len, H, W, 3]`` (K may be 0)."""
    starts = clip_starts(len(frames), clip_len, stride)
    if len(starts) == 0:
        return np.zeros((0, clip_len, *frames.shape[1:]), np.uint8)
    return np.stack([frames[s : s + clip_len] for s in starts])


@torch.no_grad()
def i3d_features(clips: np.ndarray | Iterable[np.ndarray], model, size: int = SIZE, device: str = "cpu",
                 batch_size: int = 8) -> np.ndarray:
    """I3D logits of clips.

    Args:
        clips: uint8 ``[K, T, H, W, 3]``, or an iterable of such arrays (e.g. one per video).
        model: :class:`vividhead.evaluation.i3d.InceptionI3d` in eval mode on ``device``.
        size: input side (224 in the protocol; smaller only in tests).
        batch_size: clips per forward pass.

    Returns:
        float64 ``[K, 400]``.
    """
    out = []
    for group in ([clips] if isinstance(clips, np.ndarray) else clips):
        for i in range(0, len(group), batch_size):
            x = clips_to_i3d_input(group[i : i + batch_size], size).to(device)
            out.append(model(x).double().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 400))


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets.

    Args:
        a, b: float [N, D] and [M, D], N, M >= 2.

    Returns:
        ``|mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 sum(sqrt(eig(S_a S_b)))`` (real part), >= 0 up to
        rounding; 0 for identical sets.

    Raises:
        ValueError: fewer than 2 rows or different widths.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two [N >= 2, D] feature sets, got {a.shape} and {b.shape}")
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    tr_covmean = np.sum(np.sqrt(np.linalg.eigvals(sa @ sb).astype(np.complex128))).real
    return float(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * tr_covmean)

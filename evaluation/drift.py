"""Drift over a long generation: per-window metrics as a curve ("infinite streaming without collapse").

:func:`drift_metrics` cuts a generated video into windows of ``window_s`` seconds and measures, per
window, how far it has moved from the reference image and from its audio:

* ``color_delta_e``: CIE76 distance between the window's mean CIELAB colour and the reference's
  (L in [0, 100]); ``brightness_delta``: signed difference of mean L; ``color_std_ratio``: mean over
  L, a, b of (window std / reference std) -- 1 means the same contrast, -> 0 washed out;
* ``sharpness``: mean variance of the Laplacian of the gray frames (OpenCV ``Laplacian``, 3x3,
  float64, 0-255 gray levels), and ``sharpness_ratio`` against the reference resized and
  centre-cropped to the frame size as the generator does (1 = as sharp as the reference, blurring
  or collapse -> lower, noise -> higher);
* ``asd_score``: the Light-ASD score of the window's frames (per-frame logits of one pass over the
  whole video, averaged over the window) when a Light-ASD model is given;
* ``sync_c``, ``sync_d``, ``av_offset_frames``: Sync-C / Sync-D of the SyncNet windows that start in
  the window (one pass over the video, see :func:`vividhead.evaluation.sync.window_sync`)
  when SyncNet is given;
* ``latent_norm``: mean of the given per-frame latent norms over the window (e.g. the RMS of each
  chunk's motion latents repeated over the chunk's frames), when given;
* ``fid_vs_reference``: FID of the window's frames against a reference clip's frames
  (:func:`fid_per_window`, torch-fidelity, GPU machines) when enough frames exist.

Colour and sharpness use the whole frame. The stage-2 trainer's long-horizon check calls
:func:`drift_metrics` and :func:`plot_drift` directly; ``vividhead eval drift`` wraps them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vividhead.evaluation.frames import FPS, fit_audio

#: Metrics plotted by :func:`plot_drift`, in panel order, with their axis labels.
PLOTTED = (
    ("asd_score", "Light-ASD score (logit)"),
    ("sync_c", "Sync-C"),
    ("sync_d", "Sync-D"),
    ("color_delta_e", "colour dE76 vs reference"),
    ("color_std_ratio", "contrast ratio vs reference"),
    ("sharpness_ratio", "sharpness ratio vs reference"),
    ("latent_norm", "latent norm"),
    ("fid_vs_reference", "FID vs reference clip"),
)


def lab_stats(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame CIELAB mean and standard deviation.

    Args:
        frames: uint8 [N, H, W, 3] RGB (or one [H, W, 3] image).

    Returns:
        (mean float64 [N, 3], std float64 [N, 3]) of (L in [0, 100], a, b).
    """
    frames = frames[None] if frames.ndim == 3 else frames
    means, stds = [], []
    for f in frames:
        lab = cv2.cvtColor(f.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB).reshape(-1, 3)
        means.append(lab.mean(0))
        stds.append(lab.std(0))
    return np.asarray(means, np.float64), np.asarray(stds, np.float64)


def sharpness(frames: np.ndarray) -> np.ndarray:
    """Variance of the Laplacian of each gray frame (float64 [N]; uint8 [N, H, W, 3] RGB in)."""
    frames = frames[None] if frames.ndim == 3 else frames
    return np.asarray([cv2.Laplacian(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var() for f in frames])


def fit_reference(reference: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize (shorter side, area interpolation) and centre-crop a uint8 [H0, W0, 3] image to
    [height, width, 3], the geometry :func:`vividhead.inference.pipeline.preprocess_reference` uses."""
    h0, w0 = reference.shape[:2]
    scale = max(height / h0, width / w0)
    nh, nw = max(height, round(h0 * scale)), max(width, round(w0 * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    img = cv2.resize(reference, (nw, nh), interpolation=interp)
    top, left = (nh - height) // 2, (nw - width) // 2
    return np.ascontiguousarray(img[top : top + height, left : left + width])


def window_bounds(num_frames: int, window_s: float, fps: int = FPS) -> list[tuple[int, int]]:
    """Consecutive ``[start, stop)`` frame ranges of ``window_s`` seconds (the last one may be short)."""
    step = max(1, int(round(window_s * fps)))
    return [(s, min(num_frames, s + step)) for s in range(0, num_frames, step)]


def drift_metrics(
    frames: np.ndarray,
    audio: np.ndarray | None,
    reference: np.ndarray,
    window_s: float = 10.0,
    *,
    asd_model=None,
    syncnet=None,
    detector=None,
    latent_norms: np.ndarray | None = None,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Per-window drift metrics of a long generated video.

    Args:
        frames: uint8 [N, H, W, 3] RGB at 25 fps.
        audio: float32 [S] mono in [-1, 1] at 16 kHz aligned with frame 0 (the driving audio); None
            = silence (only used by ``asd_model`` / ``syncnet``).
        reference: uint8 [H0, W0, 3] RGB reference image (any size).
        window_s: window length in seconds.
        asd_model: :class:`vividhead.curation.models.lightasd.LightASD` for ``asd_score`` (None: skip).
        syncnet: :class:`vividhead.curation.models.syncnet.SyncNet` for Sync-C/D (None: skip).
        detector: face detector for the track (needed with ``asd_model`` or ``syncnet``).
        latent_norms: float [N] per-frame latent norms (None: skip).
        device: where the models run.

    Returns:
        One dict per window: ``window``, ``start_s``, ``end_s``, ``num_frames``, ``color_delta_e``,
        ``brightness_delta``, ``color_std_ratio``, ``sharpness``, ``sharpness_ratio``, and when asked
        ``asd_score``, ``sync_c``, ``sync_d``, ``av_offset_frames``, ``latent_norm`` (None where a
        window has no value, e.g. no SyncNet window starts in it). When the face track fails, every
        row has ``face_error`` (the reason) and no face metrics.

    Raises:
        ValueError: ``frames`` is not uint8 [N, H, W, 3], ``latent_norms`` has another length, or a
            face model is given without a detector.
    """
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {frames.shape}")
    n = len(frames)
    if latent_norms is not None and len(latent_norms) != n:
        raise ValueError(f"latent_norms has {len(latent_norms)} values for {n} frames")
    if (asd_model is not None or syncnet is not None) and detector is None:
        raise ValueError("asd_model / syncnet need a face detector")
    ref = fit_reference(reference, frames.shape[1], frames.shape[2])
    ref_mean, ref_std = lab_stats(ref)
    ref_sharp = float(sharpness(ref)[0])
    means, stds = lab_stats(frames)
    sharp = sharpness(frames)

    logits, dists, face_error = None, None, None
    if asd_model is not None or syncnet is not None:
        from vividhead.errors import MediaError
        from vividhead.evaluation.faces import face_crops

        sound = fit_audio(audio, n)
        try:
            faces = face_crops(frames, detector, keep_bgr=syncnet is not None)
            if asd_model is not None:
                from vividhead.evaluation.asd_score import asd_metric, asd_visual

                logits = asd_metric(asd_visual(faces.gray112, asd_model, device), sound, asd_model, device).frame_logits
            if syncnet is not None:
                from vividhead.evaluation.sync import sync_distances

                dists = sync_distances(faces.bgr224, sound, syncnet, device=device)
        except MediaError as exc:
            face_error = exc.reason

    rows = []
    for i, (a, b) in enumerate(window_bounds(n, window_s)):
        m, s = means[a:b].mean(0), stds[a:b].mean(0)
        row: dict[str, Any] = {
            "window": i,
            "start_s": a / FPS,
            "end_s": b / FPS,
            "num_frames": b - a,
            "color_delta_e": float(np.linalg.norm(m - ref_mean[0])),
            "brightness_delta": float(m[0] - ref_mean[0, 0]),
            "color_std_ratio": float(np.mean(s / np.maximum(ref_std[0], 1e-6))),
            "sharpness": float(sharp[a:b].mean()),
            "sharpness_ratio": float(sharp[a:b].mean() / max(ref_sharp, 1e-6)),
        }
        if face_error is not None:
            row["face_error"] = face_error
        if asd_model is not None and face_error is None:
            part = logits[a : min(b, len(logits))]
            row["asd_score"] = float(part.mean()) if len(part) else None
        if syncnet is not None and face_error is None:
            from vividhead.evaluation.sync import window_sync

            ws = window_sync(dists, a, b)
            row.update(sync_c=ws.lse_c if ws else None, sync_d=ws.lse_d if ws else None,
                       av_offset_frames=ws.av_offset_frames if ws else None)
        if latent_norms is not None:
            row["latent_norm"] = float(np.mean(latent_norms[a:b]))
        rows.append(row)
    return rows


def fid_per_window(frames: np.ndarray, reference_frames: np.ndarray, features, window_s: float = 60.0,
                   min_frames: int = 100) -> list[float | None]:
    """FID of each window of ``frames`` against a reference clip's frames (torch-fidelity).

    Args:
        frames: uint8 [N, H, W, 3] generated frames at 25 fps.
        reference_frames: uint8 [M, H', W', 3] frames of the reference clip (the real video the
            reference image came from).
        features: :class:`vividhead.evaluation.fid.InceptionFeatures`.
        window_s: window length (60 s: "FID of each minute").
        min_frames: windows (and a reference clip) with fewer frames get None. FID is biased and
            noisy with fewer frames than its 2048 feature dimensions; compare windows with each
            other, not with set-level FIDs.

    Returns:
        One FID (or None) per window of :func:`window_bounds`.
    """
    from vividhead.evaluation.fid import fid_from_features

    bounds = window_bounds(len(frames), window_s)
    if len(reference_frames) < min_frames:
        return [None] * len(bounds)
    ref = features(reference_frames)
    return [fid_from_features(features(frames[a:b]), ref) if b - a >= min_frames else None for a, b in bounds]


def plot_drift(rows: list[dict[str, Any]], path: str | Path, title: str | None = None,
               not_real: tuple[str, ...] = ()) -> Path:
    """Plot every metric of :func:`drift_metrics` rows that has a value against time (PNG).

    Args:
        rows: :func:`drift_metrics` output (``fid_vs_reference`` may be added by the caller).
        path: output ``.png``.
        title: figure title.
        not_real: metric keys computed with random weights; their panels say so.

    Returns:
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    x = [(r["start_s"] + r["end_s"]) / 2 for r in rows]
    panels = [(k, label) for k, label in PLOTTED if any(r.get(k) is not None for r in rows)]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.9 * len(panels) + 0.6), sharex=True, squeeze=False)
    for ax, (key, label) in zip(axes[:, 0], panels):
        ys = [r.get(key) if r.get(key) is not None else np.nan for r in rows]
        ax.plot(x, ys, marker="o", ms=3, lw=1.2)
        if key.endswith("_ratio"):
            ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_ylabel(label, fontsize=8)
        if key in not_real:
            ax.set_title("random weights: NOT a real figure", fontsize=8, color="red")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("time (s), window centre")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

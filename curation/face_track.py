"""Face tracks inside a clip and the face crops that SyncNet and Light-ASD are evaluated on.

Both reference evaluations (``joonson/syncnet_python`` ``run_pipeline.py`` and
``Junhua-Liao/Light-ASD`` ``Columbia_test.py``) detect the face in every frame, interpolate
missed frames, median-filter the box half-size and centre with a 13-frame kernel, and cut each
frame as ``[y - s, y + s(1 + 2c)] x [x - s(1 + c), x + s(1 + c)]`` (``s`` = half the box's larger
side, ``c`` = crop scale 0.4) from the frame padded with grey level 110, resized to 224 x 224.
They use S3FD; here the detector is MediaPipe BlazeFace (:class:`vividhead.models.face_detector.FaceDetector`),
whose boxes are somewhat tighter, so crops are a little closer than the references'.

OpenCV and ``scipy.signal`` (0.7 CPU-s to import) are imported by the functions that use them, so
importing this module (the stage list does, on the driver) costs neither.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from vividhead.curation.media import iter_frames
from vividhead.errors import MediaError
from vividhead.models.face_detector import FaceBox, FaceDetector

#: Median-filter length of the references' track smoothing, in frames.
SMOOTH_FRAMES = 13
#: Grey level of the padding around the frame before cropping (references: 110).
PAD_VALUE = 110


@dataclass(frozen=True)
class FaceTrack:
    """One smoothed face track over every frame of a clip.

    Attributes:
        s: float64 [T] half of the box's larger side, in pixels (median-filtered).
        x: float64 [T] box centre x, pixels (median-filtered).
        y: float64 [T] box centre y, pixels (median-filtered).
        detected_share: share of frames with a detection before interpolation, in [0, 1].
    """

    s: np.ndarray
    x: np.ndarray
    y: np.ndarray
    detected_share: float

    def __len__(self) -> int:
        return len(self.s)


def smooth_track(boxes: np.ndarray, detected: np.ndarray) -> FaceTrack:
    """Interpolate missed frames and median-filter a raw per-frame track.

    Args:
        boxes: float [T, 4] ``x0, y0, x1, y1`` in pixels (rows where ``detected`` is False are ignored).
        detected: bool [T].

    Returns:
        :class:`FaceTrack` (linear interpolation between detections, held constant at the ends;
        then ``scipy.signal.medfilt`` with :data:`SMOOTH_FRAMES`, zero-padded at the ends as in the
        references).

    Raises:
        MediaError: ``no_face_track`` when no frame has a detection.
    """
    t = np.arange(len(boxes))
    if not detected.any():
        raise MediaError("no_face_track", "no face detected in any frame")
    filled = np.stack([np.interp(t, t[detected], boxes[detected, j]) for j in range(4)], axis=1)
    s = np.maximum(filled[:, 2] - filled[:, 0], filled[:, 3] - filled[:, 1]) / 2
    x = (filled[:, 0] + filled[:, 2]) / 2
    y = (filled[:, 1] + filled[:, 3]) / 2
    k = min(SMOOTH_FRAMES, len(t) if len(t) % 2 else len(t) - 1)
    if k >= 3:
        from scipy import signal

        s, x, y = (signal.medfilt(v, kernel_size=k) for v in (s, x, y))
    return FaceTrack(s, x, y, float(detected.mean()))


def detect_track(video: bytes, detector: FaceDetector, min_detected_share: float = 0.5) -> FaceTrack:
    """Detect the largest face in every frame of a clip and smooth the track.

    Args:
        video: encoded clip (any size; the pipeline's is the 512x512 face-centred crop).
        detector: MediaPipe face detector.
        min_detected_share: fewest frames (share) that must have a detection.

    Returns:
        :class:`FaceTrack` with one entry per decoded frame.

    Raises:
        MediaError: ``decode_failed``; ``no_face_track`` when fewer than ``min_detected_share`` of
            the frames have a face.
    """
    return track_frames((frame for _, frame in iter_frames(video)), detector, min_detected_share)


def track_frames(frames: Iterable[np.ndarray], detector: FaceDetector, min_detected_share: float = 0.5) -> FaceTrack:
    """:func:`detect_track` on frames already decoded (e.g. a generated video held in memory).

    Args:
        frames: uint8 [H, W, 3] RGB frames, in order (an iterable or an array [T, H, W, 3]).
        detector: MediaPipe face detector.
        min_detected_share: fewest frames (share) that must have a detection.

    Returns:
        :class:`FaceTrack` with one entry per frame.

    Raises:
        MediaError: ``decode_failed`` when there is no frame; ``no_face_track`` when fewer than
            ``min_detected_share`` of the frames have a face.
    """
    return track_from_detections([detector.detect(frame) for frame in frames], min_detected_share)


def track_from_detections(faces_per_frame: list[list[FaceBox]], min_detected_share: float = 0.5) -> FaceTrack:
    """The smoothed track of the largest face of each frame's detections.

    Args:
        faces_per_frame: per frame, the detector's faces sorted largest first (may be empty).
        min_detected_share: fewest frames (share) that must have a detection.

    Raises:
        MediaError: ``decode_failed`` when there is no frame; ``no_face_track`` when fewer than
            ``min_detected_share`` of the frames have a face.
    """
    if not faces_per_frame:
        raise MediaError("decode_failed", "no frame decoded")
    boxes = np.array([(f[0].x0, f[0].y0, f[0].x1, f[0].y1) if f else (0.0, 0.0, 0.0, 0.0) for f in faces_per_frame], np.float64)
    det = np.array([bool(f) for f in faces_per_frame])
    if det.mean() < min_detected_share:
        raise MediaError("no_face_track", f"face found in {det.mean():.0%} of frames")
    return smooth_track(boxes, det)


def crop_face(frame: np.ndarray, s: float, x: float, y: float, crop_scale: float = 0.4, size: int = 224) -> np.ndarray:
    """Cut one face crop the references' way.

    Args:
        frame: uint8 [H, W, C] or [H, W].
        s, x, y: half box size and centre in pixels.
        crop_scale: ``c`` above (0.4 in both references).
        size: output side in pixels.

    Returns:
        uint8 [size, size, C] (or [size, size]) resized with bilinear interpolation.
    """
    import cv2

    bsi = int(s * (1 + 2 * crop_scale))
    value = (PAD_VALUE,) * (frame.shape[2] if frame.ndim == 3 else 1)
    padded = cv2.copyMakeBorder(frame, bsi, bsi, bsi, bsi, cv2.BORDER_CONSTANT, value=value)
    my, mx = y + bsi, x + bsi
    face = padded[int(my - s) : int(my + s * (1 + 2 * crop_scale)), int(mx - s * (1 + crop_scale)) : int(mx + s * (1 + crop_scale))]
    return cv2.resize(face, (size, size))


def face_crops(video: bytes, track: FaceTrack, crop_scale: float = 0.4, size: int = 224, gray: bool = False) -> np.ndarray:
    """Decode a clip and cut the face crop of every frame along ``track``.

    Args:
        video: encoded clip (the one ``track`` was computed on).
        gray: return grayscale crops instead of BGR.

    Returns:
        uint8 ``[T, size, size, 3]`` BGR (the references read frames with OpenCV), or
        ``[T, size, size]`` gray; ``T = min(len(track), frames decoded)``.

    Raises:
        MediaError: ``decode_failed``.
    """
    return crop_frames((frame for _, frame in iter_frames(video)), track, crop_scale, size, gray)


def crop_frames(frames: Iterable[np.ndarray], track: FaceTrack, crop_scale: float = 0.4, size: int = 224,
                gray: bool = False) -> np.ndarray:
    """:func:`face_crops` on frames already decoded.

    Args:
        frames: uint8 [H, W, 3] RGB frames, in order (the ones ``track`` was computed on).
        gray: return grayscale crops instead of BGR.

    Returns:
        uint8 ``[T, size, size, 3]`` BGR, or ``[T, size, size]`` gray; ``T = min(len(track), frames)``.

    Raises:
        MediaError: ``decode_failed`` when there is no frame.
    """
    import cv2

    out = []
    for i, frame in enumerate(frames):
        if i >= len(track):
            break
        crop = crop_face(frame, track.s[i], track.x[i], track.y[i], crop_scale, size)
        out.append(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY) if gray else np.ascontiguousarray(crop[..., ::-1]))
    if not out:
        raise MediaError("decode_failed", "no frame decoded")
    return np.stack(out)

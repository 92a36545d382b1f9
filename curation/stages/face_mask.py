"""face_mask: per-frame face and lip masks and the 478 face landmarks of each kept clip (annotation).

MediaPipe Tasks ``FaceLandmarker`` (478-point face mesh) runs on every frame of the 512x512 clip in
VIDEO mode (a fresh tracker per clip). The face mask is the filled face-oval polygon, the lip mask
the filled outer-lip polygon (mouth interior included). Everything goes into one sample member
``<key>.mask.npz`` (``numpy.savez_compressed``):

* ``face``, ``lips``: uint8 ``[T, H, ceil(W / 8)]``, the bool ``[T, H, W]`` masks bit-packed along
  the width (``numpy.packbits(..., axis=-1)``); read back with :func:`decode_masks`.
* ``landmarks``: float16 ``[T, 478, 3]``: x, y normalised to [0, 1] of the frame width / height,
  z MediaPipe's relative depth (same scale as x); NaN for frames without a face.
* ``present``: bool ``[T]``, frames where a face was found.
* ``size``: int32 ``[2]`` = ``(H, W)`` in pixels.

The stage never rejects: when the landmarker finds no face in any frame (or decoding fails) the
member is not written and ``annotation_errors["face_mask"]`` holds the reason. The manifest column
``face_mask_share`` is the share of frames with a face.

Source: Kartynnik et al., "Real-time Facial Surface Geometry from Monocular Video on Mobile GPUs"
(2019); google-ai-edge/mediapipe ``face_landmarker.task``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from vividhead import weights
from vividhead.config import bounded
from vividhead.curation.decoded_clip import DecodedClip, as_decoded
from vividhead.curation.records import Row, add_member, note_annotation_error
from vividhead.curation.stage import FrameStage, StageConfig
from vividhead.errors import MediaError


@dataclass(frozen=True)
class FaceMaskConfig(StageConfig):
    """Per-frame face and lip masks from MediaPipe FaceLandmarker (annotation, never rejects).

    Attributes:
        weights_path: explicit path of the ``.task`` bundle (registry ``face_mediapipe_landmarker``).
        min_confidence: face detection / presence / tracking confidence of the landmarker.
        store_landmarks: also store the 478 landmarks per frame in ``<key>.mask.npz``.
    """

    memory_gib: float = 2.5  # a decoded 50 s clip (1 GiB), its masks and the MediaPipe landmarker

    weights_path: Optional[str] = None
    min_confidence: float = bounded(0.5, "in (0, 1)")
    store_landmarks: bool = True



NUM_LANDMARKS = 478
# Ordered polygons over the MediaPipe face mesh (the loops of FACEMESH_FACE_OVAL and the outer ring
# of FACEMESH_LIPS).
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
OUTER_LIPS = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]
MEMBER = "mask.npz"


@dataclass
class FaceMasks:
    """Masks and landmarks of one clip; masks are kept bit-packed (a 50 s clip unpacked is 650 MB).

    Attributes:
        face_bits, lips_bits: uint8 [T, H, ceil(W / 8)], bool [T, H, W] masks packed along the
            width with ``numpy.packbits(..., axis=-1)``.
        landmarks: float32 [T, 478, 3] (x, y in [0, 1] of width/height; z relative depth), NaN
            where ``present`` is False.
        present: bool [T].
        size: (H, W) in pixels.
    """

    face_bits: np.ndarray
    lips_bits: np.ndarray
    landmarks: np.ndarray
    present: np.ndarray
    size: tuple[int, int]

    @property
    def share(self) -> float:
        """Share of frames with a face, in [0, 1]."""
        return float(self.present.mean()) if len(self.present) else 0.0

    @classmethod
    def from_masks(cls, face: np.ndarray, lips: np.ndarray, landmarks: np.ndarray, present: np.ndarray) -> FaceMasks:
        """Build from bool [T, H, W] masks."""
        return cls(np.packbits(face, axis=-1), np.packbits(lips, axis=-1), landmarks, present, tuple(face.shape[1:]))


def polygon_mask(landmarks: np.ndarray, indices: list[int], size: tuple[int, int]) -> np.ndarray:
    """Filled polygon through ``landmarks[indices]``.

    Args:
        landmarks: float [478, >=2], x and y normalised to [0, 1].
        indices: landmark indices in polygon order.
        size: (H, W) of the mask in pixels.

    Returns:
        bool [H, W].
    """
    import cv2

    h, w = size
    pts = np.round(landmarks[indices, :2] * (w, h)).astype(np.int32)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [pts], 1)
    return mask.astype(bool)


class FaceLandmarks:
    """MediaPipe Tasks ``FaceLandmarker`` (one face, VIDEO mode) from a ``.task`` bundle.

    Args:
        model_path: the bundle (registry ``face_mediapipe_landmarker``).
        min_confidence: detection, presence and tracking confidence.
    """

    def __init__(self, model_path: str | Path, min_confidence: float = 0.5) -> None:
        self.model_path = str(model_path)
        self.min_confidence = min_confidence

    def track(self, frames) -> tuple[np.ndarray, np.ndarray]:
        """Landmarks of every frame of one clip, with a fresh tracker.

        Args:
            frames: iterable of uint8 [H, W, 3] RGB frames in order (25 fps assumed for timestamps;
                only their order matters).

        Returns:
            landmarks float32 [T, 478, 3] (NaN where no face) and present bool [T].
        """
        import mediapipe as mp
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_path=self.model_path),
            running_mode=vision.RunningMode.VIDEO,
            num_faces=1,
            min_face_detection_confidence=self.min_confidence,
            min_face_presence_confidence=self.min_confidence,
            min_tracking_confidence=self.min_confidence,
        )
        out, present = [], []
        with vision.FaceLandmarker.create_from_options(options) as landmarker:
            for i, frame in enumerate(frames):
                image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
                result = landmarker.detect_for_video(image, i * 40)
                if result.face_landmarks:
                    pts = result.face_landmarks[0]
                    out.append(np.array([(p.x, p.y, p.z) for p in pts], np.float32))
                    present.append(True)
                else:
                    out.append(np.full((NUM_LANDMARKS, 3), np.nan, np.float32))
                    present.append(False)
        if not out:
            return np.zeros((0, NUM_LANDMARKS, 3), np.float32), np.zeros(0, bool)
        return np.stack(out), np.array(present)


def face_masks(clip: DecodedClip | bytes | str, landmarker: FaceLandmarks) -> FaceMasks:
    """Face and lip masks of every frame of a clip.

    Args:
        clip: the decoded clip, or encoded bytes or a path (the 512x512 crop).

    Returns:
        :class:`FaceMasks` with T = number of decoded frames.

    Raises:
        MediaError: ``decode_failed`` (also when no frame decodes).
    """
    frames = as_decoded(clip).frames
    landmarks, present = landmarker.track(frames)
    size = frames.shape[1:3]
    t, (h, w) = len(present), size
    face = np.zeros((t, h, (w + 7) // 8), np.uint8)
    lips = np.zeros_like(face)
    for i in np.flatnonzero(present):
        face[i] = np.packbits(polygon_mask(landmarks[i], FACE_OVAL, size), axis=-1)
        lips[i] = np.packbits(polygon_mask(landmarks[i], OUTER_LIPS, size), axis=-1)
    return FaceMasks(face, lips, landmarks, present, (h, w))


def encode_masks(masks: FaceMasks, store_landmarks: bool = True) -> bytes:
    """The ``<key>.mask.npz`` member (see the module docstring for the arrays)."""
    h, w = masks.size
    arrays = {
        "face": masks.face_bits,
        "lips": masks.lips_bits,
        "present": masks.present.astype(bool),
        "size": np.array([h, w], np.int32),
    }
    if store_landmarks:
        arrays["landmarks"] = masks.landmarks.astype(np.float16)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def decode_masks(data: bytes) -> dict[str, np.ndarray]:
    """Read a ``<key>.mask.npz`` member back.

    Returns:
        ``face``, ``lips``: bool [T, H, W]; ``present``: bool [T]; ``landmarks``: float16
        [T, 478, 3] when stored.
    """
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        h, w = (int(v) for v in z["size"])
        out = {
            "face": np.unpackbits(z["face"], axis=-1, count=w).astype(bool),
            "lips": np.unpackbits(z["lips"], axis=-1, count=w).astype(bool),
            "present": z["present"],
        }
        if "landmarks" in z:
            out["landmarks"] = z["landmarks"]
    return out


class FaceMaskStage(FrameStage):
    """Attaches ``<key>.mask.npz`` (face and lip masks, landmarks) to each kept clip; never rejects."""

    name = "face_mask"
    config_class = FaceMaskConfig
    writes_columns = ("face_mask_share", "annotation_errors")
    resources = {"_landmarker": None}  # FaceLandmarks after setup

    def weights(self):
        """The FaceLandmarker ``.task`` bundle."""
        return [("face_mediapipe_landmarker", self.cfg.weights_path)]

    def setup(self) -> None:
        """Resolve the bundle (a fresh landmarker is created per clip, on CPU)."""
        path = weights.resolve("face_mediapipe_landmarker", self.cfg.weights_path)
        self._landmarker = FaceLandmarks(path, self.cfg.min_confidence)

    def process_clip(self, row: Row, clip: DecodedClip) -> list[Row]:
        """Attach ``mask.npz`` and fill ``face_mask_share``; failures go to ``annotation_errors``."""
        try:
            masks = face_masks(clip, self._landmarker)
        except MediaError as exc:
            note_annotation_error(row, self.name, exc.reason)
            return [row]
        row["face_mask_share"] = round(masks.share, 4)
        if not masks.present.any():
            note_annotation_error(row, self.name, "no_face_landmarks")
            return [row]
        add_member(row, MEMBER, encode_masks(masks, self.cfg.store_landmarks))
        return [row]

"""Optional face crop of the reference image (``vividhead infer/serve --crop-face``).

The released FlashHead code (``flash_head/utils/facecrop.py::process_image``, on when
``use_face_crop`` is set) detects faces with MediaPipe, takes the first box, cuts a square of side
``face_ratio x box width`` (2.0) centred horizontally on the box centre with 55 % of it above the box
centre and 45 % below (clipped to the image, corners truncated to whole pixels), and resizes that to
the output size (PIL's default bicubic filter; a crop clipped at the border is stretched). Here the
detector is ours (:class:`vividhead.models.face_detector.FaceDetector`, MediaPipe Tasks BlazeFace
short range, registry ``face_mediapipe_detector``) and the largest face is taken. Unlike the
released code, which logs an error and falls back to the whole image, no face is an error
(:class:`NoFaceError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np


class NoFaceError(ValueError):
    """The reference image has no face the detector accepts."""


@dataclass(frozen=True)
class FaceCropConfig:
    """Geometry of the released face crop and our detector's settings.

    Attributes:
        face_ratio: crop side as a multiple of the face box width (released default 2.0).
        above_fraction: share of the crop side above the box centre (released 0.55).
        min_confidence: detector score threshold in [0, 1].
        weights_path: explicit detector model file (default: the weights registry).

    Raises:
        ValueError: ``face_ratio <= 0`` or fractions outside [0, 1].
    """

    face_ratio: float = 2.0
    above_fraction: float = 0.55
    min_confidence: float = 0.5
    weights_path: Optional[str] = None

    def __post_init__(self) -> None:
        if self.face_ratio <= 0:
            raise ValueError(f"face_ratio must be > 0, got {self.face_ratio}")
        if not (0.0 <= self.above_fraction <= 1.0 and 0.0 <= self.min_confidence <= 1.0):
            raise ValueError("above_fraction and min_confidence must be in [0, 1]")


def face_crop_box(face, img_w: int, img_h: int, cfg: FaceCropConfig = FaceCropConfig()) -> tuple[int, int, int, int]:
    """The released crop box around a face.

    Args:
        face: a :class:`vividhead.models.face_detector.FaceBox` (pixels).
        img_w, img_h: image size in pixels.

    Returns:
        ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive, clipped to the image.
    """
    cx, cy = face.center
    side = (face.x1 - face.x0) * cfg.face_ratio
    x0 = int(max(0.0, cx - side * 0.5))
    y0 = int(max(0.0, cy - side * cfg.above_fraction))
    x1 = int(min(img_w, cx + (side - side * 0.5)))
    y1 = int(min(img_h, cy + (side - side * cfg.above_fraction)))
    return x0, y0, x1, y1


def crop_face(
    image: np.ndarray, height: int, width: int, cfg: FaceCropConfig = FaceCropConfig(), detector=None
) -> np.ndarray:
    """Crop the reference image around its largest face, as the released ``--use_face_crop`` does.

    Args:
        image: uint8 ``[H, W, 3]`` RGB.
        height, width: output size in pixels (the model's frame size).
        cfg: crop geometry and detector settings.
        detector: a ready :class:`vividhead.models.face_detector.FaceDetector` (else one is loaded
            from the registry and closed again).

    Returns:
        uint8 ``[height, width, 3]`` RGB.

    Raises:
        NoFaceError: no face at or above ``cfg.min_confidence``.
        ValueError: not a uint8 RGB image.
        vividhead.weights.WeightsNotFound: no detector model available.
    """
    from PIL import Image

    from vividhead.models.face_detector import FaceDetector

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    own = detector is None
    det = FaceDetector.load(cfg.weights_path, cfg.min_confidence) if own else detector
    try:
        faces = det.detect(image)
    finally:
        if own:
            det.close()
    if not faces:
        raise NoFaceError(f"no face found in the reference image (MediaPipe BlazeFace, score >= {cfg.min_confidence}); "
                          "use an image with a visible face or leave out --crop-face")
    h, w = image.shape[:2]
    box = face_crop_box(faces[0], w, h, cfg)
    crop = Image.fromarray(image).crop(box)
    return np.asarray(crop.resize((width, height), resample=Image.BICUBIC), dtype=np.uint8)

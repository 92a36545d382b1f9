"""MediaPipe Tasks ``FaceDetector`` (BlazeFace short range) as a plain detector object."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

#: Registry name of the MediaPipe face detector model (:mod:`vividhead.weights`).
WEIGHTS_NAME = "face_mediapipe_detector"


@dataclass(frozen=True)
class FaceBox:
    """A detected face in pixel coordinates of the frame it was found in.

    Attributes:
        x0, y0, x1, y1: box corners in pixels (x1/y1 exclusive).
        score: detector confidence in [0, 1].
    """

    x0: float
    y0: float
    x1: float
    y1: float
    score: float

    @property
    def size(self) -> float:
        """Box side in pixels (the larger of width and height)."""
        return max(self.x1 - self.x0, self.y1 - self.y0)

    @property
    def area(self) -> float:
        return max(0.0, self.x1 - self.x0) * max(0.0, self.y1 - self.y0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x0 + self.x1) / 2, (self.y0 + self.y1) / 2


class FaceDetector:
    """BlazeFace short-range through MediaPipe Tasks (mediapipe 1.2 ``vision.FaceDetector``).

    Args:
        model_path: the ``.tflite`` model with MediaPipe Tasks metadata
            (registry name ``face_mediapipe_detector``).
        min_confidence: detections below this score are dropped.

    Source: Bazarevsky et al., "BlazeFace", 2019; google-ai-edge/mediapipe.
    """

    def __init__(self, model_path: str | Path, min_confidence: float = 0.5) -> None:
        from mediapipe.tasks.python import BaseOptions, vision

        options = vision.FaceDetectorOptions(
            base_options=BaseOptions(model_asset_path=str(model_path)),
            min_detection_confidence=min_confidence,
        )
        self._detector = vision.FaceDetector.create_from_options(options)
        self.min_confidence = min_confidence
        #: What makes two detectors give the same boxes (model file, threshold): the key under
        #: which :class:`vividhead.curation.decoded_clip.DecodedClip` shares their detections.
        self.key = (str(model_path), float(min_confidence))

    @classmethod
    def load(cls, weights_path: Optional[str] = None, min_confidence: float = 0.5) -> FaceDetector:
        """Build the detector from the weights registry (``weights_path`` first, then
        ``$VIVIDHEAD_WEIGHTS_DIR``, the cache, the official URL).

        Raises:
            curation.weights.WeightsNotFound: the model file is not available.
        """
        from vividhead import weights

        return cls(weights.resolve(WEIGHTS_NAME, weights_path), min_confidence)

    def detect(self, frame: np.ndarray) -> list[FaceBox]:
        """Faces in one frame, largest first.

        Args:
            frame: uint8 [H, W, 3] RGB.

        Returns:
            Boxes in the frame's pixel coordinates, sorted by area (descending).
        """
        import mediapipe as mp

        image = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(frame))
        result = self._detector.detect(image)
        boxes = []
        for d in result.detections:
            b = d.bounding_box
            score = d.categories[0].score if d.categories else 0.0
            if score >= self.min_confidence:
                boxes.append(FaceBox(b.origin_x, b.origin_y, b.origin_x + b.width, b.origin_y + b.height, float(score)))
        return sorted(boxes, key=lambda f: f.area, reverse=True)

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the MediaPipe graph."""
        if self._detector is not None:
            self._detector.close()
            self._detector = None


class FaceDetectorStage:
    """Stage mixin for stages whose one model is this face detector (``face``, ``face_visibility``).

    The stage's config carries ``weights_path`` (an explicit ``.tflite`` path, else the registry's
    :data:`WEIGHTS_NAME`) and ``min_confidence``. Gives the stage its ``weights``, ``setup`` (the
    detector is ``self._detector`` afterwards) and ``teardown``; list it before the stage base class.
    """

    _detector: Optional[FaceDetector] = None

    def weights(self):
        return [(WEIGHTS_NAME, self.cfg.weights_path)]

    def setup(self) -> None:
        self._detector = FaceDetector.load(self.cfg.weights_path, self.cfg.min_confidence)

    def teardown(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None

"""face_visibility: share of 1 fps samples with no face inside the crop (FlashHead 2.1.2).

Reason: ``face_missing`` when the share exceeds ``max_missing_face_share``.
"""

from __future__ import annotations

from typing import Optional

from vividhead.curation.config import FaceVisibilityConfig
from vividhead.curation.face_detector import FaceDetector, WEIGHTS_NAME as FACE_WEIGHTS
from vividhead.curation.media import iter_frames
from vividhead.curation.records import Row
from vividhead.curation.stage import MediaError, Stage


def missing_face_share(video: bytes, detector: FaceDetector, fps: float, sample_fps: float) -> float:
    """Share of sampled frames in which the detector finds no face.

    Args:
        video: encoded clip (the 512x512 crop) at ``fps`` frames per second.
        sample_fps: samples per second (1 in the paper).

    Returns:
        Share in [0, 1].

    Raises:
        MediaError: ``decode_failed`` (also when no frame decodes).
    """
    every = max(1, int(round(fps / sample_fps)))
    sampled = missing = 0
    for _, frame in iter_frames(video, every_n=every):
        sampled += 1
        missing += not detector.detect(frame)
    if sampled == 0:
        raise MediaError("decode_failed", "no frame decoded")
    return missing / sampled


class FaceVisibilityStage(Stage):
    """Rejects clips where the face is missing from too many 1 fps samples."""

    name = "face_visibility"

    def __init__(self, cfg: FaceVisibilityConfig, fps: float) -> None:
        super().__init__(cfg)
        self.fps = fps
        self._detector: Optional[FaceDetector] = None

    def weights(self):
        return [(FACE_WEIGHTS, self.cfg.weights_path)]

    def setup(self) -> None:
        self._detector = FaceDetector.load(self.cfg.weights_path, self.cfg.min_confidence)

    def process(self, row: Row) -> list[Row]:
        share = missing_face_share(row["video_bytes"], self._detector, self.fps, self.cfg.sample_fps)
        row["missing_face_share"] = round(share, 4)
        if share > self.cfg.max_missing_face_share:
            raise MediaError("face_missing", f"no face in {share:.0%} of samples")
        return [row]

"""face_visibility: share of 1 fps samples with no face inside the crop (FlashHead 2.1.2).

Reason: ``face_missing`` when the share exceeds ``max_missing_face_share``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vividhead.curation.face_detector import WEIGHTS_NAME as FACE_WEIGHTS
from vividhead.curation.face_detector import FaceDetector
from vividhead.curation.media import iter_frames
from vividhead.curation.records import Row
from vividhead.curation.stage import MediaError, Stage, StageConfig, check


@dataclass(frozen=True)
class FaceVisibilityConfig(StageConfig):
    """Face presence sampled at ``sample_fps`` inside the crop (FlashHead section 2.1.2)."""

    weights_path: Optional[str] = None
    sample_fps: float = 1.0
    min_confidence: float = 0.5
    max_missing_face_share: float = 0.2

    def validate(self, section: str) -> None:
        super().validate(section)
        check(self.sample_fps > 0, f"{section}.sample_fps", "must be > 0")
        check(0 <= self.max_missing_face_share <= 1, f"{section}.max_missing_face_share", "must be in [0, 1]")


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
    config_class = FaceVisibilityConfig
    writes_columns = ("missing_face_share",)

    def __init__(self, cfg: FaceVisibilityConfig, fps: float) -> None:
        super().__init__(cfg)
        self.fps = fps
        self._detector: Optional[FaceDetector] = None

    @classmethod
    def from_config(cls, cfg) -> FaceVisibilityStage:
        return cls(cfg.face_visibility, cfg.normalize.fps)

    def weights(self):
        return [(FACE_WEIGHTS, self.cfg.weights_path)]

    def setup(self) -> None:
        self._detector = FaceDetector.load(self.cfg.weights_path, self.cfg.min_confidence)

    def teardown(self) -> None:
        if self._detector is not None:
            self._detector.close()
            self._detector = None

    def process(self, row: Row) -> list[Row]:
        share = missing_face_share(row["video_bytes"], self._detector, self.fps, self.cfg.sample_fps)
        row["missing_face_share"] = round(share, 4)
        if share > self.cfg.max_missing_face_share:
            raise MediaError("face_missing", f"no face in {share:.0%} of samples")
        return [row]

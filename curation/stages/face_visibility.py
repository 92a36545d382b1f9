"""face_visibility: share of 1 fps samples with no face inside the crop (FlashHead 2.1.2).

Reason: ``face_missing`` when the share exceeds ``max_missing_face_share``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vividhead.config import bounded
from vividhead.curation.decoded_clip import DecodedClip, as_decoded
from vividhead.curation.records import Row
from vividhead.curation.stage import FrameStage, StageConfig
from vividhead.errors import MediaError
from vividhead.models.face_detector import FaceDetector, FaceDetectorStage
from vividhead.shard_format import FPS


@dataclass(frozen=True)
class FaceVisibilityConfig(StageConfig):
    """Face presence sampled at ``sample_fps`` inside the crop (FlashHead section 2.1.2)."""

    memory_gib: float = 2.0  # a decoded 50 s clip (1 GiB at 512x512) and the face detector

    weights_path: Optional[str] = None
    sample_fps: float = bounded(1.0, "> 0")
    min_confidence: float = 0.5
    max_missing_face_share: float = bounded(0.2, "in [0, 1]")


def missing_face_share(clip: DecodedClip | bytes | str, detector: FaceDetector, fps: float, sample_fps: float) -> float:
    """Share of sampled frames in which the detector finds no face.

    Args:
        clip: the decoded clip (or encoded bytes or a path; the 512x512 crop) at ``fps`` frames per second; detections are
            shared with the other frame stages (the face track detects every frame).
        sample_fps: samples per second (1 in the paper): frames 0, n, 2n, ... with ``n = fps / sample_fps``.

    Returns:
        Share in [0, 1].

    Raises:
        MediaError: ``decode_failed`` (also when no frame decodes).
    """
    clip = as_decoded(clip)
    every = max(1, int(round(fps / sample_fps)))
    faces = clip.detections(detector, range(0, len(clip), every))
    return sum(not f for f in faces.values()) / len(faces)


class FaceVisibilityStage(FaceDetectorStage, FrameStage):
    """Rejects clips where the face is missing from too many 1 fps samples."""

    name = "face_visibility"
    config_class = FaceVisibilityConfig
    writes_columns = ("missing_face_share",)

    def process_clip(self, row: Row, clip: DecodedClip) -> list[Row]:
        share = missing_face_share(clip, self._detector, FPS, self.cfg.sample_fps)
        row["missing_face_share"] = round(share, 4)
        if share > self.cfg.max_missing_face_share:
            raise MediaError("face_missing", f"no face in {share:.0%} of samples")
        return [row]

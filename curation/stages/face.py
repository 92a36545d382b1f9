"""face: one dominant face on the clip's first frame, and the square face-centred crop (FlashHead 2.1.2).

Runs on the source before the clip is encoded: it decodes the one frame the clip will start with
(:func:`vividhead.curation.media.frame_at`), picks the face and plans the crop; ``normalize``
applies the crop in the clip's one encode.

Reasons: ``no_face``, ``multiple_faces``, ``face_too_small``, ``crop_out_of_frame``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from vividhead.config import bounded
from vividhead.curation.media import frame_at
from vividhead.curation.records import Row
from vividhead.curation.stage import Stage, StageConfig
from vividhead.errors import MediaError
from vividhead.models.face_detector import FaceBox, FaceDetectorStage
from vividhead.shard_format import FPS


@dataclass(frozen=True)
class FaceConfig(StageConfig):
    """Face detection on the clip's first frame and the face-centred square crop (FlashHead section 2.1.2).

    Attributes:
        weights_path: explicit path of the MediaPipe ``FaceDetector`` model; else the registry.
        min_confidence: detector score threshold.
        min_face_px: smallest accepted face box side, in source pixels.
        dominance_ratio: a second face whose area is at least this share of the largest one makes
            the clip ``multiple_faces``.
        face_share: face box side / crop side.
        allow_pad: pad with black when the crop leaves the frame and cannot be shifted inside;
            otherwise such clips are rejected ``crop_out_of_frame``.
        max_pad_share: largest padding accepted, as a share of the crop side.
        timeout_s: limit for decoding the first frame, seconds.

    The output size and encoding settings are ``normalize``'s (the clip's one encode).
    """

    weights_path: Optional[str] = None
    min_confidence: float = bounded(0.5, "in (0, 1)")
    min_face_px: int = bounded(128, ">= 1")
    dominance_ratio: float = bounded(0.25, "in (0, 1]")
    face_share: float = bounded(0.6, "in (0, 1]")
    allow_pad: bool = True
    max_pad_share: float = bounded(0.1, "in [0, 0.5)")
    timeout_s: float = 120.0



@dataclass(frozen=True)
class CropBox:
    """A square crop in source pixels; may extend past the frame by ``pad_px`` (black padding).

    Attributes:
        x0, y0: top-left corner in pixels (may be negative when padded).
        size: side in pixels.
        pad_px: largest distance the square extends past the frame, in pixels.
    """

    x0: int
    y0: int
    size: int
    pad_px: int

    def as_list(self) -> list[int]:
        """``[x0, y0, x1, y1]`` in source pixels."""
        return [self.x0, self.y0, self.x0 + self.size, self.y0 + self.size]

    @classmethod
    def from_list(cls, box: list[int], pad_px: int) -> CropBox:
        """Inverse of :meth:`as_list` (the manifest's ``crop_box`` and ``pad_px``)."""
        return cls(int(box[0]), int(box[1]), int(box[2] - box[0]), int(pad_px))


def select_face(faces: list[FaceBox], cfg: FaceConfig) -> FaceBox:
    """The single dominant face.

    Args:
        faces: detections sorted by area, largest first.

    Raises:
        MediaError: ``no_face``; ``multiple_faces`` when a second face reaches
            ``cfg.dominance_ratio`` of the largest face's area; ``face_too_small`` under ``cfg.min_face_px``.
    """
    if not faces:
        raise MediaError("no_face", "no face on the first frame")
    main = faces[0]
    if len(faces) > 1 and faces[1].area >= cfg.dominance_ratio * main.area:
        raise MediaError("multiple_faces", f"{len(faces)} faces, second is {faces[1].area / main.area:.2f} of the first")
    if main.size < cfg.min_face_px:
        raise MediaError("face_too_small", f"face {main.size:.0f} px < {cfg.min_face_px} px")
    return main


def plan_crop(face: FaceBox, width: int, height: int, cfg: FaceConfig) -> CropBox:
    """A square of side ``face.size / face_share`` centred on the face.

    A square that leaves the frame is shifted back inside when it fits (the face stays inside it);
    a square larger than the frame is centred on it and padded, when ``cfg.allow_pad`` and the
    padding on each side is at most ``max_pad_share`` of its side.

    Args:
        width, height: frame size in pixels.

    Raises:
        MediaError: ``crop_out_of_frame``.
    """
    size = int(round(face.size / cfg.face_share))
    cx, cy = face.center
    x0, y0 = int(round(cx - size / 2)), int(round(cy - size / 2))
    # Inside the frame when it fits; else centred on the frame, which splits the padding evenly
    # and still holds the whole face (the face is inside the frame).
    x0 = min(max(x0, 0), width - size) if size <= width else (width - size) // 2
    y0 = min(max(y0, 0), height - size) if size <= height else (height - size) // 2
    pad = max(0, -x0, -y0, x0 + size - width, y0 + size - height)
    if pad and (not cfg.allow_pad or pad > cfg.max_pad_share * size):
        raise MediaError("crop_out_of_frame", f"crop {size} px needs {pad} px of padding in a {width}x{height} frame")
    return CropBox(x0, y0, size, pad)


class FaceStage(FaceDetectorStage, Stage):
    """Detects the face on the clip's first frame (from the source) and plans the crop that
    ``normalize`` applies; fills ``frame_size`` for it."""

    name = "face"
    config_class = FaceConfig
    writes_columns = ("num_faces", "face_px", "face_score", "crop_box", "pad_px")

    def process(self, row: Row) -> list[Row]:
        frame = frame_at(row["local_path"], row["start_s"], FPS, self.cfg.timeout_s)
        height, width = frame.shape[:2]
        row["frame_size"] = [width, height]
        faces = self._detector.detect(frame)
        row["num_faces"] = len(faces)
        face = select_face(faces, self.cfg)
        row.update(face_px=round(face.size, 2), face_score=round(face.score, 4))
        box = plan_crop(face, width, height, self.cfg)
        row.update(crop_box=box.as_list(), pad_px=box.pad_px)
        return [row]

"""Face tracks and crops of decoded frames, shared by Sync-C/Sync-D and the Light-ASD score.

The track and the crops are the curation filters' own (:func:`vividhead.curation.face_track.track_frames`
and :func:`~vividhead.curation.face_track.crop_frames`: detection in every frame, interpolation,
13-frame median smoothing, crop scale 0.4 with grey-110 padding, 224 x 224), so a generated video
is judged exactly as the curation judged its training clips.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vividhead.curation.face_track import FaceTrack, crop_frames, track_frames
from vividhead.curation.stages.asd import centre_112

#: Crop context around the face box (both reference evaluations use 0.4).
CROP_SCALE = 0.4
#: Fewest frames (share) with a detected face for a usable track.
MIN_FACE_SHARE = 0.5


@dataclass
class FaceCrops:
    """The face of one video along its smoothed track.

    Attributes:
        track: the smoothed track (one entry per frame).
        bgr224: uint8 [T, 224, 224, 3] BGR crops (SyncNet's input), or None when not asked for.
        gray112: uint8 [T, 112, 112] centre of the gray 224 crops (Light-ASD's input).
    """

    track: FaceTrack
    bgr224: np.ndarray | None
    gray112: np.ndarray


def face_crops(frames: np.ndarray, detector, crop_scale: float = CROP_SCALE,
               min_face_share: float = MIN_FACE_SHARE, keep_bgr: bool = True) -> FaceCrops:
    """Track the largest face over ``frames`` and cut the crops both lip-sync models read.

    Args:
        frames: uint8 [T, H, W, 3] RGB at 25 fps.
        detector: :class:`vividhead.models.face_detector.FaceDetector`.
        crop_scale: context around the box.
        min_face_share: fewest frames (share) that must have a face.
        keep_bgr: keep the 224 x 224 BGR crops (SyncNet); False keeps only the gray 112 x 112 ones
            (Light-ASD), 6x less memory on long videos.

    Returns:
        :class:`FaceCrops`.

    Raises:
        vividhead.curation.stage.MediaError: ``no_face_track`` (too few faces) or ``decode_failed``
            (no frame).
    """
    track = track_frames(frames, detector, min_face_share)
    bgr = crop_frames(frames, track, crop_scale, 224)
    gray = centre_112(np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in bgr]))
    return FaceCrops(track, bgr if keep_bgr else None, np.ascontiguousarray(gray))

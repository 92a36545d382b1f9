"""One clip decoded once, with what the frame stages derive from it computed once.

The frame stages (face visibility, transition, occlusion, SyncNet, Light-ASD, face masks) all look
at the frames of the same encoded clip. In one actor (:class:`vividhead.curation.frame_group.FrameGroup`)
they share one :class:`DecodedClip`: one decode of the clip, one face detection per frame (per
detector model and threshold), one smoothed face track and one set of 224 x 224 face crops, each
computed the first time a stage asks and reused by the next. A stage run on its own builds its own
:class:`DecodedClip` and gets exactly the same results.

Memory: the decoded frames are held as one uint8 array, ``T x H x W x 3`` bytes (0.79 MB a frame at
512 x 512, 39 MB a second at 25 fps, 0.98 GB for a 50 s clip); each stage's ``memory_gib`` accounts for it.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

import numpy as np

from vividhead.curation.face_track import FaceTrack, crop_frames, track_from_detections
from vividhead.curation.media import iter_frames
from vividhead.errors import MediaError

if TYPE_CHECKING:
    from vividhead.models.face_detector import FaceBox, FaceDetector


class DecodedClip:
    """A clip's media, decoded lazily and once.

    Args:
        video: encoded clip bytes or a file path (the pipeline's ``video_bytes``, 25 fps, 512 x 512
            after ``normalize``).
        audio: WAV bytes (``audio_bytes``, 16 kHz mono PCM16), or None.
    """

    def __init__(self, video: bytes | str | Path, audio: Optional[bytes] = None) -> None:
        self.video = video
        self.audio = audio
        self._gray: dict[int, np.ndarray] = {}
        self._detections: dict[tuple, dict[int, list[FaceBox]]] = {}
        self._crops: dict[tuple, np.ndarray] = {}

    @cached_property
    def frames(self) -> np.ndarray:
        """Every frame, uint8 [T, H, W, 3] RGB, in decode order.

        Raises:
            MediaError: ``decode_failed`` (also when no frame decodes).
        """
        frames = [f for _, f in iter_frames(self.video)]
        if not frames:
            raise MediaError("decode_failed", "no frame decoded")
        return np.stack(frames)

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the frames in pixels."""
        return self.frames.shape[1], self.frames.shape[2]

    def gray(self, size_px: int) -> np.ndarray:
        """Grayscale frames scaled to ``size_px`` square (area interpolation), uint8 [T, size_px, size_px]."""
        if size_px not in self._gray:
            import cv2

            self._gray[size_px] = np.stack([
                cv2.resize(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY), (size_px, size_px), interpolation=cv2.INTER_AREA)
                for f in self.frames
            ])
        return self._gray[size_px]

    @cached_property
    def pcm(self) -> tuple[np.ndarray, int]:
        """The audio as (int16 [N] mono samples, sample rate in Hz).

        Raises:
            MediaError: ``bad_audio`` (no audio, or unreadable WAV).
        """
        from vividhead.curation.audio_io import read_pcm16

        if not self.audio:
            raise MediaError("bad_audio", "the clip has no audio")
        return read_pcm16(self.audio)

    def detections(self, detector: FaceDetector, indices: Optional[Iterable[int]] = None) -> dict[int, list[FaceBox]]:
        """Faces per frame (largest first) for ``indices`` (default: every frame), each frame
        detected once per detector model and threshold (:attr:`FaceDetector.key`).

        Returns:
            ``{frame index: [FaceBox, ...]}`` for the requested indices.
        """
        seen = self._detections.setdefault(detector.key, {})
        wanted = range(len(self)) if indices is None else indices
        out = {}
        for i in wanted:
            if i not in seen:
                seen[i] = detector.detect(self.frames[i])
            out[i] = seen[i]
        return out

    def track(self, detector: FaceDetector, min_detected_share: float = 0.5) -> FaceTrack:
        """The smoothed face track over every frame (:func:`vividhead.curation.face_track.track_frames`'s
        method, on the shared per-frame detections).

        Raises:
            MediaError: ``no_face_track`` when fewer than ``min_detected_share`` of the frames have a face.
        """
        dets = self.detections(detector)
        return track_from_detections([dets[i] for i in range(len(self))], min_detected_share)

    def face_crops(self, detector: FaceDetector, crop_scale: float = 0.4, size: int = 224,
                   min_detected_share: float = 0.5) -> np.ndarray:
        """The references' face crops along :meth:`track`, uint8 [T, size, size, 3] BGR
        (:func:`vividhead.curation.face_track.crop_frames`).

        Raises:
            MediaError: ``no_face_track``.
        """
        track = self.track(detector, min_detected_share)
        key = (detector.key, crop_scale, size)
        if key not in self._crops:
            self._crops[key] = crop_frames(self.frames, track, crop_scale, size)
        return self._crops[key]

    def gray_face_crops(self, detector: FaceDetector, crop_scale: float = 0.4, size: int = 224,
                        min_detected_share: float = 0.5) -> np.ndarray:
        """:meth:`face_crops` in grayscale, uint8 [T, size, size]."""
        import cv2

        crops = self.face_crops(detector, crop_scale, size, min_detected_share)
        return np.stack([cv2.cvtColor(c, cv2.COLOR_BGR2GRAY) for c in crops])


def as_decoded(clip: DecodedClip | bytes | str | Path, audio: Optional[bytes] = None) -> DecodedClip:
    """``clip`` itself, or a new :class:`DecodedClip` of encoded bytes or a file path."""
    return clip if isinstance(clip, DecodedClip) else DecodedClip(clip, audio)


__all__ = ["DecodedClip", "as_decoded"]

"""asd: Light-ASD active-speaker score of the clip's face with the clip's audio.

Follows the authors' evaluation (``Junhua-Liao/Light-ASD`` ``Columbia_test.py``):

1. A smoothed face track over every frame, cropped with scale 0.4 and padding 110 to 224 x 224
   (:mod:`curation.face_track`), converted to gray, centre 112 x 112 kept.
2. 13 MFCCs at 100 Hz (:func:`curation.audio_io.mfcc_100hz`), trimmed to a multiple of 4;
   ``n = min(mfcc_steps // 4, frames)`` video frames are scored.
3. For each chunk length ``d`` in :data:`DURATIONS_S` seconds, the clip is cut into consecutive
   chunks of ``25 d`` frames (``100 d`` MFCC steps); each chunk runs through the audio and visual
   front-ends, the audio-visual BiGRU backend and the ``lossAV`` head; column 1 of the head is the
   per-frame speaking logit. The per-frame logits are averaged over the chunk lengths.
4. Clip score = mean per-frame logit (> 0 leans towards "this face is speaking this audio").

The authors round per-frame scores to 0.1 for display; that is not done here.
It is mainly a speaking-activity signal (does this face talk while speech is heard?) and only weakly
a lip-sync signal. Reason: ``not_speaking`` below ``min_asd_score``. Column: ``asd_score``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from curation import weights
from curation.audio_io import mfcc_100hz, read_pcm16
from curation.config import ASDConfig
from curation.face_detector import FaceDetector
from curation.face_track import detect_track, face_crops
from curation.models import stage_device
from curation.models.lightasd import LightASD, load_lightasd
from curation.records import Row
from curation.stage import MediaError, Stage

#: Chunk lengths (seconds) whose scores are averaged. The authors' script writes
#: ``{1,1,1,2,2,2,3,3,4,5,6}``, a Python set literal, which is {1, 2, 3, 4, 5, 6}.
DURATIONS_S = (1, 2, 3, 4, 5, 6)
FPS = 25
MFCC_HZ = 100


@dataclass(frozen=True)
class ASDScore:
    """Result of :func:`asd_scores`.

    Attributes:
        score: mean per-frame speaking logit (unitless; > 0 leans towards speaking).
        frame_logits: float32 [n] per-frame logits averaged over the chunk lengths.
    """

    score: float
    frame_logits: np.ndarray


@torch.no_grad()
def asd_scores(gray_faces: np.ndarray, mfcc: np.ndarray, model: LightASD, device: str = "cpu",
               durations_s: tuple[int, ...] = DURATIONS_S) -> ASDScore:
    """Per-frame and clip speaking scores (steps 2-4 of the module docstring).

    Args:
        gray_faces: [T, 112, 112] gray face crops at 25 fps, 0-255 (uint8 or float).
        mfcc: float [M, 13] MFCCs at 100 Hz aligned with frame 0.
        model: Light-ASD in eval mode on ``device``.
        durations_s: chunk lengths in seconds.

    Returns:
        :class:`ASDScore`.

    Raises:
        MediaError: ``too_short`` when no full video frame has audio.
    """
    n = min(len(mfcc) // 4, len(gray_faces))
    if n < 1:
        raise MediaError("too_short", "no video frame with audio")
    audio = torch.from_numpy(np.ascontiguousarray(mfcc[: 4 * n], dtype=np.float32))
    video = torch.from_numpy(np.ascontiguousarray(gray_faces[:n], dtype=np.float32))
    per_duration = []
    for d in durations_s:
        vlen, alen = d * FPS, d * MFCC_HZ
        full = n // vlen
        out = []
        if full:  # equal-length chunks run as one batch
            a = audio[: full * alen].reshape(full, alen, 13)
            v = video[: full * vlen].reshape(full, vlen, *video.shape[1:])
            out.append(model.speaking_logits(a.to(device), v.to(device)).float().cpu())
        if n % vlen:
            a = audio[full * alen :].unsqueeze(0)
            v = video[full * vlen :].unsqueeze(0)
            out.append(model.speaking_logits(a.to(device), v.to(device)).float().cpu())
        per_duration.append(torch.cat(out))
    logits = torch.stack(per_duration).mean(0).numpy()
    return ASDScore(float(logits.mean()), logits)


def centre_112(faces224: np.ndarray) -> np.ndarray:
    """Centre 112 x 112 of 224 x 224 gray crops: ``[T, 224, 224] -> [T, 112, 112]`` (same dtype)."""
    return faces224[:, 56:168, 56:168]


def score_asd(video: bytes, audio: bytes, model: LightASD, detector: FaceDetector, cfg: ASDConfig,
              device: str = "cpu") -> ASDScore:
    """Decode a clip, track and crop the face, and score it with Light-ASD.

    Args:
        video: encoded clip at 25 fps (the pipeline's face-centred 512x512 crop).
        audio: WAV bytes, 16 kHz mono PCM16 aligned with the video.

    Raises:
        MediaError: ``decode_failed``, ``bad_audio``, ``no_face_track``, ``too_short``.
    """
    pcm, sr = read_pcm16(audio)
    if sr != 16000:
        raise MediaError("bad_audio", f"expected 16 kHz audio, got {sr} Hz")
    track = detect_track(video, detector, cfg.min_face_share)
    faces = centre_112(face_crops(video, track, cfg.crop_scale, 224, gray=True))
    return asd_scores(faces, mfcc_100hz(pcm, sr), model, device)


class ASDStage(Stage):
    """Records ``asd_score`` and rejects clips whose face does not look like the speaker."""

    name = "asd"

    def __init__(self, cfg: ASDConfig) -> None:
        super().__init__(cfg)
        self._model: Optional[LightASD] = None
        self._detector: Optional[FaceDetector] = None
        self._device = "cpu"

    def weights(self):
        return [(self.cfg.weights, self.cfg.weights_path), ("face_mediapipe_detector", self.cfg.detector_weights_path)]

    def setup(self) -> None:
        self._device = stage_device(self.cfg.num_gpus, self.name)
        self._model = load_lightasd(weights.resolve(self.cfg.weights, self.cfg.weights_path), self._device)
        det_path = weights.resolve("face_mediapipe_detector", self.cfg.detector_weights_path)
        self._detector = FaceDetector(det_path, self.cfg.min_confidence)

    def process(self, row: Row) -> list[Row]:
        s = score_asd(row["video_bytes"], row["audio_bytes"], self._model, self._detector, self.cfg, self._device)
        row["asd_score"] = round(s.score, 4)
        if self.cfg.min_asd_score is not None and s.score < self.cfg.min_asd_score:
            raise MediaError("not_speaking", f"ASD score {s.score:.2f} < {self.cfg.min_asd_score:g}")
        return [row]

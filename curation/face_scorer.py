"""What the two face-track scorers (``asd``: Light-ASD, ``syncnet``: SyncNet) share: the config of
their model and face track (:class:`FaceScorerConfig`) and the model-plus-detector set-up of their
stages (:class:`FaceScorerStage`). The face track and its crops are :mod:`vividhead.curation.face_track`.

Both scorers' modules import torch (0.9 CPU-s) only when a function that needs it runs
(:func:`no_grad` for the decorated ones), so the stage list imports them without torch.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar

import numpy as np

from vividhead import weights
from vividhead.config import bounded
from vividhead.curation.decoded_clip import DecodedClip, as_decoded
from vividhead.curation.stage import StageConfig
from vividhead.errors import MediaError
from vividhead.models.face_detector import WEIGHTS_NAME as FACE_WEIGHTS
from vividhead.models.face_detector import FaceDetector
from vividhead.shard_format import SAMPLE_RATE_HZ


@dataclass(frozen=True)
class FaceScorerConfig(StageConfig):
    """Fields of a face-track scorer's config (the stage's own fields follow).

    Attributes:
        weights_path: explicit path of the scoring model's checkpoint; else the registry.
        detector_weights_path: explicit path of the MediaPipe face detector; else the registry.
        min_confidence: face detector score threshold for the face track.
        min_face_share: reject ``no_face_track`` when fewer frames (share) have a face.
        crop_scale: face crop context around the box (0.4 in both references).
    """

    weights_path: Optional[str] = None
    detector_weights_path: Optional[str] = None
    min_confidence: float = bounded(0.5, "in (0, 1)")
    min_face_share: float = bounded(0.5, "in [0, 1]")
    crop_scale: float = bounded(0.4, ">= 0")


_Fn = TypeVar("_Fn", bound=Callable[..., Any])


def no_grad(fn: _Fn) -> _Fn:
    """``@torch.no_grad()`` with torch imported at the first call instead of at the decorated
    function's definition (the module stays importable without loading torch)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def clip_and_pcm(clip: DecodedClip | bytes, audio: Optional[bytes]) -> tuple[DecodedClip, np.ndarray]:
    """The decoded clip (decoded here when given as bytes) and its audio at the contract's rate.

    Args:
        clip: a decoded clip or encoded clip bytes.
        audio: WAV bytes aligned with the video (None: the clip's own track).

    Raises:
        MediaError: ``decode_failed``; ``bad_audio`` when the audio is not at
            :data:`~vividhead.shard_format.SAMPLE_RATE_HZ`.
    """
    clip = as_decoded(clip, audio)
    pcm, sr = clip.pcm
    if sr != SAMPLE_RATE_HZ:
        raise MediaError("bad_audio", f"expected {SAMPLE_RATE_HZ} Hz audio, got {sr} Hz")
    return clip, pcm


class FaceScorerStage:
    """Stage mixin for a frame stage that scores the face track with one model (list it before
    :class:`~vividhead.curation.stage.FrameStage`).

    The stage gives :meth:`model_weights` (the model's registry name) and :meth:`load_model`; the
    mixin gives ``weights``, ``setup`` (``self._model``, ``self._detector`` and ``self._device``
    afterwards) and those ``resources``, which the stage base class's ``teardown`` releases.
    """

    resources = {"_model": None, "_detector": None, "_device": "cpu"}

    def model_weights(self) -> str:  # pragma: no cover - interface
        """Registry name of the scoring model's checkpoint."""
        raise NotImplementedError

    def load_model(self, path: Path, device: str) -> Any:  # pragma: no cover - interface
        """The scoring model from its checkpoint at ``path``, on ``device``, in eval mode."""
        raise NotImplementedError

    def weights(self):
        return [(self.model_weights(), self.cfg.weights_path), (FACE_WEIGHTS, self.cfg.detector_weights_path)]

    def setup(self) -> None:
        self._device = self.device()
        self._model = self.load_model(weights.resolve(self.model_weights(), self.cfg.weights_path), self._device)
        self._detector = FaceDetector.load(self.cfg.detector_weights_path, self.cfg.min_confidence)

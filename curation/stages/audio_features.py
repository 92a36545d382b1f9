"""audio_features: Wav2Vec 2.0 multi-layer features at the video frame rate (annotation, FlashHead 2.1.2).

The clip's 16 kHz audio is encoded with a transformers ``Wav2Vec2Model`` (default
``facebook/wav2vec2-base-960h``, as the public FlashHead code uses) exactly as the model side does
(:class:`vividhead.models.audio_encoder.Wav2VecFeatures`): the 50 Hz CNN features are linearly
interpolated to the clip's T video frames before the transformer, so row t of every layer belongs to
video frame t. The outputs of all transformer layers are stacked and stored as float16 ``[T, L, D]``
(``L = 12``, ``D = 768`` for wav2vec2-base) in the sample member ``<key>.wav2vec.npy``, which
:mod:`vividhead.training.data` reads.

The stage never rejects: when the audio cannot be read or encoded, no member is written and
``annotation_errors["audio_features"]`` holds the reason.

Source: Baevski et al., "wav2vec 2.0" (NeurIPS 2020); SoulX-FlashHead ``audio_analysis/wav2vec2.py``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from vividhead import weights
from vividhead.curation.audio_io import read_pcm16
from vividhead.curation.records import Row, add_member, note_annotation_error
from vividhead.curation.stage import Stage, StageConfig
from vividhead.errors import MediaError
from vividhead.shard_format import FPS


@dataclass(frozen=True)
class AudioFeaturesConfig(StageConfig):
    """Wav2Vec 2.0 multi-layer features at the video frame rate (annotation, never rejects).

    Attributes:
        weights: registry name of the transformers model folder (``wav2vec2_base_960h``).
        weights_path: a local transformers folder (``save_pretrained`` layout) used instead.
        normalize: zero-mean / unit-variance the waveform first (wav2vec2-base-960h's extractor).
    """

    memory_gib: float = 2.0  # wav2vec2-base (0.4 GiB) and its activations on a 50 s clip

    weights: str = "wav2vec2_base_960h"
    weights_path: Optional[str] = None
    normalize: bool = True


MEMBER = "wav2vec.npy"


def load_wav2vec(path: str | Path, normalize: bool = True, device: str = "cpu"):
    """Load a local transformers Wav2Vec 2.0 folder as frame-rate features.

    Args:
        path: folder in the ``save_pretrained`` layout (``config.json`` + weights); a
            ``Wav2Vec2ForCTC`` checkpoint such as wav2vec2-base-960h loads too (its head is dropped).
        device: torch device.

    Returns:
        :class:`vividhead.models.audio_encoder.Wav2VecFeatures` in eval mode.

    Raises:
        OSError: no model in ``path``. ValueError: a stable-layer-norm (large) model.
    """
    from transformers import Wav2Vec2Model

    from vividhead.models.audio_encoder import Wav2VecFeatures

    model = Wav2Vec2Model.from_pretrained(str(path), local_files_only=True)
    return Wav2VecFeatures(model, normalize=normalize).eval().requires_grad_(False).to(device)


def wav2vec_features(audio: np.ndarray, num_frames: int, encoder, device: str = "cpu") -> np.ndarray:
    """Encode a clip's waveform to per-video-frame multi-layer features.

    Args:
        audio: int16 or float [N] mono waveform at 16 kHz (N = 640 * num_frames at 25 fps).
        num_frames: video frames T of the clip.
        encoder: :func:`load_wav2vec` result.

    Returns:
        float16 [T, L, D].

    Raises:
        MediaError: ``audio_too_short`` when the audio is shorter than one CNN receptive field
            (400 samples, 25 ms).
    """
    import torch

    wave = audio.astype(np.float32)
    if audio.dtype == np.int16:
        wave /= 32768.0
    if len(wave) < 400 or num_frames < 1:
        raise MediaError("audio_too_short", f"{len(wave)} samples for {num_frames} frames")
    with torch.inference_mode():
        feats = encoder(torch.from_numpy(wave)[None].to(device), num_frames)  # [1, T, L, D]
    return feats[0].to(torch.float16).cpu().numpy()


def npy_bytes(array: np.ndarray) -> bytes:
    """``numpy.save`` of ``array`` to bytes (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


class AudioFeaturesStage(Stage):
    """Attaches ``<key>.wav2vec.npy`` (float16 [T, L, D]) to each kept clip; never rejects."""

    name = "audio_features"
    config_class = AudioFeaturesConfig
    writes_columns = ("annotation_errors",)
    resources = {"_encoder": None, "_device": "cpu"}

    def weights(self):
        """The configured Wav2Vec 2.0 registry entry (a Hub folder) or explicit folder."""
        return [(self.cfg.weights, self.cfg.weights_path)]

    def setup(self) -> None:
        """Load the encoder once (CUDA when ``num_gpus > 0``, else CPU)."""
        self._device = self.device()
        path = weights.resolve(self.cfg.weights, self.cfg.weights_path)
        self._encoder = load_wav2vec(path, self.cfg.normalize, self._device)

    def process(self, row: Row) -> list[Row]:
        """Attach ``wav2vec.npy``; failures go to ``annotation_errors``."""
        try:
            audio, sr = read_pcm16(row["audio_bytes"])
            num_frames = row.get("num_frames") or int(round(len(audio) * FPS / sr))
            if sr != 16000:
                raise MediaError("bad_sample_rate", f"{sr} Hz, wav2vec 2.0 needs 16000")
            feats = wav2vec_features(audio, int(num_frames), self._encoder, self._device)
        except MediaError as exc:
            note_annotation_error(row, self.name, exc.reason)
            return [row]
        add_member(row, MEMBER, npy_bytes(feats))
        return [row]

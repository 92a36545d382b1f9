"""speech: share of the clip that Silero VAD marks as speech (speech-presence gate).

Silero VAD (snakers4/silero-vad, MIT) scores 32 ms windows (512 samples at 16 kHz);
``silero_vad.get_speech_timestamps`` turns the probabilities into speech segments (threshold,
minimum speech and silence durations, padding). The share is the total segment length over the
clip length. The model ships inside the ``silero-vad`` package, so the stage runs offline.

Reason: ``no_speech`` when the share is below ``min_speech_share``. Column: ``speech_share``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from vividhead.config import bounded
from vividhead.curation.audio_io import read_pcm16
from vividhead.curation.records import Row
from vividhead.curation.stage import Stage, StageConfig
from vividhead.errors import MediaError


@dataclass(frozen=True)
class SpeechConfig(StageConfig):
    """Speech presence from Silero VAD (snakers4/silero-vad): share of the clip that is speech.

    Attributes:
        weights_path: a Silero VAD ONNX file (e.g. ``vad_silero_v5.onnx``) run with onnxruntime;
            ``None`` uses the model shipped inside the ``silero-vad`` package (TorchScript).
        threshold: speech probability threshold per 32 ms window (``get_speech_timestamps``).
        min_speech_duration_ms / min_silence_duration_ms / speech_pad_ms: segment post-processing
            of ``silero_vad.get_speech_timestamps`` (its defaults).
        min_speech_share: reject ``no_speech`` below this share of the clip (0-1); ``None`` = off.
    """

    memory_gib: float = 1.0  # Silero VAD and a 50 s clip's audio

    weights_path: Optional[str] = None
    threshold: float = bounded(0.5, "in (0, 1)")
    min_speech_duration_ms: int = bounded(250, ">= 0")
    min_silence_duration_ms: int = bounded(100, ">= 0")
    speech_pad_ms: int = bounded(30, ">= 0")
    min_speech_share: Optional[float] = bounded(0.5, "in [0, 1] or null")


#: Silero VAD's native sample rate here (it also supports 8 kHz).
VAD_SAMPLE_RATE = 16000


def load_vad(weights_path: Optional[str] = None, device: str = "cpu") -> Any:
    """Load Silero VAD.

    Args:
        weights_path: a Silero VAD ONNX file run with onnxruntime (CPU); ``None`` loads the
            TorchScript model shipped in the ``silero-vad`` package (on ``device``).

    Returns:
        A callable model accepted by ``silero_vad.get_speech_timestamps``.
    """
    if weights_path:
        from silero_vad.utils_vad import OnnxWrapper

        return OnnxWrapper(str(weights_path), force_onnx_cpu=True)
    from silero_vad import load_silero_vad

    return load_silero_vad(onnx=False).to(device)


def speech_share(pcm: np.ndarray, sample_rate: int, model: Any, cfg: SpeechConfig, device: str = "cpu") -> float:
    """Share of the audio covered by Silero VAD speech segments.

    Args:
        pcm: int16 [N] mono samples (or float32 in [-1, 1]).
        sample_rate: Hz; must be 16000 (the pipeline's rate).
        model: from :func:`load_vad`.
        cfg: thresholds and segment post-processing.

    Returns:
        Share in [0, 1] (0 for empty audio).

    Raises:
        ValueError: ``sample_rate`` is not 16000.
    """
    import torch
    from silero_vad import get_speech_timestamps

    if sample_rate != VAD_SAMPLE_RATE:
        raise ValueError(f"speech_share expects {VAD_SAMPLE_RATE} Hz audio, got {sample_rate}")
    if len(pcm) == 0:
        return 0.0
    audio = np.asarray(pcm)
    wav = torch.from_numpy(audio.astype(np.float32) / 32768.0 if audio.dtype == np.int16 else audio.astype(np.float32))
    with torch.no_grad():
        segments = get_speech_timestamps(
            wav.to(device),
            model,
            threshold=cfg.threshold,
            sampling_rate=sample_rate,
            min_speech_duration_ms=cfg.min_speech_duration_ms,
            min_silence_duration_ms=cfg.min_silence_duration_ms,
            speech_pad_ms=cfg.speech_pad_ms,
        )
    covered = sum(min(s["end"], len(audio)) - max(s["start"], 0) for s in segments)
    return float(min(1.0, covered / len(audio)))


class SpeechStage(Stage):
    """Rejects clips with too little speech; records ``speech_share``."""

    name = "speech"
    config_class = SpeechConfig
    writes_columns = ("speech_share",)
    resources = {"_model": None, "_device": "cpu"}

    def setup(self) -> None:
        device = self.device()
        # The ONNX path runs on CPU; the TorchScript model moves to the actor's GPU when it has one.
        self._device = "cpu" if self.cfg.weights_path else device
        self._model = load_vad(self.cfg.weights_path, self._device)

    def process(self, row: Row) -> list[Row]:
        pcm, sr = read_pcm16(row["audio_bytes"])
        share = speech_share(pcm, sr, self._model, self.cfg, self._device)
        row["speech_share"] = round(share, 4)
        if self.cfg.min_speech_share is not None and share < self.cfg.min_speech_share:
            raise MediaError("no_speech", f"speech in {share:.0%} of the clip")
        return [row]

"""Audio helpers shared by the lip-sync, active-speaker and speech stages.

The clip audio is the ``normalize`` stage's WAV: PCM s16 mono at 16 kHz, exactly 640 samples per
video frame at 25 fps.
"""

from __future__ import annotations

import io

import numpy as np
import soundfile as sf

from vividhead.errors import MediaError


def read_pcm16(audio: bytes) -> tuple[np.ndarray, int]:
    """Decode WAV bytes.

    Returns:
        (samples int16 [N] (the first channel when there are several), sample rate in Hz).

    Raises:
        MediaError: ``decode_failed`` when the bytes are not a readable audio file.
    """
    try:
        samples, sr = sf.read(io.BytesIO(audio), dtype="int16", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise MediaError("decode_failed", f"audio: {exc}"[:300]) from exc
    return samples[:, 0], int(sr)


def mfcc_100hz(pcm: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """13 MFCCs every 10 ms over 25 ms windows, as both reference evaluations compute them.

    ``python_speech_features.mfcc`` with its defaults (26 mel filters, 512-point FFT, pre-emphasis
    0.97, cepstral lifter 22, c0 replaced by the log frame energy), on the raw int16 sample values
    (the references read WAVs with ``scipy.io.wavfile``, so the scale matters).

    Args:
        pcm: int16 (or float with int16 scale) [N] mono samples.
        sample_rate: Hz.

    Returns:
        float64 [M, 13] with ``M = 1 + ceil((N - 0.025 sr) / (0.01 sr))`` (``4 * frames - 1`` for
        640-sample video frames).

    Raises:
        ImportError: ``python_speech_features`` is not installed.
    """
    import python_speech_features

    return python_speech_features.mfcc(np.asarray(pcm), sample_rate, winlen=0.025, winstep=0.01, numcep=13)

"""Light-ASD score per video, with the curation's Light-ASD code (one copy).

The authors' evaluation (``Junhua-Liao/Light-ASD`` ``Columbia_test.py``), as the ``asd`` curation
stage runs it (:mod:`vividhead.curation.stages.asd`): gray 112 x 112 face crops, 13 MFCCs at
100 Hz, chunk lengths 1-6 s, per-frame speaking logits of the audio-visual head averaged over the
chunk lengths; the video's score is the mean logit (> 0 leans towards "this face speaks this
audio"). Mainly a speaking-activity signal and only weakly a lip-sync one, but the one audio-visual
metric whose real weights are available here (``asd_lightasd_finetuning_TalkSet.model``).
"""

from __future__ import annotations

import numpy as np
import torch

from vividhead.curation.audio_io import mfcc_100hz
from vividhead.curation.stages.asd import DURATIONS_S, ASDScore, asd_scores, visual_embeddings
from vividhead.evaluation.frames import SAMPLE_RATE, to_pcm16


def asd_visual(gray112: np.ndarray, model, device: str = "cpu",
               durations_s: tuple[int, ...] = DURATIONS_S) -> dict[int, torch.Tensor]:
    """The visual half of the score (the expensive half; reusable across audio tracks).

    Args:
        gray112: uint8 [T, 112, 112] gray face crops at 25 fps.
        model: :class:`vividhead.curation.models.lightasd.LightASD` in eval mode on ``device``.

    Returns:
        ``{chunk length s: float32 [T, 128]}``.
    """
    return visual_embeddings(gray112, model, device, durations_s)


def asd_metric(visual: dict[int, torch.Tensor], audio: np.ndarray, model, device: str = "cpu") -> ASDScore:
    """Light-ASD score of a face (its :func:`asd_visual`) with an audio track.

    Args:
        audio: float32 [S] mono in [-1, 1] at 16 kHz, aligned with frame 0.

    Returns:
        :class:`vividhead.curation.stages.asd.ASDScore` (``score`` and float32 ``frame_logits`` [n],
        ``n = min(frames, MFCC steps // 4)``).

    Raises:
        vividhead.curation.stage.MediaError: ``too_short`` (no frame with audio).
    """
    return asd_scores(visual, mfcc_100hz(to_pcm16(audio), SAMPLE_RATE), model, device)

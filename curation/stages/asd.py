"""asd: Light-ASD active-speaker score of the clip's face with the clip's audio.

Follows the authors' evaluation (``Junhua-Liao/Light-ASD`` ``Columbia_test.py``):

1. A smoothed face track over every frame, cropped with scale 0.4 and padding 110 to 224 x 224
   (:mod:`vividhead.curation.face_track`), converted to gray, centre 112 x 112 kept.
2. 13 MFCCs at 100 Hz (:func:`vividhead.curation.audio_io.mfcc_100hz`), trimmed to a multiple of 4;
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
from typing import TYPE_CHECKING, Literal, Optional, Sequence

import numpy as np

from vividhead.curation.audio_io import mfcc_100hz
from vividhead.curation.decoded_clip import DecodedClip
from vividhead.curation.face_scorer import FaceScorerConfig, FaceScorerStage, clip_and_pcm, no_grad
from vividhead.curation.records import Row
from vividhead.curation.stage import FrameStage, check
from vividhead.errors import MediaError
from vividhead.models.face_detector import FaceDetector
from vividhead.shard_format import FPS, SAMPLE_RATE_HZ

if TYPE_CHECKING:  # torch and the model load in the functions that run them (importing this module is cheap)
    import torch

    from vividhead.curation.models.lightasd import LightASD


@dataclass(frozen=True)
class ASDConfig(FaceScorerConfig):
    """Light-ASD active-speaker score (Liao et al., CVPR 2023): mean per-frame speaking logit.

    Mainly a speaking-activity signal, only weakly a lip-sync signal. The face-track fields
    (``weights_path``: explicit checkpoint path, overriding the registry lookup of ``weights``;
    ``detector_weights_path``, ``min_confidence``, ``min_face_share``, ``crop_scale``) are
    :class:`~vividhead.curation.face_scorer.FaceScorerConfig`'s.

    Attributes:
        weights: registry name of the checkpoint: ``lightasd_ava`` (AVA-ActiveSpeaker pre-training,
            default) or ``lightasd_talkset`` (TalkSet fine-tuning).
        durations_s: chunk lengths (seconds) whose per-frame scores are averaged. The authors'
            evaluation uses 1-6 (:data:`DURATIONS_S`, what ``vividhead eval`` reports); the filter
            defaults to 2, 4 and 6 (the visual front-end runs once per clip plus 12-frame windows at
            each chunk edge, so fewer lengths cost less): scores within 0.12 of 1-6 on the fixtures,
            same decisions, 2.3x cheaper (``benchmarks/asd_defaults.py``, docs/filters.md).
        precision: ``fp32``; ``bf16`` to run the model under ``torch.autocast`` bfloat16 (2.4x
            faster on a CPU with AVX512-BF16; scores move by up to 0.012 on the fixtures); ``auto``
            (default): bf16 on CPUs with native bf16 (oneDNN), fp32 elsewhere and on CUDA (the small
            model is launch-bound there: 5.5 ms per video-second in fp32, 6.0 in bf16, on an H200).
        min_asd_score: reject ``not_speaking`` below this mean logit; ``None`` = off. The default
            (-2.0) sits between talking clips with their own audio (-1.2 to 1.3 on the fixtures)
            and the same clips with silent audio (-4.1 to -3.2); see docs/filters.md.
    """

    memory_gib: float = 3.5  # a decoded 50 s clip (1 GiB), its 224 px face crops (0.2 GiB), Light-ASD activations (Ray measured 2.2 GiB on a 20 s clip)

    weights: Literal["lightasd_ava", "lightasd_talkset"] = "lightasd_ava"
    durations_s: tuple = (2, 4, 6)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    min_asd_score: Optional[float] = -2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "durations_s", tuple(self.durations_s) if isinstance(self.durations_s, (list, tuple)) else self.durations_s)

    def validate(self, section: str) -> None:
        check(self.precision in ("auto", "fp32", "bf16"), f"{section}.precision", "must be auto, fp32 or bf16")
        check(
            isinstance(self.durations_s, tuple) and len(self.durations_s) > 0
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in self.durations_s),
            f"{section}.durations_s", "must be a non-empty list of whole seconds >= 1",
        )


#: Chunk lengths (seconds) whose scores are averaged. The authors' script writes
#: ``{1,1,1,2,2,2,3,3,4,5,6}``, a Python set literal, which is {1, 2, 3, 4, 5, 6}.
DURATIONS_S = (1, 2, 3, 4, 5, 6)


@dataclass(frozen=True)
class ASDScore:
    """Result of :func:`asd_scores`.

    Attributes:
        score: mean per-frame speaking logit (unitless; > 0 leans towards speaking).
        frame_logits: float32 [n] per-frame logits averaged over the chunk lengths.
    """

    score: float
    frame_logits: np.ndarray


def _chunks(n: int, d: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` frame ranges of ``25 d`` frames covering ``n`` frames."""
    step = d * FPS
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def _run_chunks(n: int, d: int, fn) -> torch.Tensor:
    """Apply ``fn(start, stop, count)`` to equal-length chunks as one batch and to the remainder."""
    import torch

    chunks = _chunks(n, d)
    full = [c for c in chunks if c[1] - c[0] == d * FPS]
    out = []
    if full:
        out.append(fn(0, full[-1][1], len(full)))
    if len(full) < len(chunks):
        start, stop = chunks[-1]
        out.append(fn(start, stop, 1))
    return torch.cat(out)


#: Temporal reach of the visual front-end on each side, in frames: three blocks whose widest
#: temporal convolution has 5 taps (+/- 2 frames each).
VISUAL_REACH = 6


@no_grad
def visual_embeddings(gray_faces: np.ndarray, model: LightASD, device: str = "cpu",
                      durations_s: Sequence[int] = DURATIONS_S, exact_chunks: bool = False,
                      segment_frames: int = 150, batch_windows: int = 32) -> dict[int, torch.Tensor]:
    """Visual front-end outputs per chunk length (the expensive half; reusable across audio tracks).

    In the authors' evaluation each chunk runs through the visual encoder on its own, so the
    temporal convolutions are zero-padded at chunk edges. A frame more than :data:`VISUAL_REACH`
    frames away from its chunk's edges therefore gets the same embedding as in one pass over the
    whole clip; only the 6 frames on each side of an inner chunk boundary differ. This computes one
    whole-clip pass plus a 12-frame window per chunk edge instead of one pass per chunk length
    (about 2x cheaper for the six lengths; same values up to float rounding, see the tests).

    Args:
        gray_faces: [T, 112, 112] gray face crops at 25 fps, 0-255 (uint8 or float).
        model: Light-ASD in eval mode on ``device``.
        durations_s: chunk lengths in seconds.
        exact_chunks: run every chunk separately instead (the reference computation).
        segment_frames: the whole-clip pass runs in segments of this many frames, each with
            :data:`VISUAL_REACH` frames of context on both sides (exact; bounds memory on long clips).
        batch_windows: 12-frame edge windows per forward pass.

    Returns:
        ``{d: float32 [T, 128]}`` per-frame visual embeddings as the chunked evaluation sees them,
        on ``device``.
    """
    import torch

    video = torch.from_numpy(np.ascontiguousarray(gray_faces, dtype=np.float32))
    n = len(video)

    def encode(start: int, stop: int, count: int) -> torch.Tensor:
        v = video[start:stop].reshape(count, (stop - start) // count, *video.shape[1:]).to(device)
        return model.visual_frontend(v).reshape(-1, 128)

    if exact_chunks:
        return {d: _run_chunks(n, d, encode) for d in durations_s}
    r = VISUAL_REACH
    parts = []
    for a in range(0, n, segment_frames):  # whole-clip pass, segment by segment with context
        b = min(n, a + segment_frames)
        lo, hi = max(0, a - r), min(n, b + r)
        parts.append(encode(lo, hi, 1)[a - lo : b - lo])
    whole = torch.cat(parts)
    # Patches: (duration, window start, window stop, keep start, keep stop), frame indices.
    patches: list[tuple[int, int, int, int, int]] = []
    for d in durations_s:
        for s, e in _chunks(n, d):
            if s == 0 and e == n:
                continue  # one chunk: the whole-clip pass is exact
            if e - s <= 4 * r:
                patches.append((d, s, e, s, e))
                continue
            if s > 0:
                patches.append((d, s, s + 2 * r, s, s + r))
            if e < n:
                patches.append((d, e - 2 * r, e, e - r, e))
    out = {d: whole.clone() for d in durations_s}
    windows = [p for p in patches if p[2] - p[1] == 2 * r]
    for i in range(0, len(windows), batch_windows):  # 12-frame windows in batches: [K, 12, 112, 112] -> [K, 12, 128]
        group = windows[i : i + batch_windows]
        emb = model.visual_frontend(torch.stack([video[a:b] for _, a, b, _, _ in group]).to(device))
        for (d, a, _, k0, k1), x in zip(group, emb):
            out[d][k0:k1] = x[k0 - a : k1 - a]
    for d, a, b, k0, k1 in (p for p in patches if p[2] - p[1] != 2 * r):
        out[d][k0:k1] = encode(a, b, 1)[k0 - a : k1 - a]
    return out


@no_grad
def asd_scores(visual: dict[int, torch.Tensor], mfcc: np.ndarray, model: LightASD, device: str = "cpu") -> ASDScore:
    """Per-frame and clip speaking scores (steps 2-4 of the module docstring).

    Args:
        visual: :func:`visual_embeddings` of the clip's face crops.
        mfcc: float [M, 13] MFCCs at 100 Hz aligned with frame 0.
        model: Light-ASD in eval mode on ``device``.

    Returns:
        :class:`ASDScore` over ``n = min(M // 4, T)`` frames.

    Raises:
        MediaError: ``too_short`` when no full video frame has audio.
    """
    import torch

    t = len(next(iter(visual.values())))
    n = min(len(mfcc) // 4, t)
    if n < 1:
        raise MediaError("too_short", "no video frame with audio")
    audio = torch.from_numpy(np.ascontiguousarray(mfcc[: 4 * n], dtype=np.float32))
    per_duration = []
    for d, vis in visual.items():
        def fn(start: int, stop: int, count: int, vis: torch.Tensor = vis) -> torch.Tensor:
            a = audio[4 * start : 4 * stop].reshape(count, 4 * (stop - start) // count, 13).to(device)
            v = vis[start:stop].reshape(count, (stop - start) // count, 128)
            return model.backend_logits(a, v).float().cpu()

        per_duration.append(_run_chunks(n, d, fn))
    logits = torch.stack(per_duration).mean(0).numpy()
    return ASDScore(float(logits.mean()), logits)


def centre_112(faces224: np.ndarray) -> np.ndarray:
    """Centre 112 x 112 of 224 x 224 gray crops: ``[T, 224, 224] -> [T, 112, 112]`` (same dtype)."""
    return faces224[:, 56:168, 56:168]


def use_bf16(precision: str, device: str) -> bool:
    """Whether ``precision`` (``auto``/``fp32``/``bf16``) runs bfloat16 on ``device``: ``auto`` means
    a CPU whose oneDNN has native bf16 kernels (AVX512-BF16 or AMX); elsewhere bf16 convs are
    emulated and slower than fp32, and on CUDA bf16 gains nothing for this small model."""
    if precision != "auto":
        return precision == "bf16"
    if device.startswith("cuda"):
        return False
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def score_asd(clip: DecodedClip | bytes, audio: Optional[bytes], model: LightASD, detector: FaceDetector,
              cfg: ASDConfig, device: str = "cpu") -> ASDScore:
    """Track and crop the face of a clip and score it with Light-ASD.

    Args:
        clip: the decoded clip (face track and crops shared with the other frame stages), or
            encoded clip bytes at 25 fps (the pipeline's face-centred 512x512 crop).
        audio: WAV bytes, 16 kHz mono PCM16 aligned with the video (None: the clip's own).

    Raises:
        MediaError: ``decode_failed``, ``bad_audio``, ``no_face_track``, ``too_short``.
    """
    import torch

    clip, pcm = clip_and_pcm(clip, audio)
    faces = centre_112(clip.gray_face_crops(detector, cfg.crop_scale, 224, cfg.min_face_share))
    with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=use_bf16(cfg.precision, device)):
        return asd_scores(visual_embeddings(faces, model, device, cfg.durations_s), mfcc_100hz(pcm, SAMPLE_RATE_HZ), model, device)


class ASDStage(FaceScorerStage, FrameStage):
    """Records ``asd_score`` and rejects clips whose face does not look like the speaker."""

    name = "asd"
    config_class = ASDConfig
    writes_columns = ("asd_score",)

    def model_weights(self) -> str:
        return self.cfg.weights

    def load_model(self, path, device: str) -> LightASD:
        from vividhead.curation.models.lightasd import load_lightasd

        return load_lightasd(path, device)

    def process_clip(self, row: Row, clip: DecodedClip) -> list[Row]:
        s = score_asd(clip, None, self._model, self._detector, self.cfg, self._device)
        row["asd_score"] = round(s.score, 4)
        if self.cfg.min_asd_score is not None and s.score < self.cfg.min_asd_score:
            raise MediaError("not_speaking", f"ASD score {s.score:.2f} < {self.cfg.min_asd_score:g}")
        return [row]

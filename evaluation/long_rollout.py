"""Long-horizon check of a streaming generator: ``vividhead eval rollout`` (also ``vividhead train rollout``).

FlashHead (§1, §4) and LiveTalk (§3.1, Fig. 4) both claim infinite streaming without collapse.
This rolls an exported generator out for N chunks on a long audio with the serving path itself
(:class:`vividhead.inference.pipeline.StreamingSession`: re-encoded motion frames, colour
correction, the shared 4-step sampler) and measures drift per chunk with
:func:`vividhead.evaluation.drift.drift_metrics` (one window = one chunk's new frames):
colour distance, contrast and sharpness against the reference image, the RMS of each chunk's
generated latents (``latent_norm``), and the Light-ASD score per chunk when its weights and the
face detector resolve (``vividhead.evaluation.loaders``). Writes::

    OUT/rollout.mp4   the stream (H.264 + AAC)
    OUT/drift.json    {"export", "audio", "image", "chunks", "frames", "asd", "rows": [per-chunk dicts]}
    OUT/drift.png     the curves (:func:`vividhead.evaluation.drift.plot_drift`)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)


def long_rollout(
    export: str | Path,
    image: str | Path,
    audio: str | Path,
    out: str | Path,
    *,
    num_chunks: int | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 42,
    asd: bool = True,
) -> dict[str, Any]:
    """Stream ``audio`` through an exported generator and measure drift per chunk.

    Args:
        export: a ``vividhead train export`` folder.
        image: the reference portrait (any size; resized and centre-cropped as inference does).
        audio: speech file (any rate; resampled to 16 kHz mono).
        out: output folder (created).
        num_chunks: chunks to generate (``None``: as many as the audio covers); the audio is cut
            to ``num_chunks * new_frames`` frames.
        device, dtype: where and in what precision the models run.
        seed: noise seed of the session.
        asd: compute the Light-ASD score per chunk when its weights exist (skipped with a log line
            otherwise).

    Returns:
        the ``drift.json`` content plus ``"paths"`` (video, json, png).

    Raises:
        ValueError: the audio is shorter than ``num_chunks`` chunks, or ``num_chunks < 1``.
        FileNotFoundError: ``export`` is not an export folder.
    """
    from vividhead.evaluation.drift import drift_metrics, plot_drift
    from vividhead.inference.pipeline import FlashHeadModels, StreamingSession
    from vividhead.media import Mp4Writer, read_audio, read_image

    out = Path(out)
    models = FlashHeadModels.from_export(export, device=device, dtype=dtype)
    cfg = models.variant.streaming
    ref = read_image(image)
    speech = read_audio(audio, cfg.sample_rate_hz)
    if num_chunks is not None:
        if num_chunks < 1:
            raise ValueError("num_chunks must be >= 1")
        need = num_chunks * cfg.samples_per_chunk
        if len(speech) < need:
            raise ValueError(f"{audio} has {len(speech) / cfg.sample_rate_hz:.1f} s, {num_chunks} chunks need "
                             f"{need / cfg.sample_rate_hz:.1f} s")
        speech = speech[:need]

    norms: list[float] = []

    def record(out) -> None:  # RMS of each chunk's generated latents (not its motion slots)
        m = out.motion[0].shape[2]
        norms.append(float(out.latents[:, :, m:].float().pow(2).mean().sqrt()))

    session = StreamingSession(models, ref, seed=seed, streaming=cfg, on_chunk=record)
    chunks: list[np.ndarray] = []
    for start in range(0, len(speech), cfg.samples_per_chunk):
        chunks.extend(session.feed(speech[start : start + cfg.samples_per_chunk]))
    chunks.extend(session.flush())
    frames = np.concatenate(chunks)
    per_frame_norm = np.concatenate([np.full(len(c), n) for c, n in zip(chunks, norms)])

    asd_model = detector = None
    asd_note = "off"
    if asd:
        from vividhead.evaluation.loaders import MissingEvalWeights, face_detector, load_asd

        try:
            asd_model, rec = load_asd(device=device)
            detector, _ = face_detector()
            asd_note = rec.name
        except MissingEvalWeights as exc:
            asd_model = detector = None
            asd_note = f"skipped: {exc}"
            logger.info("Light-ASD skipped: %s", exc)
    try:
        rows = drift_metrics(frames, speech[: len(frames) * cfg.samples_per_frame], ref,
                             window_s=cfg.new_frames / cfg.fps, asd_model=asd_model, syncnet=None,
                             detector=detector, latent_norms=per_frame_norm, device=device)
    finally:
        if detector is not None:
            detector.close()
    for i, row in enumerate(rows):
        row["chunk"] = i
    out.mkdir(parents=True, exist_ok=True)
    video = out / "rollout.mp4"
    writer = Mp4Writer(str(video), cfg.fps, cfg.width_px, cfg.height_px, audio=speech,
                       sample_rate_hz=cfg.sample_rate_hz)
    try:
        writer.write(frames)
    finally:
        writer.close()
    report = {"export": str(export), "audio": str(audio), "image": str(image), "chunks": len(chunks),
              "frames": int(len(frames)), "asd": asd_note, "rows": rows}
    (out / "drift.json").write_text(json.dumps(report, indent=2))
    plot_drift(rows, out / "drift.png", title=f"{Path(export).name}: {len(chunks)} chunks")
    report["paths"] = {"video": str(video), "json": str(out / "drift.json"), "png": str(out / "drift.png")}
    return report

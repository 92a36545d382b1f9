"""``vividhead eval run``: the reports' protocol end to end on a test split of curated shards.

For each test clip: the reference image is one of its frames (the first by default), the audio its
own 16 kHz track; the streaming generator (:class:`vividhead.inference.pipeline.StreamingSession`,
the same one ``vividhead infer`` and ``serve`` run) streams the whole clip chunk by chunk with a fixed
seed, and the generated frames are scored against the ground-truth clip by
:func:`vividhead.evaluation.score.score_videos`. Generated videos are also written as
``OUT/generated/<key>.mp4`` (H.264 + AAC), but scores are computed on the frames before encoding.

The clips come from a fixed test split (:mod:`vividhead.evaluation.split`): a split file,
or one made on the fly from the shards' metadata (``source_id``) with ``num_clips`` and ``seed``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from vividhead.evaluation.frames import SAMPLES_PER_FRAME, Video, iter_shard_samples, read_video


def generate_frames(models, reference: np.ndarray, audio: np.ndarray, seed: int = 42, streaming=None) -> np.ndarray:
    """Stream a whole audio track through a :class:`~vividhead.inference.pipeline.StreamingSession`.

    Args:
        models: :class:`vividhead.inference.pipeline.FlashHeadModels`.
        reference: uint8 [H, W, 3] RGB reference image.
        audio: float32 [S] mono in [-1, 1] at 16 kHz.
        seed: noise seed of the session.
        streaming: :class:`vividhead.models.configs.StreamingConfig` (default: the variant's).

    Returns:
        uint8 [ceil(S / 640), h, w, 3] RGB at 25 fps (h, w: the variant's output size).
    """
    from vividhead.inference.pipeline import StreamingSession

    session = StreamingSession(models, reference, seed=seed, streaming=streaming)
    step = session.cfg.samples_per_chunk
    chunks = []
    for start in range(0, len(audio), step):
        chunks.extend(session.feed(audio[start : start + step]))
    chunks.extend(session.flush())
    return np.concatenate(chunks) if chunks else np.zeros((0, session.cfg.height_px, session.cfg.width_px, 3), np.uint8)


def load_split_samples(shards: str, split=None, num_clips: int = 75, seed: int = 0,
                       storage_options: dict | None = None) -> tuple[list[dict], Any]:
    """The raw shard samples of the test split, in split order.

    Args:
        shards: shard URL(s) / brace pattern / curation output folder.
        split: a :class:`~vividhead.evaluation.split.TestSplit`, or None to make one from the
            samples' ``source_id`` (``num_clips``, ``seed``).

    Returns:
        (samples, the split used).

    Raises:
        ValueError: a split key is not in the shards.
    """
    from vividhead.evaluation.split import make_test_split

    samples = {}
    for s in iter_shard_samples(shards, storage_options):
        key = s["__key__"].rsplit("/", 1)[-1]
        samples[key] = s
    if split is None:
        groups = []
        for key, s in samples.items():
            meta = json.loads(s["json"]) if "json" in s else {}
            groups.append((key, meta.get("source_id") or key))
        split = make_test_split(groups, num_clips, seed)
    missing = [k for k in split.test_keys if k not in samples]
    if missing:
        raise ValueError(f"{len(missing)} test clips are not in the shards, e.g. {missing[:3]}")
    return [samples[k] for k in split.test_keys], split


def run_eval(
    checkpoint: str | Path | None,
    shards: str,
    out: str | Path,
    score_cfg,
    *,
    split=None,
    num_clips: int = 75,
    split_seed: int = 0,
    reference_frame: int = 0,
    gen_seed: int = 42,
    device: str = "cpu",
    dtype: str = "fp32",
    fast_start: bool = False,
    models=None,
    storage_options: dict | None = None,
    log=print,
) -> dict[str, Any]:
    """Generate every test clip and score it against its ground truth; write the report.

    Args:
        checkpoint: a ``vividhead train export`` folder (loaded with
            :meth:`~vividhead.inference.pipeline.FlashHeadModels.from_export`); ignored when
            ``models`` is given.
        shards: the test shards.
        out: report folder (``report.json``, ``report.md``, ``plots/``, ``generated/``, ``split.json``).
        score_cfg: :class:`~vividhead.evaluation.score.ScoreConfig`.
        split: a :class:`~vividhead.evaluation.split.TestSplit` (None: made from the shards).
        reference_frame: index of the clip frame used as the reference image.
        gen_seed: the generator's noise seed.
        dtype: ``bf16`` / ``fp16`` / ``fp32`` for the generator.
        fast_start: the short first chunk (``StreamingConfig.fast_start``).
        models: already loaded :class:`~vividhead.inference.pipeline.FlashHeadModels` (tests).

    Returns:
        the report dict (also written).

    Raises:
        vividhead.errors.UserError: a required metric's prerequisites are missing, or none can be
            computed (at start-up, before generating anything).
        ValueError: ``reference_frame`` outside a clip, or split keys missing from the shards.
    """
    from vividhead.devices import parse_dtype
    from vividhead.evaluation.report import write_report
    from vividhead.evaluation.score import load_eval_models, score_videos
    from vividhead.media import Mp4Writer

    out = Path(out)
    eval_models = load_eval_models(score_cfg, log=log)  # start-up check before the generator loads
    try:
        if models is None:
            from vividhead.inference.pipeline import FlashHeadModels

            models = FlashHeadModels.from_export(checkpoint, device=device, dtype=parse_dtype(dtype))
        streaming = dataclasses.replace(models.variant.streaming, fast_start=fast_start)
        samples, split = load_split_samples(shards, split, num_clips, split_seed, storage_options)
        split.to_json(out / "split.json")
        (out / "generated").mkdir(parents=True, exist_ok=True)
        real: dict[str, Any] = {}
        generated: dict[str, Any] = {}
        for s in samples:
            key = s["__key__"].rsplit("/", 1)[-1]

            def load_real(s=s) -> Video:
                return read_video(s["mp4"], s.get("wav"))

            def load_generated(key=key, load_real=load_real) -> Video:
                gt = load_real()
                if not 0 <= reference_frame < len(gt.frames):
                    raise ValueError(f"{key}: reference frame {reference_frame} outside {len(gt.frames)} frames")
                audio = np.asarray(gt.audio[: SAMPLES_PER_FRAME * len(gt.frames)], np.float32)
                frames = generate_frames(models, gt.frames[reference_frame], audio, gen_seed, streaming)
                writer = Mp4Writer(str(out / "generated" / f"{key}.mp4"), streaming.fps, frames.shape[2],
                                   frames.shape[1], audio=audio, sample_rate_hz=streaming.sample_rate_hz)
                try:
                    writer.write(frames)
                finally:
                    writer.close()
                return Video(frames, audio, float(streaming.fps))

            real[key], generated[key] = load_real, load_generated
        report = score_videos(list(real), generated, real, score_cfg, eval_models, log)
    finally:
        eval_models.close()
    report["inputs"] = {"checkpoint": str(checkpoint) if checkpoint else "(models given)", "shards": str(shards)}
    report["generation"] = {
        "variant": models.variant.name,
        "streaming": {k: v for k, v in dataclasses.asdict(streaming).items() if not k.startswith("_")},
        "reference_frame": reference_frame,
        "seed": gen_seed,
        "device": str(models.device),
        "dtype": str(models.dtype).replace("torch.", ""),
        "mode": "streaming: the audio is fed chunk by chunk to one StreamingSession (the infer/serve path)",
    }
    report["split"] = {"seed": split.seed, "group_column": split.group_column, "num_clips": len(split.test_keys),
                       "num_groups_held_out": len(split.test_groups), "num_groups_total": split.num_groups_total,
                       "file": "split.json"}
    write_report(report, out)
    return report

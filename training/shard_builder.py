"""Build small curation-format outputs (shards + manifest + stats) from any videos, for tests and benchmarks.

This is *not* the curation pipeline: it centre-crops and scales each video to 512x512 at 25 fps
CFR with FFmpeg, keeps the largest 4k+1 frames, writes 16 kHz mono s16 audio of exactly 640*N
samples and fills the score columns with given (synthetic) values. The output follows the shard
contract of ``curation/`` (``OUT/shards/{shard:05d}.tar``, ``OUT/manifest.parquet``,
``OUT/stats.json``), so the loader, card and publisher can be tested before real data exists.
"""

from __future__ import annotations

import io
import json
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS

#: Score columns shared by ``<key>.json`` and the manifest (null when a stage did not run).
SCORE_COLUMNS = (
    "lse_c",
    "lse_d",
    "av_offset_frames",
    "asd_score",
    "speech_share",
    "hand_over_face_share",
    "language",
    "gender",
    "age_band",
    "ethnicity",
    "transition_score",
    "missing_face_share",
)


@dataclass
class EncodedClip:
    """One clip already in shard format.

    Attributes:
        source_id: id of the source video.
        mp4: H.264 512x512 25 fps CFR, ``num_frames`` frames.
        wav: 16 kHz mono PCM s16, exactly 640 * ``num_frames`` samples.
        num_frames: N = 4k + 1.
        scores: values for :data:`SCORE_COLUMNS` (missing keys are null) plus ``face_px``.
    """

    source_id: str
    mp4: bytes
    wav: bytes
    num_frames: int
    scores: dict[str, Any] = field(default_factory=dict)


def encode_clip(video: str | Path, max_frames: int = 121, gop: int = 25, size: int = 512) -> tuple[bytes, bytes, int]:
    """Centre-crop, scale and re-encode a video as a shard clip with FFmpeg.

    Args:
        video: input file with a video and an audio stream.
        max_frames: upper bound on N (rounded down to 4k+1).
        gop: H.264 key-frame interval in frames.
        size: output width and height in pixels.

    Returns:
        (mp4 bytes, wav bytes, N).

    Raises:
        subprocess.CalledProcessError: if FFmpeg fails (e.g. no audio stream).
        ValueError: if the video has fewer than 5 frames.
    """
    with tempfile.TemporaryDirectory() as tmp:
        mp4, wav = Path(tmp) / "v.mp4", Path(tmp) / "a.wav"
        vf = f"fps={FPS},crop='min(iw,ih)':'min(iw,ih)',scale={size}:{size},setsar=1"
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-i", str(video), "-vf", vf, "-frames:v", str(max_frames),
             "-an", "-c:v", "libx264", "-preset", "veryfast", "-crf", "20", "-g", str(gop),
             "-pix_fmt", "yuv420p", "-threads", "1", str(mp4)],
            check=True,
        )
        probe = subprocess.run(
            ["ffprobe", "-v", "error", "-count_packets", "-select_streams", "v:0", "-show_entries",
             "stream=nb_read_packets", "-of", "csv=p=0", str(mp4)],
            check=True, capture_output=True, text=True,
        )
        have = int(probe.stdout.strip())
        n = (have - 1) // 4 * 4 + 1
        if n < 5:
            raise ValueError(f"{video}: only {have} frames")
        if n != have:
            # Re-cut to exactly n frames (4k+1).
            cut = Path(tmp) / "c.mp4"
            subprocess.run(
                ["ffmpeg", "-v", "error", "-y", "-i", str(mp4), "-frames:v", str(n), "-c:v", "libx264",
                 "-preset", "veryfast", "-crf", "20", "-g", str(gop), "-pix_fmt", "yuv420p",
                 "-threads", "1", str(cut)],
                check=True,
            )
            mp4 = cut
        subprocess.run(
            ["ffmpeg", "-v", "error", "-y", "-i", str(video), "-t", f"{n / FPS + 0.5:.3f}", "-vn", "-ac", "1",
             "-ar", str(SAMPLE_RATE),
             "-c:a", "pcm_s16le", str(wav)],
            check=True,
        )
        audio, _ = soundfile.read(wav, dtype="int16")
        want = SAMPLES_PER_FRAME * n
        audio = np.pad(audio[:want], (0, max(0, want - len(audio))))
        buf = io.BytesIO()
        soundfile.write(buf, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        return mp4.read_bytes(), buf.getvalue(), n


def write_output(
    out: str | Path,
    clips: Sequence[EncodedClip],
    clips_per_shard: int = 2,
    wav2vec_shape: tuple[int, int] | None = (2, 8),
    rejected: Sequence[dict[str, Any]] = (),
    seed: int = 0,
) -> Path:
    """Write ``OUT/shards/*.tar``, ``OUT/manifest.parquet`` and ``OUT/stats.json`` for ``clips``.

    Args:
        out: output directory (created).
        clips: clips in shard order; keys are ``{source_id}-{i:04d}``.
        clips_per_shard: samples per tar.
        wav2vec_shape: (L, D) of synthetic ``<key>.wav2vec.npy`` float16 [N, L, D] features whose
            row t holds t (so tests can check alignment); None writes none.
        rejected: extra manifest rows for rejected inputs/clips (need ``stage`` and ``reason``).
        seed: seed of the synthetic features.

    Returns:
        ``out`` as a Path.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    import webdataset as wds

    out = Path(out)
    (out / "shards").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []
    per_source: dict[str, int] = {}
    writer = None
    for i, clip in enumerate(clips):
        shard = i // clips_per_shard
        if i % clips_per_shard == 0:
            if writer is not None:
                writer.close()
            writer = wds.TarWriter(str(out / "shards" / f"{shard:05d}.tar"))
        idx = per_source.get(clip.source_id, 0)
        per_source[clip.source_id] = idx + 1
        key = f"{clip.source_id}-{idx:04d}"
        duration = clip.num_frames / FPS
        meta: dict[str, Any] = {
            "source_id": clip.source_id,
            "clip_id": key,
            "key": key,
            "shard": shard,
            "url": f"file:///sources/{clip.source_id}.mp4",
            "start_s": 0.0,
            "end_s": duration,
            "duration_s": duration,
            "num_frames": clip.num_frames,
            "fps": FPS,
            "sample_rate": SAMPLE_RATE,
            "crop_box": [0, 0, 512, 512],
            "face_px": clip.scores.get("face_px", 200.0),
        }
        for col in SCORE_COLUMNS:
            meta[col] = clip.scores.get(col)
        sample = {"__key__": key, "mp4": clip.mp4, "wav": clip.wav, "json": json.dumps(meta).encode()}
        if wav2vec_shape is not None:
            feats = np.broadcast_to(
                np.arange(clip.num_frames, dtype=np.float16)[:, None, None], (clip.num_frames, *wav2vec_shape)
            ).copy()
            feats[:, :, 1:] = rng.standard_normal((clip.num_frames, wav2vec_shape[0], wav2vec_shape[1] - 1))
            buf = io.BytesIO()
            np.save(buf, feats)
            sample["wav2vec.npy"] = buf.getvalue()
        writer.write(sample)
        rows.append(
            {
                "input_id": clip.source_id, "source_id": clip.source_id, "url": meta["url"], "clip_id": key,
                "status": "kept", "stage": "output", "reason": None,
                "start_s": 0.0, "end_s": duration, "duration_s": duration, "num_frames": clip.num_frames,
                "shard": shard, "key": key, "face_px": meta["face_px"],
                **{c: meta[c] for c in SCORE_COLUMNS},
                "timings": json.dumps({"segmentation": 0.5, "face": 1.0, "lipsync": 2.0}),
            }
        )
    if writer is not None:
        writer.close()
    for r in rejected:
        base = {c: None for c in rows[0]} if rows else {}
        rows.append({**base, "status": "rejected", "timings": "{}", **r})
    schema = pa.schema(
        [
            ("input_id", pa.string()), ("source_id", pa.string()), ("url", pa.string()),
            ("clip_id", pa.string()), ("status", pa.string()), ("stage", pa.string()),
            ("reason", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()),
            ("duration_s", pa.float64()), ("num_frames", pa.int64()), ("shard", pa.int64()),
            ("key", pa.string()), ("face_px", pa.float64()),
            *[(c, pa.string() if c in ("language", "gender", "age_band", "ethnicity") else pa.float64())
              for c in SCORE_COLUMNS],
            ("timings", pa.string()),
        ]
    )
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), out / "manifest.parquet")
    return out


def write_stats(out: str | Path, stages: dict[str, dict[str, Any]], config: dict[str, Any], version: str = "0.1.0",
                wall_s: float = 12.5) -> Path:
    """Write ``OUT/stats.json`` ({"stages": ..., "config": ..., "version": ..., "wall_s": ...})."""
    path = Path(out) / "stats.json"
    stats = {"stages": stages, "config": config, "version": version, "wall_s": wall_s}
    path.write_text(json.dumps(stats, indent=2, sort_keys=True))  # sorted, like curation/pipeline.py
    return path

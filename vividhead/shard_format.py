"""The shard contract: what ``vividhead curate`` writes and what every reader may rely on.

This module is the one home of the format. The writer (``curation/stages/write.py``), the stages
that fix the media (``normalize``, ``face``, ``scene_split``), the training loader
(``training/data.py``), the dataset card and publisher (``datasets_card/``), the streaming defaults
(``vividhead/models/configs.py``) and the tests import it; nothing else restates these facts.
It imports only ``re`` and ``pyarrow`` (no torch, no Ray).

Output layout under ``OUT`` (a folder or an fsspec prefix)::

    shards/{shard:05d}.tar            WebDataset shards, one sample per kept clip (SHARD_DIR, shard_path)
    _parts/part-{part:05d}.parquet    manifest rows of the inputs finished in that part (PART_DIR, part_path)
    manifest.parquet                  every part, one row per input and per clip (MANIFEST_FILE, MANIFEST_SCHEMA)
    stats.json                        per-stage counts, seconds, the config (STATS_FILE)

A sample's key is its ``clip_id`` (``<safe source id>-<clip index:04d>``, characters
``[A-Za-z0-9_-]`` only, so the first ``.`` of a member name ends the key). Members:

* ``<key>.mp4`` (:data:`MP4`): H.264, yuv420p, :data:`FRAME_SIZE_PX` x :data:`FRAME_SIZE_PX` pixels,
  constant :data:`FPS` frames per second, N frames with N = 4k + 1 (:func:`is_valid_frame_count`).
* ``<key>.wav`` (:data:`WAV`): PCM s16 mono at :data:`SAMPLE_RATE_HZ`, exactly
  N * :data:`SAMPLES_PER_FRAME` samples; sample ``SAMPLES_PER_FRAME * t`` starts video frame t.
* ``<key>.json`` (:data:`JSON`): UTF-8 JSON object, the manifest columns except
  :data:`SAMPLE_JSON_EXCLUDE`, plus ``fps`` (float) and ``sample_rate`` (int, Hz).
* ``<key>.mask.npz`` (:data:`MASK`, optional, ``face_mask`` stage): ``numpy.savez_compressed`` with
  ``face``, ``lips`` uint8 [N, H, ceil(W / 8)] (bool masks bit-packed along the width),
  ``landmarks`` float16 [N, 478, 3] (x, y in [0, 1] of width/height, NaN without a face),
  ``present`` bool [N], ``size`` int32 [2] = (H, W).
* ``<key>.wav2vec.npy`` (:data:`WAV2VEC`, optional, ``audio_features`` stage): ``numpy.save`` of
  float16 [N, L, D] Wav2Vec 2.0 hidden states of all L layers; row t belongs to video frame t.

Fixed, not configured: the frame rate, sample rate, samples per frame and frame size are constants
here, not settings of ``vividhead curate`` (``normalize`` has no ``fps`` / ``sample_rate_hz`` /
``out_size_px``; a config that sets them fails at load naming the key). Every reader (the loader's
seek-by-timestamp decode, the audio cut at ``SAMPLES_PER_FRAME * t``, the trained models, the
streaming audio cache) assumes these values, so a shard written at another rate would be silently
misread or fail far from its cause; one value means nothing has to be carried along or agreed on.
The writer still records ``fps`` and ``sample_rate`` in every ``<key>.json``, and the loader
(``training/data.py``) checks them against :data:`FPS` / :data:`SAMPLE_RATE_HZ`, naming the sample
and both values on a mismatch: shards from another writer, or from before this rule, are refused
with a cause instead of being decoded at the wrong rate. Stages take ``FPS`` from here.

Streaming defaults: the chunk geometry the models are trained and served with
(:data:`CHUNK_FRAMES`, :data:`MOTION_FRAMES`, :data:`AUDIO_CONTEXT_S`) also lives here, as the
defaults of :class:`vividhead.models.configs.StreamingConfig`, the trainers' ``data`` section, the
loader's windows and the streaming audio cache.
"""

from __future__ import annotations

import re
from types import MappingProxyType
from typing import Mapping, Optional

import pyarrow as pa

# ------------------------------------------------------------------------------------------------
# Media
# ------------------------------------------------------------------------------------------------

#: Video frame rate of every clip, frames per second (constant frame rate).
FPS: int = 25
#: Audio sample rate of every clip, Hz (mono, PCM s16 in the WAV).
SAMPLE_RATE_HZ: int = 16000
#: Audio samples per video frame (``SAMPLE_RATE_HZ // FPS`` = 640); the WAV holds exactly N times this.
SAMPLES_PER_FRAME: int = SAMPLE_RATE_HZ // FPS
#: Width and height of every clip's frames, pixels (square, face-centred crop).
FRAME_SIZE_PX: int = 512
#: Temporal stride of the frame-count rule: clips have N = FRAME_STRIDE * k + 1 frames (Wan VAE chunking).
FRAME_STRIDE: int = 4
#: Audio channels of the WAV.
AUDIO_CHANNELS: int = 1
#: soundfile subtype of the WAV (16-bit signed PCM).
AUDIO_SUBTYPE: str = "PCM_16"


# ------------------------------------------------------------------------------------------------
# Streaming defaults (the window / chunk the models train and stream on)
# ------------------------------------------------------------------------------------------------

#: Frames per training window and per streaming chunk (33 = 4*8 + 1: Wan 4k+1 and LTX 8k+1).
CHUNK_FRAMES: int = 33
#: Leading frames of a chunk that are the previous chunk's last ones (motion frames; Pro and 14B 5, Lite 9).
MOTION_FRAMES: int = 5
#: Audio context of a chunk, seconds: the Temporal Audio Context Cache length T_max.
AUDIO_CONTEXT_S: float = 8.0
#: :data:`AUDIO_CONTEXT_S` in samples at :data:`SAMPLE_RATE_HZ` (128000).
AUDIO_CONTEXT_SAMPLES: int = int(round(AUDIO_CONTEXT_S * SAMPLE_RATE_HZ))


def is_valid_frame_count(n: int, stride: int = FRAME_STRIDE) -> bool:
    """True when ``n`` (frames) is ``stride * k + 1`` for some k >= 0 (1, 5, 9, ..., 33, ...)."""
    return n >= 1 and (n - 1) % stride == 0


def floor_frame_count(n: int, stride: int = FRAME_STRIDE) -> int:
    """The largest valid frame count <= ``n`` (``stride * k + 1``); 0 when ``n < 1``."""
    return ((n - 1) // stride) * stride + 1 if n >= 1 else 0


# ------------------------------------------------------------------------------------------------
# Sample members
# ------------------------------------------------------------------------------------------------

#: Video member extension (``<key>.mp4``).
MP4 = "mp4"
#: Audio member extension (``<key>.wav``).
WAV = "wav"
#: Metadata member extension (``<key>.json``).
JSON = "json"
#: Face/lip masks and landmarks (``<key>.mask.npz``), written by the ``face_mask`` stage.
MASK = "mask.npz"
#: Wav2Vec 2.0 features (``<key>.wav2vec.npy``), written by the ``audio_features`` stage.
WAV2VEC = "wav2vec.npy"
#: Members every sample has, in the order the writer puts them first (json comes last).
REQUIRED_MEMBERS: tuple[str, ...] = (MP4, WAV, JSON)
#: Members a sample may have (annotations that failed leave theirs out).
OPTIONAL_MEMBERS: tuple[str, ...] = (MASK, WAV2VEC)
#: Every member extension of the format.
MEMBERS: tuple[str, ...] = REQUIRED_MEMBERS + OPTIONAL_MEMBERS
#: A sample key (the clip id): no dots, no slashes.
KEY_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def member_name(key: str, ext: str) -> str:
    """Tar member name of ``ext`` in sample ``key``: ``<key>.<ext>``."""
    return f"{key}.{ext}"


def split_member(name: str) -> tuple[str, str]:
    """``"<key>.<ext>"`` (optionally under a folder) -> ``(key, ext)``; the first dot of the base name ends the key."""
    key, _, ext = name.rsplit("/", 1)[-1].partition(".")
    return key, ext


# ------------------------------------------------------------------------------------------------
# Output layout
# ------------------------------------------------------------------------------------------------

#: Folder of the WebDataset shards, relative to OUT.
SHARD_DIR = "shards"
#: Folder of the manifest parts (the resume markers), relative to OUT.
PART_DIR = "_parts"
#: The full manifest, relative to OUT.
MANIFEST_FILE = "manifest.parquet"
#: Per-stage counts and the config, relative to OUT.
STATS_FILE = "stats.json"
#: Glob of every shard, relative to OUT (the Hub config's data files, the publisher's allow-list).
SHARD_GLOB = f"{SHARD_DIR}/*.tar"

_SHARD_NAME = re.compile(r"(?:^|/)(\d+)\.tar$")
_PART_NAME = re.compile(r"(?:^|/)part-(\d+)\.parquet$")


def shard_path(shard: int) -> str:
    """``shards/{shard:05d}.tar``: path of shard ``shard`` relative to OUT."""
    return f"{SHARD_DIR}/{shard:05d}.tar"


def part_path(part: int) -> str:
    """``_parts/part-{part:05d}.parquet``: path of manifest part ``part`` relative to OUT."""
    return f"{PART_DIR}/part-{part:05d}.parquet"


def shard_index(name: str) -> Optional[int]:
    """Shard number of a file name, path or URL ending in ``{shard:05d}.tar`` (None for other names)."""
    m = _SHARD_NAME.search(name)
    return int(m.group(1)) if m else None


def part_index(name: str) -> Optional[int]:
    """Part number of a name ending in ``part-{part:05d}.parquet`` (None for other names)."""
    m = _PART_NAME.search(name)
    return int(m.group(1)) if m else None


# ------------------------------------------------------------------------------------------------
# Manifest
# ------------------------------------------------------------------------------------------------

#: ``status`` of a row that reached the writer (a clip in a shard, or an input whose clips are rows).
KEPT = "kept"
#: ``status`` of a row a stage rejected (``stage`` and ``reason`` say which and why).
REJECTED = "rejected"
#: Every ``status`` value.
STATUSES: tuple[str, ...] = (KEPT, REJECTED)

#: Columns of ``manifest.parquet`` (and of each part), with Arrow types. One row per input (until
#: ``scene_split``; ``clip_id`` null) and per clip. Every row has every column; a column whose stage
#: did not run (or failed, for annotations) is null. Units are in the names (``_s`` seconds,
#: ``_px`` pixels, ``_hz`` hertz, ``_dbfs`` dB full scale, ``_share`` a fraction in [0, 1]).
MANIFEST_SCHEMA = pa.schema(
    [
        ("input_id", pa.string()),  # stable id of the input (URL and time span)
        ("source_id", pa.string()),  # given source id, or the file name without extension
        ("url", pa.string()),  # the input URL or path
        ("md5", pa.string()),  # hex MD5 of the input file
        ("clip_id", pa.string()),  # <safe source id>-<clip index:04d>; the sample key
        ("clip_index", pa.int32()),  # 0-based clip number within its input
        ("status", pa.string()),  # KEPT or REJECTED
        ("stage", pa.string()),  # the rejecting stage (a pipeline stage name)
        ("reason", pa.string()),  # the rejecting stage's reason code (REASONS)
        ("detail", pa.string()),  # free text, at most 500 characters
        ("duplicate_of", pa.string()),  # input_id of the kept copy (dedup)
        ("start_s", pa.float64()),  # clip start in the source, seconds
        ("end_s", pa.float64()),  # clip end in the source, seconds
        ("duration_s", pa.float64()),  # end_s - start_s, seconds
        ("num_frames", pa.int32()),  # frames N of the clip (4k+1) at FPS
        ("source_duration_s", pa.float64()),  # duration of the input, seconds
        ("source_width", pa.int32()),  # source frame width, pixels
        ("source_height", pa.int32()),  # source frame height, pixels
        ("source_fps", pa.float64()),  # source frame rate, frames per second
        ("crop_box", pa.list_(pa.int32())),  # [x0, y0, x1, y1] of the square crop in source pixels
        ("face_px", pa.float64()),  # detected face box side, source pixels
        ("face_score", pa.float64()),  # face detector confidence in [0, 1]
        ("num_faces", pa.int32()),  # faces detected on the first frame
        ("pad_px", pa.int32()),  # black padding the crop needed, source pixels
        ("audio_peak_dbfs", pa.float64()),  # audio peak, dBFS (null for digital silence)
        ("missing_face_share", pa.float64()),  # share of sampled frames without a face
        ("transition_score", pa.float64()),  # largest warp-residual spike (unitless)
        ("transition_frame", pa.int32()),  # frame of that spike
        ("lse_c", pa.float64()),  # SyncNet confidence LSE-C (higher is better)
        ("lse_d", pa.float64()),  # SyncNet distance LSE-D (lower is better)
        ("av_offset_frames", pa.int32()),  # audio-video offset, video frames
        ("asd_score", pa.float64()),  # Light-ASD active-speaker score
        ("speech_share", pa.float64()),  # share of the clip with speech (Silero VAD)
        ("hand_over_face_share", pa.float64()),  # share of frames with a hand over the face
        ("language", pa.string()),  # spoken language code (Whisper)
        ("gender", pa.string()),  # apparent gender label (classifier estimate)
        ("age_band", pa.string()),  # apparent age band label (classifier estimate)
        ("ethnicity", pa.string()),  # apparent ethnicity label (classifier estimate)
        ("face_mask_share", pa.float64()),  # share of frames in which FaceLandmarker found a face
        # JSON object {annotator: reason code} for annotations that failed on a kept clip
        # (ANNOTATION_ERRORS); null when nothing failed.
        ("annotation_errors", pa.string()),
        ("shard", pa.int32()),  # shard number of a kept clip (shard_path)
        ("key", pa.string()),  # sample key in that shard (= clip_id)
        # JSON object {stage: wall seconds of work on this row, "cpu:" + stage: its CPU seconds}
        ("timings", pa.string()),
    ]
)

#: Manifest columns that are routing state and stay out of each sample's ``<key>.json``.
SAMPLE_JSON_EXCLUDE: tuple[str, ...] = ("status", "stage", "reason", "detail", "duplicate_of", "timings")
#: Keys the writer adds to ``<key>.json``: ``fps`` (frames per second) and ``sample_rate`` (Hz).
SAMPLE_JSON_EXTRA: tuple[str, ...] = ("fps", "sample_rate")


def sample_json_keys() -> tuple[str, ...]:
    """Every key of a sample's ``<key>.json``, in manifest order, then :data:`SAMPLE_JSON_EXTRA`."""
    return tuple(n for n in MANIFEST_SCHEMA.names if n not in SAMPLE_JSON_EXCLUDE) + SAMPLE_JSON_EXTRA


# ------------------------------------------------------------------------------------------------
# Reason codes
# ------------------------------------------------------------------------------------------------

#: Reasons of the shared media helpers (``curation/media.py``, ``audio_io.py``, ``face_track.py``):
#: any stage that decodes, probes or re-encodes may reject with these.
MEDIA_REASONS: frozenset[str] = frozenset(
    {"decode_failed", "ffmpeg_failed", "ffmpeg_timeout", "ffprobe_timeout", "unreadable"}
)

#: Reason codes each stage rejects with (the manifest's ``reason`` where ``stage`` is the key),
#: besides :data:`MEDIA_REASONS`.
STAGE_REASONS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "probe": frozenset({"not_found", "download_failed", "download_timeout", "too_large", "storage_unavailable",
                            "no_video", "no_audio", "zero_duration", "too_short"}),
        "dedup": frozenset({"duplicate_source_id", "duplicate_md5"}),
        "scene_split": frozenset({"too_short", "bad_timestamps"}),
        "normalize": frozenset({"silent_audio", "too_few_frames"}),
        "face": frozenset({"no_face", "multiple_faces", "face_too_small", "crop_out_of_frame"}),
        "face_visibility": frozenset({"face_missing"}),
        "transition": frozenset({"abrupt_transition"}),
        "occlusion": frozenset({"hand_over_face"}),
        "speech": frozenset({"no_speech"}),
        "syncnet": frozenset({"low_sync_confidence", "high_sync_distance", "av_offset", "too_short", "bad_audio",
                              "no_face_track"}),
        "asd": frozenset({"not_speaking", "no_face_track", "too_short", "bad_audio"}),
    }
)

#: Reason codes an annotation stage records in ``annotation_errors`` (it never rejects), by stage.
#: The JSON object's keys are the annotators: ``face_mask``, ``audio_features``, and the
#: ``attributes`` stage's ``language``, ``gender``, ``age``, ``ethnicity``.
ANNOTATION_ERRORS: Mapping[str, frozenset[str]] = MappingProxyType(
    {
        "face_mask": frozenset({"no_face_landmarks", "decode_failed"}),
        "audio_features": frozenset({"audio_too_short", "bad_sample_rate", "decode_failed"}),
        "attributes": frozenset({"audio_too_short", "bad_sample_rate", "decode_failed"}),
    }
)

#: Every value the manifest's ``reason`` column can hold (null for kept rows).
REASONS: frozenset[str] = MEDIA_REASONS.union(*STAGE_REASONS.values())


__all__ = [
    "ANNOTATION_ERRORS",
    "AUDIO_CONTEXT_S",
    "AUDIO_CONTEXT_SAMPLES",
    "AUDIO_CHANNELS",
    "AUDIO_SUBTYPE",
    "CHUNK_FRAMES",
    "FPS",
    "FRAME_SIZE_PX",
    "FRAME_STRIDE",
    "JSON",
    "KEPT",
    "KEY_PATTERN",
    "MANIFEST_FILE",
    "MANIFEST_SCHEMA",
    "MASK",
    "MEDIA_REASONS",
    "MEMBERS",
    "MOTION_FRAMES",
    "MP4",
    "OPTIONAL_MEMBERS",
    "PART_DIR",
    "REASONS",
    "REJECTED",
    "REQUIRED_MEMBERS",
    "SAMPLES_PER_FRAME",
    "SAMPLE_JSON_EXCLUDE",
    "SAMPLE_JSON_EXTRA",
    "SAMPLE_RATE_HZ",
    "SHARD_DIR",
    "SHARD_GLOB",
    "STAGE_REASONS",
    "STATS_FILE",
    "STATUSES",
    "WAV",
    "WAV2VEC",
    "floor_frame_count",
    "is_valid_frame_count",
    "member_name",
    "part_index",
    "part_path",
    "sample_json_keys",
    "shard_index",
    "shard_path",
    "split_member",
]

"""Streaming training data: windows of curated clips read from WebDataset shards.

The curation pipeline writes WebDataset shards and a Parquet manifest in the format of the shard
contract, :mod:`vividhead.shard_format` (members, rates, frame counts, layout, manifest schema).
:class:`ClipWindowDataset` streams those shards from local disk, ``s3://`` or ``hf://`` (any fsspec URL) and yields :class:`ClipWindow`
samples for the trainers (SPEC.md sections 2-3):

* ``frames``: float32 [F, 3, H, W] in [-1, 1] (F = 33, H = W = 512 by default), layout FCHW;
* ``num_motion_frames``: 5 (Pro) with probability 0.9, 1 (cold start) with probability 0.1;
* ``reference``: float32 [3, H, W] in [-1, 1], one frame of the same clip outside the window;
* ``audio``: float32 [128000] in [-1, 1], the Temporal Audio Context Cache input: the last 8 s of
  16 kHz audio ending at the end of the window's last frame, left-padded with zeros;
* ``wav2vec``: the stored Wav2Vec features of the window's frames, float16 [F, L, D], or None;
* ``meta``: the clip's JSON metadata plus the window's position.

Only the frames a sample needs are decoded: PyAV seeks to the key frame before the window (and
before the reference frame when it is far away) and decodes forward from there.

Typical use (one process per GPU, 2 DataLoader workers each)::

    ds = ClipWindowDataset("s3://bucket/vivid/shards/{00000..00127}.tar",
                           manifest="s3://bucket/vivid/manifest.parquet",
                           clip_filter=ClipFilter(min_lse_c=6.0, languages=("en",)),
                           storage_options={"client_kwargs": {"endpoint_url": "http://..."}})
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2,
                                         collate_fn=collate_clip_windows)
    for epoch in range(num_epochs):
        ds.set_epoch(epoch)
        for batch in loader: ...
"""

from __future__ import annotations

import functools
import importlib
import io
import json
import logging
import math
import os
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from fractions import Fraction
from itertools import islice
from typing import Any
from urllib.parse import urlparse

import av
import numpy as np
import pyarrow as pa
import soundfile
import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from vividhead.errors import UserError
from vividhead.shard_format import (
    AUDIO_CHANNELS,
    AUDIO_CONTEXT_S,
    CHUNK_FRAMES,
    FPS,
    JSON,
    MANIFEST_FILE,
    MANIFEST_SCHEMA,
    MOTION_FRAMES,
    MP4,
    SAMPLE_RATE_HZ,
    SAMPLES_PER_FRAME,
    SHARD_GLOB,
    WAV,
    WAV2VEC,
    shard_index,
    split_member,
)

logger = logging.getLogger(__name__)

_LOCAL_SCHEMES = ("", "file")


class DataError(UserError, ValueError):
    """The training data cannot be used as configured (no shard, unreadable manifest, no clip
    selected): one line naming the folder and what to do; the CLI exits with code 2."""


class NoShardsError(DataError, FileNotFoundError):
    """No ``shards/*.tar`` under a curation output folder."""


def one_line_reason(exn: BaseException) -> str:
    """``Type: first line of the message`` (what a skipped sample is logged with)."""
    text = str(exn.args[0]) if getattr(exn, "args", None) else str(exn)
    first = text.strip().splitlines()[0] if text.strip() else ""
    return f"{type(exn).__name__}: {first}"[:300]


def check_training_data(out: str, storage_options: dict[str, Any] | None = None) -> bool:
    """Check a curation output before training on it: shards exist, the manifest is readable or absent.

    Args:
        out: local path or fsspec URL of the curation output (``OUT/shards/*.tar``, ``OUT/manifest.parquet``).
        storage_options: fsspec options.

    Returns:
        Whether ``OUT/manifest.parquet`` exists.

    Raises:
        NoShardsError: no shard (one line naming the folder).
        DataError: a manifest that exists but cannot be read as Parquet.
    """
    import fsspec
    import pyarrow.parquet as pq

    if not str(out):
        raise DataError("data.shards: not set; point it at the output folder of `vividhead curate`")
    fs, path = fsspec.core.url_to_fs(str(out), **(storage_options or {}))
    root = path.rstrip("/")
    if not fs.glob(f"{root}/{SHARD_GLOB}"):
        raise NoShardsError(f"data.shards: no shards under {out}/{SHARD_GLOB}; point data.shards at the output "
                            "folder of `vividhead curate`")
    manifest = f"{root}/{MANIFEST_FILE}"
    if not fs.exists(manifest):
        return False
    try:
        with fs.open(manifest, "rb") as fh:
            pq.read_schema(fh)
    except Exception as exc:  # noqa: BLE001 - any reader error means the same to the user
        raise DataError(f"data.shards: {out}/{MANIFEST_FILE} is not a readable Parquet manifest "
                        f"({one_line_reason(exc)}); re-run `vividhead curate` or remove it to use every sample") from exc
    return True


class ShardContractError(UserError, ValueError):
    """A sample's ``<key>.json`` records a frame rate or sample rate other than the shard
    contract's (:mod:`vividhead.shard_format`): one line naming the sample and both values."""


def check_sample_contract(meta: dict[str, Any], key: str, url: str | None = None) -> None:
    """Check the ``fps`` and ``sample_rate`` a sample's ``<key>.json`` records (when it records
    them) against :data:`~vividhead.shard_format.FPS` / :data:`~vividhead.shard_format.SAMPLE_RATE_HZ`.

    The loader decodes by those constants (frame ``t`` at ``t / FPS`` s, audio sample
    ``SAMPLES_PER_FRAME * t``), so a clip written at another rate would be misread, not just slow.

    Raises:
        ShardContractError: a recorded value differs (the message names the sample, its shard and both values).
    """
    where = f"{key.rsplit('/', 1)[-1]}" + (f" in {url}" if url else "")
    for field, want, unit in (("fps", FPS, "frames per second"), ("sample_rate", SAMPLE_RATE_HZ, "Hz")):
        got = meta.get(field)
        if got is not None and float(got) != want:
            raise ShardContractError(
                f"sample {where}: {field} {got:g} {unit} in its json, the shard contract (vividhead.shard_format) "
                f"fixes {want} {unit}; re-curate these shards with `vividhead curate`")


# --------------------------------------------------------------------------------------------
# Samples and batches
# --------------------------------------------------------------------------------------------


@dataclass
class ClipWindow:
    """One training sample: a window of a curated clip with its audio context.

    Attributes:
        frames: float32 (or the dataset's ``dtype``) [F, 3, H, W] in [-1, 1], RGB, layout FCHW;
            F = ``num_frames`` (33 by default), H = W = 512 for curated shards. Frame i is video
            frame ``meta["window_start_frame"] + i`` of the clip.
        num_motion_frames: how many of the first frames serve as motion (conditioning) frames:
            the dataset's ``num_motion_frames`` (5) or 1 for a cold start.
        reference: same dtype as ``frames``, [3, H, W] in [-1, 1]; clip frame
            ``meta["reference_frame"]``, always outside the window.
        audio: float32 [S] in [-1, 1] with S = ``audio_context_s * 16000`` (128000 for 8 s); the
            audio that ends at the end of the window's last frame (sample 640 * (start + F) of the
            clip), left-padded with ``meta["audio_pad_samples"]`` zeros when the clip is shorter.
            The last 640 * F samples are exactly the window's audio.
        wav2vec: float16 [F, L, D] (rows = window frames, L layers, D feature size) when the shard
            has ``<key>.wav2vec.npy``, else None.
        meta: the clip's ``<key>.json`` dict plus ``window_start_frame``, ``window_num_frames``,
            ``reference_frame``, ``audio_pad_samples`` (int) and ``shard_url`` (str).
    """

    frames: torch.Tensor
    num_motion_frames: int
    reference: torch.Tensor
    audio: torch.Tensor
    wav2vec: torch.Tensor | None
    meta: dict[str, Any]


@dataclass
class ClipWindowBatch:
    """A batch of :class:`ClipWindow` samples, as made by :func:`collate_clip_windows`.

    Attributes:
        frames: [B, F, 3, H, W] in [-1, 1] (layout BFCHW, Self-Forcing order).
        num_motion_frames: int64 [B].
        reference: [B, 3, H, W] in [-1, 1].
        audio: float32 [B, S] (S = 128000 by default).
        wav2vec: float16 [B, F, L, D] when every sample has features, else None.
        meta: list of B metadata dicts.
    """

    frames: torch.Tensor
    num_motion_frames: torch.Tensor
    reference: torch.Tensor
    audio: torch.Tensor
    wav2vec: torch.Tensor | None
    meta: list[dict[str, Any]]


def collate_clip_windows(samples: Sequence[ClipWindow]) -> ClipWindowBatch:
    """Stack :class:`ClipWindow` samples into a :class:`ClipWindowBatch` (use as ``collate_fn``).

    Args:
        samples: B >= 1 windows with equal ``frames`` shapes.

    Returns:
        The batch; ``wav2vec`` is None unless every sample has features.

    Raises:
        ValueError: if ``samples`` is empty.
    """
    if not samples:
        raise ValueError("collate_clip_windows needs at least one sample")
    w2v = [s.wav2vec for s in samples]
    return ClipWindowBatch(
        frames=torch.stack([s.frames for s in samples]),
        num_motion_frames=torch.tensor([s.num_motion_frames for s in samples], dtype=torch.int64),
        reference=torch.stack([s.reference for s in samples]),
        audio=torch.stack([s.audio for s in samples]),
        wav2vec=torch.stack(w2v) if all(w is not None for w in w2v) else None,
        meta=[s.meta for s in samples],
    )


# --------------------------------------------------------------------------------------------
# Window sampling (pure, testable)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowPlan:
    """Which frames of a clip a sample uses (all indices are 0-based video frame indices).

    Attributes:
        start: first window frame.
        num_frames: window length F.
        reference: reference frame, outside [start, start + F).
        num_motion_frames: motion frames for this sample.
    """

    start: int
    num_frames: int
    reference: int
    num_motion_frames: int


def plan_window(
    clip_num_frames: int,
    rng: random.Random,
    num_frames: int = CHUNK_FRAMES,
    num_motion_frames: int = MOTION_FRAMES,
    cold_start_prob: float = 0.1,
) -> WindowPlan:
    """Draw a window, a reference frame outside it and the motion-frame count (FlashHead §3.1).

    The window start is uniform over [0, N - F]; the reference is uniform over the N - F frames
    outside the window; ``num_motion_frames`` is 1 with probability ``cold_start_prob``.

    Args:
        clip_num_frames: N, frames in the clip.
        rng: source of randomness (consumed: 3 draws).
        num_frames: F, window length in frames.
        num_motion_frames: motion frames of a normal sample.
        cold_start_prob: probability of a cold start (a single motion frame).

    Returns:
        The plan.

    Raises:
        ValueError: if N <= F (no frame left for the reference).
    """
    if clip_num_frames <= num_frames:
        raise ValueError(f"clip has {clip_num_frames} frames; needs more than the window ({num_frames})")
    start = rng.randint(0, clip_num_frames - num_frames)
    outside = rng.randrange(clip_num_frames - num_frames)
    reference = outside if outside < start else outside + num_frames
    motion = 1 if rng.random() < cold_start_prob else num_motion_frames
    return WindowPlan(start=start, num_frames=num_frames, reference=reference, num_motion_frames=motion)


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def decode_frames(
    mp4: bytes,
    indices: Iterable[int],
    threads: int = 1,
    max_gap_frames: int = 50,
) -> dict[int, np.ndarray]:
    """Decode only the given frames of a constant-frame-rate video held in memory.

    The wanted frames are grouped into runs; for each run PyAV seeks to the key frame at or before
    the run's first frame and decodes forward. A run that starts within ``max_gap_frames`` of the
    previous one is reached by decoding on instead of seeking.

    Args:
        mp4: the whole video file (any container/codec FFmpeg reads), CFR at ``FPS``.
        indices: wanted 0-based frame indices.
        threads: decoder threads (1 inside DataLoader workers).
        max_gap_frames: decode through gaps up to this many frames instead of seeking.

    Returns:
        {index: uint8 [H, W, 3] RGB} for every wanted index.

    Raises:
        ValueError: if a wanted frame is not in the video.
        av.FFmpegError: if the bytes cannot be decoded.
    """
    wanted = sorted(set(int(i) for i in indices))
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    runs: list[list[int]] = [[wanted[0]]]
    for i in wanted[1:]:
        if i - runs[-1][-1] <= max_gap_frames:
            runs[-1].append(i)
        else:
            runs.append([i])
    with av.open(io.BytesIO(mp4), mode="r") as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = threads
        if threads != 1:
            stream.thread_type = "AUTO"
        tb = Fraction(stream.time_base)
        start_pts = stream.start_time or 0
        for run in runs:
            need = set(run)
            first, last = run[0], run[-1]
            for target in (first, 0):  # on an overshooting seek, retry from the start
                container.seek(start_pts + math.floor(Fraction(target, FPS) / tb), stream=stream, backward=True)
                first_idx = None
                for frame in container.decode(stream):
                    pts = frame.pts if frame.pts is not None else 0
                    idx = round((pts - start_pts) * tb * FPS)
                    if first_idx is None:
                        first_idx = idx
                        if idx > first and target > 0:
                            break
                    if idx in need:
                        out[idx] = frame.to_ndarray(format="rgb24")
                    if idx >= last:
                        break
                if first_idx is not None and first_idx <= first:
                    break
            missing = need - out.keys()
            if missing:
                raise ValueError(f"frames {sorted(missing)[:5]} not found in the video (run {first}-{last})")
    return out


def _to_unit_range(frames_u8: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """uint8 [..., H, W, 3] -> ``dtype`` [..., 3, H, W] in [-1, 1] (x / 127.5 - 1).

    ``dtype=torch.uint8`` only moves the channels: values stay in [0, 255].
    """
    src = torch.from_numpy(frames_u8)
    src = src.movedim(-1, -3)  # [..., H, W, 3] -> [..., 3, H, W]
    out = torch.empty(src.shape, dtype=dtype)
    out.copy_(src)
    if dtype == torch.uint8:
        return out
    return out.div_(127.5).sub_(1.0)


def to_unit_range(frames: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 frames in [0, 255] (any shape, e.g. a ``dtype=torch.uint8`` batch moved to the GPU) ->
    ``dtype`` in [-1, 1], exactly as the loader's float output (x / 127.5 - 1)."""
    return frames.to(dtype).div_(127.5).sub_(1.0)


def read_audio_context(wav: bytes, end_sample: int, num_samples: int) -> tuple[torch.Tensor, int]:
    """Read ``num_samples`` of 16 kHz mono audio ending at ``end_sample``, left-padded with zeros.

    Args:
        wav: a WAV file (16 kHz mono PCM; float conversion divides s16 by 32768).
        end_sample: exclusive end (sample index in the clip).
        num_samples: output length S.

    Returns:
        (float32 [S] in [-1, 1], number of zero samples padded on the left).

    Raises:
        ValueError: if the WAV is not 16 kHz mono or shorter than ``end_sample``.
    """
    begin = end_sample - num_samples
    with soundfile.SoundFile(io.BytesIO(wav)) as f:
        if f.samplerate != SAMPLE_RATE_HZ or f.channels != AUDIO_CHANNELS:
            raise ValueError(f"expected 16 kHz mono audio, got {f.samplerate} Hz x {f.channels}")
        if f.frames < end_sample:
            raise ValueError(f"audio has {f.frames} samples, window needs {end_sample}")
        f.seek(max(0, begin))
        data = f.read(end_sample - max(0, begin), dtype="float32", always_2d=False)
    pad = max(0, -begin)
    out = torch.zeros(num_samples, dtype=torch.float32)
    out[pad:] = torch.from_numpy(np.ascontiguousarray(data))
    return out, pad


# --------------------------------------------------------------------------------------------
# Manifest selection
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipFilter:
    """Which kept clips of the manifest to train on. ``None`` turns a check off.

    A clip whose score is null fails any check on that score (the stage did not run or failed).

    Attributes:
        min_lse_c: minimum SyncNet confidence LSE-C.
        max_lse_d: maximum SyncNet distance LSE-D.
        min_duration_s / max_duration_s: clip duration bounds in seconds.
        languages: allowed language codes (``language`` column), e.g. ("en", "zh").
        min_num_frames: minimum frames per clip; the dataset raises it to ``num_frames + 1``.
        max_abs_av_offset_frames: maximum |audio-video offset| in frames.
        min_asd_score: minimum Light-ASD active-speaker score (``asd_score``).
        keys: only these sample keys (e.g. a held-out validation set).
        exclude_keys: never these sample keys (e.g. the validation set, from the training stream).
    """

    min_lse_c: float | None = None
    max_lse_d: float | None = None
    min_duration_s: float | None = None
    max_duration_s: float | None = None
    languages: tuple[str, ...] | None = None
    min_num_frames: int | None = None
    max_abs_av_offset_frames: float | None = None
    min_asd_score: float | None = None
    keys: tuple[str, ...] | None = None
    exclude_keys: tuple[str, ...] | None = None

    def expression(self):
        """The filter as a ``pyarrow.compute.Expression`` on manifest columns (kept clips only)."""
        import pyarrow.compute as pc

        expr = (pc.field("status") == "kept") & pc.field("key").is_valid() & pc.field("shard").is_valid()
        if self.min_lse_c is not None:
            expr &= pc.field("lse_c") >= self.min_lse_c
        if self.max_lse_d is not None:
            expr &= pc.field("lse_d") <= self.max_lse_d
        if self.min_duration_s is not None:
            expr &= pc.field("duration_s") >= self.min_duration_s
        if self.max_duration_s is not None:
            expr &= pc.field("duration_s") <= self.max_duration_s
        if self.languages is not None:
            expr &= pc.field("language").isin(list(self.languages))
        if self.min_num_frames is not None:
            expr &= pc.field("num_frames") >= self.min_num_frames
        if self.max_abs_av_offset_frames is not None:
            expr &= pc.abs(pc.field("av_offset_frames")) <= self.max_abs_av_offset_frames
        if self.min_asd_score is not None:
            expr &= pc.field("asd_score") >= self.min_asd_score
        if self.keys is not None:
            expr &= pc.field("key").isin(list(self.keys))
        if self.exclude_keys:
            expr &= ~pc.field("key").isin(list(self.exclude_keys))
        return expr


def select_clips(
    manifest: str | os.PathLike,
    clip_filter: ClipFilter | None = None,
    storage_options: dict[str, Any] | None = None,
) -> dict[int, frozenset[str]]:
    """Read the Parquet manifest and return the selected clip keys per shard (no tar is opened).

    Args:
        manifest: path or fsspec URL of ``manifest.parquet``.
        clip_filter: selection; None keeps every ``status == "kept"`` clip.
        storage_options: fsspec options for remote manifests (e.g. S3 ``client_kwargs``).

    Returns:
        {shard index: keys of the selected clips in that shard}.

    Raises:
        FileNotFoundError: if the manifest does not exist.
        pyarrow.ArrowInvalid: if a filter column is missing.
    """
    import fsspec
    import pyarrow.parquet as pq

    clip_filter = clip_filter or ClipFilter()
    fs, path = fsspec.core.url_to_fs(os.fspath(manifest), **(storage_options or {}))
    table = pq.read_table(path, filesystem=fs, columns=None, filters=clip_filter.expression())
    selected: dict[int, set[str]] = {}
    for shard, key in zip(table.column("shard").to_pylist(), table.column("key").to_pylist()):
        selected.setdefault(int(shard), set()).add(key)
    return {s: frozenset(k) for s, k in sorted(selected.items())}


# --------------------------------------------------------------------------------------------
# URL opening through fsspec (registered as webdataset gopen handlers)
# --------------------------------------------------------------------------------------------


def _fsspec_gopen(url: str, mode: str = "rb", bufsize: int = 8192, *, storage_options=None, **kw):
    """webdataset gopen handler that opens ``url`` with fsspec (s3://, hf://, gs://, memory://...)."""
    import fsspec

    if mode[0] != "r":
        raise ValueError(f"{url}: only reading is supported")
    return fsspec.open(url, mode="rb", **(storage_options or {})).open()


def register_fsspec_scheme(scheme: str, storage_options: dict[str, Any] | None = None) -> None:
    """Make webdataset open ``scheme://`` URLs through fsspec with ``storage_options``.

    webdataset has no ``s3://`` scheme and opens ``hf://`` with curl; after this call
    ``webdataset.gopen`` (and so ``wds.WebDataset``) reads them with fsspec (s3fs,
    huggingface_hub's ``HfFileSystem``; token from the standard HF token chain). The registration
    is per process; :class:`ClipWindowDataset` repeats it in every DataLoader worker.

    Args:
        scheme: URL scheme without ``://`` (not "" or "file").
        storage_options: passed to ``fsspec.open`` (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).

    Raises:
        ValueError: for the local schemes.
    """
    if scheme in _LOCAL_SCHEMES or scheme == "pipe":
        raise ValueError(f"scheme {scheme!r} is handled by webdataset itself")
    importlib.import_module("webdataset.gopen").gopen_schemes[scheme] = functools.partial(_fsspec_gopen, storage_options=storage_options)


def expand_urls(urls: str | Sequence[str]) -> list[str]:
    """Expand a URL, a brace pattern (``dir/{00000..00127}.tar``) or a list of them to a list."""
    if isinstance(urls, (str, os.PathLike)):
        urls = [os.fspath(urls)]
    out: list[str] = []
    for u in urls:
        out.extend(wds.shardlists.expand_urls(os.fspath(u)))
    return out


# --------------------------------------------------------------------------------------------
# The dataset
# --------------------------------------------------------------------------------------------


class ClipWindowDataset(IterableDataset):
    """Stream :class:`ClipWindow` samples from curated WebDataset shards (webdataset pipeline).

    Pipeline per iteration (per DataLoader worker): shard list (shuffled with the same
    ``(seed, epoch)`` on every rank, or resampled with replacement for an endless stream) ->
    ``wds.split_by_node`` (DDP rank) -> ``wds.split_by_worker`` -> open with fsspec -> tar members ->
    samples -> manifest selection -> ``wds.shuffle`` buffer -> decode one window per clip.

    Args:
        urls: shard URLs: a list, one URL or a brace pattern; local paths or any fsspec URL
            (``s3://``, ``hf://datasets/ORG/NAME/shards/00000.tar``, ...).
        manifest: ``manifest.parquet`` path/URL; with it, clips are selected by ``clip_filter``
            and shards without a selected clip are never opened. None: every sample is used.
        clip_filter: selection on manifest columns (needs ``manifest``).
        num_frames: F, window length in frames (33 = 4*8+1).
        num_motion_frames: motion frames of a normal sample (5 Pro, 9 Lite).
        cold_start_prob: probability that a sample has a single motion frame.
        audio_context_s: audio context in seconds (8.0 -> 128000 samples).
        shuffle_buffer: samples (undecoded, a few MB each) in the shuffle buffer; 0 disables it.
        shuffle_shards: shuffle the shard order each epoch.
        resampled: draw shards with replacement forever (infinite iterator; no node split needed).
        seed: base seed; windows, shuffles and resampling are deterministic given
            (seed, epoch, rank, worker).
        rank / world_size: override the DDP rank (default: ``torch.distributed`` or RANK/WORLD_SIZE).
        storage_options: fsspec options for remote shards and manifest.
        dtype: dtype of ``frames`` and ``reference`` (float32; bfloat16/float16 halve memory).
            ``torch.uint8`` keeps the decoded values in [0, 255] (4x less memory and inter-process
            copying); convert on the GPU with :func:`to_unit_range`.
        decode_threads: PyAV decoder threads per worker.
        handler: webdataset error handler (``wds.reraise_exception``, ``wds.warn_and_continue``,
            ``wds.ignore_and_continue``), for shard read errors and undecodable samples alike.
            Whatever it decides, every skipped sample is counted once per ``(shard, key)`` in
            :attr:`skipped` / :attr:`skipped_by_shard` and reported with the next window's meta
            (``skipped_new``: ``[(shard_url, key, reason)]``; key None for a shard read error such as a
            truncated tar), so a trainer can log and count it (``data/skipped_samples``).

    Raises:
        ValueError: no URL, ``clip_filter`` without ``manifest``, or no selected clip
            (:class:`DataError`).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        manifest: str | os.PathLike | None = None,
        clip_filter: ClipFilter | None = None,
        *,
        num_frames: int = CHUNK_FRAMES,
        num_motion_frames: int = MOTION_FRAMES,
        cold_start_prob: float = 0.1,
        audio_context_s: float = AUDIO_CONTEXT_S,
        shuffle_buffer: int = 16,
        shuffle_shards: bool = True,
        resampled: bool = False,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        storage_options: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        decode_threads: int = 1,
        handler: Callable[[Exception], bool] = wds.reraise_exception,
    ) -> None:
        super().__init__()
        if num_frames < 1 or not 0 < num_motion_frames <= num_frames:
            raise ValueError(f"bad window: num_frames={num_frames}, num_motion_frames={num_motion_frames}")
        if not 0.0 <= cold_start_prob <= 1.0:
            raise ValueError(f"cold_start_prob must be in [0, 1], got {cold_start_prob}")
        if (rank is None) != (world_size is None):
            raise ValueError("give both rank and world_size, or neither")
        self.urls = expand_urls(urls)
        if not self.urls:
            raise ValueError("no shard URLs")
        self.num_frames = num_frames
        self.num_motion_frames = num_motion_frames
        self.cold_start_prob = cold_start_prob
        self.audio_samples = int(round(audio_context_s * SAMPLE_RATE_HZ))
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_shards = shuffle_shards
        self.resampled = resampled
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.storage_options = storage_options
        self.dtype = dtype
        self.decode_threads = decode_threads
        self.handler = handler
        self.epoch = 0
        self.next_index: dict[int, int] = {}
        self.skipped = 0  # distinct samples this process (worker) skipped: undecodable, incomplete, unreadable
        self.skipped_by_shard: dict[str, set[str | None]] = {}
        self._skipped_new: list[tuple[str, str | None, str]] = []
        self._current_url: str | None = None

        # Manifest selection: the clip set per shard, read once on the driver.
        self.selected: dict[int, frozenset[str]] | None = None
        self.keys: frozenset[str] | None = None
        if clip_filter is not None and manifest is None:
            raise ValueError("clip_filter needs a manifest")
        if manifest is not None:
            base = clip_filter or ClipFilter()
            min_frames = max(base.min_num_frames or 0, num_frames + 1)
            flt = replace(base, min_num_frames=min_frames)
            self.selected = select_clips(manifest, flt, storage_options)
            self.keys = frozenset().union(*self.selected.values()) if self.selected else frozenset()
            kept = [u for u in self.urls if shard_index(u) is None or shard_index(u) in self.selected]
            logger.info("manifest selects %d clips in %d of %d shards", len(self.keys), len(kept), len(self.urls))
            self.urls = kept
            if not self.keys or not self.urls:
                raise DataError(f"the manifest selects no clip in the given shards ({manifest}); "
                                "check data.clip_filter and data.num_frames")

    @property
    def num_clips(self) -> int | None:
        """Number of clips the manifest selects (None without a manifest)."""
        return None if self.keys is None else len(self.keys)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds shard order, shuffling and windows (call before each epoch).

        DataLoader workers get a copy of the dataset when an epoch's iterator starts, so this has no
        effect on ``persistent_workers=True`` loaders (use ``resampled=True`` with those).
        """
        self.epoch = int(epoch)

    # -- pipeline ------------------------------------------------------------------------------

    def _worker_info(self) -> tuple[int, int, int, int]:
        rank, world_size, _, _ = wds.utils.pytorch_worker_info()
        if self.rank is not None:
            rank, world_size = self.rank, self.world_size
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank, world_size, worker, num_workers

    def _split_by_node(self, src: Iterator[dict]) -> Iterator[dict]:
        if self.rank is None:
            yield from wds.split_by_node(src)
        else:
            yield from islice(src, self.rank, None, self.world_size)

    def _select_files(self, fname: str) -> bool:
        # Members of clips the manifest did not select are skipped without being read into memory.
        return self.keys is None or split_member(fname)[0] in self.keys

    def _keep(self, sample: dict) -> bool:
        key = sample["__key__"].rsplit("/", 1)[-1]
        if self.keys is not None and key not in self.keys:
            return False
        if MP4 in sample and WAV in sample:
            return True
        # A selected clip without its video or audio: a truncated shard cut it, or a bad write.
        self.record_skip(sample.get("__url__"), key, f"incomplete sample (no {MP4 if MP4 not in sample else WAV})")
        return False

    def record_skip(self, url: str | None, key: str | None, reason: str) -> bool:
        """Count a skipped sample once per ``(url, key)`` (key None: the shard's read error).

        Returns:
            True the first time.
        """
        url = str(url if url is not None else self._current_url)
        keys = self.skipped_by_shard.setdefault(url, set())
        if key in keys:
            return False
        keys.add(key)
        self.skipped += 1
        self._skipped_new.append((url, key, reason))
        return True

    def _track_url(self, src: Iterator[dict]) -> Iterator[dict]:
        # The shard being read, for read errors whose exception does not name it.
        for item in src:
            self._current_url = item.get("url")
            yield item

    def _read_error(self, exn: Exception) -> bool:
        url = next((a for a in reversed(getattr(exn, "args", ())) if isinstance(a, str) and a in self.urls), None)
        self.record_skip(url, None, one_line_reason(exn))
        return self.handler(exn)

    def pipeline(self) -> wds.DataPipeline:
        """The webdataset pipeline of raw samples (dicts of member bytes) for this worker/epoch."""
        rank, world_size, worker, num_workers = self._worker_info()
        for scheme in sorted({urlparse(u).scheme for u in self.urls}):
            if len(scheme) > 1 and scheme not in _LOCAL_SCHEMES + ("pipe",):
                register_fsspec_scheme(scheme, self.storage_options)
        stages: list[Any] = []
        if self.resampled:
            stages.append(
                wds.ResampledShards(
                    self.urls,
                    seed=self.seed,
                    deterministic=True,
                    worker_seed=functools.partial(wds.utils.make_seed, rank, worker),
                )
            )
            stages[0].epoch = self.epoch - 1  # ResampledShards increments before use
        else:
            urls = list(self.urls)
            if len(urls) < world_size * num_workers:
                warnings.warn(
                    f"{len(urls)} shards for {world_size} ranks x {num_workers} workers: some get no data "
                    "(use resampled=True or more shards)",
                    stacklevel=2,
                )
            if self.shuffle_shards:
                # Same permutation on every rank and worker, so the splits stay disjoint.
                random.Random(wds.utils.make_seed(self.seed, self.epoch)).shuffle(urls)
            stages += [wds.SimpleShardList(urls), self._split_by_node, wds.split_by_worker]
        stages.append(self._track_url)
        stages.append(wds.tarfile_to_samples(handler=self._read_error, select_files=self._select_files))
        stages.append(wds.select(self._keep))
        if self.shuffle_buffer > 0:
            rng = random.Random(wds.utils.make_seed(self.seed, self.epoch, rank, worker, 1))
            stages.append(wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng))
        return wds.DataPipeline(*stages)

    def set_position(self, epoch: int, next_index: dict[int, int] | None = None) -> None:
        """Resume the stream: epoch ``epoch``, and in each DataLoader worker ``w`` skip the raw
        samples before ``next_index[w]`` (the ``stream_index + 1`` of the last sample consumed from
        that worker, see :attr:`ClipWindow.meta`). Skipped samples are not decoded; windows are
        drawn per sample from ``(seed, epoch, rank, worker, index)``, so the resumed stream is the
        uninterrupted one. Needs the same ``num_workers`` as the run that recorded the position."""
        self.epoch = int(epoch)
        self.next_index = dict(next_index or {})

    def __iter__(self) -> Iterator[ClipWindow]:
        rank, _, worker, _ = self._worker_info()
        skip = self.next_index.get(worker, 0)
        for index, sample in enumerate(self.pipeline()):
            if index < skip:
                continue
            rng = random.Random(wds.utils.make_seed(self.seed, self.epoch, rank, worker, 2, index))
            try:
                window = self.decode_sample(sample, rng)
            except ShardContractError:  # the shards break the contract: no handler may skip that
                raise
            except Exception as exn:  # media errors: the handler decides
                self.record_skip(sample.get("__url__"), sample.get("__key__", "").rsplit("/", 1)[-1],
                                 one_line_reason(exn))
                exn.args = exn.args + (sample.get("__key__"), sample.get("__url__"))
                if self.handler(exn):
                    continue
                break
            new, self._skipped_new = self._skipped_new, []
            window.meta.update(stream_index=index, stream_worker=worker, epoch=self.epoch,
                               skipped_in_worker=self.skipped, skipped_new=new)
            yield window

    # -- decoding ------------------------------------------------------------------------------

    def window_geometry(self, clip_num_frames: int) -> tuple[int, int]:
        """``(window frames, audio samples)`` of a sample drawn from a clip of ``clip_num_frames``
        frames: ``(num_frames, audio_context_s * 16000)``. Subclasses with per-clip windows (the
        stage-2 multi-chunk windows, :class:`vividhead.training.trainers.distill.RolloutWindowDataset`)
        override it."""
        return self.num_frames, self.audio_samples

    def decode_sample(self, sample: dict[str, Any], rng: random.Random) -> ClipWindow:
        """Turn one raw WebDataset sample into a :class:`ClipWindow`.

        Args:
            sample: {"__key__", "__url__", "mp4": bytes, "wav": bytes, "json": bytes,
                optional "wav2vec.npy": bytes}.
            rng: draws the window (see :func:`plan_window`).

        Returns:
            The decoded window.

        Raises:
            ShardContractError: the ``<key>.json`` records another ``fps`` or ``sample_rate`` than
                the shard contract's (never skipped by ``handler``).
            ValueError: inconsistent clip (too short, audio shorter than 640 * N, wav2vec rows != N).
            av.FFmpegError: undecodable video.
        """
        meta = json.loads(sample[JSON]) if JSON in sample else {"key": sample["__key__"]}
        check_sample_contract(meta, sample.get("__key__", ""), sample.get("__url__"))
        n = meta.get("num_frames")
        if n is None:
            with av.open(io.BytesIO(sample[MP4])) as c:
                n = c.streams.video[0].frames
        num_frames, audio_samples = self.window_geometry(int(n))
        plan = plan_window(int(n), rng, num_frames, self.num_motion_frames, self.cold_start_prob)
        window = range(plan.start, plan.start + plan.num_frames)
        decoded = decode_frames(sample[MP4], [*window, plan.reference], threads=self.decode_threads)
        frames = _to_unit_range(np.stack([decoded[i] for i in window]), self.dtype)
        reference = _to_unit_range(decoded[plan.reference], self.dtype)
        audio, pad = read_audio_context(sample[WAV], SAMPLES_PER_FRAME * window.stop, audio_samples)
        wav2vec = None
        if WAV2VEC in sample:
            feats = np.load(io.BytesIO(sample[WAV2VEC]), allow_pickle=False)
            if feats.shape[0] != n:
                raise ValueError(f"wav2vec has {feats.shape[0]} rows, clip has {n} frames")
            wav2vec = torch.from_numpy(np.ascontiguousarray(feats[window.start : window.stop]))
        meta.update(
            window_start_frame=plan.start,
            window_num_frames=plan.num_frames,
            reference_frame=plan.reference,
            audio_pad_samples=pad,
            shard_url=sample.get("__url__"),
        )
        return ClipWindow(
            frames=frames,
            num_motion_frames=plan.num_motion_frames,
            reference=reference,
            audio=audio,
            wav2vec=wav2vec,
            meta=meta,
        )

    @classmethod
    def from_output_dir(cls, out: str, **kwargs: Any) -> ClipWindowDataset:
        """Dataset over every ``OUT/shards/*.tar`` of a curation output, selected by ``OUT/manifest.parquet``.

        Without the manifest every sample is used, with one warning (per folder and process); a
        ``clip_filter`` is then ignored (it filters manifest columns).

        Args:
            out: local path or fsspec URL of the curation output directory.
            **kwargs: passed to :class:`ClipWindowDataset` (``storage_options`` also used to list).

        Raises:
            NoShardsError: (a ``FileNotFoundError``) if there is no shard.
        """
        import fsspec

        fs, path = fsspec.core.url_to_fs(out, **(kwargs.get("storage_options") or {}))
        root = path.rstrip("/")
        shards = sorted(fs.glob(f"{root}/{SHARD_GLOB}"))
        if not shards:
            raise NoShardsError(f"no shards under {out}/{SHARD_GLOB}; point data.shards at the output folder "
                                "of `vividhead curate`")
        proto = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        urls = shards if proto in ("file", "local") else [fs.unstrip_protocol(s) for s in shards]
        manifest = f"{root}/{MANIFEST_FILE}"
        manifest_url = manifest if proto in ("file", "local") else fs.unstrip_protocol(manifest)
        if not fs.exists(manifest) and kwargs.get("manifest") is None:
            _warn_no_manifest(manifest_url, kwargs.get("clip_filter"))
            manifest_url = None
            kwargs.pop("clip_filter", None)
        return cls(urls, manifest=kwargs.pop("manifest", manifest_url), **kwargs)


#: Manifest URLs already warned about in this process (one warning each).
_NO_MANIFEST_WARNED: set[str] = set()


def _warn_no_manifest(manifest_url: str, clip_filter: ClipFilter | None) -> None:
    if manifest_url in _NO_MANIFEST_WARNED:
        return
    _NO_MANIFEST_WARNED.add(manifest_url)
    ignored = "" if clip_filter in (None, ClipFilter()) else " (data.clip_filter ignored: it filters manifest columns)"
    logger.warning("%s not found: training on every sample of the shards%s", manifest_url, ignored)


# --------------------------------------------------------------------------------------------
# Hugging Face datasets
# --------------------------------------------------------------------------------------------

def hf_features(data_files: str | Sequence[str], **kwargs: Any):
    """``datasets.Features`` for the shards that load without torchcodec.

    ``datasets``' WebDataset builder infers ``mp4`` as ``Video`` and ``wav`` as ``Audio``; encoding
    ``Audio`` needs torchcodec, and score keys that are null in the first samples are typed
    ``null``. This keeps ``mp4`` as ``Video(decode=False)`` ({"bytes", "path"}), ``wav`` as raw
    bytes and types every null JSON field as its manifest column
    (:data:`vividhead.shard_format.MANIFEST_SCHEMA`; float64 for keys outside the schema).

    Args:
        data_files: shard paths/URLs (or a glob) as for ``load_dataset("webdataset", data_files=...)``.
        **kwargs: passed to ``datasets.load_dataset`` (e.g. ``storage_options``).

    Returns:
        The features.
    """
    import datasets

    streamed = datasets.load_dataset("webdataset", data_files={"train": data_files}, split="train", streaming=True, **kwargs)
    feats = streamed.features
    for name, feat in list(feats.items()):
        if isinstance(feat, datasets.Audio):
            feats[name] = datasets.Value("binary")
        elif isinstance(feat, datasets.Video):
            feats[name] = datasets.Video(decode=False)
    if isinstance(feats.get(JSON), dict):
        for k, v in list(feats[JSON].items()):
            if isinstance(v, datasets.Value) and v.dtype == "null":
                if k in MANIFEST_SCHEMA.names:
                    column = pa.schema([MANIFEST_SCHEMA.field(k)])
                    feats[JSON][k] = datasets.Features.from_arrow_schema(column)[k]
                else:
                    feats[JSON][k] = datasets.Value("float64")
    return feats


def load_hf_dataset(data_files: str | Sequence[str], split: str = "train", **kwargs: Any):
    """Load the shards with ``datasets.load_dataset("webdataset", data_files=...)``.

    Each row has ``__key__``, ``__url__``, ``mp4`` ({"bytes", "path"}), ``wav`` (bytes), ``json``
    (the metadata struct) and ``wav2vec.npy`` (nested lists, float16) when present.

    Args:
        data_files: shard paths/URLs or a glob.
        split: split name to return.
        **kwargs: passed to ``datasets.load_dataset`` (``cache_dir``, ``storage_options``, ...).

    Returns:
        ``datasets.Dataset``.
    """
    import datasets

    storage = {k: kwargs[k] for k in ("storage_options",) if k in kwargs}
    feats = hf_features(data_files, **storage)
    return datasets.load_dataset("webdataset", data_files={split: data_files}, split=split, features=feats, **kwargs)


__all__ = [
    "ClipFilter",
    "ClipWindow",
    "ClipWindowBatch",
    "ClipWindowDataset",
    "WindowPlan",
    "collate_clip_windows",
    "decode_frames",
    "expand_urls",
    "hf_features",
    "load_hf_dataset",
    "plan_window",
    "read_audio_context",
    "register_fsspec_scheme",
    "select_clips",
    "to_unit_range",
]

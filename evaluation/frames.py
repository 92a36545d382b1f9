"""Videos for evaluation: decode to 25 fps frames and 16 kHz audio, list and pair inputs, sample frames.

Every metric sees a video as :class:`Video`: uint8 RGB frames at :data:`FPS` and float32 mono audio
at :data:`SAMPLE_RATE`. Inputs are either a folder of MP4s (audio from the MP4's own track or from a
``<name>.wav`` beside it) or curated WebDataset shards (``<key>.mp4`` + ``<key>.wav``, read through
:class:`vividhead.training.data.ClipWindowDataset`'s pipeline). Two inputs are paired by name (the
file stem or the shard sample key).

Frame-rate conversion: a video that is not 25 fps (or has a variable rate) is resampled by time
stamp: output frame ``k`` (time ``k / 25`` s) is the last input frame that starts at or before
``(k + 0.5) / 25`` s, as FFmpeg's ``fps`` filter does with its default rounding; the output has
``round(duration * 25)`` frames. Audio is decoded to mono float32 and resampled to 16 kHz by
FFmpeg's resampler (PyAV); it is assumed to start with the first frame.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# The frame rate (FPS), audio sample rate in Hz (SAMPLE_RATE) and audio samples per video frame
# every metric works at are the shard contract's (the SyncNet / Light-ASD protocols, our curated clips).
from vividhead.shard_format import FPS, SAMPLES_PER_FRAME
from vividhead.shard_format import SAMPLE_RATE_HZ as SAMPLE_RATE


@dataclass
class Video:
    """A decoded video.

    Attributes:
        frames: uint8 [N, H, W, 3] RGB at :data:`FPS`.
        audio: float32 [S] mono in [-1, 1] at :data:`SAMPLE_RATE`, or None when there is no audio.
        source_fps: the input's average frame rate before conversion (frames per second).
    """

    frames: np.ndarray
    audio: np.ndarray | None
    source_fps: float

    @property
    def duration_s(self) -> float:
        """Length in seconds at the protocol's frame rate (``FPS``)."""
        return len(self.frames) / FPS


def _cfr_indices(starts: np.ndarray, fps: int = FPS) -> np.ndarray:
    """Input frame index of each output frame of a ``fps`` CFR stream (see the module docstring).

    Args:
        starts: float64 [N] start time of each input frame in seconds (non-decreasing).

    Returns:
        int64 [M] indices into the input frames, ``M = round(duration * fps)``; the duration is the
        last start plus the median frame interval.
    """
    if len(starts) == 0:
        return np.zeros(0, np.int64)
    step = float(np.median(np.diff(starts))) if len(starts) > 1 else 1.0 / fps
    duration = starts[-1] - starts[0] + step
    m = max(1, int(round(duration * fps)))
    t = starts[0] + (np.arange(m) + 0.5) / fps
    return np.clip(np.searchsorted(starts, t + 1e-9, side="right") - 1, 0, len(starts) - 1)


def decode_audio(src: str | Path | bytes, sample_rate: int = SAMPLE_RATE) -> np.ndarray | None:
    """Decode the first audio stream of a media file (MP4, WAV, ...) to mono float32.

    Args:
        src: a path or the file's bytes.
        sample_rate: output rate in Hz.

    Returns:
        float32 [S] in [-1, 1], or None when the file has no audio stream.

    Raises:
        av.FFmpegError: the file cannot be read.
    """
    import av

    data = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src)
    with av.open(data) as container:
        if not container.streams.audio:
            return None
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks = []
        for frame in container.decode(audio=0):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    return np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)


def read_video(src: str | Path | bytes, audio: str | Path | bytes | None = None, max_frames: int | None = None) -> Video:
    """Decode a video to 25 fps RGB frames and 16 kHz mono audio.

    Args:
        src: a video file path or its bytes.
        audio: a separate audio file (path or bytes, e.g. the shard's WAV); None reads ``src``'s track.
        max_frames: keep at most this many output frames (None: all).

    Returns:
        :class:`Video` (memory: N * H * W * 3 bytes for the frames).

    Raises:
        av.FFmpegError: unreadable file.
        ValueError: no video frame.
    """
    import av

    data = io.BytesIO(src) if isinstance(src, (bytes, bytearray)) else str(src)
    frames, starts = [], []
    with av.open(data) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base) if stream.time_base else 1.0 / FPS
        for i, frame in enumerate(container.decode(stream)):
            starts.append(frame.pts * tb if frame.pts is not None else i / FPS)
            frames.append(frame.to_ndarray(format="rgb24"))
    if not frames:
        raise ValueError(f"{src if not isinstance(src, (bytes, bytearray)) else 'video bytes'}: no video frame")
    t = np.asarray(starts, np.float64)
    order = np.argsort(t, kind="stable")
    t = t[order]
    source_fps = (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 and t[-1] > t[0] else float(FPS)
    idx = order[_cfr_indices(t)]
    if max_frames is not None:
        idx = idx[:max_frames]
    out = np.stack([frames[i] for i in idx])
    sound = decode_audio(audio if audio is not None else src)
    return Video(out, sound, float(source_fps))


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """float32 [-1, 1] samples -> int16 (the scale SyncNet's and Light-ASD's MFCCs are computed on)."""
    return np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def fit_audio(audio: np.ndarray | None, num_frames: int) -> np.ndarray:
    """Audio cut or zero-padded to exactly ``640 * num_frames`` samples (silence when None)."""
    n = SAMPLES_PER_FRAME * num_frames
    if audio is None:
        return np.zeros(n, np.float32)
    return np.pad(audio[:n].astype(np.float32), (0, max(0, n - len(audio))))


# ---------------------------------------------------------------------------------------------
# Inputs: folders of MP4s or shards, paired by name
# ---------------------------------------------------------------------------------------------

#: A named lazy video: call it to decode.
Loader = Callable[[], Video]


def is_shard_source(src: str) -> bool:
    """True for shard URLs (``*.tar``, brace patterns, comma lists) or a curation output folder."""
    s = str(src)
    return s.endswith(".tar") or "{" in s or ".tar," in s or (Path(s).is_dir() and (Path(s) / "shards").is_dir())


def list_folder(folder: str | Path) -> dict[str, Loader]:
    """``{stem: loader}`` for every ``*.mp4`` in a folder; a ``<stem>.wav`` beside it is its audio.

    Raises:
        FileNotFoundError: not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: not a folder of MP4s")
    out: dict[str, Loader] = {}
    for p in sorted(folder.glob("*.mp4")):
        wav = p.with_suffix(".wav")
        out[p.stem] = (lambda p=p, wav=wav: read_video(p, wav if wav.is_file() else None))
    return out


def iter_shard_samples(urls: str | list[str], storage_options: dict | None = None) -> Iterator[dict]:
    """Raw samples (``{"__key__", "mp4", "wav", "json", ...}`` bytes) of curated shards, in shard order.

    Args:
        urls: shard URL(s) or brace pattern, or a curation output folder (its ``shards/*.tar``).
        storage_options: fsspec options for remote shards.
    """
    from vividhead.training.data import ClipWindowDataset

    src = str(urls) if not isinstance(urls, list) else urls
    if isinstance(src, str) and Path(src).is_dir():
        src = sorted(str(p) for p in (Path(src) / "shards").glob("*.tar"))
    elif isinstance(src, str) and "," in src and "{" not in src:
        src = src.split(",")
    ds = ClipWindowDataset(src, shuffle_buffer=0, shuffle_shards=False, rank=0, world_size=1,
                           storage_options=storage_options)
    yield from ds.pipeline()


def list_shards(urls: str | list[str], storage_options: dict | None = None) -> dict[str, Loader]:
    """``{key: loader}`` for every sample of curated shards (the bytes are held in memory)."""
    out: dict[str, Loader] = {}
    for sample in iter_shard_samples(urls, storage_options):
        key = sample["__key__"].rsplit("/", 1)[-1]
        mp4, wav = sample["mp4"], sample.get("wav")
        out[key] = (lambda mp4=mp4, wav=wav: read_video(mp4, wav))
    return out


def list_videos(src: str | Path, storage_options: dict | None = None) -> dict[str, Loader]:
    """:func:`list_shards` or :func:`list_folder`, whichever ``src`` is."""
    return list_shards(str(src), storage_options) if is_shard_source(str(src)) else list_folder(src)


def pair_names(generated: dict[str, Loader], real: dict[str, Loader]) -> tuple[list[str], list[str], list[str]]:
    """(names in both, names only generated, names only real), each sorted."""
    g, r = set(generated), set(real)
    return sorted(g & r), sorted(g - r), sorted(r - g)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def fid_frame_indices(num_frames: int, every: int = 1) -> np.ndarray:
    """Frames of one video that enter FID/KID: ``0, every, 2 * every, ...`` (int64 [K])."""
    if every < 1:
        raise ValueError("every must be >= 1")
    return np.arange(0, num_frames, every, dtype=np.int64)


def clip_starts(num_frames: int, clip_len: int = 16, stride: int | None = None) -> np.ndarray:
    """Start frames of the FVD clips of one video: ``0, stride, 2 * stride, ...`` while a whole clip
    of ``clip_len`` frames fits (``stride`` defaults to ``clip_len``: non-overlapping). int64 [K]."""
    stride = stride or clip_len
    if num_frames < clip_len:
        return np.zeros(0, np.int64)
    return np.arange(0, num_frames - clip_len + 1, stride, dtype=np.int64)

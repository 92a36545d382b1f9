"""Media I/O for inference: read a reference image and a speech file, write/encode H.264 MP4
(PyAV, which bundles FFmpeg with libx264 and aac)."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vividhead.shard_format import SAMPLE_RATE_HZ


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as uint8 RGB ``[H, W, 3]``.

    Raises:
        FileNotFoundError: missing file.
    """
    from PIL import Image

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(p)
    with Image.open(p) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def read_audio(path: str | Path, sample_rate_hz: int = SAMPLE_RATE_HZ) -> np.ndarray:
    """Read a speech file as mono float32 ``[N]`` at ``sample_rate_hz``, as the released FlashHead
    code does (``librosa.load(path, sr=16000, mono=True)``): any sample rate (resampled with soxr's
    high-quality filter), any channel count (averaged), and every format libsndfile reads (WAV, FLAC,
    OGG, MP3 with libsndfile >= 1.1), else librosa's audioread fallback.

    Returns:
        float32 ``[N]``, nominally in [-1, 1]; ``N = ceil(frames * sample_rate_hz / file_rate)``.

    Raises:
        FileNotFoundError: missing file.
        ValueError: unreadable or empty audio (one line naming the file).
    """
    import librosa

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(p)
    try:
        mono, _ = librosa.load(str(p), sr=sample_rate_hz, mono=True, dtype=np.float32)
    except Exception as exc:  # soundfile / audioread errors differ by backend and format
        raise ValueError(f"{p}: cannot read audio ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from exc
    if mono.size == 0:
        raise ValueError(f"{p}: no audio samples")
    return np.ascontiguousarray(mono, dtype=np.float32)


class Mp4Writer:
    """Incremental H.264 (+ optional AAC) MP4 writer.

    Args:
        target: path or binary file object.
        fps: frame rate.
        width, height: frame size (even numbers for yuv420p).
        audio: optional mono float32 ``[N]`` at ``sample_rate_hz``, muxed at ``close()``.
        crf: x264 quality.
    """

    def __init__(self, target, fps: int, width: int, height: int, audio: np.ndarray | None = None,
                 sample_rate_hz: int = SAMPLE_RATE_HZ, crf: int = 18) -> None:
        self.container = av.open(target, mode="w", format="mp4")
        self.video = self.container.add_stream("libx264", rate=fps)
        self.video.width, self.video.height, self.video.pix_fmt = width, height, "yuv420p"
        self.video.options = {"crf": str(crf), "preset": "veryfast", "bf": "0"}
        self.audio_data = audio
        self.sample_rate_hz = sample_rate_hz
        self.audio = None
        if audio is not None:
            self.audio = self.container.add_stream("aac", rate=sample_rate_hz)
            self.audio.layout = "mono"
        self.frames = 0
        self.fps = fps

    def write(self, frames: np.ndarray) -> None:
        """Append uint8 ``[N, H, W, 3]`` RGB frames."""
        for f in frames:
            for packet in self.video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                self.container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        """Flush encoders, mux the audio (trimmed to the video duration) and close."""
        for packet in self.video.encode():
            self.container.mux(packet)
        if self.audio is not None:
            n = min(len(self.audio_data), int(round(self.frames / self.fps * self.sample_rate_hz)))
            pcm = self.audio_data[:n]
            step = 1024
            for i in range(0, n, step):
                block = pcm[i : i + step].astype(np.float32)[None]
                frame = av.AudioFrame.from_ndarray(block, format="flt", layout="mono")
                frame.sample_rate = self.sample_rate_hz
                frame.pts = i
                frame.time_base = Fraction(1, self.sample_rate_hz)
                for packet in self.audio.encode(frame):
                    self.container.mux(packet)
            for packet in self.audio.encode():
                self.container.mux(packet)
        self.container.close()


def encode_mp4_bytes(frames: np.ndarray, fps: int) -> bytes:
    """Encode uint8 ``[N, H, W, 3]`` frames as a standalone H.264 MP4 (one streamed chunk)."""
    buf = io.BytesIO()
    w = Mp4Writer(buf, fps, frames.shape[2], frames.shape[1])
    w.write(frames)
    w.close()
    return buf.getvalue()


def count_video_frames(data: bytes | str | Path) -> int:
    """Decode an MP4 (bytes or path) and count its video frames."""
    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else str(data)
    with av.open(src) as c:
        return sum(1 for _ in c.decode(video=0))


def write_video(path: str | Path, video, fps: int, audio: np.ndarray | None = None,
                sample_rate_hz: int = SAMPLE_RATE_HZ) -> Path:
    """Write a decoded clip as an H.264 MP4 (with AAC audio when ``audio`` is given), creating the folder.

    Args:
        video: float ``[3, F, H, W]`` in [-1, 1] (a VAE decode), any device.
        fps: frame rate.
        audio: optional mono float32 ``[N]`` in [-1, 1] at ``sample_rate_hz`` (the clip's audio).

    Returns:
        ``path``.
    """
    frames = ((video.float() + 1) * 127.5).round().clamp(0, 255).to("cpu").byte().permute(1, 2, 3, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if audio is not None:
        audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    writer = Mp4Writer(str(path), fps, frames.shape[2], frames.shape[1], audio=audio, sample_rate_hz=sample_rate_hz)
    try:
        writer.write(frames)
    finally:
        writer.close()
    return path


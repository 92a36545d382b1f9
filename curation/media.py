"""FFmpeg, ffprobe and PyAV helpers shared by the stages.

Every external call has a timeout and runs without a shell (arguments as a list). Failures raise
:class:`vividhead.curation.stage.MediaError` with a reason code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Optional, Sequence

import av
import numpy as np

from vividhead.errors import MediaError

if TYPE_CHECKING:
    from vividhead.curation.storage import RetryPolicy

FFMPEG = os.environ.get("VIVIDHEAD_FFMPEG", "ffmpeg")
FFPROBE = os.environ.get("VIVIDHEAD_FFPROBE", "ffprobe")


def run_tool(args: Sequence[str], timeout_s: float, reason: str = "ffmpeg_failed") -> bytes:
    """Run an FFmpeg-family command (no shell) and return its stdout.

    Raises:
        MediaError: ``<tool>_timeout`` when it runs past ``timeout_s`` seconds (the process is
            killed), ``reason`` when it exits non-zero (detail: last stderr line).
    """
    tool = Path(args[0]).name
    try:
        proc = subprocess.run(list(args), capture_output=True, timeout=timeout_s, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise MediaError(f"{tool}_timeout", f"{tool} ran over {timeout_s:g} s") from exc
    except FileNotFoundError as exc:
        raise RuntimeError(f"{tool} is not installed (apt-get install ffmpeg)") from exc
    if proc.returncode != 0:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        raise MediaError(reason, lines[-1][:300] if lines else f"exit code {proc.returncode}")
    return proc.stdout


def ffmpeg_args(graph) -> list[str]:
    """The argument list of an ``ffmpeg-python`` graph for :func:`run_tool`, with this module's
    FFmpeg binary and the global flags first (no stdin, errors only, overwrite)."""
    args = graph.compile(cmd=FFMPEG)
    return [args[0], "-nostdin", "-v", "error", "-y", *args[1:]]


def frame_at(src: str | Path, start_s: float, fps: float, timeout_s: float = 60.0) -> np.ndarray:
    """The first frame of the clip that starts at ``start_s`` seconds once resampled to ``fps``:
    the frame :func:`vividhead.curation.stages.normalize.normalize_clip` makes frame 0 (same input
    seek, same ``fps`` filter), display-rotated as FFmpeg decodes it.

    One decoder thread (frame threading would decode one frame per thread before returning the
    first) and an uncompressed PPM on the pipe (PNG's compression cost more than the decode; the
    pixels are the same): 0.64 of the CPU time of a threaded decode to PNG on the fixtures
    (``benchmarks/curation_levers.py``).

    Returns:
        uint8 [H, W, 3] RGB.

    Raises:
        MediaError: ``decode_failed`` (no frame at that time), ``ffmpeg_failed``, ``ffmpeg_timeout``.
    """
    import cv2
    import ffmpeg

    graph = (ffmpeg.input(str(src), ss=f"{start_s:.6f}", threads=1).video.filter("fps", fps=f"{fps:g}")
             .output("pipe:", vframes=1, format="image2pipe", vcodec="ppm", pix_fmt="rgb24"))
    image = run_tool(ffmpeg_args(graph), timeout_s)
    frame = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR) if image else None
    if frame is None:
        raise MediaError("decode_failed", f"no video frame at {start_s:.3f} s")
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


def ffprobe(path: str | Path, timeout_s: float = 60.0) -> dict:
    """ffprobe ``path`` and return its JSON (``format`` and ``streams``).

    Raises:
        MediaError: ``unreadable`` when ffprobe cannot parse the file, ``ffprobe_timeout``.
    """
    out = run_tool(
        [FFPROBE, "-v", "error", "-print_format", "json", "-show_format", "-show_streams", str(path)],
        timeout_s,
        reason="unreadable",
    )
    return json.loads(out or b"{}")


def file_md5(path: str | Path, chunk_bytes: int = 8 << 20) -> str:
    """Hex MD5 of a file's bytes, read in chunks."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            h.update(chunk)
    return h.hexdigest()


def is_remote(url: str) -> bool:
    """True for ``s3://``, ``http(s)://`` and other fsspec URLs (``file://`` is local)."""
    return "://" in url and not url.startswith("file://")


def local_path_of(url: str) -> str:
    """Strip ``file://`` from a local URL."""
    return url[len("file://") :] if url.startswith("file://") else url


def fetch_remote(
    url: str,
    cache_dir: str | Path,
    max_bytes: int,
    timeout_s: float,
    storage_options: Optional[dict] = None,
    retry: Optional[RetryPolicy] = None,
) -> Path:
    """Download ``url`` with fsspec into ``cache_dir`` (node-local), once; return the local path.

    The download goes to a temp file renamed on success, so a cached file is always complete.
    ``http(s)`` is read as one streamed GET (no range requests); the ``Content-Length`` is checked
    before the body when the server sends one. Transient errors (connection reset, timeout, HTTP
    429/5xx, S3 throttling) restart the download with exponential backoff (``retry``, default
    :data:`vividhead.curation.storage.DEFAULT_RETRY`) while ``timeout_s`` allows.

    Args:
        max_bytes: size limit in bytes.
        timeout_s: limit in seconds for the whole download, retries and waits included.

    Raises:
        MediaError: ``download_failed`` (not found, permission, HTTP 4xx, bad URL),
            ``storage_unavailable`` (transient errors on every attempt), ``too_large`` (over
            ``max_bytes``), ``download_timeout`` (over ``timeout_s`` seconds).
    """
    from vividhead.curation.storage import DEFAULT_RETRY, describe, is_transient, options_for

    retry = retry or DEFAULT_RETRY
    name = hashlib.sha256(url.encode()).hexdigest()[:32] + _safe_suffix(url)
    dest = Path(cache_dir) / "inputs" / name
    if dest.exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    options = options_for(url, storage_options)
    is_http = url.startswith(("http://", "https://"))
    if is_http:
        import aiohttp

        client_kwargs = dict(options.get("client_kwargs") or {})
        client_kwargs.setdefault("timeout", aiohttp.ClientTimeout(total=timeout_s, sock_read=timeout_s))
        options["client_kwargs"] = client_kwargs
    deadline = time.monotonic() + timeout_s
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".part-")
    os.close(fd)
    try:
        for attempt in range(1, retry.attempts + 1):
            try:
                _download(url, tmp, options, max_bytes, deadline, timeout_s)
                break
            except MediaError:
                raise
            except Exception as exc:  # fsspec/aiohttp/botocore raise many types for one cause
                if time.monotonic() >= deadline:
                    raise MediaError("download_timeout", f"over {timeout_s:g} s ({describe(exc)})"[:300]) from exc
                if not is_transient(exc):
                    raise MediaError("download_failed", describe(exc)) from exc
                if attempt >= retry.attempts:
                    raise MediaError("storage_unavailable", f"{retry.attempts} attempts: {describe(exc)}"[:300]) from exc
                delay = min(retry.delay_s(attempt), max(0.0, deadline - time.monotonic()))
                time.sleep(delay)
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return dest


def _safe_suffix(url: str) -> str:
    """The URL's file extension if it is short and plain (``.mp4``), else ``""``."""
    suffix = Path(url.split("?")[0].split("#")[0]).suffix[:8]
    return suffix if suffix[1:].isalnum() else ""


def _download(url: str, tmp: str, options: dict, max_bytes: int, deadline: float, timeout_s: float) -> None:
    """One download attempt of ``url`` into ``tmp`` (truncated first).

    Raises:
        MediaError: ``too_large``, ``download_timeout``; other exceptions as fsspec raises them.
    """
    import fsspec

    fs, path = fsspec.core.url_to_fs(url, **options)
    # http(s): a streamed GET; ``size`` given so fsspec skips its HEAD/GET size probe (one request
    # per attempt; the stream file does not use it).
    extra = {"block_size": 0, "size": 1} if url.startswith(("http://", "https://")) else {}
    with open(tmp, "wb") as out, fs.open(path, "rb", **extra) as src:
        headers = getattr(getattr(src, "r", None), "headers", None) or {}
        length = headers.get("Content-Length")
        if length and length.isdigit() and int(length) > max_bytes:
            raise MediaError("too_large", f"Content-Length {length} > {max_bytes} bytes")
        total = 0
        while chunk := src.read(1 << 20):
            total += len(chunk)
            if total > max_bytes:
                raise MediaError("too_large", f"over {max_bytes} bytes")
            if time.monotonic() > deadline:
                raise MediaError("download_timeout", f"over {timeout_s:g} s")
            out.write(chunk)


@contextlib.contextmanager
def temp_dir(prefix: str = "vividhead-") -> Iterator[Path]:
    """A temporary directory removed on exit, whatever happens."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _open(video: bytes | str | Path):
    try:
        return av.open(io.BytesIO(video) if isinstance(video, (bytes, bytearray)) else str(video))
    except av.error.FFmpegError as exc:
        raise MediaError("decode_failed", str(exc)[:300]) from exc


def first_frame(video: bytes | str | Path) -> np.ndarray:
    """Decode the first video frame.

    Args:
        video: encoded video bytes or a path.

    Returns:
        frame: uint8 [H, W, 3] RGB.

    Raises:
        MediaError: ``decode_failed``.
    """
    with contextlib.closing(_open(video)) as container:
        try:
            for frame in container.decode(video=0):
                return frame.to_ndarray(format="rgb24")
        except av.error.FFmpegError as exc:
            raise MediaError("decode_failed", str(exc)[:300]) from exc
    raise MediaError("decode_failed", "no video frame")


def iter_frames(
    video: bytes | str | Path,
    every_n: int = 1,
    size: Optional[tuple[int, int]] = None,
    fmt: str = "rgb24",
) -> Iterator[tuple[int, np.ndarray]]:
    """Decode every ``every_n``-th frame, optionally resized by FFmpeg's scaler.

    Args:
        video: encoded video bytes or a path.
        every_n: keep frames 0, n, 2n, ... (frame indices in decode order).
        size: (width, height) in pixels to scale to, or None for the native size.
        fmt: ``rgb24`` (uint8 [H, W, 3]) or ``gray`` (uint8 [H, W]).

    Yields:
        (frame index, frame array).

    Raises:
        MediaError: ``decode_failed``.
    """
    kwargs = {"width": size[0], "height": size[1]} if size else {}
    with contextlib.closing(_open(video)) as container:
        try:
            for i, frame in enumerate(container.decode(video=0)):
                if i % every_n == 0:
                    yield i, frame.to_ndarray(format=fmt, **kwargs)
        except av.error.FFmpegError as exc:
            raise MediaError("decode_failed", str(exc)[:300]) from exc


def count_video_frames(path: str | Path) -> int:
    """Number of packets of the first video stream (= frames for H.264 without B-frame
    reordering issues), read by PyAV's demuxer in this process (no decode, no ffprobe process:
    the number ffprobe's ``-count_packets`` gives).

    Raises:
        MediaError: ``unreadable`` when the container cannot be opened or demuxed.
    """
    try:
        with contextlib.closing(av.open(str(path))) as container:
            if not container.streams.video:
                return 0
            return sum(1 for packet in container.demux(video=0) if packet.size)
    except av.error.FFmpegError as exc:
        raise MediaError("unreadable", str(exc)[:300]) from exc

"""probe: ffprobe every input, hash its bytes, and reject unusable files.

Reasons: ``not_found``, ``download_failed``, ``storage_unavailable`` (transient errors on every
retry), ``download_timeout``, ``too_large``, ``unreadable``,
``ffprobe_timeout``, ``no_video``, ``no_audio``, ``zero_duration``, ``too_short``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vividhead.config import bounded
from vividhead.curation.media import fetch_remote, ffprobe, file_md5, is_remote, local_path_of
from vividhead.curation.records import Row
from vividhead.curation.stage import Stage, StageConfig
from vividhead.errors import MediaError


@dataclass(frozen=True)
class ProbeConfig(StageConfig):
    """ffprobe every input. Durations in seconds, sizes in bytes."""

    min_duration_s: float = bounded(1.0, ">= 0")
    require_audio: bool = True
    timeout_s: float = bounded(60.0, "> 0")
    download_timeout_s: float = 600.0
    max_download_bytes: int = bounded(20 * 1024**3, "> 0")


@dataclass(frozen=True)
class ProbeResult:
    """What ffprobe says about one input.

    Attributes:
        duration_s: container duration in seconds.
        width / height: first video stream's size in pixels.
        fps: average frame rate of the first video stream (frames per second).
        has_audio: an audio stream exists.
        md5: hex MD5 of the file bytes.
    """

    duration_s: float
    width: int
    height: int
    fps: float
    has_audio: bool
    md5: str


def _rate(text: Optional[str]) -> float:
    if not text or text in ("0/0", "0"):
        return 0.0
    num, _, den = text.partition("/")
    return float(num) / float(den or 1)


def probe_media(path: str | Path, cfg: ProbeConfig) -> ProbeResult:
    """Probe a local media file.

    Raises:
        MediaError: ``not_found``, ``unreadable``, ``ffprobe_timeout``, ``no_video``, ``no_audio``
            (when ``cfg.require_audio``), ``zero_duration``, ``too_short`` (under ``cfg.min_duration_s``).
    """
    # Any existing path is an input, not only regular files: a FIFO or device that blocks is cut
    # by ffprobe's timeout (``ffprobe_timeout``) instead of stalling the job.
    if not os.path.exists(path) or os.path.isdir(path):
        raise MediaError("not_found", f"no such file: {Path(path).name}")
    info = ffprobe(path, cfg.timeout_s)
    streams = info.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video" and s.get("disposition", {}).get("attached_pic", 0) == 0), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    if video is None:
        raise MediaError("no_video", "no video stream")
    if audio is None and cfg.require_audio:
        raise MediaError("no_audio", "no audio stream")
    duration = float(info.get("format", {}).get("duration") or video.get("duration") or 0.0)
    if duration <= 0:
        raise MediaError("zero_duration", "duration is zero or unknown")
    if duration < cfg.min_duration_s:
        raise MediaError("too_short", f"{duration:.2f} s < {cfg.min_duration_s:g} s")
    fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
    return ProbeResult(
        duration_s=duration,
        width=int(video.get("width") or 0),
        height=int(video.get("height") or 0),
        fps=fps,
        has_audio=audio is not None,
        md5=file_md5(path),
    )


class ProbeStage(Stage):
    """Fetches remote inputs into the node-local cache and probes them (one row per input)."""

    name = "probe"
    config_class = ProbeConfig
    writes_columns = ("md5", "source_duration_s", "source_width", "source_height", "source_fps")
    required = True
    funnel_units = ("input", "input")

    def __init__(self, cfg: ProbeConfig, cache_dir: str, storage_options: Optional[dict] = None) -> None:
        super().__init__(cfg)
        self.cache_dir = cache_dir
        self.storage_options = storage_options or {}

    @classmethod
    def from_config(cls, cfg) -> ProbeStage:
        cache_dir = cfg.run.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "vividhead")
        return cls(cfg.probe, cache_dir, cfg.run.storage_options)

    def process(self, row: Row) -> list[Row]:
        url = row["url"]
        if is_remote(url):
            path = fetch_remote(url, self.cache_dir, self.cfg.max_download_bytes, self.cfg.download_timeout_s, self.storage_options)
        else:
            path = Path(local_path_of(url))
        result = probe_media(path, self.cfg)
        row.update(
            local_path=str(path),
            md5=result.md5,
            source_duration_s=result.duration_s,
            source_width=result.width,
            source_height=result.height,
            source_fps=result.fps,
        )
        return [row]

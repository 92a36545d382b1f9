"""normalize: the clip's one encode: CFR H.264 at the shard contract's frame size, and mono PCM (FlashHead 2.1.1-2.1.2).

One FFmpeg pass (a filter graph built with ``ffmpeg-python``, run through
:func:`vividhead.curation.media.run_tool` for its timeout) cuts the clip out of the source, resamples
it to ``fps`` constant frame rate, applies the face stage's crop (black padding where the square
leaves the frame), scales it to ``out_size_px`` square and encodes it, and writes the audio as mono
PCM at ``sample_rate_hz``. Without a crop (face stage off) the clip keeps the source resolution.

Audio and video are sample-accurately aligned: the WAV holds exactly
``num_frames * sample_rate_hz / fps`` samples (:data:`vividhead.shard_format.SAMPLES_PER_FRAME` per
frame at the defaults, which are the contract's ``FPS`` and ``SAMPLE_RATE_HZ``), zero-padded or
trimmed at the end. Digital silence (peak below ``silence_peak_dbfs``) is rejected ``silent_audio``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import soundfile as sf

from vividhead.curation.media import count_video_frames, ffmpeg_args, run_tool, temp_dir
from vividhead.curation.records import Row
from vividhead.curation.stage import Stage, StageConfig, check
from vividhead.errors import MediaError
from vividhead.shard_format import AUDIO_CHANNELS, AUDIO_SUBTYPE, FPS, FRAME_SIZE_PX, SAMPLE_RATE_HZ

if TYPE_CHECKING:
    from vividhead.curation.stages.face import CropBox


@dataclass(frozen=True)
class NormalizeConfig(StageConfig):
    """The clip's one encode (FlashHead sections 2.1.1 and 2.1.2).

    Attributes:
        fps: output frame rate, frames per second (constant).
        sample_rate_hz: output audio rate; a whole multiple of ``fps`` (sample-accurate alignment).
        out_size_px: side of the square output when the face stage planned a crop, in pixels.
        crf, preset: libx264 quality and speed.
        keyframe_interval_frames: H.264 GOP of the output clip (25 = one key frame per second, so
            training loaders seek cheaply; docs/benchmarks.md).
        reject_silent_audio, silence_peak_dbfs: reject ``silent_audio`` below this peak level.
        timeout_s: limit for the FFmpeg process, seconds.
    """

    fps: float = float(FPS)
    sample_rate_hz: int = SAMPLE_RATE_HZ
    out_size_px: int = FRAME_SIZE_PX
    crf: int = 18
    preset: str = "veryfast"
    keyframe_interval_frames: int = 25
    reject_silent_audio: bool = True
    silence_peak_dbfs: float = -60.0
    timeout_s: float = 600.0

    def validate(self, section: str) -> None:
        super().validate(section)
        check(self.fps > 0, f"{section}.fps", "must be > 0")
        check(
            float(self.sample_rate_hz) / self.fps == int(self.sample_rate_hz / self.fps),
            f"{section}.sample_rate_hz",
            "must be a whole multiple of fps (sample-accurate alignment)",
        )
        check(0 <= self.crf <= 51, f"{section}.crf", "must be in [0, 51]")
        check(self.out_size_px >= 16 and self.out_size_px % 2 == 0, f"{section}.out_size_px", "must be even and >= 16")
        check(self.keyframe_interval_frames >= 1, f"{section}.keyframe_interval_frames", "must be >= 1")


@dataclass(frozen=True)
class NormalizedClip:
    """Encoded clip media.

    Attributes:
        video: H.264 MP4 bytes, constant ``fps``, ``num_frames`` frames; ``out_size_px`` square
            when cropped, else the source resolution.
        audio: WAV bytes, PCM s16 mono at ``sample_rate_hz``, ``num_frames * samples_per_frame`` samples.
        num_frames: frames in the clip.
        audio_peak_dbfs: peak level of the audio in dBFS (-inf for digital silence).
    """

    video: bytes
    audio: bytes
    num_frames: int
    audio_peak_dbfs: float


def crop_filters(stream, box: CropBox, width: int, height: int, out_size_px: int):
    """Append pad (black, where the square leaves the frame), crop and a lanczos scale to
    ``out_size_px`` square to an ``ffmpeg-python`` video stream of ``width`` x ``height`` pixels."""
    left, top = max(0, -box.x0), max(0, -box.y0)
    right, bottom = max(0, box.x0 + box.size - width), max(0, box.y0 + box.size - height)
    if left or top or right or bottom:
        stream = stream.filter("pad", width + left + right, height + top + bottom, left, top, color="black")
    stream = stream.crop(box.x0 + left, box.y0 + top, box.size, box.size)
    return stream.filter("scale", out_size_px, out_size_px, flags="lanczos").filter("setsar", 1)


def normalize_clip(src: str | Path, start_s: float, num_frames: int, cfg: NormalizeConfig,
                   crop: Optional[CropBox] = None, frame_size: Optional[tuple[int, int]] = None) -> NormalizedClip:
    """Cut ``num_frames`` frames at ``cfg.fps`` starting at ``start_s`` seconds and encode them once.

    Args:
        src: source video path.
        crop: the face stage's square in source pixels, or None to keep the source frame.
        frame_size: ``(width, height)`` of the source's decoded frames in pixels (needed with ``crop``).

    Raises:
        MediaError: ``ffmpeg_failed``, ``ffmpeg_timeout``, ``too_few_frames`` (the source ended
            early), ``silent_audio``.
        ValueError: ``crop`` without ``frame_size``.
    """
    import ffmpeg

    spf = int(cfg.sample_rate_hz / cfg.fps)
    with temp_dir() as tmp:
        mp4, wav = tmp / "clip.mp4", tmp / "clip.wav"
        source = ffmpeg.input(str(src), ss=f"{start_s:.6f}", t=f"{num_frames / cfg.fps + 1.0:.6f}")
        video = source.video.filter("fps", fps=f"{cfg.fps:g}")
        if crop is not None:
            if frame_size is None:
                raise ValueError("normalize_clip: a crop needs the source frame_size")
            video = crop_filters(video, crop, *frame_size, cfg.out_size_px)
        outputs = ffmpeg.merge_outputs(
            ffmpeg.output(video, str(mp4), vcodec="libx264", preset=cfg.preset, crf=cfg.crf, pix_fmt="yuv420p",
                          g=cfg.keyframe_interval_frames, movflags="+faststart", **{"frames:v": num_frames}),
            ffmpeg.output(source.audio, str(wav), ac=AUDIO_CHANNELS, ar=cfg.sample_rate_hz, acodec="pcm_s16le"),
        )
        run_tool(ffmpeg_args(outputs), cfg.timeout_s)
        got = count_video_frames(mp4)
        if got < num_frames:
            raise MediaError("too_few_frames", f"{got} of {num_frames} frames decoded")
        samples, sr = sf.read(wav, dtype="int16", always_2d=False)
        want = num_frames * spf
        samples = np.pad(samples[:want], (0, max(0, want - len(samples))))
        peak = float(np.abs(samples.astype(np.int32)).max()) if len(samples) else 0.0
        peak_dbfs = 20 * np.log10(peak / 32768.0) if peak > 0 else float("-inf")
        if cfg.reject_silent_audio and peak_dbfs < cfg.silence_peak_dbfs:
            raise MediaError("silent_audio", f"audio peak {peak_dbfs:.1f} dBFS")
        buf = io.BytesIO()
        sf.write(buf, samples, cfg.sample_rate_hz, subtype=AUDIO_SUBTYPE, format="WAV")
        return NormalizedClip(mp4.read_bytes(), buf.getvalue(), num_frames, peak_dbfs)


class NormalizeStage(Stage):
    """Fills ``video_bytes`` (the face crop at ``out_size_px``, or the source resolution when the
    face stage is off) and ``audio_bytes`` of a clip row."""

    name = "normalize"
    config_class = NormalizeConfig
    writes_columns = ("audio_peak_dbfs",)
    required = True

    def process(self, row: Row) -> list[Row]:
        from vividhead.curation.stages.face import CropBox

        crop = CropBox.from_list(row["crop_box"], row["pad_px"]) if row.get("crop_box") else None
        size = tuple(row["frame_size"]) if crop is not None else None
        clip = normalize_clip(row["local_path"], row["start_s"], row["num_frames"], self.cfg, crop, size)
        row.update(video_bytes=clip.video, audio_bytes=clip.audio,
                   audio_peak_dbfs=clip.audio_peak_dbfs if np.isfinite(clip.audio_peak_dbfs) else None)
        return [row]

"""normalize: the clip's one encode: CFR H.264 at the shard contract's frame size, and mono PCM (FlashHead 2.1.1-2.1.2).

One FFmpeg pass (a filter graph built with ``ffmpeg-python``, run through
:func:`vividhead.curation.media.run_tool` for its timeout) cuts the clip out of the source, resamples
it to the contract's constant frame rate (:data:`vividhead.shard_format.FPS`), applies the face
stage's crop (black padding where the square leaves the frame), scales it to
:data:`~vividhead.shard_format.FRAME_SIZE_PX` square and encodes it, and writes the audio as mono PCM
at :data:`~vividhead.shard_format.SAMPLE_RATE_HZ`. Without a crop (face stage off) the clip keeps the
source resolution. The three are fixed by the shard contract, not configurable (see
:mod:`vividhead.shard_format`): a config that sets ``normalize.fps``, ``sample_rate_hz`` or
``out_size_px`` fails at load.

Audio and video are sample-accurately aligned: the WAV holds exactly
``num_frames * SAMPLES_PER_FRAME`` samples, zero-padded or trimmed at the end. Digital silence (peak
below ``silence_peak_dbfs``) is rejected ``silent_audio``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Optional

import numpy as np
import soundfile as sf

from vividhead.config import bounded
from vividhead.curation.media import count_video_frames, ffmpeg_args, run_tool, temp_dir
from vividhead.curation.records import Row
from vividhead.curation.stage import Stage, StageConfig
from vividhead.errors import MediaError
from vividhead.shard_format import AUDIO_CHANNELS, AUDIO_SUBTYPE, FPS, FRAME_SIZE_PX, SAMPLE_RATE_HZ, SAMPLES_PER_FRAME

if TYPE_CHECKING:
    from vividhead.curation.stages.face import CropBox


@dataclass(frozen=True)
class NormalizeConfig(StageConfig):
    """The clip's one encode (FlashHead sections 2.1.1 and 2.1.2). Frame rate, sample rate and
    frame size are the shard contract's, not fields (:data:`REMOVED_KEYS`).

    Attributes:
        crf, preset: libx264 quality and speed. ``ultrafast`` at CRF 15 is as close to the
            uncropped lanczos-scaled frames as the former ``veryfast`` at CRF 18 on every measure
            (PSNR 49.3 against 46.7 dB, SSIM 0.992 against 0.990 on the fixture clips) for a third
            of x264's CPU time, at 3.4 times the bitrate (3.3 Mbit/s at 512 x 512):
            ``benchmarks/curation_encode_settings.py``, docs/benchmarks.md.
        keyframe_interval_frames: H.264 GOP of the output clip (25 = one key frame per second, so
            training loaders seek cheaply; docs/benchmarks.md).
        reject_silent_audio, silence_peak_dbfs: reject ``silent_audio`` below this peak level.
        timeout_s: limit for the FFmpeg process, seconds.
    """

    #: Keys older configs set that the shard contract now fixes; the load error gives the hint.
    REMOVED_KEYS: ClassVar[dict[str, str]] = {
        "fps": f"the shard contract fixes it: vividhead.shard_format.FPS = {FPS}",
        "sample_rate_hz": f"the shard contract fixes it: vividhead.shard_format.SAMPLE_RATE_HZ = {SAMPLE_RATE_HZ}",
        "out_size_px": f"the shard contract fixes it: vividhead.shard_format.FRAME_SIZE_PX = {FRAME_SIZE_PX}",
    }

    crf: int = bounded(15, "in [0, 51]")
    preset: str = "ultrafast"
    keyframe_interval_frames: int = bounded(25, ">= 1")
    reject_silent_audio: bool = True
    silence_peak_dbfs: float = -60.0
    timeout_s: float = 600.0



@dataclass(frozen=True)
class NormalizedClip:
    """Encoded clip media.

    Attributes:
        video: H.264 MP4 bytes, constant ``FPS``, ``num_frames`` frames; ``FRAME_SIZE_PX`` square
            when cropped, else the source resolution.
        audio: WAV bytes, PCM s16 mono at ``SAMPLE_RATE_HZ``, ``num_frames * SAMPLES_PER_FRAME`` samples.
        num_frames: frames in the clip.
        audio_peak_dbfs: peak level of the audio in dBFS (-inf for digital silence).
    """

    video: bytes
    audio: bytes
    num_frames: int
    audio_peak_dbfs: float


def crop_filters(stream, box: CropBox, width: int, height: int, out_size_px: int = FRAME_SIZE_PX):
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
    """Cut ``num_frames`` frames at ``FPS`` starting at ``start_s`` seconds and encode them once.

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

    with temp_dir() as tmp:
        mp4, wav = tmp / "clip.mp4", tmp / "clip.wav"
        # FFmpeg's decoder, filter and x264 threads sized to the CPUs Ray gives the task (its default
        # is one per core in every process: oversubscribed when each core runs a clip).
        threads = max(1, int(cfg.num_cpus))
        source = ffmpeg.input(str(src), ss=f"{start_s:.6f}", t=f"{num_frames / FPS + 1.0:.6f}", threads=threads)
        video = source.video.filter("fps", fps=f"{FPS:g}")
        if crop is not None:
            if frame_size is None:
                raise ValueError("normalize_clip: a crop needs the source frame_size")
            video = crop_filters(video, crop, *frame_size, FRAME_SIZE_PX)
        outputs = ffmpeg.merge_outputs(
            ffmpeg.output(video, str(mp4), vcodec="libx264", preset=cfg.preset, crf=cfg.crf, pix_fmt="yuv420p",
                          g=cfg.keyframe_interval_frames, movflags="+faststart", threads=threads,
                          **{"frames:v": num_frames}),
            ffmpeg.output(source.audio, str(wav), ac=AUDIO_CHANNELS, ar=SAMPLE_RATE_HZ, acodec="pcm_s16le"),
        ).global_args("-filter_threads", str(threads))
        run_tool(ffmpeg_args(outputs), cfg.timeout_s)
        got = count_video_frames(mp4)
        if got < num_frames:
            raise MediaError("too_few_frames", f"{got} of {num_frames} frames decoded")
        samples, sr = sf.read(wav, dtype="int16", always_2d=False)
        want = num_frames * SAMPLES_PER_FRAME
        samples = np.pad(samples[:want], (0, max(0, want - len(samples))))
        peak = float(np.abs(samples.astype(np.int32)).max()) if len(samples) else 0.0
        peak_dbfs = 20 * np.log10(peak / 32768.0) if peak > 0 else float("-inf")
        if cfg.reject_silent_audio and peak_dbfs < cfg.silence_peak_dbfs:
            raise MediaError("silent_audio", f"audio peak {peak_dbfs:.1f} dBFS")
        buf = io.BytesIO()
        sf.write(buf, samples, SAMPLE_RATE_HZ, subtype=AUDIO_SUBTYPE, format="WAV")
        return NormalizedClip(mp4.read_bytes(), buf.getvalue(), num_frames, peak_dbfs)


class NormalizeStage(Stage):
    """Fills ``video_bytes`` (the face crop at ``FRAME_SIZE_PX``, or the source resolution when the
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

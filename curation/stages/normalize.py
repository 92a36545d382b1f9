"""normalize: FFmpeg re-encode of one clip to CFR H.264 and mono PCM at the shard contract's rates (FlashHead 2.1.1).

Audio and video are sample-accurately aligned: the WAV holds exactly
``num_frames * sample_rate_hz / fps`` samples (:data:`vividhead.shard_format.SAMPLES_PER_FRAME` per
frame at the defaults, which are the contract's ``FPS`` and ``SAMPLE_RATE_HZ``), zero-padded or
trimmed at the end. Digital silence (peak below ``silence_peak_dbfs``) is rejected ``silent_audio``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from vividhead.curation.media import FFMPEG, count_video_frames, run_tool, temp_dir
from vividhead.curation.records import Row
from vividhead.curation.stage import MediaError, Stage, StageConfig, check
from vividhead.shard_format import AUDIO_CHANNELS, AUDIO_SUBTYPE, FPS, SAMPLE_RATE_HZ


@dataclass(frozen=True)
class NormalizeConfig(StageConfig):
    """FFmpeg re-encode to constant-frame-rate H.264 and mono PCM (FlashHead section 2.1.1)."""

    fps: float = float(FPS)
    sample_rate_hz: int = SAMPLE_RATE_HZ
    crf: int = 18
    preset: str = "veryfast"
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


@dataclass(frozen=True)
class NormalizedClip:
    """Encoded clip media.

    Attributes:
        video: H.264 MP4 bytes, constant ``fps``, ``num_frames`` frames, source resolution.
        audio: WAV bytes, PCM s16 mono at ``sample_rate_hz``, ``num_frames * samples_per_frame`` samples.
        num_frames: frames in the clip.
        audio_peak_dbfs: peak level of the audio in dBFS (-inf for digital silence).
    """

    video: bytes
    audio: bytes
    num_frames: int
    audio_peak_dbfs: float


def normalize_clip(src: str | Path, start_s: float, num_frames: int, cfg: NormalizeConfig) -> NormalizedClip:
    """Cut ``num_frames`` frames at ``cfg.fps`` starting at ``start_s`` seconds and re-encode.

    Raises:
        MediaError: ``ffmpeg_failed``, ``ffmpeg_timeout``, ``too_few_frames`` (the source ended
            early), ``silent_audio``.
    """
    spf = int(cfg.sample_rate_hz / cfg.fps)
    with temp_dir() as tmp:
        mp4, wav = tmp / "clip.mp4", tmp / "clip.wav"
        run_tool(
            [FFMPEG, "-nostdin", "-v", "error", "-y",
             "-ss", f"{start_s:.6f}", "-t", f"{num_frames / cfg.fps + 1.0:.6f}", "-i", str(src),
             "-map", "0:v:0", "-vf", f"fps={cfg.fps:g}", "-frames:v", str(num_frames),
             "-c:v", "libx264", "-preset", cfg.preset, "-crf", str(cfg.crf), "-pix_fmt", "yuv420p",
             "-movflags", "+faststart", "-an", str(mp4),
             "-map", "0:a:0", "-ac", str(AUDIO_CHANNELS), "-ar", str(cfg.sample_rate_hz), "-c:a", "pcm_s16le", str(wav)],
            cfg.timeout_s,
        )
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
    """Fills ``video_bytes`` (source resolution) and ``audio_bytes`` of a clip row."""

    name = "normalize"
    config_class = NormalizeConfig
    writes_columns = ("audio_peak_dbfs",)
    required = True

    def process(self, row: Row) -> list[Row]:
        clip = normalize_clip(row["local_path"], row["start_s"], row["num_frames"], self.cfg)
        row.update(video_bytes=clip.video, audio_bytes=clip.audio,
                   audio_peak_dbfs=clip.audio_peak_dbfs if np.isfinite(clip.audio_peak_dbfs) else None)
        return [row]

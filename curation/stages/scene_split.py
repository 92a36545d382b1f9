"""scene_split: shots from PySceneDetect (or given timestamps), cut into 5-50 s clips (FlashHead 2.1.1).

Rows with ``start_s``/``end_s`` are cut exactly there. Otherwise PySceneDetect's ``AdaptiveDetector``
finds shots. Shots longer than ``max_clip_s`` are split into equal windows; shots shorter than
``min_clip_s`` become rejected clip rows (``too_short``). With ``frames_4k_plus_1`` each clip is
shortened to 4k+1 frames at the output frame rate, the Wan VAE's temporal chunking.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from vividhead.config import bounded
from vividhead.curation.records import Row, clip_id_for, new_row, reject
from vividhead.curation.stage import Stage, StageConfig, check
from vividhead.errors import MediaError
from vividhead.shard_format import FPS, floor_frame_count

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class SceneSplitConfig(StageConfig):
    """Shot detection with PySceneDetect and cutting shots into clips (FlashHead section 2.1.1).

    Attributes:
        detector: ``adaptive`` (PySceneDetect ``AdaptiveDetector``, the paper's choice), ``content``
            (``ContentDetector``), or ``none`` (the whole video is one shot, cut into windows).
        adaptive_threshold: ``AdaptiveDetector.adaptive_threshold``.
        content_threshold: ``ContentDetector.threshold``.
        min_scene_len_frames: shortest shot PySceneDetect may report, in source frames.
        min_clip_s / max_clip_s: clip length bounds in seconds; longer shots are split into
            equal windows, shorter ones rejected as ``too_short``.
        frames_4k_plus_1: shorten each clip to 4k+1 frames at 25 fps (the Wan VAE's chunking).
        nvdec: decode the source on the GPU's NVDEC engines and make the detectors' downscaled frames
            there (:mod:`vividhead.curation.nvdec`; PyAV >= 18 and a CUDA torch), for GPU nodes whose
            CPUs bound the run. Needs no Ray GPU share: workers without one still see the node's GPUs,
            and the work is a decode and a few small kernels per frame (each worker holds one CUDA
            context). A worker that cannot open a CUDA device logs one warning and decodes on its
            CPU. The detectors' frames equal the CPU path's on the fixtures, so the shots do too.
    """

    detector: Literal["adaptive", "content", "none"] = "adaptive"
    adaptive_threshold: float = 3.0
    content_threshold: float = 27.0
    min_scene_len_frames: int = bounded(15, ">= 1")
    min_clip_s: float = bounded(5.0, "> 0")
    max_clip_s: float = bounded(50.0, ">= min_clip_s")
    frames_4k_plus_1: bool = True
    nvdec: bool = False
    timeout_s: float = 600.0

    def validate(self, section: str) -> None:
        check(self.enabled, f"{section}.enabled", "this stage cannot be disabled (use detector: none for no shot detection)")


@dataclass(frozen=True)
class ClipPlan:
    """One planned clip: ``[start_s, start_s + num_frames / fps)`` in source seconds.

    ``too_short`` marks a shot that cannot make a clip of ``min_clip_s`` seconds.
    """

    start_s: float
    end_s: float
    num_frames: int
    too_short: bool = False


def detect_shots(path: str | Path, cfg: SceneSplitConfig, device: str | None = None) -> list[tuple[float, float]]:
    """Shot boundaries of a video with PySceneDetect.

    Args:
        path: a local video file.
        device: ``None``: PySceneDetect's PyAV stream (decode and downscale on the CPU); ``"cuda"``:
            NVDEC with the downscaled frames made on the GPU
            (:class:`vividhead.curation.nvdec.NvdecVideoStream`); ``"cpu"``: that stream's conversion
            on the CPU (how tests check it without a GPU).

    Returns:
        ``[(start_s, end_s), ...]`` in seconds, covering the whole video; one shot when no cut.

    Raises:
        MediaError: ``decode_failed`` when PySceneDetect cannot open or decode the video.
        vividhead.curation.nvdec.NvdecUnavailable: ``device`` is ``"cuda"`` and this process cannot
            decode on NVDEC (the machine's fault, not the file's: the caller decides).
    """
    from scenedetect import AdaptiveDetector, ContentDetector, SceneManager, open_video

    # One CPU: one decoder thread (PyAV's default starts slice threads on every core of the node).
    threads = {"threading_mode": "NONE"} if cfg.num_cpus < 2 else {}
    unavailable: tuple[type[Exception], ...] = ()
    try:
        manager = SceneManager()
        if device is None:
            video = open_video(str(path), backend="pyav", **threads)
        else:
            from vividhead.curation.nvdec import NvdecUnavailable, NvdecVideoStream

            unavailable = (NvdecUnavailable,)
            video = NvdecVideoStream(path, device=device, **threads)
            manager.auto_downscale = False  # the stream hands out the downscaled frames
        if cfg.detector == "adaptive":
            manager.add_detector(AdaptiveDetector(adaptive_threshold=cfg.adaptive_threshold, min_scene_len=cfg.min_scene_len_frames))
        else:
            manager.add_detector(ContentDetector(threshold=cfg.content_threshold, min_scene_len=cfg.min_scene_len_frames))
        manager.detect_scenes(video)
        scenes = manager.get_scene_list(start_in_scene=True)
        duration = video.duration.get_seconds() if video.duration else 0.0
    except (MediaError, *unavailable):
        raise
    except Exception as exc:  # PySceneDetect wraps PyAV/OpenCV errors in several types
        raise MediaError("decode_failed", f"scene detection: {type(exc).__name__}: {exc}"[:300]) from exc
    shots = [(s.get_seconds(), e.get_seconds()) for s, e in scenes]
    return shots or [(0.0, duration)]


def plan_clips(shots: list[tuple[float, float]], cfg: SceneSplitConfig, fps: float) -> list[ClipPlan]:
    """Cut shots into clips of ``min_clip_s`` to ``max_clip_s`` seconds.

    Args:
        shots: ``[(start_s, end_s)]`` in seconds.
        fps: output frame rate (frames per second), used for frame counts.

    Returns:
        One :class:`ClipPlan` per clip, in time order; short shots are kept as ``too_short`` plans.
    """
    plans: list[ClipPlan] = []
    for start, end in shots:
        length = end - start
        frames_total = int(math.floor(length * fps + 1e-6))
        if length + 1e-6 < cfg.min_clip_s or frames_total < 1:
            plans.append(ClipPlan(start, end, max(frames_total, 0), too_short=True))
            continue
        n_windows = max(1, math.ceil(length / cfg.max_clip_s - 1e-9))
        window_frames = frames_total // n_windows
        for w in range(n_windows):
            w_start = start + w * window_frames / fps
            n = window_frames
            if cfg.frames_4k_plus_1:
                n = floor_frame_count(n)
            if n / fps + 1e-6 < cfg.min_clip_s:
                plans.append(ClipPlan(w_start, w_start + window_frames / fps, n, too_short=True))
            else:
                plans.append(ClipPlan(w_start, w_start + n / fps, n))
    return plans


class SceneSplitStage(Stage):
    """One input row in, one row per planned clip out."""

    name = "scene_split"
    config_class = SceneSplitConfig
    writes_columns = ("clip_id", "clip_index", "start_s", "end_s", "duration_s", "num_frames")
    required = True
    funnel_units = ("input", "clip")  # one input row in, one row per planned clip out
    resources = {"_nvdec": None}  # None: not tried yet in this worker; False: unavailable here

    def _detect(self, path: str) -> list[tuple[float, float]]:
        if self.cfg.nvdec and self._nvdec is not False:
            from vividhead.curation.nvdec import NvdecUnavailable

            try:
                shots = detect_shots(path, self.cfg, device="cuda")
                self._nvdec = True
                return shots
            except NvdecUnavailable as exc:
                self._nvdec = False
                log.warning("scene_split.nvdec: no NVDEC in this worker (%s); decoding on the CPU", exc)
        return detect_shots(path, self.cfg)

    def process(self, row: Row) -> list[Row]:
        duration = row["source_duration_s"]
        if row.get("start_s") is not None or row.get("end_s") is not None:
            start = max(0.0, float(row.get("start_s") or 0.0))
            end = min(duration, float(row["end_s"])) if row.get("end_s") is not None else duration
            if end <= start:
                raise MediaError("bad_timestamps", f"start {start:.2f} s >= end {end:.2f} s")
            shots = [(start, end)]
        elif self.cfg.detector == "none":
            shots = [(0.0, duration)]
        else:
            shots = self._detect(row["local_path"])
        plans = plan_clips(shots, self.cfg, FPS)
        out = []
        for i, plan in enumerate(plans):
            clip = new_row(**{k: v for k, v in row.items() if k not in ("status", "stage", "reason", "detail")})
            clip.update(
                clip_index=i,
                clip_id=clip_id_for(row["source_id"], i),
                start_s=round(plan.start_s, 6),
                end_s=round(plan.end_s, 6),
                duration_s=round(plan.end_s - plan.start_s, 6),
                num_frames=plan.num_frames,
                rows_of_input=len(plans),
                timings=row["timings"] if i == 0 else "{}",
            )
            if plan.too_short:
                reject(clip, self.name, "too_short", f"{plan.end_s - plan.start_s:.2f} s < {self.cfg.min_clip_s:g} s")
            out.append(clip)
        return out

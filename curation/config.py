"""Typed, frozen configuration for the curation pipeline, loaded from YAML.

The YAML file has one section per stage, named as the stage's file in ``curation/stages/``
(``probe``, ``dedup``, ``scene_split``, ...), plus a ``run`` section for job-wide settings.
Every section has ``enabled`` (default true) and the stage's parameters. Unknown sections or keys
and values of the wrong type fail at load with a one-line :class:`ConfigError` naming the key.

Example::

    face:
      min_face_px: 128
      face_share: 0.6
    transition:
      enabled: false
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A configuration value is unknown or invalid; the message names the key (``face.min_face_px``)."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass(frozen=True)
class StageConfig:
    """Fields shared by every stage.

    Attributes:
        enabled: run the stage (a disabled stage passes rows through untouched).
        num_cpus: CPUs reserved per worker (Ray resource request).
        num_gpus: GPUs reserved per worker; model stages use CUDA when this is > 0.
        workers: size of the actor pool, or ``None`` to let Ray scale from 1 to the CPU count.
    """

    enabled: bool = True
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    workers: Optional[int] = None

    def validate(self, section: str) -> None:
        _check(self.num_cpus > 0, f"{section}.num_cpus", "must be > 0")
        _check(self.num_gpus >= 0, f"{section}.num_gpus", "must be >= 0")
        _check(self.workers is None or self.workers >= 1, f"{section}.workers", "must be >= 1 or null")


@dataclass(frozen=True)
class ProbeConfig(StageConfig):
    """ffprobe every input. Durations in seconds, sizes in bytes."""

    min_duration_s: float = 1.0
    require_audio: bool = True
    timeout_s: float = 60.0
    download_timeout_s: float = 600.0
    max_download_bytes: int = 20 * 1024**3

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(self.min_duration_s >= 0, f"{section}.min_duration_s", "must be >= 0")
        _check(self.timeout_s > 0, f"{section}.timeout_s", "must be > 0")
        _check(self.max_download_bytes > 0, f"{section}.max_download_bytes", "must be > 0")


@dataclass(frozen=True)
class DedupConfig(StageConfig):
    """Duplicate removal by source id and by MD5 of the file bytes (FlashHead section 2.1.1)."""

    by_source_id: bool = True
    by_md5: bool = True


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
    """

    detector: Literal["adaptive", "content", "none"] = "adaptive"
    adaptive_threshold: float = 3.0
    content_threshold: float = 27.0
    min_scene_len_frames: int = 15
    min_clip_s: float = 5.0
    max_clip_s: float = 50.0
    frames_4k_plus_1: bool = True
    timeout_s: float = 600.0

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(self.min_clip_s > 0, f"{section}.min_clip_s", "must be > 0")
        _check(self.max_clip_s >= self.min_clip_s, f"{section}.max_clip_s", "must be >= min_clip_s")
        _check(self.min_scene_len_frames >= 1, f"{section}.min_scene_len_frames", "must be >= 1")


@dataclass(frozen=True)
class NormalizeConfig(StageConfig):
    """FFmpeg re-encode to constant-frame-rate H.264 and mono PCM (FlashHead section 2.1.1)."""

    fps: float = 25.0
    sample_rate_hz: int = 16000
    crf: int = 18
    preset: str = "veryfast"
    reject_silent_audio: bool = True
    silence_peak_dbfs: float = -60.0
    timeout_s: float = 600.0

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(self.fps > 0, f"{section}.fps", "must be > 0")
        _check(
            float(self.sample_rate_hz) / self.fps == int(self.sample_rate_hz / self.fps),
            f"{section}.sample_rate_hz",
            "must be a whole multiple of fps (sample-accurate alignment)",
        )
        _check(0 <= self.crf <= 51, f"{section}.crf", "must be in [0, 51]")


@dataclass(frozen=True)
class FaceConfig(StageConfig):
    """Face detection on the first frame and the face-centred square crop (FlashHead section 2.1.2).

    Attributes:
        weights_path: explicit path of the MediaPipe ``FaceDetector`` model; else the registry.
        min_confidence: detector score threshold.
        min_face_px: smallest accepted face box side, in source pixels.
        dominance_ratio: a second face whose area is at least this share of the largest one makes
            the clip ``multiple_faces``.
        out_size_px: side of the output crop, in pixels.
        face_share: face box side / crop side.
        allow_pad: pad with black when the crop leaves the frame and cannot be shifted inside;
            otherwise such clips are rejected ``crop_out_of_frame``.
        max_pad_share: largest padding accepted, as a share of the crop side.
    """

    weights_path: Optional[str] = None
    min_confidence: float = 0.5
    min_face_px: int = 128
    dominance_ratio: float = 0.25
    out_size_px: int = 512
    face_share: float = 0.6
    allow_pad: bool = True
    max_pad_share: float = 0.1
    crf: int = 18
    preset: str = "fast"
    timeout_s: float = 600.0

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(0 < self.min_confidence < 1, f"{section}.min_confidence", "must be in (0, 1)")
        _check(self.min_face_px >= 1, f"{section}.min_face_px", "must be >= 1")
        _check(0 < self.face_share <= 1, f"{section}.face_share", "must be in (0, 1]")
        _check(0 < self.dominance_ratio <= 1, f"{section}.dominance_ratio", "must be in (0, 1]")
        _check(self.out_size_px >= 16 and self.out_size_px % 2 == 0, f"{section}.out_size_px", "must be even and >= 16")
        _check(0 <= self.max_pad_share < 0.5, f"{section}.max_pad_share", "must be in [0, 0.5)")


@dataclass(frozen=True)
class FaceVisibilityConfig(StageConfig):
    """Face presence sampled at ``sample_fps`` inside the crop (FlashHead section 2.1.2)."""

    weights_path: Optional[str] = None
    sample_fps: float = 1.0
    min_confidence: float = 0.5
    max_missing_face_share: float = 0.2

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(self.sample_fps > 0, f"{section}.sample_fps", "must be > 0")
        _check(0 <= self.max_missing_face_share <= 1, f"{section}.max_missing_face_share", "must be in [0, 1]")


@dataclass(frozen=True)
class TransitionConfig(StageConfig):
    """Optical-flow transition filter (FlashHead section 2.1.2).

    Attributes:
        analysis_size_px: frames are downscaled to this square size (grayscale) before flow.
        min_residual: flow-warp residual (mean absolute error, 0-255 grey levels) a frame pair must
            exceed to count as a transition.
        min_spike_ratio: the residual must also exceed this multiple of the median residual of the
            neighbouring ``context_frames`` on each side, so slow fades and motion do not fire.
    """

    analysis_size_px: int = 128
    min_residual: float = 20.0
    min_spike_ratio: float = 8.0
    context_frames: int = 5

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(self.analysis_size_px >= 16, f"{section}.analysis_size_px", "must be >= 16")
        _check(self.min_residual > 0, f"{section}.min_residual", "must be > 0")
        _check(self.min_spike_ratio >= 1, f"{section}.min_spike_ratio", "must be >= 1")
        _check(self.context_frames >= 1, f"{section}.context_frames", "must be >= 1")


@dataclass(frozen=True)
class WriteConfig(StageConfig):
    """WebDataset shard writing. A shard closes once it holds ``samples_per_shard`` kept clips."""

    samples_per_shard: int = 100

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(self.samples_per_shard >= 1, f"{section}.samples_per_shard", "must be >= 1")


@dataclass(frozen=True)
class RunConfig:
    """Job-wide settings.

    Attributes:
        cache_dir: node-local folder for downloaded inputs and weights (``~/.cache/vividhead``).
        storage_options: fsspec options for remote URLs (e.g. ``{"client_kwargs": {"endpoint_url": ...}}``).
    """

    cache_dir: Optional[str] = None
    storage_options: dict = field(default_factory=dict)

    def validate(self, section: str) -> None:
        _check(isinstance(self.storage_options, dict), f"{section}.storage_options", "must be a mapping")


# Section name -> config class. The order is the pipeline order.
SECTIONS: dict[str, type] = {
    "run": RunConfig,
    "probe": ProbeConfig,
    "dedup": DedupConfig,
    "scene_split": SceneSplitConfig,
    "normalize": NormalizeConfig,
    "face": FaceConfig,
    "face_visibility": FaceVisibilityConfig,
    "transition": TransitionConfig,
    "write": WriteConfig,
}


@dataclass(frozen=True)
class CurateConfig:
    """The whole pipeline configuration: one frozen dataclass per section."""

    run: RunConfig = field(default_factory=RunConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    scene_split: SceneSplitConfig = field(default_factory=SceneSplitConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    face: FaceConfig = field(default_factory=FaceConfig)
    face_visibility: FaceVisibilityConfig = field(default_factory=FaceVisibilityConfig)
    transition: TransitionConfig = field(default_factory=TransitionConfig)
    write: WriteConfig = field(default_factory=WriteConfig)

    def __post_init__(self) -> None:
        for name in SECTIONS:
            getattr(self, name).validate(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable) of every section."""
        return dataclasses.asdict(self)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if origin is Literal:
        _check(value in args, key, f"must be one of {list(args)}, got {value!r}")
        return value
    if tp is bool:
        _check(isinstance(value, bool), key, f"expected true/false, got {value!r}")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, f"expected a string, got {value!r}")
        return value
    if tp is dict or origin is dict:
        _check(isinstance(value, dict), key, f"expected a mapping, got {value!r}")
        return value
    return value


def build_section(name: str, cls: type, raw: Any) -> Any:
    """Build one section's dataclass from its raw YAML mapping.

    Raises:
        ConfigError: ``raw`` is not a mapping, has an unknown key, or a value of the wrong type.
    """
    if raw is None:
        raw = {}
    _check(isinstance(raw, dict), name, f"expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        _check(key in known, f"{name}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
        kwargs[key] = _coerce(value, hints[key], f"{name}.{key}")
    return cls(**kwargs)


def config_from_dict(raw: Optional[dict], sections: Optional[dict[str, type]] = None) -> CurateConfig:
    """Build a :class:`CurateConfig` from a nested dict (e.g. parsed YAML).

    Raises:
        ConfigError: unknown section or key, or an invalid value; the message names the key.
    """
    sections = sections or SECTIONS
    raw = raw or {}
    _check(isinstance(raw, dict), "config", "top level must be a mapping of sections")
    built = {}
    for name, value in raw.items():
        _check(name in sections, str(name), f"unknown section (known: {', '.join(sections)})")
        built[name] = build_section(name, sections[name], value)
    try:
        return CurateConfig(**built)
    except TypeError as exc:  # a section the dataclass does not know
        raise ConfigError(str(exc)) from exc


def load_config(path: Optional[str | Path]) -> CurateConfig:
    """Load a YAML config file; ``None`` gives the defaults.

    Raises:
        ConfigError: unreadable file, bad YAML, unknown key or invalid value.
    """
    if path is None:
        return CurateConfig()
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({str(exc).splitlines()[0]})") from exc
    return config_from_dict(raw)

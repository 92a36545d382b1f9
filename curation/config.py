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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from vividhead.config import ConfigError, build_dataclass, check, read_yaml

_check = check


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
        keyframe_interval_frames: H.264 GOP of the output clip (25 = one key frame per second, so
            training loaders seek cheaply).
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
    keyframe_interval_frames: int = 25
    timeout_s: float = 600.0

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(0 < self.min_confidence < 1, f"{section}.min_confidence", "must be in (0, 1)")
        _check(self.keyframe_interval_frames >= 1, f"{section}.keyframe_interval_frames", "must be >= 1")
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
class OcclusionConfig(StageConfig):
    """Hand-over-face filter from DWPose whole-body keypoints via rtmlib (FlashHead section 2.1.2).

    Attributes:
        det_weights_path / pose_weights_path: explicit ONNX paths of the person detector (registry
            ``person_yolox_nano``) and the whole-body pose model (registry ``dwpose_ll_ucoco_384``).
        det_input_px: square YOLOX input side in pixels (416 for YOLOX-nano).
        pose_input_w_px / pose_input_h_px: pose model input (288x384 for DWPose-l 384).
        person_min_score: YOLOX person score threshold; with no person found the whole frame is
            used as the person box (the clip is a face-centred crop).
        sample_fps: frames analysed per second of video.
        hand_min_score: a hand keypoint counts when its SimCC score is above this.
        face_min_score: face keypoints used for the face box need at least this score.
        min_hand_keypoints: hand keypoints inside the face box that make a frame occluded.
        face_box_margin: the face box (bounds of the confident face keypoints) is grown by this
            share of its side on every side.
        max_hand_over_face_share: reject ``hand_over_face`` when the share of occluded sampled
            frames exceeds this.
    """

    det_weights_path: Optional[str] = None
    pose_weights_path: Optional[str] = None
    det_input_px: int = 416
    pose_input_w_px: int = 288
    pose_input_h_px: int = 384
    person_min_score: float = 0.5
    sample_fps: float = 2.0
    hand_min_score: float = 0.5
    face_min_score: float = 0.5
    min_hand_keypoints: int = 1
    face_box_margin: float = 0.1
    max_hand_over_face_share: float = 0.1

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(self.det_input_px >= 32, f"{section}.det_input_px", "must be >= 32")
        _check(self.pose_input_w_px >= 16 and self.pose_input_h_px >= 16, f"{section}.pose_input_w_px", "pose input must be >= 16 px")
        _check(0 <= self.person_min_score <= 1, f"{section}.person_min_score", "must be in [0, 1]")
        _check(self.sample_fps > 0, f"{section}.sample_fps", "must be > 0")
        _check(self.min_hand_keypoints >= 1, f"{section}.min_hand_keypoints", "must be >= 1")
        _check(self.face_box_margin >= 0, f"{section}.face_box_margin", "must be >= 0")
        _check(0 <= self.max_hand_over_face_share <= 1, f"{section}.max_hand_over_face_share", "must be in [0, 1]")


@dataclass(frozen=True)
class SpeechConfig(StageConfig):
    """Speech presence from Silero VAD (snakers4/silero-vad): share of the clip that is speech.

    Attributes:
        weights_path: a Silero VAD ONNX file (e.g. ``vad_silero_v5.onnx``) run with onnxruntime;
            ``None`` uses the model shipped inside the ``silero-vad`` package (TorchScript).
        threshold: speech probability threshold per 32 ms window (``get_speech_timestamps``).
        min_speech_duration_ms / min_silence_duration_ms / speech_pad_ms: segment post-processing
            of ``silero_vad.get_speech_timestamps`` (its defaults).
        min_speech_share: reject ``no_speech`` below this share of the clip (0-1); ``None`` = off.
    """

    weights_path: Optional[str] = None
    threshold: float = 0.5
    min_speech_duration_ms: int = 250
    min_silence_duration_ms: int = 100
    speech_pad_ms: int = 30
    min_speech_share: Optional[float] = 0.5

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(0 < self.threshold < 1, f"{section}.threshold", "must be in (0, 1)")
        _check(self.min_speech_duration_ms >= 0, f"{section}.min_speech_duration_ms", "must be >= 0")
        _check(self.min_silence_duration_ms >= 0, f"{section}.min_silence_duration_ms", "must be >= 0")
        _check(self.speech_pad_ms >= 0, f"{section}.speech_pad_ms", "must be >= 0")
        _check(self.min_speech_share is None or 0 <= self.min_speech_share <= 1, f"{section}.min_speech_share", "must be in [0, 1] or null")


@dataclass(frozen=True)
class SyncNetConfig(StageConfig):
    """SyncNet lip-sync scores LSE-C / LSE-D / AV offset (FlashHead section 2.1.2).

    Attributes:
        weights_path: explicit path of ``syncnet_v2.model``; else the registry (``syncnet_v2``).
        detector_weights_path: explicit path of the MediaPipe face detector; else the registry.
        min_confidence: face detector score threshold for the face track.
        min_face_share: reject ``no_face_track`` when fewer frames (share) have a face.
        crop_scale: face crop context around the box (0.4 in syncnet_python).
        vshift_frames: offsets searched on each side, in video frames (15 in the LSE protocol).
        batch_size: 5-frame windows per forward pass.
        min_lse_c: reject ``low_sync_confidence`` below this LSE-C; ``None`` = off.
        max_lse_d: reject ``high_sync_distance`` above this LSE-D; ``None`` = off.
        max_abs_av_offset_frames: reject ``av_offset`` when |offset| exceeds this many frames
            (1 frame = 40 ms at 25 fps); ``None`` = off.
    """

    weights_path: Optional[str] = None
    detector_weights_path: Optional[str] = None
    min_confidence: float = 0.5
    min_face_share: float = 0.5
    crop_scale: float = 0.4
    vshift_frames: int = 15
    batch_size: int = 20
    min_lse_c: Optional[float] = 3.0
    max_lse_d: Optional[float] = None
    max_abs_av_offset_frames: Optional[int] = 3

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(0 < self.min_confidence < 1, f"{section}.min_confidence", "must be in (0, 1)")
        _check(0 <= self.min_face_share <= 1, f"{section}.min_face_share", "must be in [0, 1]")
        _check(self.crop_scale >= 0, f"{section}.crop_scale", "must be >= 0")
        _check(self.vshift_frames >= 1, f"{section}.vshift_frames", "must be >= 1")
        _check(self.batch_size >= 1, f"{section}.batch_size", "must be >= 1")
        _check(self.max_lse_d is None or self.max_lse_d > 0, f"{section}.max_lse_d", "must be > 0 or null")
        _check(
            self.max_abs_av_offset_frames is None or 0 <= self.max_abs_av_offset_frames <= self.vshift_frames,
            f"{section}.max_abs_av_offset_frames",
            "must be in [0, vshift_frames] or null",
        )


@dataclass(frozen=True)
class ASDConfig(StageConfig):
    """Light-ASD active-speaker score (Liao et al., CVPR 2023): mean per-frame speaking logit.

    Mainly a speaking-activity signal, only weakly a lip-sync signal.

    Attributes:
        weights: registry name of the checkpoint: ``lightasd_ava`` (AVA-ActiveSpeaker pre-training,
            default) or ``lightasd_talkset`` (TalkSet fine-tuning).
        weights_path: explicit checkpoint path (overrides the registry lookup of ``weights``).
        detector_weights_path: explicit path of the MediaPipe face detector; else the registry.
        min_confidence: face detector score threshold for the face track.
        min_face_share: reject ``no_face_track`` when fewer frames (share) have a face.
        crop_scale: face crop context around the box (0.4 in the authors' evaluation).
        durations_s: chunk lengths (seconds) whose per-frame scores are averaged; the authors'
            evaluation uses 1-6. The visual front-end runs once per clip plus 12-frame windows at
            each chunk edge, so fewer lengths (e.g. ``[6]``) are cheaper.
        min_asd_score: reject ``not_speaking`` below this mean logit; ``None`` = off. The default
            (-2.0) sits between talking clips with their own audio (-1.2 to 1.3 on the fixtures)
            and the same clips with silent audio (-4.1 to -3.2); see docs/filters.md.
    """

    weights: Literal["lightasd_ava", "lightasd_talkset"] = "lightasd_ava"
    weights_path: Optional[str] = None
    detector_weights_path: Optional[str] = None
    min_confidence: float = 0.5
    min_face_share: float = 0.5
    crop_scale: float = 0.4
    durations_s: tuple = (1, 2, 3, 4, 5, 6)
    min_asd_score: Optional[float] = -2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "durations_s", tuple(self.durations_s) if isinstance(self.durations_s, (list, tuple)) else self.durations_s)

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(0 < self.min_confidence < 1, f"{section}.min_confidence", "must be in (0, 1)")
        _check(0 <= self.min_face_share <= 1, f"{section}.min_face_share", "must be in [0, 1]")
        _check(self.crop_scale >= 0, f"{section}.crop_scale", "must be >= 0")
        _check(
            isinstance(self.durations_s, tuple) and len(self.durations_s) > 0
            and all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in self.durations_s),
            f"{section}.durations_s", "must be a non-empty list of whole seconds >= 1",
        )


@dataclass(frozen=True)
class FaceMaskConfig(StageConfig):
    """Per-frame face and lip masks from MediaPipe FaceLandmarker (annotation, never rejects).

    Attributes:
        weights_path: explicit path of the ``.task`` bundle (registry ``face_mediapipe_landmarker``).
        min_confidence: face detection / presence / tracking confidence of the landmarker.
        store_landmarks: also store the 478 landmarks per frame in ``<key>.mask.npz``.
    """

    weights_path: Optional[str] = None
    min_confidence: float = 0.5
    store_landmarks: bool = True

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(0 < self.min_confidence < 1, f"{section}.min_confidence", "must be in (0, 1)")


@dataclass(frozen=True)
class AudioFeaturesConfig(StageConfig):
    """Wav2Vec 2.0 multi-layer features at the video frame rate (annotation, never rejects).

    Attributes:
        weights: registry name of the transformers model folder (``wav2vec2_base_960h``).
        weights_path: a local transformers folder (``save_pretrained`` layout) used instead.
        normalize: zero-mean / unit-variance the waveform first (wav2vec2-base-960h's extractor).
    """

    weights: str = "wav2vec2_base_960h"
    weights_path: Optional[str] = None
    normalize: bool = True


@dataclass(frozen=True)
class AttributesConfig(StageConfig):
    """Spoken language and apparent gender / age band / ethnicity (annotation, never rejects).

    Each annotator has a switch, a registry name and an optional explicit local folder (the
    transformers ``save_pretrained`` layout). ``ethnicity`` has no registry default: no public
    FairFace race classifier could be verified here, so it needs ``ethnicity_weights_path``.

    Attributes:
        language: Whisper language identification on the first ``language_max_s`` seconds.
        gender / age / ethnicity: image classifiers on the face crop of ``face_frames`` frames
            spread over the clip (probabilities averaged).
    """

    language: bool = True
    language_weights: str = "whisper_small"
    language_weights_path: Optional[str] = None
    language_max_s: float = 30.0
    gender: bool = True
    gender_weights: str = "face_gender_fairface_vit"
    gender_weights_path: Optional[str] = None
    age: bool = True
    age_weights: str = "face_age_fairface_vit"
    age_weights_path: Optional[str] = None
    ethnicity: bool = False
    ethnicity_weights_path: Optional[str] = None
    face_frames: int = 3

    def validate(self, section: str) -> None:
        super().validate(section)
        _check(0 < self.language_max_s <= 30, f"{section}.language_max_s", "must be in (0, 30] (Whisper's window)")
        _check(self.face_frames >= 1, f"{section}.face_frames", "must be >= 1")
        _check(not self.ethnicity or bool(self.ethnicity_weights_path), f"{section}.ethnicity_weights_path",
               "required when ethnicity is enabled (no registry default)")


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
    "occlusion": OcclusionConfig,
    "speech": SpeechConfig,
    "syncnet": SyncNetConfig,
    "asd": ASDConfig,
    "face_mask": FaceMaskConfig,
    "audio_features": AudioFeaturesConfig,
    "attributes": AttributesConfig,
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
    occlusion: OcclusionConfig = field(default_factory=OcclusionConfig)
    speech: SpeechConfig = field(default_factory=SpeechConfig)
    syncnet: SyncNetConfig = field(default_factory=SyncNetConfig)
    asd: ASDConfig = field(default_factory=ASDConfig)
    face_mask: FaceMaskConfig = field(default_factory=FaceMaskConfig)
    audio_features: AudioFeaturesConfig = field(default_factory=AudioFeaturesConfig)
    attributes: AttributesConfig = field(default_factory=AttributesConfig)
    write: WriteConfig = field(default_factory=WriteConfig)

    def __post_init__(self) -> None:
        for name in SECTIONS:
            getattr(self, name).validate(name)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-serialisable) of every section."""
        return dataclasses.asdict(self)


def build_section(name: str, cls: type, raw: Any) -> Any:
    """Build one section's dataclass from its raw YAML mapping (:func:`vividhead.config.build_dataclass`)."""
    return build_dataclass(name, cls, raw)


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
    return config_from_dict(read_yaml(path))

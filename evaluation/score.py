"""``vividhead eval score``: every metric of the reports on paired generated / real videos.

Set-level: FID and KID on frames (:mod:`~vividhead.evaluation.fid`, torch-fidelity), FVD on
16-frame clips (:mod:`~vividhead.evaluation.fvd`). Per video (generated and, for reference,
real): Sync-C / Sync-D / AV offset (:mod:`~vividhead.evaluation.sync`) and the Light-ASD score
(:mod:`~vividhead.evaluation.asd_score`), averaged over videos as the papers report them.

Pairs are aligned on their first ``min(len(generated), len(real))`` frames at 25 fps. The audio of
both is the real clip's track (the driving audio; ``audio_from="generated"`` uses the generated
file's own track, whose AAC encoding may shift it by a frame or two).

Every prerequisite (torch-fidelity for FID/KID, each weights file) is checked by
:func:`check_prerequisites` before any model loads or video is read. By default a metric whose
prerequisites are missing is not computed and the report says why ("not computed: ..."); one line on
stderr lists every missing one with its file and URL. ``--require fid,fvd,...`` (``ScoreConfig.require``)
makes a missing one an error that names them all (:class:`vividhead.errors.UserError`, exit 2).

A video that cannot be decoded (truncated, not a video) becomes a row with its ``error``; the other
pairs are scored and the report is written (``metrics.num_failed`` counts such rows).
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vividhead.evaluation.frames import FPS, SAMPLE_RATE, Loader, Video, fid_frame_indices, fit_audio

#: Metric groups ``--skip`` accepts.
METRICS = ("fid", "kid", "fvd", "sync", "asd")
#: Models ``--random-weights`` accepts (tests and cost measurements only; figures are not real).
RANDOMIZABLE = ("i3d", "syncnet")


@dataclass(frozen=True)
class ScoreConfig:
    """Protocol settings of :func:`score_videos` (all recorded in ``report.json``).

    Attributes:
        device: ``cpu`` / ``cuda``.
        skip: metric groups not computed (:data:`METRICS`).
        random_weights: models run at seeded random weights (:data:`RANDOMIZABLE`).
        seed: seed of random weights.
        fid_every: FID/KID use every ``fid_every``-th frame of each video (1 = all frames).
        fvd_clip_len / fvd_stride: FVD clip length and start stride in frames (stride None = clip
            length: non-overlapping clips).
        fvd_size: I3D input side (224 in the protocol).
        vshift: SyncNet offsets searched on each side (15).
        asd_weights: Light-ASD registry name (``lightasd_ava`` or ``lightasd_talkset``).
        audio_from: ``real`` (the driving audio) or ``generated`` (the generated file's track).
        score_real: also score Sync / ASD of the real videos (the ceiling to compare with).
        max_frames: score at most this many frames per video (None: all).
        weights_paths: registry name -> explicit weights path.
        batch_size: frames (Inception) per forward pass; I3D takes ``batch_size // 8`` clips.
        require: metric groups whose missing prerequisites are an error (default: a missing one is
            "not computed").
    """

    device: str = "cpu"
    skip: tuple[str, ...] = ()
    random_weights: tuple[str, ...] = ()
    seed: int = 0
    fid_every: int = 1
    fvd_clip_len: int = 16
    fvd_stride: int | None = None
    fvd_size: int = 224
    vshift: int = 15
    asd_weights: str = "lightasd_ava"
    audio_from: str = "real"
    score_real: bool = True
    max_frames: int | None = None
    weights_paths: dict[str, str] = field(default_factory=dict)
    batch_size: int = 32
    require: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if "all" in self.require:
            object.__setattr__(self, "require", tuple(m for m in METRICS if m not in self.skip))
        for flag, names in (("--skip", self.skip), ("--require", self.require)):
            bad = sorted(set(names) - set(METRICS))
            if bad:
                raise ValueError(f"{flag}: unknown metrics {bad}; choose from {list(METRICS)}")
        both = sorted(set(self.skip) & set(self.require))
        if both:
            raise ValueError(f"--skip and --require both name {both}")
        bad = sorted(set(self.random_weights) - set(RANDOMIZABLE))
        if bad:
            raise ValueError(f"--random-weights: unknown models {bad}; choose from {list(RANDOMIZABLE)}")
        if self.audio_from not in ("real", "generated"):
            raise ValueError("audio_from must be 'real' or 'generated'")
        if self.fid_every < 1 or self.fvd_clip_len < 9 or self.fvd_size < 32:
            raise ValueError("need fid_every >= 1, fvd_clip_len >= 9, fvd_size >= 32")

    def wants(self, metric: str) -> bool:
        """False when the metric group ``metric`` (one of :data:`METRICS`) is in ``skip``."""
        return metric not in self.skip

    def protocol(self) -> dict[str, Any]:
        """The settings as the report states them."""
        return {
            "fps": FPS,
            "sample_rate_hz": SAMPLE_RATE,
            "alignment": "first min(len(generated), len(real)) frames of each pair",
            "audio": "real clip's track (driving audio)" if self.audio_from == "real" else "generated file's track",
            "fid_kid": {
                "frames": "all frames" if self.fid_every == 1 else f"every {self.fid_every}th frame", "per_video": True,
                "extractor": "torch-fidelity inception-v3-compat, 2048-d pool features, TF-compatible resize to 299",
                "kid": "polynomial kernel degree 3, gamma 1/2048, coef0 1, 100 subsets of min(1000, n_gen, n_real), seed 2020",
            },
            "fvd": {
                "clip_len": self.fvd_clip_len, "stride": self.fvd_stride or self.fvd_clip_len,
                "input": f"RGB bilinear-resized to {self.fvd_size}x{self.fvd_size}, scaled to [-1, 1]"
                + ("" if self.fvd_size == 224 else " (NOT the 224 px protocol)"),
                "features": "400 Kinetics logits of the pytorch-i3d RGB I3D (rgb_imagenet.pt), averaged over time",
                "distance": "Frechet distance, sqrt-trace from eigvals(S_g S_r)",
                "protocol_note": "StyleGAN-V protocol with a state-dict I3D instead of i3d_torchscript.pt "
                "(same DeepMind network; the two ports were not compared here); unreliable with < ~400 clips",
            },
            "sync": {
                "protocol": "syncnet_python: face track, 224x224 crops (scale 0.4), 13 MFCC at 100 Hz, "
                f"5-frame windows, offsets +/-{self.vshift}; Sync-C = median - min of mean distances, Sync-D = min",
                "face_detector": "MediaPipe BlazeFace short-range (the references use S3FD)",
            },
            "asd": {
                "protocol": "Light-ASD Columbia_test: gray 112x112 face crops, chunk lengths 1-6 s, mean per-frame logit",
                "weights": self.asd_weights,
            },
            "max_frames": self.max_frames,
            "seed": self.seed,
        }


class EvalModels:
    """The models :func:`score_videos` needs, loaded once; ``close()`` releases the face detector.

    Attributes:
        records: ``{registry name: WeightRecord as dict}`` of every file used.
        skipped: ``{metric: reason}`` for metrics skipped by the config.
    """

    def __init__(self) -> None:
        self.inception = None
        self.i3d = None
        self.syncnet = None
        self.asd = None
        self.detector = None
        self.records: dict[str, dict] = {}
        self.skipped: dict[str, str] = {}

    def close(self) -> None:
        """Release the face detector's MediaPipe graph (the torch models go with the object)."""
        if self.detector is not None:
            from vividhead.evaluation.quiet import native_log_filter

            with native_log_filter():
                self.detector.close()
            self.detector = None


@dataclass
class Prerequisites:
    """What the wanted metrics need and which of it is missing (:func:`check_prerequisites`).

    Attributes:
        missing: ``{metric: reason}`` for each wanted metric that cannot be computed.
        items: one entry per missing thing (a package or a weights file, with where to get it),
            each listed once however many metrics need it.
    """

    missing: dict[str, str] = field(default_factory=dict)
    items: list[tuple[tuple[str, ...], str]] = field(default_factory=list)

    def message(self, metrics: list[str] | None = None) -> str:
        """One line: the metrics, then every missing thing with its file and URL, then how to fix."""
        from vividhead import weights as registry

        names = metrics if metrics is not None else list(self.missing)
        what = [w for ms, w in self.items if set(ms) & set(names)]
        where = os.environ.get("VIVIDHEAD_WEIGHTS_DIR") or "unset"
        return (f"{', '.join(names)}: missing " + "; ".join(what)
                + f" -- put weight files in $VIVIDHEAD_WEIGHTS_DIR (now {where}) or {registry.cache_dir()}, "
                "or pass --weights NAME=PATH")


def _missing_weights(name: str, explicit: str | None) -> str | None:
    """None when the registry entry ``name`` resolves (``explicit`` first, as ``--weights``), else
    what is missing in eval's words (``--weights NAME=PATH``, not a stage config)."""
    from vividhead import weights as registry

    if explicit and not Path(explicit).expanduser().is_file():
        return f"--weights {name}={explicit}: no such file"
    try:
        registry.resolve(name, explicit)
        return None
    except registry.WeightsNotFound:
        spec = registry.REGISTRY[name]
        how = "not found offline" if registry.offline() else "not found and its download failed"
        return f"{spec.filename} ({name}, {how}; from {spec.url})"


def check_prerequisites(cfg: ScoreConfig) -> Prerequisites:
    """Check every prerequisite of the metrics ``cfg`` wants (packages, weights files) without loading
    a model; weights are resolved through the registry (downloaded unless ``VIVIDHEAD_OFFLINE=1``)."""
    from vividhead.models.face_detector import WEIGHTS_NAME

    p = cfg.weights_paths
    needs: list[tuple[tuple[str, ...], str | None]] = []  # (metrics, what is missing or None)
    if cfg.wants("fid") or cfg.wants("kid"):
        from vividhead.evaluation.fid import EvalDependencyError, require_torch_fidelity

        group = tuple(m for m in ("fid", "kid") if cfg.wants(m))
        try:
            require_torch_fidelity()
        except EvalDependencyError:
            needs.append((group, "torch-fidelity with a torchvision that matches your torch "
                                 "(pip install 'vividhead[eval]' where such a torchvision exists, e.g. a CUDA machine)"))
        needs.append((group, _missing_weights("inception_fid", p.get("inception_fid"))))
    if cfg.wants("fvd") and "i3d" not in cfg.random_weights:
        needs.append((("fvd",), _missing_weights("i3d_rgb_imagenet", p.get("i3d_rgb_imagenet"))))
    if cfg.wants("sync") and "syncnet" not in cfg.random_weights:
        needs.append((("sync",), _missing_weights("syncnet_v2", p.get("syncnet_v2"))))
    if cfg.wants("asd"):
        needs.append((("asd",), _missing_weights(cfg.asd_weights, p.get(cfg.asd_weights))))
    face = tuple(m for m in ("sync", "asd") if cfg.wants(m))
    if face:
        needs.append((face, _missing_weights(WEIGHTS_NAME, p.get(WEIGHTS_NAME))))
    out = Prerequisites()
    for metrics, what in needs:
        if what is None:
            continue
        out.items.append((metrics, what))
        for m in metrics:
            out.missing[m] = f"{out.missing[m]}; {what}" if m in out.missing else f"missing {what}"
    return out


def load_eval_models(cfg: ScoreConfig, log: Callable[[str], None] = lambda s: None) -> EvalModels:
    """Check every prerequisite (:func:`check_prerequisites`), then load the models of the metrics
    that can be computed; the others are listed in ``EvalModels.skipped`` as "not computed" with the
    reason, and ``log`` gets one line naming every missing file with its URL.

    Raises:
        vividhead.errors.UserError: a metric in ``cfg.require`` cannot be computed, or no wanted
            metric can (one line listing every missing file with its URL).
    """
    from vividhead.errors import UserError
    from vividhead.evaluation import loaders
    from vividhead.evaluation.quiet import native_log_filter

    m = EvalModels()
    p = cfg.weights_paths
    for metric in cfg.skip:
        m.skipped[metric] = "skipped (--skip)"
    pre = check_prerequisites(cfg)
    required = [x for x in cfg.require if x in pre.missing]
    if required:
        raise UserError(f"--require {','.join(cfg.require)}: cannot compute {pre.message(required)}")
    wanted = [x for x in METRICS if cfg.wants(x)]
    if wanted and all(x in pre.missing for x in wanted):
        raise UserError(f"no metric can be computed: {pre.message()}")
    if pre.missing:
        log(f"not computed: {pre.message()} (--require METRICS makes this an error; --skip METRICS silences it)")
    for metric, reason in pre.missing.items():
        m.skipped[metric] = reason

    def can(metric: str) -> bool:
        return cfg.wants(metric) and metric not in pre.missing

    try:
        if can("fid") or can("kid"):
            from vividhead.evaluation.fid import InceptionFeatures

            rec = loaders.inception_weights(p.get("inception_fid"))
            m.inception = InceptionFeatures(rec.path, cfg.device, cfg.batch_size)
            m.records[rec.name] = rec.to_dict()
        if can("fvd"):
            seed = cfg.seed if "i3d" in cfg.random_weights else None
            m.i3d, rec = loaders.load_i3d(p.get("i3d_rgb_imagenet"), cfg.device, seed)
            m.records[rec.name] = rec.to_dict()
        if can("sync"):
            seed = cfg.seed if "syncnet" in cfg.random_weights else None
            m.syncnet, rec = loaders.load_syncnet(p.get("syncnet_v2"), cfg.device, seed)
            m.records[rec.name] = rec.to_dict()
        if can("asd"):
            m.asd, rec = loaders.load_asd(p.get(cfg.asd_weights), cfg.device, cfg.asd_weights)
            m.records[rec.name] = rec.to_dict()
        if can("sync") or can("asd"):
            with native_log_filter():
                m.detector, rec = loaders.face_detector(p.get("face_mediapipe_detector"))
            m.records[rec.name] = rec.to_dict()
    except BaseException:
        m.close()
        raise
    return m


def _face_scores(video_frames: np.ndarray, audio: np.ndarray, cfg: ScoreConfig, m: EvalModels,
                 timing: dict[str, float]) -> dict[str, Any]:
    """Sync-C/D, AV offset and Light-ASD of one video; a face-track or length failure is recorded
    as ``error`` (its reason code) with the scores left None."""
    from vividhead.errors import MediaError
    from vividhead.evaluation.faces import face_crops

    out: dict[str, Any] = {"sync_c": None, "sync_d": None, "av_offset": None, "asd": None, "error": None}
    if m.syncnet is None and m.asd is None:
        return out
    from vividhead.evaluation.quiet import native_log_filter

    try:
        t = time.perf_counter()
        with native_log_filter():
            faces = face_crops(video_frames, m.detector, keep_bgr=m.syncnet is not None)
        timing["face_track"] = timing.get("face_track", 0.0) + time.perf_counter() - t
        if m.syncnet is not None:
            from vividhead.evaluation.sync import sync_metrics

            t = time.perf_counter()
            s = sync_metrics(faces.bgr224, audio, m.syncnet, cfg.vshift, device=cfg.device)
            timing["sync"] = timing.get("sync", 0.0) + time.perf_counter() - t
            out.update(sync_c=s.lse_c, sync_d=s.lse_d, av_offset=s.av_offset_frames)
        if m.asd is not None:
            from vividhead.evaluation.asd_score import asd_metric, asd_visual

            t = time.perf_counter()
            a = asd_metric(asd_visual(faces.gray112, m.asd, cfg.device), audio, m.asd, cfg.device)
            timing["asd"] = timing.get("asd", 0.0) + time.perf_counter() - t
            out["asd"] = a.score
    except MediaError as exc:
        out["error"] = exc.reason
    return out


class VideoError(Exception):
    """One pair could not be decoded (or generated): its row gets the message as ``error``."""


def _decode(loader: Loader, side: str) -> Video:
    """Call a video loader; a truncated file, a file that is not a video, or a video without frames
    becomes a :class:`VideoError` naming the side (``generated`` / ``real``)."""
    import av

    from vividhead.errors import MediaError

    try:
        return loader()
    except (av.FFmpegError, ValueError, OSError, IndexError, EOFError, MediaError) as exc:
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()]
        raise VideoError(f"{side}: {type(exc).__name__}: {'; '.join(lines)[:300]}") from exc


def _mean(values: list) -> float | None:
    v = [x for x in values if x is not None]
    return float(np.mean(v)) if v else None


def score_videos(
    names: list[str],
    generated: dict[str, Loader],
    real: dict[str, Loader],
    cfg: ScoreConfig,
    models: EvalModels,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Score paired videos.

    Args:
        names: the pairs to score (keys of both ``generated`` and ``real``).
        generated, real: ``{name: loader}`` (:func:`vividhead.evaluation.frames.list_videos`).
        cfg: protocol settings.
        models: :func:`load_eval_models` of ``cfg``.
        log: progress lines.

    Returns:
        The report dict (see :func:`vividhead.evaluation.report.write_report`): ``protocol``,
        ``weights``, ``metrics`` (set-level figures, means of per-video figures, counts),
        ``random_weights`` (metric -> bool), ``skipped``, ``per_video`` rows, ``timing_s``.

    Raises:
        ValueError: no pair. (Too few FVD clips is not an error: FVD is then listed under ``skipped``.)
    """
    from vividhead.evaluation.fvd import i3d_features, video_clips

    if not names:
        raise ValueError("no video pairs to score")
    timing: dict[str, float] = {}
    fid_gen, fid_real, fvd_gen, fvd_real, rows = [], [], [], [], []
    total_frames = 0
    failed = 0
    for i, name in enumerate(names):
        t = time.perf_counter()
        try:
            g: Video = _decode(generated[name], "generated")
            r: Video = _decode(real[name], "real")
        except VideoError as exc:
            failed += 1
            rows.append({"name": name, "error": str(exc)})
            log(f"[{i + 1}/{len(names)}] {name}: not scored ({exc})")
            continue
        finally:
            timing["decode_or_generate"] = timing.get("decode_or_generate", 0.0) + time.perf_counter() - t
        n = min(len(g.frames), len(r.frames))
        if cfg.max_frames:
            n = min(n, cfg.max_frames)
        total_frames += n
        gf, rf = g.frames[:n], r.frames[:n]
        audio = fit_audio(r.audio if cfg.audio_from == "real" or g.audio is None else g.audio, n)
        row: dict[str, Any] = {
            "name": name, "frames": n, "duration_s": n / FPS,
            "generated_frames": len(g.frames), "real_frames": len(r.frames),
            "generated_size": f"{gf.shape[2]}x{gf.shape[1]}", "real_size": f"{rf.shape[2]}x{rf.shape[1]}",
        }
        if models.inception is not None:
            t = time.perf_counter()
            idx = fid_frame_indices(n, cfg.fid_every)
            fid_gen.append(models.inception(gf[idx]))
            fid_real.append(models.inception(rf[idx]))
            timing["inception"] = timing.get("inception", 0.0) + time.perf_counter() - t
        if models.i3d is not None:
            t = time.perf_counter()
            kw = dict(size=cfg.fvd_size, device=cfg.device, batch_size=max(1, cfg.batch_size // 8))
            fvd_gen.append(i3d_features(video_clips(gf, cfg.fvd_clip_len, cfg.fvd_stride), models.i3d, **kw))
            fvd_real.append(i3d_features(video_clips(rf, cfg.fvd_clip_len, cfg.fvd_stride), models.i3d, **kw))
            timing["i3d"] = timing.get("i3d", 0.0) + time.perf_counter() - t
        for prefix, frames in (("gen", gf), ("real", rf)) if cfg.score_real else (("gen", gf),):
            s = _face_scores(frames, audio, cfg, models, timing)
            row.update({f"{prefix}_{k}": v for k, v in s.items()})
        rows.append(row)
        log(f"[{i + 1}/{len(names)}] {name}: {n} frames"
            + "".join(f", {k} {row[k]:.3f}" for k in ("gen_sync_c", "gen_sync_d", "gen_asd") if row.get(k) is not None)
            + (f" ({row['gen_error']})" if row.get("gen_error") else ""))

    metrics: dict[str, Any] = {"num_videos": len(rows), "num_failed": failed, "num_frames": total_frames}
    skipped = dict(models.skipped)
    if failed == len(rows):
        for metric in METRICS:
            if cfg.wants(metric) and metric not in skipped:
                skipped[metric] = "no video could be scored"
    elif models.inception is not None:
        from vividhead.evaluation.fid import fid_from_features, kid_from_features

        a, b = np.concatenate(fid_gen), np.concatenate(fid_real)
        metrics.update(fid_frames_generated=len(a), fid_frames_real=len(b))
        if cfg.wants("fid"):
            metrics["fid"] = fid_from_features(a, b)
        if cfg.wants("kid"):
            metrics["kid_mean"], metrics["kid_std"], metrics["kid_subset_size"] = kid_from_features(a, b)
    if models.i3d is not None and fvd_gen:
        from vividhead.evaluation.fvd import frechet_distance

        a, b = np.concatenate(fvd_gen), np.concatenate(fvd_real)
        metrics.update(fvd_clips_generated=len(a), fvd_clips_real=len(b))
        if min(len(a), len(b)) >= 2:
            metrics["fvd"] = frechet_distance(a, b)
        else:
            skipped["fvd"] = f"fewer than 2 clips of {cfg.fvd_clip_len} frames"
    for prefix in ("gen", "real") if cfg.score_real else ("gen",):
        keys = (("sync_c", "sync_d") if models.syncnet is not None else ()) + (("asd",) if models.asd is not None else ())
        for key in keys:
            vals = [r.get(f"{prefix}_{key}") for r in rows]
            metrics[f"{prefix}_{key}_mean"] = _mean(vals)
            metrics[f"{prefix}_{key}_videos"] = sum(v is not None for v in vals)
    random = {
        "fid": False, "kid": False,
        "fvd": bool(models.records.get("i3d_rgb_imagenet", {}).get("random_weights")),
        "sync": bool(models.records.get("syncnet_v2", {}).get("random_weights")),
        "asd": False,
    }
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "protocol": cfg.protocol(),
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
        "weights": models.records,
        "metrics": metrics,
        "random_weights": random,
        "skipped": skipped,
        "per_video": rows,
        "timing_s": {k: round(v, 3) for k, v in timing.items()},
    }

"""The curation job: inputs -> probe -> dedup -> clips -> filters -> shards + manifest + stats.

Runs on Ray Data: an in-process local Ray by default, or a running cluster (``ray_address``).
Rows carry metadata and encoded clip bytes, never decoded frames. The driver writes shards as
inputs complete, so a killed run loses only unfinished inputs and a rerun resumes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import pyarrow as pa

from vividhead.curation import __version__, weights
from vividhead.curation.config import CurateConfig, ConfigError
from vividhead.curation.inputs import expand_inputs
from vividhead.curation.records import KEPT
from vividhead.curation.stage import GlobalStage, Stage
from vividhead.curation.stages.dedup import DedupStage
from vividhead.curation.stages.face import FaceStage
from vividhead.curation.stages.face_visibility import FaceVisibilityStage
from vividhead.curation.stages.normalize import NormalizeStage
from vividhead.curation.stages.probe import ProbeStage
from vividhead.curation.stages.scene_split import SceneSplitStage
from vividhead.curation.stages.transition import TransitionStage
from vividhead.curation.stages.occlusion import OcclusionStage
from vividhead.curation.stages.speech import SpeechStage
from vividhead.curation.stages.syncnet import SyncNetStage
from vividhead.curation.stages.asd import ASDStage
from vividhead.curation.stages.face_mask import FaceMaskStage
from vividhead.curation.stages.audio_features import AudioFeaturesStage
from vividhead.curation.stages.attributes import AttributesStage
from vividhead.curation.stages.write import ShardWriter
from vividhead.curation.stats import stage_stats
from vividhead.curation.storage import Storage, redact

log = logging.getLogger("vividhead.curation")


def build_clip_stages(cfg: CurateConfig) -> list[Stage]:
    """The per-clip stages in pipeline order (disabled ones included; the adapter skips them)."""
    fps = cfg.normalize.fps
    return [
        SceneSplitStage(cfg.scene_split, fps),
        NormalizeStage(cfg.normalize),
        FaceStage(cfg.face),
        FaceVisibilityStage(cfg.face_visibility, fps),
        TransitionStage(cfg.transition),
        OcclusionStage(cfg.occlusion, fps),
        SpeechStage(cfg.speech),
        SyncNetStage(cfg.syncnet),
        ASDStage(cfg.asd),
        FaceMaskStage(cfg.face_mask),
        AudioFeaturesStage(cfg.audio_features, fps),
        AttributesStage(cfg.attributes),
    ]


def stage_order(cfg: CurateConfig) -> list[str]:
    """Every stage name in pipeline order, for stats and the summary."""
    return ["probe", "dedup"] + [s.name for s in build_clip_stages(cfg)] + ["write"]


def check_weights(stages: Sequence[Stage]) -> None:
    """Resolve the weights of every enabled stage before any work starts.

    Raises:
        weights.WeightsNotFound: naming the file and where to put it.
    """
    for stage in stages:
        if stage.cfg.enabled:
            for name, explicit in stage.weights():
                weights.resolve(name, explicit)


@dataclass
class RunResult:
    """What a run produced.

    Attributes:
        manifest: the full manifest (this run and earlier ones), :data:`vividhead.curation.records.MANIFEST_SCHEMA`.
        stats: the content of ``stats.json``.
        skipped_inputs: inputs already finished by an earlier run (resume).
    """

    manifest: pa.Table
    stats: dict
    skipped_inputs: int = 0


def _init_ray(address: Optional[str]) -> None:
    import ray

    if ray.is_initialized():
        return
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)


def run_curation(
    inputs: Sequence[str],
    output: str,
    cfg: CurateConfig,
    ray_address: Optional[str] = None,
    on_input_done: Optional[Callable[[int, int], None]] = None,
) -> RunResult:
    """Curate ``inputs`` into WebDataset shards under ``output``.

    Args:
        inputs: INPUT arguments (files, folders, globs, URLs, URL lists); see :mod:`vividhead.curation.inputs`.
        output: output root, a local folder or an fsspec URL (``s3://bucket/prefix``).
        ray_address: ``None`` for an in-process local Ray (or ``$RAY_ADDRESS``), ``auto`` or
            ``ray://host:port`` to join a cluster. An already initialised Ray is reused.
        on_input_done: called as ``(inputs_done, inputs_total)`` while the run progresses.

    Raises:
        ConfigError: a required stage is disabled.
        weights.WeightsNotFound: an enabled stage's weights are missing (before any work).
        curation.inputs.InputError: an INPUT cannot be expanded.
        OSError: the output is not writable (before any work).
    """
    import ray
    import ray.data

    for required in ("probe", "scene_split", "normalize", "write"):
        if not getattr(cfg, required).enabled:
            raise ConfigError(f"{required}.enabled: this stage cannot be disabled (for scene_split use detector: none)")
    wall_start = time.perf_counter()
    cache_dir = cfg.run.cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "vividhead")
    probe = ProbeStage(cfg.probe, cache_dir, cfg.run.storage_options)
    dedup: GlobalStage = DedupStage(cfg.dedup)
    clip_stages = build_clip_stages(cfg)
    check_weights([probe, *clip_stages])

    storage = Storage(output, cfg.run.storage_options)
    writer = ShardWriter(storage, cfg.write.samples_per_shard, cfg.normalize.fps, cfg.normalize.sample_rate_hz)
    done = writer.prepare()
    done_ids = set(done.column("input_id").to_pylist())
    rows = expand_inputs(inputs, cfg.run.storage_options)
    todo = [r for r in rows if r["input_id"] not in done_ids]
    order = {r["input_id"]: i for i, r in enumerate(rows)}
    previous = [
        r for r in done.select(["input_id", "source_id", "md5", "stage"]).to_pylist()
        if r["stage"] not in ("probe", "dedup")
    ]

    if todo:
        _init_ray(ray_address)
        ray.data.DataContext.get_current().enable_progress_bars = False
        ds = ray.data.from_items(todo, override_num_blocks=len(todo))
        from vividhead.curation.ray_adapter import apply_stage, apply_stages

        probed = sorted(apply_stage(ds, probe).take_all(), key=lambda r: order[r["input_id"]])
        if cfg.dedup.enabled:
            probed = dedup.process_all(probed, previous)
        ds = ray.data.from_items(probed, override_num_blocks=len(probed))
        ds = apply_stages(ds, clip_stages)
        finished = 0
        for row in ds.iter_rows():
            if writer.add(dict(row)):
                finished += 1
                if on_input_done:
                    on_input_done(finished, len(todo))
        writer.close()

    manifest = writer.write_manifest()
    stats = {
        "version": __version__,
        "inputs": len(set(manifest.column("input_id").to_pylist())),
        "clips_kept": sum(s == KEPT and c is not None for s, c in zip(manifest.column("status").to_pylist(), manifest.column("clip_id").to_pylist())),
        "hours_kept": round(sum(d or 0.0 for d, s in zip(manifest.column("duration_s").to_pylist(), manifest.column("status").to_pylist()) if s == KEPT) / 3600.0, 6),
        "shards": sorted({s for s in manifest.column("shard").to_pylist() if s is not None}),
        "stages": stage_stats(manifest, stage_order(cfg)),
        "stage_order": stage_order(cfg),
        "wall_s": round(time.perf_counter() - wall_start, 3),
        "skipped_inputs": len(rows) - len(todo),
        "config": redact(cfg.to_dict()),  # no credentials in stats.json
    }
    storage.write_bytes("stats.json", json.dumps(stats, indent=2, sort_keys=True).encode())
    return RunResult(manifest, stats, len(rows) - len(todo))

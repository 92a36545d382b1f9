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

from vividhead import weights
from vividhead.curation import __version__
from vividhead.curation.config import CurateConfig
from vividhead.curation.inputs import expand_inputs
from vividhead.curation.records import KEPT, Row
from vividhead.curation.stage import BaseStage, GlobalStage, Stage, check_devices
from vividhead.curation.stage_list import STAGE_ORDER, STAGES
from vividhead.curation.stats import stage_stats
from vividhead.curation.storage import Storage, redact

log = logging.getLogger("vividhead.curation")


def build_stages(cfg: CurateConfig) -> list[BaseStage]:
    """Every stage of :data:`~vividhead.curation.stage_list.STAGES`, in pipeline order, built from
    ``cfg`` (disabled ones included: they pass rows through and are reported ``off``)."""
    return [cls.from_config(cfg) for cls in STAGES]


def check_weights(stages: Sequence[BaseStage]) -> None:
    """Resolve the weights of every enabled stage before any work starts.

    Raises:
        weights.WeightsNotFound: naming the file and where to put it.
    """
    for stage in stages:
        if stage.cfg.enabled:
            for name, explicit in stage.weights():
                weights.resolve(name, explicit)


def gpus_available(ray_address: Optional[str]) -> tuple[float, str]:
    """GPUs the run can use and where they were counted: the Ray cluster's when joining one (or
    when Ray is already up), else the CUDA devices torch sees on this node."""
    import ray

    if ray.is_initialized() or ray_address or os.environ.get("RAY_ADDRESS"):
        _init_ray(ray_address)
        return float(ray.cluster_resources().get("GPU", 0.0)), "the Ray cluster"
    import torch

    return float(torch.cuda.device_count() if torch.cuda.is_available() else 0), "this node"


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
    on_input_done: Optional[Callable[[int, int, int], None]] = None,
) -> RunResult:
    """Curate ``inputs`` into WebDataset shards under ``output``.

    Args:
        inputs: INPUT arguments (files, folders, globs, URLs, URL lists); see :mod:`vividhead.curation.inputs`.
        output: output root, a local folder or an fsspec URL (``s3://bucket/prefix``).
        ray_address: ``None`` for an in-process local Ray (or ``$RAY_ADDRESS``), ``auto`` or
            ``ray://host:port`` to join a cluster. An already initialised Ray is reused.
        on_input_done: called as ``(inputs_done, inputs_total, clips_kept)`` each time an input
            finishes (counts of this run).

    Raises:
        ConfigError: a stage asks for more GPUs than there are (before any work).
        weights.WeightsNotFound: an enabled stage's weights are missing (before any work).
        curation.inputs.InputError: an INPUT cannot be expanded.
        OSError: the output is not writable (before any work).
    """
    import ray
    import ray.data

    wall_start = time.perf_counter()
    stages = build_stages(cfg)
    *work, sink = stages  # the list ends with the sink (checked by tests/curation/test_stage_contract.py)
    if any(s.cfg.enabled and s.cfg.num_gpus > 0 for s in stages):
        check_devices(stages, *gpus_available(ray_address))
    check_weights(stages)

    storage = Storage(output, cfg.run.storage_options)
    writer = sink.open(storage)
    done = writer.prepare()
    done_ids = set(done.column("input_id").to_pylist())
    rows = expand_inputs(inputs, cfg.run.storage_options)
    todo = [r for r in rows if r["input_id"] not in done_ids]

    write_s, media_bytes = 0.0, 0  # the driver's share: shard writing and uploads
    if todo:
        _init_ray(ray_address)
        ray.data.DataContext.get_current().enable_progress_bars = False
        order = {r["input_id"]: i for i, r in enumerate(rows)}
        finished = kept = 0
        for row in chain_stages(todo, work, done, order, cfg.run.group_frame_stages, cfg.run.chain_stages).iter_rows():
            kept += row["status"] == KEPT and row.get("clip_id") is not None
            start = time.perf_counter()
            media_bytes += sum(len(row.get(k) or b"") for k in ("video_bytes", "audio_bytes", "extra_members"))
            if writer.add(dict(row)):
                finished += 1
                if on_input_done:
                    on_input_done(finished, len(todo), kept)
            write_s += time.perf_counter() - start
        start = time.perf_counter()
        writer.close()
        write_s += time.perf_counter() - start

    manifest = writer.write_manifest()
    status = manifest.column("status").to_pylist()
    stats = {
        "version": __version__,
        "inputs": len(set(manifest.column("input_id").to_pylist())),
        "clips_kept": sum(s == KEPT and c is not None for s, c in zip(status, manifest.column("clip_id").to_pylist())),
        "hours_kept": round(sum(d or 0.0 for d, s in zip(manifest.column("duration_s").to_pylist(), status) if s == KEPT) / 3600.0, 6),
        "shards": sorted({s for s in manifest.column("shard").to_pylist() if s is not None}),
        "stages": stage_stats(manifest, stages),
        "stage_order": list(STAGE_ORDER),
        "wall_s": round(time.perf_counter() - wall_start, 3),
        # The driver writes every shard: its seconds and the bytes it wrote show whether it bounds a run.
        "driver_write": {"seconds": round(write_s, 3), "media_mb": round(media_bytes / 1e6, 3)},
        "skipped_inputs": len(rows) - len(todo),
        "config": redact(cfg.to_dict()),  # no credentials in stats.json
    }
    storage.write_bytes("stats.json", json.dumps(stats, indent=2, sort_keys=True).encode())
    return RunResult(manifest, stats, len(rows) - len(todo))


def chain_stages(rows: list[Row], stages: Sequence[BaseStage], done: pa.Table, order: dict[str, int],
                 group_frames: bool = True, chain: bool = True):
    """Chain ``stages`` (in order, the sink excluded) over ``rows`` as one Ray Data dataset.

    Per-row stages become operators (:func:`vividhead.curation.ray_adapter.apply_stages`). A global
    stage collects the rows that reached it, in input order, and runs on the driver with the
    manifest rows of earlier runs whose inputs got past it (so an earlier run's copy wins in dedup).
    ``group_frames``, ``chain``: see :func:`vividhead.curation.ray_adapter.apply_stages`.
    """
    import ray.data

    from vividhead.curation.ray_adapter import apply_stages

    pos = {name: i for i, name in enumerate(STAGE_ORDER)}
    earlier = done.select(["input_id", "source_id", "md5", "stage"]).to_pylist()
    ds = ray.data.from_items(rows, override_num_blocks=len(rows))
    pending: list[Stage] = []
    for stage in stages:
        if not isinstance(stage, GlobalStage):
            pending.append(stage)
            continue
        reached = sorted(apply_stages(ds, pending, group_frames, chain).take_all(),
                         key=lambda r: (order[r["input_id"]], r.get("clip_index") if r.get("clip_index") is not None else -1))
        if stage.cfg.enabled:
            previous = [r for r in earlier if pos.get(r["stage"], len(pos)) > pos[stage.name]]
            reached = stage.process_all(reached, previous)
        ds = ray.data.from_items(reached, override_num_blocks=max(1, len(reached)))
        pending = []
    return apply_stages(ds, pending, group_frames, chain)

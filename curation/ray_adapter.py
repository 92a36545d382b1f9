"""The one place where stages meet Ray Data.

A :class:`~curation.stage.Stage` becomes a ``Dataset.flat_map``: stages with a ``setup`` (models)
run in an actor pool (``ActorPoolStrategy``) so the model loads once per actor; others run as
tasks. Resources come from the stage's config (``num_cpus``, ``num_gpus``, ``workers``). Rejected
rows pass through untouched; a :class:`~curation.stage.MediaError` becomes a rejection; any other
exception is a bug and fails the dataset.
"""

from __future__ import annotations

import json
import time

import ray.data

from curation.records import KEPT, Row, reject
from curation.stage import MediaError, Stage


def run_stage(stage: Stage, row: Row) -> list[Row]:
    """Apply ``stage`` to one row with rejection routing and timing (seconds, in ``timings``)."""
    if row["status"] != KEPT:
        return [row]
    start = time.perf_counter()
    try:
        out = stage.process(row)
    except MediaError as exc:
        out = [reject(row, stage.name, exc.reason, exc.detail)]
    elapsed = time.perf_counter() - start
    if out:
        timings = json.loads(out[0].get("timings") or "{}")
        timings[stage.name] = round(timings.get(stage.name, 0.0) + elapsed, 4)
        out[0]["timings"] = json.dumps(timings, sort_keys=True)
    return out


class StageActor:
    """Ray Data callable class: ``setup()`` once per actor, then one row per call."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        stage.setup()

    def __call__(self, row: Row) -> list[Row]:
        return run_stage(self.stage, row)


class _StageTask:
    """Picklable function object for stages without models."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def __call__(self, row: Row) -> list[Row]:
        return run_stage(self.stage, row)


def needs_actor(stage: Stage) -> bool:
    """True when the stage overrides :meth:`Stage.setup` (it loads something once per worker)."""
    return type(stage).setup is not Stage.setup


def apply_stage(ds: ray.data.Dataset, stage: Stage) -> ray.data.Dataset:
    """Append ``stage`` to ``ds`` as a Ray Data operator (a no-op when the stage is disabled)."""
    cfg = stage.cfg
    if not cfg.enabled:
        return ds
    remote = {"num_cpus": cfg.num_cpus}
    if cfg.num_gpus:
        remote["num_gpus"] = cfg.num_gpus
    if needs_actor(stage):
        if cfg.workers:
            compute = ray.data.ActorPoolStrategy(size=cfg.workers)
        else:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1) // max(cfg.num_cpus, 1)))
            compute = ray.data.ActorPoolStrategy(min_size=1, max_size=cpus)
        return ds.flat_map(StageActor, fn_constructor_args=(stage,), compute=compute, **remote)
    return ds.flat_map(_StageTask(stage), **remote)

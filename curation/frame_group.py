"""Consecutive stages as one per-row operator: frame groups (one decode, one face track) and chains.

:func:`group_frame_stages` turns each run of consecutive enabled
:class:`~vividhead.curation.stage.FrameStage` s that share a device (all on CPU, or all asking
for GPUs) into one :class:`FrameGroup`. The group runs its stages in pipeline order over one
:class:`~vividhead.curation.decoded_clip.DecodedClip` per row; each stage keeps its own timing,
columns and rejection (a rejected row skips the rest of the group, as it skips the rest of the
pipeline), so ``stats.json`` and the manifest read as if the stages ran one after another.
The group's frame decode and face detection are timed under the first stage that asks for them.

:func:`chain_stages` then turns each run of consecutive CPU stages (groups included) that holds at
least one stage with models into one :class:`StageChain`: one actor pool runs the whole run on
each row, so the run costs one set of actor processes instead of one per model stage, and the
rows (with their encoded clips) cross no process boundary between its stages. The same rule of
own timing, columns and rejections holds.
"""

from __future__ import annotations

import json
import resource
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from vividhead.curation.records import KEPT, Row, reject
from vividhead.curation.stage import FrameStage, Stage, StageConfig
from vividhead.errors import MediaError

if TYPE_CHECKING:
    from vividhead.curation.decoded_clip import DecodedClip


@dataclass(frozen=True)
class GroupConfig(StageConfig):
    """Resources of a group: the largest CPU and GPU share, pool size and pool start
    (``min_workers``) of its stages, and the largest memory request (the stages share one decoded
    clip)."""


class _Composite(Stage):
    """Stages run as one: the largest CPU and GPU share, pool size, pool start and memory request
    of its members, every member's device check, set-up and teardown."""

    def __init__(self, stages: Sequence[Stage]) -> None:
        cfgs = [s.cfg for s in stages]
        pools = [c.workers for c in cfgs if c.workers]
        starts = [c.min_workers for c in cfgs if c.min_workers]
        super().__init__(GroupConfig(
            enabled=True,
            num_cpus=max(c.num_cpus for c in cfgs),
            num_gpus=max(c.num_gpus for c in cfgs),
            workers=max(pools) if pools else None,
            min_workers=max(starts) if starts else None,
            memory_gib=max(c.memory_gib for c in cfgs),
        ))
        self.stages = list(stages)
        self.name = "+".join(s.name for s in stages)

    def device(self) -> str:
        for stage in self.stages:
            stage.device()  # each stage's device check, with its own config key in the message
        return self.stages[0].device()

    def setup(self) -> None:
        for stage in self.stages:
            stage.setup()

    def teardown(self) -> None:
        for stage in self.stages:
            stage.teardown()


class FrameGroup(_Composite):
    """Runs ``stages`` (frame stages, in pipeline order) on one shared decoded clip per row."""

    def process(self, row: Row) -> list[Row]:
        from vividhead.curation.decoded_clip import DecodedClip

        clip: Optional[DecodedClip] = None
        for stage in self.stages:
            if row["status"] != KEPT:
                break
            if clip is None:
                clip = DecodedClip(row["video_bytes"], row.get("audio_bytes"))
            (row,) = run_stage(stage, row, clip)
        return [row]


class StageChain(_Composite):
    """Runs ``stages`` (per-row stages and frame groups, in pipeline order) one after another on
    each row in one worker; every row a stage returns (``scene_split``: one per clip) goes through
    the rest of the chain."""

    def process(self, row: Row) -> list[Row]:
        rows = [row]
        for stage in self.stages:
            rows = [out for r in rows for out in run_stage(stage, r)]
        return rows


def loads_models(stage: Stage) -> bool:
    """True when the stage overrides :meth:`Stage.setup` (it loads something once per worker, so
    it runs in an actor)."""
    return type(stage).setup is not Stage.setup


#: ``timings`` key prefix of a stage's CPU seconds (the bare stage name holds its wall seconds).
CPU_PREFIX = "cpu:"


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of its finished, waited-for children."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def run_stage(stage: Stage, row: Row, clip: Optional[DecodedClip] = None) -> list[Row]:
    """Apply ``stage`` to one row with rejection routing and timing (``timings``: the stage's wall
    seconds under its name, and its CPU seconds under ``cpu:<name>``: this worker process's user +
    system time, all its threads, plus the child processes it waited for, e.g. FFmpeg).

    ``clip``: the row's media decoded once and shared with other frame stages (a
    :class:`~vividhead.curation.stage.FrameStage` then runs ``process_clip``).
    """
    if row["status"] != KEPT:
        return [row]
    if isinstance(stage, _Composite):
        return stage.process(row)  # routes and times each of its stages itself
    start, cpu_start = time.perf_counter(), _cpu_s()
    try:
        out = stage.process_clip(row, clip) if clip is not None else stage.process(row)
    except MediaError as exc:
        out = [reject(row, stage.name, exc.reason, exc.detail)]
    elapsed, cpu = time.perf_counter() - start, _cpu_s() - cpu_start
    if out:
        timings = json.loads(out[0].get("timings") or "{}")
        timings[stage.name] = round(timings.get(stage.name, 0.0) + elapsed, 4)
        timings[CPU_PREFIX + stage.name] = round(timings.get(CPU_PREFIX + stage.name, 0.0) + cpu, 4)
        out[0]["timings"] = json.dumps(timings, sort_keys=True)
    return out


def group_frame_stages(stages: Sequence[Stage]) -> list[Stage]:
    """``stages`` with each run of consecutive enabled frame stages on one device replaced by a
    :class:`FrameGroup` (a run of one stays as it is); disabled stages are dropped from runs."""
    out: list[Stage] = []
    run: list[FrameStage] = []

    def close_run() -> None:
        if len(run) > 1:
            out.append(FrameGroup(run))
        else:
            out.extend(run)
        run.clear()

    for stage in stages:
        if not stage.cfg.enabled and isinstance(stage, FrameStage):
            continue
        if isinstance(stage, FrameStage) and (not run or (run[0].cfg.num_gpus > 0) == (stage.cfg.num_gpus > 0)):
            run.append(stage)
            continue
        close_run()
        if isinstance(stage, FrameStage):
            run.append(stage)
        else:
            out.append(stage)
    close_run()
    return out


def chain_stages(stages: Sequence[Stage]) -> list[Stage]:
    """``stages`` with each run of consecutive enabled CPU stages (``num_gpus == 0``) that holds
    at least one stage with models (:func:`loads_models`) replaced by a :class:`StageChain`;
    disabled stages are dropped. A run without models stays as it is (Ray Data fuses consecutive
    tasks itself); a stage asking for GPUs stays on its own, so its pool is sized for the GPUs.
    """
    out: list[Stage] = []
    run: list[Stage] = []

    def close_run() -> None:
        if len(run) > 1 and any(loads_models(s) for s in run):
            out.append(StageChain(run))
        else:
            out.extend(run)
        run.clear()

    for stage in stages:
        if not stage.cfg.enabled:
            continue
        if stage.cfg.num_gpus > 0:
            close_run()
            out.append(stage)
        else:
            run.append(stage)
    close_run()
    return out

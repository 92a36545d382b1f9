"""The one place where stages meet Ray Data.

A :class:`~vividhead.curation.stage.Stage` becomes a ``Dataset.flat_map``: stages with a ``setup`` (models)
run in an actor pool (``ActorPoolStrategy``) so the model loads once per actor, and ``teardown``
runs when the actor shuts down; others run as tasks. Resources come from the stage's config
(``num_cpus``, ``num_gpus``, ``workers``, ``min_workers``). Rejected rows pass through untouched; a
:class:`~vividhead.errors.MediaError` becomes a rejection (:func:`run_stage`); any other exception is a bug and
fails the dataset.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from typing import Sequence

import ray.data

# run_stage (one row through one stage or group, no Ray) lives with the frame group, which calls it.
from vividhead.curation.frame_group import chain_stages, group_frame_stages, loads_models, run_stage
from vividhead.curation.records import Row
from vividhead.curation.stage import Stage


class StageActor:
    """Ray Data callable class: the device check and ``setup()`` once per actor, then one row per
    call; ``teardown()`` when Ray Data shuts the actor down (it drops the callable, so ``__del__``)."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        size_threads(stage.cfg.num_cpus)
        stage.device()  # the device policy: DeviceError when num_gpus > 0 and there is no CUDA
        stage.setup()

    def __call__(self, row: Row) -> list[Row]:
        return run_stage(self.stage, row)

    def __del__(self) -> None:
        stage = getattr(self, "stage", None)
        if stage is not None:
            with contextlib.suppress(Exception):  # interpreter shutdown: nothing left to report to
                stage.teardown()


def size_threads(num_cpus: float) -> None:
    """Size OpenCV's thread pool in this worker to the CPUs its stage asks for (at least one): it
    starts one thread per core in every actor otherwise, oversubscribing a node whose cores each run
    an actor. (Ray sets ``OMP_NUM_THREADS``, which sizes torch's; MediaPipe's Python API has no
    thread setting.)"""
    import cv2

    cv2.setNumThreads(max(1, int(num_cpus)))


class _StageTask:
    """Picklable function object for stages without models."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    def __call__(self, row: Row) -> list[Row]:
        return run_stage(self.stage, row)


# Fault tolerance for workers that die (OOM kill, segfault in a decoder, lost node). Ray retries
# the row's task on a new worker; bounded, so an input that kills every worker fails the job with
# Ray's error instead of retrying forever (Ray Data's default for actors is -1, unbounded).
ACTOR_MAX_RESTARTS = 4  # a dead actor is re-created (setup() runs again) at most this many times
ACTOR_MAX_TASK_RETRIES = 3  # a call lost with its actor is re-sent at most this many times
TASK_MAX_RETRIES = 3  # a task whose worker process died is re-run at most this many times


#: Ray's Python log lines that every curate run would print (``--verbose`` shows them): (logger, message start).
RAY_NOTICES = (
    ("ray.data._internal.progress", "Progress bars disabled"),
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled"),
)


class _DropNotices(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(str(record.msg).startswith(start) for _, start in RAY_NOTICES)


def quiet_ray_notices() -> None:
    """Drop :data:`RAY_NOTICES` (a filter on those loggers; installed once, before ``ray.init``).

    Not covered: the driver's C++ line ``E ... core_worker.cc:2465: Actor ... has constructor
    arguments in the object store and max_restarts > 0`` (written to descriptor 2 by Ray's core
    worker; ``RAY_BACKEND_LOG_LEVEL=fatal`` hides it but prints an ``I ... logging.cc`` line of its
    own and silences every Ray process's error log). No actor restarts when it appears: it is
    printed (once per driver) when the first actor-pool worker is *created*, because Ray Data 2.60
    always passes an actor its map transformer and data context as object refs
    (``ActorPoolMapOperator._start_actor``) and our actors allow restarts
    (:data:`ACTOR_MAX_RESTARTS`; Ray Data's own default, -1, prints it too). It warns that a
    restart would fail if those refs were lost; the operator holds them for its whole life, so
    they are not. Only ``max_restarts=0`` avoids it, which would give up re-creating a killed
    actor (tests/curation/test_fault_tolerance.py): the line stays.
    """
    for name, _ in RAY_NOTICES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotices) for f in logger.filters):
            logger.addFilter(_DropNotices())


def retry_options(actor: bool) -> dict:
    """Ray remote options for worker failures (system failures only: a Python exception in a
    stage is never retried, it is a bug or a :class:`MediaError` row)."""
    if actor:
        return {"max_restarts": ACTOR_MAX_RESTARTS, "max_task_retries": ACTOR_MAX_TASK_RETRIES}
    return {"max_retries": TASK_MAX_RETRIES}


def needs_actor(stage: Stage) -> bool:
    """True when the stage overrides :meth:`Stage.setup` (it loads something once per worker)."""
    return loads_models(stage)


def actor_cpu_scale(stages: Sequence[Stage], cluster_cpus: float) -> float:
    """Factor (<= 1) for the logical CPUs that model stages' actors reserve.

    Every actor pool keeps its minimum actors alive (``workers``, else ``min_workers``, else one),
    and Ray Data starts a pool only when its CPUs are free. With more model stages than CPUs (5 on a 2-core machine) the later pools would wait
    forever, and so would the task stages squeezed out by them. The reservations of the minimum
    actors are therefore scaled to fit in the cluster's CPUs less the largest task stage's; the
    processes still share the real cores. On a large cluster the factor is 1.
    """
    enabled = [s for s in stages if s.cfg.enabled]
    need = sum(s.cfg.num_cpus * (s.cfg.workers or s.cfg.min_workers or 1) for s in enabled if needs_actor(s))
    task_cpus = max((s.cfg.num_cpus for s in enabled if not needs_actor(s)), default=0.0)
    room = cluster_cpus - task_cpus if cluster_cpus > task_cpus else cluster_cpus / 2
    return 1.0 if need <= room or need == 0 else room / need


def apply_stages(ds: ray.data.Dataset, stages: Sequence[Stage], group_frames: bool = True,
                 chain: bool = True) -> ray.data.Dataset:
    """Append every stage in order, with CPU reservations that fit the cluster (:func:`actor_cpu_scale`).

    ``group_frames``: run consecutive frame stages in one actor over one decoded clip
    (:func:`vividhead.curation.frame_group.group_frame_stages`); False gives one operator per stage.
    ``chain``: then run consecutive CPU stages with models among them as one actor operator
    (:func:`vividhead.curation.frame_group.chain_stages`).
    """
    if group_frames:
        stages = group_frame_stages(stages)
    if chain:
        stages = chain_stages(stages)
    scale = actor_cpu_scale(stages, ray.cluster_resources().get("CPU", 1.0))
    for stage in stages:
        ds = apply_stage(ds, stage, cpu_scale=scale)
    return ds


def apply_stage(ds: ray.data.Dataset, stage: Stage, cpu_scale: float = 1.0) -> ray.data.Dataset:
    """Append ``stage`` to ``ds`` as a Ray Data operator (a no-op when the stage is disabled).

    ``cpu_scale`` multiplies the CPUs an actor reserves (see :func:`actor_cpu_scale`).
    A worker process that dies mid-row (killed, segfault) is replaced and the row re-run, up to
    :func:`retry_options`'s bounds; past them the dataset fails with Ray's error.
    """
    cfg = stage.cfg
    if not cfg.enabled:
        return ds
    remote = {"num_cpus": cfg.num_cpus * (cpu_scale if needs_actor(stage) else 1.0),
              "memory": int(cfg.memory_gib * 2**30)}
    if cfg.num_gpus:
        remote["num_gpus"] = cfg.num_gpus
    if needs_actor(stage):
        if cfg.workers:
            compute = ray.data.ActorPoolStrategy(size=cfg.workers)
        else:
            cpus = max(1, int(ray.cluster_resources().get("CPU", 1) // max(cfg.num_cpus, 1)))
            start = cfg.min_workers or 1  # started at once, before the first row
            compute = ray.data.ActorPoolStrategy(min_size=start, max_size=max(cpus, start))
        with _retry_args_allowed():
            return ds.flat_map(StageActor, fn_constructor_args=(stage,), compute=compute, **remote, **retry_options(True))
    with _retry_args_allowed():
        return ds.flat_map(_StageTask(stage), **remote, **retry_options(False))


@contextlib.contextmanager
def _retry_args_allowed():
    """Ray 2.60 has no named ``flat_map`` parameter for retries and warns that ``**ray_remote_args``
    goes away in Ray 2.64; ``ray_remote_args_fn`` would disable operator fusion. Ray is pinned, so
    the warning is silenced here only (revisit on upgrade)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*ray_remote_args.* is deprecated")
        yield

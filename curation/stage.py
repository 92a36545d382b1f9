"""The stage contract: what every curation stage declares and implements.

A stage is one file in ``curation/stages/`` holding a pure function (the method), its config
dataclass (a frozen :class:`StageConfig` subclass) and a small stage class that declares:

* ``name``: the config section, the ``stage`` value of the rows it rejects, the stats key;
* ``config_class``: its config dataclass (the section's keys, types and checks);
* ``writes_columns``: the manifest columns it fills (checked against the manifest schema);
* ``required``: True when the pipeline cannot run without it (``enabled: false`` is refused);
* ``funnel_units``: what the funnel counts going in and out (``"input"`` or ``"clip"``);
* ``weights()``: the registry names (with explicit paths) it loads, resolved before any work;
* ``from_config(cfg)``: how it is built from the whole :class:`~vividhead.curation.config.CurateConfig`.

``__init__`` runs on the driver and must stay cheap and picklable (no model, no open file); models
load in :meth:`Stage.setup`, once per worker, and are released in :meth:`BaseStage.teardown`.
A stage's module imports its heavy libraries (torch, SciPy, OpenCV, MediaPipe, ...) inside the
functions that use them, not at module level: the stage list imports every stage module on the
driver and a worker imports the modules of all the stages it is sent, so a module-level import costs
each of them up to a CPU-second (``tests/curation/test_import_cost.py`` checks).
One device policy holds for every stage: ``num_gpus > 0`` needs CUDA (:func:`check_devices` at
start-up on the driver, :func:`cuda_or_cpu` in the worker), otherwise the run stops with a one-line
message instead of running silently on CPU.

The pipeline order is the list in :mod:`vividhead.curation.stage_list`; adding a stage means adding
its file and one entry there. Stage code never imports Ray; :mod:`vividhead.curation.ray_adapter`
turns stages into Ray Data operators.
"""

from __future__ import annotations

import abc
import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Optional, Sequence

from vividhead.config import ConfigError, bounded, check

if TYPE_CHECKING:
    from vividhead.curation.decoded_clip import DecodedClip
    from vividhead.curation.records import Row

__all__ = ["BaseStage", "ConfigError", "DeviceError", "FrameStage", "GlobalStage", "SinkStage", "Stage",
           "StageConfig", "check", "check_devices", "cuda_or_cpu"]


@dataclass(frozen=True)
class StageConfig:
    """Fields shared by every stage's config section.

    Attributes:
        enabled: run the stage (a disabled stage passes rows through untouched and is reported
            ``off`` in the summary, ``stats.json`` and the dataset card).
        num_cpus: CPUs reserved per worker (Ray resource request).
        num_gpus: GPUs reserved per worker; > 0 needs CUDA (the run stops at start-up otherwise).
        workers: size of the actor pool, or ``None`` to let Ray scale from 1 to the CPU count.
        min_workers: actors started before any row arrives (Ray Data's
            ``ActorPoolStrategy(min_size=...)``); the pool still autoscales up to the CPU count.
            Use it to start a GPU stage's actors at once, so CPU stages cannot take their cores
            first. ``None``: one. Not with ``workers`` (a fixed pool): setting both fails at load.
        memory_gib: memory one worker of this stage uses at most (models, decoded frames of a
            50 s clip), in GiB: Ray's ``memory`` request, so a node never runs more workers than
            its memory holds. Stages with models set their own default.
    """

    enabled: bool = True
    num_cpus: float = bounded(1.0, "> 0")
    num_gpus: float = bounded(0.0, ">= 0")
    workers: Optional[int] = bounded(None, ">= 1 or null")
    min_workers: Optional[int] = bounded(None, ">= 1 or null")
    memory_gib: float = bounded(0.5, "> 0")


class DeviceError(RuntimeError):
    """A stage asked for a GPU (``num_gpus > 0``) where there is no CUDA; one line naming the key."""


def cuda_or_cpu(num_gpus: float, section: str) -> str:
    """The torch device of a worker: ``cuda`` when ``num_gpus > 0``, else ``cpu``.

    Raises:
        DeviceError: ``num_gpus > 0`` but torch sees no CUDA device in this worker.
    """
    if num_gpus <= 0:
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        raise DeviceError(f"{section}.num_gpus: {num_gpus:g} GPU requested but CUDA is not available on this node "
                          f"(set {section}.num_gpus: 0 to run it on CPU)")
    return "cuda"


def check_devices(stages: Sequence[BaseStage], gpus_available: float, where: str = "this node") -> None:
    """Start-up check of the device policy, before any work: every enabled stage asking for GPUs
    must fit on ``gpus_available`` GPUs (CUDA devices of the local node, or the Ray cluster's GPUs).

    Raises:
        ConfigError: ``<stage>.num_gpus: ...`` for the first stage that cannot get its GPU.
    """
    for stage in stages:
        need = stage.cfg.num_gpus
        if stage.cfg.enabled and need > 0 and need > gpus_available:
            raise ConfigError(f"{stage.name}.num_gpus: {need:g} GPU requested but {where} has "
                              f"{gpus_available:g} CUDA GPUs (set {stage.name}.num_gpus: 0 to run it on CPU)")


Unit = Literal["input", "clip"]


class BaseStage(abc.ABC):
    """What every stage declares (see the module docstring); subclasses add how they run."""

    name: ClassVar[str]
    config_class: ClassVar[type[StageConfig]]
    #: Manifest columns this stage fills (routing columns ``status``/``stage``/``reason``/``detail``
    #: and ``timings`` are the adapter's, shared by all).
    writes_columns: ClassVar[tuple[str, ...]] = ()
    #: The pipeline cannot run without this stage: ``enabled: false`` fails at config load.
    required: ClassVar[bool] = False
    #: What the funnel counts (``stats.json``): rows in and rows out, per input or per clip.
    funnel_units: ClassVar[tuple[Unit, Unit]] = ("clip", "clip")
    #: What :meth:`Stage.setup` loads (models, graphs, the device they run on): attribute -> its
    #: value before set-up and after :meth:`teardown` (``{"_model": None, "_device": "cpu"}``).
    resources: ClassVar[dict[str, Any]] = {}

    def __init__(self, cfg: StageConfig) -> None:
        self.cfg = cfg
        for attr, empty in self.resources.items():
            setattr(self, attr, copy.copy(empty))

    @classmethod
    def from_config(cls, cfg: Any) -> BaseStage:
        """Build the stage from the whole pipeline config (its own section by default).

        ``cfg`` is a :class:`~vividhead.curation.config.CurateConfig`, which is built from the stage
        list and so is not imported here (not even for type checking: no import cycle).
        """
        return cls(getattr(cfg, cls.name))

    def weights(self) -> Sequence[tuple[str, str | None]]:
        """Registry names of the weights this stage needs, each with its explicit path (or None)."""
        return ()

    def teardown(self) -> None:
        """Release what :meth:`Stage.setup` loaded: each of :attr:`resources` back to its empty value,
        closing what has a ``close()`` (MediaPipe graphs). Called by the adapter when a worker shuts
        down and by tests. Idempotent; the stage may be set up again."""
        for attr, empty in self.resources.items():
            held = getattr(self, attr, empty)
            if held is not empty and callable(getattr(held, "close", None)):
                held.close()
            setattr(self, attr, copy.copy(empty))


class Stage(BaseStage):
    """A per-row stage: :meth:`setup` once per worker, then :meth:`process` on each kept row."""

    def setup(self) -> None:
        """Load models once per worker (called by the adapter in the actor)."""

    def device(self) -> str:
        """The torch device for this worker under the device policy (:func:`cuda_or_cpu`)."""
        return cuda_or_cpu(self.cfg.num_gpus, self.name)

    @abc.abstractmethod
    def process(self, row: Row) -> list[Row]:
        """Process one kept row; return the resulting rows (usually ``[row]``).

        Raise :class:`vividhead.errors.MediaError` for media problems: the adapter turns it into a rejection.
        Any other exception is a bug and fails the job.
        """


class FrameStage(Stage):
    """A per-row stage that looks at the frames (or face track, crops, audio) of the encoded clip.

    Consecutive frame stages run in one actor over one :class:`~vividhead.curation.decoded_clip.DecodedClip`
    (:class:`vividhead.curation.frame_group.FrameGroup`): one decode, one face track. Run alone,
    :meth:`process` decodes the clip itself; the results are the same.
    """

    def process(self, row: Row) -> list[Row]:
        from vividhead.curation.decoded_clip import DecodedClip

        return self.process_clip(row, DecodedClip(row["video_bytes"], row.get("audio_bytes")))

    @abc.abstractmethod
    def process_clip(self, row: Row, clip: DecodedClip) -> list[Row]:
        """Process one kept row whose media ``clip`` holds (decoded lazily, shared with the other
        frame stages of the actor); same contract as :meth:`Stage.process`."""


class GlobalStage(BaseStage):
    """A stage that needs every row at once (e.g. dedup); runs on the driver over metadata only."""

    funnel_units: ClassVar[tuple[Unit, Unit]] = ("input", "input")

    @abc.abstractmethod
    def process_all(self, rows: list[Row], previous: list[Row]) -> list[Row]:
        """Process all rows of this run; ``previous`` holds manifest rows of finished earlier runs
        whose inputs got past this stage."""


class SinkStage(BaseStage):
    """The last stage: the driver writes every finished row (see :mod:`vividhead.curation.stages.write`)."""

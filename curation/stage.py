"""The stage contract: a cheap picklable object, a ``setup`` that loads models, a per-row ``process``.

Stage code never imports Ray; :mod:`vividhead.curation.ray_adapter` turns stages into Ray Data operators.
A stage file holds a pure function (the method) and a small :class:`Stage` subclass around it.
"""

from __future__ import annotations

import abc
from typing import ClassVar, Sequence

from vividhead.curation.config import StageConfig
from vividhead.curation.records import Row


class MediaError(Exception):
    """A problem with one input's media, recorded as data (``status=rejected``), not a crash.

    Attributes:
        reason: short reason code for the manifest (``unreadable``, ``ffmpeg_timeout``, ...).
        detail: one line of human-readable detail.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Stage(abc.ABC):
    """A per-row pipeline stage.

    Subclasses set ``name`` (the config section and file name) and implement :meth:`process`.
    ``__init__`` runs on the driver and must stay cheap; :meth:`setup` runs once per worker.
    """

    name: ClassVar[str]
    #: True when one input row may become several rows (the adapter then repartitions).
    fans_out: ClassVar[bool] = False

    def __init__(self, cfg: StageConfig) -> None:
        self.cfg = cfg

    def weights(self) -> Sequence[tuple[str, str | None]]:
        """Registry names of the weights this stage needs, each with its explicit path (or None)."""
        return ()

    def setup(self) -> None:
        """Load models once per worker (called by the adapter in the actor)."""

    @abc.abstractmethod
    def process(self, row: Row) -> list[Row]:
        """Process one kept row; return the resulting rows (usually ``[row]``).

        Raise :class:`MediaError` for media problems: the adapter turns it into a rejection.
        Any other exception is a bug and fails the job.
        """


class GlobalStage(abc.ABC):
    """A stage that needs every row at once (e.g. dedup); runs on the driver over metadata only."""

    name: ClassVar[str]

    def __init__(self, cfg: StageConfig) -> None:
        self.cfg = cfg

    @abc.abstractmethod
    def process_all(self, rows: list[Row], previous: list[Row]) -> list[Row]:
        """Process all rows of this run; ``previous`` holds manifest rows of finished earlier runs."""

"""When `vividhead serve` refuses a new session: the admission settings and their defaults.

Kept apart from :mod:`vividhead.inference.server` (which imports torch) so that the CLI's options
and the load benchmark read the same defaults without loading the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Default fraction of one chunk's duration that a round (or the model thread's busy share) may
#: take with one more session. Measured on one H100, Lite with exact batch sizes, FP8 and 8 MP4
#: encoding processes, 20 s WebSocket clients (docs/benchmarks.md, "Concurrent streams, part 6"):
#: 16 sessions (a round of 0.844 s = 0.88 of the 0.96 s chunk; busy share 0.88 at 15, i.e. 0.94
#: scaled to 16) were all real time; 17 (two rounds, 0.96 of the chunk; busy 0.91 at 16, 0.96 scaled)
#: were not, 11 of 17. 0.95 admits the first and refuses the second; 0.85 refused the 16th.
DEFAULT_REALTIME_MARGIN = 0.95
#: Default trailing window (seconds) of the busy-share check.
DEFAULT_LOAD_WINDOW_S = 5.0


@dataclass(frozen=True)
class AdmissionConfig:
    """When a new session is refused.

    Attributes:
        max_sessions: most open sessions (``None``: no fixed cap, only the measured estimate).
        realtime_margin: a session is admitted only if the estimated round time with it is at most
            this fraction of one chunk's duration (1.12 s for Pro, 0.96 s for Lite); the rest is
            slack for MP4 encoding, the network and jitter. ``None`` turns the estimate off.
            Pro's two sessions on an H100 took rounds of 1.09 s (0.97 of its chunk) and were real
            time with 6 s clients: the default refuses the second; ``0.98`` admits it.
        load_window_s: with sessions open, also refuse when the measured busy share of the model
            thread over this many trailing seconds, scaled by ``n + 1`` over the mean number of
            sessions open in that window, exceeds
            ``realtime_margin``: out-of-phase sessions run in more rounds than one per chunk, which
            the round-time estimate does not see. ``None`` turns this check off.

    Raises:
        ValueError: ``max_sessions < 1``, ``realtime_margin`` outside (0, 1] or ``load_window_s <= 0``.
    """

    max_sessions: int | None = None
    realtime_margin: float | None = DEFAULT_REALTIME_MARGIN
    load_window_s: float | None = DEFAULT_LOAD_WINDOW_S

    def __post_init__(self) -> None:
        if self.max_sessions is not None and self.max_sessions < 1:
            raise ValueError(f"max_sessions must be >= 1, got {self.max_sessions}")
        if self.realtime_margin is not None and not 0 < self.realtime_margin <= 1:
            raise ValueError(f"realtime_margin must be in (0, 1], got {self.realtime_margin}")
        if self.load_window_s is not None and not self.load_window_s > 0:
            raise ValueError(f"load_window_s must be > 0, got {self.load_window_s}")

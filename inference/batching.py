"""Concurrent streaming sessions served in one batch: the chunks of several :class:`StreamingSession`\\ s
(each at its own chunk index, with its own audio cache, motion latents, reference latent and RNG)
go through the Wav2Vec encoder, the DiT's four steps and the VAE together.

* :func:`run_chunks` groups the waiting chunks and advances each group through the one chunk step
  (:class:`vividhead.streaming.step.ChunkStep`, the step ``infer`` runs as a batch of one): row
  ``b`` of every batched call is session ``b``'s batch-of-one call, so a session served in a batch
  returns the frames it returns served alone (up to the floating-point differences of batched
  kernels; the test checks <= 1 uint8 level in float32).
* :class:`BatchScheduler` owns the models on one worker thread: sessions submit chunks as their
  audio completes them, and each round batches every chunk that is waiting (continuous batching: a
  chunk waits at most for the round in flight). It measures every round into a
  :class:`ChunkCostModel`, which the server's admission control reads.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from vividhead.inference.pipeline import StreamingSession, advance
from vividhead.streaming.step import BatchingConfig, chunked

logger = logging.getLogger(__name__)


@dataclass
class ChunkJob:
    """One chunk of one session: ``samples`` float32 ``[n_emit * 640]`` (what
    :meth:`StreamingSession.split` gave), ``index`` its chunk index in the session (0 = first after a
    cold start)."""

    session: StreamingSession
    samples: np.ndarray
    index: int
    tail: bool = False  # the stream's padded last chunk (flush): its frames play after all others


def _group_key(job: ChunkJob) -> tuple:
    s = job.session
    # Sessions batch together when they share the weights, the streaming geometry and this chunk's length.
    return (id(s.models), s.cfg, s.cfg.chunk_frames(job.index))


def run_chunks(jobs: Sequence[ChunkJob], cfg: BatchingConfig = BatchingConfig()) -> list[np.ndarray]:
    """Generate one chunk for each job, batching across sessions: jobs whose sessions share models,
    streaming geometry and chunk length advance together through the one chunk step
    (:func:`vividhead.inference.pipeline.advance`, split at ``cfg.max_batch``); others run as
    separate steps. Each session's state advances as it would alone.

    Args:
        jobs: at most one job per session, in each session's chunk order.
        cfg: batch limits.

    Returns:
        uint8 ``[n_emit, H, W, 3]`` frames per job, in job order.

    Raises:
        ValueError: two jobs of the same session.
    """
    if len({id(j.session) for j in jobs}) != len(jobs):
        raise ValueError("run_chunks takes at most one chunk per session")
    groups: dict[tuple, list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(_group_key(job), []).append(i)
    out: list[np.ndarray | None] = [None] * len(jobs)
    for idx in groups.values():
        for part in chunked(idx, cfg.max_batch):
            for i, frames in zip(part, _run_group([jobs[i] for i in part], cfg)):
                out[i] = frames
    return out  # type: ignore[return-value]


def _run_group(jobs: Sequence[ChunkJob], cfg: BatchingConfig) -> list[np.ndarray]:
    """One step for sessions of equal models, geometry and chunk length (see :func:`run_chunks`)."""
    return advance([j.session for j in jobs], [j.samples for j in jobs], cfg)


class ChunkCostModel:
    """Measured seconds of one standard-chunk round against the DiT batch size, for admission.

    Keeps the last ``window`` measurements per batch size; :meth:`estimate` is the median where the
    size was measured, else a least-squares line ``a + b * size`` through the per-size medians
    (two sizes or more; below the smallest measured size ``k``, kept between ``k``'s time scaled in
    proportion and ``k``'s time), else the one measured size scaled in proportion (pessimistic:
    ignores the fixed part of a round).

    Args:
        window: measurements kept per batch size.
    """

    def __init__(self, window: int = 16) -> None:
        self.window = window
        self._seconds: dict[int, deque[float]] = {}
        self._lock = threading.Lock()

    def observe(self, batch: int, seconds: float) -> None:
        """Record one round of ``batch`` sessions (padded size) that took ``seconds``."""
        with self._lock:
            self._seconds.setdefault(batch, deque(maxlen=self.window)).append(seconds)

    def medians(self) -> dict[int, float]:
        """``{batch size: median seconds}`` of what was measured."""
        with self._lock:
            return {k: statistics.median(v) for k, v in sorted(self._seconds.items())}

    def estimate(self, batch: int) -> float | None:
        """Seconds of one round of ``batch`` sessions, or ``None`` before any measurement."""
        med = self.medians()
        if not med:
            return None
        if batch in med:
            return med[batch]
        floor = max((t for k, t in med.items() if k <= batch), default=0.0)  # more rows never cost less
        if len(med) == 1:
            (k, t), = med.items()
            return max(t * batch / k, floor) if batch > k else t
        xs, ys = np.array(list(med), dtype=float), np.array(list(med.values()))
        slope, intercept = np.polyfit(xs, ys, 1)
        line = intercept + max(slope, 0.0) * batch
        k0 = min(med)
        if batch < k0:  # below every measured size the line can reach 0 or less (a round is never free)
            return float(min(max(line, med[k0] * batch / k0), med[k0]))
        return float(max(line, floor))


class LoadMeter:
    """Share of wall time the model thread spent serving rounds, over a trailing window.

    Admission's round-time estimate assumes one round per chunk period; sessions that arrive out of
    phase run in more, smaller rounds (4 staggered Lite sessions ran as 17 rounds for 24 chunks on an
    H200), so what they cost is best read from the measured busy time itself.

    Args:
        horizon_s: how long busy intervals are kept (seconds); windows longer than this see less.
    """

    def __init__(self, horizon_s: float = 60.0) -> None:
        self.horizon_s = horizon_s
        self._busy: deque[tuple[float, float]] = deque()  # (start, end), time.monotonic() seconds
        self._first: float | None = None
        self._lock = threading.Lock()

    def record(self, start: float, end: float) -> None:
        """One busy interval of the model thread, ``time.monotonic()`` seconds."""
        with self._lock:
            if self._first is None:
                self._first = start
            self._busy.append((start, end))
            while self._busy and self._busy[0][1] < end - self.horizon_s:
                self._busy.popleft()

    def busy_fraction(self, window_s: float, now: float | None = None, require_history: bool = True) -> float | None:
        """Busy seconds in ``[now - window_s, now]`` over ``window_s`` (0-1), or ``None`` when the
        first recorded interval began less than ``window_s`` ago (too little history to judge;
        ``require_history=False``: count what there is)."""
        now = time.monotonic() if now is None else now
        lo = now - window_s
        with self._lock:
            if self._first is None or (require_history and self._first > lo):
                return None
            busy = sum(max(0.0, min(e, now) - max(s, lo)) for s, e in self._busy)
        return min(1.0, busy / window_s)


class OpenSessions:
    """The number of open sessions over time, so the load check can tell what the measured busy share
    was made of: after many sessions leave, the busy share of the trailing window still holds their
    rounds, and dividing it by the sessions open *now* refused newcomers for a whole window.

    Args:
        horizon_s: how long changes are kept (seconds; at least the load check's window).
    """

    def __init__(self, horizon_s: float = 60.0) -> None:
        self.horizon_s = horizon_s
        self.count = 0
        self._changes: deque[tuple[float, int]] = deque([(float("-inf"), 0)])  # (time, count from then on)
        self._lock = threading.Lock()

    def change(self, delta: int, now: float | None = None) -> int:
        """Add ``delta`` (+1 opened, -1 closed) at ``now`` (``time.monotonic()`` seconds); returns the count."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self.count += delta
            self._changes.append((now, self.count))
            while len(self._changes) > 1 and self._changes[1][0] <= now - self.horizon_s:
                self._changes.popleft()
            return self.count

    def mean(self, window_s: float, now: float | None = None) -> float:
        """Time-weighted mean count over ``[now - window_s, now]`` (0 before the first record)."""
        now = time.monotonic() if now is None else now
        lo = now - window_s
        with self._lock:
            changes = list(self._changes)
        total, t, level = 0.0, lo, 0
        for when, count in changes:
            if when > lo:
                total += level * (when - t)
                t = when
            level = count
        return (total + level * (now - t)) / window_s


class BatchScheduler:
    """One worker thread that owns the models: batches waiting chunks of all sessions per round.

    Sessions call :meth:`submit_chunk` as their chunks' audio completes (several of one session may
    wait; each round takes at most one per session, oldest first) and :meth:`call` for anything else that touches the models (session creation, flush, reset); calls run between
    rounds, in submission order.

    Args:
        batching: batch limits.
        frame_num: standard chunk length; only rounds of that length, without a session's first
            chunk, feed :attr:`cost`.
        open_sessions: how many sessions are open (for ``batching.gather_s``: a round stops waiting
            once that many have a chunk waiting); default: only the deadline ends the wait.
    """

    def __init__(self, batching: BatchingConfig = BatchingConfig(), frame_num: int | None = None,
                 open_sessions: Callable[[], int] | None = None) -> None:
        self.batching = batching
        self.frame_num = frame_num
        self.open_sessions = open_sessions
        self.cost = ChunkCostModel()
        self.load = LoadMeter()  # rounds served to sessions only (not warm-up or other calls)
        self.rounds = 0
        self._cv = threading.Condition()
        self._chunks: list[tuple[ChunkJob, concurrent.futures.Future]] = []
        self._oldest = 0.0  # time.monotonic() of the oldest waiting chunk
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future]] = deque()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="vividhead-batcher", daemon=True)
        self._thread.start()

    def submit_chunk(self, session: StreamingSession, samples: np.ndarray, index: int,
                     tail: bool = False) -> concurrent.futures.Future:
        """Queue one chunk; the future's result is its uint8 ``[n_emit, H, W, 3]`` frames. A ``tail``
        (the stream's padded last chunk, :meth:`StreamingSession.split_flush`) runs after the other
        chunks of its round, in a batch of its own: its frames play after the session's last full
        chunk, while a full chunk of another session is due now (a replay of 16 streams ending
        within a second had each session's last full chunk wait behind the others' tails).

        Raises:
            RuntimeError: the scheduler is closed.
        """
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._open():
            if not self._live():
                self._oldest = time.monotonic()
            self._chunks.append((ChunkJob(session, samples, index, tail), fut))
        return fut

    def waiting(self) -> int:
        """Chunks queued for a round that has not started yet (all sessions), not counting those
        whose futures were cancelled (their connection closed: no round will run them)."""
        with self._cv:
            return len(self._live())

    def _live(self) -> list[tuple[ChunkJob, concurrent.futures.Future]]:
        """The waiting chunks, after dropping those whose futures were cancelled (lock held).

        The server cancels a closed connection's waiting chunks from the event loop, without this
        lock. Counted, they would make :meth:`waiting` and the gather (``gather_s``) see sessions
        that left: a round would start short of the open sessions' chunks, which then run in more,
        smaller rounds (more busy time for admission's load check).
        """
        if any(fut.cancelled() for _, fut in self._chunks):
            self._chunks = [item for item in self._chunks if not item[1].cancelled()]
        return self._chunks

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future:
        """Run ``fn()`` on the worker thread between rounds; the future holds its result or error.

        Raises:
            RuntimeError: the scheduler is closed.
        """
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._open():
            self._calls.append((fn, fut))
        return fut

    @contextlib.contextmanager
    def _open(self):
        """Hold the lock to queue work and wake the worker after; RuntimeError when closed."""
        with self._cv:
            if self._closed:
                raise RuntimeError("batch scheduler is closed")
            yield
            self._cv.notify()

    def close(self, timeout: float | None = 30.0) -> None:
        """Stop after the work already queued."""
        with self._cv:
            self._closed = True
            self._cv.notify()
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._chunks or self._calls or self._closed):
                    self._cv.wait()
                if self._closed and not (self._chunks or self._calls):
                    return
                self._gather()
                calls, self._calls = self._calls, deque()
                # One chunk per session per round; a session's later chunk waits for the next round.
                seen: set[int] = set()
                take, keep = [], []
                for item in self._chunks:
                    (take if id(item[0].session) not in seen else keep).append(item)
                    seen.add(id(item[0].session))
                self._chunks = keep
                self._oldest = time.monotonic()  # what stays waits from now on (at most one round)
            for fn, fut in calls:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn())
                    except BaseException as exc:  # handed to the caller
                        fut.set_exception(exc)
            if take:
                self._run_round(take)

    def _gather(self) -> None:
        """With ``gather_s``: wait (lock held, released while waiting) until every open session has
        a chunk waiting, a call arrives, or ``gather_s`` has passed since the oldest waiting chunk."""
        gather = self.batching.gather_s
        if gather <= 0:
            return
        deadline = self._oldest + gather
        while self._live() and not (self._calls or self._closed):
            waiting = len({id(job.session) for job, _ in self._chunks})
            if self.open_sessions is not None and waiting >= self.open_sessions():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cv.wait(left)

    def _standard(self, jobs: Sequence[ChunkJob]) -> bool:
        """A batch whose time measures a standard round: chunks of the standard length, none of them
        a session's first (a cold start has no motion encode and runs as its own DiT batch, so a
        round with one pays two DiT calls: on one H100, rounds of up to 4 Lite sessions padded to 4
        read 0.46 s while 16 sessions started, against 0.23 s measured alone)."""
        if any(j.index == 0 or j.tail for j in jobs):
            return False
        return self.frame_num is None or jobs[0].session.cfg.chunk_frames(jobs[0].index)[0] == self.frame_num

    def _run_round(self, take: list[tuple[ChunkJob, concurrent.futures.Future]]) -> None:
        live = [(job, fut) for job, fut in take if fut.set_running_or_notify_cancel()]
        if not live:
            return
        groups: dict[tuple, list[tuple[ChunkJob, concurrent.futures.Future]]] = {}
        for item in sorted(live, key=lambda item: item[0].tail):  # tails last
            groups.setdefault((item[0].tail, *_group_key(item[0])), []).append(item)
        for items in groups.values():
            for part in chunked(items, self.batching.max_batch):
                jobs = [job for job, _ in part]
                t0, m0 = time.perf_counter(), time.monotonic()
                try:
                    results = _run_group(jobs, self.batching)
                except BaseException as exc:  # every caller of the batch gets the error
                    logger.exception("batched chunk failed")
                    for job, fut in part:
                        job.session.skip_chunk(job.index)  # lost: the session's next chunk runs as the next index
                        fut.set_exception(exc)
                    continue
                seconds = time.perf_counter() - t0
                self.load.record(m0, time.monotonic())
                self.rounds += 1
                if self._standard(jobs):
                    self.cost.observe(self.batching.padded(len(jobs)), seconds)
                for (_, fut), frames in zip(part, results):
                    fut.set_result(frames)


__all__ = ["BatchScheduler", "BatchingConfig", "ChunkCostModel", "ChunkJob", "LoadMeter", "run_chunks"]

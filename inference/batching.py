"""Concurrent streaming sessions served in one batch: the chunks of several :class:`StreamingSession`\\ s
(each at its own chunk index, with its own audio cache, motion latents, reference latent and RNG)
go through the Wav2Vec encoder, the DiT's four steps and the VAE together.

* :func:`run_chunks` is the batched form of ``StreamingSession._run_chunk``: row ``b`` of every
  batched call is session ``b``'s batch-of-one call, so a session served in a batch returns the
  frames it returns served alone (up to the floating-point differences of batched kernels; the
  test checks <= 1 uint8 level in float32).
* :class:`BatchScheduler` owns the models on one worker thread: sessions submit chunks as their
  audio completes them, and each round batches every chunk that is waiting (continuous batching: a
  chunk waits at most for the round in flight). It measures every round into a
  :class:`ChunkCostModel`, which the server's admission control reads.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import logging
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vividhead.flow_matching import chunk_audio_context, sample_chunk
from vividhead.inference.pipeline import ChunkTimings, StreamingSession

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchingConfig:
    """How chunks of concurrent sessions are batched.

    Attributes:
        max_batch: most sessions in one DiT batch; a round with more waiting chunks runs several.
        vae_batch: most sessions per VAE decode / encode call (bounds activation memory: a Wan or
            LTX decode of 33 frames at 512x512 holds several GiB per session).
        batch_buckets: pad each DiT batch up to the smallest of these sizes, and each VAE call up to
            the smallest of them or ``vae_batch`` (padding rows are copies of row 0 whose outputs
            are dropped), so a compiled / CUDA-graph DiT and a compiled VAE see few shapes;
            ``None``: exact sizes. Sizes above the largest bucket are split. 1 is always added (a
            flush runs one session alone).
        gather_s: a round waits up to this long after its oldest chunk arrived for the chunks of
            the other open sessions (it starts at once when every open session has one waiting):
            sessions whose chunks complete at different moments then share rounds, fewer rounds
            pay the fixed per-round cost, at up to ``gather_s`` more latency. 0: no waiting (a chunk
            waits only for the round in flight).
    """

    max_batch: int = 16
    vae_batch: int = 4
    batch_buckets: tuple[int, ...] | None = None
    gather_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.vae_batch < 1:
            raise ValueError(f"max_batch ({self.max_batch}) and vae_batch ({self.vae_batch}) must be >= 1")
        if self.gather_s < 0:
            raise ValueError(f"gather_s must be >= 0, got {self.gather_s}")
        if self.batch_buckets is not None:
            b = tuple(sorted(set(self.batch_buckets) | {1}))
            if b[0] < 1:
                raise ValueError(f"batch_buckets must be positive sizes, got {self.batch_buckets}")
            object.__setattr__(self, "batch_buckets", b)
            if b[-1] < self.max_batch:
                object.__setattr__(self, "max_batch", b[-1])

    def padded(self, n: int) -> int:
        """DiT batch size that runs ``n <= max_batch`` sessions."""
        if self.batch_buckets is None:
            return n
        return next(b for b in self.batch_buckets if b >= n)

    def padded_vae(self, n: int) -> int:
        """VAE batch size that runs ``n <= vae_batch`` sessions."""
        return n if self.batch_buckets is None else min(self.vae_batch, self.padded(n))


def _pad_rows(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` ``[b, ...]`` with copies of row 0 appended up to ``size`` rows."""
    pad = size - x.shape[0]
    return torch.cat([x, x[:1].expand(pad, *x.shape[1:])]) if pad > 0 else x


@dataclass
class ChunkJob:
    """One chunk of one session: ``samples`` float32 ``[n_gen_new * 640]`` (what ``feed`` split off),
    ``index`` its chunk index in the session (0 = first after a cold start)."""

    session: StreamingSession
    samples: np.ndarray
    index: int


def _group_key(job: ChunkJob) -> tuple:
    s = job.session
    # Sessions batch together when they share the weights and the chunk geometry of this chunk.
    return (id(s.models), dataclasses.replace(s.cfg, fast_start=False), s.cfg.chunk_frames(job.index))


def _parts(seq: Sequence, size: int) -> list[Sequence]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


@torch.no_grad()
def run_chunks(jobs: Sequence[ChunkJob], cfg: BatchingConfig = BatchingConfig()) -> list[np.ndarray]:
    """Generate one chunk for each job, batching across sessions; updates each session's state as
    its own ``_run_chunk`` would (audio cache, motion latents, RNG, counters, :attr:`timings`).

    Jobs whose sessions share models, streaming geometry and chunk length run as one batch (split at
    ``cfg.max_batch``); others run as separate batches.

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
        for part in _parts(idx, cfg.max_batch):
            for i, frames in zip(part, _run_group([jobs[i] for i in part], cfg)):
                out[i] = frames
    return out  # type: ignore[return-value]


def _run_group(jobs: Sequence[ChunkJob], cfg: BatchingConfig) -> list[np.ndarray]:
    """One batch of sessions with equal models, geometry and chunk length (see :func:`run_chunks`)."""
    sessions = [j.session for j in jobs]
    first = sessions[0]
    m, scfg = first.models, first.cfg
    vae, dev, dt = m.vae, m.device, m.dtype
    n_gen, n_emit = scfg.chunk_frames(jobs[0].index)
    b = len(sessions)

    # 1. Motion encode of the previous chunks' last frames (sessions past their first chunk).
    t0 = time.perf_counter()
    pending = [s for s in sessions if s._motion_video is not None]
    sampled = getattr(vae, "sample_posterior", False)
    for part in _parts(pending, cfg.vae_batch):
        size = cfg.padded_vae(len(part))
        video = _pad_rows(torch.cat([s._motion_video for s in part]), size)
        if sampled:
            # A sampled posterior: row b draws its noise from session b's own generator (padding rows
            # from throw-away ones), the same draws as each session encoding alone.
            gens = [s._posterior_generator for s in part]
            gens += [torch.Generator(device=gens[0].device) for _ in range(size - len(part))]
            latents = vae.encode(video, generator=gens)  # [b', C, M', h, w]
        else:
            latents = vae.encode(video)  # [b', C, M', h, w]
        for s, lat in zip(part, latents.split(1)):
            s.motion_latents, s._motion_video = lat, None
    t1 = time.perf_counter()

    # 2. Audio: each ring buffer takes its samples; one Wav2Vec call encodes every buffer.
    host = torch.empty(b, first.audio_cache.buffer.capacity, dtype=torch.float32)
    for row, job in zip(host, jobs):
        job.session.audio_cache.push(job.samples)
        row.copy_(torch.from_numpy(job.session.audio_cache.buffer.view()))
    feats = m.audio_encoder(host.to(dev), first.audio_cache.cache_frames)  # [B, S, L, D]
    context = chunk_audio_context(feats, n_gen, first.audio_cache.audio_window).to(dt)  # [B, n_gen, W, L, D]
    t2 = time.perf_counter()

    # 3. DiT: four steps over the batch; row b draws its noise from session b's generator. A session's
    # first chunk after a cold start has one motion latent (the reference frame), later ones
    # ``motion_frames`` worth: rows with different counts run as separate DiT batches.
    c = first.ref_latent.shape[1]
    n_lat = (n_gen - 1) // vae.temporal_stride + 1
    noise = [s._chunk_noise(c, n_lat) for s in sessions]  # B x [1, C, F', h, w] float32
    by_motion: dict[int, list[int]] = {}
    for i, s in enumerate(sessions):
        by_motion.setdefault(s.motion_latents.shape[2], []).append(i)
    rows: list[torch.Tensor | None] = [None] * b
    for idx in by_motion.values():
        lat = _sample(m, first.schedule, [sessions[i] for i in idx], torch.cat([noise[i] for i in idx]),
                      context[idx], cfg)
        for i, x in zip(idx, lat.split(1)):
            rows[i] = x
    latents = torch.cat(rows)  # [B, C, F', h, w] model dtype
    t3 = time.perf_counter()

    # 4. Decode in VAE-sized parts; colour correction and the motion frames per session.
    frames = []
    for part in _parts(range(b), cfg.vae_batch):
        rows = _pad_rows(latents[part[0] : part[-1] + 1], cfg.padded_vae(len(part)))
        video = vae.decode(rows)  # [b', 3, n_gen, H, W] in [-1, 1]
        for i, v in zip(part, video.split(1)):
            frames.append(sessions[i]._finish_chunk(v, n_gen, n_emit))
    t4 = time.perf_counter()
    out = [f.cpu().numpy() for f in frames]
    t5 = time.perf_counter()

    timings = ChunkTimings(audio=t2 - t1, dit=t3 - t2, decode=t4 - t3, encode=t1 - t0, other=t5 - t4,
                           total=t5 - t0, extra={"batch": b, "dit_batches": len(by_motion)})
    for s, f in zip(sessions, out):
        s.timings = timings
        s.chunks_done += 1
        s.frames_emitted += f.shape[0]
    return out


def _sample(models, schedule, sessions: Sequence[StreamingSession], noise: torch.Tensor, context: torch.Tensor,
            cfg: BatchingConfig) -> torch.Tensor:
    """The four DiT steps for sessions with equal motion-latent counts, padded to ``cfg``'s bucket.

    Args:
        noise: float32 ``[b, C, F', h, w]`` drawn from the sessions' generators.
        context: model-dtype ``[b, n_gen, W, L, D]`` audio windows.

    Returns:
        ``[b, C, F', h, w]`` latents (model dtype) with the motion latents in front.
    """
    b, n_lat = len(sessions), noise.shape[2]
    motion = torch.cat([s.motion_latents for s in sessions])  # [b, C, M, h, w]
    ref = torch.cat([s.ref_latent[:, :, :n_lat] for s in sessions])  # causal VAE: a prefix of the reference latent
    generators = [s.generator for s in sessions]
    pad = cfg.padded(b) - b
    if pad:  # copies of row 0; their noise comes from a scratch generator, their outputs are dropped
        scratch = torch.Generator(device=models.device).manual_seed(0)
        noise, motion, ref, context = (_pad_rows(x, b + pad) for x in (noise, motion, ref, context))
        generators += [scratch] * pad
    latents = sample_chunk(
        lambda x, t: models.transformer(x, t, context, ref),
        noise, motion, schedule, generator=generators, dtype=models.dtype,
        before_step=torch.compiler.cudagraph_mark_step_begin if models.cuda_graphs else None,
    )
    # (CUDA-graph outputs are overwritten by the next replay: slicing copies nothing, so clone.)
    return latents[:b].clone() if models.cuda_graphs else latents[:b]


class ChunkCostModel:
    """Measured seconds of one standard-chunk round against the DiT batch size, for admission.

    Keeps the last ``window`` measurements per batch size; :meth:`estimate` is the median where the
    size was measured, else a least-squares line ``a + b * size`` through the per-size medians
    (two sizes or more), else the one measured size scaled in proportion (pessimistic: ignores the
    fixed part of a round).

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
        return float(max(intercept + max(slope, 0.0) * batch, floor))


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


class BatchScheduler:
    """One worker thread that owns the models: batches waiting chunks of all sessions per round.

    Sessions call :meth:`submit_chunk` (at most one chunk of a session in flight) and :meth:`call`
    for anything else that touches the models (session creation, flush, reset); calls run between
    rounds, in submission order.

    Args:
        batching: batch limits.
        frame_num: standard chunk length; only rounds of that length feed :attr:`cost`.
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

    def submit_chunk(self, session: StreamingSession, samples: np.ndarray, index: int) -> concurrent.futures.Future:
        """Queue one chunk; the future's result is its uint8 ``[n_emit, H, W, 3]`` frames.

        Raises:
            RuntimeError: the scheduler is closed.
        """
        fut: concurrent.futures.Future = concurrent.futures.Future()
        with self._open():
            if not self._chunks:
                self._oldest = time.monotonic()
            self._chunks.append((ChunkJob(session, samples, index), fut))
        return fut

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
        while self._chunks and not (self._calls or self._closed):
            waiting = len({id(job.session) for job, _ in self._chunks})
            if self.open_sessions is not None and waiting >= self.open_sessions():
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._cv.wait(left)

    def _run_round(self, take: list[tuple[ChunkJob, concurrent.futures.Future]]) -> None:
        live = [(job, fut) for job, fut in take if fut.set_running_or_notify_cancel()]
        if not live:
            return
        groups: dict[tuple, list[tuple[ChunkJob, concurrent.futures.Future]]] = {}
        for item in live:
            groups.setdefault(_group_key(item[0]), []).append(item)
        for items in groups.values():
            for part in _parts(items, self.batching.max_batch):
                jobs = [job for job, _ in part]
                t0, m0 = time.perf_counter(), time.monotonic()
                try:
                    results = _run_group(jobs, self.batching)
                except BaseException as exc:  # every caller of the batch gets the error
                    logger.exception("batched chunk failed")
                    for _, fut in part:
                        fut.set_exception(exc)
                    continue
                seconds = time.perf_counter() - t0
                self.load.record(m0, time.monotonic())
                self.rounds += 1
                if self.frame_num is None or jobs[0].session.cfg.chunk_frames(jobs[0].index)[0] == self.frame_num:
                    self.cost.observe(self.batching.padded(len(jobs)), seconds)
                for (_, fut), frames in zip(part, results):
                    fut.set_result(frames)


__all__ = ["BatchScheduler", "BatchingConfig", "ChunkCostModel", "ChunkJob", "LoadMeter", "run_chunks"]

"""Batched serving (:mod:`vividhead.inference.batching`): a session served in a batch with others
returns the frames it returns served alone, on tiny random models (real tiny Wan / LTX VAE and Wav2Vec)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from tiny_models import TINY_LITE, TINY_PRO

from vividhead.inference.batching import BatchingConfig, BatchScheduler, ChunkCostModel, ChunkJob, LoadMeter, run_chunks
from vividhead.inference.pipeline import StreamingSession, pcm_to_float


def _refs(n: int) -> list[np.ndarray]:
    rng = np.random.RandomState(7)
    return [(rng.rand(40 + 4 * i, 48, 3) * 255).astype(np.uint8) for i in range(n)]


def _alone(models, ref, seed, pcm, streaming=None) -> list[np.ndarray]:
    s = StreamingSession(models, ref, seed=seed, streaming=streaming)
    return list(s.feed(pcm))


def _split(session: StreamingSession, pcm) -> list[tuple[np.ndarray, int]]:
    """Split PCM into the session's chunk jobs without generating (what the server does)."""
    return session.split(pcm)


def _serve_batched(models, refs, seeds, pcms, starts, cfg, streaming=None) -> list[list[np.ndarray]]:
    """Run sessions together: session i joins at round ``starts[i]``; every round batches one chunk of
    each live session."""
    sessions = [StreamingSession(models, r, seed=s, streaming=streaming) for r, s in zip(refs, seeds)]
    queues = [_split(s, p) for s, p in zip(sessions, pcms)]
    outs: list[list[np.ndarray]] = [[] for _ in sessions]
    rnd = 0
    while any(queues):
        live = [i for i, q in enumerate(queues) if q and starts[i] <= rnd]
        jobs = [ChunkJob(sessions[i], *queues[i].pop(0)) for i in live]
        for i, frames in zip(live, run_chunks(jobs, cfg)):
            outs[i].append(frames)
        rnd += 1
    return outs


def _assert_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert [g.shape for g in got] == [w.shape for w in want]
    for g, w in zip(got, want):
        assert np.abs(g.astype(int) - w.astype(int)).max() <= 1


@pytest.mark.parametrize("batching", [
    {"vae_batch": 2},
    {"vae_batch": 2, "batch_buckets": (4,)},
    {"vae_batch": 4, "vae_buckets": (2,)},  # VAE parts of 1 and 3 run padded to 2 and 4
], ids=["exact", "batch_buckets", "vae_buckets"])
def test_batched_sessions_equal_alone_pro(tiny_pro, speech, batching):
    """Three Pro sessions (own reference, seed, audio), the third one chunk behind, batched in
    rounds of 2, 3, 3 and 1 (the DiT padded to 4 with ``batch_buckets``, each VAE part to a
    bucket with ``vae_buckets``) == each served alone."""
    refs, seeds = _refs(3), [1, 2, 3]
    spc = TINY_PRO.streaming.samples_per_chunk
    pcms = [speech[i * 3000 : i * 3000 + 3 * spc] for i in range(3)]
    cfg = BatchingConfig(max_batch=4, **batching)
    decoded, decode = [], tiny_pro.vae.decode
    tiny_pro.vae.decode = lambda latents: decoded.append(latents.shape[0]) or decode(latents)
    try:
        got = _serve_batched(tiny_pro, refs, seeds, pcms, starts=[0, 0, 1], cfg=cfg)
    finally:
        del tiny_pro.vae.decode
    if cfg.vae_buckets:  # rounds of 2, 3, 3, 1 decode as parts of 2, 4, 4, 2
        assert decoded == [2, 4, 4, 2]
    for i in range(3):
        want = _alone(tiny_pro, refs[i], seeds[i], pcms[i])
        assert len(want) == 3
        _assert_close(got[i], want)


def test_batched_sessions_equal_alone_lite_fast_start(tiny_lite, speech):
    """Lite with fast start: a session's short first chunk and another's standard chunk fall in
    different groups of the same round; both equal their lone runs."""
    streaming = dataclasses.replace(TINY_LITE.streaming, fast_start=True)
    refs, seeds = _refs(2), [5, 6]
    n = streaming.motion_frames - 1 + 2 * streaming.new_frames
    pcms = [speech[i * 5000 : i * 5000 + n * 640] for i in range(2)]
    got = _serve_batched(tiny_lite, refs, seeds, pcms, starts=[0, 1], cfg=BatchingConfig(), streaming=streaming)
    for i in range(2):
        want = _alone(tiny_lite, refs[i], seeds[i], pcms[i], streaming)
        assert [w.shape[0] for w in want] == [streaming.motion_frames - 1] + 2 * [streaming.new_frames]
        _assert_close(got[i], want)


@pytest.mark.parametrize("buckets", [{"batch_buckets": (4,)}, {"vae_buckets": (2,)}], ids=["batch", "vae"])
def test_batched_lite_motion_encode_samples_each_sessions_posterior(tiny_lite, speech, buckets):
    """Lite samples its LTX posterior (the released default) with each session's own generator: the
    motion encode of three sessions runs as one padded VAE call (vae_batch 4; bucket 4 of the DiT's
    buckets or of the VAE's own) and every session still equals its lone run."""
    from vividhead.models.vae import LTXVAE

    assert isinstance(tiny_lite.vae, LTXVAE)
    refs, seeds = _refs(3), [11, 12, 13]
    spc = TINY_LITE.streaming.samples_per_chunk
    pcms = [speech[i * 4000 : i * 4000 + 3 * spc] for i in range(3)]
    calls = []
    encode = tiny_lite.vae.encode

    def spy(video, generator=None):
        calls.append((video.shape[0], len(generator) if isinstance(generator, list) else generator))
        return encode(video, generator=generator)

    tiny_lite.vae.encode = spy
    try:
        got = _serve_batched(tiny_lite, refs, seeds, pcms, starts=[0, 0, 0],
                             cfg=BatchingConfig(max_batch=4, vae_batch=4, **buckets))
    finally:
        del tiny_lite.vae.encode
    assert tiny_lite.vae.sample_posterior
    assert (4, 4) in calls  # three sessions' motion frames plus one padding row, one generator each
    for i in range(3):
        _assert_close(got[i], _alone(tiny_lite, refs[i], seeds[i], pcms[i]))


def test_run_chunks_counts_and_rejects_duplicates(tiny_pro_fast_vae, ref_image, speech):
    s = StreamingSession(tiny_pro_fast_vae, ref_image)
    (job,) = _split(s, speech[: TINY_PRO.streaming.samples_per_chunk])
    with pytest.raises(ValueError, match="one chunk per session"):
        run_chunks([ChunkJob(s, *job), ChunkJob(s, *job)])
    (frames,) = run_chunks([ChunkJob(s, *job)])
    assert frames.shape == (28, 32, 32, 3) and s.frames_emitted == 28 and s.chunks_done == 1
    assert s.timings.extra["batch"] == 1


def test_scheduler_batches_waiting_chunks(tiny_pro_fast_vae, speech):
    """Chunks submitted while the worker is busy run as one round; results equal lone sessions."""
    refs, seeds = _refs(3), [1, 2, 3]
    spc = TINY_PRO.streaming.samples_per_chunk
    sched = BatchScheduler(BatchingConfig(max_batch=8), frame_num=TINY_PRO.streaming.frame_num)
    try:
        sessions = sched.call(lambda: [StreamingSession(tiny_pro_fast_vae, r, seed=s) for r, s in zip(refs, seeds)]).result()
        import threading

        started, gate = threading.Event(), threading.Event()
        blocker = sched.call(lambda: (started.set(), gate.wait()))  # hold the worker so the three chunks queue up
        assert started.wait(30)  # the worker is inside the call: no chunk can join its round
        futs = [sched.submit_chunk(s, pcm_to_float(speech[i * 999 : i * 999 + spc]), 0) for i, s in enumerate(sessions)]
        gate.set()
        blocker.result(timeout=30)
        frames = [f.result(timeout=120) for f in futs]
        assert sched.rounds == 1
        assert sched.cost.medians() == {}  # first chunks (cold starts) do not measure a standard round
        for i, f in enumerate(frames):
            _assert_close([f], _alone(tiny_pro_fast_vae, refs[i], seeds[i], speech[i * 999 : i * 999 + spc]))
        started.clear(), gate.clear()
        blocker = sched.call(lambda: (started.set(), gate.wait()))
        assert started.wait(30)
        futs = [sched.submit_chunk(s, pcm_to_float(speech[spc + i * 999 : 2 * spc + i * 999]), 1)
                for i, s in enumerate(sessions)]
        gate.set()
        blocker.result(timeout=30)
        [f.result(timeout=120) for f in futs]
        assert sched.rounds == 2 and list(sched.cost.medians()) == [3]  # the second chunks: one standard round
    finally:
        sched.close()


def test_scheduler_runs_stream_tails_after_full_chunks(tiny_pro_fast_vae, monkeypatch):
    """A flush's padded tail waits in its round behind the other sessions' full chunks (its frames
    play later), in a batch of its own, and does not feed the round-cost model."""
    import threading

    from vividhead.inference import batching

    order = []

    def fake_group(jobs, cfg):
        order.append([(id(j.session), j.tail) for j in jobs])
        return [np.zeros((1, 2, 2, 3), np.uint8) for _ in jobs]

    monkeypatch.setattr(batching, "_run_group", fake_group)
    sched = BatchScheduler(BatchingConfig(max_batch=8), frame_num=TINY_PRO.streaming.frame_num)
    try:
        a, b, c = sched.call(lambda: [StreamingSession(tiny_pro_fast_vae, r) for r in _refs(3)]).result()
        started, gate = threading.Event(), threading.Event()
        blocker = sched.call(lambda: (started.set(), gate.wait()))
        assert started.wait(30)
        spc = TINY_PRO.streaming.samples_per_chunk
        futs = [sched.submit_chunk(a, np.zeros(spc, np.float32), 3, tail=True),
                sched.submit_chunk(b, np.zeros(spc, np.float32), 3),
                sched.submit_chunk(c, np.zeros(spc, np.float32), 5)]
        gate.set()
        blocker.result(timeout=30)
        [f.result(timeout=30) for f in futs]
        assert order == [[(id(b), False), (id(c), False)], [(id(a), True)]]
        assert list(sched.cost.medians()) == [2]  # the full chunks' batch only
    finally:
        sched.close()


def test_scheduler_gathers_chunks_of_open_sessions(tiny_pro_fast_vae, speech):
    """With ``gather_s``, a chunk waits for the other open session's chunk (one round for both,
    started as soon as both wait); with a third session open that never sends, the round starts at
    the deadline."""
    import time

    spc = TINY_PRO.streaming.samples_per_chunk
    for open_sessions, gather_s in [(2, 30.0), (3, 0.5)]:
        sched = BatchScheduler(BatchingConfig(gather_s=gather_s), open_sessions=lambda n=open_sessions: n)
        try:
            a, b = sched.call(lambda: [StreamingSession(tiny_pro_fast_vae, r) for r in _refs(2)]).result()
            t0 = time.monotonic()
            fa = sched.submit_chunk(a, pcm_to_float(speech[:spc]), 0)
            time.sleep(0.2)
            fb = sched.submit_chunk(b, pcm_to_float(speech[spc : 2 * spc]), 0)
            fa.result(timeout=120), fb.result(timeout=120)
            assert sched.rounds == 1 and a.timings.extra["batch"] == 2
            assert time.monotonic() - t0 < 20  # never the 30 s deadline: both were waiting
        finally:
            sched.close()


def test_scheduler_failed_chunk_is_consumed(tiny_pro_fast_vae, speech, monkeypatch):
    """A chunk whose round raises is consumed: with ``fast_start``, session ``a``'s short first chunk
    fails, and its next chunk runs as chunk 1 (standard length) in one round with session ``b``'s
    chunk 1; both are served (the failure costs neither that round nor ``b`` anything)."""
    import threading

    from vividhead.inference import batching

    streaming = dataclasses.replace(TINY_PRO.streaming, fast_start=True)
    real = batching._run_group
    rounds = []

    def failing_group(jobs, cfg):
        rounds.append([(j.session, j.index) for j in jobs])
        if any(j.session is a and j.index == 0 for j in jobs):
            raise RuntimeError("CUDA out of memory")
        return real(jobs, cfg)

    monkeypatch.setattr(batching, "_run_group", failing_group)
    sched = BatchScheduler(BatchingConfig(max_batch=8), frame_num=streaming.frame_num)
    started, gate = threading.Event(), threading.Event()
    try:
        a, b = sched.call(lambda: [StreamingSession(tiny_pro_fast_vae, r, streaming=streaming)
                                   for r in _refs(2)]).result()
        n = (streaming.motion_frames - 1 + streaming.new_frames) * 640
        (a0, a1), (b0, b1) = a.split(speech[:n]), b.split(speech[3000 : 3000 + n])
        assert (a0[1], a1[1]) == (0, 1)
        assert sched.submit_chunk(b, *b0).result(timeout=120).shape[0] == streaming.motion_frames - 1
        with pytest.raises(RuntimeError, match="out of memory"):
            sched.submit_chunk(a, *a0).result(timeout=120)
        blocker = sched.call(lambda: (started.set(), gate.wait()))  # both chunk 1s join one round
        assert started.wait(30)
        fa, fb = sched.submit_chunk(a, *a1), sched.submit_chunk(b, *b1)
        gate.set()
        blocker.result(timeout=30)
        assert fa.result(timeout=120).shape == fb.result(timeout=120).shape == (streaming.new_frames, 32, 32, 3)
        assert rounds[-1] == [(a, 1), (b, 1)]
        assert a.state.chunk_index == b.state.chunk_index == 2
    finally:
        gate.set()
        sched.close()


def test_scheduler_counts_only_live_chunks(tiny_pro_fast_vae, monkeypatch):
    """Chunks of a session that left (their futures cancelled, as the server does when a connection
    closes) are not waiting: :meth:`BatchScheduler.waiting` counts live chunks only, and a round
    gathering for the open sessions waits for their chunks, not the departed session's."""
    import threading
    import time

    from vividhead.inference import batching

    order = []

    def fake_group(jobs, cfg):
        order.append([j.session for j in jobs])
        return [np.zeros((1, 2, 2, 3), np.uint8) for _ in jobs]

    monkeypatch.setattr(batching, "_run_group", fake_group)
    sched = BatchScheduler(BatchingConfig(max_batch=8, gather_s=30.0), open_sessions=lambda: 2)
    started, gate = threading.Event(), threading.Event()
    try:
        a, b, gone = sched.call(lambda: [StreamingSession(tiny_pro_fast_vae, r) for r in _refs(3)]).result()
        blocker = sched.call(lambda: (started.set(), gate.wait()))
        assert started.wait(30)
        spc = TINY_PRO.streaming.samples_per_chunk
        dropped = [sched.submit_chunk(gone, np.zeros(spc, np.float32), i) for i in (3, 4)]
        fa = sched.submit_chunk(a, np.zeros(spc, np.float32), 3)
        assert sched.waiting() == 3
        for f in dropped:
            assert f.cancel()
        assert sched.waiting() == 1
        gate.set()
        blocker.result(timeout=30)
        time.sleep(0.3)  # a round would start now if the departed session's chunk counted as waiting
        fb = sched.submit_chunk(b, np.zeros(spc, np.float32), 3)
        fa.result(timeout=20), fb.result(timeout=20)  # well before the 30 s deadline
        assert order == [[a, b]]
        assert sched.waiting() == 0
    finally:
        gate.set()
        sched.close()


def test_cost_model_estimates():
    m = ChunkCostModel()
    assert m.estimate(1) is None
    m.observe(2, 0.5)
    assert m.estimate(2) == 0.5 and m.estimate(4) == pytest.approx(1.0) and m.estimate(1) == 0.5
    m.observe(4, 0.7)
    m.observe(4, 0.9)  # median of 0.7, 0.9
    assert m.estimate(4) == pytest.approx(0.8)
    assert m.estimate(8) == pytest.approx(0.2 + 0.15 * 8)  # line through (2, 0.5), (4, 0.8)


def test_cost_model_below_every_measured_size():
    """Fewer rows than any measured size cost at most that size's time and at least that time
    scaled in proportion (a round has no negative fixed part), whatever the line through the
    medians says: measured at 2 and 4 only (a session left before 1 was served), a round of one is
    not free; it is what admission adds for the last, partial round above ``max_batch``."""
    m = ChunkCostModel()
    m.observe(2, 0.1)
    m.observe(4, 1.0)
    assert m.estimate(1) == pytest.approx(0.05)  # the line says -0.35
    m = ChunkCostModel()
    m.observe(8, 0.4)
    m.observe(16, 0.84)
    assert m.estimate(1) == pytest.approx(0.05) and m.estimate(4) == pytest.approx(0.2)  # line: 0.015, 0.18
    m = ChunkCostModel()
    m.observe(2, 0.1)
    m.observe(4, 0.05)
    assert m.estimate(1) == pytest.approx(0.1)  # flat line at 0.15 (its slope clamped at 0)
    m = ChunkCostModel()
    m.observe(4, 0.3)
    m.observe(8, 0.4)
    assert m.estimate(2) == pytest.approx(0.25)  # the line, within both bounds


def test_load_meter_busy_fraction():
    m = LoadMeter(horizon_s=20.0)
    assert m.busy_fraction(5.0, now=100.0) is None  # nothing recorded
    m.record(97.0, 98.0)
    assert m.busy_fraction(5.0, now=100.0) is None  # history shorter than the window
    assert m.busy_fraction(5.0, now=100.0, require_history=False) == pytest.approx(0.2)
    m.record(98.5, 99.5)
    assert m.busy_fraction(2.0, now=100.0) == pytest.approx(0.5)  # 1.0 s of [98, 100]
    assert m.busy_fraction(2.5, now=100.0) == pytest.approx(1.5 / 2.5)  # clipped at the window's start
    m.record(150.0, 151.0)  # older intervals fall out of the 20 s horizon
    assert m.busy_fraction(10.0, now=151.0) == pytest.approx(0.1)


def test_scheduler_load_counts_rounds_not_calls(tiny_pro_fast_vae, speech):
    scheduler = BatchScheduler(BatchingConfig(max_batch=2))
    try:
        scheduler.call(lambda: __import__("time").sleep(0.3)).result()  # e.g. warm-up: not load
        assert scheduler.load.busy_fraction(5.0, require_history=False) is None
        session = scheduler.call(lambda: StreamingSession(tiny_pro_fast_vae, _refs(1)[0], seed=0)).result()
        spc = TINY_PRO.streaming.samples_per_chunk
        scheduler.submit_chunk(session, pcm_to_float(speech[:spc]), 0).result(timeout=120)
        busy = scheduler.load.busy_fraction(30.0, require_history=False)
        assert busy is not None and 0 < busy < 1
    finally:
        scheduler.close()


def test_batching_config_buckets():
    cfg = BatchingConfig(max_batch=16, vae_batch=2, batch_buckets=(4, 2))
    assert cfg.batch_buckets == (1, 2, 4) and cfg.max_batch == 4 and cfg.padded(3) == 4  # 1 always in
    assert (cfg.padded_vae(1), cfg.padded_vae(2)) == (1, 2)
    with pytest.raises(ValueError):
        BatchingConfig(max_batch=0)


def test_batching_config_vae_buckets():
    """``vae_buckets`` pads each VAE part to the smallest bucket, ``vae_batch`` the top one; without
    it the VAE parts follow ``batch_buckets`` (or run exact) as before."""
    cfg = BatchingConfig(vae_batch=8, vae_buckets=(4, 2, 4))
    assert cfg.vae_buckets == (2, 4, 8)
    assert [cfg.padded_vae(n) for n in (1, 2, 3, 4, 5, 7, 8)] == [2, 2, 4, 4, 8, 8, 8]
    assert BatchingConfig(vae_batch=8, vae_buckets=(2, 4)).vae_buckets == (2, 4, 8)  # vae_batch added
    assert BatchingConfig(vae_batch=3, vae_buckets=()).padded_vae(1) == 3
    # the DiT's buckets do not reach the VAE parts when vae_buckets is set, and the DiT ignores vae_buckets
    both = BatchingConfig(max_batch=16, vae_batch=8, batch_buckets=(1, 16), vae_buckets=(2,))
    assert (both.padded(3), both.padded_vae(1), both.padded_vae(3)) == (16, 2, 8)
    assert BatchingConfig(vae_batch=8, vae_buckets=(2, 4)).padded(3) == 3
    assert [BatchingConfig(vae_batch=8).padded_vae(n) for n in (1, 5)] == [1, 5]
    assert [BatchingConfig(vae_batch=8, batch_buckets=(4, 16)).padded_vae(n) for n in (1, 3, 5)] == [1, 4, 8]
    with pytest.raises(ValueError, match="vae_buckets must be positive sizes"):
        BatchingConfig(vae_batch=8, vae_buckets=(0, 4))
    with pytest.raises(ValueError, match=r"above vae_batch \(4\)"):
        BatchingConfig(vae_batch=4, vae_buckets=(2, 4, 8))

"""Load test of the WebSocket server with real clients: N WebSocket clients on loopback stream fixture
speech at real-time pace and measure what each receives (frames per second, chunk latency, playback
stalls); one run per N, printed as JSON with the curve against N.

In-process (the server object on this event loop, random weights; speed does not depend on them):

    # CPU smoke run, toy model (what tests/inference/test_server_load.py runs)
    python benchmarks/serve_load.py --variant tiny-pro --device cpu --streams 1 2 --seconds 3
    # one H200, released shapes at random weights
    python benchmarks/serve_load.py --variant lite --device cuda --streams 1 4 8 12 16 20 --seconds 8
    python benchmarks/serve_load.py --variant pro --device cuda --streams 1 2 3 --seconds 8

Against a running ``vividhead serve`` (no server-side figures): ``--url ws://127.0.0.1:8765``.

Per client: ``fps`` = frames of its standard chunks after the first over the time between the
first and last of their arrivals (what a player receives once running); ``latency_s`` per chunk =
arrival of its video - sending of the chunk's last audio sample (the flush chunk: - sending of the
flush); ``stall_s`` = time a player that starts ``--playout-buffer-s`` after the first chunk
arrives would wait for frames; real time = ``fps >= 0.95 * 25`` and no stall. Bounded: at most
``--max-streams`` clients, ``--seconds`` of audio each, ``--timeout-s`` per run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FIXTURE_AUDIO = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "media" / "audio" / "speech_en_60s_16k.wav"
PIECE_S = 0.1  # clients send 100 ms of PCM per message


@dataclass
class ClientResult:
    """What one client saw. Times in seconds on the client's clock (``time.perf_counter``)."""

    client: int
    refused: str | None = None
    ready_s: float | None = None  # connect -> "ready"
    chunks: int = 0
    frames: int = 0
    bytes: int = 0
    fps: float | None = None
    latency_s: list[float] = field(default_factory=list)
    max_gap_s: float | None = None  # largest time between two consecutive chunk arrivals
    stall_s: float = 0.0
    stalls: int = 0
    stall_chunks: list[int] = field(default_factory=list)  # index of each chunk that arrived after its play time
    first_video_s: float | None = None  # first audio sample sent -> first video chunk
    errors: list[str] = field(default_factory=list)

    def realtime(self, fps: float) -> bool:
        return self.refused is None and self.fps is not None and self.fps >= 0.95 * fps and self.stalls == 0


def _pcm(path: Path, seconds: float, offset_s: float) -> np.ndarray:
    """``seconds`` of 16 kHz int16 speech from ``path`` starting at ``offset_s`` (cycled). Read with
    soundfile (channels averaged, polyphase resampling), not librosa, which the GPU image lacks."""
    import soundfile as sf
    from scipy.signal import resample_poly

    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = x.mean(axis=1)
    if sr != 16000:
        g = np.gcd(sr, 16000)
        x = resample_poly(x, 16000 // g, sr // g).astype(np.float32)
    n, start = int(seconds * 16000), int(offset_s * 16000) % len(x)
    idx = (start + np.arange(n)) % len(x)
    return (np.clip(x[idx], -1, 1) * 32767).astype("<i2")


async def run_client(url: str, k: int, pcm: np.ndarray, start_delay_s: float, playout_buffer_s: float,
                     timeout_s: float) -> ClientResult:
    """One client: connect, stream ``pcm`` at real-time pace in 100 ms pieces, flush, collect."""
    from websockets.asyncio.client import connect

    res = ClientResult(k)
    await asyncio.sleep(start_delay_s)
    t_connect = time.perf_counter()
    # max_size: the server's MAX_MESSAGE_BYTES, not imported (a client-only run needs no torch)
    async with connect(url, max_size=2**24, open_timeout=timeout_s) as ws:
        hello = json.loads(await ws.recv())
        if hello.get("type") != "ready":
            res.refused = hello.get("message", str(hello))
            return res
        res.ready_s = time.perf_counter() - t_connect
        fps, spf = hello["fps"], hello["sample_rate"] // hello["fps"]
        piece = int(PIECE_S * hello["sample_rate"])
        sent_at: list[tuple[int, float]] = []  # (samples sent so far, when)
        arrivals: list[tuple[float, dict]] = []
        flush_at: list[float] = []
        done = asyncio.Event()

        async def sender():
            t0 = time.perf_counter()
            for i, pos in enumerate(range(0, len(pcm), piece)):
                await asyncio.sleep(max(0.0, t0 + i * PIECE_S - time.perf_counter()))
                await ws.send(pcm[pos : pos + piece].tobytes())
                sent_at.append((min(pos + piece, len(pcm)), time.perf_counter()))
            flush_at.append(time.perf_counter())
            await ws.send(json.dumps({"type": "flush"}))

        async def receiver():
            meta = None
            async for msg in ws:
                now = time.perf_counter()
                if isinstance(msg, bytes):
                    arrivals.append((now, meta))
                    res.bytes += len(msg)
                    continue
                m = json.loads(msg)
                if m["type"] == "video":
                    meta = m
                elif m["type"] == "flushed":
                    done.set()
                    return
                elif m["type"] == "error":
                    res.errors.append(m.get("message", ""))

        send_task = asyncio.create_task(sender())
        recv_task = asyncio.create_task(receiver())
        try:
            await asyncio.wait_for(asyncio.gather(send_task, recv_task), timeout_s)
        except asyncio.TimeoutError:
            res.errors.append(f"timed out after {timeout_s:.0f} s")
            send_task.cancel()
            recv_task.cancel()

    # Metrics
    res.chunks = len(arrivals)
    res.frames = sum(m["frames"] for _, m in arrivals)
    if not arrivals:
        return res
    audio_end = sent_at[-1][0] if sent_at else 0
    for t, m in arrivals:
        end_sample = (m["first_frame"] + m["frames"]) * spf
        if end_sample <= audio_end:
            sent = next(ts for n, ts in sent_at if n >= end_sample)
        else:  # the flush chunk: its audio is the padded tail
            sent = flush_at[0] if flush_at else t
        res.latency_s.append(t - sent)
    res.first_video_s = arrivals[0][0] - sent_at[0][1]
    standard = [(t, m) for t, m in arrivals if m["frames"] == max(mm["frames"] for _, mm in arrivals)]
    if len(standard) >= 2:
        span = standard[-1][0] - standard[0][0]
        res.fps = sum(m["frames"] for _, m in standard[1:]) / span if span > 0 else None
    times = [t for t, _ in arrivals]
    res.max_gap_s = max((b - a for a, b in zip(times, times[1:])), default=None)
    # Playback: starts playout_buffer_s after the first arrival; each chunk plays for frames / fps.
    clock = times[0] + playout_buffer_s
    for i, (t, m) in enumerate(arrivals):
        if t > clock:
            res.stall_s += t - clock
            res.stalls += 1
            res.stall_chunks.append(i)
            clock = t
        clock += m["frames"] / fps
    return res


def _q(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    return float(np.quantile(np.asarray(xs), q))


def _compiled_graphs() -> int:
    """Graphs ``torch.compile`` has compiled in this process so far (dynamo's ``unique_graphs``)."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # no torch here (a client-only run against --url)
        return 0
    return int(counters["stats"]["unique_graphs"])


class LoopLag:
    """How late this event loop runs a task that asks to wake every ``period_s`` (seconds): a loop
    busy with other work (WebSocket framing, deflate, JSON) wakes it late, and every session's
    receiving, submitting and sending waits as long."""

    def __init__(self, period_s: float = 0.02) -> None:
        self.period_s = period_s
        self.lags: list[float] = []
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(self.period_s)
            self.lags.append(time.perf_counter() - t - self.period_s)

    def start(self) -> None:
        self.lags = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    def stop(self) -> dict:
        if self._task is not None:
            self._task.cancel()
        return {"loop_lag_p50_s": _q(self.lags, 0.5), "loop_lag_p95_s": _q(self.lags, 0.95),
                "loop_lag_max_s": max(self.lags, default=None)}


class ServerTimes:
    """Where a chunk's latency goes on the server, measured by wrapping the in-process server's
    scheduler and encoder (the server itself is unchanged): ``chunk`` = audio complete (submitted to
    the batch scheduler) -> frames ready (waiting for a round + the round), ``encode`` = frames ->
    MP4 bytes (waiting for an encoding worker + the encode). Seconds; :meth:`take` returns the
    p50 / p95 of each since the last call and starts over.

    With ``content="image"`` the encoder gets face-like frames of the generated shape in place of the
    model's (the reference image, shifted per frame, :func:`replay_frames`): random weights generate
    noise, whose MP4s (about 3 MB per Lite chunk) cost several times the encode of a face (a
    512x512x24 chunk of noise: 0.29 s of one development-machine core), which trained weights do not.
    """

    def __init__(self, server, content: str = "model", image: Path | None = None) -> None:
        self.chunk: list[float] = []
        self.encode: list[float] = []
        self._bank: dict[tuple, list[np.ndarray]] = {}
        submit, encode = server.scheduler.submit_chunk, server.encoder.encode

        def timed_submit(*a, **kw):
            t0 = time.perf_counter()
            fut = submit(*a, **kw)
            fut.add_done_callback(lambda _f: self.chunk.append(time.perf_counter() - t0))
            return fut

        async def timed_encode(frames: np.ndarray, fps: int) -> bytes:
            if content == "image":
                key = frames.shape
                if key not in self._bank:  # made once per shape, outside the timed encode
                    n, h, w = frames.shape[:3]
                    self._bank[key] = [replay_frames("image", image, max(h, w), n, seed=k)[:, :h, :w]
                                       for k in range(4)]
                frames = self._bank[key][len(self.encode) % 4]
            t0 = time.perf_counter()
            data = await encode(frames, fps)
            self.encode.append(time.perf_counter() - t0)
            return data

        server.scheduler.submit_chunk = timed_submit
        server.encoder.encode = timed_encode

    def take(self) -> dict:
        out = {"chunk_s_p50": _q(self.chunk, 0.5), "chunk_s_p95": _q(self.chunk, 0.95),
               "encode_s_p50": _q(self.encode, 0.5), "encode_s_p95": _q(self.encode, 0.95)}
        self.chunk, self.encode = [], []
        return out


def summarise(n: int, results: list[ClientResult], fps: float, server=None, wall_s: float = 0.0) -> dict:
    """One point of the curve: per-stream FPS and chunk latency over the ``n`` clients."""
    served = [r for r in results if r.refused is None]
    lat = [x for r in served for x in r.latency_s]
    fpss = [r.fps for r in served if r.fps is not None]
    point = {
        "streams": n, "served": len(served), "refused": len(results) - len(served),
        "realtime_streams": sum(r.realtime(fps) for r in results),
        "fps_min": min(fpss, default=None), "fps_median": statistics.median(fpss) if fpss else None,
        "latency_p50_s": _q(lat, 0.5), "latency_p95_s": _q(lat, 0.95), "latency_max_s": max(lat, default=None),
        "first_video_s_median": statistics.median([r.first_video_s for r in served if r.first_video_s is not None])
        if served else None,
        "max_gap_s": max((r.max_gap_s for r in served if r.max_gap_s is not None), default=None),
        "stall_s_total": sum(r.stall_s for r in served), "stalls": sum(r.stalls for r in served),
        # {chunk index: stalls there}: at the start (sessions joining) or throughout (throughput)
        "stalls_by_chunk": {str(k): v for k, v in sorted(
            collections.Counter(i for r in served for i in r.stall_chunks).items())},
        "frames": sum(r.frames for r in served),
        "mp4_kib_per_chunk": round(sum(r.bytes for r in served) / 1024 / max(1, sum(r.chunks for r in served)), 1),
        "errors": sorted({e for r in results for e in r.errors})[:5],
        "refusal": next((r.refused for r in results if r.refused), None), "wall_s": wall_s,
    }
    if server is not None:
        from vividhead.inference.admission import DEFAULT_REALTIME_MARGIN

        point["server"] = {"rounds": server.scheduler.rounds,
                           "round_s_by_batch": {str(k): round(v, 4) for k, v in server.scheduler.cost.medians().items()},
                           "chunk_s": server.chunk_seconds,
                           # model thread busy serving rounds over this point's wall time (0-1)
                           "busy_share": server.scheduler.load.busy_fraction(wall_s, require_history=False) if wall_s > 0 else None,
                           "admits_this_many": server.round_seconds(n) is not None
                           and server.round_seconds(n) <= (server.admission.realtime_margin or DEFAULT_REALTIME_MARGIN) * server.chunk_seconds}
    return point


async def run_clients(args, url: str, n: int, chunk_s: float) -> list[ClientResult]:
    """``n`` clients on this event loop, starts spread over one chunk (``--stagger``)."""
    pcms = [_pcm(args.audio, args.seconds, 3.7 * k) for k in range(n)]
    return list(await asyncio.gather(*(
        run_client(url, k, pcms[k], (k * chunk_s / n) if args.stagger else 0.0, args.playout_buffer_s,
                   args.seconds + args.timeout_s)
        for k in range(n))))


async def _clients_in_subprocess(args, url: str, n: int, chunk_s: float) -> tuple[list[ClientResult], float]:
    """The same clients in a child Python process (``--client-process``), as remote clients would
    be: the server's event loop then carries only the server's work. Returns the results and the
    clients' wall time (seconds, without the child's start-up)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--url", url, "--clients-once", str(n),
           "--chunk-s", str(chunk_s), "--seconds", str(args.seconds), "--audio", str(args.audio),
           "--timeout-s", str(args.timeout_s), "--playout-buffer-s", str(args.playout_buffer_s),
           "--stagger" if args.stagger else "--no-stagger"]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"client process exited with {proc.returncode}")
    got = json.loads(out)
    return [ClientResult(**r) for r in got["results"]], got["wall_s"]


async def run_sweep(args, url: str, server=None, times: ServerTimes | None = None) -> list[dict]:
    curve = []
    fps = 25.0
    for n in args.streams:
        if n > args.max_streams:
            raise SystemExit(f"--streams {n} above --max-streams {args.max_streams}")
        rounds0 = server.scheduler.rounds if server is not None else 0
        graphs0 = _compiled_graphs()
        chunk_s = server.chunk_seconds if server is not None else 1.0
        if times is not None:
            times.take()  # this point's chunks only
        lag = LoopLag()
        lag.start()
        if args.client_process:
            results, wall_s = await _clients_in_subprocess(args, url, n, chunk_s)
        else:
            t0 = time.perf_counter()
            results = await run_clients(args, url, n, chunk_s)
            wall_s = time.perf_counter() - t0
        point = summarise(n, results, fps, server, wall_s)
        point.update(lag.stop())
        if server is not None:
            point["server"]["rounds"] -= rounds0
            # graphs dynamo compiled while this point was served: after warm-up there should be none
            point["server"]["recompiles"] = _compiled_graphs() - graphs0
        if times is not None:
            point["server"].update(times.take())
        curve.append(point)
        line = json.dumps(point)
        print(line, file=sys.stderr, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return curve


def replay_frames(content: str, image: Path, frame_px: int, n: int, seed: int = 0) -> np.ndarray:
    """uint8 ``[n, frame_px, frame_px, 3]`` stand-in frames of a chunk: ``image`` resized by nearest
    pixel and shifted 2 px per frame (``seed`` offsets the shift; face-like, about 60 KiB per 24-frame
    MP4 at 512), or ``content="noise"``: uniform noise (what random weights give, about 3 MB)."""
    if content == "noise":
        return np.random.default_rng(seed).integers(0, 256, (n, frame_px, frame_px, 3), dtype=np.uint8)
    from vividhead.media import read_image

    im = read_image(image)
    ys = np.linspace(0, im.shape[0] - 1, frame_px).astype(int)
    xs = np.linspace(0, im.shape[1] - 1, frame_px).astype(int)
    still = np.ascontiguousarray(im[ys][:, xs])
    return np.stack([np.roll(still, 2 * (n * seed + i), axis=1) for i in range(n)])


def _simulate_round_time(seconds: float, frame_px: int | None = None, image: Path | None = None,
                         content: str = "image", per_row_s: float = 0.0) -> None:
    """Make every served round of the batch scheduler last at least ``seconds`` plus ``per_row_s``
    per DiT row (the round's sessions padded to their batch bucket; a device round's cost is close
    to linear in its rows: Lite on one H200, 0.08 s for 1 and 0.69 s for 16): the model thread
    sleeps out the rest (releasing the GIL, as a round waiting on the GPU does), so the scheduling of
    a device-sized round can be studied with a toy model on a CPU. With ``frame_px``, each chunk's
    frames are replaced by ``frame_px`` square frames of ``image`` (each frame shifted by its index),
    so that the MP4 encode and the sending cost what they cost at the released size (the toy model
    is then not run for standard rounds: only the scheduling, encoding and sending are replayed); ``content``
    ``"noise"``: uniform noise frames instead (what random weights give: the largest MP4s)."""
    from vividhead.inference import batching

    run_group = batching._run_group
    # made once: making frames inside a round would lengthen it
    bank = [replay_frames(content, image, frame_px, 32, seed=k) for k in range(4)] if frame_px else []

    def timed(jobs, cfg):
        t0 = time.perf_counter()
        if bank:  # frames only: the toy model at 16 sessions would outlast a device round on a CPU
            out = [bank[(j.index + k) % len(bank)][: len(j.samples) // j.session.cfg.samples_per_frame]
                   for k, j in enumerate(jobs)]
        else:
            out = run_group(jobs, cfg)
        target = seconds + per_row_s * cfg.padded(len(jobs))
        time.sleep(max(0.0, target - (time.perf_counter() - t0)))
        return out

    batching._run_group = timed


def save_artifacts(path) -> int:
    """``--compile-artifacts``: write the compile caches as ``serve`` does after its warm-up (bytes)."""
    from vividhead.inference.compile_cache import save_compile_artifacts

    return save_compile_artifacts(path)


def batching_config(args):
    """The server's :class:`BatchingConfig` from the command line.

    Raises:
        ValueError: BatchingConfig's checks (sizes below 1, VAE buckets above ``--vae-batch``).
    """
    from vividhead.inference.batching import BatchingConfig

    return BatchingConfig(max_batch=args.max_batch, vae_batch=args.vae_batch, gather_s=args.gather_s,
                          batch_buckets=tuple(args.batch_buckets) if args.batch_buckets else None,
                          vae_buckets=tuple(args.vae_buckets) if args.vae_buckets else None)


def build_server(args):
    """Models at random weights (``--variant``, toy variants included) and a :class:`FlashHeadServer`."""
    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from _common import find_variant

    from vividhead.inference.admission import DEFAULT_REALTIME_MARGIN, AdmissionConfig
    from vividhead.inference.pipeline import FlashHeadModels, default_dtype_for
    from vividhead.inference.server import FlashHeadServer, split_warm_up
    from vividhead.media import read_image

    variant, toy = find_variant(args.variant)
    dtype = default_dtype_for(args.device)
    artifacts = {}
    if args.compile_artifacts is not None:  # as `vividhead serve --compile-artifacts`: loaded before compiling
        from vividhead.inference.compile_cache import load_compile_artifacts

        t = time.perf_counter()
        artifacts = {"loaded": load_compile_artifacts(args.compile_artifacts), "load_s": time.perf_counter() - t}
    if args.device == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    models = FlashHeadModels.random(variant, device=args.device, dtype=dtype, tiny_encoders=toy)
    applied = models.optimize(cuda_graphs=args.cuda_graphs, dynamic_batch=args.dynamic_batch, fp8=args.fp8) if args.optimize else {}
    image = read_image(args.image)
    batching = batching_config(args)
    admission = AdmissionConfig(max_sessions=args.max_sessions,
                                realtime_margin=DEFAULT_REALTIME_MARGIN if args.admission else None)
    server = FlashHeadServer(models, image, batching=batching, admission=admission, encode_workers=args.encode_workers)
    if args.round_s:
        _simulate_round_time(args.round_s, args.replay_frame_px, args.image, args.replay_content,
                             args.round_s_per_row)
    t0 = time.perf_counter()
    before, later = split_warm_up(tuple(args.warm_up)) if args.warm_up_in_background else (tuple(args.warm_up), ())
    warm = server.warm_up(before, rounds=1) if before else {}
    if args.round_s:  # admission and the reported medians see the replayed round costs, not the toy model's
        from vividhead.inference.batching import ChunkCostModel

        server.scheduler.cost = ChunkCostModel()
        for b in batching.batch_buckets or range(1, batching.max_batch + 1):
            server.scheduler.cost.observe(b, args.round_s + args.round_s_per_row * b)
    setup = {"optimize": applied, "warm_up_s": time.perf_counter() - t0,
             "warm_up_round_s": {str(k): round(v, 4) for k, v in warm.items()}}
    if later:  # as `serve --warm-up-in-background`: the port opens now, these warm while no session is open
        setup["warm_up_later"] = list(later)
    if args.compile_artifacts is not None:
        setup["compile_artifacts"] = artifacts
        if not later:  # else after the background warm-up (main)
            artifacts["bytes_written"] = save_artifacts(args.compile_artifacts)
    if args.profile_round:
        setup["profile_round"] = server.scheduler.call(
            lambda: profile_round(models, args.profile_round, batching)).result()
    return server, setup


def profile_round(models, batch: int, batching, rounds: int = 3) -> dict:
    """Per-part seconds of a standard round of ``batch`` sessions, device-synchronised between parts
    (:meth:`FlashHeadModels.warm_up` with ``profile``: the audio encode then runs on the main
    stream, not beside the motion encode). Run after the warm-up at that batch size, so nothing
    compiles here.

    Returns:
        ``{"batch", "rounds", part: median seconds}`` for audio, encode (motion frames), dit,
        decode (LTX/Wan decode and colour), other (host copy and bookkeeping), total.
    """
    parts = ("audio", "encode", "dit", "decode", "other", "total")
    seen: dict[str, list[float]] = {k: [] for k in parts}

    def record(_b: int, _seconds: float, timings) -> None:
        for k in parts:
            seen[k].append(getattr(timings, k))

    models.warm_up(batch_sizes=(batch,), batching=batching, measured_rounds=rounds, on_round=record, profile=True)
    return {"batch": batch, "rounds": rounds, **{k: round(float(np.median(v)), 4) for k, v in seen.items()}}


async def main_async(args) -> dict:
    info: dict = {"variant": args.variant, "device": args.device, "seconds": args.seconds, "round_s": args.round_s,
                  "round_s_per_row": args.round_s_per_row, "streams": args.streams, "stagger": args.stagger, "playout_buffer_s": args.playout_buffer_s,
                  "compression": args.compression, "client_process": args.client_process,
                  "encode_workers": args.encode_workers, "encode_content": args.encode_content}
    if args.url and args.clients_once:  # the child of --client-process: results only
        t0 = time.perf_counter()
        results = await run_clients(args, args.url, args.clients_once, args.chunk_s)
        return {"wall_s": time.perf_counter() - t0, "results": [asdict(r) for r in results]}
    if args.url:
        return {**info, "url": args.url, "curve": await run_sweep(args, args.url)}
    server, setup = await asyncio.to_thread(build_server, args)
    await server.encoder.start()
    times = ServerTimes(server, args.encode_content, args.image)
    info.update(setup, batching=asdict(server.batching), admission=asdict(server.admission),
                chunk_s=server.chunk_seconds)
    if args.device == "cuda":
        import torch

        info["gpu"] = torch.cuda.get_device_name()
    background = None
    if setup.get("warm_up_later"):
        from vividhead.inference.server import warm_up_when_idle

        artifacts = setup.get("compile_artifacts")
        t_open = time.perf_counter()

        def after() -> None:
            info["warm_up_later_done_s"] = round(time.perf_counter() - t_open, 3)  # after the port opened
            if artifacts is not None:
                artifacts["bytes_written"] = save_artifacts(args.compile_artifacts)

        background = asyncio.create_task(warm_up_when_idle(server, tuple(setup["warm_up_later"]), after))
    try:
        async with server.listen("127.0.0.1", 0, compression=None if args.compression == "none" else "deflate") as srv:
            url = f"ws://127.0.0.1:{srv.sockets[0].getsockname()[1]}"
            curve = await run_sweep(args, url, server, times)
            if background is not None:  # the sweep's clients have left: let the background warm-up finish
                await background
        if args.device == "cuda":
            import torch

            info["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    finally:
        server.close()
    return {**info, "curve": curve}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", help="connect to a running server instead of starting one in-process")
    p.add_argument("--variant", default="tiny-pro", help="pro / lite / tiny-pro / tiny-lite (in-process)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--optimize", action="store_true", help="FlashHeadModels.optimize() (compiled DiT, fast VAE)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=False,
                   help="with --optimize: replay the compiled DiT as CUDA graphs")
    p.add_argument("--streams", type=int, nargs="*", default=[1, 2],
                   help="concurrent clients per point of the curve; none (a bare --streams): warm up only, "
                        "e.g. to write --compile-artifacts")
    p.add_argument("--seconds", type=float, default=4.0, help="audio each client streams")
    p.add_argument("--max-streams", type=int, default=64)
    p.add_argument("--timeout-s", type=float, default=60.0, help="per run, beyond --seconds")
    p.add_argument("--playout-buffer-s", type=float, default=0.5)
    p.add_argument("--stagger", action=argparse.BooleanOptionalAction, default=True,
                   help="spread client starts over one chunk duration (default) or start all at once")
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--vae-batch", type=int, default=4)
    p.add_argument("--fp8", action="store_true", help="with --optimize: FP8 GEMMs in the DiT blocks (opt-in in serve)")
    p.add_argument("--dynamic-batch", action="store_true", help="with --optimize: one graph for every batch size")
    p.add_argument("--batch-buckets", type=int, nargs="*", default=None)
    p.add_argument("--vae-buckets", type=int, nargs="*", default=None,
                   help="BatchingConfig.vae_buckets: VAE part sizes to pad to (at most --vae-batch)")
    p.add_argument("--gather-s", type=float, default=0.0, help="BatchingConfig.gather_s")
    p.add_argument("--warm-up", type=int, nargs="*", default=[1], help="batch sizes measured before the sweep")
    p.add_argument("--profile-round", type=int, default=None, metavar="B",
                   help="after the warm-up, time each part of a standard round of B sessions (device-synchronised)")
    p.add_argument("--round-s", type=float, default=None,
                   help="simulate a device round: each served round lasts at least this long (seconds)")
    p.add_argument("--round-s-per-row", type=float, default=0.0,
                   help="with --round-s: each round lasts this much longer per DiT row (padded batch)")
    p.add_argument("--replay-frame-px", type=int, default=None,
                   help="with --round-s: frames of this square size (the released 512) in place of the toy model's")
    p.add_argument("--replay-content", choices=["image", "noise"], default="image",
                   help="with --replay-frame-px: the reference image, shifted per frame, or uniform noise")
    p.add_argument("--encode-workers", type=int, default=0,
                   help="FlashHeadServer's MP4 encoding processes (0: threads, the server's default)")
    p.add_argument("--encode-content", choices=["model", "image"], default="model",
                   help="frames the MP4 encoder gets: the model's (default), or face-like frames of the same "
                        "shape (the reference image, shifted per frame): random weights generate noise, "
                        "several times dearer to encode than trained weights' faces")
    p.add_argument("--client-process", action="store_true",
                   help="run the clients in a child process, as remote clients are")
    p.add_argument("--clients-once", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--chunk-s", type=float, default=1.0, help=argparse.SUPPRESS)
    p.add_argument("--compression", choices=["none", "deflate"], default="none",
                   help="per-message deflate on the in-process server (the server's default: none)")
    p.add_argument("--warm-up-in-background", action="store_true",
                   help="as serve's: warm the first and the smallest --warm-up size, open the port, warm the "
                        "others while no client is connected (warm_up_later_done_s: when they were done)")
    p.add_argument("--compile-artifacts", default=None, metavar="FILE",
                   help="a path or an fsspec URL: loaded before the warm-up if it exists, written after it "
                        "(as serve's option)")
    p.add_argument("--admission", action="store_true", help="refuse sessions as the server would by default")
    p.add_argument("--max-sessions", type=int, default=None)
    p.add_argument("--image", type=Path,
                   default=FIXTURE_AUDIO.parents[1] / "image" / "face_frontal_people0.png")
    p.add_argument("--audio", type=Path, default=FIXTURE_AUDIO)
    p.add_argument("--out", help="append one JSON line per point here")
    args = p.parse_args(argv)
    if args.profile_round is not None and not 1 <= args.profile_round <= args.max_batch:
        p.error(f"--profile-round must be between 1 and --max-batch ({args.max_batch}), got {args.profile_round}")
    try:  # BatchingConfig's own checks (sizes, buckets), before any model loads
        batching_config(args)
    except ValueError as exc:
        p.error(str(exc))
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("vividhead.inference.pipeline").setLevel(logging.INFO)  # warm-up progress, a line per batch size
    result = asyncio.run(main_async(args))
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()

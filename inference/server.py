"""Live WebSocket server: PCM in, encoded video chunks out, one :class:`StreamingSession` per connection,
the chunks of concurrent sessions generated in one batch, a browser demo page on the same port.

Protocol (JSON text frames for control, binary frames for data):

* server -> client on connect: ``{"type": "ready", "sample_rate": 16000, "fps": 25, "format": "s16le",
  "samples_per_chunk": 17920, "width": 512, "height": 512, "codec": "h264/mp4"}``; or, when the
  server cannot serve one more session in real time, ``{"type": "error", "reason": "server_full",
  "message": ...}`` and a close with code 1013 (try again later).
* client -> server, binary: mono s16le PCM at ``sample_rate``, any length (even byte count).
* server -> client per decoded chunk: ``{"type": "video", "index": i, "first_frame": k, "frames": n}``
  then one binary frame holding a standalone H.264 MP4 of those ``n`` frames.
* client -> server, text: ``{"type": "flush"}`` (pad the tail with silence, emit the frames it covers,
  answer ``{"type": "flushed", "frames_total": ...}``), ``{"type": "reset"}`` (cold start again,
  answer ``{"type": "reset", ...}``), ``{"type": "reference", "image": "<base64 PNG/JPEG>"}`` (a new
  reference portrait for this connection: cold start with it, answer ``{"type": "reference",
  "width": w, "height": h}`` with the uploaded size).
* anything else (bad JSON, unknown type, odd byte count, undecodable image) ->
  ``{"type": "error", "message": ...}``; the session stays open.

An HTTP ``GET`` on the port (not a WebSocket upgrade) serves the demo page from
``inference/static/`` (``/`` is ``index.html``).

Concurrency: a :class:`~vividhead.inference.batching.BatchScheduler` owns the models on one worker
thread and batches the waiting chunks of all sessions per round. Per connection, a receive loop
splits the PCM into chunks, a generate loop submits each to the scheduler as soon as its audio is
complete (the scheduler runs at most one chunk of a session per round, in order), and a send loop
awaits them in order, encodes the MP4s (threads, or worker processes off this process's GIL:
:class:`~vividhead.inference.chunk_encoder.ChunkEncoder`; parallel across sessions) and sends them.
A failed round, encode or model-thread call is an ``error`` message to its client, which streams on;
a chunk lost to a failed round or encode keeps its place on the stream's timeline (the next chunk's
``index`` and ``first_frame`` follow it, and ``frames_total`` counts its frames).
When a connection closes, its chunks still waiting for a round are dropped and it leaves admission
at once (a round already running finishes).

Admission control (:class:`AdmissionConfig`): a new connection is refused when ``max_sessions`` are
open, or when the measured cost of one round of ``n + 1`` sessions (:class:`ChunkCostModel`, filled
by :meth:`FlashHeadServer.warm_up` and by every served round) exceeds ``realtime_margin`` times the
chunk's duration: it could not be served in real time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import functools
import http
import io
import json
import logging
import mimetypes
from pathlib import Path
from typing import Callable

import numpy as np

from vividhead.inference.admission import AdmissionConfig
from vividhead.inference.batching import BatchingConfig, BatchScheduler, OpenSessions
from vividhead.inference.chunk_encoder import ChunkEncoder
from vividhead.inference.pipeline import FlashHeadModels, StreamingSession
from vividhead.models.configs import StreamingConfig

logger = logging.getLogger(__name__)
MAX_MESSAGE_BYTES = 2**24  # largest WebSocket message either side accepts (a reference image, a chunk)

#: The demo page's files (``index.html``, ``app.js``).
STATIC_DIR = Path(__file__).parent / "static"
#: Largest uploaded reference image (bytes after base64 decoding).
MAX_IMAGE_BYTES = 8 * 2**20
#: Largest uploaded reference image in pixels (a 24 MP photo fits; 8 MiB of PNG can declare ~180 MP,
#: 0.5 GB of RGB, which PIL would decode).
MAX_IMAGE_PIXELS = 24_000_000
#: Close code of a refused connection (RFC 6455 1013: try again later).
CLOSE_TRY_AGAIN_LATER = 1013
#: Close code of a connection whose session could not be started (RFC 6455 1011: server error).
CLOSE_SERVER_ERROR = 1011


def decode_image(data: bytes) -> np.ndarray:
    """Decode PNG/JPEG/... bytes to uint8 RGB ``[H, W, 3]``.

    Raises:
        ValueError: empty, more than :data:`MAX_IMAGE_BYTES` or :data:`MAX_IMAGE_PIXELS`, or not an image.
    """
    from PIL import Image, UnidentifiedImageError

    if not data or len(data) > MAX_IMAGE_BYTES:
        raise ValueError(f"image must be 1..{MAX_IMAGE_BYTES} bytes, got {len(data)}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size  # from the header, before any pixel is decoded
            if width * height > MAX_IMAGE_PIXELS:
                raise ValueError(f"image of {width}x{height} pixels: at most {MAX_IMAGE_PIXELS / 1e6:.0f} megapixels")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError(f"not a decodable image: {exc}") from None


class FlashHeadServer:
    """Holds the shared models, the default reference image and the batch scheduler;
    :meth:`handler` serves one connection.

    Args:
        models: shared weights.
        reference_image: uint8 ``[H, W, 3]``, every session's reference until it uploads its own.
        seed: noise seed of every session.
        streaming: chunk geometry of every session (default: the variant's), e.g. with ``fast_start``.
        batching: how chunks of concurrent sessions are batched.
        admission: when new sessions are refused.
        encode_workers: processes that encode the MP4 chunks (0: threads of this process; see
            :class:`~vividhead.inference.chunk_encoder.ChunkEncoder`).
    """

    def __init__(
        self, models: FlashHeadModels, reference_image: np.ndarray, seed: int = 42,
        streaming: StreamingConfig | None = None, batching: BatchingConfig | None = None,
        admission: AdmissionConfig | None = None, encode_workers: int = 0,
    ) -> None:
        self.models = models
        self.reference_image = reference_image
        self.seed = seed
        self.streaming = streaming or models.variant.streaming
        self.batching = batching or BatchingConfig()
        self.admission = admission or AdmissionConfig()
        self.scheduler = BatchScheduler(self.batching, frame_num=self.streaming.frame_num,
                                        open_sessions=lambda: self.active_sessions)
        self.encoder = ChunkEncoder(encode_workers)
        self.sessions = OpenSessions()  # the open sessions, and when they opened and closed (load check)
        self.refused_sessions = 0

    # -- admission ------------------------------------------------------------------------------
    @property
    def active_sessions(self) -> int:
        """Sessions open now."""
        return self.sessions.count

    @property
    def chunk_seconds(self) -> float:
        """Duration of the audio (and video) of one standard chunk: ``new_frames / fps``."""
        return self.streaming.new_frames / self.streaming.fps

    def round_seconds(self, sessions: int) -> float | None:
        """Estimated seconds of one round serving ``sessions`` standard chunks (``None``: nothing
        measured yet); rounds above ``max_batch`` are split and their times added."""
        mb, total = self.batching.max_batch, 0.0
        for start in range(0, sessions, mb):
            est = self.scheduler.cost.estimate(self.batching.padded(min(mb, sessions - start)))
            if est is None:
                return None
            total += est
        return total

    def refusal(self) -> str | None:
        """Why one more session cannot be admitted now, or ``None`` to admit it."""
        adm, n = self.admission, self.active_sessions
        if adm.max_sessions is not None and n >= adm.max_sessions:
            return f"server full: {n} of at most {adm.max_sessions} sessions open"
        if adm.realtime_margin is not None:
            est = self.round_seconds(n + 1)
            budget = adm.realtime_margin * self.chunk_seconds
            if est is not None and est > budget:
                return (f"server full: {n + 1} sessions would need an estimated {est:.3f} s per "
                        f"{self.chunk_seconds:.2f} s chunk (real time allows {budget:.3f} s)")
            load = self.scheduler.load.busy_fraction(adm.load_window_s) if adm.load_window_s and n else None
            # the busy share is per session that was open over the window, not per session open now
            # (after many leave, the window still holds their rounds)
            served = self.sessions.mean(adm.load_window_s) if load is not None else 0.0
            need = None if load is None else load * (n + 1) / (served if served > 0 else n)  # 0: opened just now
            if need is not None and need > adm.realtime_margin:
                return (f"server full: {n} sessions keep the model busy {load:.0%} of the time; "
                        f"{n + 1} would need about {need:.0%} (real time allows {adm.realtime_margin:.0%})")
        return None

    def warm_up(self, batch_sizes: tuple[int, ...] = (1,), rounds: int = 2) -> dict[int, float]:
        """Serve throw-away sessions at each batch size (random audio, the default reference) so that
        compilation happens now and admission starts from measurements: per size, the cold-start
        chunk(s) first, one unmeasured standard round (the first call of the standard chunk shape at
        that size, where a compiled path compiles and captures it; a measured first round read 2.09 s
        for two Pro sessions on an H200 against 1.16 s once serving, and made admission refuse the
        second), then ``rounds`` measured standard rounds. Blocks; call before serving.

        Returns:
            ``{padded batch size: median seconds per round}`` measured so far.
        """
        def observe(b: int, seconds: float, _timings) -> None:
            self.scheduler.cost.observe(self.batching.padded(b), seconds)

        sizes = tuple(min(b, self.batching.max_batch) for b in batch_sizes)
        self.scheduler.call(lambda: self.models.warm_up(self.streaming, sizes, self.batching, rounds, observe)).result()
        return self.scheduler.cost.medians()

    def close(self) -> None:
        """Stop the batch scheduler (after the work already queued) and the MP4 encoding workers."""
        self.scheduler.close()
        self.encoder.close()

    # -- HTTP: the demo page --------------------------------------------------------------------
    def process_request(self, connection, request):
        """``websockets`` hook: serve the demo page's files to plain HTTP GETs; let WebSocket
        upgrades through (``None``)."""
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return None
        from websockets.datastructures import Headers
        from websockets.http11 import Response

        name = request.path.split("?", 1)[0].lstrip("/") or "index.html"
        path = (STATIC_DIR / name).resolve()
        if STATIC_DIR.resolve() not in path.parents or not path.is_file():
            return connection.respond(http.HTTPStatus.NOT_FOUND, "not found\n")
        body = path.read_bytes()
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        headers = Headers([("Content-Type", ctype + ("; charset=utf-8" if ctype.startswith("text/") or
                                                     ctype.endswith("javascript") else "")),
                           ("Content-Length", str(len(body))), ("Cache-Control", "no-cache")])
        return Response(200, "OK", headers, body)

    # -- WebSocket ------------------------------------------------------------------------------
    def listen(self, host: str, port: int, compression: str | None = None):
        """The ``websockets`` server for this object (an async context manager): its handler, the
        demo page, messages up to 16 MiB, and no per-message deflate by default.

        Args:
            host, port: where to listen (port 0: any free port).
            compression: ``None`` (default) or ``"deflate"``. The binary frames are H.264 MP4s,
                which deflate cannot shrink; compressing them ran on the event loop that serves
                every session (deflate of one 3.6 MB chunk: 44 ms of one core).
        """
        from websockets.asyncio.server import serve

        return serve(self.handler, host, port, max_size=MAX_MESSAGE_BYTES, compression=compression,
                     process_request=self.process_request)

    async def handler(self, ws) -> None:
        """Serve one WebSocket connection until it closes (or refuse it, see :meth:`refusal`)."""
        reason = self.refusal()
        if reason is not None:
            self.refused_sessions += 1
            logger.info("refused a session: %s", reason)
            await ws.send(json.dumps({"type": "error", "reason": "server_full", "message": reason}))
            await ws.close(CLOSE_TRY_AGAIN_LATER, "server full")
            return
        from websockets.exceptions import ConnectionClosed

        self.sessions.change(+1)
        try:
            await self._serve(ws)
        except ConnectionClosed:  # the client went away without a clean close: nothing to answer
            pass
        finally:
            self.sessions.change(-1)

    def _new_session(self, image: np.ndarray) -> StreamingSession:
        return StreamingSession(self.models, image, seed=self.seed, streaming=self.streaming)

    async def _serve(self, ws) -> None:
        cfg = self.streaming
        try:
            state = {"session": await asyncio.wrap_future(self.scheduler.call(
                lambda: self._new_session(self.reference_image)))}
        except Exception as exc:  # e.g. out of device memory: say why, then close (1011: server error)
            logger.exception("could not start a session")
            await ws.send(json.dumps({"type": "error", "reason": "session_failed",
                                      "message": f"could not start a session: {exc}"}))
            await ws.close(CLOSE_SERVER_ERROR, "could not start a session")
            return
        await ws.send(json.dumps({
            "type": "ready", "sample_rate": cfg.sample_rate_hz, "fps": cfg.fps, "format": "s16le",
            "samples_per_chunk": cfg.samples_per_chunk, "width": cfg.width_px, "height": cfg.height_px,
            "codec": "h264/mp4",
        }))
        # ("chunk", samples, index) | ("flush", samples, index, keep) | ("call", fn, after, done)
        work: asyncio.Queue = asyncio.Queue()
        # ("video", frames future, frames on the timeline) | ("json", dict) | ("restart",) | ("flushed",)
        out: asyncio.Queue = asyncio.Queue()
        queued: list[concurrent.futures.Future] = []  # this session's chunks handed to the scheduler
        tasks = [asyncio.create_task(self._generate_loop(state, work, out, queued)),
                 asyncio.create_task(self._send_loop(ws, out))]

        async def barrier(fn, after) -> None:
            """Run ``fn(session)`` on the model thread after this session's queued chunks; ``after(result)``
            gives the items to send. Waits, so no PCM is split while the session changes."""
            done = asyncio.get_running_loop().create_future()
            work.put_nowait(("call", fn, after, done))
            await done

        try:
            async for message in ws:
                try:
                    if isinstance(message, (bytes, bytearray)):
                        session: StreamingSession = state["session"]
                        for job in session.split(bytes(message)):  # generation is the scheduler's
                            work.put_nowait(("chunk", *job))
                        continue
                    msg = json.loads(message)
                    kind = msg.get("type") if isinstance(msg, dict) else None
                    if kind == "flush":  # the padded tail joins the next round like any chunk
                        tail = state["session"].split_flush()
                        if tail is not None:
                            work.put_nowait(("flush", *tail))
                        await barrier(lambda s: None, lambda _, s: [("flushed",)])
                    elif kind == "reset":
                        await barrier(lambda s: s.reset(), lambda _, s: [
                            ("restart",), ("json", {"type": "reset", "frames_total": 0})])
                    elif kind == "reference":
                        # off the event loop: a large photo takes a while to decode, other sessions stream on
                        image = await asyncio.to_thread(decode_image, _b64(msg.get("image")))
                        await barrier(lambda s, im=image: state.update(session=self._new_session(im)),
                                      lambda _, s, im=image: [("restart",), ("json", {
                                          "type": "reference", "width": int(im.shape[1]), "height": int(im.shape[0])})])
                    else:
                        raise ValueError(f"unknown message type {kind!r}")
                except RecursionError:  # JSON nested deeper than the parser's stack
                    out.put_nowait(("json", {"type": "error", "message": "JSON nested too deep"}))
                except ValueError as exc:  # JSONDecodeError included
                    out.put_nowait(("json", {"type": "error", "message": str(exc)}))
        finally:
            # The connection is closed: nothing more can be sent, so nothing more is generated or
            # encoded for it. Its chunks still waiting for a round are dropped (a round already
            # running finishes), and the session leaves admission now, not after its backlog.
            for t in tasks:
                t.cancel()
            for fut in queued:
                fut.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.gather(*tasks)

    async def _generate_loop(self, state: dict, work: asyncio.Queue, out: asyncio.Queue,
                             queued: list[concurrent.futures.Future]) -> None:
        # Chunks go to the scheduler as soon as their audio is complete, without waiting for the
        # previous chunk's frames: a backlogged session then has its next chunk queued when a round
        # ends, so it joins the very next round. (Waiting for each result first cost a round trip
        # through this event loop between rounds, long enough for the next round to start without
        # the sessions it just served; they ran every other round, below real time.)
        pending: list[asyncio.Future] = []  # this session's chunks in the scheduler, in order
        async def trimmed(fut: asyncio.Future, session: StreamingSession, keep: int) -> np.ndarray:
            return session.trim_flush(await fut, keep)

        while (item := await work.get()) is not None:
            if item[0] in ("chunk", "flush"):
                session = state["session"]
                cfut = self.scheduler.submit_chunk(session, *item[1:3], tail=item[0] == "flush")
                queued[:] = [f for f in queued if not f.done()] + [cfut]
                fut = asyncio.wrap_future(cfut)
                if item[0] == "flush":  # keep the frames the stream's samples cover
                    fut = asyncio.ensure_future(trimmed(fut, session, item[3]))
                pending = [f for f in pending if not f.done()] + [fut]
                frames = item[3] if item[0] == "flush" else item[1].shape[0] // self.streaming.samples_per_frame
                out.put_nowait(("video", fut, frames))
                continue
            _, fn, after, done = item
            try:
                await asyncio.gather(*pending, return_exceptions=True)  # a call runs after the queued chunks
                pending = []
                session = state["session"]
                try:
                    result = await asyncio.wrap_future(self.scheduler.call(functools.partial(fn, session)))
                except Exception as exc:  # e.g. out of memory building a session: this client's error
                    if not isinstance(exc, ValueError):
                        logger.exception("a session's call on the model thread failed")
                    out.put_nowait(("json", {"type": "error", "message": str(exc)}))
                else:
                    for x in after(result, state["session"]):
                        out.put_nowait(x)
            finally:  # the receive loop waits for it
                if not done.done():
                    done.set_result(None)

    async def _send_loop(self, ws, out: asyncio.Queue) -> None:
        # index, cursor: the next chunk's index and first frame on the stream's timeline. A lost
        # chunk keeps its place (its index and frames), so the next chunk's first_frame stays on its
        # audio (the demo page plays the PCM of [first_frame, first_frame + frames) with it).
        fps = self.streaming.fps
        index = cursor = 0
        while (item := await out.get()) is not None:
            if item[0] == "video":
                try:
                    frames = await item[1] if isinstance(item[1], asyncio.Future) else item[1]
                except Exception as exc:  # the round failed (logged by the scheduler); say so, go on
                    await ws.send(json.dumps({"type": "error", "message": f"chunk {index} failed: {exc}"}))
                    index += 1
                    cursor += item[2]
                    continue
                try:
                    data = await self.encoder.encode(frames, fps)
                except Exception as exc:  # e.g. the encoding pool broke twice: this chunk is lost
                    logger.exception("MP4 encoding of a chunk failed")
                    await ws.send(json.dumps({"type": "error", "message": f"chunk {index} could not be encoded: {exc}"}))
                    index += 1
                    cursor += int(frames.shape[0])
                    continue
                await ws.send(json.dumps({"type": "video", "index": index, "first_frame": cursor,
                                          "frames": int(frames.shape[0])}))
                await ws.send(data)
                index += 1
                cursor += int(frames.shape[0])
            elif item[0] == "restart":
                index = cursor = 0
            elif item[0] == "flushed":  # every chunk before the flush is sent: the timeline's length
                await ws.send(json.dumps({"type": "flushed", "frames_total": cursor}))
            else:
                await ws.send(json.dumps(item[1]))


def _b64(value) -> bytes:
    if not isinstance(value, str):
        raise ValueError("reference needs 'image': base64 PNG/JPEG bytes")
    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("reference 'image' is not valid base64") from None


def split_warm_up(sizes: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The batch sizes to warm before the port opens and those to warm once it is open
    (``serve --warm-up-in-background``): the first size given (the largest by default, where the
    compile happens) and the smallest (a session alone, the common case while sessions trickle in)
    first; the others after.

    Returns:
        ``(before, after)``, each in the given order.
    """
    if len(sizes) <= 2:
        return sizes, ()
    before = (sizes[0], min(sizes[1:]))
    rest = list(sizes[1:])
    rest.remove(before[1])
    return before, tuple(rest)


async def warm_up_when_idle(server: FlashHeadServer, sizes: tuple[int, ...], after: Callable[[], None] | None,
                             poll_s: float = 0.25) -> None:
    """Warm ``sizes`` one at a time on the model thread, each only while no session is open (a
    session that connects meanwhile waits for at most the size being warmed), then call ``after``."""
    for size in sizes:
        while server.active_sessions:
            await asyncio.sleep(poll_s)
        try:
            await asyncio.to_thread(server.warm_up, (size,))
        except Exception as exc:  # the server goes on: that size will record (or compile) when first served
            logger.warning("warm-up in the background stopped at batch %d: %s: %s", size, type(exc).__name__, exc)
            return
        logger.info("warm-up in the background: batch %d ready", size)
    logger.info("warm-up: seconds per round %s (chunk %.2f s)", server.scheduler.cost.medians(), server.chunk_seconds)
    if after is not None:
        await asyncio.to_thread(after)


async def serve_forever(
    models: FlashHeadModels, reference_image: np.ndarray, host: str, port: int,
    streaming: StreamingConfig | None = None, seed: int = 42, batching: BatchingConfig | None = None,
    admission: AdmissionConfig | None = None, warm_up: tuple[int, ...] = (),
    after_warm_up: Callable[[], None] | None = None, encode_workers: int = 0,
    warm_up_in_background: bool = False,
) -> None:
    """Run the server until cancelled (``streaming``, ``seed``, ``batching``, ``admission``,
    ``encode_workers``: see
    :class:`FlashHeadServer`; ``warm_up``: batch sizes measured before the port opens, see
    :meth:`FlashHeadServer.warm_up`; ``after_warm_up``: called once after it, before the port opens,
    e.g. to save the compile artifacts).

    With ``warm_up_in_background``, only the sizes :func:`split_warm_up` puts first are warmed
    before the port opens; the rest warm while no session is open, and ``after_warm_up`` runs after
    them. Meant for models compiled for any batch size (``--dynamic-batch``), where a size not yet
    warm costs its CUDA-graph recording when first served, not a compile."""
    server = FlashHeadServer(models, reference_image, seed=seed, streaming=streaming, batching=batching,
                             admission=admission, encode_workers=encode_workers)
    before, later = split_warm_up(warm_up) if warm_up_in_background else (warm_up, ())
    background: asyncio.Task | None = None
    try:
        if before:
            logger.info("warm-up at batch sizes %s%s", before, f" (then {later} while idle)" if later else "")
            medians = await asyncio.to_thread(server.warm_up, before)
            logger.info("warm-up: seconds per round %s (chunk %.2f s)", medians, server.chunk_seconds)
        if later:
            background = asyncio.create_task(warm_up_when_idle(server, later, after_warm_up))
        elif after_warm_up is not None:
            await asyncio.to_thread(after_warm_up)
        await server.encoder.start()
        async with server.listen(host, port) as ws_server:
            logger.info("serving on ws://%s:%d (demo page: http://%s:%d/)", host, port, host, port)
            await ws_server.serve_forever()
    finally:
        if background is not None:
            background.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await background
        server.close()

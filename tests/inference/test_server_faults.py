"""The WebSocket server under faults: a client that leaves with chunks queued, a failing model-thread
call, a failing MP4 encode and hostile messages cost that client an error (or its own session), never
the model thread, another session or a slot of admission (real loopback clients, tiny random models)."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import struct
import threading
import zlib

import numpy as np
import pytest
from PIL import Image
from server_scenario import run_scenario
from tiny_models import TINY_PRO

from vividhead.inference.server import AdmissionConfig, FlashHeadServer

SPC = TINY_PRO.streaming.samples_per_chunk


async def _recv_json(ws, timeout: float = 20) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), timeout))


async def _until(predicate, timeout: float) -> bool:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


def _png(size=(30, 50)) -> str:
    buf = io.BytesIO()
    Image.fromarray((np.random.RandomState(3).rand(*size, 3) * 255).astype(np.uint8)).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG file that declares ``width x height`` grey pixels (its data is a few bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_client_leaving_with_chunks_queued_frees_its_slot_and_its_chunks(tiny_pro_fast_vae, ref_image, speech):
    """A client sends three chunks while the model thread is busy, then closes: its session leaves
    admission at once (not after its first chunk is generated and encoded for nobody), a new client
    is admitted at ``max_sessions=1``, and none of the three chunks is generated."""
    from websockets.asyncio.client import connect

    server = FlashHeadServer(tiny_pro_fast_vae, ref_image, admission=AdmissionConfig(max_sessions=1))

    async def scenario(port):
        started, gate = threading.Event(), threading.Event()
        try:
            async with connect(f"ws://127.0.0.1:{port}") as ws:
                assert (await _recv_json(ws))["type"] == "ready"
                blocker = server.scheduler.call(lambda: (started.set(), gate.wait(60)))
                assert await asyncio.to_thread(started.wait, 30)
                await ws.send(speech[: 3 * SPC].astype("<i2").tobytes())
                assert await _until(lambda: server.scheduler.waiting() == 3, 30)
            freed = await _until(lambda: server.active_sessions == 0, 5)  # the model thread still busy
            async with connect(f"ws://127.0.0.1:{port}") as ws:
                gate.set()  # the new session is built on the model thread
                admitted = (await _recv_json(ws))["type"]
        finally:
            gate.set()
        await asyncio.wrap_future(blocker)
        assert await _until(lambda: server.scheduler.waiting() == 0, 30)
        for _ in range(2):  # the worker went round its loop: a round it took is over
            await asyncio.wrap_future(server.scheduler.call(lambda: None))
        return freed, admitted, server.scheduler.rounds

    freed, admitted, rounds = run_scenario(server, scenario, timeout=60)
    assert freed and admitted == "ready"
    assert rounds == 0


def test_failing_model_thread_call_is_an_error_not_a_hung_session(tiny_pro_fast_vae, ref_image, speech, monkeypatch):
    """A reference upload whose session cannot be built on the model thread (e.g. out of device
    memory, a RuntimeError) answers an error; the session keeps its old reference and streams on."""
    from websockets.asyncio.client import connect

    server = FlashHeadServer(tiny_pro_fast_vae, ref_image)
    real = server._new_session

    def new_session(image):
        if image is not ref_image:
            raise RuntimeError("CUDA out of memory")
        return real(image)

    monkeypatch.setattr(server, "_new_session", new_session)

    async def scenario(port):
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            assert (await _recv_json(ws))["type"] == "ready"
            await ws.send(json.dumps({"type": "reference", "image": _png()}))
            err = await _recv_json(ws)
            await ws.send(speech[:SPC].astype("<i2").tobytes())
            meta = await _recv_json(ws, 60)
            await ws.recv()
            return err, meta

    err, meta = run_scenario(server, scenario, timeout=60)
    assert err["type"] == "error" and "out of memory" in err["message"], err
    assert (meta["type"], meta["index"], meta["frames"]) == ("video", 0, 28)
    assert server.active_sessions == 0


def test_failing_encode_is_an_error_for_that_chunk(tiny_pro_fast_vae, ref_image, speech, monkeypatch):
    """An MP4 encode that fails (e.g. the encoding pool broke twice) answers an error for that chunk;
    the next chunk still arrives, with its index and first frame on the stream's timeline."""
    from websockets.asyncio.client import connect

    server = FlashHeadServer(tiny_pro_fast_vae, ref_image)
    real, calls = server.encoder.encode, []

    async def encode(frames, fps):
        calls.append(frames.shape[0])
        if len(calls) == 1:
            raise RuntimeError("encoder broke")
        return await real(frames, fps)

    monkeypatch.setattr(server.encoder, "encode", encode)

    async def scenario(port):
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            assert (await _recv_json(ws))["type"] == "ready"
            await ws.send(speech[: 2 * SPC].astype("<i2").tobytes())
            err = await _recv_json(ws, 60)
            meta = await _recv_json(ws, 60)
            data = await ws.recv()
            return err, meta, data

    err, meta, data = run_scenario(server, scenario, timeout=60)
    assert err["type"] == "error" and "chunk 0" in err["message"] and "encoder broke" in err["message"], err
    assert (meta["type"], meta["index"], meta["first_frame"], meta["frames"]) == ("video", 1, 28, 28)
    assert isinstance(data, bytes) and len(data) > 0


def test_failed_round_consumes_its_chunk_index(tiny_pro_fast_vae, ref_image, speech, monkeypatch):
    """A round that raises for a chunk (e.g. out of device memory) answers an error naming that
    chunk; the stream goes on past it: the next chunk arrives with the next index and its first
    frame on the stream's timeline (its audio's frames), and the flush counts the lost chunk's
    frames in ``frames_total``."""
    from websockets.asyncio.client import connect

    from vividhead.inference import batching

    server = FlashHeadServer(tiny_pro_fast_vae, ref_image)
    real, calls = batching._run_group, []

    def run_group(jobs, cfg):
        calls.append([j.index for j in jobs])
        if len(calls) == 1:
            raise RuntimeError("CUDA out of memory")
        return real(jobs, cfg)

    monkeypatch.setattr(batching, "_run_group", run_group)

    async def scenario(port):
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            assert (await _recv_json(ws))["type"] == "ready"
            await ws.send(speech[: 2 * SPC + 2 * 640].astype("<i2").tobytes())  # two chunks and 2 frames
            err = await _recv_json(ws, 60)
            meta = await _recv_json(ws, 60)
            await ws.recv()
            await ws.send(json.dumps({"type": "flush"}))
            tail = await _recv_json(ws, 60)
            await ws.recv()
            return err, meta, tail, await _recv_json(ws, 60)

    err, meta, tail, flushed = run_scenario(server, scenario, timeout=60)
    assert err["type"] == "error" and "chunk 0 failed" in err["message"] and "out of memory" in err["message"], err
    assert (meta["type"], meta["index"], meta["first_frame"], meta["frames"]) == ("video", 1, 28, 28)
    assert (tail["type"], tail["index"], tail["first_frame"], tail["frames"]) == ("video", 2, 56, 2)
    assert flushed == {"type": "flushed", "frames_total": 58}
    assert calls == [[0], [1], [2]]


def test_hostile_messages_answer_an_error_and_keep_the_session(tiny_pro_fast_vae, ref_image):
    """JSON nested too deep to parse and a PNG that declares 200 megapixels (a decompression bomb)
    each answer an error; the session stays open and serves the next request."""
    from websockets.asyncio.client import connect

    server = FlashHeadServer(tiny_pro_fast_vae, ref_image)
    bomb = base64.b64encode(_png_header_only(20000, 10000)).decode()

    async def scenario(port):
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            assert (await _recv_json(ws))["type"] == "ready"
            answers = []
            for message in ["[" * 200_000, json.dumps({"type": "reference", "image": bomb})]:
                await ws.send(message)
                answers.append(await _recv_json(ws))
            await ws.send(json.dumps({"type": "reset"}))
            answers.append(await _recv_json(ws))
            return answers

    nested, bomb_err, reset = run_scenario(server, scenario, timeout=60)
    assert nested["type"] == "error" and "nested" in nested["message"], nested
    assert bomb_err["type"] == "error" and "pixels" in bomb_err["message"], bomb_err
    assert reset == {"type": "reset", "frames_total": 0}


def test_client_dropping_the_connection_is_not_a_server_error(tiny_pro_fast_vae, ref_image, speech, caplog):
    """A client whose TCP connection drops mid-stream (no close frame: a network loss, a killed
    browser) ends its session quietly: no "connection handler failed" traceback, the slot freed."""
    import logging

    from websockets.asyncio.client import connect

    server = FlashHeadServer(tiny_pro_fast_vae, ref_image)

    async def scenario(port):
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            assert (await _recv_json(ws))["type"] == "ready"
            await ws.send(speech[: 2 * SPC].astype("<i2").tobytes())
            await _recv_json(ws, 60)  # the first chunk's header: the session is streaming
            ws.transport.abort()
        return await _until(lambda: server.active_sessions == 0, 20)

    with caplog.at_level(logging.INFO):
        assert run_scenario(server, scenario, timeout=60)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_reference_image_over_the_pixel_limit_is_refused_from_its_header():
    """A 30 MP PNG (under PIL's own bomb limits) is refused before any pixel is decoded."""
    from vividhead.inference.server import MAX_IMAGE_PIXELS, decode_image

    assert 6000 * 5000 > MAX_IMAGE_PIXELS
    with pytest.raises(ValueError, match=r"6000x5000 pixels: at most 24 megapixels"):
        decode_image(_png_header_only(6000, 5000))


def test_session_that_cannot_start_is_an_error_message_then_a_close(tiny_pro_fast_vae, ref_image, monkeypatch):
    """Building a connection's first session fails on the model thread (e.g. out of device memory):
    the client gets the reason as an ``error`` message, then a 1011 close; the slot is free again."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    server = FlashHeadServer(tiny_pro_fast_vae, ref_image)

    def new_session(image):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(server, "_new_session", new_session)

    async def scenario(port):
        async with connect(f"ws://127.0.0.1:{port}") as ws:
            err = await _recv_json(ws)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 20)
            return err, ws.close_code, await _until(lambda: server.active_sessions == 0, 5)

    err, code, freed = run_scenario(server, scenario, timeout=60)
    assert err["type"] == "error" and err["reason"] == "session_failed", err
    assert "CUDA out of memory" in err["message"]
    assert code == 1011 and freed

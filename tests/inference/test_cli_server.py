"""End-to-end tests: ``vividhead infer`` on fixture media (a tiny random-weight export folder) and
the WebSocket server with a real loopback client (tiny random-weight models)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path

import pytest
import soundfile as sf
import typer
from tiny_models import TINY_LITE, write_tiny_export
from typer.testing import CliRunner

from vividhead.inference.batching import BatchingConfig
from vividhead.inference.cli import ModelOptions, default_warm_up, register, serves_exact_sizes
from vividhead.inference.server import FlashHeadServer
from vividhead.media import count_video_frames

FIXTURES = Path(os.environ.get("VIVIDHEAD_FIXTURES", Path(__file__).resolve().parents[3] / "shared" / "fixtures"))


def test_register_adds_commands():
    app = typer.Typer()
    register(app)
    names = {c.name for c in app.registered_commands}
    assert {"infer", "serve"} <= names


def test_infer_cli_writes_aligned_mp4(tmp_path):
    image = FIXTURES / "media" / "image" / "face_frontal_happy_256.png"
    speech = FIXTURES / "media" / "audio" / "speech_retalking1_44k.wav"
    if not image.exists() or not speech.exists():
        pytest.skip("shared fixtures missing")
    # 1.3 s excerpt of real 44.1 kHz speech: exercises resampling and a partial last chunk
    data, sr = sf.read(str(speech), dtype="float32", always_2d=True)
    clip = tmp_path / "clip.wav"
    sf.write(str(clip), data[: int(1.3 * sr)], sr)
    out = tmp_path / "out.mp4"
    export = write_tiny_export(tmp_path / "export", TINY_LITE)
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, [
        "infer", "--image", str(image), "--audio", str(clip), "--out", str(out),
        "--checkpoint", str(export), "--device", "cpu", "--dtype", "fp32",
    ])
    assert result.exit_code == 0, result.output
    n_samples = int(1.3 * sr) * 16000 // sr  # what resample_poly returns (within one sample)
    expected = -(-n_samples // 640)
    assert abs(count_video_frames(out) - expected) <= 1
    import av

    with av.open(str(out)) as c:
        assert len(c.streams.audio) == 1 and c.streams.video[0].width == 64


def test_infer_cli_requires_weights(tmp_path):
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["infer", "--image", "x.png", "--audio", "y.wav", "--out", str(tmp_path / "o.mp4"),
                                      "--device", "cpu"])
    assert result.exit_code != 0


def test_serve_refuses_negative_encode_workers_before_loading(tmp_path):
    """A bad --encode-workers is refused before the image is read or any weights load."""
    app = typer.Typer()
    register(app)
    result = CliRunner().invoke(app, ["serve", "--image", str(tmp_path / "missing.png"), "--encode-workers", "-1",
                                      "--device", "cpu", "--random-weights"])
    assert result.exit_code == 2 and "--encode-workers" in result.output, result.output


def test_serve_default_warm_up_sizes():
    """The sizes ``serve`` warms up unasked: with a dynamic-batch compile and exact sizes, every
    size a round can take (each records its CUDA graphs before the first session, not during it)."""
    assert default_warm_up(BatchingConfig(max_batch=4), "cuda", dynamic_batch=True) == (4, 3, 2, 1)  # 1 last
    assert default_warm_up(BatchingConfig(max_batch=4), "cuda", dynamic_batch=False) == (1,)
    assert default_warm_up(BatchingConfig(batch_buckets=(4, 16)), "cuda", dynamic_batch=True) == (1, 4, 16)
    assert default_warm_up(BatchingConfig(max_batch=4), "cpu", dynamic_batch=True) == ()


def test_serve_runs_exact_sizes_by_default_on_the_gpu_fast_path(tmp_path):
    """``serve`` turns ``--dynamic-batch`` on (rounds of exactly the chunks waiting) for Lite (the LTX
    VAE) on the GPU fast path unless buckets are given, a round holds one session, or the model runs
    eager or on the CPU; Pro (the Wan VAE, one static graph per batch size) keeps its default."""
    gpu, cpu = ModelOptions(variant="lite", device="cuda"), ModelOptions(variant="lite", device="cpu")
    assert serves_exact_sizes(gpu, BatchingConfig(max_batch=16))
    assert not serves_exact_sizes(gpu, BatchingConfig(batch_buckets=(1, 16)))
    assert not serves_exact_sizes(gpu, BatchingConfig(max_batch=1))
    assert not serves_exact_sizes(dataclasses.replace(gpu, fast_path=False), BatchingConfig(max_batch=16))
    assert not serves_exact_sizes(cpu, BatchingConfig(max_batch=16))
    assert serves_exact_sizes(dataclasses.replace(gpu, device="cuda:1"), BatchingConfig(max_batch=16))
    assert not serves_exact_sizes(ModelOptions(variant="pro", device="cuda"), BatchingConfig(max_batch=16))
    export = str(write_tiny_export(tmp_path / "lite", TINY_LITE))  # an export's metadata names its VAE
    assert serves_exact_sizes(ModelOptions(checkpoint=export, device="cuda"), BatchingConfig(max_batch=16))


def test_websocket_server_loopback(tiny_pro_fast_vae, ref_image, speech):
    """A real websockets client on loopback: PCM in, MP4 chunks out, errors for bad messages,
    flush and reset, and a second concurrent connection with its own session."""
    from websockets.asyncio.client import connect

    server = FlashHeadServer(tiny_pro_fast_vae, ref_image)
    pcm = speech[: 17920 + 1000].astype("<i2")

    async def recv_video(ws):
        meta = json.loads(await ws.recv())
        assert meta["type"] == "video", meta
        data = await ws.recv()
        assert isinstance(data, bytes)
        return meta, data

    async def scenario():
        async with server.listen("127.0.0.1", 0) as srv:
            port = srv.sockets[0].getsockname()[1]
            async with connect(f"ws://127.0.0.1:{port}") as ws, connect(f"ws://127.0.0.1:{port}") as other:
                ready = json.loads(await ws.recv())
                assert ready["type"] == "ready" and ready["samples_per_chunk"] == 17920
                # the client offers per-message deflate; the server declines it (MP4 does not deflate)
                assert "Sec-WebSocket-Extensions" not in ws.response.headers
                assert json.loads(await other.recv())["type"] == "ready"

                # bad messages: answered with errors, session survives
                await ws.send(b"\x01\x02\x03")
                assert json.loads(await ws.recv())["type"] == "error"
                await ws.send("{not json")
                assert json.loads(await ws.recv())["type"] == "error"
                await ws.send(json.dumps({"type": "dance"}))
                err = json.loads(await ws.recv())
                assert err["type"] == "error" and "dance" in err["message"]

                # one chunk in two pieces, plus a tail
                await ws.send(pcm[:9000].tobytes())
                await ws.send(pcm[9000:].tobytes())
                meta, data = await recv_video(ws)
                assert (meta["index"], meta["first_frame"], meta["frames"]) == (0, 0, 28)
                assert count_video_frames(data) == 28

                await ws.send(json.dumps({"type": "flush"}))
                meta, data = await recv_video(ws)
                assert (meta["first_frame"], meta["frames"]) == (28, 2) and count_video_frames(data) == 2
                done = json.loads(await ws.recv())
                assert done == {"type": "flushed", "frames_total": 30}

                # the other connection has its own session state
                await other.send(json.dumps({"type": "flush"}))
                assert json.loads(await other.recv()) == {"type": "flushed", "frames_total": 0}

                await ws.send(json.dumps({"type": "reset"}))
                assert json.loads(await ws.recv())["type"] == "reset"

    asyncio.run(asyncio.wait_for(scenario(), timeout=300))


def test_split_warm_up_puts_the_first_and_the_smallest_size_first():
    from vividhead.inference.server import split_warm_up

    assert split_warm_up(tuple(range(16, 0, -1))) == ((16, 1), tuple(range(15, 1, -1)))
    assert split_warm_up((4, 1, 2)) == ((4, 1), (2,))
    assert split_warm_up((2, 1)) == ((2, 1), ())
    assert split_warm_up((1,)) == ((1,), ())
    assert split_warm_up(()) == ((), ())


def test_serve_warms_the_other_sizes_in_the_background_while_idle(tiny_pro_fast_vae, ref_image, monkeypatch):
    """``serve --warm-up-in-background``: the port opens after the first and the smallest sizes;
    the others warm (real rounds, measured into the cost model) only while no session is open,
    and the compile artifacts are saved after them."""
    from vividhead.inference import server as server_mod

    events: list = []
    servers: list = []
    real_warm_up, real_listen = FlashHeadServer.warm_up, FlashHeadServer.listen

    def warm_up(self, sizes, rounds=2):
        servers.append(self)
        events.append(("warm", tuple(sizes), self.active_sessions))
        return real_warm_up(self, sizes, rounds)

    def listen(self, host, port, compression=None):
        events.append("listen")
        self.sessions.change(+1)  # a session opens as the port does: the background warm-up must wait
        return real_listen(self, host, port, compression)

    monkeypatch.setattr(FlashHeadServer, "warm_up", warm_up)
    monkeypatch.setattr(FlashHeadServer, "listen", listen)

    async def scenario():
        task = asyncio.create_task(server_mod.serve_forever(
            tiny_pro_fast_vae, ref_image, "127.0.0.1", 0, warm_up=(3, 2, 1),
            after_warm_up=lambda: events.append("after"), warm_up_in_background=True))
        while "listen" not in events:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.6)  # a session is open: nothing more warms up
        assert events == [("warm", (3, 1), 0), "listen"]
        servers[0].sessions.change(-1)  # it leaves: size 2 warms, then the artifacts are saved
        for _ in range(600):
            if "after" in events:
                break
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert events == [("warm", (3, 1), 0), "listen", ("warm", (2,), 0), "after"]
    assert set(servers[0].scheduler.cost.medians()) == {1, 2, 3}

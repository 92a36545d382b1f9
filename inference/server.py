"""Live WebSocket server: PCM in, encoded video chunks out, one :class:`StreamingSession` per connection.

Protocol (JSON text frames for control, binary frames for data):

* server -> client on connect: ``{"type": "ready", "sample_rate": 16000, "fps": 25, "format": "s16le",
  "samples_per_chunk": 17920, "width": 512, "height": 512, "codec": "h264/mp4"}``
* client -> server, binary: mono s16le PCM at ``sample_rate``, any length (even byte count).
* server -> client per decoded chunk: ``{"type": "video", "index": i, "first_frame": k, "frames": n}``
  then one binary frame holding a standalone H.264 MP4 of those ``n`` frames.
* client -> server, text: ``{"type": "flush"}`` (pad the tail with silence, emit the frames it covers,
  answer ``{"type": "flushed", "frames_total": ...}``) or ``{"type": "reset"}`` (cold start again).
* anything else (bad JSON, unknown type, odd byte count) -> ``{"type": "error", "message": ...}``;
  the session stays open.

Generation runs in a worker thread so the event loop keeps serving other connections; one lock
serialises use of the shared models (one GPU).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import numpy as np

from vividhead.inference.media import encode_mp4_bytes
from vividhead.inference.pipeline import FlashHeadModels, StreamingSession
from vividhead.training.models.configs import StreamingConfig

logger = logging.getLogger(__name__)


class FlashHeadServer:
    """Holds the shared models and reference image; :meth:`handler` serves one connection.

    Args:
        models: shared weights.
        reference_image: uint8 ``[H, W, 3]``.
        seed: noise seed of every session.
        streaming: chunk geometry of every session (default: the variant's), e.g. with ``fast_start``.
    """

    def __init__(
        self, models: FlashHeadModels, reference_image: np.ndarray, seed: int = 42,
        streaming: StreamingConfig | None = None,
    ) -> None:
        self.models = models
        self.reference_image = reference_image
        self.seed = seed
        self.streaming = streaming or models.variant.streaming
        self._lock = threading.Lock()

    def _run(self, fn, *args):
        with self._lock:
            return fn(*args)

    async def handler(self, ws) -> None:
        """Serve one WebSocket connection until it closes."""
        cfg = self.streaming
        session = await asyncio.to_thread(
            self._run,
            lambda: StreamingSession(self.models, self.reference_image, seed=self.seed, streaming=cfg),
        )
        await ws.send(json.dumps({
            "type": "ready", "sample_rate": cfg.sample_rate_hz, "fps": cfg.fps, "format": "s16le",
            "samples_per_chunk": cfg.samples_per_chunk, "width": cfg.width_px, "height": cfg.height_px,
            "codec": "h264/mp4",
        }))
        index = cursor = 0
        async for message in ws:
            try:
                if isinstance(message, (bytes, bytearray)):
                    chunks = await asyncio.to_thread(self._run, lambda m=message: list(session.feed(bytes(m))))
                    reply = None
                else:
                    msg = json.loads(message)
                    kind = msg.get("type") if isinstance(msg, dict) else None
                    if kind == "flush":
                        chunks = await asyncio.to_thread(self._run, lambda: list(session.flush()))
                        reply = "flushed"
                    elif kind == "reset":
                        await asyncio.to_thread(self._run, session.reset)
                        chunks, reply, index, cursor = [], "reset", 0, 0
                    else:
                        raise ValueError(f"unknown message type {kind!r}")
            except (ValueError, json.JSONDecodeError) as exc:
                await ws.send(json.dumps({"type": "error", "message": str(exc)}))
                continue
            for frames in chunks:
                data = await asyncio.to_thread(encode_mp4_bytes, frames, cfg.fps)
                await ws.send(json.dumps({"type": "video", "index": index, "first_frame": cursor,
                                          "frames": int(frames.shape[0])}))
                await ws.send(data)
                index += 1
                cursor += int(frames.shape[0])
            if reply:
                await ws.send(json.dumps({"type": reply, "frames_total": session.frames_emitted}))


async def serve_forever(
    models: FlashHeadModels, reference_image: np.ndarray, host: str, port: int,
    streaming: StreamingConfig | None = None, seed: int = 42,
) -> None:
    """Run the server until cancelled (``streaming``, ``seed``: see :class:`FlashHeadServer`)."""
    from websockets.asyncio.server import serve

    server = FlashHeadServer(models, reference_image, seed=seed, streaming=streaming)
    async with serve(server.handler, host, port, max_size=2**24) as ws_server:
        logger.info("serving on ws://%s:%d", host, port)
        await ws_server.serve_forever()

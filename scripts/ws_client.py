"""Stream a speech file to a running ``vividhead serve`` and save the MP4 chunks it sends back.

    .venv/bin/python scripts/ws_client.py ws://127.0.0.1:8765 --audio speech.wav --out chunks/

One WebSocket session as docs/inference.md describes the protocol: wait for ``ready``, send the
audio as s16le 16 kHz mono PCM (any input rate and format; librosa resamples), ``flush``, and write
each ``video`` chunk to ``OUT/chunk_00000.mp4``, ... until ``flushed``. Connecting is retried
for ``--wait-s`` seconds, so the script can start right after the server. Exit code 0 when the
server flushed, 1 on an ``error`` message or a timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path


async def session(url: str, audio: Path, out: Path, wait_s: float, timeout_s: float) -> int:
    import librosa
    import numpy as np
    from websockets.asyncio.client import connect

    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            ws = await connect(url, max_size=None)
            break
        except OSError:
            if time.monotonic() > deadline:
                print(f"error: no server at {url} after {wait_s:.0f} s", file=sys.stderr)
                return 1
            await asyncio.sleep(0.5)
    async with ws:
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            print(f"error: server refused the session: {ready}", file=sys.stderr)
            return 1
        wav, _ = librosa.load(str(audio), sr=ready["sample_rate"], mono=True)
        pcm = (np.clip(wav, -1.0, 1.0) * 32767).astype("<i2")
        step = ready["sample_rate"]  # one second per message, as a live client would send it
        for i in range(0, len(pcm), step):
            await ws.send(pcm[i:i + step].tobytes())
        await ws.send(json.dumps({"type": "flush"}))
        chunks = frames = 0
        while True:
            msg = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
            if msg["type"] == "video":
                data = await asyncio.wait_for(ws.recv(), timeout_s)
                (out / f"chunk_{msg['index']:05d}.mp4").write_bytes(data)
                chunks, frames = chunks + 1, frames + msg["frames"]
            elif msg["type"] == "flushed":
                print(f"{chunks} chunks, {frames} frames ({msg['frames_total']} in the session) in {out}")
                return 0
            elif msg["type"] == "error":
                print(f"error: {msg.get('message', msg)}", file=sys.stderr)
                return 1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="ws://HOST:PORT of a running `vividhead serve`")
    p.add_argument("--audio", type=Path, required=True, help="speech file (any rate; WAV, FLAC, MP3)")
    p.add_argument("--out", type=Path, required=True, help="folder for the MP4 chunks")
    p.add_argument("--wait-s", type=float, default=300.0, help="how long to retry connecting")
    p.add_argument("--timeout-s", type=float, default=300.0, help="longest wait for one message")
    args = p.parse_args()
    sys.exit(asyncio.run(session(args.url, args.audio, args.out, args.wait_s, args.timeout_s)))


if __name__ == "__main__":
    main()

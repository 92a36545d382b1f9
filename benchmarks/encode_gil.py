"""What the server's MP4 encoding costs a launch-bound model thread: in threads of the serving
process (``ChunkEncoder(0)``, the default) against worker processes (``ChunkEncoder(K)``).

A served round spends much of its host time launching kernels: a short stretch of Python and the
dispatcher with the GIL held, then a release inside each op. This stands in for it with many tiny
in-place torch ops on the CPU, timed alone, then while K sessions' worth of chunks are encoded
without pause in threads, then in K processes. The encoders use the same CPU in both cases, so the
threads/processes ratio isolates the GIL. Chunks: 24 frames at 512x512 of a fixture portrait, shifted
per frame (face-like, about 60 KiB each) or noise (what random weights give, about 3 MB).

    python benchmarks/encode_gil.py --streams 4 --content image
    python benchmarks/encode_gil.py --streams 4 --content noise --ops 40000

Prints JSON: seconds for the ops alone, with thread encoders, with process encoders, the ratios,
and the encodes each side finished.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from pathlib import Path

import numpy as np
import torch
from serve_load import FIXTURE_AUDIO, replay_frames  # this folder is on sys.path when run as a script

from vividhead.inference.chunk_encoder import ChunkEncoder

FIXTURE_IMAGE = FIXTURE_AUDIO.parents[1] / "image" / "face_frontal_people0.png"


def launch_bound(ops: int) -> float:
    """Seconds for ``ops`` tiny in-place torch ops (each: dispatch with the GIL, release inside)."""
    x = torch.zeros(16)
    t = time.perf_counter()
    for _ in range(ops):
        x.add_(1.0)
    return time.perf_counter() - t


def with_encoders(workers: int, streams: int, frames: np.ndarray, ops: int) -> tuple[float, int]:
    """``launch_bound(ops)`` while ``streams`` loops encode ``frames`` without pause (threads when
    ``workers`` is 0, else that many processes); returns its seconds and the encodes finished."""
    enc = ChunkEncoder(workers)
    done, stop = [0], threading.Event()
    started = threading.Event()

    async def encode_forever():
        await enc.start()
        started.set()

        async def one():
            while not stop.is_set():
                await enc.encode(frames, 25)
                done[0] += 1

        await asyncio.gather(*(one() for _ in range(streams)))

    loop_thread = threading.Thread(target=lambda: asyncio.run(encode_forever()))
    loop_thread.start()
    started.wait()
    time.sleep(0.5)  # every encoder busy
    n0 = done[0]
    try:
        seconds = launch_bound(ops)
    finally:
        n = done[0] - n0
        stop.set()
        loop_thread.join()
        enc.close()
    return seconds, n


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=4, help="concurrent encoders (sessions)")
    p.add_argument("--content", choices=["image", "noise"], default="image")
    p.add_argument("--ops", type=int, default=40000, help="tiny torch ops of the stand-in model thread")
    p.add_argument("--repeats", type=int, default=2, help="alternating repeats; the median is kept")
    p.add_argument("--image", type=Path, default=FIXTURE_IMAGE)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    frames = replay_frames(args.content, args.image, 512, 24)
    launch_bound(args.ops // 10)  # warm
    alone, threads, procs = [], [], []
    for _ in range(args.repeats):
        alone.append(launch_bound(args.ops))
        threads.append(with_encoders(0, args.streams, frames, args.ops))
        procs.append(with_encoders(args.streams, args.streams, frames, args.ops))
    med = lambda xs: float(np.median(xs))  # noqa: E731
    out = {
        "streams": args.streams, "content": args.content, "ops": args.ops, "repeats": args.repeats,
        "alone_s": med(alone), "thread_encoders_s": med([s for s, _ in threads]),
        "process_encoders_s": med([s for s, _ in procs]),
        "encodes_during_threads": [n for _, n in threads], "encodes_during_processes": [n for _, n in procs],
    }
    out["threads_over_alone"] = out["thread_encoders_s"] / out["alone_s"]
    out["processes_over_alone"] = out["process_encoders_s"] / out["alone_s"]
    out["threads_over_processes"] = out["thread_encoders_s"] / out["process_encoders_s"]
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()

"""MP4 encoding of streamed chunks: in threads of the serving process, or in worker processes off its GIL.

The server's event loop, its batch scheduler's thread and the encoders all need the one GIL of the
serving process. PyAV's H.264 encode releases it inside libx264 but takes it back for every frame's
conversion and every muxed packet, and a thread that gets the GIL back only after the switch
interval (5 ms) behind a busy thread crawls: on the development machine, one pure-Python thread
beside an encode made a 512x512x24 chunk of noise take 0.61 s instead of 0.29 s, and 0.45 s with a
0.2 ms switch interval (so much of the loss is GIL hand-over, not CPU). Worker processes have their
own GIL; the frames reach them through reused shared-memory blocks (one 18.9 MB copy per Lite
chunk; pickled, they cost 18.6 ms of the serving process's CPU per chunk on the development
machine, against 42 ms for the whole encode of a face-like chunk in a thread). Workers pay where
the serving process's GIL is the bottleneck and cores are spare: on one H100 with 16 cores a round of
16 Lite sessions took 1.71 s while serving with encoding threads and 0.93 s with 8 encoding
processes (0.92 s in the warm-up); on a 2-core CPU machine they made a replay worse. So ``serve``
picks them by default on a GPU host with cores to spare (:func:`default_encode_workers`); compare
both with ``benchmarks/serve_load.py --encode-workers`` and ``benchmarks/encode_gil.py``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import multiprocessing
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import shared_memory

import numpy as np

from vividhead.media import encode_mp4_bytes

logger = logging.getLogger(__name__)


def _encode_shared(name: str, shape: tuple[int, ...], fps: int) -> bytes:
    """Worker side: encode the uint8 frames in shared memory block ``name``."""
    block = shared_memory.SharedMemory(name=name)
    try:
        frames = np.ndarray(shape, dtype=np.uint8, buffer=block.buf)
        data = encode_mp4_bytes(frames, fps)
        del frames  # the view must go before the block closes
        return data
    finally:
        block.close()


def default_encode_workers(device_type: str, cpu_count: int | None) -> int:
    """Encoding processes ``serve`` starts when ``--encode-workers`` is not given: none (threads) when
    the model runs on the CPU (it needs the cores) or the host has fewer than 8 cores; else half the
    cores, at most 8 (measured on one H100 with 16 cores: 8 processes kept a round of 16 Lite
    sessions at its warm-up time, docs/benchmarks.md "Concurrent streams, part 4").

    Args:
        device_type: the model's device, ``"cuda"`` or ``"cpu"``.
        cpu_count: the host's cores (``os.cpu_count()``; ``None``: unknown, taken as 1).
    """
    cores = cpu_count or 1
    if device_type != "cuda" or cores < 8:
        return 0
    return min(8, cores // 2)


class ChunkEncoder:
    """Encodes uint8 ``[N, H, W, 3]`` RGB frames to standalone H.264 MP4 bytes
    (:func:`vividhead.media.encode_mp4_bytes`) in this process's default thread pool (``workers=0``,
    the default) or in ``workers`` spawned processes (a program that starts the server must then
    guard its entry point with ``if __name__ == "__main__":``, as spawned processes import it).

    A worker that dies (killed, out of memory) breaks the pool; the next encode starts a new pool
    and retries once, so one lost worker costs one chunk's delay, not the session.

    Args:
        workers: worker processes (0: threads of this process).

    Raises:
        ValueError: ``workers < 0``.
    """

    def __init__(self, workers: int = 0) -> None:
        if workers < 0:
            raise ValueError(f"encode workers must be >= 0, got {workers}")
        self.workers = workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None
        # Shared-memory blocks are reused: the first write to a fresh block costs its page faults
        # (11-19 ms for 18.9 MB on the development machine, against 1 ms for a reused one).
        self._free: list[shared_memory.SharedMemory] = []
        self._blocks: list[shared_memory.SharedMemory] = []  # every block made, freed at close()

    def _block(self, nbytes: int) -> shared_memory.SharedMemory:
        for i, block in enumerate(self._free):
            if block.size >= nbytes:
                return self._free.pop(i)
        block = shared_memory.SharedMemory(create=True, size=max(1, nbytes))
        self._blocks.append(block)
        return block

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=multiprocessing.get_context("spawn"))
        return self._pool

    async def start(self) -> None:
        """Start the worker processes now, so that the first sessions' chunks do not wait for them
        to spawn and import PyAV (a no-op with threads)."""
        if self.workers:
            blank = np.zeros((1, 16, 16, 3), dtype=np.uint8)
            await asyncio.gather(*(self.encode(blank, 25) for _ in range(self.workers)))

    async def encode(self, frames: np.ndarray, fps: int) -> bytes:
        """The MP4 bytes of ``frames`` (uint8 ``[N, H, W, 3]``) at ``fps`` frames per second.

        Raises:
            BrokenProcessPool: a fresh pool broke too.
        """
        loop = asyncio.get_running_loop()
        if self.workers == 0:
            return await loop.run_in_executor(None, encode_mp4_bytes, frames, fps)
        frames = np.ascontiguousarray(frames, dtype=np.uint8)
        block = self._block(frames.nbytes)
        try:
            np.ndarray(frames.shape, dtype=np.uint8, buffer=block.buf)[...] = frames
            pool = self._executor()
            try:
                return await loop.run_in_executor(pool, _encode_shared, block.name, frames.shape, fps)
            except BrokenProcessPool:
                logger.warning("an MP4 encoding worker died; starting a new pool and encoding the chunk again")
                if self._pool is pool:
                    self._pool = None
                    pool.shutdown(wait=False, cancel_futures=True)
                return await loop.run_in_executor(self._executor(), _encode_shared, block.name, frames.shape, fps)
        finally:
            self._free.append(block)

    def close(self) -> None:
        """Stop the workers (chunks being encoded are dropped) and free the shared memory."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        for block in self._blocks:  # also those of encodes a closed connection left running
            block.close()
            block.unlink()
        self._blocks, self._free = [], []


__all__ = ["ChunkEncoder", "default_encode_workers"]

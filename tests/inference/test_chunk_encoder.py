"""The server's MP4 chunk encoder: worker processes give the bytes the in-process encode gives, a
killed worker costs a retry (not the chunk), and bad settings are refused."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from multiprocessing import shared_memory

import numpy as np
import pytest

from vividhead.inference.chunk_encoder import ChunkEncoder, default_encode_workers
from vividhead.media import count_video_frames, encode_mp4_bytes, read_image


@pytest.fixture(scope="module")
def frames(image_dir) -> np.ndarray:
    """12 frames of a fixture portrait at 128x128, shifted 3 px per frame (uint8 [12, 128, 128, 3])."""
    im = read_image(image_dir / "face_frontal_people0.png")
    ys = np.linspace(0, im.shape[0] - 1, 128).astype(int)
    xs = np.linspace(0, im.shape[1] - 1, 128).astype(int)
    still = np.ascontiguousarray(im[ys][:, xs])
    return np.stack([np.roll(still, 3 * i, axis=1) for i in range(12)])


def test_worker_processes_encode_what_this_process_encodes(frames):
    enc = ChunkEncoder(workers=1)
    try:
        data = asyncio.run(enc.encode(frames, 25))
        worker_pids = set(enc._pool._processes)
        names = [b.name for b in enc._blocks]
    finally:
        enc.close()
    assert os.getpid() not in worker_pids and len(worker_pids) == 1
    assert len(names) == 1
    with pytest.raises(FileNotFoundError):  # close() freed the shared memory
        shared_memory.SharedMemory(name=names[0])
    assert count_video_frames(data) == 12
    assert data == encode_mp4_bytes(frames, 25)  # libx264 is deterministic at these settings


def test_start_spawns_every_worker_before_the_first_chunk():
    enc = ChunkEncoder(workers=2)
    try:
        asyncio.run(enc.start())
        assert len(enc._pool._processes) == 2
    finally:
        enc.close()


def test_threads_by_default(frames):
    enc = ChunkEncoder()
    assert count_video_frames(asyncio.run(enc.encode(frames, 25))) == 12
    assert enc._pool is None


def test_a_killed_worker_costs_a_retry_not_the_chunk(frames, caplog):
    enc = ChunkEncoder(workers=1)

    async def scenario():
        first = await enc.encode(frames, 25)
        for pid in list(enc._pool._processes):
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)  # the pool notices the dead worker and marks itself broken
        second = await enc.encode(frames, 25)
        return first, second

    try:
        with caplog.at_level(logging.WARNING, logger="vividhead.inference.chunk_encoder"):
            first, second = asyncio.run(scenario())
    finally:
        enc.close()
    assert first == second
    assert any("worker died" in r.getMessage() for r in caplog.records)


def test_default_workers_only_on_a_gpu_host_with_cores_to_spare():
    assert default_encode_workers("cuda", 16) == 8  # the measured H100 host
    assert default_encode_workers("cuda", 64) == 8
    assert default_encode_workers("cuda", 10) == 5
    assert default_encode_workers("cuda", 4) == 0  # few cores: threads
    assert default_encode_workers("cuda", None) == 0
    assert default_encode_workers("cpu", 64) == 0  # the model needs the cores


def test_settings():
    with pytest.raises(ValueError, match="encode workers"):
        ChunkEncoder(workers=-1)

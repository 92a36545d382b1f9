"""Multi-process CPU tests over gloo: spawn ``world`` ranks on a free loopback port and join them.

A worker is a module-level function ``worker(rank, world, port, out_dir)`` that calls
:func:`init_rank` first and writes its results under ``out_dir`` for the test to compare.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_rank(rank: int, world: int, port: int) -> None:
    """Join the gloo process group of :func:`spawn_ranks` (one thread per rank: 2 cores in CI)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)


def spawn_ranks(worker: Callable[[int, int, int, str], None], world: int, out_dir: str | Path) -> None:
    """Run ``worker(rank, world, port, out_dir)`` in ``world`` processes and wait for all of them.

    Raises:
        torch.multiprocessing.ProcessRaisedException: a rank failed (its traceback included).
    """
    mp.spawn(worker, args=(world, free_port(), str(out_dir)), nprocs=world, join=True)


def finish_rank() -> None:
    """Leave the process group and the process: a barrier first, so that no rank tears gloo down
    while its peer still talks to it, then ``os._exit(0)``, so that no C++ destructor runs at
    interpreter exit. A rank still aborted there now and then ("terminate called without an active
    exception", SIGABRT) in a clean-clone CI run with the barrier alone. Call it last: nothing after
    it runs."""
    import sys

    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)

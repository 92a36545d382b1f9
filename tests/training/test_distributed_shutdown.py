"""shutdown_distributed on two gloo ranks that exit right after their last collective."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from vividhead.training.trainers.distributed import init_distributed, shutdown_distributed

#: What outlives shutdown_distributed in a rank: a trainer's DeviceMesh (and with it the gloo
#: group and its worker threads) stays referenced until the interpreter finalizes.
_KEPT: list = []


def _exit_after_last_collective(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    _KEPT.append(init_distributed("cpu", "gloo", "fsdp"))
    for _ in range(30):
        out = torch.empty(world * 1000)
        dist.all_gather_into_tensor(out, torch.full((1000,), float(rank)))
    shutdown_distributed()


def test_gloo_ranks_exit_cleanly_right_after_their_last_collective(tmp_path):
    """Without waiting for gloo's worker threads a rank aborted here (SIGABRT, "terminate called
    without an active exception") in about one spawn in three on a 2-core machine."""
    from gloo_ranks import spawn_ranks

    for _ in range(3):
        spawn_ranks(_exit_after_last_collective, 2, tmp_path)

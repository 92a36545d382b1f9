"""Process groups and model wrapping for the trainers: torchrun (or one process), FSDP2 per
transformer block, DDP, activation checkpointing (all blocks, every other one, the self-attention
only, or all but the matmuls), the attention kernel and per-block ``torch.compile``, all applied from
outside the model so its file describes the network only.

Launch: ``torchrun --nproc-per-node N -m vividhead train sft --config C`` (or the ``vividhead``
script under torchrun; ``ray job submit -- torchrun ...`` on a GPU node). Without torchrun's
environment the trainer runs as a world of one. CPU runs use gloo (tiny configs, tests).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from vividhead.config import check
from vividhead.models.flashhead import FlashHeadAttention, SDPAProcessor
from vividhead.training.trainers.config import CHECKPOINTING_MODES, ParallelConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job.

    Attributes:
        rank, world_size, local_rank: torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``.
        device: the device this rank computes on.
        mesh: a 1-D ``DeviceMesh`` over all ranks (FSDP2), or ``None`` for a single process
            without a process group.
    """

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mesh: Any = None

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, previews and checkpoint metadata."""
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_expandable_segments() -> None:
    """Ask PyTorch's CUDA caching allocator for expandable segments unless the user set
    ``PYTORCH_CUDA_ALLOC_CONF``; call before the first CUDA allocation (it is read once).

    Stage 2 (three 1.3B networks, K = 5) peaks at 76.9 GiB on an 80 GiB H100 with them and ran out
    of memory without them (fragmentation; docs/benchmarks.md, "Stage-2 distillation step").
    """
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")


def init_distributed(device: str = "auto", backend: str = "auto", strategy: str = "fsdp") -> DistEnv:
    """Join torchrun's process group (or make a world of one).

    A world of one still gets a gloo/NCCL group when ``strategy`` is ``fsdp`` or ``ddp``, so the
    same code path (DTensor parameters, DCP checkpoints) runs on one device and on many.

    Args:
        device: ``auto`` (CUDA if available), ``cuda`` or ``cpu``.
        backend: ``auto`` (NCCL on CUDA, gloo on CPU), ``nccl`` or ``gloo``.
        strategy: the :class:`ParallelConfig` strategy.

    On CUDA it first turns on expandable segments (:func:`use_expandable_segments`).

    Raises:
        RuntimeError: ``device: cuda`` without CUDA, or NCCL on CPU.
    """
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("run.device is cuda but CUDA is not available on this node")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        use_expandable_segments()
        torch.cuda.set_device(dev)
    be = ("nccl" if use_cuda else "gloo") if backend == "auto" else backend
    if be == "nccl" and not use_cuda:
        raise RuntimeError("parallel.backend nccl needs CUDA; use gloo on CPU")
    if world == 1 and strategy == "none":
        return DistEnv(rank, world, local, dev, None)
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:  # a world of one outside torchrun
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            os.environ.setdefault("RANK", "0")
            os.environ.setdefault("WORLD_SIZE", "1")
        dist.init_process_group(be, device_id=dev if use_cuda else None)
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh(dev.type, (world,))
    return DistEnv(rank, world, local, dev, mesh)


def shutdown_distributed() -> None:
    """Destroy the process group if this process made one, then wait (at most 5 s) until gloo's
    worker threads have finished with the collectives already done (:func:`_wait_for_gloo_workers`)."""
    if dist.is_initialized():
        dist.destroy_process_group()
        _wait_for_gloo_workers()


#: The name PyTorch gives gloo's worker threads (``ProcessGroupGloo::runLoop``).
_GLOO_WORKER_THREAD = "pt_gloo_runloop"


def _gloo_worker_states() -> list[str]:
    """The scheduler state (``R``, ``S``, ...) of each gloo worker thread of this process; empty
    without ``/proc`` (not Linux)."""
    states = []
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return states
    for task in tasks:
        try:
            if (task / "comm").read_text().strip() == _GLOO_WORKER_THREAD:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        except OSError:  # the thread has ended
            pass
    return states


def _wait_for_gloo_workers(timeout_s: float = 5.0) -> None:
    """Sleep, without the GIL, until every gloo worker thread is parked (``S``) three polls in a row.

    A gloo worker drops its reference to a finished collective's tensors only after the caller's
    ``wait()`` has returned, and dropping a tensor that has a Python object takes the GIL.
    ``destroy_process_group`` does not stop the workers (the group lives on in the ``DeviceMesh``,
    FSDP's state and DTensor's caches), so a rank that exits right after its last collective can
    have a worker ask for the GIL while the interpreter finalizes; CPython then ends that thread
    inside a ``noexcept`` C++ frame and the rank dies with "terminate called without an active
    exception" (SIGABRT, no traceback). A barrier before destroying only narrows that window: the
    drop is this process's own and can come after any barrier.

    A worker waiting for the GIL shows ``S`` too, but it gets the GIL during these sleeps, so it
    is not seen parked three times; one stuck in a collective with a dead peer counts as parked,
    so a failing rank does not wait here.
    """
    deadline = time.monotonic() + timeout_s
    parked = 0
    while parked < 3 and time.monotonic() < deadline:
        states = _gloo_worker_states()
        if not states:
            return
        parked = parked + 1 if all(s == "S" for s in states) else 0
        time.sleep(0.002)


def barrier(env: DistEnv) -> None:
    """All ranks meet (no-op without a process group)."""
    if env.mesh is not None:
        dist.barrier()


def broadcast_ints(values: list[int], env: DistEnv) -> list[int]:
    """Rank 0's ``values`` on every rank (e.g. the stage-2 rollout length k and exit step t', so
    every rank runs the same sequence of FSDP collectives).

    Returns:
        the list as rank 0 has it.
    """
    if env.mesh is None:
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=env.device if env.device.type == "cuda" else "cpu")
    dist.broadcast(t, src=0)
    return [int(v) for v in t.tolist()]


def all_reduce_mean(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Mean of a scalar tensor over ranks (for logging; the gradient reduction is FSDP's/DDP's)."""
    if env.mesh is None:
        return value
    v = value.detach().clone()
    dist.all_reduce(v, op=dist.ReduceOp.SUM)
    return v / env.world_size


#: Ops whose outputs ``save_matmuls`` keeps for the backward pass: the matmuls (``nn.Linear`` is
#: ``addmm`` / ``mm``) and every fused attention kernel (the math backend decomposes into ``bmm``).
SAVED_OPS = (
    torch.ops.aten.mm.default,
    torch.ops.aten.addmm.default,
    torch.ops.aten.bmm.default,
    torch.ops.aten._scaled_dot_product_flash_attention.default,
    torch.ops.aten._scaled_dot_product_cudnn_attention.default,
    torch.ops.aten._scaled_dot_product_efficient_attention.default,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu.default,
)


def _save_matmuls_contexts() -> Any:
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(list(SAVED_OPS))


class CheckpointedModule:
    """Base of the classes :func:`apply_activation_checkpointing` gives the modules it wraps: one
    subclass per (module class, mode), shared by every block, so the ``forward`` that calls
    ``torch.utils.checkpoint`` is a class attribute.

    A per-instance ``forward`` (e.g. a ``functools.partial`` per module) is a different object
    in each block; Dynamo guards a compiled block on its identity, so every block of the per-block
    ``torch.compile`` recompiled the same code until ``recompile_limit`` (8) and the remaining blocks
    ran eager (30 blocks of the 1.3B model: 8 compiled, 22 eager in mode ``attention``).
    """

    #: the wrapped module's own class, whose ``forward`` the checkpoint runs.
    checkpointed_class: type[nn.Module]


# Two forwards, not one with a ``context_fn`` argument: Dynamo traces a checkpoint whose
# ``context_fn`` is a plain function it can see, not one passed through as a value.
def _checkpointed_forward(self: CheckpointedModule, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import checkpoint

    return checkpoint(self.checkpointed_class.forward, self, *args, use_reentrant=False, **kwargs)


def _save_matmuls_forward(self: CheckpointedModule, *args: Any, **kwargs: Any) -> Any:
    from torch.utils.checkpoint import checkpoint

    return checkpoint(self.checkpointed_class.forward, self, *args, use_reentrant=False,
                      context_fn=_save_matmuls_contexts, **kwargs)


_CHECKPOINTED_CLASSES: dict[tuple[type, bool], type] = {}


def _checkpointed_class(cls: type[nn.Module], save_matmuls: bool) -> type:
    """The shared :class:`CheckpointedModule` subclass of ``cls`` (made once per class and mode)."""
    key = (cls, save_matmuls)
    if key not in _CHECKPOINTED_CLASSES:
        prefix = "SaveMatmulsCheckpointed" if save_matmuls else "Checkpointed"
        _CHECKPOINTED_CLASSES[key] = type(f"{prefix}{cls.__name__}", (CheckpointedModule, cls), {
            "forward": _save_matmuls_forward if save_matmuls else _checkpointed_forward,
            "checkpointed_class": cls, "__module__": cls.__module__})
    return _CHECKPOINTED_CLASSES[key]


def apply_activation_checkpointing(blocks: nn.ModuleList, mode: str, attention: str = "self_attn") -> list[str]:
    """Make the backward pass recompute part of each block's forward (non-reentrant
    ``torch.utils.checkpoint``), by giving the chosen modules a :class:`CheckpointedModule` subclass
    of their class in place (parameters, buffers and state-dict keys unchanged). Every wrapped module
    of one class gets the same subclass, so a per-block ``torch.compile`` traces one graph for all
    blocks (``every_other``: two, wrapped and not). A module already wrapped is left as it is.

    Args:
        blocks: the repeated transformer blocks.
        mode: a :data:`~vividhead.training.trainers.config.CHECKPOINTING_MODES` value: ``none``,
            ``all`` (every block), ``every_other`` (blocks 0, 2, 4, ...), ``attention`` (the
            submodule ``attention`` of every block), ``save_matmuls`` (every block, keeping the
            outputs of :data:`SAVED_OPS` through ``torch.utils.checkpoint.create_selective_checkpoint_contexts``).
        attention: name of a block's self-attention submodule (``self_attn`` for the FlashHead DiT,
            ``attn1`` for diffusers' ``WanTransformerBlock``).

    Returns:
        the wrapped modules' names relative to ``blocks`` (``["0", "2"]``, ``["0.self_attn", ...]``).

    Raises:
        ValueError: an unknown ``mode``, or a block without ``attention``.
    """
    if mode == "none":
        return []
    if mode in ("all", "save_matmuls"):
        targets = [(str(i), blk) for i, blk in enumerate(blocks)]
    elif mode == "every_other":
        targets = [(str(i), blk) for i, blk in enumerate(blocks) if i % 2 == 0]
    elif mode == "attention":
        if not all(hasattr(blk, attention) for blk in blocks):
            raise ValueError(f"activation checkpointing 'attention': a block has no submodule {attention!r}")
        targets = [(f"{i}.{attention}", getattr(blk, attention)) for i, blk in enumerate(blocks)]
    else:
        raise ValueError(f"unknown activation checkpointing mode {mode!r} (known: {', '.join(CHECKPOINTING_MODES)})")
    for _, module in targets:
        if not isinstance(module, CheckpointedModule):
            module.__class__ = _checkpointed_class(type(module), mode == "save_matmuls")
    return [name for name, _ in targets]


class BackendSDPAProcessor(SDPAProcessor):
    """:class:`~vividhead.models.flashhead.SDPAProcessor` restricted to one SDPA backend: the call
    runs under ``torch.nn.attention.sdpa_kernel``, so the forward, the recomputation of a
    checkpointed forward and a compiled graph (Dynamo traces the context) all use that kernel.

    ``q, k, v: [B, S, H, d]`` -> ``[B, S_q, H, d]`` as the base class.

    Args:
        backend: the kernel, e.g. ``SDPBackend.CUDNN_ATTENTION``.
    """

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def __call__(self, q, k, v, attn_mask=None):
        from torch.nn.attention import sdpa_kernel

        with sdpa_kernel(self.backend):
            return super().__call__(q, k, v, attn_mask=attn_mask)


def sdpa_backend(name: str) -> Any:
    """The ``torch.nn.attention.SDPBackend`` of a :data:`~vividhead.training.trainers.config.ATTENTION_BACKENDS`
    name, ``None`` for ``auto``."""
    from torch.nn.attention import SDPBackend

    return {"auto": None, "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


def set_attention_backend(blocks: nn.ModuleList, name: str, device: torch.device) -> int:
    """Route every :class:`~vividhead.models.flashhead.FlashHeadAttention` of ``blocks`` (self- and
    audio cross-attention) through :class:`BackendSDPAProcessor` (``auto``: left as it is).

    Returns:
        the number of attention modules changed.

    Raises:
        ConfigError: ``cudnn`` or ``efficient`` on a device other than CUDA.
    """
    if name == "auto":
        return 0
    check(device.type == "cuda" or name in ("flash", "math"), "parallel.attention_backend",
          f"{name} needs CUDA (on {device.type}: auto, flash or math)")
    processor = BackendSDPAProcessor(sdpa_backend(name))
    changed = 0
    for blk in blocks:
        for m in blk.modules():
            if isinstance(m, FlashHeadAttention):
                m.set_processor(processor)
                changed += 1
    return changed


def wrap_model(model: nn.Module, blocks: nn.ModuleList, cfg: ParallelConfig, env: DistEnv,
               trainable: bool = True) -> nn.Module:
    """Apply the attention backend, activation checkpointing, per-block compile and FSDP2 / DDP to
    ``model``.

    Each of ``blocks`` (the DiT's ``blocks``) becomes its own FSDP2 unit (``fully_shard``), then the
    root; parameters become DTensors sharded on dim 0 over ``env.mesh``. With ``precision: bf16``
    FSDP2 casts parameters to bf16 for compute and reduces gradients in fp32 (master weights stay
    fp32). State-dict keys are unchanged (no wrapper modules), so checkpoints and exports keep the
    released layout.

    Args:
        model: the module to wrap (float32, on ``env.device``).
        blocks: its repeated blocks.
        cfg: the ``parallel`` section.
        env: from :func:`init_distributed`.
        trainable: ``False`` for a frozen network (the stage-2 teacher): sharded, never wrapped in DDP,
            no activation checkpointing.

    Returns:
        the module to call (``model`` itself for FSDP2 and ``none``; a DDP wrapper for ``ddp``).

    Raises:
        ConfigError: an attention backend the device does not have.
    """
    set_attention_backend(blocks, cfg.attention_backend, env.device)
    if trainable:
        wrapped = apply_activation_checkpointing(blocks, cfg.activation_checkpointing)
        if wrapped:
            logger.info("activation checkpointing %s: %d of %d blocks' modules", cfg.activation_checkpointing,
                        len(wrapped), len(blocks))
    if cfg.compile:
        for blk in blocks:
            blk.compile(dynamic=False)
    if shards(cfg, env):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if cfg.precision == "bf16" else MixedPrecisionPolicy()
        for blk in blocks:
            fully_shard(blk, mesh=env.mesh, mp_policy=mp, reshard_after_forward=True)
        fully_shard(model, mesh=env.mesh, mp_policy=mp, reshard_after_forward=trainable)
        return model
    if cfg.strategy == "ddp" and env.mesh is not None and trainable:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
    return model


def shards(cfg: ParallelConfig, env: DistEnv) -> bool:
    """Whether FSDP2 shards the model: strategy ``fsdp`` on more than one rank. On a world of one
    sharding only adds copies (measured: 315 vs 292 ms per 1.3B step on an H200), so one rank
    trains unsharded with autocast."""
    return cfg.strategy == "fsdp" and env.mesh is not None and env.world_size > 1


def autocast(cfg: ParallelConfig, env: DistEnv):
    """bf16 autocast over fp32 weights when the precision is bf16 and FSDP2 does not cast already."""
    enabled = cfg.precision == "bf16" and not shards(cfg, env)
    return torch.autocast(env.device.type, dtype=torch.bfloat16, enabled=enabled)

"""Sequence parallelism for the FlashHead DiT (Ulysses x Ring, xDiT / xfuser style).

Launched with ``torchrun --nproc-per-node N``: every rank holds the whole model, the token sequence
is split into N shards (``FlashHeadTransformer.sp_rank/sp_world``), self-attention runs through a
sequence-parallel processor and the head's output is all-gathered.

Two processors:

* :class:`XFuserUSPProcessor` -- xfuser's ``xFuserLongContextAttention`` (hybrid Ulysses x Ring,
  yunchang kernels). xfuser has no CPU path and is imported lazily, only here.
* :class:`UlyssesProcessor` -- plain DeepSpeed-Ulysses with two ``all_to_all`` per attention
  (sequence shards <-> head shards), for when xfuser is not installed; needs
  ``num_heads % world == 0``.

The audio cross-attention stays local: each shard attends to the audio tokens of the latent frames
its tokens belong to (block-diagonal mask, see ``DiTAudioBlock``).
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from training.models.flashhead import FlashHeadTransformer


class UlyssesProcessor:
    """DeepSpeed-Ulysses attention over ``group``.

    ``q, k, v: [B, S/P, H, d]`` sequence shards -> ``[B, S/P, H, d]``.
    """

    def __init__(self, group=None) -> None:
        self.group = group
        self.world = dist.get_world_size(group)

    def _seq_to_head(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h, d = x.shape
        p = self.world
        x = x.reshape(b, s, p, h // p, d).permute(2, 0, 1, 3, 4).contiguous()  # [P, B, s, H/P, d]
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=self.group)  # out[r] = rank r's tokens, my heads
        return out.permute(1, 0, 2, 3, 4).reshape(b, p * s, h // p, d)  # [B, S, H/P, d]

    def _head_to_seq(self, x: torch.Tensor) -> torch.Tensor:
        b, s_full, hp, d = x.shape
        p = self.world
        x = x.reshape(b, p, s_full // p, hp, d).permute(1, 0, 2, 3, 4).contiguous()  # [P, B, s, H/P, d]
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=self.group)  # out[r] = my tokens, rank r's heads
        return out.permute(1, 2, 0, 3, 4).reshape(b, s_full // p, p * hp, d)  # [B, s, H, d]

    def __call__(self, q, k, v, attn_mask=None):
        if attn_mask is not None:
            raise ValueError("Ulysses self-attention takes no mask")
        q, k, v = (self._seq_to_head(t) for t in (q, k, v))
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)
        return self._head_to_seq(o.contiguous())


def _patch_yunchang_for_xfuser() -> None:
    """xfuser 0.7.0 imports ``update_npu_out`` (an Ascend-NPU helper) from ``yunchang.ring.utils``,
    which the newest yunchang on PyPI (0.6.4) lacks, so ``xfuser.core.long_ctx_attention`` fails to
    import on CUDA. Add a stub that raises if ever called (only the NPU ring path uses it)."""
    import yunchang.ring.utils as ring_utils

    if not hasattr(ring_utils, "update_npu_out"):
        def update_npu_out(*args, **kwargs):
            raise NotImplementedError("NPU ring attention is not available with this yunchang")

        ring_utils.update_npu_out = update_npu_out


class XFuserUSPProcessor:
    """xfuser hybrid Ulysses x Ring attention (``xFuserLongContextAttention``), ``[B, S/P, H, d]`` in/out."""

    def __init__(self) -> None:
        _patch_yunchang_for_xfuser()
        from xfuser.core.long_ctx_attention import xFuserLongContextAttention
        from yunchang.kernels import AttnType

        try:
            import flash_attn  # noqa: F401

            attn_type = AttnType.FA
        except ImportError:
            attn_type = AttnType.TORCH_FLASH
        self.attn_type = attn_type.name
        self.attn = xFuserLongContextAttention(attn_type=attn_type)

    def __call__(self, q, k, v, attn_mask=None):
        if attn_mask is not None:
            raise ValueError("USP self-attention takes no mask")
        return self.attn(None, query=q, key=k, value=v)


def init_distributed(ulysses_degree: int | None = None, ring_degree: int = 1, use_xfuser: bool = True) -> str:
    """Initialise NCCL (and xfuser's model-parallel groups when available) from torchrun's env.

    Returns:
        ``"xfuser"`` or ``"ulysses"``: which processor :func:`enable_sequence_parallel` will use.
    """
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)))
    if use_xfuser:
        try:
            from xfuser.core.distributed import init_distributed_environment, initialize_model_parallel

            init_distributed_environment(rank=rank, world_size=world)
            u = ulysses_degree or world // ring_degree
            initialize_model_parallel(sequence_parallel_degree=world, ulysses_degree=u, ring_degree=ring_degree)
            return "xfuser"
        except Exception as exc:  # xfuser missing or broken on this image: fall back, say so
            print(f"[rank {rank}] xfuser unavailable ({type(exc).__name__}: {exc}); using plain Ulysses", flush=True)
            if not dist.is_initialized():
                dist.init_process_group("nccl")
            return "ulysses"
    dist.init_process_group("nccl")
    return "ulysses"


def enable_sequence_parallel(model: FlashHeadTransformer, backend: str) -> str:
    """Shard ``model``'s token sequence over the default process group.

    Args:
        backend: ``"xfuser"`` or ``"ulysses"`` (from :func:`init_distributed`).

    Returns:
        the backend actually used (``"ulysses"`` if xfuser's attention could not be built).

    Raises:
        ValueError: unknown backend, or heads not divisible by the world size for Ulysses.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    if backend == "xfuser":
        try:
            proc = XFuserUSPProcessor()
        except Exception as exc:  # broken xfuser/yunchang pairing: say so, fall back
            print(f"[rank {rank}] xfuser attention unavailable ({type(exc).__name__}: {exc}); plain Ulysses", flush=True)
            backend = "ulysses"
    if backend == "ulysses":
        if model.config.num_heads % world:
            raise ValueError(f"{model.config.num_heads} heads not divisible by {world} ranks")
        proc = UlyssesProcessor()
    elif backend != "xfuser":
        raise ValueError(f"unknown backend {backend!r}")
    model.set_attention_processor(proc)
    model.sp_rank, model.sp_world = rank, world

    def gather(x: torch.Tensor) -> torch.Tensor:
        """All-gather ``[B, S/P, C]`` shards along the sequence -> ``[B, S, C]``."""
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=1)

    model.sp_gather = gather
    return backend


def disable_sequence_parallel(model: FlashHeadTransformer) -> None:
    """Back to single-device attention (e.g. to compute a reference on one rank)."""
    from training.models.flashhead import SDPAProcessor

    model.set_attention_processor(SDPAProcessor())
    model.sp_rank, model.sp_world, model.sp_gather = 0, 1, None

"""Sequence parallelism for the FlashHead DiT (Ulysses x Ring, xDiT / xfuser style).

Launched with ``torchrun --nproc-per-node N``: every rank holds the whole model, the token sequence
is split into N shards, self-attention runs through a sequence-parallel processor and the head's
output is all-gathered. The model's own forward knows nothing of this: :func:`enable_sequence_parallel`
attaches a :class:`SequenceParallelPlan` from outside, as diffusers' context-parallel plan
(``_cp_plan`` of ``WanTransformer3DModel``: split the RoPE tables and ``blocks.0``'s input, gather
``proj_out``'s output) does with module hooks:

* a forward pre-hook on the model reads the latent shape of ``x`` and fixes this rank's slice of
  the padded sequence (and tells the processors how many tokens are real);
* a forward pre-hook on every ``blocks[i]`` hands the block this rank's slice of the RoPE tables
  and the latent-frame id of each of its tokens (``DiTAudioBlock``'s ``frame_ids``); the one on
  ``blocks[0]`` also pads and slices the tokens;
* a forward hook on ``head`` all-gathers the shards and drops the padding.

Parameters, module tree and state dict are unchanged; :func:`disable_sequence_parallel` removes the
hooks.

Processors:

* :class:`XFuserUSPProcessor` -- xfuser's ``xFuserLongContextAttention`` (hybrid Ulysses x Ring:
  yunchang's all-to-all, our padding-aware :func:`ring_attention`). xfuser has no CPU path and is
  imported lazily, only here.
* :class:`UlyssesProcessor` -- plain DeepSpeed-Ulysses with two ``all_to_all`` per attention
  (sequence shards <-> head shards), for when xfuser is not installed; needs
  ``num_heads % world == 0``.
* :class:`TorchUSPProcessor` -- the same hybrid Ulysses x Ring in plain PyTorch (explicit groups from
  :func:`usp_groups`), so the ring path runs (and is tested) on CPU with gloo.

Padding: the plan pads the token sequence to a multiple of the world size (10530 tokens at
720x416x33 -> 10532 on 4 ranks). The padded tokens would be keys of every query; the processors drop
them from the keys (the real length comes from the plan's model pre-hook), so the result equals the
unsharded model's. The ring (:func:`ring_attention`) merges blocks with a float32 log-sum-exp and
PyTorch's flash kernel (no ``flash_attn`` needed); it replaces xfuser's ``xdit_ring_flash_attn_func`` inside
``xFuserLongContextAttention`` (whose TORCH kernels keep the LSE in bf16 and know no padding).

:func:`make_parallel_models` turns :class:`~vividhead.inference.pipeline.FlashHeadModels` into a
sequence-parallel DiT plus :class:`~vividhead.inference.parallel_vae.ParallelWanVAE`: every rank runs the same
``StreamingSession`` on the same inputs and gets the same frames.

The audio cross-attention stays local: each shard attends to the audio tokens of the latent frames
its tokens belong to (block-diagonal mask, see ``DiTAudioBlock``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vividhead.models.flashhead import FlashHeadTransformer, SDPAProcessor

logger = logging.getLogger(__name__)


class UlyssesProcessor:
    """DeepSpeed-Ulysses attention over ``group``.

    ``q, k, v: [B, S/P, H, d]`` sequence shards -> ``[B, S/P, H, d]``.
    """

    def __init__(self, group=None) -> None:
        self.group = group
        self.world = dist.get_world_size(group)
        # real (unpadded) tokens of the full sequence; set per forward by the pre-hook of
        # enable_sequence_parallel; None = no padding to drop
        self.seq_len: int | None = None
        g = group if group is not None else dist.group.WORLD
        self._members = [dist.get_global_rank(g, i) for i in range(self.world)]

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
        per = q.shape[1]
        q, k, v = (self._seq_to_head(t) for t in (q, k, v))
        keep = block_keep(self._members, per, self.seq_len, k.device)
        k, v = _select_keys(k, keep), _select_keys(v, keep)
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
    """xfuser hybrid Ulysses x Ring attention (``xFuserLongContextAttention``), ``[B, S/P, H, d]`` in/out.

    xfuser does the Ulysses all-to-alls over its Ulysses group; the ring over its Ring group is
    :func:`ring_attention` (padding-aware, float32 LSE merge, PyTorch flash kernel, so it works
    without ``flash_attn``; xfuser's own ring with ``AttnType.TORCH_*`` casts the LSE to bf16, and
    ``TORCH_MATH``/``TORCH_CUDNN`` return a zero LSE, which is wrong for ring > 1).

    Args:
        ulysses_group, ring_group: explicit groups (from :func:`usp_groups`); default: the groups of
            xfuser's ``initialize_model_parallel``.
    """

    def __init__(self, ulysses_group=None, ring_group=None) -> None:
        _patch_yunchang_for_xfuser()
        from xfuser.core.long_ctx_attention import xFuserLongContextAttention
        from yunchang.kernels import AttnType

        self.attn = xFuserLongContextAttention(attn_type=AttnType.TORCH_FLASH)
        if ulysses_group is not None:
            self.attn.ulysses_pg, self.attn.ring_pg = ulysses_group, ring_group
        self.attn_type = "TORCH_FLASH+fp32-lse-ring"
        self.seq_len: int | None = None  # real tokens; set per forward by enable_sequence_parallel's hook
        self._table = gathered_rank_table(self.attn.ulysses_pg, self.attn.ring_pg)
        self._index_cache: dict = {}
        self.attn.ring_attn_fn = self._ring

    def _ring(self, q, k, v, *, group=None, softmax_scale=None, **_ignored):
        """Called by ``xFuserLongContextAttention.forward`` in place of xfuser's ring function with
        the Ulysses-gathered ``[B, U*S/P, H/U, d]`` q/k/v."""
        per = q.shape[1] // len(self._table[0])
        keep = _table_keep(self._table, per, self.seq_len, q.device, self._index_cache)
        return ring_attention(q, k, v, group, keep, softmax_scale)

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
            logger.warning("[rank %d] xfuser unavailable (%s: %s); using plain Ulysses", rank, type(exc).__name__, exc)
            if not dist.is_initialized():
                dist.init_process_group("nccl")
            return "ulysses"
    dist.init_process_group("nccl")
    return "ulysses"


class SequenceParallelPlan:
    """Shards a :class:`FlashHeadTransformer`'s token sequence over a process group with module hooks
    (the model's ``forward`` is not touched). Build it with :func:`enable_sequence_parallel`.

    Per forward, for latents ``x: [B, C, F, H, W]`` with ``S = prod(model.token_grid(x.shape))``
    tokens on ``P`` ranks: the sequence is padded to ``S_pad = P * ceil(S / P)`` and rank ``r`` keeps
    tokens ``[r * S_pad / P, (r + 1) * S_pad / P)``. Padding tokens get the RoPE of angle 0
    (cos 1, sin 0), the frame id of the last latent frame, and are dropped from the attention keys
    by the processors (``seq_len``) and from the gathered output.

    Args:
        model: the DiT to shard (its processors must already be the sequence-parallel ones).
        group: process group of the sequence split (default: the world).

    Attributes:
        rank, world: this rank and the group size.
        seq_len: real tokens of the current forward (``None`` before the first).
    """

    def __init__(self, model: FlashHeadTransformer, group=None) -> None:
        self.model = model
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.seq_len: int | None = None
        self._lo = self._hi = self._s_pad = 0
        self._rope: tuple[torch.Tensor, torch.Tensor] | None = None
        self._frame_ids: torch.Tensor | None = None
        self._tables: dict = {}
        self._handles: list = []

    # -- hooks ---------------------------------------------------------------------------------
    def attach(self) -> None:
        """Install the hooks (model pre-hook, a pre-hook on every block, a forward hook on the head)."""
        self.detach()
        m = self.model
        self._handles.append(m.register_forward_pre_hook(self._model_pre_hook, with_kwargs=True))
        for i, blk in enumerate(m.blocks):
            self._handles.append(blk.register_forward_pre_hook(self._block_pre_hook(shard=i == 0), with_kwargs=True))
        self._handles.append(m.head.register_forward_hook(self._head_hook))

    def detach(self) -> None:
        """Remove the hooks; the model is the single-device network again (processors aside)."""
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _model_pre_hook(self, mod: FlashHeadTransformer, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs["x"]
        grid = mod.token_grid(x.shape)
        n = math.prod(grid)
        per = -(-n // self.world)
        self.seq_len, self._s_pad = n, per * self.world
        self._lo, self._hi = self.rank * per, (self.rank + 1) * per
        self._rope, self._frame_ids = self._shard_tables(grid, x.shape[2], x.device)
        for blk in mod.blocks:
            proc = blk.self_attn.processor
            if hasattr(proc, "seq_len"):
                proc.seq_len = n

    @torch.compiler.disable
    def _shard_tables(self, grid: tuple[int, int, int], frames: int, device: torch.device):
        """This rank's RoPE rows (float32 ``[S_pad / P, 1, d/2]`` each) and token frame ids (long
        ``[S_pad / P]``). Eager and cached per grid, like ``FlashHeadTransformer.rope_tables``."""
        key = (grid, frames, str(device))
        if key not in self._tables:
            if len(self._tables) >= 4:
                self._tables.pop(next(iter(self._tables)))
            pad, lo, hi = self._s_pad - self.seq_len, self._lo, self._hi
            cos, sin = (F.pad(r, (0, 0, 0, 0, 0, pad), value=v)[lo:hi]
                        for r, v in zip(self.model.rope_tables(grid, device), (1.0, 0.0)))
            frame_ids = (torch.arange(lo, hi, device=device) // (grid[1] * grid[2])).clamp(max=frames - 1)
            self._tables[key] = ((cos, sin), frame_ids)
        return self._tables[key]

    def _block_pre_hook(self, shard: bool):
        names = ("x", "audio", "t_mod", "rope", "frame_ids")

        def hook(blk, args: tuple, kwargs: dict):
            call = {**dict(zip(names, args)), **kwargs}
            if shard:  # blocks[0]: the full sequence arrives; keep this rank's slice
                x = call["x"]
                if x.shape[1] != self.seq_len:
                    raise ValueError(f"blocks[0] got {x.shape[1]} tokens, expected the full {self.seq_len}")
                call["x"] = F.pad(x, (0, 0, 0, self._s_pad - self.seq_len))[:, self._lo:self._hi]
            call["rope"], call["frame_ids"] = self._rope, self._frame_ids
            return (), call

        return hook

    def _head_hook(self, head, args: tuple, out: torch.Tensor) -> torch.Tensor:
        """All-gather ``[B, S_pad/P, C]`` shards along the sequence -> ``[B, S, C]``."""
        parts = [torch.empty_like(out) for _ in range(self.world)]
        dist.all_gather(parts, out.contiguous(), group=self.group)
        return torch.cat(parts, dim=1)[:, : self.seq_len]


def enable_sequence_parallel(model: FlashHeadTransformer, backend: str, groups: tuple | None = None) -> str:
    """Shard ``model``'s token sequence over the default process group.

    Swaps every self-attention processor for a sequence-parallel one and attaches a
    :class:`SequenceParallelPlan` (hooks; a plan attached before is replaced). The padding of the
    sequence to a multiple of the world size does not change the result.

    Args:
        backend: ``"xfuser"`` or ``"ulysses"`` (from :func:`init_distributed`), or ``"torch-usp"``
            (:class:`TorchUSPProcessor`, needs ``groups``).
        groups: optional ``(ulysses_group, ring_group)`` from :func:`usp_groups` (Ulysses x Ring
            degrees other than xfuser's initialised ones); with ``"ulysses"`` it selects
            ``"torch-usp"``.

    Returns:
        the backend actually used (``"ulysses"``, or ``"torch-usp"`` when ``groups`` are given, if
        xfuser's attention could not be built).

    Raises:
        ValueError: unknown backend, or heads not divisible by the Ulysses degree.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    if backend == "xfuser":
        try:
            proc = XFuserUSPProcessor(*(groups or ()))
        except Exception as exc:  # noqa: BLE001 -- broken xfuser/yunchang pairing: say so, fall back
            fb = "torch-usp" if groups is not None else "ulysses"
            logger.warning("[rank %d] xfuser attention unavailable (%s: %s); %s", rank, type(exc).__name__, exc, fb)
            backend = fb
    if backend == "ulysses" and groups is not None:
        backend = "torch-usp"
    if backend == "torch-usp":
        if groups is None:
            raise ValueError("backend 'torch-usp' needs groups=(ulysses_group, ring_group)")
        if model.config.num_heads % dist.get_world_size(groups[0]):
            raise ValueError(f"{model.config.num_heads} heads not divisible by Ulysses degree {dist.get_world_size(groups[0])}")
        proc = TorchUSPProcessor(*groups)
    elif backend == "ulysses":
        if model.config.num_heads % world:
            raise ValueError(f"{model.config.num_heads} heads not divisible by {world} ranks")
        proc = UlyssesProcessor()
    elif backend not in ("xfuser", "torch-usp"):
        raise ValueError(f"unknown backend {backend!r}")
    model.set_attention_processor(proc)
    old = model.__dict__.pop("_sequence_parallel_plan", None)
    if old is not None:
        old.detach()
    plan = SequenceParallelPlan(model)
    plan.attach()
    model.__dict__["_sequence_parallel_plan"] = plan  # not a submodule: state dict unchanged
    return backend


def sequence_parallel_plan(model: FlashHeadTransformer) -> SequenceParallelPlan | None:
    """The plan attached by :func:`enable_sequence_parallel`, or ``None``."""
    return model.__dict__.get("_sequence_parallel_plan")


def disable_sequence_parallel(model: FlashHeadTransformer) -> None:
    """Back to single-device attention (e.g. to compute a reference on one rank): SDPA processors,
    hooks removed."""
    model.set_attention_processor(SDPAProcessor())
    plan = model.__dict__.pop("_sequence_parallel_plan", None)
    if plan is not None:
        plan.detach()


# ----------------------------------------------------------------------------------------------
# Hybrid Ulysses x Ring without xfuser, padding-aware ring, and the streaming-session helper
# ----------------------------------------------------------------------------------------------
def usp_groups(ulysses: int, ring: int) -> tuple:
    """New Ulysses and Ring process groups over the default group, in yunchang's
    ``use_ulysses_low`` layout (the one xfuser uses): Ulysses groups are runs of ``ulysses``
    consecutive ranks, Ring groups take every ``ulysses``-th rank. Collective: every rank must call
    it with the same arguments, in the same order relative to other group creations.

    Returns:
        ``(ulysses_group, ring_group)`` that this rank belongs to.

    Raises:
        ValueError: ``ulysses * ring`` differs from the world size.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    if ulysses < 1 or ring < 1 or ulysses * ring != world:
        raise ValueError(f"ulysses {ulysses} x ring {ring} != world size {world}")
    u_pg = r_pg = None
    for i in range(ring):
        ranks = list(range(i * ulysses, (i + 1) * ulysses))
        g = dist.new_group(ranks)
        if rank in ranks:
            u_pg = g
    for i in range(ulysses):
        ranks = list(range(i, world, ulysses))
        g = dist.new_group(ranks)
        if rank in ranks:
            r_pg = g
    return u_pg, r_pg


def _collective_device(group) -> torch.device:
    """Where tensors for a collective on ``group`` must live (CUDA for NCCL, else CPU)."""
    if torch.cuda.is_available() and "nccl" in str(dist.get_backend(group)).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def gathered_rank_table(ulysses_group, ring_group) -> list[list[int]]:
    """Layout of the Ulysses-gathered sequences around a ring.

    After the Ulysses all-to-all, ring rank ``o`` of this rank's ring group holds the concatenation
    of the sequence shards of the global ranks ``table[o]`` (its Ulysses group, in group-rank
    order). Collective over ``ring_group`` (one small all-gather).

    Returns:
        ``[R][U]`` global ranks (``R`` ring size, ``U`` Ulysses size).
    """
    ug = ulysses_group if ulysses_group is not None else dist.group.WORLD
    u = dist.get_world_size(ug)
    members = [dist.get_global_rank(ug, i) for i in range(u)]
    r = dist.get_world_size(ring_group)
    if r == 1:
        return [members]
    mine = torch.tensor(members, dtype=torch.int64, device=_collective_device(ring_group))
    parts = [torch.empty_like(mine) for _ in range(r)]
    dist.all_gather(parts, mine, group=ring_group)
    return [p.tolist() for p in parts]


def block_keep(members: list[int], per: int, seq_len: int | None, device=None):
    """Which keys of a gathered block are real tokens (not sequence padding).

    The block is the concatenation of the shards of global ranks ``members``, ``per`` tokens each;
    rank ``g``'s shard holds global positions ``[g * per, (g + 1) * per)`` and positions
    ``>= seq_len`` are padding (:class:`SequenceParallelPlan` pads at the end).

    Returns:
        ``None`` (all real, or ``seq_len`` unknown), an ``int`` ``n`` (the first ``n`` keys are real;
        0 = none), or an int64 index tensor on ``device`` (real keys elsewhere than a prefix).
    """
    if seq_len is None:
        return None
    valid = [max(0, min(per, seq_len - g * per)) for g in members]
    if all(n == per for n in valid):
        return None
    j = 0
    while valid[j] == per:
        j += 1
    if not any(valid[j + 1 :]):
        return j * per + valid[j]
    idx = [torch.arange(i * per, i * per + n) for i, n in enumerate(valid) if n]
    return torch.cat(idx).to(device)


def _table_keep(table: list[list[int]], per: int, seq_len: int | None, device, cache: dict) -> list | None:
    """:func:`block_keep` for every ring rank's block (``None`` if nothing is padding), cached."""
    key = (per, seq_len, str(device))
    if key not in cache:
        keeps = [block_keep(row, per, seq_len, device) for row in table]
        cache.clear()
        cache[key] = None if all(kp is None for kp in keeps) else keeps
    return cache[key]


def _select_keys(x: torch.Tensor, keep) -> torch.Tensor:
    """``x: [B, S, H, d]`` restricted along ``S`` by a :func:`block_keep` result."""
    if keep is None:
        return x
    if isinstance(keep, int):
        return x[:, :keep]
    return x.index_select(1, keep)


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None):
    """Non-causal attention that also returns the log-sum-exp of the scores.

    Args:
        q: ``[B, S_q, H, d]``; k, v: ``[B, S_k, H, d]``.
        scale: softmax scale (default ``d ** -0.5``).

    Returns:
        ``(out [B, S_q, H, d]`` in ``q.dtype``, ``lse`` float32 ``[B, H, S_q])``. CUDA fp16/bf16 uses
        PyTorch's flash kernel (``aten._scaled_dot_product_flash_attention``); otherwise float32 math.
    """
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    if q.is_cuda and q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(qt, kt, vt, 0.0, False, False, scale=scale)[:2]
        return out.transpose(1, 2), lse
    sc = scale if scale is not None else q.shape[-1] ** -0.5
    s = torch.matmul(qt.float(), kt.float().transpose(-1, -2)) * sc
    lse = torch.logsumexp(s, dim=-1)
    out = torch.matmul(torch.exp(s - lse[..., None]), vt.float())
    return out.transpose(1, 2).to(q.dtype), lse


def ring_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group=None, keep: list | None = None,
                   scale: float | None = None) -> torch.Tensor:
    """Ring attention (non-causal): local queries attend to the keys/values of every rank of
    ``group``; the K/V blocks travel around the ring by P2P (``batch_isend_irecv``, overlapped with
    the attention of the block in hand) and the partial results are merged with a float32
    log-sum-exp.

    Args:
        q, k, v: ``[B, S_l, H, d]``, the same shape on every rank.
        group: the ring (default: the world).
        keep: per ring rank ``o``, which keys of the block that started on rank ``o`` are real (a
            :func:`block_keep` result); ``None``: all.
        scale: softmax scale (default ``d ** -0.5``).

    Returns:
        ``[B, S_l, H, d]`` in ``q.dtype``.

    Raises:
        RuntimeError: every key is padding.
    """
    g = group if group is not None else dist.group.WORLD
    world, rank = dist.get_world_size(g), dist.get_rank(g)
    if world == 1:  # Ulysses only: one block, no merge
        sel = None if keep is None else keep[0]
        if isinstance(sel, int) and sel == 0:
            raise RuntimeError("ring attention: every key is padding")
        return attention_with_lse(q, _select_keys(k, sel), _select_keys(v, sel), scale)[0]
    send_to, recv_from = dist.get_global_rank(g, (rank + 1) % world), dist.get_global_rank(g, (rank - 1) % world)
    k, v = k.contiguous(), v.contiguous()
    out = lse = None
    for step in range(world):
        reqs = None
        if step + 1 < world:
            nk, nv = torch.empty_like(k), torch.empty_like(v)
            reqs = dist.batch_isend_irecv([
                dist.P2POp(dist.isend, k, send_to, g), dist.P2POp(dist.isend, v, send_to, g),
                dist.P2POp(dist.irecv, nk, recv_from, g), dist.P2POp(dist.irecv, nv, recv_from, g),
            ])
        sel = None if keep is None else keep[(rank - step) % world]
        kb, vb = _select_keys(k, sel), _select_keys(v, sel)
        if kb.shape[1]:
            bo, bl = attention_with_lse(q, kb, vb, scale)
            bo, bl = bo.float(), bl.transpose(1, 2).unsqueeze(-1)  # [B, S, H, d], [B, S, H, 1]
            if out is None:
                out, lse = bo, bl
            else:
                new = torch.logaddexp(lse, bl)
                out = out * torch.exp(lse - new) + bo * torch.exp(bl - new)
                lse = new
        if reqs is not None:
            for r in reqs:
                r.wait()
            k, v = nk, nv
    if out is None:
        raise RuntimeError("ring attention: every key is padding")
    return out.to(q.dtype)


class TorchUSPProcessor:
    """Hybrid Ulysses x Ring attention in plain PyTorch (no xfuser), ``[B, S/P, H, d]`` in/out.

    Ulysses all-to-all over ``ulysses_group`` (as :class:`UlyssesProcessor`), then
    :func:`ring_attention` over ``ring_group``, padding keys dropped. Runs on CPU with gloo.
    Construction is collective over ``ring_group``.

    Args:
        ulysses_group, ring_group: from :func:`usp_groups`.
    """

    def __init__(self, ulysses_group, ring_group) -> None:
        self.ulysses = UlyssesProcessor(ulysses_group)
        self.ring_group = ring_group
        self.seq_len: int | None = None  # real tokens; set per forward by enable_sequence_parallel's hook
        self._table = gathered_rank_table(ulysses_group, ring_group)
        self._index_cache: dict = {}

    @torch.compiler.disable
    def __call__(self, q, k, v, attn_mask=None):
        if attn_mask is not None:
            raise ValueError("USP self-attention takes no mask")
        per, u = q.shape[1], self.ulysses.world
        if u > 1:
            q, k, v = (self.ulysses._seq_to_head(t) for t in (q, k, v))
        keep = _table_keep(self._table, per, self.seq_len, q.device, self._index_cache)
        o = ring_attention(q, k, v, self.ring_group, keep)
        return self.ulysses._head_to_seq(o.contiguous()) if u > 1 else o


def sp_backend_name(model: FlashHeadTransformer) -> str:
    """Name of the attention in use: ``"xfuser"``, ``"torch-usp"``, ``"ulysses"`` or ``"sdpa"``."""
    proc = model.blocks[0].self_attn.processor
    return {XFuserUSPProcessor: "xfuser", TorchUSPProcessor: "torch-usp", UlyssesProcessor: "ulysses"}.get(
        type(proc), "sdpa")


def make_parallel_models(models, backend: str, groups: tuple | None = None, parallel_vae: bool = True,
                         halo: int | None = None, vae_group=None):
    """Sequence-parallel view of :class:`~vividhead.inference.pipeline.FlashHeadModels` for a multi-rank
    ``StreamingSession``: every rank builds the same models (same seed), calls this, and runs the
    same session on the same inputs (seed, reference, PCM); all ranks then return identical frames
    and rank 0 emits them.

    The DiT is made sequence-parallel in place (:func:`enable_sequence_parallel`; the transformer
    object is shared with ``models``); a Wan VAE is wrapped in
    :class:`~vividhead.inference.parallel_vae.ParallelWanVAE` (rows split over ``vae_group``, all-gathered);
    other VAEs stay as they are.

    Args:
        models: built on this rank's device.
        backend: see :func:`enable_sequence_parallel`.
        groups: optional ``(ulysses_group, ring_group)`` (:func:`usp_groups`).
        parallel_vae: wrap the VAE (False: every rank decodes the whole frame).
        halo: ``ParallelWanVAE`` halo in latent rows (default: its own).
        vae_group: process group of the VAE split (default: the world).

    Returns:
        a new ``FlashHeadModels`` (same transformer, audio encoder, device, dtype; VAE wrapped).

    Raises:
        ValueError: see :func:`enable_sequence_parallel`.
    """
    enable_sequence_parallel(models.transformer, backend, groups)
    vae = models.vae
    if parallel_vae:
        from vividhead.inference.parallel_vae import ParallelWanVAE
        from vividhead.models.vae import WanVAE

        if isinstance(vae, WanVAE):
            vae = ParallelWanVAE(vae, group=vae_group, **({} if halo is None else {"halo": halo}))
    return dataclasses.replace(models, vae=vae)

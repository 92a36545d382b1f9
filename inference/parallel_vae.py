"""Spatially sliced ("patch parallel") Wan2.1 VAE for multi-GPU inference.

Launched with ``torchrun --nproc-per-node N``: every rank holds the whole VAE and the same input.
:class:`ParallelWanVAE` splits the frame along its height into ``N`` contiguous row slices; each
rank runs diffusers' ``AutoencoderKLWan`` on its slice plus ``halo`` latent rows of context on each
side (clipped at the frame border), crops the halo and all-gathers the slices, so every rank returns
the full, identical output while doing roughly ``(h / N + 2 * halo) / h`` of the work.

The Wan2.1 VAE normalises per pixel over channels (RMS norm, no GroupNorm), so apart from the
convolutions' finite receptive field the only non-local layer is the single-head spatial
self-attention in the encoder's and decoder's mid block (latent resolution). With
``exact_attention`` that block sees the whole frame: each rank all-gathers the rows it owns of the
block's input, computes keys/values on the full frame and queries only for its own rows plus halo.
The remaining error comes from zero padding at the slice boundaries (receptive field of the
convolutions) and decays quickly with ``halo``.

Idea after xDiT's DistVAE / patch-parallel VAE (https://github.com/xdit-project/DistVAE), which
splits the VAE decoder into spatial patches with halo exchange; here the halo is recomputed
redundantly instead of exchanged per convolution, which needs no changes to diffusers' layers.
Model: Wan2.1 VAE (``AutoencoderKLWan``, 4x8x8, 16 latent channels).

Measured error against the single-process decode/encode (2 ranks, float32, CPU, random init with
seed 0; latent 32x8 (256x64 px); decode 2 latent frames, encode 5 frames; max |diff| over the
[-1, 1] video or the normalised latents, rel = L2 norm ratio; 1 uint8 level = 2/255 = 7.8e-3)::

    real Wan2.1 config     decode max / rel       encode max / rel
    halo                   exact      local       exact      local
       0                   1.4 / .23  1.4 / .24   .26 / .050 .26 / .051
       2                   .38 / .053 .46 / .085  .11 / .017 .12 / .022
       4                   6e-2/8e-3  .13 / .042  3e-2/5e-3  5e-2/9e-3
       6                   1e-2/1e-3  8e-2/.037   4e-3/7e-4  1e-2/5e-3
       8                   7e-4/8e-5  6e-2/.027   3e-4/5e-5  7e-3/4e-3
      12                   1e-6/2e-7  4e-2/.020   0          8e-3/3e-3

    tiny config (TINY_WAN_VAE_KWARGS), decode max (exact / local): halo 0: .74/.74, 2: .26/.24,
    4: 6e-2/.10, 8: 2e-4/8e-2; encode exact is 0 from halo 8.

Without exact attention the error plateaus at a few percent (attention is global), so the default
``halo=8`` with exact attention keeps the error well below one uint8 level. The price is
redundant work: a rank computes ``h / N + 2 * halo`` rows (``+ halo`` at the frame border), e.g.
480x832 (h = 60) on 4 GPUs: 31 rows instead of 15. These are random-init numbers; trained weights
may spread context differently.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from diffusers.models.autoencoders.autoencoder_kl_wan import WanAttentionBlock, WanMidBlock
from torch import nn

from vividhead.models.vae import VideoVAE, WanVAE

DEFAULT_HALO = 8


@dataclass(frozen=True)
class _Span:
    """Rows (latent units) of one rank: owns ``[start, stop)``, computes on ``[lo, hi)``."""

    start: int
    stop: int
    lo: int
    hi: int


def _spans(height: int, world: int, halo: int) -> list[_Span]:
    """Contiguous split of ``height`` rows into ``world`` slices (the first ``height % world`` get one
    more row), each widened by ``halo`` rows clipped to the frame."""
    base, extra = divmod(height, world)
    spans, start = [], 0
    for r in range(world):
        stop = start + base + (r < extra)
        spans.append(_Span(start, stop, max(0, start - halo), min(height, stop + halo)))
        start = stop
    return spans


def _all_gather_rows(x: torch.Tensor, rows: list[int], group) -> torch.Tensor:
    """Concatenate every rank's ``x [..., rows[r], W]`` along dim -2 (padded to equal size for the
    collective, which needs equal shapes)."""
    pad = max(rows) - x.shape[-2]
    x = F.pad(x, (0, 0, 0, pad)).contiguous() if pad else x.contiguous()
    parts = [torch.empty_like(x) for _ in rows]
    dist.all_gather(parts, x, group=group)
    return torch.cat([p[..., :n, :] for p, n in zip(parts, rows)], dim=-2)


class _SlicedAttention(nn.Module):
    """Stand-in for a mid-block ``WanAttentionBlock`` while a rank runs on its slice.

    Input ``x [B, C, T, hi - lo, W]`` (the rank's window in latent rows); all-gathers the owned rows
    of every rank into the full ``[B, C, T, h, W]`` frame and returns the block's output on the full
    frame restricted to rows ``[lo, hi)``, computing queries only for those rows. Mirrors diffusers'
    ``WanAttentionBlock.forward`` (per-frame single-head attention over all ``h * W`` positions).

    Raises:
        RuntimeError: the input is not the expected window (e.g. diffusers tiling is on).
    """

    def __init__(self, block: WanAttentionBlock, spans: list[_Span], rank: int, group) -> None:
        super().__init__()
        self.block, self.spans, self.rank, self.group = block, spans, rank, group

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.spans[self.rank]
        b, c, t, hl, w = x.shape
        if hl != s.hi - s.lo:
            raise RuntimeError(f"parallel VAE attention got {hl} rows, expected {s.hi - s.lo}")
        own = x[:, :, :, s.start - s.lo : s.stop - s.lo]
        full = _all_gather_rows(own, [p.stop - p.start for p in self.spans], self.group)
        h = full.shape[3]
        blk = self.block
        y = full.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        qkv = blk.to_qkv(blk.norm(y)).reshape(b * t, 1, c * 3, h * w).permute(0, 1, 3, 2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)  # [bt, 1, h*w, c]
        q = q[:, :, s.lo * w : s.hi * w]
        o = F.scaled_dot_product_attention(q, k, v)
        o = o.squeeze(1).permute(0, 2, 1).reshape(b * t, c, hl, w)
        o = blk.proj(o).view(b, t, c, hl, w).permute(0, 2, 1, 3, 4)
        # the residual also takes the owners' rows, so the halo rows equal the full-frame block output
        return o + full[:, :, :, s.lo : s.hi]


class ParallelWanVAE(VideoVAE):
    """Wan2.1 VAE whose encode/decode are split along the frame height over the ranks of ``group``.

    Same interface as :class:`~vividhead.models.vae.WanVAE` (``latent_channels``, ``temporal_stride``,
    ``spatial_stride``, ``encode``, ``decode``, same latent normalisation). Every rank must call
    ``encode``/``decode`` with the same input (shape and values); each returns the full result,
    identical on all ranks. Without an initialised process group, or with a group of one rank, it
    passes through to ``vae``.

    Each call is independent: diffusers clears the causal-conv cache at the start of every
    ``AutoencoderKLWan.encode/decode``, so the per-chunk calls of the streaming pipeline (decode 9 or
    2 latent frames, encode 5 frames) slice the same way as a single call.

    Args:
        vae: the wrapped :class:`WanVAE` (its ``model`` is used on every rank, unchanged between calls).
        group: ``torch.distributed`` process group (default: the world).
        halo: latent rows of context on each side of a slice (``8 * halo`` pixel rows when encoding).
        exact_attention: all-gather the mid-block attention input so attention sees the whole frame
            (one extra all-gather of ``[B, C_mid, T, h, W]`` per mid block call; decode calls the
            decoder once per latent frame). Off: attention only sees the rank's window.

    Raises:
        ValueError: ``halo < 0``; the model uses patchify (Wan2.2) or has attention blocks outside the
            mid blocks (``attn_scales``), which slicing would silently make local.
    """

    def __init__(self, vae: WanVAE, group=None, halo: int = DEFAULT_HALO, exact_attention: bool = True) -> None:
        super().__init__()
        if halo < 0:
            raise ValueError(f"halo must be >= 0, got {halo}")
        model = vae.model
        if model.config.patch_size is not None:
            raise ValueError("ParallelWanVAE supports the Wan2.1 VAE only (patch_size must be None)")
        mids = {id(a) for m in (model.encoder.mid_block, model.decoder.mid_block) for a in m.attentions}
        if any(isinstance(m, WanAttentionBlock) and id(m) not in mids for m in model.modules()):
            raise ValueError("attention outside the mid blocks (attn_scales) is not supported")
        self.vae = vae
        self.group = group
        self.halo = halo
        self.exact_attention = exact_attention
        self.latent_channels = vae.latent_channels
        self.temporal_stride = vae.temporal_stride
        self.spatial_stride = vae.spatial_stride

    def _world_rank(self) -> tuple[int, int]:
        if not (dist.is_available() and dist.is_initialized()):
            return 1, 0
        return dist.get_world_size(self.group), dist.get_rank(self.group)

    def _check(self, height: int, world: int) -> None:
        if self.vae.model.use_tiling:
            raise ValueError("disable diffusers tiling on the wrapped VAE: slices are decoded whole")
        if height < world:
            raise ValueError(f"{height} latent rows cannot be split over {world} ranks")

    @contextmanager
    def _mid_attention(self, mid: WanMidBlock, spans: list[_Span], rank: int) -> Iterator[None]:
        """Swap the mid block's attention for :class:`_SlicedAttention` on this instance, restoring it
        afterwards (also on error)."""
        if not self.exact_attention:
            yield
            return
        orig = list(mid.attentions)
        for i, a in enumerate(orig):
            mid.attentions[i] = _SlicedAttention(a, spans, rank, self.group)
        try:
            yield
        finally:
            for i, a in enumerate(orig):
                mid.attentions[i] = a

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents: [B, 16, T', h, w]`` (normalised) -> video ``[B, 3, 1+4(T'-1), 8h, 8w]`` in [-1, 1],
        in the VAE dtype, the full frame on every rank.

        Raises:
            ValueError: ``h`` < number of ranks, or diffusers tiling enabled on the wrapped model.
        """
        world, rank = self._world_rank()
        if world == 1:
            return self.vae.decode(latents)
        model, k = self.vae.model, self.spatial_stride
        h = latents.shape[3]
        self._check(h, world)
        spans = _spans(h, world, self.halo)
        s = spans[rank]
        z = latents[:, :, :, s.lo : s.hi].float() * self.vae.std + self.vae.mean
        with self._mid_attention(model.decoder.mid_block, spans, rank):
            z = z.to(model.dtype).contiguous(memory_format=self.vae.memory_format)
            out = model.decode(z, return_dict=False)[0]
        out = out[:, :, :, (s.start - s.lo) * k : (s.stop - s.lo) * k]
        return _all_gather_rows(out, [(p.stop - p.start) * k for p in spans], self.group).clamp(-1, 1)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``video: [B, 3, 1+4k, H, W]`` in [-1, 1] -> normalised latents ``[B, 16, 1+k, H/8, W/8]`` in the
        VAE dtype, the full frame on every rank.

        Raises:
            ValueError: ``H`` not a multiple of 8, ``H/8`` < number of ranks, or tiling enabled.
        """
        world, rank = self._world_rank()
        if world == 1:
            return self.vae.encode(video)
        model, k = self.vae.model, self.spatial_stride
        if video.shape[3] % k:
            raise ValueError(f"video height {video.shape[3]} is not a multiple of {k}")
        h = video.shape[3] // k
        self._check(h, world)
        spans = _spans(h, world, self.halo)
        s = spans[rank]
        x = video[:, :, :, s.lo * k : s.hi * k].to(model.dtype).contiguous(memory_format=self.vae.memory_format)
        with self._mid_attention(model.encoder.mid_block, spans, rank):
            mu = model.encode(x).latent_dist.mode()
        mu = mu[:, :, :, s.start - s.lo : s.stop - s.lo]
        lat = ((mu.float() - self.vae.mean) / self.vae.std).to(model.dtype)
        return _all_gather_rows(lat, [p.stop - p.start for p in spans], self.group)

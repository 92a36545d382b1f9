"""SoulX-FlashHead DiT: Wan2.1 transformer with reference-latent channel concat and per-frame audio
cross-attention.

Sources: FlashHead report §3.1 (arXiv 2602.07449); public inference code
``Soul-AILab/SoulX-FlashHead`` ``flash_head/src/modules/flash_head_model.py`` (class
``WanModelAudioProject``), from which the module tree -- and so the checkpoint keys -- is taken:

    patch_embedding.{weight,bias}                      Conv3d(in_dim, dim, patch, stride=patch)
    text_embedding.{0,2}.{weight,bias}                 unused at inference, kept for key parity
    time_embedding.{0,2}.{weight,bias}, time_projection.1.{weight,bias}
    blocks.{i}.self_attn.{q,k,v,o}.{weight,bias}, blocks.{i}.self_attn.norm_{q,k}.weight
    blocks.{i}.cross_attn.{q,k,v,o}.{weight,bias}, blocks.{i}.cross_attn.norm_{q,k}.weight
    blocks.{i}.norm3.{weight,bias}, blocks.{i}.ffn.{0,2}.{weight,bias}, blocks.{i}.modulation
    head.head.{weight,bias}, head.modulation
    audio_emb.proj.{0,1,3,4}.{weight,bias}             unused at inference, kept for key parity
    audio_proj.{proj1,proj1_vf,proj2,proj3,norm}.{weight,bias}

Layout: latents are diffusers-style ``[B, C, F, H, W]``; tokens ``[B, S, dim]`` with ``S = F*H*W``
in (f, h, w) order after patchify. The attention math lives in swappable processors
(:class:`SDPAProcessor`; ``inference/parallel.py`` adds xfuser's Ulysses/Ring one), so weights
and attention kernel are independent, as in diffusers' ``WanAttnProcessor``.

This file describes the network only. Sequence parallelism attaches from outside
(``vividhead.inference.parallel.enable_sequence_parallel``: hooks on the model, ``blocks`` and
``head``, as diffusers' context-parallel plan), and checkpoints are read and mapped by
``vividhead.models.loading``.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from vividhead.models.audio_proj import AudioProjModel, select_latent_audio_windows
from vividhead.models.configs import FlashHeadTransformerConfig


# ----------------------------------------------------------------------------------------------
# Rotary position embedding (3D, interleaved pairs, as Wan2.1 / diffusers WanRotaryPosEmbed)
# ----------------------------------------------------------------------------------------------
def rope_freqs_3d(
    head_dim: int, grid: tuple[int, int, int], device: torch.device, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cos/sin tables of Wan's 3D RoPE for a token grid.

    The head dim is split into (t, h, w) parts of ``d - 4*(d//6)``, ``2*(d//6)``, ``2*(d//6)``
    channels (44/42/42 for d = 128), the same split as Wan2.1 ``rope_params`` and diffusers
    ``WanRotaryPosEmbed``.

    Args:
        head_dim: per-head channels ``d`` (even).
        grid: token grid ``(f, h, w)`` after patchify.
        device: where to build the tables.

    Returns:
        ``(cos, sin)``: float32 ``[S, 1, d/2]`` with ``S = f*h*w``.
    """
    half = head_dim // 2
    parts = [half - 2 * (half // 3), half // 3, half // 3]
    tables = []
    for n_pos, n_pair in zip(grid, parts):
        inv = 1.0 / (theta ** (torch.arange(0, 2 * n_pair, 2, device=device, dtype=torch.float64) / (2 * n_pair)))
        tables.append(torch.outer(torch.arange(n_pos, device=device, dtype=torch.float64), inv))
    f, h, w = grid
    ang = torch.cat(
        [
            tables[0][:, None, None, :].expand(f, h, w, -1),
            tables[1][None, :, None, :].expand(f, h, w, -1),
            tables[2][None, None, :, :].expand(f, h, w, -1),
        ],
        dim=-1,
    ).reshape(f * h * w, 1, half)
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs ``(x[2i], x[2i+1])`` (complex-multiplication convention of
    Wan2.1's ``rope_apply``).

    Args:
        x: ``[B, S, H, d]`` any float dtype.
        cos, sin: float32 ``[S, 1, d/2]``.

    Returns:
        ``[B, S, H, d]`` in the dtype of ``x`` (math in float32).
    """
    xf = x.float().unflatten(-1, (-1, 2))  # [B, S, H, d/2, 2]
    re, im = xf[..., 0], xf[..., 1]
    out = torch.stack([re * cos - im * sin, re * sin + im * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


# ----------------------------------------------------------------------------------------------
# Attention modules (weights) and processors (math)
# ----------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """RMS norm over the last dim, computed in float32 (Wan2.1 ``WanRMSNorm``); param ``weight``."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [..., dim]`` -> same shape and dtype."""
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight


class AttentionProcessor(Protocol):
    """Computes attention for a :class:`FlashHeadAttention` from ``[B, S, H, d]`` q/k/v."""

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **kwargs) -> torch.Tensor: ...


class SDPAProcessor:
    """Plain ``F.scaled_dot_product_attention`` (FlashAttention / cuDNN / math chosen by PyTorch).

    ``q, k, v: [B, S, H, d]`` (``attn_mask`` optional bool ``[S_q, S_k]``) -> ``[B, S_q, H, d]``.
    """

    def __call__(self, q, k, v, attn_mask=None):
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=attn_mask
        )
        return out.transpose(1, 2)


class FlashHeadAttention(nn.Module):
    """q/k/v/o projections with RMS-normed q and k (Wan2.1 ``WanSelfAttention`` /
    ``WanCrossAttention`` parameter names). The math is delegated to ``self.processor``.

    Args:
        dim: model width.
        num_heads: heads (``dim % num_heads == 0``).
        eps: RMSNorm epsilon.
    """

    def __init__(self, dim: int, num_heads: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(dim, eps=eps)
        self.norm_k = RMSNorm(dim, eps=eps)
        self.processor: AttentionProcessor = SDPAProcessor()

    def set_processor(self, processor: AttentionProcessor) -> None:
        """Swap the attention math (e.g. xfuser Ulysses x Ring) without touching weights."""
        self.processor = processor

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Self-attention (``context is None``, RoPE applied) or cross-attention.

        Args:
            x: ``[B, S, dim]`` queries.
            context: ``[B, S_k, dim]`` keys/values, or ``None`` for self-attention.
            rope: ``(cos, sin)`` float32 ``[S, 1, d/2]`` for self-attention.
            attn_mask: optional bool ``[S, S_k]`` (True = attend).

        Returns:
            ``[B, S, dim]``.
        """
        b, s, _ = x.shape
        ctx = x if context is None else context
        q = self.norm_q(self.q(x)).view(b, s, self.num_heads, self.head_dim)
        k = self.norm_k(self.k(ctx)).view(b, ctx.shape[1], self.num_heads, self.head_dim)
        v = self.v(ctx).view(b, ctx.shape[1], self.num_heads, self.head_dim)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        kwargs = {} if attn_mask is None else {"attn_mask": attn_mask}
        out = self.processor(q, k, v, **kwargs)  # [B, S, H, d]
        return self.o(out.flatten(2))


class DiTAudioBlock(nn.Module):
    """Wan2.1 block with the text cross-attention replaced by per-latent-frame audio cross-attention.

    ``x = x + SA(LN1(x)(1+s0)+b0) g0``; ``x = x + CA_f(LN3(x), audio_f)`` where tokens of latent frame
    ``f`` attend only to that frame's audio tokens; ``x = x + FFN(LN2(x)(1+s1)+b1) g1``
    (public code ``DiTAudioBlock``; FlashHead §3.1).
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.dim = dim
        self.self_attn = FlashHeadAttention(dim, num_heads, eps)
        self.cross_attn = FlashHeadAttention(dim, num_heads, eps)
        self.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm2 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.norm3 = nn.LayerNorm(dim, eps=eps)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(
        self,
        x: torch.Tensor,
        audio: torch.Tensor,
        t_mod: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        frame_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One block.

        Args:
            x: ``[B, S, dim]`` tokens; ``S`` divisible by the latent frame count ``F`` unless
                ``frame_ids`` is given (sequence-parallel shards).
            audio: ``[B, F, T_a, dim]`` audio tokens per latent frame.
            t_mod: ``[B, 6, dim]`` timestep modulation.
            rope: ``(cos, sin)`` for the tokens of ``x``.
            frame_ids: optional long ``[S]`` latent-frame index of every token, for token shards whose
                boundaries are not frame-aligned (given by the sequence-parallel hooks of
                ``vividhead.inference.parallel``; the model's own forward passes none): a
                block-diagonal mask replaces the per-frame reshape, same result.

        Returns:
            ``[B, S, dim]``.
        """
        e = (self.modulation.to(t_mod.dtype) + t_mod).chunk(6, dim=1)  # 6 x [B, 1, dim]
        y = self.self_attn(self.norm1(x) * (1 + e[1]) + e[0], rope=rope)
        x = x + y * e[2]

        b, s, d = x.shape
        n_f, n_a = audio.shape[1], audio.shape[2]
        h = self.norm3(x)
        if frame_ids is None:
            # [B, F*L, dim] -> [B*F, L, dim]: each latent frame attends to its own audio tokens. Split,
            # then merge (views, as one reshape): Inductor cannot index one reshape that does both
            # over a batch size that may be 1 (batch_dynamic) and would compile batch 1 apart
            h = h.unflatten(1, (n_f, s // n_f)).flatten(0, 1)
            ca = self.cross_attn(h, audio.flatten(0, 1)).unflatten(0, (b, n_f)).flatten(1, 2)
        else:
            mask = frame_ids[:, None] == torch.arange(n_f, device=x.device).repeat_interleave(n_a)[None, :]
            ca = self.cross_attn(h, audio.reshape(b, n_f * n_a, d), attn_mask=mask)
        x = x + ca

        y = self.ffn(self.norm2(x) * (1 + e[4]) + e[3])
        return x + y * e[5]


class MLP(nn.Module):
    """LayerNorm-Linear-GELU-Linear-LayerNorm (upstream ``MLP``; only for key parity)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.LayerNorm(in_dim), nn.Linear(in_dim, in_dim), nn.GELU(), nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in_dim] -> [..., out_dim]``."""
        return self.proj(x)


class Head(nn.Module):
    """Output norm + modulation + linear to ``out_dim * prod(patch)`` channels per token."""

    def __init__(self, dim: int, out_dim: int, patch_size: tuple[int, int, int], eps: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_dim * math.prod(patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x: [B, S, dim]``, ``t: [B, dim]`` timestep embedding -> ``[B, S, out_dim*prod(patch)]``."""
        shift, scale = (self.modulation.to(t.dtype) + t[:, None, :]).chunk(2, dim=1)  # [B, 1, dim] each
        return self.head(self.norm(x) * (1 + scale) + shift)


def sinusoidal_embedding(dim: int, t: torch.Tensor) -> torch.Tensor:
    """``[cos(t w), sin(t w)]`` with ``w_i = 10000^(-i/(dim/2))`` (Wan2.1 ``sinusoidal_embedding_1d``).

    ``t: [B]`` -> float32 ``[B, dim]``.
    """
    half = dim // 2
    w = torch.pow(10000.0, -torch.arange(half, device=t.device, dtype=torch.float64) / half)
    ang = torch.outer(t.to(torch.float64), w)
    return torch.cat([ang.cos(), ang.sin()], dim=1).float()


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------
class FlashHeadTransformer(ModelMixin, ConfigMixin):
    """SoulX-FlashHead DiT (``WanModelAudioProject`` upstream), key-compatible with the released
    ``Model_Pro`` / ``Model_Lite`` checkpoints.

    Constructor kwargs are the upstream ``config.json`` keys plus the audio-adapter sizes that are
    hard-coded upstream (defaults reproduce them). See :class:`FlashHeadTransformerConfig`.
    """

    _no_split_modules = ["DiTAudioBlock"]

    @register_to_config
    def __init__(
        self,
        dim: int = 1536,
        in_dim: int = 32,
        ffn_dim: int = 8960,
        out_dim: int = 16,
        text_dim: int = 4096,
        freq_dim: int = 256,
        eps: float = 1e-6,
        vae_stride: tuple[int, int, int] = (4, 8, 8),
        patch_size: tuple[int, int, int] = (1, 2, 2),
        num_heads: int = 12,
        num_layers: int = 30,
        has_image_input: bool = False,
        audio_window: int = 5,
        audio_layers: int = 12,
        audio_channels: int = 768,
        audio_intermediate_dim: int = 512,
        audio_context_tokens: int = 32,
    ) -> None:
        super().__init__()
        if has_image_input:
            raise ValueError("has_image_input=True (CLIP image branch) is not used by FlashHead")
        patch_size = tuple(patch_size)
        self.patch_embedding = nn.Conv3d(in_dim, dim, kernel_size=patch_size, stride=patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(text_dim, dim), nn.GELU(approximate="tanh"), nn.Linear(dim, dim))
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))
        self.blocks = nn.ModuleList([DiTAudioBlock(dim, num_heads, ffn_dim, eps) for _ in range(num_layers)])
        self.head = Head(dim, out_dim, patch_size, eps)
        self.audio_emb = MLP(audio_channels, dim)
        self.audio_proj = AudioProjModel(
            seq_len=audio_window,
            seq_len_vf=audio_window + vae_stride[0] - 1,
            blocks=audio_layers,
            channels=audio_channels,
            intermediate_dim=audio_intermediate_dim,
            output_dim=dim,
            context_tokens=audio_context_tokens,
            norm_output_audio=True,
        )
        self._rope_cache: dict = {}

    # -- construction helpers ------------------------------------------------------------------
    @classmethod
    def from_config_dataclass(cls, cfg: FlashHeadTransformerConfig) -> FlashHeadTransformer:
        """Build from a :class:`FlashHeadTransformerConfig` (random init)."""
        return cls(**cfg.to_kwargs())

    def set_attention_processor(self, self_attn: AttentionProcessor, cross_attn: AttentionProcessor | None = None) -> None:
        """Swap the processor of every self-attention (and optionally cross-attention) module."""
        for blk in self.blocks:
            blk.self_attn.set_processor(self_attn)
            if cross_attn is not None:
                blk.cross_attn.set_processor(cross_attn)

    def token_grid(self, latent_shape: tuple[int, ...] | torch.Size) -> tuple[int, int, int]:
        """Token grid ``(F/pt, H/ph, W/pw)`` of latents of shape ``[B, C, F, H, W]`` after patchify;
        the sequence length is its product."""
        pt, ph, pw = self.config.patch_size
        return latent_shape[2] // pt, latent_shape[3] // ph, latent_shape[4] // pw

    @torch.compiler.disable
    def rope_tables(self, grid: tuple[int, int, int], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Cos/sin tables of :func:`rope_freqs_3d` for a token grid: float32 ``[S, 1, d/2]`` each.

        Eager and cached per grid (a streaming session alternates at most two chunk lengths):
        tensors created inside a CUDA-graph replay must not be kept across replays.
        """
        key = (grid, str(device))
        if key not in self._rope_cache:
            if len(self._rope_cache) >= 4:
                self._rope_cache.pop(next(iter(self._rope_cache)))
            self._rope_cache[key] = rope_freqs_3d(self.config.dim // self.config.num_heads, grid, device)
        return self._rope_cache[key]

    # -- forward ---------------------------------------------------------------------------------
    def forward(
        self, x: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        """Predict the flow-matching velocity for one denoising step.

        Args:
            x: ``[B, C, F, H, W]`` noisy latents (model dtype, e.g. bf16), ``C = out_dim``.
            timestep: ``[B]`` or ``[1]`` shifted timesteps on the 0..1000 scale.
            context: ``[B, F_v, W, L, D]`` Wav2Vec windows per video frame,
                ``F_v = 1 + vae_stride[0] * (F - 1)`` (33 for F = 9 Pro, F = 5 Lite).
            y: ``[B, C, F, H, W]`` reference latent (concatenated on channels).

        Returns:
            ``[B, C, F, H, W]`` velocity ``v`` with ``x_0 = x_t - t v`` (t on 0..1 scale).

        Raises:
            ValueError: shape mismatches between ``x``, ``y`` and ``context``.
        """
        cfg = self.config
        if x.shape != y.shape:
            raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} differ")
        f = x.shape[2]
        pt, ph, pw = cfg.patch_size
        if context.shape[1] != 1 + cfg.vae_stride[0] * (f - 1):
            raise ValueError(f"context has {context.shape[1]} video frames for {f} latent frames")
        dtype = self.patch_embedding.weight.dtype
        grid = self.token_grid(x.shape)
        rope = self.rope_tables(grid, x.device)  # first: the eager call splits the compiled graph here
        # read after the split: an int carried across it would pin the resumed graph to one batch size
        b = x.shape[0]

        # 1. Patch & position embedding: [B, 2C, F, H, W] -> [B, S, dim]
        tokens = self.patch_embedding(torch.cat([x, y], dim=1).to(dtype))
        if tuple(tokens.shape[2:]) != grid:
            raise ValueError(f"latent grid {tuple(x.shape[2:])} not divisible by patch {cfg.patch_size}")
        tokens = tokens.flatten(2).transpose(1, 2)

        # 2. Timestep embedding (upstream casts t to the model dtype before the sinusoid)
        t = timestep.to(dtype).expand(b)
        t_emb = self.time_embedding(sinusoidal_embedding(cfg.freq_dim, t).to(dtype))  # [B, dim]
        t_mod = self.time_projection(t_emb).unflatten(1, (6, cfg.dim))  # [B, 6, dim]

        # 3. Audio tokens per latent frame: [B, F, T_a, dim]
        first, later = select_latent_audio_windows(context.to(dtype), cfg.vae_stride[0], cfg.audio_window)
        audio = self.audio_proj(first, later)

        # 4. Transformer blocks
        for blk in self.blocks:
            tokens = blk(tokens, audio, t_mod, rope)

        # 5. Output norm, projection & unpatchify
        tokens = self.head(tokens, t_emb)  # [B, S, out_dim * prod(patch)]
        gf, gh, gw = grid
        out = tokens.view(b, gf, gh, gw, pt, ph, pw, cfg.out_dim)
        # copy, then view (what the reshape did): a reshape of the permuted view makes Inductor
        # check strides against a batch size of 1 (batch_dynamic: batch 1 compiled apart)
        out = out.permute(0, 7, 1, 4, 2, 5, 3, 6).contiguous().view(b, cfg.out_dim, gf * pt, gh * ph, gw * pw)
        return out

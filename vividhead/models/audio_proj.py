"""Audio conditioning of SoulX-FlashHead: per-frame Wav2Vec windows -> per-latent-frame audio tokens.

Source: FlashHead report §3.1 (Temporal Audio Context Cache, audio projection) and the public code
(``flash_head/src/modules/flash_head_model.py``: ``AudioProjModel`` and the window selection in
``WanModelAudioProject.forward``). Parameter names (``proj1``, ``proj1_vf``, ``proj2``, ``proj3``,
``norm``) match the released checkpoints.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vividhead.models.compiling import symbolic_batch


def select_latent_audio_windows(
    context: torch.Tensor, vae_scale: int, audio_window: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group per-video-frame audio windows by latent frame.

    Video frame 0 maps to latent frame 0 and keeps its full window. Each later latent frame covers
    ``vae_scale`` video frames: its first frame keeps the past half of its window plus the centre,
    middle frames keep only the centre, the last frame keeps the centre plus the future half
    (public code, ``WanModelAudioProject.forward``).

    Args:
        context: ``[B, F_v, W, L, D]`` float -- one window of ``W = audio_window`` Wav2Vec frames of
            ``L`` layers x ``D`` channels per video frame, ``F_v = 1 + vae_scale * n`` frames.
        vae_scale: temporal VAE stride (4 Wan, 8 LTX).
        audio_window: ``W`` (odd).

    Returns:
        ``(first, later)``: ``first [B, 1, W, L, D]``; ``later [B, n, W + vae_scale - 1, L, D]``.

    Raises:
        ValueError: if ``F_v - 1`` is not a multiple of ``vae_scale`` or the window size differs.
    """
    b, f_v, w, layers, d = context.shape
    if w != audio_window:
        raise ValueError(f"context window {w} != audio_window {audio_window}")
    if (f_v - 1) % vae_scale:
        raise ValueError(f"{f_v} video frames is not 1 + {vae_scale} k")
    mid = audio_window // 2
    first, later = context[:, :1], context[:, 1:]
    if symbolic_batch():
        # a compile with a symbolic batch size (vividhead.models.compiling.batch_dynamic): a slice
        # along dim 1 is contiguous only when B == 1, so the reshape below (and the Linear over
        # ``first``) would branch on B == 1 and give batch 1 a graph of its own; copies do not.
        # Elsewhere the views stay (a copy rounds the Linear over ``first`` differently at B >= 2)
        first = first.clone(memory_format=torch.contiguous_format)
        later = later.clone(memory_format=torch.contiguous_format)
    # [B, F_v - 1, W, L, D] -> [B, n, vae_scale, W, L, D]
    later = later.reshape(b, (f_v - 1) // vae_scale, vae_scale, w, layers, d)
    head = later[:, :, :1, : mid + 1]  # [B, n, 1, mid+1, L, D]
    middle = later[:, :, 1:-1, mid : mid + 1]  # [B, n, vae_scale-2, 1, L, D]
    tail = later[:, :, -1:, mid:]  # [B, n, 1, mid+1, L, D]
    # drop the size-1 dims by squeeze (views, as the reshapes they replace were): with one later
    # latent frame (n = 1, a cold-start chunk) a reshape asks whether the slice is contiguous, which
    # a symbolic batch size answers only by branching on B == 1 (batch_dynamic: batch 1 apart)
    later = torch.cat([head.squeeze(2), middle.squeeze(3), tail.squeeze(2)], dim=2)  # [B, n, W + vae_scale - 1, L, D]
    return first, later


class AudioProjModel(nn.Module):
    """MLP from stacked Wav2Vec windows to ``context_tokens`` audio tokens per latent frame.

    Args:
        seq_len: window of the first latent frame (``audio_window``, 5).
        seq_len_vf: window of later latent frames (``audio_window + vae_scale - 1``: 8 Pro, 12 Lite).
        blocks: Wav2Vec layers stacked (12 for wav2vec2-base).
        channels: Wav2Vec width (768).
        intermediate_dim: hidden width (512).
        output_dim: token width (the DiT ``dim``).
        context_tokens: tokens per latent frame (32).
        norm_output_audio: LayerNorm on the tokens (True in the released models).
    """

    def __init__(
        self,
        seq_len: int = 5,
        seq_len_vf: int = 8,
        blocks: int = 12,
        channels: int = 768,
        intermediate_dim: int = 512,
        output_dim: int = 1536,
        context_tokens: int = 32,
        norm_output_audio: bool = True,
    ) -> None:
        super().__init__()
        self.context_tokens = context_tokens
        self.output_dim = output_dim
        self.proj1 = nn.Linear(seq_len * blocks * channels, intermediate_dim)
        self.proj1_vf = nn.Linear(seq_len_vf * blocks * channels, intermediate_dim)
        self.proj2 = nn.Linear(intermediate_dim, intermediate_dim)
        self.proj3 = nn.Linear(intermediate_dim, context_tokens * output_dim)
        self.norm = nn.LayerNorm(output_dim) if norm_output_audio else nn.Identity()

    def forward(self, first: torch.Tensor, later: torch.Tensor) -> torch.Tensor:
        """Project audio windows to tokens.

        Args:
            first: ``[B, 1, W, L, D]`` window of latent frame 0.
            later: ``[B, n, W', L, D]`` windows of latent frames 1..n.

        Returns:
            ``[B, 1 + n, context_tokens, output_dim]`` in the dtype of ``first``; the LayerNorm runs in
            float32 as upstream (``amp.autocast(dtype=float32)``).
        """
        b = first.shape[0]
        a0 = F.relu(self.proj1(first.flatten(2)))  # [B, 1, inter]
        a1 = F.relu(self.proj1_vf(later.flatten(2)))  # [B, n, inter]
        a = F.relu(self.proj2(torch.cat([a0, a1], dim=1)))  # [B, F, inter]
        tokens = self.proj3(a).reshape(b, a.shape[1], self.context_tokens, self.output_dim)
        if isinstance(self.norm, nn.LayerNorm):
            tokens = F.layer_norm(
                tokens.float(), self.norm.normalized_shape, self.norm.weight.float(), self.norm.bias.float(),
                self.norm.eps,
            ).to(first.dtype)
        return tokens

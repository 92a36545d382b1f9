"""Wav2Vec 2.0 multi-layer features at the video frame rate (FlashHead §3.1).

The public code (``flash_head/audio_analysis/wav2vec2.py``, inherited from MultiTalk) runs
wav2vec2-base-960h with one change: the 50 Hz CNN features are linearly interpolated
(``align_corners=True``) to the number of video frames *before* the transformer encoder, so every
layer's output is already at 25 fps. The 12 transformer layers' outputs are stacked
(``hidden_states[1:]``), giving ``E in R^{S x 12 x 768}``.

We reuse the transformers ``Wav2Vec2Model`` modules (so its checkpoints load as usual with
``from_pretrained``) and only re-implement the forward with the interpolation.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Wav2Vec2Config, Wav2Vec2Model

TINY_WAV2VEC_KWARGS = dict(
    hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
    conv_dim=(8,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
    do_stable_layer_norm=False, feat_extract_norm="group",
)


class Wav2VecFeatures(nn.Module):
    """Frame-rate Wav2Vec features.

    Args:
        model: a transformers ``Wav2Vec2Model`` with the post-LN encoder (``do_stable_layer_norm=False``,
            as wav2vec2-base-960h).
        normalize: zero-mean / unit-variance the waveform first (what
            ``Wav2Vec2FeatureExtractor(do_normalize=True)`` does for wav2vec2-base-960h).

    Raises:
        ValueError: for a stable-layer-norm (large / pre-LN) model.
    """

    def __init__(self, model: Wav2Vec2Model, normalize: bool = True) -> None:
        super().__init__()
        if model.config.do_stable_layer_norm:
            raise ValueError("only the post-LN wav2vec2 encoder (wav2vec2-base) is supported")
        self.model = model
        self.normalize = normalize

    @property
    def num_layers(self) -> int:
        """Stacked layers ``L`` (12 for base)."""
        return self.model.config.num_hidden_layers

    @property
    def channels(self) -> int:
        """Feature width ``D`` (768 for base)."""
        return self.model.config.hidden_size

    @classmethod
    def from_pretrained(cls, path: str | Path) -> Wav2VecFeatures:
        """Load a local transformers folder (e.g. ``wav2vec2-base-960h``), offline."""
        return cls(Wav2Vec2Model.from_pretrained(str(path), local_files_only=True)).eval().requires_grad_(False)

    @classmethod
    def tiny(cls) -> Wav2VecFeatures:
        """Random tiny model for CPU tests (same 320x CNN downsampling)."""
        return cls(Wav2Vec2Model(Wav2Vec2Config(**TINY_WAV2VEC_KWARGS))).eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, audio: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Encode audio to per-video-frame multi-layer features.

        Args:
            audio: ``[B, N]`` float32 waveform at 16 kHz.
            num_frames: video frames ``S`` covered by the audio (``N * fps / 16000``).

        Returns:
            float32 ``[B, S, L, D]``: layer ``l`` output at video frame ``s``.
        """
        m = self.model
        dtype = next(m.parameters()).dtype
        x = audio.float()
        if self.normalize:
            x = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-7)
        feats = m.feature_extractor(x.to(dtype))  # [B, C, N / 320]
        feats = F.interpolate(feats.float(), size=num_frames, mode="linear", align_corners=True).to(dtype)
        hidden, _ = m.feature_projection(feats.transpose(1, 2))  # [B, S, D]
        enc = m.encoder
        hidden = enc.layer_norm(hidden + enc.pos_conv_embed(hidden))
        outs = []
        for layer in enc.layers:
            hidden = layer(hidden)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
            outs.append(hidden)
        return torch.stack(outs, dim=2).float()  # [B, S, L, D]

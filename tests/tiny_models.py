"""Toy FlashHead variants for CPU tests and benchmark dry runs (shapes only; same code paths as the
released variants).

Importable as ``tiny_models`` from every test (``tests/conftest.py`` puts ``tests/`` on ``sys.path``)
and from the benchmarks (``benchmarks/_common.py`` does the same).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vividhead.models.configs import LITE_1_3B, PRO_1_3B, FlashHeadTransformerConfig, FlashHeadVariant

#: A two-layer, 32-wide DiT with a 16-channel, two-layer audio adapter (Pro latent layout: 4 channels).
TINY_DIT = FlashHeadTransformerConfig(
    dim=32, in_dim=8, ffn_dim=64, out_dim=4, text_dim=16, freq_dim=32, num_heads=2, num_layers=2,
    audio_layers=2, audio_channels=16, audio_intermediate_dim=32, audio_context_tokens=4,
)

#: Pro layout (Wan VAE, 4x8x8, motion 5) at 32x32 px.
TINY_PRO = dataclasses.replace(
    PRO_1_3B, name="tiny-pro", transformer=TINY_DIT, checkpoint_subdir="",
    streaming=dataclasses.replace(PRO_1_3B.streaming, height_px=32, width_px=32),
)

#: Lite layout (LTX VAE, 8x32x32, patch 1, motion 9) at 64x64 px.
TINY_LITE = dataclasses.replace(
    LITE_1_3B, name="tiny-lite", checkpoint_subdir="",
    transformer=dataclasses.replace(TINY_DIT, in_dim=16, out_dim=8, vae_stride=(8, 32, 32), patch_size=(1, 1, 1)),
    streaming=dataclasses.replace(LITE_1_3B.streaming, height_px=64, width_px=64),
)

TINY_VARIANTS: dict[str, FlashHeadVariant] = {v.name: v for v in (TINY_PRO, TINY_LITE)}


def tiny_models(variant: FlashHeadVariant = TINY_PRO, **kwargs):
    """:meth:`FlashHeadModels.random` of a toy variant with the few-channel VAE and Wav2Vec."""
    from vividhead.inference.pipeline import FlashHeadModels

    return FlashHeadModels.random(variant, tiny_encoders=True, **kwargs)


def write_tiny_export(out: str | Path, variant: FlashHeadVariant = TINY_PRO, seed: int = 0) -> Path:
    """A ``vividhead train export`` folder of a toy variant at seeded random weights (what
    ``vividhead infer --checkpoint`` and ``FlashHeadModels.from_export`` load)."""
    from vividhead.training.trainers.export import write_export
    from vividhead.training.trainers.models import FrozenEncoders

    m = tiny_models(variant, seed=seed)
    return write_export(out, m.transformer.state_dict(), variant, FrozenEncoders(m.vae, m.audio_encoder),
                        weights="raw", step=0, source="random weights (test)")

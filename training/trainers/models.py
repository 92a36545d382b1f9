"""Build the networks a trainer needs from its ``model`` section: the FlashHead DiT (trained) and
the frozen VAE and Wav2Vec 2.0 encoder.

Initialisation (FlashHead report §4; summary in README "Training"):

* ``random``   -- seeded random init of the variant's DiT (with ``transformer`` overrides);
* ``flashhead`` -- a released ``Model_Pro`` / ``Model_Lite`` folder (strict keys);
* ``wan_t2v``  -- a diffusers Wan2.1-T2V transformer folder mapped strictly into the FlashHead
  layout (:func:`vividhead.models.loading.flashhead_from_wan_t2v`);
* ``checkpoint`` -- a folder written by ``vividhead train export`` (DiT, VAE, Wav2Vec).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from vividhead.export_format import TRANSFORMER_DIR, read_export
from vividhead.models.audio_encoder import TINY_WAV2VEC_KWARGS, Wav2VecFeatures
from vividhead.models.configs import FlashHeadTransformerConfig, FlashHeadVariant, get_variant
from vividhead.models.flashhead import FlashHeadTransformer
from vividhead.models.vae import VideoVAE, WanVAE, accelerate_vae, build_vae, load_vae
from vividhead.training.trainers.config import ModelConfig, ParallelConfig

logger = logging.getLogger(__name__)

#: DiT submodules the forward pass does not use (text embedding, unused audio MLP).
UNUSED_MODULES = ("text_embedding", "audio_emb")


@dataclass
class FrozenEncoders:
    """The frozen parts, on the trainer's device, in eval mode without gradients.

    Attributes:
        vae: :class:`VideoVAE` (normalised latents in and out).
        audio: :class:`Wav2VecFeatures` (float32).
        vae_speedup: what :func:`speed_up_vae` applied to ``vae`` (e.g. ``"wan-accelerated"``);
            ``None``: the stock VAE.
    """

    vae: VideoVAE
    audio: Wav2VecFeatures
    vae_speedup: str | None = None


def resolve_variant(cfg: ModelConfig) -> FlashHeadVariant:
    """The variant with the section's ``transformer`` overrides and frame size applied.

    Raises:
        ValueError: unknown variant or a bad transformer field.
    """
    v = get_variant(cfg.variant)
    tcfg = v.transformer
    if cfg.transformer:
        known = {f.name for f in dataclasses.fields(FlashHeadTransformerConfig)}
        bad = sorted(set(cfg.transformer) - known)
        if bad:
            raise ValueError(f"model.transformer: unknown keys {bad}")
        over = {k: tuple(x) if isinstance(x, list) else x for k, x in cfg.transformer.items()}
        tcfg = dataclasses.replace(tcfg, **over)
    streaming = v.streaming
    if cfg.height_px or cfg.width_px:
        streaming = dataclasses.replace(streaming, height_px=cfg.height_px or streaming.height_px,
                                        width_px=cfg.width_px or streaming.width_px)
    return dataclasses.replace(v, transformer=tcfg, streaming=streaming)


def random_wav2vec(layers: int, channels: int, tiny: bool) -> Wav2VecFeatures:
    """A random Wav2Vec 2.0 of ``layers`` x ``channels`` (wav2vec2-base shapes unless ``tiny``)."""
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    kwargs = dict(TINY_WAV2VEC_KWARGS) if tiny else {}
    kwargs.update(num_hidden_layers=layers, hidden_size=channels)
    return Wav2VecFeatures(Wav2Vec2Model(Wav2Vec2Config(**kwargs))).eval().requires_grad_(False)


def build_transformer(cfg: ModelConfig, variant: FlashHeadVariant) -> FlashHeadTransformer:
    """The DiT in float32 on the CPU, trainable, initialised as ``cfg.init`` says.

    Raises:
        FileNotFoundError, KeyError: see the loaders (missing files, keys that do not map).
    """
    from vividhead.models import loading

    if cfg.init == "random":
        torch.manual_seed(cfg.seed)
        model = FlashHeadTransformer.from_config_dataclass(variant.transformer)
    elif cfg.init == "flashhead":
        model = loading.load_flashhead_transformer(cfg.init_path, dtype=torch.float32)
    elif cfg.init == "checkpoint":
        model = loading.load_flashhead_transformer(Path(cfg.init_path) / TRANSFORMER_DIR, dtype=torch.float32)
    else:
        model = loading.flashhead_from_wan_t2v(cfg.init_path, variant.transformer)
    model = model.float().train().requires_grad_(True)
    # Kept for key parity with the released checkpoints, never used by the forward pass: frozen,
    # so they get no optimiser state and export unchanged.
    for name in UNUSED_MODULES:
        getattr(model, name).requires_grad_(False)
    return model


def speed_up_vae(vae: VideoVAE, device: torch.device, parallel: ParallelConfig) -> str | None:
    """Apply ``parallel.fast_vae`` to a frozen VAE already on ``device``, in place: inference's VAE
    speed-up (:func:`vividhead.models.vae.accelerate_vae`, the one code both use), compiled only on
    CUDA. ``auto``: on CUDA only (``vividhead infer`` / ``serve`` take their fast path on a GPU
    only); ``true``: on the CPU too, where a Wan VAE gets the eager rewrites (channels-last, one-pass
    decode / encode: the same function in float32, to ~1e-6) and an LTX VAE is left as it is (its
    speed-up is all compilation); ``false``: nothing.

    Returns:
        what was applied (``accelerate_vae``'s description, e.g. ``"wan-accelerated+compiled
        (default)"``), ``None`` when nothing was.

    Raises:
        ValueError: an unknown ``parallel.vae_compile`` mode (the config loader refuses it first).
    """
    on_gpu = device.type == "cuda"
    if parallel.fast_vae is False or (not on_gpu and parallel.fast_vae == "auto"):
        return None
    if not on_gpu and not isinstance(getattr(vae, "vae", vae), WanVAE):
        return None
    return accelerate_vae(vae, on_gpu=on_gpu, compile_mode=parallel.vae_compile)


def build_encoders(cfg: ModelConfig, variant: FlashHeadVariant, device: torch.device,
                   dtype: torch.dtype, parallel: ParallelConfig | None = None) -> FrozenEncoders:
    """The frozen VAE (``dtype``) and Wav2Vec (float32) on ``device``; the VAE sped up as
    ``parallel.fast_vae`` says (:func:`speed_up_vae`; the trainers and ``cache-latents`` pass
    their ``parallel`` section). ``parallel=None``: the stock VAE (``train export``, which saves it
    with safetensors: that refuses non-contiguous tensors, which channels-last weights are).

    Raises:
        FileNotFoundError: a weights path that does not exist.
        ValueError: an unknown ``parallel.vae_compile`` mode.
    """
    t = variant.transformer
    if cfg.init == "checkpoint":
        export = read_export(cfg.init_path)  # checks the format version; vae/config.json is the VAE config
        vae = load_vae(variant.vae, export.vae_dir)
        audio = Wav2VecFeatures.from_pretrained(export.audio_encoder_dir)
    else:
        if cfg.vae_path:
            vae = load_vae(variant.vae, cfg.vae_path)
        else:
            torch.manual_seed(cfg.seed + 1)
            vae = build_vae(variant.vae, tiny=cfg.tiny_encoders)
        if cfg.wav2vec_path:
            audio = Wav2VecFeatures.from_pretrained(cfg.wav2vec_path)
        else:
            torch.manual_seed(cfg.seed + 2)
            audio = random_wav2vec(t.audio_layers, t.audio_channels, cfg.tiny_encoders)
    vae = vae.to(device, dtype).eval().requires_grad_(False)
    speedup = speed_up_vae(vae, device, parallel) if parallel is not None else None
    if speedup is not None:
        logger.info("frozen VAE: %s", speedup)
    return FrozenEncoders(vae, audio.to(device).eval().requires_grad_(False), vae_speedup=speedup)

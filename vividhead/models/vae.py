"""Video VAEs of the FlashHead family, on diffusers' ``AutoencoderKLWan`` (Pro, 14B) and
``AutoencoderKLLTXVideo`` (Lite), with the latent normalisation the DiT was trained on.

Both wrappers take and return videos ``[B, 3, T, H, W]`` in ``[-1, 1]`` and normalised latents
``[B, C, T', H', W']`` (``(z - mean) / std``, per channel). By default both use the posterior mean
(no sampling) and clamp decoded videos to [-1, 1], so encode/decode are deterministic (what the
trainers use). Upstream (``flash_head/wan/modules/vae.py``, ``flash_head/ltx_video/ltx_vae.py``)
normalises the same way; its Wan wrapper also takes the mean and clamps, but its LTX wrapper samples
the posterior and returns the decode unclamped. :class:`LTXVAE` does either, per
:attr:`LTXVAE.sample_posterior` / :attr:`LTXVAE.clamp_decode` (streaming inference sets them from
:class:`vividhead.streaming.fidelity.FidelityOptions`).

Checkpoints: diffusers-format state dicts load directly; original-format ones (``Wan2.1_VAE.pth``,
LTX-Video ``VAE_LTX``) are converted with diffusers' own single-file converters
(``convert_wan_vae_to_diffusers``, ``convert_ltx_vae_checkpoint_to_diffusers``) and then loaded
with strict key matching.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKLLTXVideo, AutoencoderKLWan
from torch import nn

from vividhead.models.configs import VAEKind
from vividhead.models.loading import load_state_dict_file, load_strict, read_config_json


class VideoVAE(nn.Module):
    """Common interface: ``encode(video) -> latents``, ``decode(latents) -> video``.

    Attributes:
        latent_channels: ``C`` of the latents.
        temporal_stride, spatial_stride: compression factors (frames ``T = stride * (T' - 1) + 1``).
    """

    latent_channels: int
    temporal_stride: int
    spatial_stride: int

    def encode(self, video: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """``video: [B, 3, T, H, W]`` in [-1, 1] -> normalised latents ``[B, C, T', H', W']``."""
        raise NotImplementedError

    def decode(self, latents: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        """Normalised latents ``[B, C, T', H', W']`` -> video ``[B, 3, T, H, W]`` in [-1, 1]."""
        raise NotImplementedError


class WanVAE(VideoVAE):
    """Wan2.1 VAE (4x8x8, 16 channels) with Wan's per-channel latent mean/std.

    Args:
        model: a diffusers ``AutoencoderKLWan``.
    """

    def __init__(self, model: AutoencoderKLWan) -> None:
        super().__init__()
        self.model = model
        cfg = model.config
        self.latent_channels = cfg.z_dim
        self.temporal_stride = 2 ** sum(cfg.temperal_downsample)
        self.spatial_stride = 2 ** (len(cfg.dim_mult) - 1)
        self.register_buffer("mean", torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1), persistent=False)
        self.memory_format = torch.contiguous_format

    def accelerate(self, compile_norms: bool = True, one_pass: bool = True,
                   compile_coders: str | None = None) -> dict[str, int]:
        """Channels-last execution, time-only causal padding, fused RMS norm + SiLU, (``one_pass``)
        whole-chunk decode / encode without the causal feature cache and (``compile_coders``, a
        ``torch.compile`` mode) the compiled decoder / encoder
        (:func:`vividhead.models.wan_vae_fast.accelerate_wan_vae`); same weights and math.

        Returns:
            counts of rewritten modules.
        """
        from vividhead.models.wan_vae_fast import accelerate_wan_vae

        self.memory_format = torch.channels_last_3d
        return accelerate_wan_vae(self.model, compile_norms=compile_norms, one_pass=one_pass,
                                  compile_coders=compile_coders)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """``video: [B, 3, 1+4k, H, W]`` in [-1, 1] -> normalised latents ``[B, 16, 1+k, H/8, W/8]``
        (float32 statistics, returned in the VAE dtype)."""
        dtype = self.model.dtype
        video = video.to(dtype).contiguous(memory_format=self.memory_format)
        mu = self.model.encode(video).latent_dist.mode()
        return ((mu.float() - self.mean) / self.std).to(dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents: [B, 16, T', h, w]`` -> video ``[B, 3, 1+4(T'-1), 8h, 8w]`` clamped to [-1, 1]."""
        dtype = self.model.dtype
        z = (latents.float() * self.std + self.mean).to(dtype).contiguous(memory_format=self.memory_format)
        return self.model.decode(z, return_dict=False)[0].clamp(-1, 1)


class LTXVAE(VideoVAE):
    """LTX-Video VAE (8x32x32, 128 channels) with its per-channel statistics.

    Args:
        model: a diffusers ``AutoencoderKLLTXVideo`` (``latents_mean`` / ``latents_std`` buffers).

    Attributes:
        sample_posterior: ``encode`` draws ``z = mu + sigma * eps`` from the posterior, as the released
            FlashHead LTX wrapper does (``latent_dist.sample()``); ``False`` (default): ``z = mu``.
        clamp_decode: ``decode`` clamps to [-1, 1] (default); the released wrapper does not (values
            slightly outside reach its colour correction).
    """

    def __init__(self, model: AutoencoderKLLTXVideo) -> None:
        super().__init__()
        self.model = model
        self.sample_posterior = False
        self.clamp_decode = True
        cfg = model.config
        self.latent_channels = cfg.latent_channels
        self.temporal_stride = model.temporal_compression_ratio
        self.spatial_stride = model.spatial_compression_ratio

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        return (
            self.model.latents_mean.float().view(1, -1, 1, 1, 1),
            self.model.latents_std.float().view(1, -1, 1, 1, 1),
        )

    @torch.no_grad()
    def encode(self, video: torch.Tensor,
               generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """``video: [B, 3, 1+8k, H, W]`` in [-1, 1] -> normalised latents ``[B, 128, 1+k, H/32, W/32]``.

        Args:
            generator: draws ``eps`` when :attr:`sample_posterior` is on (``None``: torch's global
                RNG, as upstream); a list of B generators draws row b from generator b (diffusers'
                ``randn_tensor``), the same draws as encoding each row alone; unused otherwise.
        """
        from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

        # The posterior sample (with the session's generator) stays outside encode_moments, the part
        # a compiled VAE compiles: one graph without a break at the sample.
        posterior = DiagonalGaussianDistribution(self.encode_moments(video))
        mu = posterior.sample(generator) if self.sample_posterior else posterior.mode()
        mean, std = self._stats()
        return ((mu.float() - mean) / std).to(self.model.dtype)

    def encode_moments(self, video: torch.Tensor) -> torch.Tensor:
        """``video: [B, 3, 1+8k, H, W]`` -> posterior moments ``[B, 2 * 128, 1+k, H/32, W/32]`` (mean,
        log-variance; the VAE dtype), as ``AutoencoderKLLTXVideo.encode`` computes them."""
        return self.model.encode(video.to(self.model.dtype)).latent_dist.parameters

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents: [B, 128, T', h, w]`` -> video ``[B, 3, 1+8(T'-1), 32h, 32w]``, in [-1, 1] when
        :attr:`clamp_decode` is on (else as decoded: a little outside at times)."""
        dtype = self.model.dtype
        mean, std = self._stats()
        z = (latents.float() * std + mean).to(dtype)
        temb = None
        if self.model.config.timestep_conditioning:
            temb = torch.zeros(z.shape[0], device=z.device, dtype=dtype)
        video = self.model.decode(z, temb=temb, return_dict=False)[0]
        return video.clamp(-1, 1) if self.clamp_decode else video


def accelerate_vae(vae: nn.Module, on_gpu: bool, compile_mode: str | None = "default",
                   dynamic_batch: bool = False) -> str | None:
    """The VAE speed-up of streaming inference, in place: what ``FlashHeadModels.optimize(fast_vae=True)``
    applies (``vividhead infer`` / ``serve`` on a GPU) and what the trainers apply to their frozen
    VAE (``parallel.fast_vae``), so both run the same VAE code.

    * :class:`WanVAE`: :meth:`WanVAE.accelerate` (channels-last weights and activations, time-only
      causal padding, fused RMS norm + SiLU, one-pass decode / encode without the causal feature
      cache); on a GPU the fused norms are compiled and, with ``compile_mode``, the whole decoder and
      encoder too (one static graph per input shape). Exact in float32, within bf16 rounding of
      stock in bf16 (``tests/inference/test_wan_vae_fast.py``); decode of a 33-frame 512x512 chunk
      499 ms stock -> 233 ms one pass -> ~187 ms compiled on an H200 (docs/benchmarks.md). On the
      CPU nothing is compiled (the eager rewrites only).
    * :class:`LTXVAE`: ``torch.compile`` of ``decode`` and of ``encode_moments`` (entered without
      autograd, :func:`vividhead.models.compiling.compile_no_grad`), the posterior sample staying
      eager; with ``dynamic_batch`` a symbolic batch dimension
      (:func:`vividhead.models.compiling.batch_dynamic`). All of LTX's speed-up is compilation, on
      whatever device (Inductor on the CPU needs a C++ compiler); ``compile_mode`` does not apply.
    * anything else (a test stand-in): unchanged.

    On a GPU it also sets ``torch.backends.cudnn.benchmark`` (process-wide, as ``optimize`` always
    did), so the trainers' frozen VAE picks its convolution algorithms as inference does.

    A ``ParallelWanVAE`` (its Wan VAE as ``.vae``) is accelerated through that VAE. Weights keep
    their values (only their memory format changes), so ``state_dict`` still loads into a stock VAE;
    the call is not reversible.

    Args:
        vae: a :class:`VideoVAE` (or a wrapper holding one as ``.vae``), on its final device and
            dtype (``.to`` keeps the channels-last weights).
        on_gpu: the VAE runs on CUDA (compiles the Wan norms and coders).
        compile_mode: ``torch.compile`` mode of the Wan decoder and encoder on a GPU, one of
            :data:`vividhead.models.wan_vae_fast.COMPILE_MODES` (``"default"``: the inference
            default); ``None``: only the fused norms are compiled.
        dynamic_batch: LTX only, see above.

    Returns:
        what was applied: ``"wan-accelerated"``, ``"wan-accelerated+compiled (MODE)"``,
        ``"ltx-compiled"``, ``"ltx-compiled, dynamic batch"``; ``None``: nothing (another VAE).

    Raises:
        ValueError: an unknown ``compile_mode`` for a Wan VAE on a GPU.
    """
    from vividhead.models.compiling import batch_dynamic, compile_no_grad

    inner = getattr(vae, "vae", vae)  # a ParallelWanVAE wraps a WanVAE as .vae
    if on_gpu:  # Inductor leaves convolutions to cuDNN: let it pick the fastest algorithm per shape
        torch.backends.cudnn.benchmark = True
    if isinstance(inner, WanVAE):
        inner.accelerate(compile_norms=on_gpu, compile_coders=compile_mode if on_gpu else None)
        return "wan-accelerated" + (f"+compiled ({compile_mode})" if on_gpu and compile_mode else "")
    if isinstance(inner, LTXVAE):
        wrap = batch_dynamic if dynamic_batch else (lambda f: f)
        inner.decode = wrap(compile_no_grad(inner.decode))
        # the moments only: the posterior sample (with each session's generator) stays eager
        inner.encode_moments = wrap(compile_no_grad(inner.encode_moments))
        return "ltx-compiled" + (", dynamic batch" if dynamic_batch else "")
    return None


TINY_WAN_VAE_KWARGS = dict(base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           latents_mean=[0.0] * 4, latents_std=[1.0] * 4)
TINY_LTX_VAE_KWARGS = dict(
    latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
    layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
)


def build_vae(kind: VAEKind, tiny: bool = False, config: dict | None = None) -> VideoVAE:
    """Random-init VAE of a kind (shapes real unless ``tiny``); ``config`` overrides diffusers kwargs.

    Raises:
        ValueError: unknown kind.
    """
    kind = VAEKind(kind)
    kwargs = dict(TINY_WAN_VAE_KWARGS if kind is VAEKind.WAN else TINY_LTX_VAE_KWARGS) if tiny else {}
    kwargs.update(config or {})
    if kind is VAEKind.WAN:
        return WanVAE(AutoencoderKLWan(**kwargs))
    return LTXVAE(AutoencoderKLLTXVideo(**kwargs))


def _is_diffusers_wan(keys: set[str]) -> bool:
    return any(k.startswith("encoder.down_blocks.") or k.startswith("quant_conv.") for k in keys)


def load_vae(kind: VAEKind, path: str | Path, config: dict | None = None) -> VideoVAE:
    """Load a VAE checkpoint (file or folder) with strict key matching.

    ``path`` may be a diffusers folder (``config.json`` + safetensors: config read from it), a
    diffusers-format state dict, or an original-format checkpoint (``Wan2.1_VAE.pth``; LTX-Video
    VAE safetensors with or without the ``vae.`` prefix), which is converted with diffusers'
    single-file converters. ``config`` overrides the diffusers constructor kwargs (needed for
    LTX-Video versions other than diffusers' default 0.9.0 layout).

    Raises:
        FileNotFoundError: no checkpoint at ``path``.
        KeyError: keys do not match after conversion.
    """
    from diffusers.loaders import single_file_utils as sfu

    kind = VAEKind(kind)
    p = Path(path)
    kwargs = {}
    raw = read_config_json(p) if p.is_dir() else None
    if raw is not None and "_class_name" in raw:  # diffusers config
        kwargs = {k: v for k, v in raw.items() if not k.startswith("_")}
    kwargs.update(config or {})
    sd = load_state_dict_file(p)
    vae = build_vae(kind, config=kwargs)
    target = vae.model
    expected = set(target.state_dict())
    if set(sd) != expected:
        if kind is VAEKind.WAN and not _is_diffusers_wan(set(sd)):
            sd = sfu.convert_wan_vae_to_diffusers(dict(sd))
        elif kind is VAEKind.LTX:
            sd = {(k if k.startswith("vae.") else f"vae.{k}"): v for k, v in sd.items()}
            sd = sfu.convert_ltx_vae_checkpoint_to_diffusers(sd)
    load_strict(target, sd)
    return vae.eval().requires_grad_(False)

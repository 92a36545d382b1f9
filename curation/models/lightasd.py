"""Light-ASD (Liao et al., "A Light Weight Model for Active Speaker Detection", CVPR 2023).

Layout follows the authors' public code (``Junhua-Liao/Light-ASD``: ``model/Model.py``,
``model/Encoder.py``, ``model/Classifier.py``, ``loss.py``) so that their released checkpoints
(``weight/pretrain_AVA_CVPR.model``, ``weight/finetuning_TalkSet.model``) load with strict key and
shape matching. Module names are the checkpoint's key names: ``model.visualEncoder.*``,
``model.audioEncoder.*``, ``model.GRU.*``, ``lossAV.FC.*``, ``lossV.FC.*``.

Inputs (the authors' evaluation, ``Columbia_test.py``):

* video: grayscale face crops, ``[B, T, 112, 112]``, pixel values 0-255 at 25 fps;
* audio: 13 MFCCs at 100 Hz, ``[B, 4T, 13]`` (4 audio frames per video frame).

Output of :meth:`LightASD.speaking_logits`: ``[B*T]`` float32, the ``lossAV`` head's
"speaking" logit per video frame (> 0 leans towards speaking).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

_BN = dict(momentum=0.01, eps=0.001)


class _AudioBlock(nn.Module):
    """Two factorised branches (3 and 5 taps: MFCC axis then time axis), summed, 1x1 conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        self.m_3 = nn.Conv2d(cin, cout, kernel_size=(3, 1), padding=(1, 0), bias=False)
        self.bn_m_3 = nn.BatchNorm2d(cout, **_BN)
        self.t_3 = nn.Conv2d(cout, cout, kernel_size=(1, 3), padding=(0, 1), bias=False)
        self.bn_t_3 = nn.BatchNorm2d(cout, **_BN)
        self.m_5 = nn.Conv2d(cin, cout, kernel_size=(5, 1), padding=(2, 0), bias=False)
        self.bn_m_5 = nn.BatchNorm2d(cout, **_BN)
        self.t_5 = nn.Conv2d(cout, cout, kernel_size=(1, 5), padding=(0, 2), bias=False)
        self.bn_t_5 = nn.BatchNorm2d(cout, **_BN)
        self.last = nn.Conv2d(cout, cout, kernel_size=(1, 1), bias=False)
        self.bn_last = nn.BatchNorm2d(cout, **_BN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x3 = self.relu(self.bn_t_3(self.t_3(self.relu(self.bn_m_3(self.m_3(x))))))
        x5 = self.relu(self.bn_t_5(self.t_5(self.relu(self.bn_m_5(self.m_5(x))))))
        return self.relu(self.bn_last(self.last(x3 + x5)))


class _VisualBlock(nn.Module):
    """Two factorised branches (spatial 3x3 / 5x5 then temporal 3 / 5), summed, 1x1x1 conv."""

    def __init__(self, cin: int, cout: int, is_down: bool = False) -> None:
        super().__init__()
        self.relu = nn.ReLU()
        stride = (1, 2, 2) if is_down else (1, 1, 1)
        self.s_3 = nn.Conv3d(cin, cout, kernel_size=(1, 3, 3), stride=stride, padding=(0, 1, 1), bias=False)
        self.bn_s_3 = nn.BatchNorm3d(cout, **_BN)
        self.t_3 = nn.Conv3d(cout, cout, kernel_size=(3, 1, 1), padding=(1, 0, 0), bias=False)
        self.bn_t_3 = nn.BatchNorm3d(cout, **_BN)
        self.s_5 = nn.Conv3d(cin, cout, kernel_size=(1, 5, 5), stride=stride, padding=(0, 2, 2), bias=False)
        self.bn_s_5 = nn.BatchNorm3d(cout, **_BN)
        self.t_5 = nn.Conv3d(cout, cout, kernel_size=(5, 1, 1), padding=(2, 0, 0), bias=False)
        self.bn_t_5 = nn.BatchNorm3d(cout, **_BN)
        self.last = nn.Conv3d(cout, cout, kernel_size=(1, 1, 1), bias=False)
        self.bn_last = nn.BatchNorm3d(cout, **_BN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x3 = self.relu(self.bn_t_3(self.t_3(self.relu(self.bn_s_3(self.s_3(x))))))
        x5 = self.relu(self.bn_t_5(self.t_5(self.relu(self.bn_s_5(self.s_5(x))))))
        return self.relu(self.bn_last(self.last(x3 + x5)))


class VisualEncoder(nn.Module):
    """``[B, 1, T, 112, 112]`` normalised gray -> ``[B, T, 128]``."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = _VisualBlock(1, 32, is_down=True)   # 56 x 56
        self.pool1 = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))  # 28
        self.block2 = _VisualBlock(32, 64)
        self.pool2 = nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))  # 14
        self.block3 = _VisualBlock(64, 128)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.pool2(self.block2(self.pool1(self.block1(x)))))  # [B, 128, T, 14, 14]
        return x.amax(dim=(3, 4)).transpose(1, 2)  # global spatial max -> [B, T, 128]


class AudioEncoder(nn.Module):
    """``[B, 1, 13, 4T]`` MFCC map -> ``[B, T, 128]`` (two stride-2 max pools over time)."""

    def __init__(self) -> None:
        super().__init__()
        self.block1 = _AudioBlock(1, 32)
        self.block2 = _AudioBlock(32, 64)
        self.block3 = _AudioBlock(64, 128)

    @staticmethod
    def _pool_time(x: torch.Tensor) -> torch.Tensor:
        # kernel 3, stride 2, padding 1 along the last (time) axis only.
        return F.max_pool2d(x, kernel_size=(1, 3), stride=(1, 2), padding=(0, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self._pool_time(self.block2(self._pool_time(self.block1(x)))))  # [B, 128, 13, T]
        return x.mean(dim=2).transpose(1, 2)  # mean over the MFCC axis -> [B, T, 128]


class BiGRU(nn.Module):
    """Forward GRU, GELU, time-reversed GRU, GELU: ``[B, T, C]`` -> ``[B, T, C]``."""

    def __init__(self, channels: int = 128) -> None:
        super().__init__()
        self.gru_forward = nn.GRU(channels, channels, num_layers=1, bias=True, batch_first=True)
        self.gru_backward = nn.GRU(channels, channels, num_layers=1, bias=True, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.gru_forward(x)[0])
        x = torch.flip(self.gru_backward(torch.flip(x, dims=[1]))[0], dims=[1])
        return F.gelu(x)


class _Core(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.visualEncoder = VisualEncoder()
        self.audioEncoder = AudioEncoder()
        self.GRU = BiGRU(128)


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.FC = nn.Linear(128, 2)


class LightASD(nn.Module):
    """Light-ASD with its two training heads (``lossAV`` for audio-visual, ``lossV`` for visual only).

    Shapes:
        :meth:`speaking_logits`: audio float32 ``[B, 4T, 13]``, video float32 ``[B, T, 112, 112]``
        (0-255) -> float32 ``[B*T]``.
    """

    #: Pixel normalisation of the authors' visual front-end (gray level / 255).
    MEAN, STD = 0.4161, 0.1688

    def __init__(self) -> None:
        super().__init__()
        self.model = _Core()
        self.lossAV = _Head()
        self.lossV = _Head()

    def visual_frontend(self, video: torch.Tensor) -> torch.Tensor:
        """Gray face crops float32 ``[B, T, 112, 112]`` (0-255) -> ``[B, T, 128]``."""
        return self.model.visualEncoder(((video / 255.0 - self.MEAN) / self.STD).unsqueeze(1))

    def audio_frontend(self, audio: torch.Tensor) -> torch.Tensor:
        """MFCC float32 ``[B, 4T, 13]`` (100 Hz) -> ``[B, T, 128]``."""
        return self.model.audioEncoder(audio.unsqueeze(1).transpose(2, 3))

    def backend_logits(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Audio-visual backend and ``lossAV`` head on MFCC ``[B, 4T, 13]`` and visual
        embeddings ``[B, T, 128]`` -> speaking logit per frame, float32 ``[B*T]``."""
        x = self.model.GRU(self.audio_frontend(audio) + visual).reshape(-1, 128)
        return self.lossAV.FC(x)[:, 1]

    def speaking_logits(self, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """Per-frame speaking logit of the audio-visual backend.

        Args:
            audio: MFCC float32 ``[B, 4T, 13]`` (100 Hz).
            video: gray face crops float32 ``[B, T, 112, 112]``, 0-255, 25 fps.

        Returns:
            float32 ``[B*T]``: ``lossAV.FC`` output column 1 (the authors' evaluation score).
        """
        return self.backend_logits(audio, self.visual_frontend(video))


def load_lightasd(path: str | Path, device: str | torch.device = "cpu") -> LightASD:
    """Build :class:`LightASD` and load an authors' checkpoint with strict key and shape matching.

    Args:
        path: ``pretrain_AVA_CVPR.model`` or ``finetuning_TalkSet.model`` (zip ``torch.save`` of the
            training wrapper's ``state_dict()``; a leading ``module.`` is stripped if present).
        device: ``cpu`` or ``cuda[:i]``.

    Raises:
        RuntimeError: missing or unexpected keys, or shape mismatches.
    """
    state = torch.load(str(path), map_location="cpu", weights_only=True)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    model = LightASD()
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()

"""Temporal Audio Context Cache (FlashHead report §3.1 / §3.3; public ``generate_video.py``
``--audio_encode_mode stream``).

A fixed ring buffer of the last ``T_max`` seconds (8 s) of 16 kHz audio, silence before the first
sample. For each chunk the whole buffer is re-encoded with Wav2Vec (so every chunk sees the same
8 s of left context as in training) and the features of the last ``frame_num`` video frames are
cut into per-frame windows of ``audio_window`` features, aligned so that the last window belongs
to the last frame of the chunk.
"""

from __future__ import annotations

import numpy as np
import torch

from vividhead.flow_matching import chunk_audio_context
from vividhead.shard_format import AUDIO_CONTEXT_S, CHUNK_FRAMES, FPS, SAMPLE_RATE_HZ


class AudioRingBuffer:
    """Fixed-size float32 ring buffer of mono PCM samples (constant memory).

    Args:
        capacity: samples kept (``T_max * sample_rate``; 128000 for 8 s at 16 kHz).
    """

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._buf = np.zeros(capacity, dtype=np.float32)
        self._pos = 0  # index of the oldest sample == next write position
        self.total_samples = 0  # samples ever pushed (python int: no overflow)

    def push(self, samples: np.ndarray) -> None:
        """Append samples ``[N]`` (float, in [-1, 1]); only the last ``capacity`` are kept."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        n = samples.shape[0]
        self.total_samples += n
        if n >= self.capacity:
            self._buf[:] = samples[-self.capacity :]
            self._pos = 0
            return
        end = self._pos + n
        if end <= self.capacity:
            self._buf[self._pos : end] = samples
        else:
            first = self.capacity - self._pos
            self._buf[self._pos :] = samples[:first]
            self._buf[: n - first] = samples[first:]
        self._pos = end % self.capacity

    def view(self, out: np.ndarray | None = None) -> np.ndarray:
        """The buffer in time order, oldest first: float32 ``[capacity]`` (written into ``out`` if given)."""
        if out is None:
            out = np.empty(self.capacity, dtype=np.float32)
        tail = self.capacity - self._pos
        out[:tail] = self._buf[self._pos :]
        out[tail:] = self._buf[: self._pos]
        return out

    def reset(self) -> None:
        """Back to silence."""
        self._buf[:] = 0.0
        self._pos = 0
        self.total_samples = 0


class TemporalAudioContextCache:
    """Ring buffer + Wav2Vec re-encode + window cut for one streaming session.

    Args:
        encoder: callable ``(audio [1, N] float32, num_frames) -> [1, S, L, D]``
            (:class:`vividhead.models.audio_encoder.Wav2VecFeatures`).
        sample_rate_hz, fps: audio and video rates (``sample_rate_hz % fps == 0``).
        cache_seconds: ``T_max`` (8 s).
        frame_num: video frames per chunk (33).
        audio_window: per-frame window (5).
        device: where the encoder runs.
    """

    def __init__(
        self,
        encoder,
        sample_rate_hz: int = SAMPLE_RATE_HZ,
        fps: int = FPS,
        cache_seconds: float = AUDIO_CONTEXT_S,
        frame_num: int = CHUNK_FRAMES,
        audio_window: int = 5,
        device: str | torch.device = "cpu",
    ) -> None:
        self.encoder = encoder
        self.samples_per_frame = sample_rate_hz // fps
        capacity = int(round(cache_seconds * sample_rate_hz))
        capacity -= capacity % self.samples_per_frame
        self.buffer = AudioRingBuffer(capacity)
        self.cache_frames = capacity // self.samples_per_frame
        if self.cache_frames < frame_num:
            raise ValueError("cache shorter than one chunk")
        self.frame_num = frame_num
        self.audio_window = audio_window
        self.device = torch.device(device)
        self._scratch = np.empty(capacity, dtype=np.float32)
        pin = self.device.type == "cuda"
        self._host = torch.empty(1, capacity, dtype=torch.float32, pin_memory=pin)

    def push(self, samples: np.ndarray) -> None:
        """Append new PCM (float32 ``[N]`` in [-1, 1])."""
        self.buffer.push(samples)

    def context(self, frame_num: int | None = None) -> torch.Tensor:
        """Encode the whole buffer and cut the windows of the last ``frame_num`` frames.

        Args:
            frame_num: frames of this chunk (default: the constructor's; a shorter first chunk
                passes its own).

        Returns:
            float32 ``[1, frame_num, audio_window, L, D]`` on ``device``.

        Raises:
            ValueError: ``frame_num`` longer than the cache.
        """
        frame_num = self.frame_num if frame_num is None else frame_num
        if not 0 < frame_num <= self.cache_frames:
            raise ValueError(f"frame_num {frame_num} outside 1..{self.cache_frames}")
        self.buffer.view(self._scratch)
        self._host[0].copy_(torch.from_numpy(self._scratch))
        audio = self._host.to(self.device, non_blocking=True)
        feats = self.encoder(audio, self.cache_frames)  # [1, S, L, D]
        return chunk_audio_context(feats, frame_num, self.audio_window)

    def reset(self) -> None:
        """Back to silence."""
        self.buffer.reset()

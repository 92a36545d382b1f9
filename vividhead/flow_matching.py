"""The flow-matching recipe of SoulX-FlashHead, shared by streaming inference and both trainers.

One home for: the timestep shift, the few-step sampling schedule, noising and the velocity
target, training-time sigma sampling and loss weights, how the reference latent is built and
concatenated, how motion latents overwrite the first latent slots, how audio windows are cut per
video frame, and the sampler itself (used by :class:`vividhead.inference.pipeline.StreamingSession`,
by the stage-1 trainer's previews and by the stage-2 generator rollout). The latent normalisation
(per-channel mean/std of the VAE) lives with the VAE wrappers (:mod:`vividhead.models.vae`),
so every latent that enters or leaves this module is normalised.

Conventions (Wan2.1 / SD3 rectified flow; FlashHead report §3.1-3.3; public ``FlashHeadPipeline``):

* ``sigma`` in [0, 1] is the noise level; the DiT takes the timestep ``1000 * sigma``;
* ``x_sigma = (1 - sigma) x_0 + sigma * noise``; the DiT predicts the velocity
  ``v = noise - x_0``, so ``x_0 = x_sigma - sigma * v``;
* the shift ``s`` maps ``u`` to ``s u / (1 + (s - 1) u)`` (Wan's ``shift = 5``); the 4-step
  schedule 1000/750/500/250 becomes sigmas 1.0, 0.9375, 0.8333, 0.625;
* the few-step sampler (the DMD-distilled upstream sampler) predicts ``x_0`` at each sigma and
  re-noises it with fresh noise to the next sigma.

Latents are diffusers-style ``[B, C, F, h, w]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

#: Scale of the DiT's timestep input (sigma 1.0 -> timestep 1000).
NUM_TRAIN_TIMESTEPS = 1000

TimestepSampling = Literal["uniform", "logit_normal"]
LossWeighting = Literal["none", "cosmap"]


# ----------------------------------------------------------------------------------------------
# Schedule
# ----------------------------------------------------------------------------------------------
def shift_sigma(u: float | torch.Tensor, shift: float) -> float | torch.Tensor:
    """Flow-matching shift ``s u / (1 + (s - 1) u)`` of ``u`` in [0, 1] (SD3 / Wan ``shift``).

    Args:
        u: a float or a float tensor of any shape, in [0, 1].
        shift: ``s`` (> 0; 1 is the identity; Wan and FlashHead use 5).

    Returns:
        same type and shape as ``u``.
    """
    return shift * u / (1 + (shift - 1) * u)


def shift_timestep(t: float, shift: float, num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> float:
    """:func:`shift_sigma` on the 0..``num_timesteps`` scale (public ``timestep_transform``)."""
    return float(shift_sigma(t / num_timesteps, shift)) * num_timesteps


@dataclass(frozen=True)
class FlowMatchingSchedule:
    """Sampling schedule of the streaming generator.

    Attributes:
        timesteps: unshifted timesteps on the 0..1000 scale, one per denoising step
            (FlashHead: 1000, 750, 500, 250).
        shift: timestep shift (5).

    Raises:
        ValueError: empty or non-decreasing timesteps, timesteps outside (0, 1000], shift <= 0.
    """

    timesteps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0

    def __post_init__(self) -> None:
        if not self.timesteps:
            raise ValueError("timesteps must not be empty")
        if any(not 0 < t <= NUM_TRAIN_TIMESTEPS for t in self.timesteps):
            raise ValueError(f"timesteps must lie in (0, {NUM_TRAIN_TIMESTEPS}]")
        if any(a <= b for a, b in zip(self.timesteps, self.timesteps[1:])):
            raise ValueError("timesteps must decrease")
        if self.shift <= 0:
            raise ValueError("shift must be > 0")

    @property
    def num_steps(self) -> int:
        """Denoising steps per chunk (4)."""
        return len(self.timesteps)

    def sigmas(self) -> list[float]:
        """Shifted sigmas of every step plus a final 0.0: ``[1.0, 0.9375, 0.8333, 0.625, 0.0]``
        for the defaults (length ``num_steps + 1``)."""
        return [float(shift_sigma(t / NUM_TRAIN_TIMESTEPS, self.shift)) for t in self.timesteps] + [0.0]


# ----------------------------------------------------------------------------------------------
# Noising and targets
# ----------------------------------------------------------------------------------------------
def _expand(sigma: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    s = torch.as_tensor(sigma, dtype=torch.float32, device=like.device)
    return s.reshape(-1, *([1] * (like.ndim - 1))) if s.ndim else s


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``x_sigma = (1 - sigma) x0 + sigma noise``.

    Args:
        x0, noise: ``[B, C, F, h, w]`` (any float dtype; math in float32).
        sigma: float or float32 ``[B]``.

    Returns:
        float32 ``[B, C, F, h, w]``.
    """
    s = _expand(sigma, x0)
    return (1 - s) * x0.float() + s * noise.float()


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Flow-matching target ``v = noise - x0``, float32, same shape."""
    return noise.float() - x0.float()


def predict_x0(x_t: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor | float) -> torch.Tensor:
    """``x0 = x_sigma - sigma v`` in float32 (``sigma``: float or ``[B]``)."""
    return x_t.float() - _expand(sigma, x_t) * velocity.float()


def sample_training_sigmas(
    batch: int,
    *,
    shift: float = 5.0,
    method: TimestepSampling = "uniform",
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    min_sigma: float = 0.0,
    max_sigma: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Draw training noise levels on the shifted schedule.

    ``uniform``: ``u ~ U(0, 1)`` then shifted (Wan's uniform timestep over the shifted schedule);
    ``logit_normal``: ``u = sigmoid(N(logit_mean, logit_std))`` (SD3 §3.1) then shifted. The result
    is clamped to ``[min_sigma, max_sigma]`` (the DMD loss keeps away from 0 and 1).

    Returns:
        float32 ``[batch]`` on ``device``.

    Raises:
        ValueError: unknown ``method`` or an empty clamp range.
    """
    if not 0.0 <= min_sigma < max_sigma <= 1.0:
        raise ValueError(f"need 0 <= min_sigma < max_sigma <= 1, got {min_sigma}, {max_sigma}")
    if method == "uniform":
        u = torch.rand(batch, generator=generator, device=device)
    elif method == "logit_normal":
        u = torch.sigmoid(torch.randn(batch, generator=generator, device=device) * logit_std + logit_mean)
    else:
        raise ValueError(f"unknown timestep sampling {method!r} (uniform, logit_normal)")
    return shift_sigma(u, shift).clamp(min_sigma, max_sigma).float()


def loss_weights(sigma: torch.Tensor, kind: LossWeighting = "none") -> torch.Tensor:
    """Per-sample weights of the flow-matching loss.

    ``none``: 1 (Wan); ``cosmap``: ``2 / (pi (1 - 2 sigma + 2 sigma^2))`` (SD3 §3.1).

    Args:
        sigma: float32 ``[B]``.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "none":
        return torch.ones_like(sigma)
    if kind == "cosmap":
        return 2.0 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))
    raise ValueError(f"unknown loss weighting {kind!r} (none, cosmap)")


# ----------------------------------------------------------------------------------------------
# Conditioning: motion latents, reference latent, audio windows
# ----------------------------------------------------------------------------------------------
def overwrite_motion(x: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
    """Put the motion latents in the first latent slots (out of place, autograd-safe).

    Args:
        x: ``[B, C, F, h, w]``.
        motion: ``[B, C, M, h, w]`` with ``M <= F`` (Pro/Lite: 2; cold start: 1).

    Returns:
        ``[B, C, F, h, w]`` in the dtype of ``x``: ``motion`` then ``x[:, :, M:]``.
    """
    m = motion.shape[2]
    return torch.cat([motion.to(x.dtype), x[:, :, m:]], dim=2)


def motion_loss_mask(num_latent_frames: int, num_motion_latents: torch.Tensor) -> torch.Tensor:
    """1 on generated latent slots, 0 on motion slots (which take no loss).

    Args:
        num_latent_frames: ``F``.
        num_motion_latents: int ``[B]`` motion slots per sample.

    Returns:
        float32 ``[B, 1, F, 1, 1]``.
    """
    idx = torch.arange(num_latent_frames, device=num_motion_latents.device)
    return (idx[None, :] >= num_motion_latents[:, None]).float()[:, None, :, None, None]


def motion_latent_count(num_motion_frames: int, temporal_stride: int) -> int:
    """Latent slots that ``num_motion_frames`` leading frames occupy in a causal VAE:
    ``1 + (n - 1) / stride`` (Pro: 5 frames -> 2 Wan latents; Lite: 9 -> 2 LTX latents; 1 -> 1).

    Raises:
        ValueError: ``n - 1`` is not a multiple of the stride.
    """
    if num_motion_frames < 1 or (num_motion_frames - 1) % temporal_stride:
        raise ValueError(f"{num_motion_frames} motion frames is not 1 + k * {temporal_stride}")
    return 1 + (num_motion_frames - 1) // temporal_stride


def reference_video(reference: torch.Tensor, frame_num: int) -> torch.Tensor:
    """The reference frame repeated over the chunk, the VAE input of the reference latent
    (public code; FlashHead §3.1).

    Args:
        reference: ``[B, 3, H, W]`` or ``[B, 3, 1, H, W]`` in [-1, 1].
        frame_num: frames per chunk (33).

    Returns:
        ``[B, 3, frame_num, H, W]`` contiguous.
    """
    if reference.ndim == 4:
        reference = reference[:, :, None]
    return reference.expand(-1, -1, frame_num, -1, -1).contiguous()


def audio_frame_windows(features: torch.Tensor, start: int, end: int, audio_window: int) -> torch.Tensor:
    """Per-video-frame windows of ``audio_window`` Wav2Vec frames centred on frames ``start..end-1``.

    Indices outside ``[0, end)`` are clamped (upstream ``get_audio_embedding``: the last frames of
    the cache have no future context and repeat the last feature).

    Args:
        features: ``[B, S, L, D]`` per-video-frame features (``S`` = frames of the audio cache).
        start, end: frame range, ``0 <= start < end <= S``.
        audio_window: odd window length (5).

    Returns:
        ``[B, end - start, audio_window, L, D]``.
    """
    half = audio_window // 2
    offsets = torch.arange(-half, half + 1, device=features.device)
    idx = (torch.arange(start, end, device=features.device)[:, None] + offsets[None, :]).clamp(0, end - 1)
    return features[:, idx]


def chunk_audio_context(features: torch.Tensor, frame_num: int, audio_window: int) -> torch.Tensor:
    """Audio context of a chunk: the windows of the last ``frame_num`` frames of the Temporal Audio
    Context Cache's features (FlashHead §3.3: the cache ends at the chunk's last frame).

    Args:
        features: ``[B, S, L, D]`` Wav2Vec features of the whole cache (``S = 200`` for 8 s).
        frame_num: frames of the chunk (33).

    Returns:
        ``[B, frame_num, audio_window, L, D]``.

    Raises:
        ValueError: ``frame_num`` outside ``1..S``.
    """
    s = features.shape[1]
    if not 0 < frame_num <= s:
        raise ValueError(f"frame_num {frame_num} outside 1..{s}")
    return audio_frame_windows(features, s - frame_num, s, audio_window)


# ----------------------------------------------------------------------------------------------
# The sampler
# ----------------------------------------------------------------------------------------------
#: ``(x_t [B, C, F, h, w] model dtype, timestep float32 [B or 1] on 0..1000) -> velocity``.
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sample_chunk(
    velocity: VelocityFn,
    noise: torch.Tensor,
    motion: torch.Tensor,
    schedule: FlowMatchingSchedule,
    *,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    exit_step: int | None = None,
    grad_step: int | None = None,
    dtype: torch.dtype | None = None,
    before_step: Callable[[], None] | None = None,
) -> torch.Tensor:
    """Few-step flow-matching sampling of one chunk, as the streaming generator runs it.

    Before each step the motion latents overwrite the first slots; each step predicts ``x0`` and
    re-noises it with fresh noise (from ``generator``) to the next sigma; the result is ``x0`` of the
    last step with the motion slots overwritten. Fresh noise is drawn after every step, the last
    included, as the released code does, so a seeded stream matches it step for step.

    Stochastic truncation (DMD rollouts, Self-Forcing §3.3): ``exit_step = i`` returns ``x0`` of
    step ``i`` (0-based) instead of finishing; ``grad_step = i`` runs the DiT of step ``i`` with
    autograd on and every other step under ``no_grad``.

    Args:
        velocity: the DiT closed over its conditioning (reference latent, audio context).
        noise: ``[B, C, F, h, w]`` starting noise (sigma 1).
        motion: ``[B, C, M, h, w]`` motion latents.
        schedule: the sampling schedule.
        generator: RNG of the re-noising draws (same device as ``noise``); a sequence of ``B``
            generators draws row ``b`` from generator ``b`` (batched streaming sessions, each with
            its own RNG: row ``b`` then equals a batch-of-one run with generator ``b``).
        exit_step, grad_step: see above (``None``: the full schedule / no graph).
        dtype: dtype of the DiT input (default: ``noise.dtype``).
        before_step: called before each DiT call (e.g. ``torch.compiler.cudagraph_mark_step_begin``).

    Returns:
        ``[B, C, F, h, w]``: the model dtype for a full run, float32 ``x0`` for an early exit.

    Raises:
        ValueError: ``exit_step`` or ``grad_step`` outside the schedule, or ``grad_step > exit_step``;
            a generator sequence whose length is not ``B``.
    """
    if isinstance(generator, (list, tuple)) and len(generator) != noise.shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {noise.shape[0]}")
    sigmas = schedule.sigmas()
    n = len(sigmas) - 1
    last = n - 1 if exit_step is None else exit_step
    if not 0 <= last < n:
        raise ValueError(f"exit_step {exit_step} outside 0..{n - 1}")
    if grad_step is not None and not 0 <= grad_step <= last:
        raise ValueError(f"grad_step {grad_step} outside 0..{last}")
    dt = dtype or noise.dtype
    x = noise.to(dt)
    shape = noise.shape
    # Timesteps as float32 tensors on the 0..1000 scale and sigmas derived from them (t / 1000),
    # the exact arithmetic of the released sampler.
    ts = [torch.tensor([s * NUM_TRAIN_TIMESTEPS], device=noise.device, dtype=torch.float32) for s in sigmas]
    for i in range(n):
        x = overwrite_motion(x, motion)
        if before_step is not None:
            before_step()
        with torch.set_grad_enabled(grad_step == i):
            x0 = x.float() - velocity(x, ts[i]).float() * (ts[i] / NUM_TRAIN_TIMESTEPS)
        if exit_step is not None and i == exit_step:
            return overwrite_motion(x0, motion)
        if isinstance(generator, (list, tuple)):
            eps = torch.cat([torch.randn((1, *shape[1:]), generator=g, device=noise.device, dtype=torch.float32)
                             for g in generator])
        else:
            eps = torch.randn(shape, generator=generator, device=noise.device, dtype=torch.float32)
        s_next = ts[i + 1] / NUM_TRAIN_TIMESTEPS
        x = ((1 - s_next) * x0.detach() + s_next * eps).to(dt)
    return overwrite_motion(x, motion)


# ----------------------------------------------------------------------------------------------
# The training objective
# ----------------------------------------------------------------------------------------------
@dataclass
class FlowMatchingLoss:
    """Result of :func:`flow_matching_loss`.

    Attributes:
        loss: float32 scalar with graph: the weighted mean over samples.
        per_sample: float32 ``[B]`` unweighted per-sample MSE on generated slots (no graph).
        sigma: float32 ``[B]`` the noise levels used.
    """

    loss: torch.Tensor
    per_sample: torch.Tensor
    sigma: torch.Tensor


def flow_matching_loss(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    num_motion: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    weighting: LossWeighting = "none",
) -> FlowMatchingLoss:
    """The stage-1 flow-matching loss of a streaming chunk (FlashHead §3.2 stage 1).

    The motion slots hold the clean ground-truth latents (as inference overwrites them) and take no
    loss; every other slot is noised to ``sigma`` and the DiT regresses the velocity
    ``noise - x0`` there. Also the fake-score objective of the stage-2 trainer.

    Args:
        velocity: ``(x_t [B, C, F, h, w] float32, timestep float32 [B] on 0..1000) -> v`` (the DiT
            closed over reference latent and audio context; it casts to its own dtype).
        x0: float32 ``[B, C, F, h, w]`` clean latents.
        num_motion: int64 ``[B]`` motion slots per sample.
        sigma: float32 ``[B]`` noise levels (:func:`sample_training_sigmas`).
        noise: ``[B, C, F, h, w]`` standard normal.
        weighting: :func:`loss_weights` kind.

    Returns:
        :class:`FlowMatchingLoss`.
    """
    b, c, f, h, w = x0.shape
    keep = motion_loss_mask(f, num_motion.to(x0.device))  # [B, 1, F, 1, 1], 1 = generated slot
    x_t = keep * add_noise(x0, noise, sigma) + (1 - keep) * x0.float()
    v = velocity(x_t, sigma * NUM_TRAIN_TIMESTEPS)
    err = (v.float() - velocity_target(x0, noise)).pow(2) * keep
    per_sample = err.sum(dim=(1, 2, 3, 4)) / (keep.sum(dim=(1, 2, 3, 4)) * c * h * w).clamp(min=1)
    loss = (loss_weights(sigma, weighting) * per_sample).mean()
    return FlowMatchingLoss(loss, per_sample.detach(), sigma)

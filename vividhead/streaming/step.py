"""The per-chunk step of the streaming generator: the one implementation that ``vividhead infer`` (a
batch of one), ``vividhead serve`` (its sessions batched) and the stage-2 rollout (with its gradient
and stochastic-truncation hooks) all call, so training sees exactly what inference does.

One step advances a batch of streams (:class:`StreamState`) by one chunk (FlashHead report §3.3;
LiveTalk §2.3; public ``FlashHeadPipeline.generate``):

1. **motion encode** -- VAE-encode the previous chunk's last ``motion_frames`` decoded, colour-corrected
   frames into this chunk's motion latents (deferred to the start of this chunk so it is not on the
   path from audio to frames; on CUDA it overlaps step 2, which runs on a side stream);
2. **audio** -- each stream's 8 s Temporal Audio Context Cache takes its new samples; one Wav2Vec call
   encodes every cache and the windows of the chunk's frames are cut
   (:func:`vividhead.flow_matching.chunk_audio_context`); or the caller passes the audio context
   (the trainer, which encodes a window's caches at once);
3. **DiT** -- the few-step flow-matching sampler :func:`vividhead.flow_matching.sample_chunk`, no CFG;
   row ``b`` draws its noise from stream ``b``'s generator, so a stream in a batch gets the frames it
   gets alone. Stochastic truncation (``exit_step`` / ``grad_step``) stops here;
4. **decode** -- VAE-decode the chunk, colour-correct the frames that are emitted or re-encoded to the
   reference (:func:`vividhead.streaming.color.match_colors`), keep the last ``motion_frames`` for the
   next chunk's step 1, and return the emitted frames as uint8.

Cold start: the motion latent of chunk 0 is the first latent frame of the reference latent (the
reference frame alone, FlashHead §3.1); the trainer starts from ground-truth motion latents instead.
"""

from __future__ import annotations

import time
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from vividhead.flow_matching import (
    FlowMatchingSchedule,
    chunk_audio_context,
    motion_latent_count,
    reference_video,
    sample_chunk,
)
from vividhead.models.configs import StreamingConfig
from vividhead.streaming.audio_cache import TemporalAudioContextCache
from vividhead.streaming.color import match_colors
from vividhead.streaming.fidelity import frames_to_uint8

#: ``denoiser(x_t, timestep, context, ref_latent) -> velocity``: the DiT with its conditioning.
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BatchingConfig:
    """How the streams of one step are batched (``vividhead serve``; a batch of one ignores it).

    Attributes:
        max_batch: most streams in one DiT batch; more run as several steps (the caller splits).
        vae_batch: most streams per VAE decode / encode call (bounds activation memory: a Wan or
            LTX decode of 33 frames at 512x512 holds several GiB per stream).
        batch_buckets: pad each DiT batch up to the smallest of these sizes, and each VAE call up to
            the smallest of them or ``vae_batch`` (padding rows are copies of row 0 whose outputs
            are dropped), so a compiled / CUDA-graph DiT and a compiled VAE see few shapes;
            ``None``: exact sizes. 1 is always added (a lone chunk runs unpadded).
        vae_buckets: pad each VAE decode / encode part (a step's streams cut into parts of at most
            ``vae_batch``) up to the smallest of these sizes, e.g. ``(2, 4, 8)`` with ``vae_batch``
            8, so compiled VAE coders see only these batch sizes (on one H100, Lite with
            ``--dynamic-batch``, ``vae_batch`` 8 and loaded compile artifacts, ``(2, 4, 8)`` took the
            warm-up of all 16 batch sizes from 114.2 s to 86.8 s: a round size that made a new part
            size had cost 4-6 s, 13 s for a part of 1 as Dynamo specialises size 1). Sorted and
            deduplicated, ``vae_batch`` added as the top bucket; 1 is not added (a part of 1 runs
            padded to the smallest bucket). When set it alone decides the VAE part sizes; ``None``:
            as ``batch_buckets`` says above.
        gather_s: a serving round waits up to this long after its oldest chunk arrived for the
            chunks of the other open sessions (:class:`vividhead.inference.batching.BatchScheduler`).

    Raises:
        ValueError: sizes below 1, ``vae_buckets`` above ``vae_batch`` (a VAE part never holds
            more streams) or a negative ``gather_s``.
    """

    max_batch: int = 16
    vae_batch: int = 4
    batch_buckets: tuple[int, ...] | None = None
    vae_buckets: tuple[int, ...] | None = None
    gather_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.vae_batch < 1:
            raise ValueError(f"max_batch ({self.max_batch}) and vae_batch ({self.vae_batch}) must be >= 1")
        if self.gather_s < 0:
            raise ValueError(f"gather_s must be >= 0, got {self.gather_s}")
        if self.batch_buckets is not None:
            b = tuple(sorted(set(self.batch_buckets) | {1}))
            if b[0] < 1:
                raise ValueError(f"batch_buckets must be positive sizes, got {self.batch_buckets}")
            object.__setattr__(self, "batch_buckets", b)
            if b[-1] < self.max_batch:
                object.__setattr__(self, "max_batch", b[-1])
        if self.vae_buckets is not None:
            v = tuple(sorted(set(self.vae_buckets)))
            if v and v[0] < 1:
                raise ValueError(f"vae_buckets must be positive sizes, got {self.vae_buckets}")
            if v and v[-1] > self.vae_batch:
                raise ValueError(f"vae_buckets {self.vae_buckets} holds sizes above vae_batch ({self.vae_batch}): "
                                 f"a VAE part never holds more streams than vae_batch")
            object.__setattr__(self, "vae_buckets", tuple(sorted(set(v) | {self.vae_batch})))

    def padded(self, n: int) -> int:
        """DiT batch size that runs ``n <= max_batch`` streams."""
        if self.batch_buckets is None:
            return n
        return next(b for b in self.batch_buckets if b >= n)

    def padded_vae(self, n: int) -> int:
        """VAE batch size that runs ``n <= vae_batch`` streams."""
        if self.vae_buckets is not None:
            return next(b for b in self.vae_buckets if b >= n)
        return n if self.batch_buckets is None else min(self.vae_batch, self.padded(n))


@dataclass
class ChunkTimings:
    """Seconds spent in each part of the last step (device-synchronised only with ``profile``);
    ``encode`` is the previous chunk's motion-frame encode, which runs at the start of this one."""

    audio: float = 0.0
    dit: float = 0.0
    decode: float = 0.0
    encode: float = 0.0
    other: float = 0.0
    total: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass
class StreamState:
    """What one stream carries from one chunk to the next (fixed size over the stream).

    Attributes:
        ref_latent: ``[1, C, F', h, w]`` reference latent of a full chunk (the reference frame
            repeated over ``frame_num`` frames, VAE-encoded; causal, so a shorter chunk uses a prefix).
        ref_stats: Lab ``(mean, std)`` of the reference image, float32 ``[1, 1, 1, 1, 3]`` each.
        motion_latents: ``[1, C, M, h, w]`` motion latents of the next chunk (``M = 1`` at a cold start).
        generator: the sampler's RNG: starting noise and re-noising draws.
        posterior_generator: RNG of an LTX VAE that samples its posterior (``None``: the mean).
        audio: the stream's Temporal Audio Context Cache (``None`` when the caller passes contexts).
        motion_video: ``[1, 3, motion_frames, H, W]`` decoded, colour-corrected frames awaiting the
            motion encode of the next step (``None`` after a cold start).
        chunk_index: chunks generated since the cold start (0: the next one is the first).
    """

    ref_latent: torch.Tensor
    ref_stats: tuple[torch.Tensor, torch.Tensor]
    motion_latents: torch.Tensor
    generator: torch.Generator
    posterior_generator: torch.Generator | None = None
    audio: TemporalAudioContextCache | None = None
    motion_video: torch.Tensor | None = None
    chunk_index: int = 0

    def cold_start(self) -> None:
        """Back to the first chunk: silence in the audio cache, motion latent = first reference latent."""
        if self.audio is not None:
            self.audio.reset()
        self.motion_latents = self.ref_latent[:, :, :1].clone()
        self.motion_video = None
        self.chunk_index = 0

    def nbytes(self) -> int:
        """Bytes of the mutable per-stream state (audio ring buffer, motion latents, motion frames)."""
        n = self.audio.buffer.capacity * 4 if self.audio is not None else 0
        for t in (self.motion_latents, self.motion_video):
            if t is not None:
                n += t.numel() * t.element_size()
        return n


@dataclass
class StepOutput:
    """What one step gives back.

    Attributes:
        latents: ``[B, C, F', h, w]`` the chunk's latents with the motion latents in front (model
            dtype), or float32 ``x0`` of step ``exit_step`` with truncation.
        motion: per stream, ``[1, C, M_b, h, w]`` the motion latents its chunk was conditioned on
            (``M_b`` is 1 for a stream at its cold start).
        frames: per stream, uint8 ``[n_emit, H, W, 3]`` on the device (``None`` without ``emit``).
        timings: seconds per part.
    """

    latents: torch.Tensor
    motion: list[torch.Tensor]
    frames: list[torch.Tensor] | None
    timings: ChunkTimings


def _pad_rows(x: torch.Tensor, size: int) -> torch.Tensor:
    """``x`` ``[b, ...]`` with copies of row 0 appended up to ``size`` rows."""
    pad = size - x.shape[0]
    return torch.cat([x, x[:1].expand(pad, *x.shape[1:])]) if pad > 0 else x


def chunked(seq: Sequence, size: int) -> list[Sequence]:
    """``seq`` cut into consecutive parts of at most ``size`` items (a batch into VAE or DiT calls)."""
    return [seq[i : i + size] for i in range(0, len(seq), size)]


@dataclass
class ChunkStep:
    """The per-chunk step (module docstring), over the weights one model holds.

    Args:
        denoiser: the DiT (:data:`Denoiser`); read at every call, so a compiled forward set later
            is used.
        vae: :class:`vividhead.models.vae.VideoVAE` (its parameters' dtype is the decode input dtype).
        audio_encoder: Wav2Vec features ``(audio float32 [B, N], frames) -> [B, S, L, D]``; only for
            steps given samples.
        streaming: chunk geometry, colour-correction strength.
        schedule: the sampling schedule (4 steps, shift 5).
        audio_window: audio features per frame window (the DiT's ``audio_window``).
        dtype: the DiT input dtype (``sample_chunk``'s ``dtype``).
        cond_dtype: dtype of the audio context and reference latent handed to the DiT (inference:
            the model dtype; the trainer: float32 under autocast).
        uint8_round: round (released code: truncate) when converting frames to uint8.
        reencode_motion: the next chunk's motion latents re-encode its decoded frames (streaming);
            ``False``: the chunk's last motion-latent slots (a stage-2 ablation; no decode needed).
        cuda_graphs: the denoiser replays CUDA graphs (marks each step, copies outputs out).
        profile: synchronise the device around parts so :class:`ChunkTimings` are exact.
    """

    denoiser: Denoiser
    vae: Any
    audio_encoder: Any
    streaming: StreamingConfig
    schedule: FlowMatchingSchedule
    audio_window: int
    _: KW_ONLY
    dtype: torch.dtype
    cond_dtype: torch.dtype | None = None
    uint8_round: bool = True
    reencode_motion: bool = True
    cuda_graphs: bool = False
    profile: bool = False
    _host: dict[int, torch.Tensor] = field(default_factory=dict, init=False, repr=False)  # pinned audio staging
    _audio_streams: dict[torch.device, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.cond_dtype = self.cond_dtype or self.dtype

    # -- state -----------------------------------------------------------------------------------
    def vae_encode(self, video: torch.Tensor, generators: Sequence[torch.Generator | None]) -> torch.Tensor:
        """VAE-encode ``[B, 3, T, H, W]`` frames; an LTX VAE that samples its posterior draws row ``b``
        from ``generators[b]`` (the same draws as each row alone). Returns ``[B, C, T', h, w]``."""
        vae = self.vae
        if getattr(vae, "sample_posterior", False) and all(g is not None for g in generators):
            return vae.encode(video, generator=list(generators) if len(generators) > 1 else generators[0])
        return vae.encode(video)

    def new_state(self, reference: torch.Tensor, ref_stats: tuple[torch.Tensor, torch.Tensor], seed: int,
                  *, with_audio: bool = True, posterior: bool = True) -> StreamState:
        """A cold-started stream for a preprocessed reference image.

        Args:
            reference: ``[1, 3, H, W]`` in [-1, 1] on the device (VAE dtype).
            ref_stats: :func:`vividhead.streaming.color.reference_lab_stats` of it.
            seed: the sampler's seed; the reference encode draws from ``seed + 1`` and the LTX
                posterior from ``seed + 2``.
            with_audio: give the stream a Temporal Audio Context Cache (steps fed samples).
            posterior: give the stream a posterior generator (LTX sampled posterior).
        """
        dev, cfg = reference.device, self.streaming
        with torch.no_grad():
            ref_latent = self.vae_encode(reference_video(reference, cfg.frame_num),
                                         [torch.Generator(device=dev).manual_seed(seed + 1)])
        audio = None
        if with_audio:
            audio = TemporalAudioContextCache(self.audio_encoder, cfg.sample_rate_hz, cfg.fps, cfg.cache_seconds,
                                              cfg.frame_num, self.audio_window, device=dev)
        state = StreamState(ref_latent=ref_latent, ref_stats=ref_stats, motion_latents=ref_latent[:, :, :1].clone(),
                            generator=torch.Generator(device=dev).manual_seed(seed),
                            posterior_generator=torch.Generator(device=dev).manual_seed(seed + 2) if posterior else None,
                            audio=audio)
        return state

    # -- the step --------------------------------------------------------------------------------
    def __call__(self, states: Sequence[StreamState], *, samples: Sequence[np.ndarray] | None = None,
                 context: torch.Tensor | None = None, batching: BatchingConfig | None = None,
                 exit_step: int | None = None, grad_step: int | None = None, emit: bool = True) -> StepOutput:
        """Advance ``states`` (all at the same chunk length) by one chunk.

        Args:
            states: the streams, in batch order.
            samples: per stream, float32 ``[n_emit * samples_per_frame]`` new PCM in [-1, 1] (pushed
                into each stream's audio cache); or
            context: float32 ``[B, F, W, L, D]`` the chunk's audio context (the trainer).
            batching: padding buckets and VAE part size (default: exact sizes, 4 per VAE call).
            exit_step: 0-based sampler step whose ``x0`` is returned (stochastic truncation, Self-Forcing
                §3.3): the chunk stops there, nothing is decoded and the states do not advance.
            grad_step: the sampler step that keeps its autograd graph (with ``exit_step``).
            emit: decode and return the emitted frames; ``False`` with ``reencode_motion=False``
                skips the decode.

        Returns:
            :class:`StepOutput`.

        Raises:
            ValueError: neither or both of ``samples`` / ``context``; streams at different chunk
                lengths; ``grad_step`` without ``exit_step``.
        """
        if (samples is None) == (context is None):
            raise ValueError("give the step either samples or an audio context")
        if grad_step is not None and exit_step is None:
            raise ValueError("grad_step needs an exit_step")
        cfg, batching = self.streaming, batching or BatchingConfig()
        lengths = {cfg.chunk_frames(s.chunk_index) for s in states}
        if len(lengths) != 1:
            raise ValueError(f"one step runs streams of one chunk length, got {sorted(lengths)}")
        (n_gen, n_emit), = lengths
        b = len(states)
        dev = states[0].ref_latent.device
        t_start = self._sync(dev)

        # 1 + 2. Audio (a side stream on CUDA) while the pending motion frames encode.
        side = self._audio_stream(dev) if samples is not None and dev.type == "cuda" and not self.profile else None
        with torch.no_grad():
            if side is not None:
                side.wait_stream(torch.cuda.current_stream(dev))
                with torch.cuda.stream(side):
                    context = self._audio_context(states, samples, n_gen)
                audio_done = side.record_event()
            t0 = self._sync(dev)
            self._encode_motion(states, batching)
            t_enc = self._sync(dev) - t0
            t0 = time.perf_counter()
            if side is not None:
                main = torch.cuda.current_stream(dev)
                main.wait_event(audio_done)
                context.record_stream(main)
            elif samples is not None:
                context = self._audio_context(states, samples, n_gen)
        t_audio = self._sync(dev) - t0

        # 3. DiT: rows with different motion-latent counts (a cold start has one) run as separate batches.
        t0 = time.perf_counter()
        motion = [s.motion_latents for s in states]
        by_motion: dict[int, list[int]] = {}
        for i, m in enumerate(motion):
            by_motion.setdefault(m.shape[2], []).append(i)
        n_lat = (n_gen - 1) // self.vae.temporal_stride + 1
        c, (h, w) = states[0].ref_latent.shape[1], states[0].ref_latent.shape[-2:]
        noise = [torch.randn((1, c, n_lat, h, w), generator=s.generator, device=dev, dtype=torch.float32)
                 for s in states]
        rows: list[torch.Tensor | None] = [None] * b
        for idx in by_motion.values():
            lat = self._sample([states[i] for i in idx], torch.cat([noise[i] for i in idx]), context[idx],
                               n_lat, batching, exit_step, grad_step)
            for i, x in zip(idx, lat.split(1)):
                rows[i] = x
        latents = torch.cat(rows) if b > 1 else rows[0]
        t_dit = self._sync(dev) - t0
        if exit_step is not None:  # truncated: the chunk ends at step exit_step, nothing advances
            timings = ChunkTimings(audio=t_audio, dit=t_dit, encode=t_enc, total=time.perf_counter() - t_start)
            return StepOutput(latents, motion, None, timings)

        # 4. Decode, colour, motion frames; or the last motion-latent slots without a decode.
        t0 = time.perf_counter()
        frames = None
        with torch.no_grad():
            if emit or self.reencode_motion:
                frames = self._decode(states, latents, n_gen, n_emit, batching, emit)
            if not self.reencode_motion:
                m = motion_latent_count(cfg.motion_frames, self.vae.temporal_stride)
                for s, x in zip(states, latents.split(1)):
                    s.motion_latents, s.motion_video = x[:, :, -m:].float(), None
        for s in states:
            s.chunk_index += 1
        t_dec = self._sync(dev) - t0
        timings = ChunkTimings(audio=t_audio, dit=t_dit, decode=t_dec, encode=t_enc,
                               total=time.perf_counter() - t_start,
                               extra={"batch": b, "dit_batches": len(by_motion)})
        return StepOutput(latents, motion, frames if emit else None, timings)

    # -- parts -----------------------------------------------------------------------------------
    def _sync(self, dev: torch.device) -> float:
        if self.profile and dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter()

    def _audio_stream(self, dev: torch.device) -> torch.cuda.Stream:
        if dev not in self._audio_streams:
            self._audio_streams[dev] = torch.cuda.Stream(dev)
        return self._audio_streams[dev]

    def _encode_motion(self, states: Sequence[StreamState], batching: BatchingConfig) -> None:
        """Step 1: the pending motion frames of every stream past its first chunk, in VAE-sized parts."""
        pending = [s for s in states if s.motion_video is not None]
        for part in chunked(pending, batching.vae_batch):
            size = batching.padded_vae(len(part))
            video = _pad_rows(torch.cat([s.motion_video for s in part]), size)
            gens = [s.posterior_generator for s in part]
            # padding rows draw from throw-away generators, so real rows get their own draws
            gens += [torch.Generator(device=video.device) for _ in range(size - len(part))]
            latents = self.vae_encode(video, gens)  # [b', C, M', h, w]
            for s, lat in zip(part, latents.split(1)):
                s.motion_latents, s.motion_video = lat, None

    def _audio_context(self, states: Sequence[StreamState], samples: Sequence[np.ndarray], n_gen: int) -> torch.Tensor:
        """Step 2: push each stream's samples and encode every cache in one Wav2Vec call.

        Returns:
            float32 ``[B, n_gen, audio_window, L, D]``.
        """
        if len(samples) != len(states) or any(s.audio is None for s in states):
            raise ValueError("every stream fed samples needs an audio cache, one sample array per stream")
        b, dev = len(states), states[0].ref_latent.device
        cache = states[0].audio
        host = self._host.get(b)
        if host is None:
            host = torch.empty(b, cache.buffer.capacity, dtype=torch.float32, pin_memory=dev.type == "cuda")
            self._host[b] = host
        for row, s, pcm in zip(host.numpy(), states, samples):
            s.audio.push(pcm)
            s.audio.buffer.view(row)
        feats = self.audio_encoder(host.to(dev, non_blocking=True), cache.cache_frames)  # [B, S, L, D]
        return chunk_audio_context(feats, n_gen, self.audio_window)

    def _sample(self, states: Sequence[StreamState], noise: torch.Tensor, context: torch.Tensor, n_lat: int,
                batching: BatchingConfig, exit_step: int | None, grad_step: int | None) -> torch.Tensor:
        """Step 3 for streams with equal motion-latent counts, padded to ``batching``'s bucket.

        Args:
            noise: float32 ``[b, C, F', h, w]`` drawn from the streams' generators.
            context: ``[b, n_gen, W, L, D]`` audio windows.

        Returns:
            ``[b, C, F', h, w]`` latents (model dtype; float32 ``x0`` with ``exit_step``).
        """
        b = len(states)
        motion = torch.cat([s.motion_latents for s in states])  # [b, C, M, h, w]
        ref = torch.cat([s.ref_latent[:, :, :n_lat] for s in states]).to(self.cond_dtype)  # causal: a prefix
        ctx = context.to(self.cond_dtype)
        generators = [s.generator for s in states]
        pad = batching.padded(b) - b
        if pad:  # copies of row 0; their noise comes from a scratch generator, their outputs are dropped
            scratch = torch.Generator(device=noise.device).manual_seed(0)
            noise, motion, ref, ctx = (_pad_rows(x, b + pad) for x in (noise, motion, ref, ctx))
            generators += [scratch] * pad
        denoiser = self.denoiser
        latents = sample_chunk(
            lambda x, t: denoiser(x, t, ctx, ref), noise, motion, self.schedule,
            generator=generators if len(generators) > 1 else generators[0], dtype=self.dtype,
            exit_step=exit_step, grad_step=grad_step,
            before_step=torch.compiler.cudagraph_mark_step_begin if self.cuda_graphs else None,
        )
        # CUDA-graph outputs are overwritten by the next replay: copy them out.
        return latents[:b].clone() if self.cuda_graphs else latents[:b]

    def _decode(self, states: Sequence[StreamState], latents: torch.Tensor, n_gen: int, n_emit: int,
                batching: BatchingConfig, emit: bool = True) -> list[torch.Tensor] | None:
        """Step 4 in VAE-sized parts: decode, colour-correct the frames that are emitted or re-encoded
        (per frame, so the leading ones are skipped), keep the motion frames, convert to uint8.

        Returns:
            per stream, uint8 ``[n_emit, H, W, 3]`` on the device (empty without ``emit``).
        """
        cfg, vae = self.streaming, self.vae
        param = next(vae.parameters(), None)
        vae_dtype = latents.dtype if param is None else param.dtype
        keep_from = max(0, n_gen - max(n_emit, cfg.motion_frames))
        frames: list[torch.Tensor] = []
        for part in chunked(range(len(states)), batching.vae_batch):
            rows = _pad_rows(latents[part[0] : part[-1] + 1], batching.padded_vae(len(part)))
            video = vae.decode(rows.to(vae_dtype))[: len(part), :, keep_from:]  # [b', 3, T, H, W] in [-1, 1]
            if cfg.color_correction_strength > 0:
                stats = [states[i].ref_stats for i in part]
                ref_stats = (torch.cat([m for m, _ in stats]), torch.cat([s for _, s in stats])) if len(part) > 1 \
                    else stats[0]
                video = match_colors(video, ref_stats, cfg.color_correction_strength)
            for i, v in zip(part, video.split(1)):
                states[i].motion_video = v[:, :, -cfg.motion_frames :].contiguous()
                if emit:  # the rollout's re-encode needs only the motion frames
                    frames.append(frames_to_uint8(v[0, :, v.shape[2] - n_emit :], round_=self.uint8_round))
        return frames


__all__ = ["BatchingConfig", "ChunkStep", "ChunkTimings", "Denoiser", "StepOutput", "StreamState", "chunked"]

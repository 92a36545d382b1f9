"""Streaming SoulX-FlashHead inference: PCM chunks in, uint8 frame chunks out.

Per chunk (FlashHead report §3.3; LiveTalk §2.3; public ``FlashHeadPipeline.generate``):

1. **audio** -- push the new ``new_frames * 640`` samples into the 8 s Temporal Audio Context Cache,
   re-encode the whole buffer with Wav2Vec, cut windows for the chunk's ``frame_num`` frames;
2. **DiT** -- 4 flow-matching steps, no CFG: the shared sampler
   (:func:`vividhead.flow_matching.sample_chunk`, the one recipe the trainers use too);
3. **decode** -- VAE-decode all ``frame_num`` frames, colour-correct to the reference image;
4. emit frames ``motion_frames..frame_num-1`` (``new_frames`` of them);
5. **encode** -- VAE-encode the last ``motion_frames`` decoded frames as the next chunk's motion
   latents (done at the start of the next chunk, so it is not between audio and frames).

Cold start: the motion latent of chunk 0 is the first latent frame of the reference latent (the
reference frame alone, FlashHead §3.1). Every chunk emits exactly ``samples / 640`` frames, so
audio and video never drift; the state (ring buffer, motion latents, RNG) has a fixed size.
With ``StreamingConfig.fast_start`` the first chunk is only ``motion_frames`` long (see there).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from vividhead.flow_matching import reference_video, sample_chunk
from vividhead.models.audio_encoder import Wav2VecFeatures
from vividhead.models.configs import FlashHeadVariant, StreamingConfig, VAEKind
from vividhead.models.flashhead import FlashHeadTransformer
from vividhead.models.loading import load_flashhead_transformer
from vividhead.models.vae import VideoVAE, build_vae, load_vae
from vividhead.streaming.audio_cache import TemporalAudioContextCache
from vividhead.streaming.color import match_colors, reference_lab_stats
from vividhead.streaming.fidelity import FidelityOptions, apply_to_vae, frames_to_uint8, preprocess_reference


def pcm_to_float(pcm: np.ndarray | bytes) -> np.ndarray:
    """Mono PCM to float32 in [-1, 1]: ``bytes`` are s16le; int16 arrays are scaled by 1/32768;
    float arrays are taken as they are.

    Raises:
        ValueError: odd byte count, multi-dimensional or non-numeric input.
    """
    if isinstance(pcm, (bytes, bytearray, memoryview)):
        if len(pcm) % 2:
            raise ValueError("s16le PCM needs an even number of bytes")
        pcm = np.frombuffer(pcm, dtype="<i2")
    arr = np.asarray(pcm)
    if arr.ndim != 1:
        raise ValueError(f"mono PCM must be 1-D, got shape {arr.shape}")
    if arr.dtype == np.int16:
        return arr.astype(np.float32) / 32768.0
    if np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32, copy=False)
    raise ValueError(f"unsupported PCM dtype {arr.dtype}")


def compile_no_grad(fn, **compile_kwargs):
    """``torch.compile(fn, dynamic=False)`` always entered with autograd off.

    Dynamo guards every compiled frame on the caller's grad mode, so a compiled VAE entered from a
    thread or call site with autograd on after one with it off recompiles (seen on an H200 in
    ``vividhead serve``: a compiled LTX decode recompiled mid-stream, several seconds of stall);
    entering under ``torch.no_grad`` keeps one graph per shape.
    """
    compiled = torch.compile(fn, dynamic=False, **compile_kwargs)

    def call(*args, **kwargs):
        with torch.no_grad():
            return compiled(*args, **kwargs)

    return call


@dataclass
class FlashHeadModels:
    """The weights shared by all sessions: DiT, VAE, Wav2Vec, on one device.

    Attributes:
        variant: shapes and chunk geometry.
        transformer: :class:`FlashHeadTransformer` (``dtype``).
        vae: :class:`VideoVAE` (``dtype``).
        audio_encoder: :class:`Wav2VecFeatures` (float32).
        device, dtype: where / in what precision the DiT and VAE run.
        cuda_graphs: the DiT replays CUDA graphs (set by :meth:`optimize`).
        fidelity: released-code behaviour or ours where they differ
            (:class:`vividhead.streaming.fidelity.FidelityOptions`); its LTX switches are set on the
            VAE here, the rest every session reads.
    """

    variant: FlashHeadVariant
    transformer: FlashHeadTransformer
    vae: VideoVAE
    audio_encoder: Wav2VecFeatures
    device: torch.device
    dtype: torch.dtype
    cuda_graphs: bool = False
    fidelity: FidelityOptions = field(default_factory=FidelityOptions)

    def __post_init__(self) -> None:
        self.vae = apply_to_vae(self.vae, self.fidelity)

    @classmethod
    def random(
        cls,
        variant: FlashHeadVariant,
        device: str = "cpu",
        dtype: torch.dtype = torch.float32,
        seed: int = 0,
        tiny_encoders: bool = False,
    ) -> FlashHeadModels:
        """Random weights with the variant's shapes.

        Used by CPU tests and by the speed benchmarks (speed does not depend on weight values).

        Args:
            tiny_encoders: a few-channel random VAE of the variant's kind and a two-layer Wav2Vec
                (for toy DiT configs on the CPU) instead of the released encoder shapes.
        """
        torch.manual_seed(seed)
        dev = torch.device(device)
        old_dtype = torch.get_default_dtype()
        # DiT and VAE are built directly in ``dtype`` on ``dev`` (a 14B DiT in float32 on the CPU
        # would take minutes and twice the memory); Wav2Vec stays float32.
        torch.set_default_dtype(dtype)
        try:
            with dev:
                transformer = FlashHeadTransformer.from_config_dataclass(variant.transformer)
                vae = build_vae(variant.vae, tiny=tiny_encoders)
        finally:
            torch.set_default_dtype(old_dtype)
        with dev:
            if tiny_encoders:
                audio = Wav2VecFeatures.tiny()
            else:
                from transformers import Wav2Vec2Config, Wav2Vec2Model

                audio = Wav2VecFeatures(Wav2Vec2Model(Wav2Vec2Config()))  # wav2vec2-base shapes
        return cls(
            variant,
            transformer.to(dev, dtype).eval().requires_grad_(False),
            vae.to(dev, dtype).eval().requires_grad_(False),
            audio.to(dev).eval().requires_grad_(False),
            dev,
            dtype,
        )

    @classmethod
    def from_pretrained(
        cls,
        variant: FlashHeadVariant,
        transformer_dir: str | Path,
        vae_path: str | Path,
        wav2vec_dir: str | Path,
        device: str = "cuda",
        dtype: torch.dtype = torch.bfloat16,
        vae_config: dict | None = None,
    ) -> FlashHeadModels:
        """Load released weights from local paths with strict key matching.

        Args:
            transformer_dir: upstream ``Model_Pro`` / ``Model_Lite`` folder.
            vae_path: Wan2.1 VAE (``VAE_Wan/Wan2.1_VAE.pth`` or a diffusers folder) / LTX VAE folder.
            wav2vec_dir: local ``wav2vec2-base-960h`` folder.

        Raises:
            FileNotFoundError, KeyError: see the loaders.
        """
        dev = torch.device(device)
        transformer = load_flashhead_transformer(transformer_dir, dtype=dtype, device=dev)
        vae = load_vae(variant.vae, vae_path, config=vae_config).to(dev, dtype)
        audio = Wav2VecFeatures.from_pretrained(wav2vec_dir).to(dev)
        return cls(variant, transformer, vae, audio, dev, dtype)

    @classmethod
    def from_export(cls, path: str | Path, device: str = "cuda", dtype: torch.dtype = torch.bfloat16) -> FlashHeadModels:
        """Load a folder written by ``vividhead train export`` (a stage-1 or stage-2 checkpoint):
        DiT, VAE and Wav2Vec, with the variant (shapes, streaming geometry) it was trained as.

        Raises:
            vividhead.export_format.ExportFormatError: not an export folder, or another format version.
            KeyError: DiT or VAE keys that do not match (strict loading).
        """
        from vividhead.export_format import read_export
        from vividhead.models.loading import load_flashhead_transformer

        export = read_export(path)
        dev = torch.device(device)
        transformer = load_flashhead_transformer(export.transformer_dir, dtype=dtype, device=dev)
        vae = load_vae(export.variant.vae, export.vae_dir).to(dev, dtype)
        audio = Wav2VecFeatures.from_pretrained(export.audio_encoder_dir).to(dev)
        return cls(export.variant, transformer, vae, audio, dev, dtype)

    def optimize(self, compile_dit: bool = True, cuda_graphs: bool = True, fast_vae: bool = True,
                 fp8: bool = False, vae_compile: str | None = "default") -> dict:
        """Make inference fast on a GPU, in place; every choice is measured in
        ``benchmarks/inference.py`` / ``benchmarks/inference_kernels.py`` (docs/benchmarks.md). The
        defaults are the fast path ``vividhead infer`` / ``serve`` take on a GPU.

        Args:
            compile_dit: ``torch.compile`` the DiT forward (static shapes: one graph per chunk length).
            cuda_graphs: with ``compile_dit``, replay the compiled DiT as CUDA graphs
                (``mode="reduce-overhead"``): 2x per step at Lite's 1280 tokens, neutral at Pro's 9216.
                Replays share output buffers, so keep one thread generating at a time.
            fast_vae: Wan VAE: channels-last, fused RMS norm + SiLU, one-pass decode / encode
                (:meth:`vividhead.models.vae.WanVAE.accelerate`), compiled per ``vae_compile``;
                LTX VAE: ``torch.compile`` of the decode and of the encoder's moments (2.6x / 2.8x on
                an H100; channels-last makes it slower), the posterior sample staying eager.
            vae_compile: with ``fast_vae`` on a Wan VAE (GPU): ``torch.compile`` mode of the whole
                decoder and encoder (``"default"``: decode 233 -> 187 ms per Pro chunk on an H200,
                within the bf16 error of the uncompiled path; ``"max-autotune-no-cudagraphs"``
                autotunes every convolution for minutes), one graph per chunk shape; ``None``: only
                the fused norms are compiled.
            fp8: row-wise FP8 GEMMs in the DiT blocks (:mod:`vividhead.inference.fp8`; Ada / Hopper
                GPUs). Replaces the block weights by FP8 copies (not reversible); moves outputs by
                more than bf16 rounding, so it is opt-in.

        Returns:
            what was applied, e.g. ``{"dit": "reduce-overhead", "vae": "wan-accelerated"}``.
        """
        from vividhead.models.vae import LTXVAE, WanVAE

        torch.backends.cudnn.benchmark = True
        applied = {}
        if fp8:
            from vividhead.inference.fp8 import convert_linears_to_fp8

            applied["fp8_linears"] = convert_linears_to_fp8(self.transformer)
        if compile_dit:
            mode = "reduce-overhead" if cuda_graphs else None
            self.transformer.forward = torch.compile(self.transformer.forward, mode=mode, dynamic=False)
            self.cuda_graphs = cuda_graphs
            applied["dit"] = mode or "compiled"
        vae = getattr(self.vae, "vae", self.vae)  # a ParallelWanVAE wraps a WanVAE as .vae
        if fast_vae and isinstance(vae, WanVAE):
            on_gpu = self.device.type == "cuda"
            vae.accelerate(compile_norms=on_gpu, compile_coders=vae_compile if on_gpu else None)
            applied["vae"] = "wan-accelerated" + (f"+compiled ({vae_compile})" if on_gpu and vae_compile else "")
        elif fast_vae and isinstance(vae, LTXVAE):
            vae.decode = compile_no_grad(vae.decode)
            # the moments only: the posterior sample (with each session's generator) stays eager
            vae.encode_moments = compile_no_grad(vae.encode_moments)
            applied["vae"] = "ltx-compiled"
        return applied

    def warm_up(self, streaming: StreamingConfig | None = None, chunks: int = 2) -> float:
        """Run a throwaway session through every chunk shape ``streaming`` will use, so compilation,
        CUDA-graph recording and cuDNN autotuning happen now (at server start) and not on a user's
        first chunk. Standard path: one chunk length (the DiT, the decode, the reference encode and,
        from the second chunk on, the motion encode); ``fast_start`` adds its short first chunk.
        The models' weights and later sessions are unaffected.

        Args:
            streaming: chunk geometry (default: the variant's).
            chunks: chunks to run, the first one short with ``fast_start`` (2 reach every shape: the
                motion encode runs from the second on; CUDA graphs record on the first).

        Returns:
            seconds spent (device synchronised).
        """
        cfg = streaming or self.variant.streaming
        t0 = time.perf_counter()
        ref = np.random.RandomState(0).randint(0, 256, (cfg.height_px, cfg.width_px, 3), dtype=np.uint8)
        pcm = (np.random.RandomState(1).randn(cfg.samples_per_chunk * (chunks + 1)) * 3000).astype(np.int16)
        session = StreamingSession(self, ref, streaming=cfg)
        n = session._next_chunk_samples() + cfg.samples_per_chunk * (chunks - 1)
        for _ in session.feed(pcm[:n]):
            pass
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0


@dataclass
class ChunkTimings:
    """Seconds spent in each stage of the last chunk (synchronised only if ``profile=True``);
    ``encode`` is the previous chunk's motion-frame encode, which runs at the start of this one."""

    audio: float = 0.0
    dit: float = 0.0
    decode: float = 0.0
    encode: float = 0.0
    other: float = 0.0
    total: float = 0.0
    extra: dict = field(default_factory=dict)


class StreamingSession:
    """One talking-head stream: PCM chunks in, uint8 ``[N, H, W, 3]`` frame chunks out.

    The heavy weights live in :class:`FlashHeadModels` and are shared; this object holds the
    per-session state of fixed size: audio ring buffer, pending PCM (< one chunk), motion latents,
    reference latent and RNG.

    Args:
        models: shared weights.
        reference_image: uint8 ``[H, W, 3]`` RGB.
        seed: noise seed.
        streaming: chunk geometry (default: the variant's).
        profile: synchronise the device around stages to fill :attr:`timings`.

    Example::

        session = StreamingSession(models, ref)
        for pcm in microphone():            # any chunk size
            for frames in session.feed(pcm):   # uint8 [28, 512, 512, 3] (Pro)
                show(frames)
        for frames in session.flush():
            show(frames)
    """

    def __init__(
        self,
        models: FlashHeadModels,
        reference_image: np.ndarray,
        seed: int = 42,
        streaming: StreamingConfig | None = None,
        profile: bool = False,
    ) -> None:
        self.models = models
        self.cfg = streaming or models.variant.streaming
        self.profile = profile
        cfg, tcfg, dev = self.cfg, models.variant.transformer, models.device
        vae = models.vae
        if (cfg.frame_num - 1) % vae.temporal_stride or (cfg.motion_frames - 1) % vae.temporal_stride:
            raise ValueError("frame_num and motion_frames must be 1 + k * temporal stride")
        self.latent_hw = (cfg.height_px // vae.spatial_stride, cfg.width_px // vae.spatial_stride)
        self.audio_cache = TemporalAudioContextCache(
            models.audio_encoder, cfg.sample_rate_hz, cfg.fps, cfg.cache_seconds, cfg.frame_num,
            tcfg.audio_window, device=dev,
        )
        self.generator = torch.Generator(device=dev).manual_seed(seed)
        self.seed = seed
        self.schedule = cfg.schedule
        fid = models.fidelity
        ref = preprocess_reference(reference_image, cfg.height_px, cfg.width_px, antialias=fid.reference_antialias,
                                   dtype=models.dtype).to(dev)
        self.ref_stats = reference_lab_stats(ref)
        # LTX posterior noise (FidelityOptions.ltx_sample_posterior) has its own generators, so the
        # sampler's noise stream is the same with and without it.
        self._posterior_generator = torch.Generator(device=dev)
        with torch.no_grad():
            # Reference latent: the reference frame repeated over the whole chunk (public code).
            self.ref_latent = self._vae_encode(reference_video(ref.to(models.dtype), cfg.frame_num),
                                               torch.Generator(device=dev).manual_seed(seed + 1))
        self._pending = np.zeros(cfg.samples_per_chunk, dtype=np.float32)
        self._pending_len = 0
        self._ready: deque[tuple[np.ndarray, int]] = deque()  # (samples, chunk index)
        # CUDA: the audio encoder runs on its own stream, overlapping the motion-frame encode
        self._audio_stream = torch.cuda.Stream(dev) if dev.type == "cuda" else None
        self.timings = ChunkTimings()
        self.reset()

    # -- state ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Cold start: silence in the audio cache, motion latent = first reference latent frame."""
        self.audio_cache.reset()
        self.motion_latents = self.ref_latent[:, :, :1].clone()
        self._motion_video: torch.Tensor | None = None  # decoded motion frames awaiting encode
        self._pending_len = 0
        self._ready.clear()
        self._chunks_split = 0
        self.samples_received = 0
        self.frames_emitted = 0
        self.chunks_done = 0
        self.generator.manual_seed(self.seed)
        self._posterior_generator.manual_seed(self.seed + 2)

    # -- public API -----------------------------------------------------------------------------
    def feed(self, pcm: np.ndarray | bytes) -> Iterator[np.ndarray]:
        """Add PCM (see :func:`pcm_to_float`) and return an iterator over the frame chunks that are
        now complete. The samples are split into chunks at once; generation happens as the iterator
        is consumed, each chunk yielded as soon as it is decoded (chunks of an unconsumed iterator
        are generated by the next ``feed``/``flush``).

        Yields:
            uint8 ``[new_frames, H, W, 3]`` RGB frames (28 for Pro, 24 for Lite; a fast-start
            first chunk has ``motion_frames - 1``: 4 for Pro, 8 for Lite).
        """
        samples = pcm_to_float(pcm)
        self.samples_received += samples.shape[0]
        return self._drain(samples)

    def flush(self) -> Iterator[np.ndarray]:
        """Finish the stream: pad the pending samples with silence to one chunk and emit only the
        frames they cover (``ceil(pending / 640)``), so frames out == ``ceil(samples in / 640)``."""
        out = list(self._generate_ready())
        if self._pending_len == 0:
            return iter(out)
        n_frames = -(-self._pending_len // self.cfg.samples_per_frame)
        size = self._next_chunk_samples()
        self._pending[self._pending_len : size] = 0.0
        self._pending_len = 0
        index = self._chunks_split
        self._chunks_split += 1
        frames = self._run_chunk(self._pending[:size], index)
        self.frames_emitted -= frames.shape[0] - n_frames
        out.append(frames[:n_frames])
        return iter(out)

    # -- internals ------------------------------------------------------------------------------
    def _drain(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        # Split eagerly (so samples are never lost if the iterator is dropped), generate lazily.
        i = 0
        while i < samples.shape[0]:
            spc = self._next_chunk_samples()
            take = min(spc - self._pending_len, samples.shape[0] - i)
            self._pending[self._pending_len : self._pending_len + take] = samples[i : i + take]
            self._pending_len += take
            i += take
            if self._pending_len == spc:
                self._ready.append((self._pending[:spc].copy(), self._chunks_split))
                self._chunks_split += 1
                self._pending_len = 0
        return self._generate_ready()

    def _next_chunk_samples(self) -> int:
        return self.cfg.chunk_frames(self._chunks_split)[1] * self.cfg.samples_per_frame

    def _generate_ready(self) -> Iterator[np.ndarray]:
        while self._ready:
            yield self._run_chunk(*self._ready.popleft())

    def _vae_encode(self, video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """VAE-encode ``[1, 3, T, H, W]``; an LTX VAE that samples its posterior draws from ``generator``."""
        vae = self.models.vae
        if getattr(vae, "sample_posterior", False):
            return vae.encode(video, generator=generator)
        return vae.encode(video)

    def _sync(self) -> float:
        if self.profile and self.models.device.type == "cuda":
            torch.cuda.synchronize(self.models.device)
        return time.perf_counter()

    def _chunk_noise(self, channels: int, n_lat: int) -> torch.Tensor:
        """The chunk's starting noise from this session's generator: float32 ``[1, C, F', h, w]``
        (also drawn by the batched step, :mod:`vividhead.inference.batching`)."""
        return torch.randn((1, channels, n_lat, *self.latent_hw), generator=self.generator,
                           device=self.models.device, dtype=torch.float32)

    @torch.no_grad()
    def generate_latents(self, context: torch.Tensor) -> torch.Tensor:
        """Four-step flow-matching sampling of one chunk.

        Args:
            context: float32 ``[1, F, W, L, D]`` audio windows of the chunk's ``F`` frames
                (``frame_num``, or ``motion_frames`` for a fast-start first chunk).

        Returns:
            ``[1, C, F', h, w]`` latents (model dtype) with motion latents in front,
            ``F' = (F - 1) / temporal_stride + 1``.
        """
        m, dt = self.models, self.models.dtype
        c = self.ref_latent.shape[1]
        n_lat = (context.shape[1] - 1) // self.models.vae.temporal_stride + 1
        ref_latent = self.ref_latent[:, :, :n_lat]  # causal VAE: a prefix of the reference latent
        noise = self._chunk_noise(c, n_lat)
        ctx = context.to(dt)
        return sample_chunk(
            lambda x, t: m.transformer(x, t, ctx, ref_latent),
            noise, self.motion_latents, self.schedule, generator=self.generator, dtype=dt,
            before_step=torch.compiler.cudagraph_mark_step_begin if m.cuda_graphs else None,
        )

    @torch.no_grad()
    def _run_chunk(self, samples: np.ndarray, index: int) -> np.ndarray:
        cfg, vae = self.cfg, self.models.vae
        n_gen, n_emit = cfg.chunk_frames(index)
        t0 = self._sync()
        if self._audio_stream is not None and not self.profile:
            # Wav2Vec on a side stream, concurrent with the motion encode below (the DiT needs both)
            self._audio_stream.wait_stream(torch.cuda.current_stream(self.models.device))
            with torch.cuda.stream(self._audio_stream):
                self.audio_cache.push(samples)
                context = self.audio_cache.context(n_gen)  # [1, n_gen, W, L, D] float32
            self._audio_done = self._audio_stream.record_event()
            samples = None
        if self._motion_video is not None:
            # The previous chunk's motion frames are encoded here, after its frames were handed
            # out, so the encode is not on the path from audio to frames.
            self.motion_latents = self._vae_encode(self._motion_video, self._posterior_generator)
            self._motion_video = None
        t_enc = self._sync() - t0
        t0 = time.perf_counter()
        if samples is None:  # computed on the side stream above
            main = torch.cuda.current_stream(self.models.device)
            main.wait_event(self._audio_done)
            context.record_stream(main)
        else:
            self.audio_cache.push(samples)
            context = self.audio_cache.context(n_gen)
        t1 = self._sync()
        latents = self.generate_latents(context)
        t2 = self._sync()
        video = vae.decode(latents)  # [1, 3, n_gen, H, W] in [-1, 1]
        frames = self._finish_chunk(video, n_gen, n_emit)
        t3 = self._sync()
        out = frames.cpu().numpy()
        t4 = time.perf_counter()
        self.timings = ChunkTimings(audio=t1 - t0, dit=t2 - t1, decode=t3 - t2, encode=t_enc, other=t4 - t3,
                                    total=t4 - t0 + t_enc)
        self.chunks_done += 1
        self.frames_emitted += out.shape[0]
        return out


    def _finish_chunk(self, video: torch.Tensor, n_gen: int, n_emit: int) -> torch.Tensor:
        """Colour-correct a decoded chunk, keep its last ``motion_frames`` for the next chunk's motion
        encode and return the emitted frames (also called per session by the batched step).

        Args:
            video: ``[1, 3, n_gen, H, W]`` decoded frames in [-1, 1] (model dtype).
            n_gen, n_emit: frames generated / emitted by this chunk (:meth:`StreamingConfig.chunk_frames`).

        Returns:
            uint8 ``[n_emit, H, W, 3]`` on the model device.
        """
        cfg = self.cfg
        # Only the last n_emit frames are emitted or re-encoded (the last motion_frames lie inside,
        # or are all n_gen frames of a fast-start chunk), so the leading frames are neither
        # colour-corrected nor copied out.
        keep = video[:, :, max(0, n_gen - max(n_emit, cfg.motion_frames)) :]
        if cfg.color_correction_strength > 0:
            keep = match_colors(keep, self.ref_stats, cfg.color_correction_strength)
        self._motion_video = keep[:, :, -cfg.motion_frames :].contiguous()
        new = keep[0, :, keep.shape[2] - n_emit :]  # [3, n_emit, H, W]
        return frames_to_uint8(new, round_=self.models.fidelity.uint8_round)


def state_nbytes(session: StreamingSession) -> int:
    """Bytes held by a session's mutable state (ring buffer, pending PCM, motion latents): constant
    over the stream; used by the constant-memory test."""
    n = session.audio_cache.buffer._buf.nbytes + session._pending.nbytes
    n += session.motion_latents.numel() * session.motion_latents.element_size()
    if session._motion_video is not None:
        n += session._motion_video.numel() * session._motion_video.element_size()
    return n


def default_dtype_for(device: str) -> torch.dtype:
    """bf16 on CUDA, float32 on CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


__all__ = [
    "ChunkTimings",
    "FlashHeadModels",
    "StreamingSession",
    "VAEKind",
    "default_dtype_for",
    "pcm_to_float",
    "preprocess_reference",
    "state_nbytes",
]

"""Streaming SoulX-FlashHead inference: PCM chunks in, uint8 frame chunks out.

:class:`FlashHeadModels` holds the weights and their :class:`~vividhead.streaming.step.ChunkStep`;
:class:`StreamingSession` splits one stream's PCM into chunks and advances its
:class:`~vividhead.streaming.step.StreamState` through that step (alone, or batched by
:func:`advance`). What one chunk does (implemented once, in :mod:`vividhead.streaming.step`),
per chunk (FlashHead report §3.3; LiveTalk §2.3; public ``FlashHeadPipeline.generate``):

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

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from vividhead.models.audio_encoder import Wav2VecFeatures
from vividhead.models.compiling import batch_dynamic
from vividhead.models.configs import FlashHeadVariant, StreamingConfig, VAEKind
from vividhead.models.flashhead import FlashHeadTransformer
from vividhead.models.loading import load_flashhead_transformer
from vividhead.models.vae import VideoVAE, build_vae, load_vae
from vividhead.streaming.color import reference_lab_stats
from vividhead.streaming.fidelity import FidelityOptions, apply_to_vae, preprocess_reference
from vividhead.streaming.step import BatchingConfig, ChunkStep, ChunkTimings, StepOutput

log = logging.getLogger(__name__)


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
        if export.lora_dir is not None:  # a --no-merge export: its adapters over its base
            from vividhead.models.lora import apply_lora

            transformer = apply_lora(transformer, export.lora_dir).eval().requires_grad_(False)
        vae = load_vae(export.variant.vae, export.vae_dir).to(dev, dtype)
        audio = Wav2VecFeatures.from_pretrained(export.audio_encoder_dir).to(dev)
        return cls(export.variant, transformer, vae, audio, dev, dtype)

    def optimize(self, compile_dit: bool = True, cuda_graphs: bool = True, fast_vae: bool = True,
                 fp8: bool = False, vae_compile: str | None = "default", dynamic_batch: bool = False) -> dict:
        """Make inference fast on a GPU, in place; every choice is measured in
        ``benchmarks/inference.py`` / ``benchmarks/inference_kernels.py`` (docs/benchmarks.md). The
        defaults are the fast path ``vividhead infer`` / ``serve`` take on a GPU.

        Args:
            compile_dit: ``torch.compile`` the DiT forward (static shapes: one graph per chunk length).
            cuda_graphs: with ``compile_dit``, replay the compiled DiT as CUDA graphs
                (``mode="reduce-overhead"``): 2x per step at Lite's 1280 tokens, neutral at Pro's 9216.
                Replays share output buffers, so keep one thread generating at a time.
            fast_vae: :func:`vividhead.models.vae.accelerate_vae` (the trainers apply the same to
                their frozen VAE): Wan VAE: channels-last, fused RMS norm + SiLU, one-pass decode /
                encode (:meth:`vividhead.models.vae.WanVAE.accelerate`), compiled per ``vae_compile``;
                LTX VAE: ``torch.compile`` of the decode and of the encoder's moments (2.6x / 2.8x on
                an H100; channels-last makes it slower), the posterior sample staying eager.
            vae_compile: with ``fast_vae`` on a Wan VAE (GPU): ``torch.compile`` mode of the whole
                decoder and encoder (``"default"``: decode 233 -> 187 ms per Pro chunk on an H200,
                within the bf16 error of the uncompiled path; ``"max-autotune-no-cudagraphs"``
                autotunes every convolution for minutes), one graph per chunk shape; ``None``: only
                the fused norms are compiled.
            dynamic_batch: compile the DiT and the LTX VAE coders with a symbolic batch dimension
                (:func:`vividhead.models.compiling.batch_dynamic`): one graph for every batch size,
                1 included, instead of one per batch bucket, for a shorter serving warm-up and exact
                batch sizes (no padding). Off by default: on one H100 its DiT took 5% longer than the
                static graph for a round of 16 Lite sessions (0.429 vs 0.409 s, FP8;
                docs/benchmarks.md, "Concurrent streams, part 4").
            fp8: row-wise FP8 GEMMs in the DiT blocks (:mod:`vividhead.inference.fp8`; Ada / Hopper
                GPUs). Replaces the block weights by FP8 copies (not reversible); moves outputs by
                more than bf16 rounding, so it is opt-in.

        Returns:
            what was applied, e.g. ``{"dit": "reduce-overhead", "vae": "wan-accelerated"}``.
        """
        from vividhead.models.vae import accelerate_vae

        torch.backends.cudnn.benchmark = True
        applied = {}
        if fp8:
            from vividhead.inference.fp8 import convert_linears_to_fp8

            applied["fp8_linears"] = convert_linears_to_fp8(self.transformer)
        if compile_dit:
            mode = "reduce-overhead" if cuda_graphs else None
            forward = torch.compile(self.transformer.forward, mode=mode, dynamic=False)
            self.transformer.forward = batch_dynamic(forward) if dynamic_batch else forward
            self.cuda_graphs = cuda_graphs
            applied["dit"] = (mode or "compiled") + (", dynamic batch" if dynamic_batch else "")
        if fast_vae:
            what = accelerate_vae(self.vae, on_gpu=self.device.type == "cuda", compile_mode=vae_compile,
                                  dynamic_batch=dynamic_batch)
            if what is not None:
                applied["vae"] = what
        return applied

    @property
    def step(self) -> ChunkStep:
        """The per-chunk step (:class:`vividhead.streaming.step.ChunkStep`) over these weights: every
        session of ``infer`` and ``serve`` advances through it. Built once (its pinned staging buffers
        persist); re-pointed at the current DiT forward, VAE and CUDA-graph flag at every access, so
        :meth:`optimize` or a parallel VAE set later are used."""
        step = self.__dict__.get("_step")
        if step is None:
            cfg = self.variant.streaming
            step = ChunkStep(self._denoise, self.vae, self.audio_encoder, cfg, cfg.schedule,
                             self.variant.transformer.audio_window, dtype=self.dtype,
                             uint8_round=self.fidelity.uint8_round)
            self.__dict__["_step"] = step
        step.vae, step.audio_encoder, step.cuda_graphs = self.vae, self.audio_encoder, self.cuda_graphs
        return step

    def _denoise(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return self.transformer(x, t, context, ref)

    def warm_up(self, streaming: StreamingConfig | None = None, batch_sizes: Sequence[int] = (1,),
                batching: BatchingConfig | None = None, measured_rounds: int = 0,
                on_round: Callable[[int, float, ChunkTimings], None] | None = None,
                profile: bool = False) -> float:
        """Run throw-away streams through every chunk shape ``streaming`` will use, at each batch size,
        so compilation, CUDA-graph recording and cuDNN autotuning happen now (at start-up) and not on a
        user's first chunk; the one warm-up of ``infer``, ``serve`` and the benchmarks.

        Per batch size: the cold-start chunk(s) (the short first chunk with ``fast_start``; the first
        chunk has no motion encode), one standard round (the first call of the standard shape at
        that size, where a compiled path compiles and captures it), then ``measured_rounds`` standard
        rounds, each reported to ``on_round(batch size, seconds, the first stream's ChunkTimings)``.
        The weights and later sessions are unaffected.

        Args:
            streaming: chunk geometry (default: the variant's).
            batch_sizes: stream counts to run together.
            batching: padding buckets and VAE part size (``serve``'s).
            measured_rounds: standard rounds to time after the unmeasured ones.
            on_round: receives each measured round.
            profile: synchronise the device between the parts of each chunk, so the timings are
                exact (:class:`StreamingSession`'s ``profile``; the rounds are then a little slower).

        Returns:
            seconds spent (device synchronised).
        """
        cfg = streaming or self.variant.streaming
        t0 = time.perf_counter()
        rng = np.random.default_rng(0)
        ref = np.random.RandomState(0).randint(0, 256, (cfg.height_px, cfg.width_px, 3), dtype=np.uint8)
        skip = 2  # the cold-start chunk (short with fast_start, no motion encode), then one standard round
        for b in batch_sizes:
            sessions = [StreamingSession(self, ref, streaming=cfg, profile=profile) for _ in range(b)]
            for r in range(skip + measured_rounds):
                n = cfg.chunk_frames(r)[1] * cfg.samples_per_frame
                pcm = [(rng.standard_normal(n) * 0.1).astype(np.float32) for _ in sessions]
                t1 = time.perf_counter()
                advance(sessions, pcm, batching)
                if r >= skip and on_round is not None:
                    on_round(b, time.perf_counter() - t1, sessions[0].timings)
            log.info("warm-up: batch %d ready, %.1f s since the warm-up started", b, time.perf_counter() - t0)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0


class StreamingSession:
    """One talking-head stream: PCM chunks in, uint8 ``[N, H, W, 3]`` frame chunks out.

    The heavy weights live in :class:`FlashHeadModels` and are shared; this object splits the PCM
    into chunks and holds the stream's :class:`vividhead.streaming.step.StreamState` (audio ring
    buffer, motion latents, reference latent, RNG), of fixed size. Every chunk goes through
    ``models.step``, alone (:meth:`feed`) or batched with other sessions (:func:`advance`).

    Args:
        models: shared weights.
        reference_image: uint8 ``[H, W, 3]`` RGB.
        seed: noise seed.
        streaming: chunk geometry (default: the variant's).
        profile: synchronise the device around parts to fill :attr:`timings`.
        on_chunk: called with every chunk's :class:`vividhead.streaming.step.StepOutput`.

    Raises:
        ValueError: chunk or motion lengths that are not ``1 + k * temporal stride``.

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
        on_chunk: Callable[[StepOutput], None] | None = None,
    ) -> None:
        self.models = models
        self.cfg = streaming or models.variant.streaming
        self.profile = profile
        self.on_chunk = on_chunk
        cfg, vae = self.cfg, models.vae
        if (cfg.frame_num - 1) % vae.temporal_stride or (cfg.motion_frames - 1) % vae.temporal_stride:
            raise ValueError("frame_num and motion_frames must be 1 + k * temporal stride")
        self.seed = seed
        fid = models.fidelity
        ref = preprocess_reference(reference_image, cfg.height_px, cfg.width_px, antialias=fid.reference_antialias,
                                   dtype=models.dtype).to(models.device)
        self.state = self.step.new_state(ref.to(models.dtype), reference_lab_stats(ref), seed)
        self._pending = np.zeros(cfg.samples_per_chunk, dtype=np.float32)
        self._pending_len = 0
        self._ready: deque[tuple[np.ndarray, int]] = deque()  # (samples, chunk index)
        self.timings = ChunkTimings()
        self.reset()

    @property
    def step(self) -> ChunkStep:
        """The models' chunk step, with this session's geometry and profiling."""
        step = self.models.step
        step.streaming, step.profile = self.cfg, self.profile
        return step

    # -- state ----------------------------------------------------------------------------------
    @property
    def ref_latent(self) -> torch.Tensor:
        """``[1, C, F', h, w]`` the reference latent."""
        return self.state.ref_latent

    @property
    def motion_latents(self) -> torch.Tensor:
        """``[1, C, M, h, w]`` the next chunk's motion latents."""
        return self.state.motion_latents

    @motion_latents.setter
    def motion_latents(self, value: torch.Tensor) -> None:
        self.state.motion_latents = value

    @property
    def audio_cache(self):
        """The session's :class:`vividhead.streaming.audio_cache.TemporalAudioContextCache`."""
        return self.state.audio

    def reset(self) -> None:
        """Cold start: silence in the audio cache, motion latent = first reference latent frame."""
        self.state.cold_start()
        self._pending_len = 0
        self._ready.clear()
        self._chunks_split = 0
        self.samples_received = 0
        self.frames_emitted = 0
        self.chunks_done = 0
        self.state.generator.manual_seed(self.seed)
        self.state.posterior_generator.manual_seed(self.seed + 2)

    # -- public API -----------------------------------------------------------------------------
    def split(self, pcm: np.ndarray | bytes) -> list[tuple[np.ndarray, int]]:
        """Add PCM (see :func:`pcm_to_float`) and take the chunks it completes, without generating:
        ``(samples float32 [n_emit * 640], chunk index)`` each, to be generated in order through
        :func:`advance` (what the server's batch scheduler does)."""
        self._split(pcm_to_float(pcm))
        ready = list(self._ready)
        self._ready.clear()
        return ready

    def feed(self, pcm: np.ndarray | bytes) -> Iterator[np.ndarray]:
        """Add PCM (see :func:`pcm_to_float`) and return an iterator over the frame chunks that are
        now complete. The samples are split into chunks at once; generation happens as the iterator
        is consumed, each chunk yielded as soon as it is decoded (chunks of an unconsumed iterator
        are generated by the next ``feed``/``flush``).

        Yields:
            uint8 ``[new_frames, H, W, 3]`` RGB frames (28 for Pro, 24 for Lite; a fast-start
            first chunk has ``motion_frames - 1``: 4 for Pro, 8 for Lite).
        """
        self._split(pcm_to_float(pcm))
        return self._generate_ready()

    def flush(self) -> Iterator[np.ndarray]:
        """Finish the stream: pad the pending samples with silence to one chunk and emit only the
        frames they cover (``ceil(pending / 640)``), so frames out == ``ceil(samples in / 640)``."""
        out = list(self._generate_ready())
        tail = self.split_flush()
        if tail is not None:
            samples, _, keep = tail
            out.append(self.trim_flush(self.generate(samples), keep))
        return iter(out)

    def split_flush(self) -> tuple[np.ndarray, int, int] | None:
        """The tail of :meth:`flush` without generating (as :meth:`split` is to :meth:`feed`), so a
        server batches it with other sessions' chunks: the pending samples padded with silence to one
        chunk.

        Returns:
            ``(samples float32 [n_emit * 640], chunk index, frames to keep)``, to be generated after
            the chunks :meth:`split` gave and passed to :meth:`trim_flush`; ``None`` when nothing is
            pending.
        """
        if self._pending_len == 0:
            return None
        keep = -(-self._pending_len // self.cfg.samples_per_frame)
        size, index = self._next_chunk_samples(), self._chunks_split
        self._pending[self._pending_len : size] = 0.0
        self._pending_len = 0
        self._chunks_split += 1
        return self._pending[:size].copy(), index, keep

    def trim_flush(self, frames: np.ndarray, keep: int) -> np.ndarray:
        """The first ``keep`` of a flush chunk's uint8 ``[n_emit, H, W, 3]`` frames (the rest cover
        only padding); the emitted-frame count follows."""
        self.frames_emitted -= frames.shape[0] - keep
        return frames[:keep]

    def skip_chunk(self, index: int) -> None:
        """Count chunk ``index`` (as :meth:`split` numbered it) as done without its frames: its step
        raised and the caller reports the loss. The next chunk then runs as chunk ``index + 1``, at
        that chunk's length, as :meth:`split` cut its samples. (Left one chunk behind, a
        ``fast_start`` stream whose short first chunk was lost ran its next chunk at the short
        length, and a step batching it with other sessions' standard chunks raised ``ValueError``
        for all of them.) The audio cache, motion latents and RNG stay as the failed step left
        them; :attr:`frames_emitted` counts generated frames only.
        """
        self.state.chunk_index = index + 1

    def generate(self, samples: np.ndarray) -> np.ndarray:
        """Generate the next chunk from its samples (a batch of one through :func:`advance`).

        Returns:
            uint8 ``[n_emit, H, W, 3]``.
        """
        return advance([self], [samples])[0]

    # -- internals ------------------------------------------------------------------------------
    def _split(self, samples: np.ndarray) -> None:
        # Split eagerly (so samples are never lost if an iterator is dropped).
        self.samples_received += samples.shape[0]
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

    def _next_chunk_samples(self) -> int:
        return self.cfg.chunk_frames(self._chunks_split)[1] * self.cfg.samples_per_frame

    def _generate_ready(self) -> Iterator[np.ndarray]:
        while self._ready:
            yield self.generate(self._ready.popleft()[0])

    def _finish(self, out: StepOutput, host: np.ndarray) -> np.ndarray:
        """Count one chunk's frames (uint8 ``[n_emit, H, W, 3]`` on the host) and report it."""
        self.timings = out.timings
        self.chunks_done += 1
        self.frames_emitted += host.shape[0]
        if self.on_chunk is not None:
            self.on_chunk(out)
        return host


def advance(sessions: Sequence[StreamingSession], samples: Sequence[np.ndarray],
            batching: BatchingConfig | None = None) -> list[np.ndarray]:
    """Generate the next chunk of each session in one step of the models' :class:`ChunkStep`.

    Args:
        sessions: sessions of one model, geometry and chunk length (at most ``batching.max_batch``).
        samples: per session, float32 ``[n_emit * 640]`` its next chunk's samples.
        batching: padding buckets and VAE part size.

    Returns:
        per session, uint8 ``[n_emit, H, W, 3]`` frames.

    Raises:
        ValueError: sessions of different models, or the step's (see :class:`ChunkStep`).
    """
    first = sessions[0]
    if any(s.models is not first.models for s in sessions):
        raise ValueError("one step runs sessions of one model")
    t0 = time.perf_counter()
    out = first.step([s.state for s in sessions], samples=samples, batching=batching)
    result = [s._finish(out, f) for s, f in zip(sessions, _to_host(out.frames))]
    out.timings.other = time.perf_counter() - t0 - out.timings.total
    out.timings.total += out.timings.other
    return result


def _to_host(frames: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """Device frames to host arrays, one synchronisation per round (not one per stream).

    On CUDA every stream's frames are copied asynchronously into slices of one pinned host tensor
    (DMA at full bus speed; a pageable copy into fresh memory spends most of its time faulting pages
    in: 302 MB per batch-16 Lite round), then the stream is synchronised once. The arrays are views
    of that tensor and keep it alive: the server encodes them on other threads while the next round
    runs, and PyTorch's caching host allocator reuses the pinned block only once every view is gone.

    Args:
        frames: uint8 ``[n_emit_b, H, W, 3]`` per stream, on one device.

    Returns:
        uint8 ``[n_emit_b, H, W, 3]`` host arrays, in order.
    """
    if frames[0].device.type != "cuda":
        return [f.numpy() for f in frames]
    bounds = np.cumsum([0] + [f.shape[0] for f in frames])
    host = torch.empty((int(bounds[-1]), *frames[0].shape[1:]), dtype=frames[0].dtype, pin_memory=True)
    for f, a, b in zip(frames, bounds[:-1], bounds[1:]):
        host[a:b].copy_(f, non_blocking=True)
    torch.cuda.current_stream(frames[0].device).synchronize()
    return [host[a:b].numpy() for a, b in zip(bounds[:-1], bounds[1:])]


def state_nbytes(session: StreamingSession) -> int:
    """Bytes held by a session's mutable state (ring buffer, pending PCM, motion latents): constant
    over the stream; used by the constant-memory test."""
    return session.state.nbytes() + session._pending.nbytes


def default_dtype_for(device: str) -> torch.dtype:
    """bf16 on CUDA, float32 on CPU."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


__all__ = [
    "ChunkTimings",
    "FlashHeadModels",
    "StreamingSession",
    "VAEKind",
    "advance",
    "default_dtype_for",
    "pcm_to_float",
    "preprocess_reference",
    "state_nbytes",
]

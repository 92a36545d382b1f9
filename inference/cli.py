"""``vividhead infer`` (file to file) and ``vividhead serve`` (WebSocket) commands, registered on
the root command by :func:`register` (see :mod:`vividhead.cli`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable, NoReturn, Optional

import typer

from vividhead.devices import default_dtype_name, parse_dtype, resolve_device
from vividhead.errors import UserError
from vividhead.inference.admission import DEFAULT_LOAD_WINDOW_S, DEFAULT_REALTIME_MARGIN, AdmissionConfig
from vividhead.models.configs import VARIANTS, VAEKind, get_variant
from vividhead.streaming.fidelity import FIDELITY_HELP, FidelityOptions

if TYPE_CHECKING:
    import numpy as np

    from vividhead.inference.batching import BatchingConfig


def _fail(message: str) -> NoReturn:
    """Stop the command with an expected error: ``vividhead`` prints ``error: <message>`` as one line
    and exits with code 2 (:class:`vividhead.errors.UserError`)."""
    raise UserError(message)


@dataclass(frozen=True)
class ModelOptions:
    """The options ``infer`` and ``serve`` share: which weights, where, how to stream, the reference
    crop and the released-code fidelity switches.

    :func:`with_model_options` adds them to a command (their ``--help`` text is in
    :data:`MODEL_OPTIONS`, the fidelity flags' in :data:`vividhead.streaming.fidelity.FIDELITY_HELP`);
    the command receives them as one ``ModelOptions``. ``checkpoint``, ``checkpoint_dir`` and
    ``wav2vec_dir`` are local folders or Hugging Face Hub ids (``owner/name[@revision]``), resolved by
    :func:`vividhead.inference.checkpoints.resolve_source` (offline with ``VIVIDHEAD_OFFLINE=1``).
    """

    variant: str = "pro"
    checkpoint: Optional[str] = None
    checkpoint_dir: Optional[str] = None
    vae: Optional[Path] = None
    wav2vec_dir: Optional[str] = None
    lora: Optional[Path] = None
    random_weights: bool = False
    device: str = "auto"
    dtype: Optional[str] = None
    seed: int = 42
    fast_path: bool = True
    fp8: bool = False
    dynamic_batch: bool = False
    fast_start: bool = False
    crop_face: bool = False
    compile_artifacts: Optional[str] = None  # a local path or an fsspec URL (s3://...)
    fidelity: FidelityOptions = FidelityOptions()

    def prepare(self) -> ModelOptions:
        """:meth:`validate`, then :meth:`resolved`: what a command calls once its own inputs are
        checked and before :meth:`load` (so that a bad option fails before any model loads).

        Raises:
            UserError: see :meth:`validate` and :meth:`resolved`.
        """
        self.validate()
        return self.resolved()

    def resolved(self, announce: bool = True) -> ModelOptions:
        """These options with ``--device auto`` and the default ``--dtype`` made concrete
        (:mod:`vividhead.devices`: CUDA when torch sees one, else the CPU with fp32), said once on
        stderr (``device: cpu, fp32 (auto: no CUDA device)``) when ``announce``.

        Raises:
            UserError: ``--device cuda`` without a CUDA device, an unknown ``--dtype``, or ``--fp8`` /
                ``--dynamic-batch`` without the fast path on a GPU.
        """
        device = resolve_device(self.device)
        dtype = self.dtype or default_dtype_name(device)
        parse_dtype(dtype)
        for flag, on in (("--fp8", self.fp8), ("--dynamic-batch", self.dynamic_batch)):
            if on and not (self.fast_path and device.startswith("cuda")):
                raise UserError(f"{flag} needs the fast path on a GPU: drop {flag} (or --no-fast-path), or run on a CUDA device")
        if announce:
            why = "--device" if self.device != "auto" else (
                "auto: CUDA device found" if device.startswith("cuda") else "auto: no CUDA device")
            typer.echo(f"device: {device}, {dtype} ({why})", err=True)
        return dataclasses.replace(self, device=device, dtype=dtype)

    def validate(self) -> None:
        """Check the weights sources the options name, before any model loads: local folders must
        exist (with ``Model_Pro`` / ``Model_Lite`` and the VAE inside a ``--checkpoint-dir``); a Hub id
        is resolved (or refused offline) by :meth:`load` before it loads anything; ``--crop-face``
        needs the face detector weights.

        Raises:
            UserError: an unknown ``--variant``, a missing folder or file, no weights source at all,
                or no detector weights.
        """
        from vividhead.inference.checkpoints import HubId

        if self.variant not in VARIANTS:
            raise UserError(f"--variant {self.variant!r}: use one of {', '.join(sorted(VARIANTS))}")

        def local(option: str, source: Optional[str], what: str) -> Optional[Path]:
            """The local path of ``source``; None for a Hub id (or no source)."""
            if source is None:
                return None
            path = Path(source).expanduser()
            if path.exists():
                return path
            if HubId.parse(str(source)) is None:
                raise UserError(f"{option} {source}: no such folder (and not a Hub id owner/name); give {what}")
            return None

        if self.checkpoint is not None:
            path = local("--checkpoint", self.checkpoint, "the folder `vividhead train export --out` wrote")
            if path is not None and not path.is_dir():
                raise UserError(f"--checkpoint {path}: not a folder; give the folder `vividhead train export --out` wrote")
        elif not self.random_weights:
            if self.checkpoint_dir is None or self.wav2vec_dir is None:
                raise UserError(
                    "no weights given: pass --checkpoint EXPORT, or --checkpoint-dir and --wav2vec-dir "
                    "(e.g. --checkpoint-dir Soul-AILab/SoulX-FlashHead-1_3B --wav2vec-dir facebook/wav2vec2-base-960h), "
                    "or --random-weights")
            v = get_variant(self.variant)
            root = local("--checkpoint-dir", self.checkpoint_dir, "the SoulX-FlashHead-1_3B folder or its Hub id")
            if root is not None and not (root / v.checkpoint_subdir).exists():
                raise UserError(f"--checkpoint-dir {root}: no {v.checkpoint_subdir}/ inside; give the "
                                f"SoulX-FlashHead-1_3B folder (or another --variant)")
            vae = self.vae or (root / ("VAE_LTX" if v.vae.value == "ltx" else "VAE_Wan/Wan2.1_VAE.pth") if root else None)
            if vae is not None and not Path(vae).exists():
                raise UserError(f"VAE weights {vae} not found; pass --vae PATH (or a complete --checkpoint-dir)")
            local("--wav2vec-dir", self.wav2vec_dir, "the wav2vec2-base-960h folder or its Hub id")
        if self.lora is not None and not (Path(self.lora) / "adapter_config.json").is_file():
            raise UserError(f"--lora {self.lora}: no adapter_config.json there; give the lora/ folder of a "
                            "`vividhead train export --no-merge` export")
        if self.crop_face:
            from vividhead import weights as registry
            from vividhead.models.face_detector import WEIGHTS_NAME

            try:
                registry.resolve(WEIGHTS_NAME)
            except registry.WeightsNotFound as exc:
                raise UserError(f"--crop-face needs the face detector: {exc}") from None

    def load(self):
        """Build :class:`vividhead.inference.pipeline.FlashHeadModels`.

        With ``checkpoint`` (a ``vividhead train export`` folder) everything comes from it. With
        ``checkpoint_dir`` (the upstream ``SoulX-FlashHead-1_3B`` folder) the DiT comes from
        ``<dir>/Model_Pro`` or ``<dir>/Model_Lite``, the VAE from ``--vae`` or
        ``<dir>/VAE_Wan/Wan2.1_VAE.pth`` / ``<dir>/VAE_LTX``, Wav2Vec from ``--wav2vec-dir``.

        Raises:
            typer.BadParameter: missing paths without ``--random-weights``.
            typer.Exit: a source that is neither a folder nor a Hub id, or a Hub id not available
                (offline, or the download failed): one-line error.
        """
        from diffusers.utils import logging as dlog

        from vividhead.export_format import METADATA_FILE
        from vividhead.inference.checkpoints import FLASHHEAD_WEIGHTS, resolve_source
        from vividhead.inference.pipeline import FlashHeadModels
        from vividhead.weights import WeightsNotFound

        dlog.set_verbosity_error()
        if self.device == "auto" or self.dtype is None:
            return self.resolved(announce=False).load()
        dtype = parse_dtype(self.dtype)
        try:
            if self.checkpoint is not None:
                folder = resolve_source(self.checkpoint, required=(METADATA_FILE,))
                models = FlashHeadModels.from_export(folder, device=self.device, dtype=dtype)
            elif self.random_weights:
                models = FlashHeadModels.random(get_variant(self.variant), device=self.device, dtype=dtype)
            else:
                v = get_variant(self.variant)
                if self.checkpoint_dir is None or self.wav2vec_dir is None:
                    raise typer.BadParameter(
                        "--checkpoint, or --checkpoint-dir and --wav2vec-dir, are required (or --random-weights); "
                        "e.g. --checkpoint-dir Soul-AILab/SoulX-FlashHead-1_3B --wav2vec-dir facebook/wav2vec2-base-960h")
                vae_dir = "VAE_LTX" if v.vae.value == "ltx" else "VAE_Wan"
                root = resolve_source(self.checkpoint_dir, FLASHHEAD_WEIGHTS, required=(v.checkpoint_subdir,),
                                      allow_patterns=[f"{v.checkpoint_subdir}/*", f"{vae_dir}/*"])
                wav2vec = resolve_source(self.wav2vec_dir, required=("config.json",),
                                         allow_patterns=["*.json", "*.safetensors", "*.txt"])
                vae = self.vae or root / ("VAE_LTX" if v.vae.value == "ltx" else "VAE_Wan/Wan2.1_VAE.pth")
                models = FlashHeadModels.from_pretrained(
                    v, root / v.checkpoint_subdir, vae, wav2vec, device=self.device, dtype=dtype
                )
        except (FileNotFoundError, WeightsNotFound) as exc:
            _fail(str(exc))
        self.apply_lora(models, folder if self.checkpoint is not None else None)
        models = dataclasses.replace(models, fidelity=self.fidelity)
        if self.fast_path and models.device.type == "cuda":
            _persistent_compile_cache()
            if self.compile_artifacts is not None:
                from vividhead.inference.compile_cache import load_compile_artifacts

                load_compile_artifacts(self.compile_artifacts)
            models.optimize(fp8=self.fp8, dynamic_batch=self.dynamic_batch)
        elif self.fp8:
            raise typer.BadParameter("--fp8 needs the fast path on a GPU")
        return models

    def apply_lora(self, models, export: Optional[Path]) -> None:
        """Fold LoRA adapters into the DiT, in place: ``--lora``'s, else those an export keeps apart
        (``vividhead train export --no-merge``: ``lora.dir`` in its metadata), unless the loader
        applied them already.

        Raises:
            UserError: adapters that do not fit the model.
        """
        from vividhead.models.lora import apply_lora

        path = self.lora
        if path is None and export is not None:
            from vividhead.export_format import read_export

            path = read_export(export).lora_dir
            if path is not None and getattr(models.transformer, "lora_source", None) is not None:
                return  # the loader applied the export's own adapters
        if path is None:
            return
        try:
            models.transformer = apply_lora(models.transformer, path).eval().requires_grad_(False)
        except (FileNotFoundError, ValueError) as exc:
            _fail(f"--lora {path}: {exc}" if self.lora is not None else str(exc))
        typer.echo(f"LoRA adapters {path} merged into the DiT", err=True)

    def save_compile_artifacts(self, models) -> None:
        """After the compiled shapes have run: write ``--compile-artifacts`` (fast path on a GPU only;
        a write error is a one-line warning, the result of the command stands)."""
        if self.compile_artifacts is None or not self.fast_path or models.device.type != "cuda":
            return
        from vividhead.inference.compile_cache import save_compile_artifacts

        try:
            save_compile_artifacts(self.compile_artifacts)
        except OSError as exc:
            typer.echo(f"warning: --compile-artifacts not written: {exc}", err=True)

    def streaming(self, models):
        """The loaded model's streaming geometry with ``--fast-start`` applied."""
        return dataclasses.replace(models.variant.streaming, fast_start=self.fast_start)

    def reference(self, path: Path | np.ndarray, streaming, name: Optional[Path] = None) -> np.ndarray:
        """The reference image (uint8 ``[H, W, 3]`` RGB: ``path`` read with :func:`read_image_option`,
        or the array already read from ``name``), face-cropped to the streaming frame size with
        ``--crop-face`` (:func:`vividhead.inference.face_crop.crop_face`).

        Raises:
            UserError: unreadable image, no face found, or the detector weights are missing.
        """
        from vividhead.inference.face_crop import NoFaceError, crop_face
        from vividhead.weights import WeightsNotFound

        if isinstance(path, Path):
            image, name = read_image_option(path), path
        else:
            image = path
        if not self.crop_face:
            return image
        try:
            return crop_face(image, streaming.height_px, streaming.width_px)
        except (NoFaceError, WeightsNotFound) as exc:
            _fail(f"--crop-face: {name}: {exc}")


def read_image_option(path: Path, option: str = "--image") -> np.ndarray:
    """Read a reference image given on the command line (uint8 ``[H, W, 3]`` RGB).

    Raises:
        UserError: missing, a folder, or not an image (one line naming it and what to give).
    """
    from vividhead.media import read_image

    if not path.is_file():
        raise UserError(f"{option} {path}: {'is a folder' if path.is_dir() else 'no such file'}; "
                        "give a portrait image (PNG or JPEG)")
    try:
        return read_image(path)
    except (OSError, ValueError, SyntaxError) as exc:  # PIL: UnidentifiedImageError is an OSError
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"{option} {path}: not a readable image ({reason}); give a portrait image "
                        "(PNG or JPEG)") from None


def read_audio_option(path: Path, sample_rate_hz: int, option: str = "--audio") -> np.ndarray:
    """Read a speech file given on the command line (mono float32 at ``sample_rate_hz``).

    Raises:
        UserError: missing, a folder, unreadable or empty (one line naming it and what to give).
    """
    from vividhead.media import read_audio

    if not path.is_file():
        raise UserError(f"{option} {path}: {'is a folder' if path.is_dir() else 'no such file'}; "
                        "give a speech file (WAV, FLAC, MP3, ...)")
    try:
        with warnings.catch_warnings():  # librosa's audioread fallback warns before it fails
            warnings.simplefilter("ignore")
            return read_audio(path, sample_rate_hz)
    except (OSError, ValueError) as exc:
        raise UserError(f"{option} {exc}; give a speech file (WAV, FLAC, MP3, ...)") from None


#: ``--help`` of each :class:`ModelOptions` field (and its option name where the default would differ).
MODEL_OPTIONS: dict[str, typer.models.OptionInfo] = {
    "variant": typer.Option(help=f"One of {sorted(VARIANTS)} (ignored with --checkpoint)."),
    "checkpoint": typer.Option(
        "--checkpoint", help="A `vividhead train export` folder (stage 1 or 2: trained DiT + its VAE and Wav2Vec), "
                             "local or a Hub id owner/name (@revision picks a commit)."),
    "checkpoint_dir": typer.Option(help="The released SoulX-FlashHead 1.3B model: a local folder or its Hub id "
                                        "(Soul-AILab's repo at a pinned revision unless @rev; see "
                                        "docs/inference.md)."),
    "vae": typer.Option("--vae", help="VAE checkpoint (default: inside --checkpoint-dir)."),
    "wav2vec_dir": typer.Option(help="wav2vec2-base-960h: a local folder or its Hub id (facebook's repo at a pinned revision)."),
    "lora": typer.Option("--lora", help="LoRA adapters to merge into the DiT at load: the lora/ folder of a "
                                        "`vividhead train export --no-merge` export (peft layout), over --checkpoint "
                                        "or --checkpoint-dir (replaces an export's own adapters)."),
    "random_weights": typer.Option(help="Random weights (smoke tests, speed)."),
    "device": typer.Option(help="auto (CUDA when present, else CPU) / cuda / cuda:N / cpu."),
    "dtype": typer.Option(help="bf16 / fp16 / fp32 (default: bf16 on CUDA, fp32 on the CPU)."),
    "seed": typer.Option(help="Noise seed."),
    "fast_path": typer.Option("--fast-path/--no-fast-path",
                              help="On a GPU: compiled DiT replayed as CUDA graphs, accelerated VAE, warm-up "
                                   "before serving; --no-fast-path runs eager."),
    "fp8": typer.Option("--fp8", help="FP8 GEMMs in the DiT blocks (faster, outputs move beyond bf16 "
                                      "rounding: see docs/inference.md)."),
    "dynamic_batch": typer.Option("--dynamic-batch", help="Fast path: one compiled graph for every batch size, 1 "
                                                         "included, instead of one per size (serve: on by default "
                                                         "for Lite without --batch-buckets, so rounds run exactly the "
                                                         "chunks waiting; its DiT is about 5% slower than a "
                                                         "static graph at 16)."),
    "fast_start": typer.Option("--fast-start", help="Short first chunk (lower first-frame latency)."),
    "crop_face": typer.Option("--crop-face", help="Crop the reference around its largest face (released recipe; "
                                                 "detector weights from the registry)."),
    "compile_artifacts": typer.Option(
        "--compile-artifacts", help="Fast path: a torch.compile artifact file (PyTorch Mega-Cache; a path, or an "
                                    "fsspec URL such as an s3 one), loaded before "
                                    "compiling when it exists and written once the shapes have compiled "
                                    "(after serve's warm-up, after infer's video): ship it so that a fresh "
                                    "machine skips the cold compile."),
}


def _model_parameters() -> list[inspect.Parameter]:
    hints = typing.get_type_hints(ModelOptions)
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                annotation=Annotated[hints[f.name], MODEL_OPTIONS[f.name]])
              for f in dataclasses.fields(ModelOptions) if f.name != "fidelity"]
    return params + [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                                       annotation=Annotated[bool, typer.Option(*FIDELITY_HELP[f.name][:1],
                                                                               help=FIDELITY_HELP[f.name][1],
                                                                               show_default=False)])
                     for f in dataclasses.fields(FidelityOptions)]


def with_model_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add the :class:`ModelOptions` to a Typer command, after its own options.

    ``command`` declares ``model: ModelOptions`` as its last parameter; Typer sees the shared options
    in its place and the command is called with them gathered into one ``ModelOptions``.
    """
    sig = inspect.signature(command, eval_str=True)
    own = [p for name, p in sig.parameters.items() if name != "model"]
    shared = _model_parameters()
    fidelity_names = [f.name for f in dataclasses.fields(FidelityOptions)]
    names = [p.name for p in shared if p.name not in fidelity_names]

    @functools.wraps(command)
    def run(**kwargs):
        fidelity = FidelityOptions(**{name: kwargs.pop(name) for name in fidelity_names})
        model = ModelOptions(**{name: kwargs.pop(name) for name in names}, fidelity=fidelity)
        return command(**kwargs, model=model)

    run.__signature__ = sig.replace(parameters=own + shared)
    return run


@with_model_options
def infer(
    image: Annotated[Path, typer.Option("--image", help="Reference portrait (any size; resized and centre-cropped).")],
    audio: Annotated[Path, typer.Option("--audio", help="Speech file (any rate; resampled to 16 kHz mono).")],
    out: Annotated[Path, typer.Option("--out", help="Output .mp4 (H.264 + AAC).")],
    model: ModelOptions = ModelOptions(),
) -> None:
    """Generate a talking-head video from a reference image and a speech file, chunk by chunk."""
    from tqdm import tqdm

    from vividhead.media import Mp4Writer
    from vividhead.shard_format import SAMPLE_RATE_HZ

    # every input is checked before any model loads
    if out.is_dir():
        _fail(f"--out {out}: is a folder; give the .mp4 file to write")
    picture = read_image_option(image)
    speech = read_audio_option(audio, SAMPLE_RATE_HZ)
    model = model.prepare()
    from vividhead.inference.pipeline import StreamingSession

    models = model.load()
    cfg = model.streaming(models)
    if cfg.sample_rate_hz != SAMPLE_RATE_HZ:
        speech = read_audio_option(audio, cfg.sample_rate_hz)
    ref = model.reference(picture, cfg, image)
    session = StreamingSession(models, ref, seed=model.seed, streaming=cfg)
    n_frames = -(-len(speech) // cfg.samples_per_frame)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = Mp4Writer(str(out), cfg.fps, cfg.width_px, cfg.height_px, audio=speech, sample_rate_hz=cfg.sample_rate_hz)
    try:
        with tqdm(total=n_frames, unit="frame", desc="infer") as bar:
            for start in range(0, len(speech), cfg.samples_per_chunk):
                for frames in session.feed(speech[start : start + cfg.samples_per_chunk]):
                    writer.write(frames)
                    bar.update(frames.shape[0])
            for frames in session.flush():
                writer.write(frames)
                bar.update(frames.shape[0])
    finally:
        writer.close()
    typer.echo(f"wrote {writer.frames} frames ({writer.frames / cfg.fps:.2f} s) to {out}")
    model.save_compile_artifacts(models)


@with_model_options
def serve(
    image: Annotated[Path, typer.Option("--image", help="Reference portrait for every session.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    max_sessions: Annotated[Optional[int], typer.Option(
        help="Refuse sessions beyond this many (default: only the measured real-time estimate).")] = None,
    realtime_margin: Annotated[float, typer.Option(
        help="Admit a session only if a round with it is estimated at <= this fraction of a chunk's "
             "duration (1 or more: off; Pro's second stream on an H100 needs 0.98).")] = DEFAULT_REALTIME_MARGIN,
    load_window_s: Annotated[float, typer.Option(
        help="With sessions open, also refuse when the model's measured busy share over this many "
             "trailing seconds, scaled to one more session, exceeds --realtime-margin (0: off).")] = DEFAULT_LOAD_WINDOW_S,
    max_batch: Annotated[int, typer.Option(help="Most concurrent sessions in one DiT batch.")] = 16,
    vae_batch: Annotated[int, typer.Option(
        help="Most sessions in one VAE decode / motion-encode call (bounds the VAE's "
             "activation memory; 16 Lite streams were measured with 8).")] = 4,
    batch_buckets: Annotated[str, typer.Option(
        help="Comma-separated DiT batch sizes to pad to (few shapes for compiled/CUDA-graph DiTs), e.g. 1,2,4,8,16.")] = "",
    vae_buckets: Annotated[str, typer.Option(
        help="Comma-separated VAE part sizes to pad to, up to --vae-batch (few shapes for "
             "compiled VAEs; a part of 1 compiles slowly), e.g. 2,4.")] = "",
    gather_s: Annotated[float, typer.Option(
        help="A round waits up to this long for the chunks of the other open sessions (fewer, larger "
             "batches; adds up to this much latency).")] = 0.0,
    warm_up_batches: Annotated[str, typer.Option(
        help="Batch sizes measured before serving, e.g. 1,4 (default on a GPU: the buckets; with "
             "--dynamic-batch and no buckets every size up to --max-batch; else 1; none on the CPU).")] = "",
    encode_workers: Annotated[Optional[int], typer.Option(
        help="Processes that encode the MP4 chunks, off the serving process's GIL (0: its threads; "
             "default: half the cores, at most 8, on a GPU host of 8 cores or more, else 0).")] = None,
    warm_up_in_background: Annotated[bool, typer.Option(
        "--warm-up-in-background",
        help="Open the port once the first and the smallest warm-up sizes are ready and warm the "
             "others while no session is open (needs --dynamic-batch).")] = False,
    model: ModelOptions = ModelOptions(),
) -> None:
    """Serve live sessions over WebSocket: 16 kHz PCM in, H.264 MP4 chunks out, sessions batched.

    A browser demo page is served at http://HOST:PORT/."""
    import asyncio

    from vividhead.inference.batching import BatchingConfig
    from vividhead.inference.server import serve_forever

    def sizes(flag: str, text: str) -> tuple[int, ...]:
        try:
            return tuple(int(x) for x in text.split(",") if x.strip())
        except ValueError:
            _fail(f"{flag} {text!r}: expected comma-separated integers, e.g. 1,2,4")

    # every option is checked before any model loads
    if not 0 <= port <= 65535:
        _fail(f"--port {port}: must be in 0..65535")
    if load_window_s < 0:
        _fail(f"--load-window-s {load_window_s}: must be >= 0 (0: off)")
    warm_up_sizes = sizes("--warm-up-batches", warm_up_batches)
    if any(size < 1 for size in warm_up_sizes):
        _fail(f"--warm-up-batches {warm_up_batches!r}: batch sizes must be >= 1")
    try:
        batching = BatchingConfig(max_batch=max_batch, vae_batch=vae_batch,
                                  batch_buckets=sizes("--batch-buckets", batch_buckets) or None,
                                  vae_buckets=sizes("--vae-buckets", vae_buckets) or None, gather_s=gather_s)
        admission = AdmissionConfig(max_sessions=max_sessions,
                                    realtime_margin=realtime_margin if realtime_margin < 1 else None,
                                    load_window_s=load_window_s if load_window_s > 0 else None)
    except ValueError as exc:  # the configs' own checks, e.g. a margin of 0, --max-batch 0 or --vae-batch 0
        _fail(str(exc))
    if encode_workers is not None and encode_workers < 0:
        raise typer.BadParameter(f"must be >= 0, got {encode_workers}", param_hint="--encode-workers")
    picture = read_image_option(image)  # checked before any model loads
    model = model.prepare()
    if serves_exact_sizes(model, batching) and not model.dynamic_batch:
        model = dataclasses.replace(model, dynamic_batch=True)
        typer.echo("serving exact batch sizes: --dynamic-batch on (one compile for every size, each size's CUDA "
                   "graphs recorded at warm-up); --batch-buckets pads rounds to fixed sizes instead", err=True)
    if warm_up_in_background and model.device.startswith("cuda") and not model.dynamic_batch:
        _fail("--warm-up-in-background needs a model compiled for any batch size (--dynamic-batch): "
              "a size compiled per batch size and not yet warm would compile while sessions wait")
    models = model.load()
    cfg = model.streaming(models)
    warm = warm_up_sizes or default_warm_up(batching, models.device.type, model.dynamic_batch)
    if models.cuda_graphs and batching.batch_buckets is None and batching.max_batch > 1 and not model.dynamic_batch:
        typer.echo("warning: no --batch-buckets: each new number of concurrent sessions compiles the DiT while "
                   "serving (tens of seconds; every session stalls); pass e.g. --batch-buckets 1,2 (Pro), "
                   "warmed up before serving, or --dynamic-batch (one compile for every size)", err=True)
    if encode_workers is None:
        from vividhead.inference.chunk_encoder import default_encode_workers

        encode_workers = default_encode_workers(models.device.type, os.cpu_count())
    asyncio.run(serve_forever(models, model.reference(picture, cfg, image), host, port, streaming=cfg, seed=model.seed,
                              batching=batching, admission=admission, warm_up=warm,
                              after_warm_up=lambda: model.save_compile_artifacts(models),
                              encode_workers=encode_workers, warm_up_in_background=warm_up_in_background))


def serves_exact_sizes(model: ModelOptions, batching: BatchingConfig) -> bool:
    """Whether ``serve`` runs every round at exactly the number of chunks waiting, which needs the
    DiT and LTX coders compiled for any batch size (``--dynamic-batch``, then on by default): a
    model with the LTX VAE (Lite) on the GPU fast path, more than one session per round and no
    ``--batch-buckets``. Measured on one H100 (docs/benchmarks.md, "Concurrent streams, part 5"): 12
    Lite streams all real time (p95 latency 0.39 s) against none with rounds padded to 16. The Wan
    VAE (Pro) compiles one static graph per batch size, so Pro keeps its default (and its warm-up).

    Args:
        model: resolved model options (:meth:`ModelOptions.prepare`: a concrete device).
        batching: the server's batch limits.
    """
    if not (model.fast_path and model.device.startswith("cuda") and batching.batch_buckets is None
            and batching.max_batch > 1):
        return False
    if model.checkpoint is None:
        return get_variant(model.variant).vae is VAEKind.LTX
    if Path(model.checkpoint).is_dir():  # an export folder: its metadata names the variant
        from vividhead.export_format import read_export

        return read_export(model.checkpoint).variant.vae is VAEKind.LTX
    return False  # a Hub export: not known before it loads


def default_warm_up(batching: BatchingConfig, device_type: str, dynamic_batch: bool) -> tuple[int, ...]:
    """Batch sizes ``serve`` warms up when ``--warm-up-batches`` is not given: none on the CPU; on a
    GPU the buckets, or with ``--dynamic-batch`` and exact sizes every size from ``max_batch`` down to 1
    (one compile serves them all, but each size still records its CUDA graphs and is measured for
    admission: better before the first session than during it), else 1.

    Args:
        batching: the server's :class:`vividhead.inference.batching.BatchingConfig`.
        device_type: ``"cuda"`` or ``"cpu"``.
        dynamic_batch: the DiT and VAE coders were compiled with a symbolic batch dimension.
    """
    if device_type != "cuda":
        return ()
    if batching.batch_buckets is not None:
        return batching.batch_buckets
    # largest first: the first compile then sees a batch other than 1. Inductor in torch 2.11 (the
    # GPU image's) guards on batch == 1 when it indexes a view merging the batch into another dim
    # and the example batch is 1 (2.13 does not), so a first compile at batch 1 is redone at 2 (70 s
    # of Lite's DiT on an H100); the graph built at 2 served 3 and 16
    return tuple(range(batching.max_batch, 0, -1)) if dynamic_batch else (1,)


def _persistent_compile_cache() -> None:
    """Keep torch.compile's caches (Inductor FX graphs, autotuning) under
    ``~/.cache/vividhead/torchinductor`` unless ``TORCHINDUCTOR_CACHE_DIR`` is set, so a restart
    reuses them (the default, ``/tmp/torchinductor_<user>``, does not survive a reboot)."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(Path.home() / ".cache" / "vividhead" / "torchinductor"))


def register(app: typer.Typer) -> None:
    """Add ``infer`` and ``serve`` to the ``vividhead`` Typer app."""
    app.command("infer")(infer)
    app.command("serve")(serve)

"""``vividhead infer`` (file to file) and ``vividhead serve`` (WebSocket) commands, registered on
the root command by :func:`register` (see :mod:`vividhead.cli`)."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Callable, Optional

import typer

from vividhead.training.models.configs import VARIANTS, get_variant


def _dtype(name: str):
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise typer.BadParameter(f"dtype must be one of {sorted(table)}")
    return table[name]


@dataclass(frozen=True)
class ModelOptions:
    """The options ``infer`` and ``serve`` share: which weights, where, and how to stream.

    :func:`with_model_options` adds them to a command (their ``--help`` text is in
    :data:`MODEL_OPTIONS`); the command receives them as one ``ModelOptions``.
    """

    variant: str = "pro"
    checkpoint: Optional[Path] = None
    checkpoint_dir: Optional[Path] = None
    vae: Optional[Path] = None
    wav2vec_dir: Optional[Path] = None
    random_weights: bool = False
    device: str = "cuda"
    dtype: str = "bf16"
    seed: int = 42
    compile: bool = False
    cuda_graphs: bool = False
    fast_start: bool = False

    def load(self):
        """Build :class:`vividhead.inference.pipeline.FlashHeadModels`.

        With ``checkpoint`` (a ``vividhead train export`` folder) everything comes from it. With
        ``checkpoint_dir`` (the upstream ``SoulX-FlashHead-1_3B`` folder) the DiT comes from
        ``<dir>/Model_Pro`` or ``<dir>/Model_Lite``, the VAE from ``--vae`` or
        ``<dir>/VAE_Wan/Wan2.1_VAE.pth`` / ``<dir>/VAE_LTX``, Wav2Vec from ``--wav2vec-dir``.

        Raises:
            typer.BadParameter: missing paths without ``--random-weights``.
        """
        from diffusers.utils import logging as dlog

        from vividhead.inference.pipeline import FlashHeadModels

        dlog.set_verbosity_error()
        dtype = _dtype(self.dtype)
        if self.checkpoint is not None:
            models = FlashHeadModels.from_export(self.checkpoint, device=self.device, dtype=dtype)
        elif self.random_weights:
            models = FlashHeadModels.random(get_variant(self.variant), device=self.device, dtype=dtype)
        else:
            v = get_variant(self.variant)
            if self.checkpoint_dir is None or self.wav2vec_dir is None:
                raise typer.BadParameter("--checkpoint, or --checkpoint-dir and --wav2vec-dir, are required "
                                         "(or --random-weights)")
            vae = self.vae or self.checkpoint_dir / ("VAE_LTX" if v.vae.value == "ltx" else "VAE_Wan/Wan2.1_VAE.pth")
            models = FlashHeadModels.from_pretrained(
                v, self.checkpoint_dir / v.checkpoint_subdir, vae, self.wav2vec_dir, device=self.device, dtype=dtype
            )
        if self.compile:
            models.optimize(cuda_graphs=self.cuda_graphs)
        return models

    def streaming(self, models):
        """The loaded model's streaming geometry with ``--fast-start`` applied."""
        return dataclasses.replace(models.variant.streaming, fast_start=self.fast_start)


#: ``--help`` of each :class:`ModelOptions` field (and its option name where the default would differ).
MODEL_OPTIONS: dict[str, typer.models.OptionInfo] = {
    "variant": typer.Option(help=f"One of {sorted(VARIANTS)} (ignored with --checkpoint)."),
    "checkpoint": typer.Option(
        "--checkpoint", help="A folder written by `vividhead train export` (trained DiT + its VAE and Wav2Vec)."),
    "checkpoint_dir": typer.Option(help="Upstream SoulX-FlashHead-1_3B folder."),
    "vae": typer.Option("--vae", help="VAE checkpoint (default: inside --checkpoint-dir)."),
    "wav2vec_dir": typer.Option(help="Local wav2vec2-base-960h folder."),
    "random_weights": typer.Option(help="Random weights (smoke tests, speed)."),
    "device": typer.Option(help="cuda / cpu."),
    "dtype": typer.Option(help="bf16 / fp16 / fp32."),
    "seed": typer.Option(help="Noise seed."),
    "compile": typer.Option("--compile", help="Fast path: compiled DiT, accelerated VAE (GPU)."),
    "cuda_graphs": typer.Option("--cuda-graphs", help="With --compile: CUDA graphs for the DiT."),
    "fast_start": typer.Option("--fast-start", help="Short first chunk (lower first-frame latency)."),
}


def _model_parameters() -> list[inspect.Parameter]:
    hints = typing.get_type_hints(ModelOptions)
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default,
                              annotation=Annotated[hints[f.name], MODEL_OPTIONS[f.name]])
            for f in dataclasses.fields(ModelOptions)]


def with_model_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add the :class:`ModelOptions` to a Typer command, after its own options.

    ``command`` declares ``model: ModelOptions`` as its last parameter; Typer sees the shared options
    in its place and the command is called with them gathered into one ``ModelOptions``.
    """
    sig = inspect.signature(command, eval_str=True)
    own = [p for name, p in sig.parameters.items() if name != "model"]
    shared = _model_parameters()
    names = [p.name for p in shared]

    @functools.wraps(command)
    def run(**kwargs):
        model = ModelOptions(**{name: kwargs.pop(name) for name in names})
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

    from vividhead.inference.media import Mp4Writer, read_audio, read_image
    from vividhead.inference.pipeline import StreamingSession

    models = model.load()
    cfg = model.streaming(models)
    ref = read_image(image)
    speech = read_audio(audio, cfg.sample_rate_hz)
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


@with_model_options
def serve(
    image: Annotated[Path, typer.Option("--image", help="Reference portrait for every session.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    model: ModelOptions = ModelOptions(),
) -> None:
    """Serve live sessions over WebSocket: s16le 16 kHz PCM in, H.264 MP4 chunks out."""
    import asyncio

    from vividhead.inference.media import read_image
    from vividhead.inference.server import serve_forever

    models = model.load()
    asyncio.run(serve_forever(models, read_image(image), host, port, streaming=model.streaming(models),
                              seed=model.seed))


def register(app: typer.Typer) -> None:
    """Add ``infer`` and ``serve`` to the ``vividhead`` Typer app."""
    app.command("infer")(infer)
    app.command("serve")(serve)

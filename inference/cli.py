"""``vividhead infer`` (file to file) and ``vividhead serve`` (WebSocket) commands, registered on
the root command by :func:`register` (see :mod:`vividhead.cli`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from vividhead.training.models.configs import VARIANTS, get_variant


def _dtype(name: str):
    import torch

    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
    if name not in table:
        raise typer.BadParameter(f"dtype must be one of {sorted(table)}")
    return table[name]


# Options shared by ``infer`` and ``serve`` (one definition each).
Variant = Annotated[str, typer.Option(help=f"One of {sorted(VARIANTS)} (ignored with --checkpoint).")]
Checkpoint = Annotated[Optional[Path], typer.Option(
    "--checkpoint", help="A folder written by `vividhead train export` (trained DiT + its VAE and Wav2Vec).")]
CheckpointDir = Annotated[Optional[Path], typer.Option(help="Upstream SoulX-FlashHead-1_3B folder.")]
VaePath = Annotated[Optional[Path], typer.Option("--vae", help="VAE checkpoint (default: inside --checkpoint-dir).")]
Wav2VecDir = Annotated[Optional[Path], typer.Option(help="Local wav2vec2-base-960h folder.")]
RandomWeights = Annotated[bool, typer.Option(help="Random weights (smoke tests, speed).")]
Device = Annotated[str, typer.Option(help="cuda / cpu.")]
DType = Annotated[str, typer.Option(help="bf16 / fp16 / fp32.")]
Seed = Annotated[int, typer.Option(help="Noise seed.")]
Compile = Annotated[bool, typer.Option("--compile", help="Fast path: compiled DiT, accelerated VAE (GPU).")]
CudaGraphs = Annotated[bool, typer.Option("--cuda-graphs", help="With --compile: CUDA graphs for the DiT.")]
FastStart = Annotated[bool, typer.Option("--fast-start", help="Short first chunk (lower first-frame latency).")]


def load_models(
    variant: str,
    checkpoint_dir: Optional[Path],
    vae_path: Optional[Path],
    wav2vec_dir: Optional[Path],
    random_weights: bool,
    device: str,
    dtype: str,
    compile_models: bool = False,
    cuda_graphs: bool = False,
    checkpoint: Optional[Path] = None,
):
    """Build :class:`vividhead.inference.pipeline.FlashHeadModels` from CLI options.

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
    if checkpoint is not None:
        models = FlashHeadModels.from_export(checkpoint, device=device, dtype=_dtype(dtype))
    elif random_weights:
        models = FlashHeadModels.random(get_variant(variant), device=device, dtype=_dtype(dtype))
    else:
        v = get_variant(variant)
        if checkpoint_dir is None or wav2vec_dir is None:
            raise typer.BadParameter("--checkpoint, or --checkpoint-dir and --wav2vec-dir, are required "
                                     "(or --random-weights)")
        if vae_path is None:
            vae_path = checkpoint_dir / ("VAE_LTX" if v.vae.value == "ltx" else "VAE_Wan/Wan2.1_VAE.pth")
        models = FlashHeadModels.from_pretrained(
            v, checkpoint_dir / v.checkpoint_subdir, vae_path, wav2vec_dir, device=device, dtype=_dtype(dtype)
        )
    if compile_models:
        models.optimize(cuda_graphs=cuda_graphs)
    return models


def infer(
    image: Annotated[Path, typer.Option("--image", help="Reference portrait (any size; resized and centre-cropped).")],
    audio: Annotated[Path, typer.Option("--audio", help="Speech file (any rate; resampled to 16 kHz mono).")],
    out: Annotated[Path, typer.Option("--out", help="Output .mp4 (H.264 + AAC).")],
    variant: Variant = "pro",
    checkpoint: Checkpoint = None,
    checkpoint_dir: CheckpointDir = None,
    vae: VaePath = None,
    wav2vec_dir: Wav2VecDir = None,
    random_weights: RandomWeights = False,
    device: Device = "cuda",
    dtype: DType = "bf16",
    seed: Seed = 42,
    compile: Compile = False,
    cuda_graphs: CudaGraphs = False,
    fast_start: FastStart = False,
) -> None:
    """Generate a talking-head video from a reference image and a speech file, chunk by chunk."""
    from tqdm import tqdm

    from vividhead.inference.media import Mp4Writer, read_audio, read_image
    from vividhead.inference.pipeline import StreamingSession

    models = load_models(variant, checkpoint_dir, vae, wav2vec_dir, random_weights, device, dtype, compile,
                         cuda_graphs, checkpoint)
    cfg = dataclasses.replace(models.variant.streaming, fast_start=fast_start)
    ref = read_image(image)
    speech = read_audio(audio, cfg.sample_rate_hz)
    session = StreamingSession(models, ref, seed=seed, streaming=cfg)
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


def serve(
    image: Annotated[Path, typer.Option("--image", help="Reference portrait for every session.")],
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8765,
    variant: Variant = "pro",
    checkpoint: Checkpoint = None,
    checkpoint_dir: CheckpointDir = None,
    vae: VaePath = None,
    wav2vec_dir: Wav2VecDir = None,
    random_weights: RandomWeights = False,
    device: Device = "cuda",
    dtype: DType = "bf16",
    seed: Seed = 42,
    compile: Compile = False,
    cuda_graphs: CudaGraphs = False,
    fast_start: FastStart = False,
) -> None:
    """Serve live sessions over WebSocket: s16le 16 kHz PCM in, H.264 MP4 chunks out."""
    import asyncio

    from vividhead.inference.media import read_image
    from vividhead.inference.server import serve_forever

    models = load_models(variant, checkpoint_dir, vae, wav2vec_dir, random_weights, device, dtype, compile,
                         cuda_graphs, checkpoint)
    streaming = dataclasses.replace(models.variant.streaming, fast_start=fast_start)
    asyncio.run(serve_forever(models, read_image(image), host, port, streaming=streaming, seed=seed))


def register(app: typer.Typer) -> None:
    """Add ``infer`` and ``serve`` to the ``vividhead`` Typer app."""
    app.command("infer")(infer)
    app.command("serve")(serve)

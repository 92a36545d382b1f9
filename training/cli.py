"""``vividhead train``: ``sft`` (stage 1), ``distill`` (stage 2), ``cache-latents``, ``export``,
registered on the root command by :func:`register`. ``train rollout`` (the long-horizon drift check)
is evaluation's command, added to this group by :func:`vividhead.evaluation.cli.register`.

Under torchrun every rank runs the same command::

    torchrun --nproc-per-node 4 -m vividhead train sft --config examples/sft_pro.yaml
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Optional

import typer

from vividhead.training.trainers.registry import TRAIN_SPECS, TrainSpec

train_app = typer.Typer(no_args_is_help=True, add_completion=False,
                        help="Train FlashHead models on curated shards (stage 1 SFT, stage 2 DMD distillation).")

ConfigPath = Annotated[Path, typer.Option("--config", "-c", help="Trainer YAML (see examples/).")]
Resume = Annotated[Optional[str], typer.Option(
    "--resume", help="Continue a run: 'auto' = run.output_dir from its newest checkpoint, or a checkpoint or "
                     "run folder. Without it, an output_dir that holds a run is refused.")]


def _fail(exc: Exception) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _run(spec: TrainSpec, config: Path, resume: Optional[str]) -> None:
    from vividhead.config import ConfigError
    from vividhead.training.trainers.checkpoint import CheckpointError
    from vividhead.training.trainers.config import load_train_config
    from vividhead.training.trainers.distributed import shutdown_distributed
    from vividhead.training.trainers.runtime import TrainingDiverged, TrainingOutOfMemory

    try:
        cfg = load_train_config(config, spec.config_class())
    except ConfigError as exc:
        _fail(exc)
    trainer = spec.trainer_class()(cfg, resume=resume)
    try:
        result = trainer.run()
    except (TrainingDiverged, TrainingOutOfMemory, CheckpointError) as exc:
        _fail(exc)
    finally:
        shutdown_distributed()
    if trainer.env.is_main:
        typer.echo(f"{result['stopped']}: step {result['step']}, checkpoint {result['last_checkpoint']}")


def _add_mode(spec: TrainSpec) -> None:
    """``vividhead train <spec.kind> --config YAML [--resume PATH]``."""

    def command(config: ConfigPath, resume: Resume = None) -> None:
        _run(spec, config, resume)

    train_app.command(spec.kind, help=spec.help)(command)


for _spec in TRAIN_SPECS.values():  # sft, distill, ...: one command per registered trainer mode
    _add_mode(_spec)


@train_app.command("export")
def export(
    checkpoint: Annotated[Path, typer.Argument(help="Checkpoint folder or run output folder (newest checkpoint).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Export folder (for `vividhead infer --checkpoint`).")],
    weights: Annotated[str, typer.Option(help="ema / raw / auto (EMA when the run kept one).")] = "auto",
    merge: Annotated[bool, typer.Option(
        "--merge/--no-merge", help="LoRA fine-tunes: fold the adapters into the DiT (default), or keep them apart "
                                   "in OUT/lora (peft folder; `infer --lora OUT/lora` applies it over any base).")] = True,
) -> None:
    """Write a checkpoint's DiT (EMA or raw), VAE and Wav2Vec as a folder `vividhead infer` loads."""
    from vividhead.training.trainers.checkpoint import CheckpointError
    from vividhead.training.trainers.export import export_checkpoint

    if weights not in ("ema", "raw", "auto"):
        _fail(ValueError("--weights must be ema, raw or auto"))
    try:
        path = export_checkpoint(checkpoint, out, weights, merge=merge)  # type: ignore[arg-type]
    except (CheckpointError, FileNotFoundError, KeyError) as exc:
        _fail(exc)
    typer.echo(f"exported {path}")


@train_app.command("cache-latents")
def cache_latents(
    config: ConfigPath,
    out: Annotated[Path, typer.Option("--out", "-o", help="Latent cache folder (shards + index).")],
    windows_per_clip: Annotated[int, typer.Option(help="Windows encoded per clip (evenly spaced).")] = 4,
    samples_per_shard: Annotated[int, typer.Option(help="Windows per cache shard.")] = 64,
) -> None:
    """Encode windows of the config's shards once (VAE latents, reference latent, Wav2Vec context).

    Takes a stage-1 (`sft`) or fine-tuning (`finetune`) config."""
    from vividhead.config import ConfigError, read_yaml
    from vividhead.training.trainers.config import SFTConfig, load_train_config
    from vividhead.training.trainers.latent_cache import write_latent_cache

    # every option is checked before the encoders load
    for flag, value in (("--windows-per-clip", windows_per_clip), ("--samples-per-shard", samples_per_shard)):
        if value < 1:
            _fail(ValueError(f"{flag} {value}: must be >= 1"))
    if out.exists() and not out.is_dir():
        _fail(ValueError(f"--out {out}: is a file; give the latent cache folder"))
    try:
        raw = read_yaml(config)
        cls = TRAIN_SPECS["finetune"].config_class() if isinstance(raw, dict) and "finetune" in raw else SFTConfig
        cfg = load_train_config(config, cls)
    except ConfigError as exc:
        _fail(exc)
    n = write_latent_cache(cfg, out, windows_per_clip=windows_per_clip, samples_per_shard=samples_per_shard)
    typer.echo(f"wrote {n} windows to {out}")


def register(app: typer.Typer) -> None:
    """Add the ``train`` command group to the ``vividhead`` Typer app."""
    logging.getLogger("vividhead").setLevel(logging.INFO)
    app.add_typer(train_app, name="train")

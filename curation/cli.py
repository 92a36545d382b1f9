"""``vividhead curate``: registered on the root command by :func:`register` (see :mod:`vividhead.cli`)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table


def summary_table(stats: dict) -> Table:
    """A rich table of a run: inputs, clips kept, rejects by stage and reason, hours kept, wall time.

    A disabled stage (``{"enabled": false}`` in ``stats["stages"]``) shows ``off``, not counts.
    """
    table = Table(title="vividhead curate", show_lines=False)
    table.add_column("stage")
    table.add_column("in", justify="right")
    table.add_column("out", justify="right")
    table.add_column("rejected (reason: count)")
    table.add_column("seconds", justify="right")
    for name, s in stats["stages"].items():
        if not s.get("enabled", True):
            table.add_row(name, "off", "off", "-", "-", style="dim")
            continue
        reasons = ", ".join(f"{r}: {n}" for r, n in s["dropped"].items()) or "-"
        table.add_row(name, str(s["in"]), str(s["out"]), reasons, f"{s['seconds']:.1f}")
    table.caption = (
        f"inputs {stats['inputs']} (skipped as done: {stats['skipped_inputs']}) | clips kept {stats['clips_kept']} | "
        f"hours kept {stats['hours_kept']:.4f} | shards {len(stats['shards'])} | wall {stats['wall_s']:.1f} s"
    )
    return table


def curate(
    inputs: List[str] = typer.Argument(..., help="Files, folders, globs, URLs (file://, s3://, http(s)://) or URL lists (.csv/.jsonl/.parquet)."),
    output: str = typer.Option(..., "--output", "-o", help="Output folder or s3:// prefix."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config, one section per stage."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster to join ('auto'); default: $RAY_ADDRESS or a local in-process Ray."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = typer.Option(False, "--verbose", help="Also show Ray's routine notices (progress-bar and token-auth lines)."),
) -> None:
    """Curate raw talking-head videos into WebDataset shards with a Parquet manifest."""
    from rich.markup import escape
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from vividhead.curation.config import ConfigError, load_config
    from vividhead.curation.inputs import InputError
    from vividhead.curation.pipeline import run_curation
    from vividhead.curation.storage import StorageError
    from vividhead.weights import WeightsNotFound

    console = Console(stderr=True)
    if not verbose:
        from vividhead.curation.ray_adapter import quiet_ray_notices

        quiet_ray_notices()
    try:
        cfg = load_config(config)
        columns = (TextColumn("inputs"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("| {task.fields[clips]} clips kept, {task.fields[rate]} clips/s | elapsed"),
                   TimeElapsedColumn(), TextColumn("| ETA"), TimeRemainingColumn())
        with Progress(*columns, console=console, disable=quiet, transient=True) as progress:
            task = progress.add_task("inputs", total=None, clips=0, rate="-")

            def on_input_done(done: int, total: int, clips: int) -> None:
                elapsed = progress.tasks[task].elapsed or 0.0
                rate = f"{clips / elapsed:.2f}" if elapsed > 0 else "-"
                progress.update(task, completed=done, total=total, clips=clips, rate=rate)

            result = run_curation(inputs, output, cfg, ray_address, on_input_done=on_input_done)
    # Errors are one line each (soft_wrap: no wrapping at the terminal width), the key or file first.
    except (ConfigError, InputError, WeightsNotFound) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", markup=True, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except StorageError as exc:  # a write that failed mid-run: the message names the file
        console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
        raise typer.Exit(2) from None
    except OSError as exc:
        console.print(f"[red]error:[/red] {escape(f'output {output!r} is not writable: {exc}')}", highlight=False,
                      soft_wrap=True)
        raise typer.Exit(2) from None
    Console().print(summary_table(result.stats))


def register(app: typer.Typer) -> None:
    """Add ``curate`` to the ``vividhead`` Typer app."""
    app.command("curate")(curate)


def curate_main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m vividhead.curation`` (what ``ray job submit`` runs): the ``curate``
    command alone, its errors and usage errors one line each as ``vividhead``'s (``run_app``).

    Raises:
        SystemExit: always; code 2 after an error's one line.
    """
    from vividhead.cli import run_app

    logging.basicConfig(level=logging.WARNING)
    app = typer.Typer(add_completion=False)
    app.command()(curate)
    run_app(app, argv, "python -m vividhead.curation")

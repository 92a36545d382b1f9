"""``vividhead card`` and ``vividhead publish``: register them on the main Typer app.

``curation/cli.py`` calls :func:`register`; ``python -m vividhead.datasets_card`` runs them standalone.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def card(
    out: Path = typer.Argument(..., help="Curation output directory (manifest.parquet + stats.json)."),
    pretty_name: str = typer.Option("VividHead", help="Dataset name shown on the Hub."),
    license: str = typer.Option("other", "--license", help="Hub licence id."),
    license_name: str = typer.Option("vividhead-source-terms", help="Licence name when --license other."),
    license_link: str = typer.Option(None, help="Licence URL when --license other."),
) -> None:
    """Write OUT/README.md (Hub dataset card) and OUT/card/*.png from the manifest and stats."""
    from vividhead.datasets_card.card import CardOptions, write_card

    try:
        res = write_card(out, CardOptions(pretty_name=pretty_name, license=license, license_name=license_name,
                                          license_link=license_link))
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e), param_hint="OUT") from e
    t = res.totals
    typer.echo(f"wrote {res.readme} and {len(res.charts)} charts: {t['clips']} clips, {t['hours']:.2f} h, "
               f"{t['speakers']} speakers, {len(t['languages'])} languages")


def publish(
    out: Path = typer.Argument(..., help="Curation output directory with README.md (run `vividhead card` first)."),
    repo_id: str = typer.Option(..., "--repo-id", help="Hub dataset repo, ORG/NAME."),
    private: bool = typer.Option(False, "--private", help="Create the repo private."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List what would be uploaded and where; upload nothing."),
) -> None:
    """Upload shards, manifest, stats and card to a Hub dataset repo (resumable: re-run to resume)."""
    from vividhead.datasets_card.publish import hub_url
    from vividhead.datasets_card.publish import publish as do_publish

    try:
        items = do_publish(out, repo_id, private=private, dry_run=dry_run)
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e
    total = sum(i.size for i in items)
    verb = "would upload" if dry_run else "uploaded"
    vis = "private" if private else "public"
    typer.echo(f"{verb} {len(items)} files ({_human(total)}) to https://huggingface.co/datasets/{repo_id} ({vis})")
    for i in items:
        typer.echo(f"  {i.local_path} -> {hub_url(repo_id, i.path_in_repo)} ({i.size} B)")


def register(app: typer.Typer) -> None:
    """Add the ``card`` and ``publish`` commands to ``app``."""
    app.command("card")(card)
    app.command("publish")(publish)


def main(argv: list[str] | None = None) -> None:
    """Standalone entry point: ``python -m vividhead.datasets_card {card,publish} ...``, its errors
    and usage errors one line each as ``vividhead``'s (``run_app``).

    Raises:
        SystemExit: always; code 2 after an error's one line.
    """
    from vividhead.cli import run_app

    app = typer.Typer(help="vividhead dataset card and Hub publishing", no_args_is_help=True, add_completion=False)
    register(app)
    run_app(app, argv, "python -m vividhead.datasets_card")

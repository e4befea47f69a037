"""The ``offclip`` command line. Each subcommand is a thin wrapper over library code."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from . import __version__

app = typer.Typer(
    name="offclip",
    help="OFF-CLIP curation pipeline for chest X-ray CLIP training (MIMIC-CXR or the demo world).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"offclip {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """offclip: OFF-CLIP data curation and training."""


@app.command("demo-world")
def demo_world(
    out: Path = typer.Argument(..., help="Directory to create (laid out like MIMIC-CXR v2.0.0)."),
    studies: int = typer.Option(200, "--studies", "-n", min=1, help="Studies to build (each one real Open-I report; at most 3,955)."),
    seed: int = typer.Option(0, "--seed", help="Seed: same sources + studies + seed + scale -> byte-identical tree."),
    scale: float = typer.Option(0.25, "--scale", min=0.01, max=1.0,
                                help="Image size relative to the real IU headers (1.0 = full size, ~3000 px)."),
    faults: bool = typer.Option(False, "--faults", help="Inject the bad inputs a real archive has (listed in faults.json)."),
    openi_dir: Optional[Path] = typer.Option(None, "--openi", help="Directory holding NLMCXR_reports.tgz and nlmcxr_dicom_metadata.csv.gz "
                                             "(default: $OFFCLIP_OPENI, then the installed torchxrayvision wheel's data/)."),
    workers: int = typer.Option(0, "--workers", min=0, help="Render processes (0 = all cores)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing demo world at OUT."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Build a MIMIC-CXR-shaped demo world from real Open-I reports and DICOM header statistics."""
    import json
    from dataclasses import asdict

    from .pipeline.demo.world import WorldConfig, build_world
    from .pipeline.openi import OpenISourceError

    config = WorldConfig(out=out, studies=studies, seed=seed, scale=scale, faults=faults,
                         openi=str(openi_dir) if openi_dir else None, workers=workers,
                         progress=not quiet and sys.stderr.isatty(), overwrite=overwrite)
    try:
        summary = build_world(config)
    except (OpenISourceError, FileExistsError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(asdict(summary), indent=2) if json_out else summary.to_text())


if __name__ == "__main__":  # pragma: no cover
    app()

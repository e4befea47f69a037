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


def _folders(value: str) -> tuple[str, ...] | None:
    """'p10-p16' -> (p10 … p16); 'p10,p12' -> (p10, p12); 'all' -> None."""
    value = value.strip().lower()
    if value == "all":
        return None
    folders: list[str] = []
    for part in value.split(","):
        part = part.strip()
        if "-" in part:
            lo, hi = (int(p.strip().lstrip("p")) for p in part.split("-", 1))
            folders += [f"p{i}" for i in range(lo, hi + 1)]
        elif part:
            folders.append(f"p{int(part.lstrip('p'))}")
    if not folders:
        raise typer.BadParameter("no folder given")
    return tuple(folders)


@app.command("ingest")
def ingest(
    source: Path = typer.Argument(..., help="MIMIC-CXR v2.0.0 root (or a demo world): holds files/ and the metadata CSVs."),
    out: Path = typer.Argument(..., help="Output root: ingest/*.parquet records and images/."),
    folders: str = typer.Option("p10-p16", "--folders", help="Patient folders to use: 'p10-p16' (the paper's), 'p10,p12', or 'all'."),
    splits: str = typer.Option("all", "--splits", help="Splits to use: 'all' or e.g. 'train,validate'."),
    prefer_pa: bool = typer.Option(False, "--prefer-pa", help="Pick PA over AP when a study has both (default: seeded random, as the paper)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the per-study frontal choice."),
    long_side: int = typer.Option(512, "--long-side", min=16, help="Resize so the long side is N pixels (aspect kept)."),
    pad_square: bool = typer.Option(False, "--pad-square", help="Zero-pad to N×N."),
    fmt: str = typer.Option("png", "--format", help="png or jpg."),
    bits: int = typer.Option(8, "--bits", help="8 or 16 (16 needs png)."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Studies per task."),
    workers: int = typer.Option(0, "--workers", min=0, help="Worker processes (0 = all cores)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Scan a MIMIC-CXR tree, pick one frontal image per study, normalise it, split reports into sentences."""
    from .pipeline.images import NormalizeConfig
    from .pipeline.ingest import IngestConfig, run_ingest
    from .pipeline.scan import ScanConfig

    split_filter = None if splits.strip().lower() == "all" else tuple(s.strip() for s in splits.split(",") if s.strip())
    try:
        normalize = NormalizeConfig(long_side=long_side, pad_square=pad_square, out_bits=bits, fmt=fmt)
        config = IngestConfig(source=source, out=out, batch_size=batch_size, workers=workers,
                              scan=ScanConfig(source, folders=_folders(folders), splits=split_filter,
                                              prefer_pa=prefer_pa, seed=seed),
                              normalize=normalize, progress=not quiet and sys.stderr.isatty())
        summary = run_ingest(config)
    except (FileNotFoundError, ValueError) as exc:
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    typer.echo(summary.to_text())


if __name__ == "__main__":  # pragma: no cover
    app()

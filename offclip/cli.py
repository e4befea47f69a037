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


def _fail(exc: Exception) -> None:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


@app.command("curate")
def curate(
    out: Path = typer.Argument(..., help="The ingest output root (holds ingest/)."),
    classifier: Path = typer.Option(..., "--classifier", help="A saved sentence classifier (offclip classifier train)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", min=0.0, max=1.0, help="P(abnormal) threshold (default: the classifier's calibrated one)."),
    prompting: str = typer.Option("none", "--prompting", help="Text prompting: none, template, or openai."),
    llm_url: Optional[str] = typer.Option(None, "--llm-url", help="OpenAI-compatible endpoint for --prompting openai (or $OFFCLIP_LLM_URL)."),
    llm_model: Optional[str] = typer.Option(None, "--llm-model", help="Model name for --prompting openai."),
) -> None:
    """Score every sentence (unique text once, cached), filter normal sentences out of abnormal reports, label pairs."""
    from .pipeline.curate import CurateConfig, run_curate
    from .pipeline.prompting import PromptBackendError

    config = CurateConfig(out=out, classifier=classifier, threshold=threshold, prompting=prompting,
                          prompt_options={"base_url": llm_url, "model": llm_model})
    try:
        typer.echo(run_curate(config).to_text())
    except (FileNotFoundError, ValueError, PromptBackendError) as exc:
        _fail(exc)


@app.command("shards")
def shards(
    out: Path = typer.Argument(..., help="The curation output root (holds curate/ and images/)."),
    max_samples: int = typer.Option(1000, "--max-samples", min=1, help="Samples per shard at most."),
    max_bytes: int = typer.Option(1 << 30, "--max-bytes", min=1, help="Bytes per shard at most."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Write WebDataset shards (one set per split) and refresh the manifest."""
    import datetime as dt

    from .pipeline.manifest import build_manifest, run_record
    from .pipeline.shards import ShardConfig, ShardError, write_shards

    started = dt.datetime.now(dt.timezone.utc)
    try:
        result = write_shards(ShardConfig(out=out, max_samples=max_samples, max_bytes=max_bytes),
                              progress=not quiet and sys.stderr.isatty())
        db = build_manifest(out, runs=[run_record("shards", started, {"max_samples": max_samples, "max_bytes": max_bytes},
                                                  {"shards_written": len(result.written), "samples": result.samples_written})])
    except (FileNotFoundError, ShardError) as exc:
        _fail(exc)
    typer.echo(result.to_text())
    typer.echo(f"manifest: {db}")


@app.command("manifest")
def manifest(
    out: Path = typer.Argument(..., help="The curation output root."),
    build: bool = typer.Option(False, "--build", help="(Re)build the manifest from the records first."),
    db: Optional[Path] = typer.Option(None, "--db", help="Manifest file (default OUT/manifest.duckdb)."),
) -> None:
    """Print a summary of the manifest: tables, label distribution, rejects, shard health, runs."""
    from .pipeline.manifest import MANIFEST_FILE, build_manifest, summary

    path = db or out / MANIFEST_FILE
    try:
        if build:
            build_manifest(out, path)
        typer.echo(summary(path))
    except FileNotFoundError as exc:
        _fail(exc)


@app.command("sql")
def sql(
    query_text: str = typer.Argument(..., metavar="SQL", help="The query, e.g. \"SELECT * FROM label_distribution\"."),
    db: Path = typer.Option(Path("out/curated/manifest.duckdb"), "--db", help="Manifest file."),
    fmt: str = typer.Option("table", "--format", help="table, csv, json or parquet."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Write the result here instead of stdout (needed for parquet)."),
    write: bool = typer.Option(False, "--write", help="Open the manifest read-write (default: read-only)."),
) -> None:
    """Run SQL on a manifest (read-only by default) and print or save the result."""
    import duckdb

    from .pipeline.manifest import query

    if fmt not in ("table", "csv", "json", "parquet"):
        _fail(ValueError(f"--format must be table, csv, json or parquet, not {fmt!r}"))
    if fmt == "parquet" and out_file is None:
        _fail(ValueError("--format parquet needs --out FILE"))
    try:
        df = query(db, query_text, write=write)
    except (FileNotFoundError, duckdb.Error) as exc:
        _fail(exc)
    if fmt == "parquet":
        df.to_parquet(out_file, index=False)
        typer.echo(f"{len(df)} rows → {out_file}")
        return
    if fmt == "csv":
        text = df.to_csv(index=False)
    elif fmt == "json":
        text = df.to_json(orient="records", date_format="iso", force_ascii=False) + "\n"
    else:
        text = (df.to_string(index=False) if len(df) else "(no rows)") + "\n"
    if out_file:
        out_file.write_text(text)
        typer.echo(f"{len(df)} rows → {out_file}")
    else:
        typer.echo(text, nl=False)


if __name__ == "__main__":  # pragma: no cover
    app()

"""``offclip purge``: a study removed from everything offclip wrote for it — records, image files,
shards, caches, manifest — and from the Prefect artifacts that quote its sentences."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pandas as pd
import pytest
import webdataset as wds
from typer.testing import CliRunner

from offclip.cli import app
from offclip.pipeline.curate import read_curated
from offclip.pipeline.layout import SCORE_CACHE_FILE as CACHE_FILE
from offclip.pipeline.ingest import read_table
from offclip.pipeline.manifest import query
from offclip.pipeline.shards import complete_shards


def _victim(out: Path) -> tuple[int, str]:
    """A curated study with a sentence no other study has (its text is what a purge must erase)."""
    sentences = read_curated(out, "sentences")
    counts = sentences.groupby("key")["study_id"].nunique()
    unique = sentences[sentences["key"].map(counts) == 1]
    unique = unique[unique["text"].str.len() >= 25].sort_values(["study_id", "index"])
    row = unique.iloc[0]
    return int(row["study_id"]), str(row["text"])


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def test_purge_removes_a_study_from_every_output(built):
    study, text = _victim(built)
    images = read_table(built, "images")
    image_files = [built / p for p in images.loc[(images["study_id"] == study) & images["out_path"].notna(), "out_path"]]
    assert image_files and all(p.is_file() for p in image_files)
    assert _files_holding(built, text.encode()), "the shards quote the sentence before the purge"
    holder = next(r for s in ("train", "validate", "test") for r in complete_shards(built, s) if str(study) in r.keys)
    others = [k for k in holder.keys if k != str(study)]
    pairs_before = len(read_curated(built, "pairs"))

    result = CliRunner().invoke(app, ["purge", str(built), "--study", f"s{study}", "--yes", "--no-prefect"])
    assert result.exit_code == 0, result.output
    assert "1 of 1 studies found" in result.output

    # not a byte of the sentence anywhere under the output root: tars, parquet, caches, manifest
    assert _files_holding(built, text.encode()) == []
    for stage, name in (("ingest", "studies"), ("ingest", "images"), ("ingest", "sentences"), ("ingest", "rejects"),
                        ("ingest", "stamps"), ("curate", "sentences"), ("curate", "pairs")):
        table = pd.read_parquet(built / stage / f"{name}.parquet")
        assert study not in set(table["study_id"]), f"{stage}/{name}"
    assert not any(p.exists() for p in image_files)
    # its shard rewritten under its name with every other sample; the others untouched
    after = {r.name: r for s in ("train", "validate", "test") for r in complete_shards(built, s)}
    assert after[holder.name].keys == others
    tar_keys = [s["__key__"] for s in wds.WebDataset(str(built / after[holder.name].path), shardshuffle=False)]
    assert tar_keys == others
    db = built / "manifest.duckdb"
    assert query(db, f"SELECT count(*) AS n FROM pairs WHERE study_id = {study}")["n"][0] == 0
    assert query(db, f"SELECT count(*) AS n FROM samples WHERE study_id = {study}")["n"][0] == 0
    assert query(db, "SELECT count(*) AS n FROM shard_mismatches")["n"][0] == 0
    with duckdb.connect(str(built / CACHE_FILE), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM sentence_scores WHERE text = ?", [text]).fetchone()[0] == 0
    assert query(db, "SELECT count(*) AS n FROM pairs")["n"][0] == pairs_before - 1


def test_purge_refuses_what_is_not_a_study_id(built):
    result = CliRunner().invoke(app, ["purge", str(built), "--study", "abc", "--yes", "--no-prefect"])
    assert result.exit_code == 2 and "not a study id" in result.output
    assert (built / "curate" / "pairs.parquet").is_file()


@pytest.mark.usefixtures("prefect_server")
def test_purge_deletes_the_artifacts_that_quote_the_study(built):
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact
    from prefect.client.orchestration import get_client

    study, text = _victim(built)

    @flow(name="summary-artifacts")
    def summaries() -> tuple:  # as build-shards makes them: inside a flow run
        return (create_markdown_artifact(markdown=f"| text |\n|---|\n| {text} |\n", key="offclip-build-summary"),
                create_markdown_artifact(markdown="| text |\n|---|\n| No pneumothorax. |\n",
                                         key="offclip-build-summary"))

    quoting, unrelated = summaries()

    result = CliRunner().invoke(app, ["purge", str(built), "--study", str(study), "--yes"])
    assert result.exit_code == 0, result.output
    assert "1 deleted" in result.output
    with get_client(sync_client=True) as client:
        ids = {a.id for a in client.read_artifacts(limit=200)}
    assert quoting not in ids and unrelated in ids

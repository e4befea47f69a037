"""WebDataset shards of the curated image–text pairs: atomic, deterministic, resumable.

Layout (open_clip's convention: image + ``txt`` keys, a ``sizes.json`` beside the shards)::

    OUT/shards/<split>/<split>-000000.tar      samples: <study_id>.png|jpg, .txt, .json, .cls
    OUT/shards/<split>/sizes.json              {"train-000000.tar": 1000, ...}
    OUT/shards/<split>/_complete/<name>.json   completion record: keys, bytes, sha256

A shard is written to a temporary name, fsynced, renamed, and only then gets its completion
record. A split has one writer at a time (an inter-process lock, ``OUT/shards/<split>/.lock``);
before writing, the writer recovers from an interrupted build (:func:`recover_split`: temporary
files, a final-named shard without a record, a record without its shard are removed). So after
``kill -9`` at any point, a re-run yields exactly the expected samples: none lost, none
duplicated, no truncated tar under a final name. Samples already in a complete shard are never
rewritten; new studies go to new shards. Member order is sorted and every tar header carries a
fixed mtime, so the same input gives byte-identical shards.

Readers (the training loader, the manifest, the train flow) only *list*: :func:`complete_shards`
never changes the directory, and it returns only shards that have their completion record, so a
reader that runs during a write sees the complete shards and nothing of the one being written.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..data_contracts.enums import ABNORMAL, CLASSIFIER, SHARD_SPLITS
from ..data_contracts.shards import SAMPLE_FIELDS, SHARD_RECORD  # noqa: F401  (SAMPLE_FIELDS: imported from here too)
from .atomic import atomic_write_text, sha256_file

SHARD_DIR = "shards"


class ShardError(RuntimeError):
    pass


@dataclass
class ShardConfig:
    out: Path  #: the curation output root (holds curate/ and images/)
    max_samples: int = 1000
    max_bytes: int = 1 << 30
    splits: tuple[str, ...] = SHARD_SPLITS
    mtime: int = 0  #: tar header mtime (fixed: byte-identical rebuilds)
    #: for tests of kill-and-resume: sleep this long after each shard
    pause_after_shard: float = 0.0


class ShardRecord(SHARD_RECORD.record_class("ShardRecord")):
    """A shard's completion record (``_complete/<name>.json``): the fields of the contract
    :data:`~offclip.data_contracts.shards.SHARD_RECORD`, in its order (split, name, samples, bytes,
    sha256, keys, model_version, label_source)."""

    @property
    def path(self) -> str:
        return f"{SHARD_DIR}/{self.split}/{self.name}"


def complete_shards(out: Path, split: str) -> list[ShardRecord]:
    """The complete shards of one split: those with a completion record and their tar (of the
    recorded size). Read-only: it never removes anything, so it is safe while a writer works
    (debris of an interrupted build is the writer's to clear: :func:`recover_split`)."""
    directory = Path(out) / SHARD_DIR / split
    records_dir = directory / "_complete"
    if not records_dir.is_dir():
        return []
    records: list[ShardRecord] = []
    for rec_path in sorted(records_dir.glob("*.json")):
        try:
            rec = ShardRecord(**json.loads(rec_path.read_text()))
            size = (directory / rec.name).stat().st_size
        except FileNotFoundError:
            continue  # a record whose shard is gone: not complete (the writer clears it)
        if size == rec.bytes:
            records.append(rec)
    return sorted(records, key=lambda r: r.name)


def split_lock(out: Path, split: str, timeout: float = -1):
    """The inter-process lock of one split's writer (``OUT/shards/<split>/.lock``): one writer
    per split at a time; readers never take it."""
    from filelock import FileLock

    directory = Path(out) / SHARD_DIR / split
    directory.mkdir(parents=True, exist_ok=True)
    return FileLock(str(directory / ".lock"), timeout=timeout)


def recover_split(out: Path, split: str) -> list[str]:
    """Clear what an interrupted build left in one split (call it holding :func:`split_lock`):
    temporary files, final-named shards without a completion record (renamed, never recorded),
    records without their shard. Returns the removed paths, relative to the split directory."""
    directory = Path(out) / SHARD_DIR / split
    records_dir = directory / "_complete"
    removed: list[str] = []
    if not directory.is_dir():
        return removed
    for tmp in sorted(directory.glob(".*.tmp")):
        tmp.unlink(missing_ok=True)
        removed.append(tmp.name)
    recorded = set()
    for rec_path in sorted(records_dir.glob("*.json")) if records_dir.is_dir() else []:
        rec = ShardRecord(**json.loads(rec_path.read_text()))
        tar = directory / rec.name
        if not tar.is_file() or tar.stat().st_size != rec.bytes:
            rec_path.unlink()  # a record without its shard: the shard will be written again
            removed.append(f"_complete/{rec_path.name}")
            continue
        recorded.add(rec.name)
    for tar in sorted(directory.glob("*.tar")):
        if tar.name not in recorded:
            tar.unlink()  # renamed but never recorded: incomplete by definition
            removed.append(tar.name)
    return removed


def _sample(row: dict, sentences: list[dict], image: dict, image_bytes: bytes, ext: str) -> dict:
    meta = {
        "subject_id": int(row["subject_id"]), "study_id": int(row["study_id"]), "dicom_id": row["dicom_id"],
        "view": row["view"], "split": row["split"], "folder": row["folder"], "pair_label": row["pair_label"],
        "classifier_version": row["model_version"], "threshold": round(float(row["threshold"]), 6),
        "image_size": [int(image["out_rows"]), int(image["out_columns"])],
        "source_transfer_syntax": image["transfer_syntax"], "source_photometric": image["photometric"],
        "source_bits_stored": int(image["bits_stored"]),
        "sentences": [
            {"index": int(s["index"]), "section": s["section"], "text": s["text"], "label": s["label"],
             "score": round(float(s["score"]), 6), "kept": bool(s["kept"]), "reason": s["reason"]}
            for s in sentences
        ],
    }
    return {
        "__key__": str(int(row["study_id"])),
        ext: image_bytes,
        "txt": "\n".join(row["texts"]).encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
        "cls": b"1" if row["pair_label"] == ABNORMAL else b"0",
    }


def _write_shard(directory: Path, name: str, samples: list[dict], mtime: int) -> tuple[int, str]:
    from webdataset import TarWriter

    final = directory / name
    tmp = directory / f".{name}.tmp"
    with open(tmp, "wb") as fh:
        writer = TarWriter(fh, encoder=False, mtime=mtime, user="offclip", group="offclip")
        for sample in samples:
            writer.write(sample)
        writer.close()
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    return final.stat().st_size, sha256_file(final)


@dataclass
class ShardSummary:
    written: list[ShardRecord]
    kept: list[ShardRecord]
    samples_written: int
    bytes_written: int
    seconds: float

    def to_text(self) -> str:
        rate = self.samples_written / self.seconds if self.seconds else 0.0
        return (f"shards: {len(self.written)} new ({self.samples_written} samples, "
                f"{self.bytes_written / 1e6:.1f} MB, {rate:.0f} samples/s), {len(self.kept)} kept as they were")


def write_shards(config: ShardConfig, progress: bool = False) -> ShardSummary:
    """Write the new shards of every split, each split under its writer lock."""
    from .curate import read_curated
    from .ingest import read_table

    start = time.perf_counter()
    out = Path(config.out)
    pairs = read_curated(out, "pairs")
    sentences = read_curated(out, "sentences")
    # plain dicts, grouped once: per-sample pandas lookups would dominate the write
    images = read_table(out, "images").set_index("dicom_id")[
        ["out_rows", "out_columns", "transfer_syntax", "photometric", "bits_stored"]].to_dict("index")
    by_study: dict[int, list[dict]] = defaultdict(list)
    for sentence in sentences.sort_values(["study_id", "index"]).to_dict("records"):
        by_study[sentence["study_id"]].append(sentence)
    written, kept = [], []
    for split in config.splits:
        with split_lock(out, split):
            written_here, kept_here = _write_split(config, out, split, pairs, by_study, images, progress)
        written += written_here
        kept += kept_here
    return ShardSummary(written, kept, sum(r.samples for r in written), sum(r.bytes for r in written),
                        time.perf_counter() - start)


def _write_split(config: ShardConfig, out: Path, split: str, pairs: pd.DataFrame, by_study: dict,
                 images: dict, progress: bool) -> tuple[list[ShardRecord], list[ShardRecord]]:
    """One split's new shards (the caller holds the split's lock)."""
    from tqdm import tqdm

    directory = out / SHARD_DIR / split
    written: list[ShardRecord] = []
    recover_split(out, split)
    existing = complete_shards(out, split)
    versions = {r.model_version for r in existing}
    todo = pairs[pairs["split"] == split].sort_values("study_id")
    if versions and not versions <= set(todo["model_version"]):
        raise ShardError(f"{directory} holds shards of classifier {sorted(versions)}, the pairs are of "
                         f"{sorted(set(todo['model_version']))}: remove the shard directory to rebuild")
    # a rebuild with another label source would leave the old labels in the complete shards
    source = _label_source(pairs)  # over all splits: a split may hold fallbacks only
    sources = {r.label_source for r in existing}
    if sources and sources != {source}:
        raise ShardError(f"{directory} holds shards with pair labels from {sorted(sources)}, the pairs' labels "
                         f"are from {source}: remove the shard directory to rebuild")
    done = {k for r in existing for k in r.keys}
    todo = todo[~todo["study_id"].astype(str).isin(done)]
    version = str(todo["model_version"].iloc[0]) if len(todo) else ""
    number = 1 + max((int(r.name.rsplit("-", 1)[1].split(".")[0]) for r in existing), default=-1)
    batch: list[dict] = []
    size = 0
    bar = tqdm(total=len(todo), unit="sample", desc=f"shards/{split}", disable=not progress)

    def flush() -> None:
        nonlocal batch, size, number
        name = f"{split}-{number:06d}.tar"
        nbytes, digest = _write_shard(directory, name, batch, config.mtime)
        record = ShardRecord(split, name, len(batch), nbytes, digest, [s["__key__"] for s in batch],
                             version, source)
        atomic_write_text(directory / "_complete" / f"{name}.json",
                          json.dumps(record.__dict__, sort_keys=True) + "\n")
        written.append(record)
        bar.update(len(batch))
        batch, size, number = [], 0, number + 1
        if config.pause_after_shard:
            time.sleep(config.pause_after_shard)

    for row in todo.to_dict("records"):
        data = (out / row["image_path"]).read_bytes()
        ext = Path(row["image_path"]).suffix.lstrip(".")
        sample = _sample(row, by_study[row["study_id"]], images[row["dicom_id"]], data, ext)
        sample_size = sum(len(v) for k, v in sample.items() if k != "__key__")
        if batch and (len(batch) >= config.max_samples or size + sample_size > config.max_bytes):
            flush()
        batch.append(sample)
        size += sample_size
    if batch:
        flush()
    bar.close()
    records = complete_shards(out, split)
    atomic_write_text(directory / "sizes.json",
                      json.dumps({r.name: r.samples for r in records}, indent=1, sort_keys=True) + "\n")
    return written, existing


def _label_source(pairs: pd.DataFrame) -> str:
    """The label source of the curated pairs: a labeler's name when it labelled any of them (the
    others fell back to the classifier), else ``classifier`` (also for pairs older than the column)."""
    if "label_source" not in pairs.columns:
        return CLASSIFIER
    labelers = sorted(set(pairs["label_source"]) - {CLASSIFIER})
    return labelers[0] if labelers else CLASSIFIER


def shard_urls(out: Path, split: str) -> str:
    """A brace-expanded WebDataset URL for a split's complete shards (open_clip's --train-data)."""
    records = complete_shards(out, split)
    if not records:
        raise ShardError(f"no complete shards for split {split!r} under {Path(out) / SHARD_DIR / split}")
    first, last = records[0].name, records[-1].name
    numbers = [int(r.name.rsplit("-", 1)[1][:-4]) for r in records]
    if numbers != list(range(numbers[0], numbers[-1] + 1)):
        return ",".join(str(Path(out) / r.path) for r in records)
    return str(Path(out) / SHARD_DIR / split / f"{split}-{{{first.rsplit('-', 1)[1][:-4]}..{last.rsplit('-', 1)[1][:-4]}}}.tar")


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
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..data_contracts.enums import ABNORMAL, CLASSIFIER, SHARD_SPLITS
from ..data_contracts.shards import SAMPLE_FIELDS, SHARD_RECORD  # noqa: F401  (SAMPLE_FIELDS: imported from here too)
from .atomic import atomic_open, atomic_write_text, sha256_file
from .layout import SHARD_DIR, split_dir


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
    #: write shards for pairs no shard holds yet (off: only bring the existing shards in line with
    #: the records, as ``offclip purge`` does)
    add_new: bool = True


_ShardRecordBase: Any = SHARD_RECORD.record_class("ShardRecord")  # made at run time: its fields are the contract's


class ShardRecord(_ShardRecordBase):
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
    directory = split_dir(out, split)
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

    directory = split_dir(out, split)
    directory.mkdir(parents=True, exist_ok=True)
    return FileLock(str(directory / ".lock"), timeout=timeout)


def recover_split(out: Path, split: str) -> list[str]:
    """Clear what an interrupted build left in one split (call it holding :func:`split_lock`):
    temporary files, final-named shards without a completion record (renamed, never recorded),
    records without their shard. Returns the removed paths, relative to the split directory."""
    directory = split_dir(out, split)
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


class SampleSource:
    """The curated records the samples of the shards are made from, read once: the pairs, every
    sentence by study, the selected images' columns and the studies' content hashes (of the
    source image and report bytes). :meth:`digest` says what a pair's sample is without reading
    its image; :meth:`sample` makes the sample itself."""

    def __init__(self, out: Path) -> None:
        from .curate import read_curated
        from .ingest import read_table

        self.out = Path(out)
        self.pairs = read_curated(self.out, "pairs")
        sentences = read_curated(self.out, "sentences")
        # plain dicts, grouped once: per-sample pandas lookups would dominate the write
        self.images = (
            read_table(self.out, "images")
            .set_index("dicom_id")[["out_rows", "out_columns", "transfer_syntax", "photometric", "bits_stored"]]
            .to_dict("index")
        )
        studies = read_table(self.out, "studies")
        self.content_hashes = dict(zip(studies["study_id"].astype("int64").tolist(), studies["content_hash"].tolist()))
        self.sentences: dict[int, list[dict]] = defaultdict(list)
        for sentence in sentences.sort_values(["study_id", "index"]).to_dict("records"):
            self.sentences[sentence["study_id"]].append(sentence)

    def rows(self, split: str) -> list[dict]:
        """The pairs of one split, by study id (the order samples are written in)."""
        return self.pairs[self.pairs["split"] == split].sort_values("study_id").to_dict("records")

    def members(self, row: dict) -> dict:
        """The sample of ``row`` without its image bytes."""
        return _sample(row, self.sentences[row["study_id"]], self.images[row["dicom_id"]])

    def digest(self, row: dict, members: dict | None = None) -> str:
        return sample_digest(
            members or self.members(row), _image_ext(row), self.content_hashes.get(int(row["study_id"]))
        )

    def sample(self, row: dict) -> tuple[dict, str]:
        """The whole sample of ``row`` (its image read from the output root) and its digest."""
        sample = self.members(row)
        digest = self.digest(row, sample)
        sample[_image_ext(row)] = (self.out / row["image_path"]).read_bytes()
        return sample, digest

    def expected(self, splits: tuple[str, ...] = SHARD_SPLITS) -> pd.DataFrame:
        """Per pair of a shard split: key, study id, split and digest (the manifest's
        ``expected_samples``)."""
        rows = [
            (str(int(r["study_id"])), int(r["study_id"]), split, self.digest(r))
            for split in splits
            for r in self.rows(split)
        ]
        return pd.DataFrame(rows, columns=["key", "study_id", "split", "digest"])


def _image_ext(row: dict) -> str:
    return Path(row["image_path"]).suffix.lstrip(".")


def sample_digest(members: dict, ext: str, content_hash: str | None) -> str:
    """What a sample is made of, as one SHA-256: its text, JSON and class members, the image's
    format and the content hash of the source image and report it was made from. Any change to
    the report, the image, a label, a score or the filter's decision changes it."""
    import hashlib

    h = hashlib.sha256()
    for name in ("txt", "json", "cls"):
        h.update(name.encode() + b"\0" + members[name] + b"\0")
    h.update(f"{ext}\0{content_hash or ''}".encode())
    return h.hexdigest()


def _sample(row: dict, sentences: list[dict], image: dict) -> dict:
    meta = {
        "subject_id": int(row["subject_id"]),
        "study_id": int(row["study_id"]),
        "dicom_id": row["dicom_id"],
        "view": row["view"],
        "split": row["split"],
        "folder": row["folder"],
        "pair_label": row["pair_label"],
        # the pair's model_version under the sample JSON's name (data_contracts.curate.CLASSIFIER_VERSION_DOC)
        "classifier_version": row["model_version"],
        "threshold": round(float(row["threshold"]), 6),
        "image_size": [int(image["out_rows"]), int(image["out_columns"])],
        "source_transfer_syntax": image["transfer_syntax"],
        "source_photometric": image["photometric"],
        "source_bits_stored": int(image["bits_stored"]),
        "sentences": [
            {
                "index": int(s["index"]),
                "section": s["section"],
                "text": s["text"],
                "label": s["label"],
                "score": round(float(s["score"]), 6),
                "kept": bool(s["kept"]),
                "reason": s["reason"],
            }
            for s in sentences
        ],
    }
    return {
        "__key__": str(int(row["study_id"])),
        "txt": "\n".join(row["texts"]).encode("utf-8"),
        "json": json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8"),
        "cls": b"1" if row["pair_label"] == ABNORMAL else b"0",
    }


def _write_shard(directory: Path, name: str, samples: list[dict], mtime: int) -> tuple[int, str]:
    from webdataset import TarWriter

    final = directory / name
    writer = None
    try:
        # atomic_open: a temporary sibling (recover_split clears one a killed writer left), fsync,
        # rename; an error names the shard and leaves no temporary file
        with atomic_open(final, "wb") as fh:
            writer = TarWriter(fh, encoder=False, mtime=mtime, user="offclip", group="offclip")
            for sample in samples:
                writer.write(sample)
            writer.close()
    except OSError:  # a full disk
        if writer is not None:
            # its file is closed: neither the tar nor its stream may write at exit
            writer.tarstream.closed = True
            if hasattr(writer.tarstream.fileobj, "closed"):
                writer.tarstream.fileobj.closed = True
        raise
    return final.stat().st_size, sha256_file(final)


@dataclass
class ShardSummary:
    written: list[ShardRecord]  #: new shards and rewritten ones
    kept: list[ShardRecord]  #: complete shards left as they were
    samples_written: int
    bytes_written: int
    seconds: float
    #: shards rewritten because a sample they held changed (or is no longer a pair), by name
    rewritten: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  #: shards deleted: none of their samples is a pair
    superseded: int = 0  #: samples replaced by their current version or dropped (no longer a pair)

    def counts(self) -> dict:
        """The figures a run record keeps (the manifest's ``runs.counts``), by their names there."""
        return {
            "shards_written": len(self.written),
            "shards_kept": len(self.kept),
            "samples_written": self.samples_written,
            "shards_rewritten": len(self.rewritten),
            "shards_removed": len(self.removed),
            "samples_superseded": self.superseded,
        }

    def to_text(self) -> str:
        rate = self.samples_written / self.seconds if self.seconds else 0.0
        new = len(self.written) - len(self.rewritten)
        text = (
            f"shards: {new} new ({self.samples_written} samples written, "
            f"{self.bytes_written / 1e6:.1f} MB, {rate:.0f} samples/s), {len(self.kept)} kept as they were"
        )
        if self.rewritten or self.removed:
            text += (
                f"; {len(self.rewritten)} rewritten, {len(self.removed)} removed: {self.superseded} samples "
                f"changed or no longer pairs ({', '.join((self.rewritten + self.removed)[:5])}"
                + (", …" if len(self.rewritten) + len(self.removed) > 5 else "")
                + ")"
            )
        return text


def write_shards(config: ShardConfig, progress: bool = False) -> ShardSummary:
    """Bring every split's shards in line with the curated records, each split under its writer
    lock: new pairs go to new shards; a complete shard holding a sample whose digest is not that
    of the current records (the report or image changed, a label, the filter's decision) or a
    sample that is no longer a pair is rewritten under its own name with the current samples of
    its keys (deleted when none is left); the other shards are kept as they are."""
    start = time.perf_counter()
    out = Path(config.out)
    source = SampleSource(out)
    result = ShardSummary([], [], 0, 0, 0.0)
    for split in config.splits:
        with split_lock(out, split):
            _write_split(config, out, split, source, progress, result)
    result.samples_written = sum(r.samples for r in result.written)
    result.bytes_written = sum(r.bytes for r in result.written)
    result.seconds = time.perf_counter() - start
    return result


def _write_split(
    config: ShardConfig, out: Path, split: str, source: SampleSource, progress: bool, result: ShardSummary
) -> None:
    """One split's shards (the caller holds the split's lock)."""
    from tqdm import tqdm

    directory = split_dir(out, split)
    recover_split(out, split)
    existing = complete_shards(out, split)
    versions = {r.model_version for r in existing}
    rows = source.rows(split)
    current_versions = {r["model_version"] for r in rows}
    if versions and not versions <= current_versions:
        raise ShardError(
            f"{directory} holds shards of classifier {sorted(versions)}, the pairs are of "
            f"{sorted(current_versions)}: remove the shard directory to rebuild"
        )
    # a rebuild with another label source would leave the old labels in the complete shards
    label_source = _label_source(source.pairs)  # over all splits: a split may hold fallbacks only
    sources = {r.label_source for r in existing}
    if sources and sources != {label_source}:
        raise ShardError(
            f"{directory} holds shards with pair labels from {sorted(sources)}, the pairs' labels "
            f"are from {label_source}: remove the shard directory to rebuild"
        )
    current = {str(int(r["study_id"])): r for r in rows}
    digests = {key: source.digest(row) for key, row in current.items()}
    stale = [r for r in existing if list(r.digests) != [digests.get(k) for k in r.keys]]
    version = str(rows[0]["model_version"]) if rows else ""
    bar = tqdm(total=len(rows), unit="sample", desc=f"{SHARD_DIR}/{split}", disable=not progress)

    def write(name: str, batch: list[tuple[dict, str]]) -> None:
        nbytes, digest = _write_shard(directory, name, [s for s, _ in batch], config.mtime)
        record = ShardRecord(
            split,
            name,
            len(batch),
            nbytes,
            digest,
            [s["__key__"] for s, _ in batch],
            version,
            label_source,
            [d for _, d in batch],
        )
        atomic_write_text(directory / "_complete" / f"{name}.json", json.dumps(record.__dict__, sort_keys=True) + "\n")
        result.written.append(record)
        bar.update(len(batch))
        if config.pause_after_shard:
            time.sleep(config.pause_after_shard)

    # -- shards holding a changed sample: rewritten under their own name, same keys in the same
    # order minus those no longer pairs. The record goes first, so a reader never lists a shard
    # whose tar is being replaced, and a kill meanwhile leaves a tar without a record, which the
    # next writer removes (its pairs then go to new shards): nothing lost, nothing twice.
    for record in stale:
        keys = [k for k in record.keys if k in current]
        result.superseded += sum(
            digests.get(k) != d for k, d in zip(record.keys, record.digests or [None] * len(record.keys))
        )
        (directory / "_complete" / f"{record.name}.json").unlink()
        if keys:
            write(record.name, [source.sample(current[k]) for k in keys])
            result.rewritten.append(record.name)
        else:
            (directory / record.name).unlink(missing_ok=True)
            result.removed.append(record.name)
    stale_names = {r.name for r in stale}
    kept = [r for r in existing if r.name not in stale_names]
    result.kept += kept

    # -- new pairs: new shards after the last one -------------------------------------------------
    done = {k for r in kept for k in r.keys} | {k for r in stale for k in r.keys}
    number = 1 + max((int(r.name.rsplit("-", 1)[1].split(".")[0]) for r in existing), default=-1)
    batch: list[tuple[dict, str]] = []
    size = 0
    for key, row in current.items():
        if key in done or not config.add_new:
            bar.update(1)
            continue
        sample, digest = source.sample(row)
        sample_size = sum(len(v) for k, v in sample.items() if k != "__key__")
        if batch and (len(batch) >= config.max_samples or size + sample_size > config.max_bytes):
            write(f"{split}-{number:06d}.tar", batch)
            batch, size, number = [], 0, number + 1
        batch.append((sample, digest))
        size += sample_size
    if batch:
        write(f"{split}-{number:06d}.tar", batch)
    bar.close()
    records = complete_shards(out, split)
    atomic_write_text(
        directory / "sizes.json", json.dumps({r.name: r.samples for r in records}, indent=1, sort_keys=True) + "\n"
    )


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
        raise ShardError(f"no complete shards for split {split!r} under {split_dir(out, split)}")
    first, last = records[0].name, records[-1].name
    numbers = [int(r.name.rsplit("-", 1)[1][:-4]) for r in records]
    if numbers != list(range(numbers[0], numbers[-1] + 1)):
        return ",".join(str(Path(out) / r.path) for r in records)
    return str(split_dir(out, split) / f"{split}-{{{first.rsplit('-', 1)[1][:-4]}..{last.rsplit('-', 1)[1][:-4]}}}.tar")

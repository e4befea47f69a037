"""The ingest stage: scan → per study: report → sentences, frontal image → normalised image file.

``IngestStage`` is a stage of ``pipeline/executor.py``: ``setup()`` builds the sentence splitter
once per worker, ``process_batch()`` takes a list of studies and returns typed records (studies,
images, sentences, rejects). :func:`run_ingest` is the one driver, for ``offclip ingest`` and
the ``build-shards`` flow alike: plan (scan, incremental skip, batches) → the executor the caller's
factory makes (default ``executor.make_executor``: this process or a process pool; the flow's runs
each batch as a Prefect task) → merge in batch order → the four record tables as Parquet under
``OUT/ingest/`` (``layout.py``), each checked against its contract in ``data_contracts`` and
written atomically.

Incremental: a study whose selected image and report hash to the ``content_hash`` of the previous
run (and whose output image still exists) is not decoded again; its previous records are kept.
A study whose *stamp* (its first frontal image's size and modification time, its report's stamp
from the report index: see ``sources.ReportIndex.stamps``) is that of the previous run, kept in
``OUT/ingest/stamps.parquet`` outside the manifest, is found by :func:`plan_ingest` and never
batched, a rejected one too: a re-run over an unchanged MIMIC tree reads no image and no report.
Bad input never stops a run: each problem becomes a reject record with a reason code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd
import pyarrow.parquet as pq

from ..data_contracts.contract import Contract, frame
from ..data_contracts.ingest import IMAGES, REJECTS, SENTENCES, STUDIES
from .atomic import atomic_open, atomic_write_bytes
from .executor import make_executor
from .images import DecodedImage, ImageReject, NormalizeConfig, decode_dicom, encode_file_bytes
from .layout import INGEST_TABLES, STAMPS_FILE, image_path, ingest_table
from .scan import ImageEntry, ScanConfig, StudyEntry, scan_source
from .sources import ReportTooLarge, max_report_bytes, read_report

if TYPE_CHECKING:
    from tqdm import tqdm

    from .text import SentenceSplitter

log = logging.getLogger(__name__)
TABLES: dict[str, Contract] = dict(zip(INGEST_TABLES, (STUDIES, IMAGES, SENTENCES, REJECTS)))


@dataclass
class IngestConfig:
    source: Path
    out: Path
    scan: ScanConfig | None = None  #: default: ScanConfig(source)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    batch_size: int = 128  #: studies per batch (the flows' and `offclip ingest`'s default too)
    workers: int = 0  #: 0 -> one per CPU core; 1 -> in this process (executor.resolve_workers)
    progress: bool = True

    def __post_init__(self) -> None:
        self.source, self.out = Path(self.source), Path(self.out)
        if self.scan is None:
            self.scan = ScanConfig(self.source)


@dataclass
class BatchResult:
    studies: list[dict] = field(default_factory=list)
    images: list[dict] = field(default_factory=list)
    sentences: list[dict] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)  #: study ids unchanged since the last run
    stamps: dict[int, str] = field(default_factory=dict)  #: study id -> stamp of what was read

    def extend(self, other: BatchResult) -> None:
        for name in ("studies", "images", "sentences", "rejects", "skipped"):
            getattr(self, name).extend(getattr(other, name))
        self.stamps.update(other.stamps)


#: the previous run, per study: (content hash, stamp or None)
Previous = dict[int, tuple[str, "str | None"]]


def image_stamp(path: Path, report_key: str) -> str | None:
    """What must not have changed for a study to be skipped without reading its image: the
    image's size and modification time, and the report's stamp (or its hash)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_size}:{st.st_mtime_ns}:{report_key}"


def output_path(study: StudyEntry, dicom_id: str, fmt: str) -> str:
    """Where a study's normalised image goes, relative to the output root."""
    return image_path(study.folder, study.subject_id, study.study_id, dicom_id, fmt)


def study_stamp(source: Path, study: StudyEntry) -> str | None:
    """The stamp of a study as the scan sees it: its first frontal image's and its report's
    (None when the report's stamp is unknown)."""
    if not study.report_stamp:
        return None
    if not study.frontal_order:
        return f"-:{study.report_stamp}"
    image = next(i for i in study.images if i.dicom_id == study.frontal_order[0])
    return image_stamp(Path(source) / image.path, study.report_stamp)


def unchanged(source: Path, out: Path, study: StudyEntry, last: tuple[str | None, str | None], fmt: str) -> str | None:
    """The study's stamp when nothing it was built from has changed since the run that recorded
    ``last`` (content hash or None for a rejected study, stamp), and an ingested study's output
    is still there; None otherwise. Reads no file: one or two stats."""
    last_hash, last_stamp = last
    stamp = study_stamp(source, study) if last_stamp else None
    if stamp is None or stamp != last_stamp:
        return None
    if last_hash is not None and not (Path(out) / output_path(study, study.frontal_order[0], fmt)).is_file():
        return None
    return stamp


class _StudyRecords:
    """One study's records while ingest builds them: a row per image, the study's row, and its
    reject records (appended to the batch's as they happen); :meth:`finish` hands the rows over."""

    def __init__(self, study: StudyEntry, out: BatchResult) -> None:
        self.study, self.out = study, out
        self.ids = {"subject_id": study.subject_id, "study_id": study.study_id}
        self.images = {
            image.dicom_id: {
                "dicom_id": image.dicom_id,
                **self.ids,
                "path": image.path,
                "view": image.view,
                "view_position": image.view_position,
                "view_source": image.view_source,
                "status": "not_selected",
                "file_sha256": None,
                "transfer_syntax": None,
                "photometric": None,
                "bits_stored": None,
                "rows": None,
                "columns": None,
                "out_path": None,
                "out_rows": None,
                "out_columns": None,
            }
            for image in study.images
        }
        self.row = {
            **self.ids,
            "folder": study.folder,
            "split": study.split,
            "report_path": study.report_path,
            "n_images": len(study.images),
            "n_frontal": sum(i.view == "frontal" for i in study.images),
            "frontal_dicom_id": None,
            "frontal_view": None,
            "n_sentences": 0,
            "status": "rejected",
            "reject_reason": None,
            "content_hash": None,
        }

    def reject(
        self, stage: str, entity: str, reason: str, message: str, dicom_id: str | None = None, path: str | None = None
    ) -> None:
        self.out.rejects.append(
            {
                "stage": stage,
                "entity": entity,
                **self.ids,
                "dicom_id": dicom_id,
                "path": path,
                "reason": reason,
                "message": message,
            }
        )

    def finish(self, source: Path, reason: str | None = None) -> None:
        """The study ingested (``reason`` None) or rejected: its rows join the batch's; a rejected
        study's stamp too (it is not looked at again while its inputs stay the same)."""
        self.row["reject_reason"] = reason
        self.row["status"] = "rejected" if reason else "ingested"
        if reason:
            stamp = study_stamp(source, self.study)
            if stamp:
                self.out.stamps[self.study.study_id] = stamp
        self.out.studies.append(self.row)
        self.out.images.extend(self.images.values())


class IngestStage:
    """The ingest stage (``pipeline/executor.py``'s Stage): ``setup()`` loads the sentence
    splitter (once per worker), ``process_batch(studies, previous)`` returns a batch's records,
    ``merge`` joins a batch's chunks' records in order."""

    #: what a fork server imports once for a pool of this stage's workers (executor.make_executor)
    preload = (__name__, f"{__package__}.text")

    def __init__(self, source: Path, out: Path, normalize: NormalizeConfig) -> None:
        self.source, self.out, self.normalize = Path(source), Path(out), normalize
        self.splitter: SentenceSplitter | None = None

    def setup(self) -> None:
        from .text import SentenceSplitter

        if self.splitter is None:
            self.splitter = SentenceSplitter()
            # spaCy refuses texts over nlp.max_length (a guard for its parser, which a blank
            # pipeline with a sentencizer does not run): the report size limit decides instead
            nlp = self.splitter.nlp
            nlp.max_length = max(nlp.max_length, max_report_bytes() + 1)

    def __getstate__(self) -> dict:
        # a stage travels to a worker without its set-up state: the worker sets it up there
        return {**self.__dict__, "splitter": None}

    @staticmethod
    def merge(parts: list[BatchResult]) -> BatchResult:
        result = BatchResult()
        for part in parts:
            result.extend(part)
        return result

    def out_path(self, study: StudyEntry, dicom_id: str) -> str:
        return output_path(study, dicom_id, self.normalize.fmt)

    # -- one batch ---------------------------------------------------------------------------
    def process_batch(self, studies: list[StudyEntry], previous: Previous | None = None) -> BatchResult:
        """Ingest a batch. ``previous``: the last run's content hashes and stamps of (at least)
        these studies (``IngestPlan.previous_for``); none: every study is new."""
        previous = previous or {}
        result = BatchResult()
        for study in studies:
            self._process_study(study, result, previous)
        return result

    def _process_study(self, study: StudyEntry, out: BatchResult, previous: Previous) -> None:
        """One study's records: its report read and split, then its frontal candidates tried in
        the scan's order until one decodes; every failure a reject record with its reason."""
        rec = _StudyRecords(study, out)
        for image in study.images:
            if not image.exists:
                rec.images[image.dicom_id]["status"] = "rejected"
                if study.error is None:  # an unlisted folder is the study's read_error (below)
                    message = f"metadata names {image.path}, which does not exist"
                    rec.reject("scan", "image", "missing_file", message, image.dicom_id, image.path)
            elif image.header_error is not None:  # the scan read its header for the view and could not
                rec.images[image.dicom_id]["status"] = "rejected"
                rec.reject("scan", "image", *image.header_error, image.dicom_id, image.path)

        if study.error is not None:  # the study folder could not be listed (scan.StudyEntry.error)
            folder = f"files/{study.folder}/p{study.subject_id}/s{study.study_id}"
            rec.reject("scan", "study", "read_error", study.error, path=folder)
            return rec.finish(self.source, "read_error")

        # -- report ---------------------------------------------------------------------------
        text, reason, message = self._read_report(study)
        if reason:
            rec.reject("report", "report", reason, message, path=study.report_path)
            return rec.finish(self.source, reason)
        assert text is not None  # a report without a reject reason has its text
        report_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
        self.setup()  # here, not per batch: a re-run that skips every study never loads spaCy
        assert self.splitter is not None  # set up just above
        sentences = self.splitter.split_report(text, study_id=study.study_id)
        if not sentences:
            message = "no findings, impression or narrative sentence"
            rec.reject("report", "report", "report_no_text", message, path=study.report_path)
            return rec.finish(self.source, "report_no_text")

        # -- frontal image ---------------------------------------------------------------------
        if not study.frontal_order:
            views = sorted({i.view_position or i.view for i in study.images if i.exists}) or ["none"]
            unread_paths = [f"{i.path} ({i.header_error[0]})" for i in study.images if i.header_error is not None]
            unread = f"; view unknown, header unreadable: {', '.join(unread_paths)}" if unread_paths else ""
            message = f"no frontal image among existing views: {', '.join(views)}{unread}"
            rec.reject("scan", "study", "no_frontal", message)
            return rec.finish(self.source, "no_frontal")
        # a study unchanged by its stamp never reaches a batch (plan_ingest: `unchanged`); here
        # an unchanged *content* is still found by its hash, before any decoding
        last_hash = previous.get(study.study_id, (None, None))[0]
        return self._frontal(rec, sentences, report_sha, study.report_stamp or report_sha, last_hash)

    def _frontal(
        self, rec: _StudyRecords, sentences: list, report_sha: str, report_key: str, last_hash: str | None
    ) -> None:
        """Try the study's frontal candidates in the scan's (seeded) order: the first that
        decodes is normalised and written, with the study's sentences; a candidate whose content
        (image and report) is the last run's, with its output still there, is skipped unread."""
        study, out = rec.study, rec.out
        by_id = {i.dicom_id: i for i in study.images}
        failed = []  # "path (reason)" of the frontal images that could not be decoded
        for dicom_id in study.frontal_order:
            image = by_id[dicom_id]
            row = rec.images[dicom_id]
            try:
                data = (self.source / image.path).read_bytes()
            except OSError as exc:
                row["status"] = "rejected"
                rec.reject("image", "image", "read_error", f"{type(exc).__name__}: {exc}", dicom_id, image.path)
                failed.append(f"{image.path} (read_error)")
                continue
            digest = hashlib.sha256(data).hexdigest()
            row["file_sha256"] = digest
            content_hash = hashlib.sha256((digest + report_sha).encode()).hexdigest()
            out_path = self.out_path(study, dicom_id)
            stamp = image_stamp(self.source / image.path, report_key)
            if last_hash == content_hash and (self.out / out_path).is_file():
                out.skipped.append(study.study_id)
                if stamp:
                    out.stamps[study.study_id] = stamp
                return
            try:
                decoded = self._decode(study, data, image)
            except ImageReject as exc:
                row["status"] = "rejected"
                rec.reject("image", "image", exc.reason, f"{image.path}: {exc.message}", dicom_id, image.path)
                failed.append(f"{image.path} ({exc.reason})")
                continue
            atomic_write_bytes(self.out / out_path, encode_file_bytes(decoded.pixels, self.normalize))
            self._fill_image_row(row, decoded, out_path)
            rec.row.update(
                frontal_dicom_id=dicom_id,
                frontal_view=image.view_position,
                n_sentences=len(sentences),
                content_hash=content_hash,
            )
            out.sentences.extend(
                {
                    **rec.ids,
                    "index": s.index,
                    "section": s.section,
                    "text": s.text,
                    "key": s.key,
                    "start": s.start,
                    "end": s.end,
                }
                for s in sentences
            )
            if stamp:
                out.stamps[study.study_id] = stamp
            return rec.finish(self.source, None)
        tried = len(study.frontal_order)
        not_decoded = f"; not decoded: {', '.join(failed)}" if failed else ""
        rec.reject(
            "image", "study", "no_frontal", f"none of the {tried} frontal image(s) could be decoded{not_decoded}"
        )
        return rec.finish(self.source, "no_frontal")

    def _decode(self, study: StudyEntry, data: bytes, image: ImageEntry | None = None) -> DecodedImage:
        """The image decoded; the metadata CSV's Rows/Columns for it, when it gives both, must be
        the file's (else a ``metadata_mismatch`` reject)."""
        expect = None
        if image is not None and image.rows and image.columns:
            expect = (image.rows, image.columns)
        if study.image_kind == "jpg":
            from .images import decode_jpeg

            return decode_jpeg(data, self.normalize, expect)
        return decode_dicom(data, self.normalize, expect)

    @staticmethod
    def _fill_image_row(row: dict, decoded: DecodedImage, out_path: str) -> None:
        row.update(
            status="selected",
            transfer_syntax=decoded.transfer_syntax,
            photometric=decoded.photometric,
            bits_stored=decoded.bits_stored,
            rows=decoded.original_rows,
            columns=decoded.original_columns,
            out_path=out_path,
            out_rows=int(decoded.pixels.shape[0]),
            out_columns=int(decoded.pixels.shape[1]),
        )

    def _read_report(self, study: StudyEntry) -> tuple[str | None, str | None, str]:
        if study.report_path is None:
            return None, "no_report", f"no report s{study.study_id}.txt for this study in the report source"
        limit = max_report_bytes()
        if study.report_size is not None and study.report_size > limit:  # known from the index: not read
            return None, "report_too_large", str(ReportTooLarge(study.report_path, study.report_size, limit))
        try:
            data = (
                study.report_data
                if study.report_data is not None
                else read_report(self.source, study.report_path, limit)
            )
        except ReportTooLarge as exc:  # grown since the scan, or a size the index did not know
            return None, "report_too_large", str(exc)
        except (OSError, KeyError) as exc:
            return None, "read_error", f"{type(exc).__name__}: {exc}"
        if not data.strip():
            return None, "empty_report", f"{study.report_path} is empty ({len(data)} bytes)"
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return None, "report_not_utf8", f"byte {exc.start}: {exc.reason} (0x{data[exc.start]:02x})"
        bad = _CONTROL.search(text)
        if bad:  # a plain-text report never holds NUL or other C0 controls: a corrupt file
            offset = len(text[: bad.start()].encode("utf-8"))
            return (
                None,
                "report_not_text",
                (
                    f"{study.report_path}: byte {offset} is the control character "
                    f"0x{ord(bad.group()):02x} ({bad.group()!r}): not plain text"
                ),
            )
        return text, None, ""


#: C0 control characters other than tab, newline, form feed and carriage return (a report holding one is corrupt)
_CONTROL = re.compile("[\x00-\x08\x0b\x0e-\x1f]")


# ------------------------------------------------------------------------------------------------
@dataclass
class IngestSummary:
    studies: int
    ingested: int
    rejected: int
    skipped: int
    images: int
    sentences: int
    rejects_by_reason: dict
    seconds: float
    out: str
    #: directory symlinks the scan did not follow ("PATH -> TARGET (why)": loops, links back into
    #: the tree; see sources.TreeWalk), also logged as a warning
    skipped_links: list = field(default_factory=list)

    def counts(self) -> dict:
        """The figures a run record keeps (the manifest's ``runs.counts``), by their names there."""
        return {
            "studies": self.studies,
            "ingested": self.ingested,
            "rejected": self.rejected,
            "unchanged": self.skipped,
        }

    def to_text(self) -> str:
        reasons = ", ".join(f"{k} {v}" for k, v in self.rejects_by_reason.items()) or "none"
        links = (
            (
                f"\n  symlinks not followed {len(self.skipped_links)}: "
                + "; ".join(self.skipped_links[:5])
                + (" …" if len(self.skipped_links) > 5 else "")
            )
            if self.skipped_links
            else ""
        )
        return (
            f"ingest → {self.out}\n"
            f"  studies {self.studies}: ingested {self.ingested}, rejected {self.rejected}, "
            f"unchanged {self.skipped}\n"
            f"  images {self.images} · sentences {self.sentences} · {self.seconds:.1f} s\n"
            f"  rejects {reasons}" + links
        )


def read_table(out: Path, name: str) -> pd.DataFrame:
    path = ingest_table(out, name)
    return pq.read_table(path).to_pandas() if path.is_file() else TABLES[name].empty()


def write_table(out: Path, name: str, df: pd.DataFrame) -> Path:
    """Validate against the contract, then write atomically."""
    table = TABLES[name].validate(df)
    path = ingest_table(out, name)
    with atomic_open(path, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")
    return path


@dataclass
class IngestPlan:
    """What one ingest run will do: the scanned studies in batches, and the content hashes of
    the previous run (the incremental skip)."""

    studies: list[StudyEntry]
    batches: list[list[StudyEntry]]
    previous: Previous
    rejects: list[dict] = field(default_factory=list)  #: the scan's own (a report for no study …)
    scan_seconds: float = 0.0
    source: str = ""  #: what the source was resolved to, in words
    #: studies found unchanged while planning (no batch: nothing of theirs is read), with their stamps
    unchanged: dict[int, str] = field(default_factory=dict)
    #: studies rejected last time whose inputs are unchanged: their records are kept as they are
    unchanged_rejected: dict[int, str] = field(default_factory=dict)
    #: the folders scanned (None: every folder): a folder-level reject of an earlier run (a folder
    #: it could not list) is replaced by this run's when its folder is among them
    scan_folders: tuple[str, ...] | None = None
    skipped_links: list[str] = field(default_factory=list)  #: the scan's (ScanResult.skipped_links)

    def previous_for(self, batch: list[StudyEntry]) -> Previous:
        return {s.study_id: self.previous[s.study_id] for s in batch if s.study_id in self.previous}


def plan_ingest(config: IngestConfig, max_batches: int | None = None) -> IngestPlan:
    """Scan and cut the studies into batches (of ``batch_size``, larger if ``max_batches``
    would be exceeded: an orchestrator keeps the number of tasks bounded)."""
    start = time.perf_counter()
    assert config.scan is not None  # IngestConfig.__post_init__ fills it in
    scanned = scan_source(config.scan)
    studies = scanned.studies
    previous_studies = read_table(config.out, "studies")
    stamps = read_stamps(config.out)
    previous = {
        int(r.study_id): (r.content_hash, stamps.get(int(r.study_id)))
        for r in previous_studies.itertuples()
        if r.status == "ingested" and isinstance(r.content_hash, str)
    }
    rejected = {
        int(r.study_id): (None, stamps[int(r.study_id)])
        for r in previous_studies.itertuples()
        if r.status == "rejected" and int(r.study_id) in stamps
    }
    scan_seconds = time.perf_counter() - start
    found: dict[int, str] = {}
    found_rejected: dict[int, str] = {}
    for study in studies:  # two stats per study whose report stamp is known (a tree or a zip)
        last = previous.get(study.study_id) or rejected.get(study.study_id)
        stamp = unchanged(config.source, config.out, study, last, config.normalize.fmt) if last else None
        if stamp and last:  # (a stamp only where there is a last)
            (found if last[0] is not None else found_rejected)[study.study_id] = stamp
    todo = [s for s in studies if s.study_id not in found and s.study_id not in found_rejected]
    size = config.batch_size
    if max_batches and len(todo) > size * max_batches:
        size = -(-len(todo) // max_batches)
    batches = [todo[i : i + size] for i in range(0, len(todo), size)]
    return IngestPlan(
        studies,
        batches,
        previous,
        scanned.rejects,
        scan_seconds,
        scanned.source.describe(),
        found,
        found_rejected,
        config.scan.folders,
        scanned.skipped_links,
    )


def read_stamps(out: Path) -> dict[int, str]:
    path = Path(out) / STAMPS_FILE
    if not path.is_file():
        return {}
    df = pq.read_table(path).to_pandas()
    return dict(zip(df["study_id"].astype("int64").tolist(), df["stamp"].tolist()))


def _write_stamps(out: Path, result: BatchResult, scanned: set[int]) -> None:
    """Stamps of this run; those of studies outside this scan are kept (like their records)."""
    stamps = {k: v for k, v in read_stamps(out).items() if k not in scanned}
    stamps.update(result.stamps)
    save_stamps(out, stamps)


def save_stamps(out: Path, stamps: dict[int, str]) -> None:
    """Write ``OUT/ingest/stamps.parquet`` (study id -> stamp), atomically."""
    import pyarrow as pa

    ids = sorted(stamps)
    table = pa.table({"study_id": pa.array(ids, pa.int64()), "stamp": pa.array([stamps[i] for i in ids], pa.string())})
    with atomic_open(Path(out) / STAMPS_FILE, "wb") as fh:
        pq.write_table(table, fh, compression="zstd")


def finish_ingest(out: Path, plan: IngestPlan, result: BatchResult, seconds: float) -> IngestSummary:
    """Merge the batches' records into the record tables and summarise the run."""
    result.rejects.extend(plan.rejects)
    result.skipped.extend(plan.unchanged)
    result.stamps.update(plan.unchanged)
    result.stamps.update(plan.unchanged_rejected)
    scanned = {s.study_id for s in plan.studies}
    _merge_and_write(out, result, scanned, plan.scan_folders)
    _write_stamps(out, result, scanned)
    # the reject reasons of every scanned study, this run's and the unchanged ones' kept records
    # (and of the folders this scan could not list)
    rejects = read_table(out, "rejects")
    ids = scanned | {r["study_id"] for r in plan.rejects if r["study_id"] is not None}
    folder_level = rejects["study_id"].isna() & rejects["path"].isin([r["path"] for r in plan.rejects])
    by_reason = rejects.loc[rejects["study_id"].isin(ids) | folder_level, "reason"].astype("string").value_counts()
    return IngestSummary(
        studies=len(plan.studies),
        ingested=sum(r["status"] == "ingested" for r in result.studies) + len(result.skipped),
        rejected=sum(r["status"] == "rejected" for r in result.studies) + len(plan.unchanged_rejected),
        skipped=len(result.skipped),
        images=sum(r["status"] == "selected" for r in result.images),
        sentences=len(result.sentences),
        rejects_by_reason={str(k): int(v) for k, v in by_reason.items()},
        seconds=seconds,
        out=str(out),
        skipped_links=list(plan.skipped_links),
    )


class BatchExecutor(Protocol):
    """What :func:`run_ingest` needs of an executor: a ``with`` block, and ``map`` over the
    batches in order (``executor.InlineExecutor`` / ``ProcessExecutor``, the flow's
    ``flows/runners.TaskExecutor``)."""

    def __enter__(self) -> BatchExecutor: ...

    def __exit__(self, *exc: Any) -> None: ...

    def map(self, batches: Iterable[Any], *args: Iterable[Any]) -> Iterator[BatchResult]: ...


#: makes a run's executor once its batches are known: (stage, number of batches) -> executor
ExecutorFactory = Callable[["IngestStage", int], BatchExecutor]


class IngestReport(Protocol):
    """What a driver is told as ingest runs: ``offclip ingest``'s progress bar
    (:class:`ProgressBar`), the flow's log and progress artifact (``flows/build.py``)."""

    def planned(self, plan: IngestPlan) -> None: ...

    def batch_done(self, batch: list[StudyEntry], done: int, total: int) -> None: ...

    def close(self) -> None: ...


class ProgressBar:
    """A tqdm bar over the studies (``IngestConfig.progress``): the CLI's report."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar: tqdm | None = None

    def planned(self, plan: IngestPlan) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=len(plan.studies),
            initial=len(plan.unchanged) + len(plan.unchanged_rejected),
            unit="study",
            desc="ingest",
            disable=not self.enabled,
        )

    def batch_done(self, batch: list[StudyEntry], done: int, total: int) -> None:
        assert self.bar is not None  # planned() comes first
        self.bar.update(len(batch))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_ingest(
    config: IngestConfig,
    executor: ExecutorFactory | None = None,
    *,
    max_batches: int | None = None,
    report: IngestReport | None = None,
) -> IngestSummary:
    """The ingest stage, the one driver: plan (``max_batches`` bounds the number of batches),
    run every batch on the executor that ``executor(stage, batches)`` makes (default:
    ``executor.make_executor`` with ``config.workers``: this process, or a process pool), merge
    the records in batch order, write the tables. ``report`` (default: a progress bar when
    ``config.progress``) is told the plan and each batch as its result is merged."""
    start = time.perf_counter()
    plan = plan_ingest(config, max_batches)
    report = report or ProgressBar(config.progress)
    report.planned(plan)
    factory = executor or (lambda stage, batches: make_executor(stage, config.workers, batches))
    # each batch carries its own part of the previous run (not all of it to every worker)
    previous = [plan.previous_for(b) for b in plan.batches]
    result = BatchResult()
    try:
        with factory(IngestStage(config.source, config.out, config.normalize), len(plan.batches)) as pool:
            for done, (batch, part) in enumerate(zip(plan.batches, pool.map(plan.batches, previous)), 1):
                result.extend(part)  # in batch order: deterministic records
                report.batch_done(batch, done, len(plan.batches))
    finally:
        report.close()
    return finish_ingest(config.out, plan, result, time.perf_counter() - start)


def _merge_and_write(out: Path, result: BatchResult, scanned: set[int], folders: tuple[str, ...] | None = None) -> None:
    """New records replace the previous run's for the studies processed now; the records of
    unchanged (skipped) studies and of studies outside this scan are kept. A study without
    records of its own (a report for no study: a scan reject) counts as processed too. A
    folder-level reject (a folder the scan could not list: no study id) of an earlier run is
    replaced by this run's when its folder is among ``folders`` (None: every folder)."""
    processed = {r["study_id"] for r in result.studies} | {
        r["study_id"] for r in result.rejects if r["stage"] == "scan" and r["entity"] == "report"
    }
    folder_rejects = [r for r in result.rejects if r["study_id"] is None]
    old_rejects = read_table(out, "rejects")
    stale = old_rejects["study_id"].isna() & old_rejects["path"].map(lambda p: _in_folders(p, folders)).astype(bool)
    # a CSV row's reject is made again by every scan (the CSVs are read whole): the old one goes
    stale |= old_rejects["reason"] == "metadata_row_invalid"
    if not processed and not folder_rejects and not stale.any() and all(ingest_table(out, n).is_file() for n in TABLES):
        return  # every study unchanged: the tables stay as they are (a re-run rewrites nothing)
    for name, contract in TABLES.items():
        old = old_rejects[~stale] if name == "rejects" else read_table(out, name)
        if "study_id" in old.columns and len(old):
            old = old[~old["study_id"].isin(processed)]
        new = frame(contract, getattr(result, name))
        merged = pd.concat([df for df in (old, new) if len(df)], ignore_index=True) if len(old) or len(new) else new
        sort = [c for c in ("subject_id", "study_id", "index", "dicom_id", "reason") if c in merged.columns]
        merged = merged.sort_values(sort, kind="stable", na_position="first").reset_index(drop=True)
        write_table(out, name, merged)


def _in_folders(path, folders: tuple[str, ...] | None) -> bool:
    """Whether a folder-level reject's path (``files/pXX/…``) is in the folders scanned."""
    if folders is None or not isinstance(path, str):
        return True
    folder = next(
        (p for p in path.replace(os.sep, "/").split("/") if len(p) == 3 and p[0] == "p" and p[1:].isdigit()), None
    )
    return folder is None or folder in folders

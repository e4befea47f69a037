"""Discover MIMIC-CXR studies, classify views and pick one frontal image per study.

Works on a real MIMIC-CXR copy in each form it ships in (the DICOM release, MIMIC-CXR-JPG, with
reports in a tree or an archive; see :mod:`offclip.pipeline.sources`) and on the demo world
alike: studies come from ``mimic-cxr-2.0.0-metadata.csv[.gz]`` (and ``-split.csv[.gz]``) when
present, else from the DICOM release's ``cxr-record-list.csv[.gz]``, else from the
``files/pXX/pSUBJECT/sSTUDY/*`` tree (and DICOM headers). Nothing here decodes pixels; a scan of
the full MIMIC tree is directory listings plus, for images whose view the metadata does not
tell, one header read each (in parallel).
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..data_contracts.enums import FRONTAL_VIEWS, LATERAL_VIEWS
from .sources import Source, SourceError, TreeWalk, index_reports, resolve_source

log = logging.getLogger(__name__)

DEFAULT_FOLDERS = tuple(f"p{i}" for i in range(10, 17))  #: the paper trains on p10–p16
ALL_FOLDERS = tuple(f"p{i}" for i in range(10, 20))

_CODE_MEANINGS = {
    "postero-anterior": "PA",
    "posteroanterior": "PA",
    "antero-posterior": "AP",
    "anteroposterior": "AP",
    "lateral": "LATERAL",
    "left lateral": "LL",
    "right lateral": "RL",
}
_STUDY_DIR = re.compile(r"s(\d+)")
_SUBJECT_DIR = re.compile(r"p(\d+)")


def view_from_text(text: str | None) -> str | None:
    """A view position (PA/AP/LL/LATERAL…) told by a free-text description, if unambiguous."""
    if not text or not isinstance(text, str):
        return None
    t = text.strip().lower()
    if t in _CODE_MEANINGS:
        return _CODE_MEANINGS[t]
    words = set(re.findall(r"[a-z]+", t))
    frontal = [v for v in ("pa", "ap") if v in words]
    lateral = bool(words & {"lat", "lateral", "ll", "rl"})
    if len(frontal) == 1 and not lateral:
        return frontal[0].upper()
    if lateral and not frontal:
        return "LATERAL"
    return None  # "CHEST (PA AND LAT)" names the study's views, not this image's


def classify_view(
    view_position=None, view_code_meaning=None, device_description=None, procedure=None
) -> tuple[str, str | None, str]:
    """(view, view position, source) from the first field that tells.

    Order: ViewPosition, ViewCodeSequence, AcquisitionDeviceProcessingDescription,
    PerformedProcedureStepDescription (only when it names one view).
    """
    candidates = (
        ("ViewPosition", view_position if isinstance(view_position, str) and view_position.strip() else None),
        ("ViewCodeSequence", view_from_text(view_code_meaning)),
        ("AcquisitionDeviceProcessingDescription", view_from_text(device_description)),
        ("PerformedProcedureStepDescription", view_from_text(procedure)),
    )
    for source, value in candidates:
        if value:
            value = value.strip().upper()
            if value in FRONTAL_VIEWS:
                return "frontal", value, source
            if value in LATERAL_VIEWS:
                return "lateral", value, source
            return "other", value, source
    return "unknown", None, "none"


def parse_folders(value: str) -> tuple[str, ...] | None:
    """'p10-p16' -> (p10 … p16); 'p10,p12' -> (p10, p12); 'all' -> None (every folder)."""
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
        raise ValueError(f"no folder in {value!r}")
    return tuple(folders)


def parse_splits(value: str) -> tuple[str, ...] | None:
    """'train,validate' -> (train, validate); 'all' -> None (every split)."""
    return None if value.strip().lower() == "all" else tuple(s.strip() for s in value.split(",") if s.strip())


@dataclass
class ScanConfig:
    root: Path
    folders: tuple[str, ...] | None = DEFAULT_FOLDERS  #: None = every folder
    splits: tuple[str, ...] | None = None  #: None = every split
    prefer_pa: bool = False  #: choose PA over AP when a study has both (the paper picks at random)
    seed: int = 0
    reports: Path | None = None  #: a reports directory, .zip or .tar.gz (default: found in the root)
    metadata: Path | None = None  #: a directory with the JPG release's CSVs (used beside a DICOM release)
    workers: int = 0  #: processes for header reads (0 -> all cores)
    progress: bool = False  #: a progress bar for header reads


@dataclass
class ImageEntry:
    dicom_id: str
    path: str  #: relative to the root
    exists: bool
    view: str = "unknown"
    view_position: str | None = None
    view_source: str = "none"
    procedure: str | None = None  #: PerformedProcedureStepDescription from the metadata (weakest evidence)
    rows: int | None = None  #: Rows from the metadata CSV (the decoder rejects a file whose header disagrees)
    columns: int | None = None  #: Columns from the metadata CSV
    #: (reason, message) when the scan read the header for the view and could not (ingest rejects the image)
    header_error: tuple[str, str] | None = None


@dataclass
class StudyEntry:
    subject_id: int
    study_id: int
    folder: str
    split: str
    report_path: str | None  #: a report reference (see offclip.pipeline.sources); None: no report
    images: list[ImageEntry] = field(default_factory=list)
    #: frontal candidates in the order they should be tried (first = the chosen one)
    frontal_order: list[str] = field(default_factory=list)
    report_data: bytes | None = None  #: the report itself, when its archive is read during the scan
    report_stamp: str | None = None  #: what changes when the report does (see ReportIndex.stamps)
    image_kind: str = "dicom"  #: dicom | jpg
    report_size: int | None = None  #: the report's size when its index knows it (see ReportIndex.sizes)
    #: why the study folder could not be listed (a ``read_error`` reject of ingest); None: listed
    error: str | None = None


@dataclass
class ScanResult:
    studies: list[StudyEntry]
    rejects: list[dict]  #: reject records of the scan (e.g. a report for no study, a folder it could not list)
    source: Source
    #: directory symlinks the walks did not follow ("PATH -> TARGET (why)"; see sources.TreeWalk)
    skipped_links: list[str] = field(default_factory=list)


def scan_source(config: ScanConfig) -> ScanResult:
    """The studies under ``config.root`` that pass the folder and split filters (sorted by id),
    the scan's reject records and the resolved source.

    Studies come from the metadata CSV when there is one (the root's or ``--metadata``'s), else
    from the DICOM release's record list, else from the directory tree; reports from the report
    store (the tree, a directory, a zip or a tar.gz). A report whose study is in none of them is
    a ``report_without_study`` reject; a metadata row whose file is absent, a ``missing_file``
    reject of ingest.
    """
    walk = TreeWalk(Path(config.root) / "files")
    source = resolve_source(Path(config.root), config.reports, config.metadata, walk=walk)
    root = source.root
    walk.unreadable.clear()  # what detect_image_kind met is met again below, with its folder filter
    reports = index_reports(source.reports, root, config.folders, walk)
    csv_rejects: list[dict] = []  # CSV rows that cannot be read (metadata_row_invalid)
    splits = _read_splits(source.split, root, csv_rejects)
    if source.metadata is not None:
        studies = _from_metadata(root, source.metadata, config, source.image_ext, csv_rejects)
    elif source.record_list is not None:
        studies = _from_record_list(root, source.record_list, config, csv_rejects)
    else:
        studies = _from_tree(root, config, source.image_ext, walk)
    rejects = [_reject_folder(root, path, message) for path, message in sorted(walk.unreadable.items())]
    rejects += csv_rejects
    if walk.skipped:
        log.warning("scan: %d directory symlink(s) not followed: %s", len(walk.skipped), "; ".join(walk.messages()))
    for study_id, (subject_id, ref) in reports.refs.items():
        if study_id not in studies:
            split = splits.get(study_id, "unknown")
            if config.splits is None or split in config.splits:
                rejects.append(_reject_orphan(subject_id, study_id, ref, source))
    for study in studies.values():
        study.split = splits.get(study.study_id, "unknown")
        study.image_kind = source.image_kind
        found = reports.refs.get(study.study_id)
        study.report_path = found[1] if found else None
        study.report_data = reports.data.get(study.study_id)
        study.report_stamp = reports.stamps.get(study.study_id)
        study.report_size = reports.sizes.get(study.study_id)
    selected = [s for s in studies.values() if config.splits is None or s.split in config.splits]
    _fill_views(root, selected, config)
    for study in selected:
        study.frontal_order = frontal_order(study, config.seed, config.prefer_pa)
    return ScanResult(
        sorted(selected, key=lambda s: (s.subject_id, s.study_id)),
        sorted(rejects, key=lambda r: (r["subject_id"] or 0, r["study_id"] or 0, r["path"])),
        source,
        walk.messages(),
    )


_FOLDER_SUBJECT = re.compile(r"(?:^|/)p\d\d/p(\d+)(?:/|$)")


def _reject_folder(root: Path, path: str, message: str) -> dict:
    """A folder of the tree that could not be listed: what it holds is unknown, so the reject
    names the folder (and its subject, for a subject folder); its studies are not in the scan."""
    rel = os.path.relpath(path, root)
    shown = path if rel.startswith("..") else rel
    m = _FOLDER_SUBJECT.search(shown.replace(os.sep, "/"))
    return {
        "stage": "scan",
        "entity": "study",
        "subject_id": int(m.group(1)) if m else None,
        "study_id": None,
        "dicom_id": None,
        "path": shown,
        "reason": "read_error",
        "message": f"cannot list the folder {shown}: {message}; nothing in it is read",
    }


def _reject_orphan(subject_id: int, study_id: int, ref: str, source: Source) -> dict:
    where = "the metadata CSV" if source.metadata else "the record list" if source.record_list else "the image tree"
    return {
        "stage": "scan",
        "entity": "report",
        "subject_id": subject_id,
        "study_id": study_id,
        "dicom_id": None,
        "path": ref,
        "reason": "report_without_study",
        "message": f"a report for study s{study_id}, which {where} does not have",
    }


def frontal_order(study: StudyEntry, seed: int, prefer_pa: bool) -> list[str]:
    """Frontal images in the order to try: a seeded random permutation (PA first if asked)."""
    frontal = sorted((i for i in study.images if i.view == "frontal" and i.exists), key=lambda i: i.dicom_id)
    rng = np.random.default_rng([seed, study.study_id])
    order = [frontal[k] for k in rng.permutation(len(frontal))]
    if prefer_pa:
        order.sort(key=lambda i: i.view_position != "PA")  # stable: keeps the random order within
    return [i.dicom_id for i in order]


def _folder_ok(folder: str, config: ScanConfig) -> bool:
    return config.folders is None or folder in config.folders


def _read_splits(path: Path | None, root: Path | None = None, rejects: list[dict] | None = None) -> dict[int, str]:
    if path is None:
        return {}
    df = read_id_csv(
        path,
        {"study_id": "int64", "split": "string"},
        root,
        rejects,
        keep=["study_id", "split"],
        required=["study_id", "split"],
    )
    return dict(zip(df["study_id"].tolist(), df["split"].tolist()))


_ID_COLUMNS = ("subject_id", "study_id")  #: the id columns a CSV row is useless without (and dicom_id)


def read_id_csv(
    path: Path,
    dtype: dict[str, str],
    root: Path | None,
    rejects: list[dict] | None,
    entity: str = "image",
    keep: list[str] | None = None,
    required: list[str] | None = None,
) -> pd.DataFrame:
    """A metadata, split or record-list CSV as a frame (``keep``: the columns kept when present,
    None: all), one bad row never stopping the read: a row with the wrong number of fields, a
    subject_id / study_id that is not a whole number or an empty dicom_id is left out and is a
    ``metadata_row_invalid`` reject (appended to ``rejects``) naming the file and the line.

    The common case is one typed read with pandas' C engine (every column read, so that a line
    with an extra field is a ParserError rather than a silent shift of the columns kept); only
    when it fails, or shows a bad row, is the file read again row by row to find the bad lines."""
    try:
        df = pd.read_csv(path, dtype=dtype)
        ok = isinstance(df.index, pd.RangeIndex)  # not: a first row with an extra field taken for an index
        ok = ok and not ("dicom_id" in dtype and "dicom_id" in df.columns and df["dicom_id"].isna().any())
    except (pd.errors.ParserError, ValueError, OverflowError):  # a bad line, an id that is not a number
        ok = False
    if not ok:
        df = _read_rows(path, dtype, root, rejects, entity)
    missing = [c for c in required or () if c not in df.columns]
    if missing:
        raise SourceError(f"{path}: missing column(s) {', '.join(missing)}")
    if keep is not None:
        df = df[[c for c in df.columns if c in keep]]
    return df


def _read_rows(
    path: Path, dtype: dict[str, str], root: Path | None, rejects: list[dict] | None, entity: str
) -> pd.DataFrame:
    """The slow path of :func:`read_id_csv`: the csv module finds the rows with the wrong number of
    fields (and their line numbers), pandas reads the others with the ids as strings, and the
    rows whose ids do not convert are left out too."""
    shown = _shown(root, path)
    opener = gzip.open if str(path).endswith(".gz") else open
    good, lines, bad = [], [], []
    with opener(path, "rt", encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        start = reader.line_num + 1
        for row in reader:
            line, start = start, reader.line_num + 1
            if not row or row == [""]:
                continue  # a blank line (pandas skips it too)
            if len(row) != len(header):
                bad.append((line, dict(zip(header, row)), f"{len(row)} fields where the header has {len(header)}"))
            else:
                good.append(row)
                lines.append(line)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(good)
    buf.seek(0)
    text_ids = {c: ("string" if c in _ID_COLUMNS else t) for c, t in dtype.items()}
    df = pd.read_csv(buf, dtype=text_ids)
    keep = np.ones(len(df), dtype=bool)
    why = [""] * len(df)
    numbers = {}
    for col in _ID_COLUMNS:
        if col in df.columns and dtype.get(col) == "int64":
            num = pd.to_numeric(df[col], errors="coerce")
            valid = (num.notna() & (num == num.round())).to_numpy()
            numbers[col] = num
            for i in np.flatnonzero(~valid):
                why[i] = why[i] or f"{col} {df[col].iloc[i]!r} is not a number"
            keep &= valid
    if "dicom_id" in dtype and "dicom_id" in df.columns:
        empty = (df["dicom_id"].isna() | (df["dicom_id"].str.strip() == "")).to_numpy()
        for i in np.flatnonzero(empty):
            why[i] = why[i] or "no dicom_id"
        keep &= ~empty
    records = df.to_dict("records") if not keep.all() else []
    for i in np.flatnonzero(~keep):
        bad.append((lines[i], {c: v for c, v in records[i].items() if isinstance(v, str)}, why[i]))
    for line, fields, reason in sorted(bad, key=lambda b: b[0]):
        reject = _reject_row(shown, line, fields, reason, entity)
        log.warning("scan: %s", reject["message"])
        if rejects is not None:
            rejects.append(reject)
    df = df[keep].reset_index(drop=True)
    for col in numbers:
        df[col] = numbers[col][keep].astype("int64").to_numpy()
    return df


def _shown(root: Path | None, path: Path) -> str:
    if root is None:
        return str(path)
    rel = os.path.relpath(path, root)
    return str(path) if rel.startswith("..") else rel


def _id(value) -> int | None:
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return int(number) if number.is_integer() and number > 0 else None


def _reject_row(shown: str, line: int, fields: dict, reason: str, entity: str) -> dict:
    """A CSV row that cannot be read: its study (and subject) when its ids still tell them."""
    subject_id, study_id = _id(fields.get("subject_id")), _id(fields.get("study_id"))
    dicom_id = fields.get("dicom_id") or None
    first = ",".join(str(v) for v in list(fields.values())[:3])
    study = f"; study s{study_id}'s other rows are used" if study_id is not None else ""
    return {
        "stage": "scan",
        "entity": entity,
        "subject_id": subject_id,
        "study_id": study_id,
        "dicom_id": dicom_id if entity == "image" and study_id is not None else None,
        "path": shown,
        "reason": "metadata_row_invalid",
        "message": f"{shown} line {line} ({first}…) cannot be read: {reason}; the row is left out{study}",
    }


def _study(studies: dict[int, StudyEntry], subject_id: int, study_id: int, folder: str) -> StudyEntry:
    study = studies.get(study_id)
    if study is None:
        study = studies[study_id] = StudyEntry(subject_id, study_id, folder, "unknown", None)
    return study


class _Listing:
    """Directory listings of study folders, each read once; those that cannot be listed
    (permissions, a loop of symlinks) are kept in ``failed`` (study dir -> error)."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.cache: dict[str, set[str]] = {}
        self.failed: dict[str, str] = {}  #: study dir -> error

    def has(self, study_dir: str, name: str) -> bool:
        names = self.cache.get(study_dir)
        if names is None:
            try:  # plain strings: pathlib's joins cost as much as the listing at MIMIC scale
                names = self.cache[study_dir] = set(os.listdir(os.path.join(self.root, study_dir)))
            except (FileNotFoundError, NotADirectoryError):
                names = self.cache[study_dir] = set()
            except OSError as exc:
                names = self.cache[study_dir] = set()
                self.failed[study_dir] = f"{type(exc).__name__}: {exc.strerror or exc}"
        return name in names

    def mark_failed(self, studies: dict[int, StudyEntry]) -> None:
        """Give each study whose folder could not be listed its error (none on a healthy tree)."""
        for study_dir, message in self.failed.items():
            m = _STUDY_DIR.fullmatch(study_dir.rpartition("/")[2])
            study = studies.get(int(m.group(1))) if m else None
            if study is not None:
                study.error = f"cannot list the study folder {study_dir}: {message}"


def _rows_by_study(df: pd.DataFrame, config: ScanConfig, studies: dict[int, StudyEntry]):
    """(row, its study entry) for the image rows of the folders asked for."""
    folders = "p" + df["subject_id"].astype("string").str[:2]
    if config.folders is not None:
        keep = folders.isin(config.folders).to_numpy()
        df, folders = df[keep], folders[keep]
    for row, folder in zip(df.itertuples(index=False), folders.tolist()):
        yield row, _study(studies, row.subject_id, row.study_id, folder)


def _from_metadata(
    root: Path, path: Path, config: ScanConfig, ext: str, rejects: list[dict] | None = None
) -> dict[int, StudyEntry]:
    cols = [
        "dicom_id",
        "subject_id",
        "study_id",
        "ViewPosition",
        "ViewCodeSequence_CodeMeaning",
        "PerformedProcedureStepDescription",
        "Rows",
        "Columns",
    ]
    df = read_id_csv(
        path,
        {"dicom_id": "string", "subject_id": "int64", "study_id": "int64"},
        root,
        rejects,
        keep=cols,
        required=cols[:3],
    )
    for col in cols[3:]:
        if col not in df.columns:
            df[col] = None
    studies: dict[int, StudyEntry] = {}
    listing = _Listing(root)
    for row, study in _rows_by_study(df, config, studies):
        study_dir = f"files/{study.folder}/p{row.subject_id}/s{row.study_id}"
        name = f"{row.dicom_id}{ext}"
        # the study-level procedure is weaker evidence than the image's own header: it is used
        # only when the header does not tell (see _fill_views)
        view, position, source = classify_view(row.ViewPosition, row.ViewCodeSequence_CodeMeaning)
        procedure = row.PerformedProcedureStepDescription
        study.images.append(
            ImageEntry(
                str(row.dicom_id),
                f"{study_dir}/{name}",
                listing.has(study_dir, name),
                view,
                position,
                source,
                procedure if isinstance(procedure, str) else None,
                _dimension(row.Rows),
                _dimension(row.Columns),
            )
        )
    listing.mark_failed(studies)
    return studies


def _dimension(value) -> int | None:
    """A metadata Rows / Columns value as an int (None when blank or not a positive whole number)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number >= 1 and number.is_integer() else None


def _from_record_list(
    root: Path, path: Path, config: ScanConfig, rejects: list[dict] | None = None
) -> dict[int, StudyEntry]:
    """The DICOM release's ``cxr-record-list.csv.gz``: subject_id, study_id, dicom_id, path
    (``files/pXX/pSUBJECT/sSTUDY/<dicom_id>.dcm``); views come from the headers."""
    df = read_id_csv(
        path, {"dicom_id": "string", "subject_id": "int64", "study_id": "int64", "path": "string"}, root, rejects
    )
    missing = {"subject_id", "study_id", "dicom_id", "path"} - set(df.columns)
    if missing:
        raise SourceError(f"{path}: not a cxr-record-list (missing columns {', '.join(sorted(missing))})")
    studies: dict[int, StudyEntry] = {}
    listing = _Listing(root)
    for row, study in _rows_by_study(df, config, studies):
        rel = str(row.path).lstrip("/")
        study_dir, _, name = rel.rpartition("/")
        study.images.append(ImageEntry(str(row.dicom_id), rel, listing.has(study_dir, name)))
    listing.mark_failed(studies)
    return studies


def _from_tree(root: Path, config: ScanConfig, ext: str, walk: TreeWalk) -> dict[int, StudyEntry]:
    """The ``files/pXX/pSUBJECT/sSTUDY/*`` tree, symlinks followed as ``walk`` allows; a folder
    that cannot be listed is in ``walk.unreadable`` (a study folder: the study's ``error``)."""
    studies: dict[int, StudyEntry] = {}
    walk.new_pass()
    by_name = lambda e: e.name  # noqa: E731
    for folder_dir in sorted(walk.scandir(root / "files"), key=by_name):
        if not _folder_ok(folder_dir.name, config) or not walk.is_dir(folder_dir):
            continue
        for subject_dir in sorted(walk.scandir(folder_dir.path), key=by_name):
            m = _SUBJECT_DIR.fullmatch(subject_dir.name)
            if not (m and walk.is_dir(subject_dir)):
                continue
            subject_id = int(m.group(1))
            for entry in sorted(walk.scandir(subject_dir.path), key=by_name):
                sm = _STUDY_DIR.fullmatch(entry.name)
                if not (sm and walk.is_dir(entry)):
                    continue
                study_id = int(sm.group(1))
                rel = f"files/{folder_dir.name}/{subject_dir.name}/{entry.name}"
                study = _study(studies, subject_id, study_id, folder_dir.name)
                try:
                    files = sorted(f for f in os.listdir(entry.path) if f.lower().endswith(ext))
                except OSError as exc:  # the study is a read_error reject of ingest
                    study.images, study.error = (
                        [],
                        f"cannot list the study folder {rel}: {type(exc).__name__}: {exc.strerror or exc}",
                    )
                    continue
                study.images = [ImageEntry(f[: -len(ext)], f"{rel}/{f}", True) for f in files]
    return studies


# ------------------------------------------------------------------------------------------------
# views the metadata does not tell: DICOM header reads, in parallel
# ------------------------------------------------------------------------------------------------
#: fewer header reads than this run in the calling process (a pool costs more to start)
PARALLEL_HEADERS_FROM = 256


def _fill_views(root: Path, studies: list[StudyEntry], config: ScanConfig) -> None:
    """Images whose view the metadata did not tell: read their DICOM header (ViewPosition,
    ViewCodeSequence, AcquisitionDeviceProcessingDescription, then the procedure), or fall back
    to the metadata's procedure description. Many reads (a DICOM release without metadata) run
    in worker processes, with a progress bar when asked."""
    todo = [i for s in studies for i in s.images if i.view == "unknown" and i.exists]
    if not todo:
        return
    if studies[0].image_kind != "dicom":
        for image in todo:
            image.view, image.view_position, image.view_source = classify_view(procedure=image.procedure)
        return
    jobs = [(image.path, image.procedure) for image in todo]
    from .executor import resolve_workers

    workers = resolve_workers(config.workers)
    if workers == 1 or len(jobs) < PARALLEL_HEADERS_FROM:
        results = _header_views(str(root), jobs)
    else:
        from tqdm import tqdm

        from .executor import make_executor

        size = max(64, -(-len(jobs) // (workers * 16)))
        chunks = [jobs[i : i + size] for i in range(0, len(jobs), size)]
        results = []
        with (
            make_executor(HeaderViews(root), workers, len(chunks)) as executor,
            tqdm(total=len(jobs), unit="header", desc="view headers", disable=not config.progress) as bar,
        ):
            for chunk, done in zip(chunks, executor.map(chunks)):
                results.extend(done)
                bar.update(len(chunk))
    for image, (view, position, source, error) in zip(todo, results):
        image.view, image.view_position, image.view_source, image.header_error = view, position, source, error


class HeaderViews:
    """Reading DICOM headers for their views as a stage of ``executor.py`` (nothing to set up)."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)

    def setup(self) -> None:
        pass

    def process_batch(self, jobs: list[tuple[str, str | None]]) -> list[tuple]:
        return _header_views(self.root, jobs)


def _header_views(root: str, jobs: list[tuple[str, str | None]]) -> list[tuple]:
    """(view, view position, source, error) per job; error: None, or (reason, message) when the
    header could not be read (ingest rejects the image with it, naming the file)."""
    import pydicom

    out: list[tuple[str, str | None, str, tuple[str, str] | None]] = []
    for path, procedure in jobs:
        try:
            ds = pydicom.dcmread(
                os.path.join(root, path),
                stop_before_pixels=True,
                specific_tags=[
                    "ViewPosition",
                    "ViewCodeSequence",
                    "PerformedProcedureStepDescription",
                    "AcquisitionDeviceProcessingDescription",
                ],
            )
            code = ds.ViewCodeSequence[0].get("CodeMeaning") if ds.get("ViewCodeSequence") else None
            out.append(
                (
                    *classify_view(
                        ds.get("ViewPosition"),
                        code,
                        ds.get("AcquisitionDeviceProcessingDescription"),
                        ds.get("PerformedProcedureStepDescription") or procedure,
                    ),
                    None,
                )
            )
        except Exception as exc:  # no view from it: ingest rejects the image with this reason
            out.append((*classify_view(procedure=procedure), _header_error(os.path.join(root, path), path, exc)))
    return out


def _header_error(full: str, path: str, exc: Exception) -> tuple[str, str]:
    """(reason, message) of a header the view scan could not read: ``read_error`` (open / read
    failed), ``truncated`` (0 bytes, or the header runs off the end), ``not_dicom``."""
    from pydicom.errors import InvalidDicomError

    detail = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, OSError):
        return "read_error", f"{path}: cannot read the DICOM header ({type(exc).__name__}: {exc.strerror or exc})"
    try:
        size = os.path.getsize(full)
    except OSError:
        size = None
    if size == 0:
        return "truncated", f"{path}: empty file (0 bytes), no DICOM header to read the view from"
    if isinstance(exc, InvalidDicomError):
        return "not_dicom", f"{path}: not a DICOM file ({detail})"
    return "truncated", f"{path}: the DICOM header could not be parsed ({detail}); file cut short?"

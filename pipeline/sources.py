"""Where a MIMIC-CXR copy keeps what offclip reads: images, reports, metadata CSVs.

Real users hold MIMIC-CXR in several forms, and most never have exactly one of them:

- the **DICOM release** (``files/pXX/pSUBJECT/sSTUDY/<dicom_id>.dcm``, ``cxr-record-list.csv.gz``,
  ``cxr-study-list.csv.gz``, reports as ``files/pXX/pSUBJECT/sSTUDY.txt`` or in an archive);
- **MIMIC-CXR-JPG** (``files/…/<dicom_id>.jpg`` and ``mimic-cxr-2.0.0-{metadata,split,chexpert,
  negbio}.csv.gz``; no reports: they come from the DICOM release's ``mimic-cxr-reports.zip``);
- the JPG release's CSVs downloaded beside a DICOM release, kept in another directory.

:func:`resolve_source` looks at what is there (and at ``--reports`` / ``--metadata``) and
returns a :class:`Source`: the image kind, the metadata files to use, and a report store. Report
archives are read in place: a zip's member index is read once (its central directory) and each
worker reads its members directly; a ``.tar.gz`` cannot be read at random, so its reports are
read in one streaming pass during the scan. Nothing is extracted to disk.

A report is addressed by a *reference*, the ``report_path`` of a study: a path relative to the
source root (the classic tree), an absolute path (``--reports DIR``), or
``ARCHIVE!MEMBER`` for an archive. :func:`read_report` reads one in any worker process.
"""

from __future__ import annotations

import os
import re
import tarfile
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

METADATA_CSV = "mimic-cxr-2.0.0-metadata.csv"
SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
RECORD_LIST = "cxr-record-list.csv"
STUDY_LIST = "cxr-study-list.csv"
REPORT_ARCHIVES = ("mimic-cxr-reports.zip", "mimic-cxr-reports.tar.gz", "mimic-cxr-reports.tgz")
IMAGE_KINDS = {".dcm": "dicom", ".jpg": "jpg", ".jpeg": "jpg"}
ARCHIVE_SEP = "!"

#: a report's name inside an archive or tree: …/p<subject>/s<study>.txt
_REPORT_NAME = re.compile(r"(?:^|/)p(\d+)/s(\d+)\.txt$")


class SourceError(ValueError):
    """The source cannot be read as given; the message names the missing piece."""


def find_csv(dirs: list[Path], name: str) -> Path | None:
    """``name`` or ``name.gz`` in the first directory of ``dirs`` that has it."""
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


# ------------------------------------------------------------------------------------------------
# reports
# ------------------------------------------------------------------------------------------------
@dataclass
class ReportIndex:
    """Every report a store holds: study id → (subject id, reference); plus the report bytes
    themselves when the store can only be read in one pass (``.tar.gz``)."""

    kind: str  #: tree | zip | tgz
    location: str  #: the directory or archive, for messages
    refs: dict[int, tuple[int, str]] = field(default_factory=dict)
    data: dict[int, bytes] = field(default_factory=dict)
    #: study id → what changes when the report does, known without reading it: size and
    #: modification time in a tree, CRC-32 and size from a zip's central directory (a tar's
    #: reports are read anyway: their CRC-32)
    stamps: dict[int, str] = field(default_factory=dict)


def _report_key(name: str) -> tuple[int, int] | None:
    m = _REPORT_NAME.search(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _folder_ok(subject_id: int, folders: tuple[str, ...] | None) -> bool:
    return folders is None or f"p{str(subject_id)[:2]}" in folders


def index_reports(location: Path, root: Path, folders: tuple[str, ...] | None = None) -> ReportIndex:
    """The reports under ``location``: a directory holding ``files/pXX/…/sSTUDY.txt`` (or the
    ``pXX`` folders themselves), a ``.zip`` or a ``.tar.gz``. Only the given folders are kept."""
    location = Path(location)
    if location.is_dir():
        return _index_tree(location, root, folders)
    name = location.name.lower()
    if name.endswith(".zip"):
        return _index_zip(location, folders)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return _index_tar(location, folders)
    if not location.exists():
        raise SourceError(f"--reports {location}: no such file or directory")
    raise SourceError(f"--reports {location}: expected a directory, a .zip or a .tar.gz of MIMIC-CXR reports")


def _index_tree(base: Path, root: Path, folders: tuple[str, ...] | None) -> ReportIndex:
    files = base / "files" if (base / "files").is_dir() else base
    same_root = files.resolve() == (Path(root) / "files").resolve()
    index = ReportIndex("tree", str(base))
    try:
        folder_dirs = sorted(os.scandir(files), key=lambda e: e.name)
    except FileNotFoundError:
        return index
    for folder in folder_dirs:
        if not (folder.is_dir() and re.fullmatch(r"p\d\d", folder.name)):
            continue
        if folders is not None and folder.name not in folders:
            continue
        for subject in os.scandir(folder.path):
            if not (subject.name.startswith("p") and subject.is_dir()):
                continue
            for entry in os.scandir(subject.path):
                if entry.name.endswith(".txt") and entry.name.startswith("s") and entry.is_file():
                    key = _report_key(f"{subject.name}/{entry.name}")
                    if key is None:
                        continue
                    rel = f"files/{folder.name}/{subject.name}/{entry.name}"
                    index.refs[key[1]] = (key[0], rel if same_root else str(Path(files, folder.name, subject.name,
                                                                                      entry.name).resolve()))
                    st = entry.stat()
                    index.stamps[key[1]] = f"{st.st_size}:{st.st_mtime_ns}"
    return index


def _index_zip(path: Path, folders: tuple[str, ...] | None) -> ReportIndex:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as exc:
        raise SourceError(f"--reports {path}: not a readable zip archive ({exc})") from exc
    index = ReportIndex("zip", str(path))
    prefix = f"{Path(path).resolve()}{ARCHIVE_SEP}"
    for info in infos:
        key = _report_key(info.filename)
        if key and _folder_ok(key[0], folders):
            index.refs[key[1]] = (key[0], prefix + info.filename)
            index.stamps[key[1]] = f"crc{info.CRC:08x}:{info.file_size}"
    return index


def _index_tar(path: Path, folders: tuple[str, ...] | None) -> ReportIndex:
    index = ReportIndex("tgz", str(path))
    prefix = f"{Path(path).resolve()}{ARCHIVE_SEP}"
    try:
        with tarfile.open(path, mode="r:*") as tf:
            for member in tf:  # one streaming pass: a .tar.gz has no random access
                key = _report_key(member.name) if member.isfile() else None
                if key and _folder_ok(key[0], folders):
                    index.refs[key[1]] = (key[0], prefix + member.name)
                    data = index.data[key[1]] = tf.extractfile(member).read()
                    index.stamps[key[1]] = f"crc{zlib.crc32(data):08x}:{len(data)}"
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SourceError(f"--reports {path}: not a readable tar archive ({exc})") from exc
    return index


_ZIPS: dict[str, zipfile.ZipFile] = {}
_ZIPS_LOCK = threading.Lock()


def read_report(root: Path, ref: str) -> bytes:
    """The bytes of the report ``ref`` names (see the module doc); raises OSError/KeyError."""
    archive, sep, member = ref.partition(ARCHIVE_SEP)
    if not sep:
        return (Path(root) / ref).read_bytes()  # relative to the root, or absolute
    if archive.lower().endswith(".zip"):
        with _ZIPS_LOCK:  # one open archive per process (its central directory read once)
            zf = _ZIPS.get(archive)
            if zf is None:
                zf = _ZIPS[archive] = zipfile.ZipFile(archive)
        return zf.read(member)  # ZipFile reads are safe across threads
    raise OSError(f"{archive}: a tar archive is read during the scan, not per report")


# ------------------------------------------------------------------------------------------------
# the source as a whole
# ------------------------------------------------------------------------------------------------
@dataclass
class Source:
    root: Path
    image_kind: str  #: dicom | jpg
    image_ext: str  #: .dcm | .jpg
    metadata: Path | None  #: mimic-cxr-2.0.0-metadata.csv[.gz]
    split: Path | None
    record_list: Path | None  #: cxr-record-list.csv[.gz] (the DICOM release)
    reports: Path  #: a directory or an archive
    metadata_dirs: list[Path] = field(default_factory=list)  #: where the label CSVs are looked for too

    def describe(self) -> str:
        parts = [f"{self.image_kind} images under {self.root}/files",
                 f"reports: {self.reports}",
                 f"metadata: {self.metadata or self.record_list or 'none (headers / tree)'}"]
        return "; ".join(parts)


def detect_image_kind(root: Path) -> str | None:
    """dicom or jpg, from the first image file under ``root/files`` (None when there is none)."""
    files = Path(root) / "files"
    stack = [files]
    while stack:  # depth-first, stops at the first image: a handful of listings on a full tree
        try:
            entries = sorted(os.scandir(stack.pop()), key=lambda e: e.name, reverse=True)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            ext = os.path.splitext(entry.name)[1].lower()
            if ext in IMAGE_KINDS and entry.is_file():
                return IMAGE_KINDS[ext]
        stack.extend(e.path for e in entries if e.is_dir())
    return None


def resolve_source(root: Path, reports: Path | None = None, metadata: Path | None = None,
                   image_kind: str | None = None) -> Source:
    """What ``root`` holds and where its reports and metadata are; clear errors for what is
    missing. ``metadata``: a directory with the JPG release's CSVs (searched before the root)."""
    root = Path(root)
    if not (root / "files").is_dir():
        raise FileNotFoundError(f"{root} has no files/ directory: not a MIMIC-CXR layout (DICOM or JPG release)")
    if reports is not None and not Path(reports).exists():
        raise SourceError(f"--reports {reports}: no such file or directory")
    if metadata is not None and not Path(metadata).is_dir():
        raise SourceError(f"--metadata {metadata}: not a directory (give the folder holding "
                          f"{METADATA_CSV}.gz and its sibling CSVs)")
    dirs = ([Path(metadata)] if metadata is not None else []) + [root]
    kind = image_kind or detect_image_kind(root)
    meta = find_csv(dirs, METADATA_CSV)
    records = find_csv(dirs, RECORD_LIST)
    if kind is None:  # no image file yet: the metadata's own kind cannot be told; assume DICOM
        kind = "dicom"
    if reports is None:
        archive = next((root / n for n in REPORT_ARCHIVES if (root / n).is_file()), None)
        if archive is not None:
            reports = archive
        elif kind == "jpg" and not _has_tree_reports(root):
            raise SourceError(
                f"{root} is a MIMIC-CXR-JPG root, which has no reports: pass --reports with the "
                f"DICOM release's mimic-cxr-reports.zip (or its .tar.gz, or an extracted files/ tree)")
        else:
            reports = root
    if kind == "jpg" and meta is None:
        raise SourceError(
            f"{root} holds JPG images but no {METADATA_CSV}(.gz) was found in "
            f"{', '.join(str(d) for d in dirs)}: a JPG has no header to tell its view; pass --metadata DIR")
    return Source(root=root, image_kind=kind, image_ext=".dcm" if kind == "dicom" else ".jpg",
                  metadata=meta, split=find_csv(dirs, SPLIT_CSV), record_list=records,
                  reports=Path(reports), metadata_dirs=dirs)


def _has_tree_reports(root: Path, subjects: int = 20) -> bool:
    """Whether the tree holds ``sSTUDY.txt`` files (checked on the first few subject folders)."""
    seen = 0
    for folder in sorted(p for p in (Path(root) / "files").iterdir() if p.is_dir()):
        for subject in sorted(p for p in folder.iterdir() if p.is_dir()):
            if any(f.suffix == ".txt" for f in subject.iterdir()):
                return True
            seen += 1
            if seen >= subjects:
                return False
    return False

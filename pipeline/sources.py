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

Walking a tree (:class:`TreeWalk`) never raises on what is in it: a directory symlink is followed
only to a directory outside the tree that no other link of the walk reached (``files/p10 ->
/bigdisk/p10`` works; a link back into the tree, to a folder holding it, or around a loop is
skipped and named), and a folder that cannot be listed is recorded for a ``read_error`` reject.
A report larger than :func:`max_report_bytes` (``OFFCLIP_MAX_REPORT_BYTES``, default 1,000,000
bytes) is never read whole: its size is known from the tree's ``stat``, the zip's directory or
the tar member's header.

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

#: reports larger than this (bytes) are ``report_too_large`` rejects, never read whole. Real
#: MIMIC-CXR reports are a few KB; the sentence splitter (spaCy) takes at most 1,000,000
#: characters at once. Set with the environment variable OFFCLIP_MAX_REPORT_BYTES.
MAX_REPORT_BYTES = 1_000_000
MAX_REPORT_BYTES_ENV = "OFFCLIP_MAX_REPORT_BYTES"


def max_report_bytes() -> int:
    """The report size limit: ``OFFCLIP_MAX_REPORT_BYTES`` when set, else ``MAX_REPORT_BYTES``."""
    value = os.environ.get(MAX_REPORT_BYTES_ENV, "").strip()
    if not value:
        return MAX_REPORT_BYTES
    try:
        limit = int(value)
    except ValueError:
        raise ValueError(f"{MAX_REPORT_BYTES_ENV}={value!r}: not a whole number of bytes") from None
    if limit <= 0:
        raise ValueError(f"{MAX_REPORT_BYTES_ENV}={value!r}: must be positive")
    return limit


class ReportTooLarge(OSError):
    """A report over :func:`max_report_bytes`; the message names it and its size."""

    def __init__(self, where: str, size: int, limit: int) -> None:
        super().__init__(
            f"{where} is {size:,} bytes, over the {limit:,}-byte limit for a report ({MAX_REPORT_BYTES_ENV})"
        )
        self.where, self.size, self.limit = where, size, limit


class SourceError(ValueError):
    """The source cannot be read as given; the message names the missing piece."""


class TreeWalk:
    """What walking a MIMIC tree (``files/pXX/pSUBJECT/sSTUDY``) met: the directory symlinks it
    did not follow and the folders it could not list. One per scan, shared by its walks.

    Symlinks (``is_dir`` below): a plain directory is walked (no ``stat``: the entry's type comes
    with the listing). A directory symlink is followed only when its target is a directory
    outside every tree walked (the image tree, a separate report tree), is not inside nor the
    same as the target of another link this pass followed (a pass: one walk, in name order;
    see :meth:`new_pass`), and does not hold a tree: so a tree whose folders are links to other
    disks (``files/p10 -> /bigdisk/p10``) is read, while a link back into the tree (``files/0loop
    -> .``, ``…/p10668241/loop -> ..``: a loop, or the same folder a second time), a second link
    to the same place and a broken link are skipped, each named in :attr:`skipped` (unless a later
    pass, with another folder filter, followed it). A loop never raises.
    """

    def __init__(self, *trees: str | os.PathLike) -> None:
        self.trees: list[str] = []
        self.targets: list[str] = []  #: real paths of the outside directories this pass followed
        self.decided: dict[str, bool] = {}  #: link path -> followed (each link decided once a pass)
        self.skipped: dict[str, str] = {}  #: link path -> "-> target (why)"
        self.unreadable: dict[str, str] = {}  #: folder path -> the error listing it
        for tree in trees:
            self.add_tree(tree)

    def new_pass(self) -> TreeWalk:
        """Start a walk: which outside folders it followed is its own (the links met and the
        folders not listed are kept across passes)."""
        self.targets, self.decided = [], {}
        return self

    def add_tree(self, tree: str | os.PathLike) -> None:
        real = os.path.realpath(tree)
        if real not in self.trees:
            self.trees.append(real)

    def scandir(self, path: str | os.PathLike[str]) -> list[os.DirEntry[str]]:
        """The entries of ``path``; none when it is absent; none, and recorded in
        :attr:`unreadable`, when it cannot be listed (permissions, an I/O error)."""
        try:
            with os.scandir(path) as it:
                return list(it)
        except (FileNotFoundError, NotADirectoryError):
            return []
        except OSError as exc:
            self.unreadable[os.fspath(path)] = f"{type(exc).__name__}: {exc.strerror or exc}"
            return []

    def is_dir(self, entry: os.DirEntry) -> bool:
        """Whether to walk into ``entry`` (see the class doc)."""
        if not entry.is_symlink():
            return entry.is_dir(follow_symlinks=False)
        path = entry.path
        followed = self.decided.get(path)
        if followed is None:
            followed = self.decided[path] = self._follow(path)
        return followed

    def _follow(self, path: str) -> bool:
        real = os.path.realpath(path)
        try:
            shown = os.readlink(path)
        except OSError:
            shown = real

        def within(base: str) -> bool:
            return real == base or real.startswith(base.rstrip(os.sep) + os.sep)

        def skip(why: str) -> bool:
            self.skipped[path] = f"-> {shown} ({why})"
            return False

        if not os.path.isdir(real):
            return (
                skip("not a directory: a broken link or a loop of links") if not os.path.exists(real) else False
            )  # a link to a file: not a folder of the tree
        here = os.path.realpath(os.path.dirname(path))
        if real == here or here.startswith(real.rstrip(os.sep) + os.sep):
            return skip("a loop: it leads back to a folder above it")
        if any(within(tree) for tree in self.trees):
            return skip("back into the tree: the folder is walked by its own path")
        if any(tree.startswith(real.rstrip(os.sep) + os.sep) for tree in self.trees):
            return skip("a folder holding the tree")
        if any(within(target) for target in self.targets):
            return skip("already walked through another link")
        self.targets.append(real)
        self.skipped.pop(path, None)  # an earlier pass (another folder filter) skipped it
        return True

    def messages(self) -> list[str]:
        return [f"{path} {why}" for path, why in sorted(self.skipped.items())]


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
    #: study id -> the report's size in bytes, known without reading it (a tree's ``stat``, a
    #: zip's directory, a tar member's header): a report over the limit is never read
    sizes: dict[int, int] = field(default_factory=dict)


def _report_key(name: str) -> tuple[int, int] | None:
    m = _REPORT_NAME.search(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def _folder_ok(subject_id: int, folders: tuple[str, ...] | None) -> bool:
    return folders is None or f"p{str(subject_id)[:2]}" in folders


def index_reports(
    location: Path, root: Path, folders: tuple[str, ...] | None = None, walk: TreeWalk | None = None
) -> ReportIndex:
    """The reports under ``location``: a directory holding ``files/pXX/…/sSTUDY.txt`` (or the
    ``pXX`` folders themselves), a ``.zip`` or a ``.tar.gz``. Only the given folders are kept.
    ``walk`` collects the symlinks skipped and the folders that could not be listed."""
    location = Path(location)
    if location.is_dir():
        return _index_tree(location, root, folders, walk if walk is not None else TreeWalk())
    name = location.name.lower()
    if name.endswith(".zip"):
        return _index_zip(location, folders)
    if name.endswith((".tar.gz", ".tgz", ".tar")):
        return _index_tar(location, folders)
    if not location.exists():
        raise SourceError(f"--reports {location}: no such file or directory")
    raise SourceError(f"--reports {location}: expected a directory, a .zip or a .tar.gz of MIMIC-CXR reports")


def _index_tree(base: Path, root: Path, folders: tuple[str, ...] | None, walk: TreeWalk) -> ReportIndex:
    files = base / "files" if (base / "files").is_dir() else base
    same_root = files.resolve() == (Path(root) / "files").resolve()
    walk.add_tree(files)
    walk.new_pass()
    index = ReportIndex("tree", str(base))
    for folder in sorted(walk.scandir(files), key=lambda e: e.name):
        if not re.fullmatch(r"p\d\d", folder.name) or (folders is not None and folder.name not in folders):
            continue
        if not walk.is_dir(folder):
            continue
        for subject in walk.scandir(folder.path):
            if not (subject.name.startswith("p") and walk.is_dir(subject)):
                continue
            for entry in walk.scandir(subject.path):
                if entry.name.endswith(".txt") and entry.name.startswith("s") and entry.is_file():
                    key = _report_key(f"{subject.name}/{entry.name}")
                    if key is None:
                        continue
                    rel = f"files/{folder.name}/{subject.name}/{entry.name}"
                    index.refs[key[1]] = (
                        key[0],
                        rel if same_root else str(Path(files, folder.name, subject.name, entry.name).resolve()),
                    )
                    try:
                        st = entry.stat()
                    except OSError:  # gone since the listing: read_error when it is read
                        continue
                    index.stamps[key[1]] = f"{st.st_size}:{st.st_mtime_ns}"
                    index.sizes[key[1]] = st.st_size
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
            index.sizes[key[1]] = info.file_size
    return index


def _index_tar(path: Path, folders: tuple[str, ...] | None) -> ReportIndex:
    index = ReportIndex("tgz", str(path))
    prefix = f"{Path(path).resolve()}{ARCHIVE_SEP}"
    limit = max_report_bytes()
    try:
        with tarfile.open(path, mode="r:*") as tf:
            for member in tf:  # one streaming pass: a .tar.gz has no random access
                key = _report_key(member.name) if member.isfile() else None
                if key and _folder_ok(key[0], folders):
                    index.refs[key[1]] = (key[0], prefix + member.name)
                    index.sizes[key[1]] = member.size
                    if member.size > limit:  # never read: a report_too_large reject of ingest
                        index.stamps[key[1]] = f"size{member.size}:{member.mtime}:{member.chksum}"
                        continue
                    fh = tf.extractfile(member)
                    assert fh is not None  # a regular file (member.isfile()) always has its data
                    data = index.data[key[1]] = fh.read()
                    index.stamps[key[1]] = f"crc{zlib.crc32(data):08x}:{len(data)}"
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise SourceError(f"--reports {path}: not a readable tar archive ({exc})") from exc
    return index


_ZIPS: dict[str, zipfile.ZipFile] = {}
_ZIPS_LOCK = threading.Lock()


def read_report(root: Path, ref: str, limit: int | None = None) -> bytes:
    """The bytes of the report ``ref`` names (see the module doc); raises OSError/KeyError, and
    :class:`ReportTooLarge` for a report over ``limit`` (default :func:`max_report_bytes`),
    before reading more than the limit of it."""
    limit = max_report_bytes() if limit is None else limit
    archive, sep, member = ref.partition(ARCHIVE_SEP)
    if not sep:
        with open(Path(root) / ref, "rb") as fh:  # relative to the root, or absolute
            data = fh.read(limit + 1)
            if len(data) > limit:
                raise ReportTooLarge(ref, os.fstat(fh.fileno()).st_size, limit)
            return data
    if archive.lower().endswith(".zip"):
        with _ZIPS_LOCK:  # one open archive per process (its central directory read once)
            zf = _ZIPS.get(archive)
            if zf is None:
                zf = _ZIPS[archive] = zipfile.ZipFile(archive)
        size = zf.getinfo(member).file_size  # from the central directory: nothing read yet
        if size > limit:
            raise ReportTooLarge(ref, size, limit)
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

    def describe(self) -> str:
        parts = [
            f"{self.image_kind} images under {self.root}/files",
            f"reports: {self.reports}",
            f"metadata: {self.metadata or self.record_list or 'none (headers / tree)'}",
        ]
        return "; ".join(parts)


def detect_image_kind(root: Path, walk: TreeWalk | None = None) -> str | None:
    """dicom or jpg, from the first image file under ``root/files`` (None when there is none).
    Symlinks are followed as :class:`TreeWalk` allows (never around a loop)."""
    files = Path(root) / "files"
    walk = (walk if walk is not None else TreeWalk(files)).new_pass()
    stack: list[str | Path] = [files]  # the root, then entries' paths
    while stack:  # depth-first, stops at the first image: a handful of listings on a full tree
        entries = sorted(walk.scandir(stack.pop()), key=lambda e: e.name)
        for entry in entries:
            ext = os.path.splitext(entry.name)[1].lower()
            if ext in IMAGE_KINDS and entry.is_file():
                return IMAGE_KINDS[ext]
        stack.extend(reversed([e.path for e in entries if walk.is_dir(e)]))  # links decided in name order
    return None


def resolve_source(
    root: Path,
    reports: Path | None = None,
    metadata: Path | None = None,
    image_kind: str | None = None,
    walk: TreeWalk | None = None,
) -> Source:
    """What ``root`` holds and where its reports and metadata are; clear errors for what is
    missing. ``metadata``: a directory with the JPG release's CSVs (searched before the root).
    ``walk`` collects the symlinks skipped and the folders that could not be listed."""
    root = Path(root)
    walk = walk if walk is not None else TreeWalk(root / "files")
    if not (root / "files").is_dir():
        raise FileNotFoundError(f"{root} has no files/ directory: not a MIMIC-CXR layout (DICOM or JPG release)")
    if reports is not None and not Path(reports).exists():
        raise SourceError(f"--reports {reports}: no such file or directory")
    if metadata is not None and not Path(metadata).is_dir():
        raise SourceError(
            f"--metadata {metadata}: not a directory (give the folder holding {METADATA_CSV}.gz and its sibling CSVs)"
        )
    dirs = ([Path(metadata)] if metadata is not None else []) + [root]
    kind = image_kind or detect_image_kind(root, walk)
    meta = find_csv(dirs, METADATA_CSV)
    records = find_csv(dirs, RECORD_LIST)
    if kind is None:  # no image file yet: the metadata's own kind cannot be told; assume DICOM
        kind = "dicom"
    if reports is None:
        archive = next((root / n for n in REPORT_ARCHIVES if (root / n).is_file()), None)
        if archive is not None:
            reports = archive
        elif kind == "jpg" and not _has_tree_reports(root, walk):
            raise SourceError(
                f"{root} is a MIMIC-CXR-JPG root, which has no reports: pass --reports with the "
                f"DICOM release's mimic-cxr-reports.zip (or its .tar.gz, or an extracted files/ tree)"
            )
        else:
            reports = root
    if kind == "jpg" and meta is None:
        raise SourceError(
            f"{root} holds JPG images but no {METADATA_CSV}(.gz) was found in "
            f"{', '.join(str(d) for d in dirs)}: a JPG has no header to tell its view; pass --metadata DIR"
        )
    return Source(
        root=root,
        image_kind=kind,
        image_ext=".dcm" if kind == "dicom" else ".jpg",
        metadata=meta,
        split=find_csv(dirs, SPLIT_CSV),
        record_list=records,
        reports=Path(reports),
    )


def _has_tree_reports(root: Path, walk: TreeWalk, subjects: int = 20) -> bool:
    """Whether the tree holds ``sSTUDY.txt`` files (checked on the first few subject folders)."""
    seen = 0
    walk.new_pass()
    by_name = lambda e: e.name  # noqa: E731
    for folder in sorted((e for e in walk.scandir(Path(root) / "files") if walk.is_dir(e)), key=by_name):
        for subject in sorted((e for e in walk.scandir(folder.path) if walk.is_dir(e)), key=by_name):
            if any(e.name.endswith(".txt") for e in walk.scandir(subject.path)):
                return True
            seen += 1
            if seen >= subjects:
                return False
    return False

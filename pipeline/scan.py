"""Discover MIMIC-CXR studies, classify views and pick one frontal image per study.

Works on a real MIMIC-CXR v2.0.0 copy and on the demo world alike: studies come from
``mimic-cxr-2.0.0-metadata.csv[.gz]`` (and ``-split.csv[.gz]``) when present, from the
``files/pXX/pSUBJECT/sSTUDY/*.dcm`` tree (and DICOM headers) when not. Nothing here decodes
pixels; a scan of the full MIMIC tree is directory listings plus, for images whose view the
metadata does not tell, one header read each.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

FRONTAL = ("PA", "AP")
LATERAL = ("LL", "RL", "LATERAL", "LAT", "LARGE LATERAL", "XTABLE LATERAL")
DEFAULT_FOLDERS = tuple(f"p{i}" for i in range(10, 17))  #: the paper trains on p10–p16
ALL_FOLDERS = tuple(f"p{i}" for i in range(10, 20))

_CODE_MEANINGS = {
    "postero-anterior": "PA", "posteroanterior": "PA", "antero-posterior": "AP", "anteroposterior": "AP",
    "lateral": "LATERAL", "left lateral": "LL", "right lateral": "RL",
}
_STUDY_DIR = re.compile(r"s(\d+)")
_SUBJECT_DIR = re.compile(r"p(\d+)")


def _find(root: Path, name: str) -> Path | None:
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


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


def classify_view(view_position=None, view_code_meaning=None, device_description=None,
                  procedure=None) -> tuple[str, str | None, str]:
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
            if value in FRONTAL:
                return "frontal", value, source
            if value in LATERAL:
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
    read_headers: bool = True  #: read DICOM headers of images whose view the metadata lacks


@dataclass
class ImageEntry:
    dicom_id: str
    path: str  #: relative to the root
    exists: bool
    view: str = "unknown"
    view_position: str | None = None
    view_source: str = "none"
    procedure: str | None = None  #: PerformedProcedureStepDescription from the metadata (weakest evidence)


@dataclass
class StudyEntry:
    subject_id: int
    study_id: int
    folder: str
    split: str
    report_path: str | None  #: relative; None when the file does not exist
    images: list[ImageEntry] = field(default_factory=list)
    #: frontal candidates in the order they should be tried (first = the chosen one)
    frontal_order: list[str] = field(default_factory=list)


def scan(config: ScanConfig) -> list[StudyEntry]:
    """All studies under ``config.root`` that pass the folder and split filters, sorted by id."""
    root = Path(config.root)
    if not (root / "files").is_dir():
        raise FileNotFoundError(f"{root} has no files/ directory: not a MIMIC-CXR layout")
    splits = _read_splits(root)
    metadata = _find(root, "mimic-cxr-2.0.0-metadata.csv")
    studies = _from_metadata(root, metadata, config) if metadata else _from_tree(root, config)
    for study in studies.values():
        study.split = splits.get(study.study_id, "unknown")
    selected = [s for s in studies.values() if config.splits is None or s.split in config.splits]
    for study in selected:
        _fill_views(root, study, config.read_headers)
        study.frontal_order = frontal_order(study, config.seed, config.prefer_pa)
    return sorted(selected, key=lambda s: (s.subject_id, s.study_id))


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


def _read_splits(root: Path) -> dict[int, str]:
    path = _find(root, "mimic-cxr-2.0.0-split.csv")
    if path is None:
        return {}
    df = pd.read_csv(path, usecols=["study_id", "split"], dtype={"study_id": "int64", "split": "string"})
    return dict(zip(df["study_id"].tolist(), df["split"].tolist()))


def _report_path(root: Path, folder: str, subject_id: int, study_id: int) -> str | None:
    rel = f"files/{folder}/p{subject_id}/s{study_id}.txt"
    return rel if (root / rel).is_file() else None


def _from_metadata(root: Path, path: Path, config: ScanConfig) -> dict[int, StudyEntry]:
    df = pd.read_csv(path, dtype={"dicom_id": "string", "subject_id": "int64", "study_id": "int64"},
                     keep_default_na=True)
    studies: dict[int, StudyEntry] = {}
    listing: dict[str, set[str]] = {}
    for row in df.itertuples(index=False):
        folder = f"p{str(row.subject_id)[:2]}"
        if not _folder_ok(folder, config):
            continue
        study = studies.get(row.study_id)
        if study is None:
            study = studies[row.study_id] = StudyEntry(
                row.subject_id, row.study_id, folder, "unknown",
                _report_path(root, folder, row.subject_id, row.study_id))
        study_dir = f"files/{folder}/p{row.subject_id}/s{row.study_id}"
        if study_dir not in listing:
            try:
                listing[study_dir] = set(os.listdir(root / study_dir))
            except FileNotFoundError:
                listing[study_dir] = set()
        name = f"{row.dicom_id}.dcm"
        # the study-level procedure is weaker evidence than the image's own header: it is used
        # only when the header does not tell (see _fill_views)
        view, position, source = classify_view(getattr(row, "ViewPosition", None),
                                               getattr(row, "ViewCodeSequence_CodeMeaning", None))
        procedure = getattr(row, "PerformedProcedureStepDescription", None)
        study.images.append(ImageEntry(str(row.dicom_id), f"{study_dir}/{name}", name in listing[study_dir],
                                       view, position, source, procedure if isinstance(procedure, str) else None))
    return studies


def _from_tree(root: Path, config: ScanConfig) -> dict[int, StudyEntry]:
    studies: dict[int, StudyEntry] = {}
    for folder_dir in sorted((root / "files").iterdir()):
        if not folder_dir.is_dir() or not _folder_ok(folder_dir.name, config):
            continue
        for subject_dir in sorted(folder_dir.iterdir()):
            m = _SUBJECT_DIR.fullmatch(subject_dir.name)
            if not (m and subject_dir.is_dir()):
                continue
            subject_id = int(m.group(1))
            by_study: dict[int, list[str]] = defaultdict(list)
            for entry in os.scandir(subject_dir):
                sm = _STUDY_DIR.fullmatch(entry.name.removesuffix(".txt"))
                if sm and entry.is_dir():
                    by_study[int(sm.group(1))] += sorted(f for f in os.listdir(entry.path) if f.endswith(".dcm"))
                elif sm:
                    by_study.setdefault(int(sm.group(1)), [])
            for study_id, files in by_study.items():
                rel = f"files/{folder_dir.name}/{subject_dir.name}"
                study = StudyEntry(subject_id, study_id, folder_dir.name, "unknown",
                                   _report_path(root, folder_dir.name, subject_id, study_id))
                study.images = [ImageEntry(f[:-4], f"{rel}/s{study_id}/{f}", True) for f in files]
                studies[study_id] = study
    return studies


def _fill_views(root: Path, study: StudyEntry, read_headers: bool) -> None:
    """Images whose view the metadata did not tell: read their DICOM header (ViewPosition,
    ViewCodeSequence, AcquisitionDeviceProcessingDescription, then the procedure), or fall back
    to the metadata's procedure description."""
    import pydicom

    for image in study.images:
        if image.view != "unknown" or not image.exists:
            continue
        if read_headers:
            try:
                ds = pydicom.dcmread(root / image.path, stop_before_pixels=True,
                                     specific_tags=["ViewPosition", "ViewCodeSequence",
                                                    "PerformedProcedureStepDescription",
                                                    "AcquisitionDeviceProcessingDescription"])
                code = ds.ViewCodeSequence[0].get("CodeMeaning") if ds.get("ViewCodeSequence") else None
                image.view, image.view_position, image.view_source = classify_view(
                    ds.get("ViewPosition"), code, ds.get("AcquisitionDeviceProcessingDescription"),
                    ds.get("PerformedProcedureStepDescription") or image.procedure)
                continue
            except Exception:  # an unreadable file is rejected, with its reason, when decoded
                pass
        image.view, image.view_position, image.view_source = classify_view(procedure=image.procedure)

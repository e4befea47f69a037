"""MIMIC-CXR's own report labels (CheXpert and NegBio) as study-level normal/abnormal labels.

MIMIC-CXR-JPG ships two label files, ``mimic-cxr-2.0.0-chexpert.csv[.gz]`` and
``mimic-cxr-2.0.0-negbio.csv[.gz]``, with the same columns: ``subject_id``, ``study_id`` and
the 14 CheXpert observations (:data:`LABEL_COLUMNS`), each 1.0 (positive), 0.0 (negative), -1.0
(uncertain) or blank (not mentioned). They sit in the MIMIC-CXR-JPG root or in a separate
metadata directory: :func:`find_label_file` searches a list of directories.

**The rule** (:func:`labeler_labels`), per study:

1. ``No Finding`` == 1.0 → **normal**. (The labelers set it only when no pathology is positive
   or uncertain; ``Support Devices`` may still be 1.0 beside it, and the study stays normal, as
   in CheXpert's own definition.)
2. else any other column (the 12 pathologies or ``Support Devices``) == 1.0 **or -1.0** →
   **abnormal**. Uncertain counts as abnormal ("U-Ones"): OFF-CLIP's sentence labels call a
   hedged finding ("possible pneumonia") abnormal too, so the two sources answer the same question.
3. else (only 0.0 and blanks, ``No Finding`` blank; or the study is not in the file) → **None**:
   unknown. Unknown studies are counted, never guessed here; the caller decides (curation falls
   back to the classifier's label for them: :mod:`offclip.pipeline.curate`).

No Prefect here: the curate step and the tests call these functions directly.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from ..data_contracts.enums import (  # noqa: F401  (CLASSIFIER, LABELERS, LABEL_SOURCES: imported from here too)
    ABNORMAL,
    CHEXPERT_LABEL_COLUMNS,
    CLASSIFIER,
    LABEL_SOURCES,
    LABELERS,
    NO_FINDING,
    NO_FINDING_VALUES,
    NORMAL,
)
from .sources import find_csv

LABEL_FILES = {"chexpert": "mimic-cxr-2.0.0-chexpert.csv", "negbio": "mimic-cxr-2.0.0-negbio.csv"}
#: the 14 label columns, in the files' order
LABEL_COLUMNS = CHEXPERT_LABEL_COLUMNS
#: the columns whose 1.0 or -1.0 makes a study abnormal (all but No Finding)
FINDING_COLUMNS = tuple(c for c in LABEL_COLUMNS if c != NO_FINDING)
POSITIVE, NEGATIVE, UNCERTAIN = NO_FINDING_VALUES
#: the rule's choice for -1.0 (see the module docstring)
UNCERTAIN_IS_ABNORMAL = True


class LabelFileError(FileNotFoundError):
    """A label source was asked for and its file is in none of the searched directories."""


def find_label_file(labeler: str, dirs: Iterable[str | os.PathLike]) -> Path | None:
    """The first ``mimic-cxr-2.0.0-<labeler>.csv`` (or ``.csv.gz``) in ``dirs``, in order."""
    return find_csv([Path(d) for d in dirs], _file_name(labeler))


def require_label_file(labeler: str, dirs: Sequence[str | os.PathLike]) -> Path:
    """:func:`find_label_file`, or :class:`LabelFileError` naming the file and the directories."""
    path = find_label_file(labeler, dirs)
    if path is None:
        searched = ", ".join(str(d) for d in dirs) or "(no directory given)"
        raise LabelFileError(
            f"label source {labeler!r} needs {_file_name(labeler)} (or {_file_name(labeler)}.gz), "
            f"found in none of the directories searched: {searched} (it ships with "
            f"MIMIC-CXR-JPG: pass the directory that holds it)"
        )
    return path


def check_label_source(label_source: str, dirs: Sequence[str | os.PathLike]) -> Path | None:
    """Fail fast (before a long ingest): ValueError for an unknown source, :class:`LabelFileError`
    when a labeler's file is missing. Returns that file (None for the classifier)."""
    if label_source not in LABEL_SOURCES:
        raise ValueError(f"label source must be one of {list(LABEL_SOURCES)}, not {label_source!r}")
    return None if label_source == CLASSIFIER else require_label_file(label_source, dirs)


def read_label_file(path: str | os.PathLike) -> pd.DataFrame:
    """One MIMIC label file (plain or gzipped) as ``study_id``, ``subject_id`` and the 14 columns
    (float64: 1.0, 0.0, -1.0 or NaN for blank), one row per study."""
    path = Path(path)
    header = pd.read_csv(path, nrows=0).columns
    missing = [c for c in ("subject_id", "study_id") + LABEL_COLUMNS if c not in header]
    if missing:
        raise ValueError(f"{path} is not a MIMIC-CXR label file: columns {missing} missing")
    df = pd.read_csv(
        path,
        usecols=["subject_id", "study_id", *LABEL_COLUMNS],
        dtype={"subject_id": "int64", "study_id": "int64", **{c: "float64" for c in LABEL_COLUMNS}},
    )
    values = df[list(LABEL_COLUMNS)]
    bad = ~(values.isna() | values.isin([POSITIVE, NEGATIVE, UNCERTAIN]))
    if bad.to_numpy().any():
        column = bad.any()[lambda s: s].index[0]
        raise ValueError(
            f"{path}: column {column!r} holds {sorted(set(values.loc[bad[column], column]))}, "
            f"expected 1.0, 0.0, -1.0 or blank"
        )
    duplicated = df["study_id"].duplicated()
    if duplicated.any():
        raise ValueError(f"{path}: study_id {df.loc[duplicated, 'study_id'].iloc[0]} appears more than once")
    return df[["study_id", "subject_id", *LABEL_COLUMNS]].reset_index(drop=True)


def labeler_labels(df: pd.DataFrame) -> pd.Series:
    """The rule of the module docstring on a frame with the 14 columns: ``normal``,
    ``abnormal`` or None (unknown) per row (same index)."""
    finding_values = (POSITIVE, UNCERTAIN) if UNCERTAIN_IS_ABNORMAL else (POSITIVE,)
    normal = (df[NO_FINDING] == POSITIVE).to_numpy()
    finding = df[list(FINDING_COLUMNS)].isin(finding_values).any(axis=1).to_numpy()
    label = np.select([normal, finding], [NORMAL, ABNORMAL], default="")
    # numpy's stubs take no None for a value (an object scalar at runtime)
    return pd.Series(np.where(label == "", None, label), index=df.index, dtype=object)  # type: ignore[call-overload]


class StudyLabels(NamedTuple):
    frame: pd.DataFrame  #: the STUDY_LABELS columns, one row per study asked for
    files: dict[str, Path]  #: labeler → the file read (labelers whose file was found)
    absent: dict[str, int]  #: labeler → studies asked for that its file does not list

    def counts(self, labeler: str) -> dict[str, int]:
        """normal / abnormal / unknown studies for one labeler (unknown includes ``absent``)."""
        label = self.frame[f"{labeler}_label"]
        return {
            "normal": int((label == "normal").sum()),
            "abnormal": int((label == "abnormal").sum()),
            "unknown": int(label.isna().sum()),
            "absent": self.absent.get(labeler, 0),
        }


def study_labels(
    studies: pd.DataFrame,
    dirs: Sequence[str | os.PathLike],
    classifier_labels: pd.Series | None = None,
    required: Iterable[str] = (),
) -> StudyLabels:
    """Per study of ``studies`` (``study_id``, ``subject_id``): the classifier's label (from
    ``classifier_labels``, a Series by study_id; None when not given), and for each labeler its
    label by the rule and its raw ``No Finding`` value (None when its file is not found, when the
    study is missing from the file, or when the rule finds nothing). ``required`` labelers must
    have their file (:class:`LabelFileError` otherwise)."""
    for labeler in required:
        require_label_file(labeler, dirs)
    frame = studies[["study_id", "subject_id"]].sort_values("study_id", kind="stable").reset_index(drop=True)
    ids = frame["study_id"]
    frame["classifier_label"] = (
        ids.map(classifier_labels).astype(object)
        if classifier_labels is not None
        else pd.Series([None] * len(frame), dtype=object)
    )
    files, absent = {}, {}
    for labeler in LABELERS:
        label = pd.Series([None] * len(frame), dtype=object)
        no_finding = pd.Series(np.nan, index=frame.index, dtype="float32")
        path = find_label_file(labeler, dirs)
        if path is not None:
            df = read_label_file(path)
            listed = ids.isin(df["study_id"])
            files[labeler], absent[labeler] = path, int((~listed).sum())
            label = ids.map(labeler_labels(df).set_axis(df["study_id"])).astype(object)
            no_finding = ids.map(df.set_index("study_id")[NO_FINDING]).astype("float32")
        frame[f"{labeler}_label"] = label.where(label.notna(), None)
        frame[f"{labeler}_no_finding"] = no_finding
    return StudyLabels(frame, files, absent)


def _file_name(labeler: str) -> str:
    if labeler not in LABEL_FILES:
        raise ValueError(f"label source must be one of {list(LABEL_SOURCES)}, not {labeler!r}")
    return LABEL_FILES[labeler]

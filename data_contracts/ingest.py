"""Contracts of the ingest stage's records: studies, images, sentences, rejects."""

from __future__ import annotations

from typing import TypedDict

import pyarrow as pa

from .contract import Column, Contract
from .enums import (  # noqa: F401  (REJECT_REASONS, SPLITS, VIEWS: imported from here too)
    FRONTAL_VIEWS,
    IMAGE_STATUSES,
    REJECT_ENTITIES,
    REJECT_REASONS,
    REJECT_STAGES,
    SPLITS,
    STUDY_STATUSES,
    VIEW_SOURCES,
    VIEWS,
)


class _Bounds(TypedDict, total=False):
    """Keyword arguments of :class:`Column` shared by several columns."""

    min: float


_SUBJECT: _Bounds = {"min": 0}

STUDIES = Contract(
    "studies",
    (
        Column("subject_id", pa.int64(), **_SUBJECT),
        Column("study_id", pa.int64(), unique=True),
        Column("folder", pa.string(), pattern=r"p\d\d"),
        Column("split", pa.string(), isin=SPLITS),
        Column("report_path", pa.string(), nullable=True),
        Column("n_images", pa.int32(), min=0),
        Column("n_frontal", pa.int32(), min=0),
        Column("frontal_dicom_id", pa.string(), nullable=True),
        Column("frontal_view", pa.string(), nullable=True, isin=FRONTAL_VIEWS),
        Column("n_sentences", pa.int32(), min=0),
        Column("status", pa.string(), isin=STUDY_STATUSES),
        Column("reject_reason", pa.string(), nullable=True, isin=tuple(REJECT_REASONS)),
        Column("content_hash", pa.string(), nullable=True, doc="hash of the selected image and report bytes"),
    ),
    doc="One row per discovered study.",
)

IMAGES = Contract(
    "images",
    (
        Column("dicom_id", pa.string(), unique=True),
        Column("subject_id", pa.int64(), **_SUBJECT),
        Column("study_id", pa.int64()),
        Column("path", pa.string(), doc="relative to the source root"),
        Column("view", pa.string(), isin=VIEWS),
        Column("view_position", pa.string(), nullable=True),
        Column("view_source", pa.string(), isin=VIEW_SOURCES),
        Column("status", pa.string(), isin=IMAGE_STATUSES),
        Column("file_sha256", pa.string(), nullable=True),
        Column("transfer_syntax", pa.string(), nullable=True),
        Column("photometric", pa.string(), nullable=True),
        Column("bits_stored", pa.int16(), nullable=True),
        Column("rows", pa.int32(), nullable=True),
        Column("columns", pa.int32(), nullable=True),
        Column("out_path", pa.string(), nullable=True, doc="normalised image, relative to the output root"),
        Column("out_rows", pa.int32(), nullable=True),
        Column("out_columns", pa.int32(), nullable=True),
    ),
    doc="One row per DICOM image named by the metadata or found on disk.",
)

SENTENCES = Contract(
    "sentences",
    (
        Column("study_id", pa.int64()),
        Column("subject_id", pa.int64()),
        Column("index", pa.int32(), min=0),
        Column("section", pa.string()),
        Column("text", pa.string()),
        Column("key", pa.string(), doc="normalisation key: identical sentences share it"),
        Column("start", pa.int32(), min=0),
        Column("end", pa.int32(), min=0),
    ),
    keys=(("study_id", "index"),),
    doc="The report sentences of ingested studies, in report order.",
)

REJECTS = Contract(
    "rejects",
    (
        Column("stage", pa.string(), isin=REJECT_STAGES),
        Column("entity", pa.string(), isin=REJECT_ENTITIES),
        Column("subject_id", pa.int64(), nullable=True),
        Column("study_id", pa.int64(), nullable=True),
        Column("dicom_id", pa.string(), nullable=True),
        Column("path", pa.string(), nullable=True),
        Column("reason", pa.string(), isin=tuple(REJECT_REASONS)),
        Column("message", pa.string()),
    ),
    doc="Everything that could not be used, with its reason; nothing is dropped silently.",
)

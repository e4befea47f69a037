"""Contracts of the ingest stage's records: studies, images, sentences, rejects."""

from __future__ import annotations

import pyarrow as pa

from .contract import Column, Contract

#: Why a study, image or report could not be used. Every reject carries one of these codes.
REJECT_REASONS: dict[str, str] = {
    "missing_file": "a metadata or record-list row names an image file that does not exist",
    "report_without_study": "a report whose study has no image in the metadata, record list or tree",
    "not_dicom": "the file is not a DICOM Part 10 file",
    "not_jpeg": "the file is not a JPEG image",
    "truncated": "the DICOM file ends before its pixel data does",
    "no_pixel_data": "the DICOM file has no Pixel Data element",
    "unsupported_transfer_syntax": "no decoder for the file's transfer syntax is installed",
    "unsupported_pixels": "pixel layout offclip does not handle (colour, multi-frame, …)",
    "decode_error": "the pixel data could not be decoded",
    "read_error": "the file could not be read",
    "no_frontal": "the study has no usable frontal (PA/AP) image",
    "no_report": "the study has no report file",
    "empty_report": "the report file is empty",
    "report_not_utf8": "the report is not valid UTF-8",
    "report_no_text": "the report has no findings, impression or narrative text",
}
SPLITS = ("train", "validate", "test", "unknown")
VIEWS = ("frontal", "lateral", "other", "unknown")
_SUBJECT = dict(min=0)

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
        Column("frontal_view", pa.string(), nullable=True, isin=("PA", "AP")),
        Column("n_sentences", pa.int32(), min=0),
        Column("status", pa.string(), isin=("ingested", "rejected")),
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
        Column("view_source", pa.string(), isin=("ViewPosition", "ViewCodeSequence", "AcquisitionDeviceProcessingDescription",
                                                 "PerformedProcedureStepDescription", "none")),
        Column("status", pa.string(), isin=("selected", "not_selected", "rejected")),
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
        Column("stage", pa.string(), isin=("scan", "image", "report")),
        Column("entity", pa.string(), isin=("study", "image", "report")),
        Column("subject_id", pa.int64(), nullable=True),
        Column("study_id", pa.int64(), nullable=True),
        Column("dicom_id", pa.string(), nullable=True),
        Column("path", pa.string(), nullable=True),
        Column("reason", pa.string(), isin=tuple(REJECT_REASONS)),
        Column("message", pa.string()),
    ),
    doc="Everything that could not be used, with its reason; nothing is dropped silently.",
)

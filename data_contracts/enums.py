"""Every enumerated value offclip's tables and JSON records may hold, defined once.

The contracts (:mod:`.ingest`, :mod:`.curate`, :mod:`.manifest`, :mod:`.shards`) check their
columns against these; the pipeline, the models and the flows import them from here (a stage
that emits a value outside its enumeration fails the contract before anything is written; the
tests check that every value a stage can emit is here).
"""

from __future__ import annotations

# ------------------------------------------------------------------------------------- ingest

#: MIMIC-CXR's official splits; ``unknown``: a study missing from mimic-cxr-2.0.0-split.csv
SPLITS = ("train", "validate", "test", "unknown")
#: the splits shards are written for (``ShardConfig.splits``)
SHARD_SPLITS = ("train", "validate", "test")
#: the view positions that make an image frontal (the ones a pair's image may have)
FRONTAL_VIEWS = ("PA", "AP")
#: the view positions (ViewPosition, or read from a description) that make an image lateral
LATERAL_VIEWS = ("LL", "RL", "LATERAL", "LAT", "LARGE LATERAL", "XTABLE LATERAL")
#: an image's view class (``images.view``)
VIEWS = ("frontal", "lateral", "other", "unknown")
#: the DICOM field that told an image's view, in the order they are tried; ``none``: no field did
VIEW_SOURCES = (
    "ViewPosition",
    "ViewCodeSequence",
    "AcquisitionDeviceProcessingDescription",
    "PerformedProcedureStepDescription",
    "none",
)
STUDY_STATUSES = ("ingested", "rejected")
IMAGE_STATUSES = ("selected", "not_selected", "rejected")
#: the stage that rejected something, and what it rejected (``rejects.stage``, ``rejects.entity``)
REJECT_STAGES = ("scan", "image", "report")
REJECT_ENTITIES = ("study", "image", "report")

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
    "pixel_size_mismatch": "the pixel data's length, or the size its codestream declares, is not the header's "
    "Rows x Columns x samples x frames x bytes per sample",
    "metadata_mismatch": "the image's Rows/Columns disagree with the metadata CSV's Rows/Columns for it",
    "corrupt_data": "the compressed pixel data is malformed (a marker code inside entropy-coded data, "
    "lengths that do not add up)",
    "unknown_transfer_syntax": "no Transfer Syntax UID and the pixel data is encapsulated: its compression is not told",
    "read_error": "the file, or the folder holding it, could not be read (permissions, an I/O error)",
    "no_frontal": "the study has no usable frontal (PA/AP) image",
    "no_report": "the study has no report file",
    "empty_report": "the report file is empty",
    "report_not_utf8": "the report is not valid UTF-8",
    "report_too_large": "the report is larger than OFFCLIP_MAX_REPORT_BYTES (default 1,000,000 bytes); not read",
    "report_no_text": "the report has no findings, impression or narrative text",
    "report_not_text": "the report holds NUL or other control bytes: not plain text",
    "metadata_row_invalid": "a metadata, split or record-list CSV row that cannot be read: wrong number of fields, "
    "or an id that is not a number",
}
#: the reasons an image decoder can give (``offclip.pipeline.images.ImageReject``)
IMAGE_REJECT_REASONS = (
    "not_dicom",
    "truncated",
    "no_pixel_data",
    "unsupported_transfer_syntax",
    "unsupported_pixels",
    "decode_error",
    "not_jpeg",
    "pixel_size_mismatch",
    "metadata_mismatch",
    "corrupt_data",
    "unknown_transfer_syntax",
)

# ------------------------------------------------------------------------------------- curate

NORMAL, ABNORMAL = "normal", "abnormal"
#: sentence, report and pair labels; the order is the sentence classifier's class index
LABELS = (NORMAL, ABNORMAL)

#: why a curated sentence was kept or dropped (``sentences.reason``; offclip.pipeline.filtering)
KEEP_NORMAL_REPORT = "normal_report"  #: kept: the report is normal, all its sentences stay
KEEP_ABNORMAL = "abnormal_sentence"  #: kept: an abnormal sentence of an abnormal report
DROP_NORMAL_IN_ABNORMAL = "normal_sentence_in_abnormal_report"  #: dropped
#: kept: the pair label (from a labeler) is abnormal but the classifier found no abnormal sentence
KEEP_NO_ABNORMAL_SENTENCE = "abnormal_report_without_abnormal_sentence"
FILTER_REASONS = (KEEP_NORMAL_REPORT, KEEP_ABNORMAL, DROP_NORMAL_IN_ABNORMAL, KEEP_NO_ABNORMAL_SENTENCE)

#: sentence label policies (offclip.pipeline.filtering); curate's default is DEFAULT_LABEL_POLICY
LABEL_POLICIES = ("cascade", "union", "classifier", "rules")
DEFAULT_LABEL_POLICY = "cascade"

#: where a pair label may come from: the sentence classifier (the paper's, the default) or one
#: of MIMIC's labelers (offclip.pipeline.labels)
CLASSIFIER = "classifier"
LABELERS = ("chexpert", "negbio")
LABEL_SOURCES = (CLASSIFIER,) + LABELERS
#: the values of a labeler's ``No Finding`` column: positive, negative, uncertain (or blank)
NO_FINDING_VALUES = (1.0, 0.0, -1.0)
#: the 14 CheXpert observations, in the CheXpert paper's order (the labeler's categories and
#: the CheXpert evaluation set's classes follow it)
NO_FINDING = "No Finding"
CHEXPERT_OBSERVATIONS = (
    NO_FINDING,
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)
#: the same 14 as MIMIC-CXR's label files (mimic-cxr-2.0.0-chexpert.csv, -negbio.csv) order their
#: columns after subject_id and study_id: alphabetically
CHEXPERT_LABEL_COLUMNS = tuple(sorted(CHEXPERT_OBSERVATIONS))

#: how kept sentences are rewritten (curate --prompting; offclip.pipeline.prompting)
PROMPTERS = ("none", "template", "openai")

# ------------------------------------------------------------------------------------- models

#: the model config a training run uses unless told (models/configs/<name>.json): ``TrainConfig``,
#: ``python -m offclip.models.train``, ``offclip train``/``compare`` and the train flow all read it here
DEFAULT_MODEL_CONFIG = "demo"
#: the text a training sample shows: the filtered sentences or the whole report (models.data)
TEXT_SOURCES = ("filtered", "report")
#: a training run's mixed precision (models.train_config._amp_dtype): ``auto`` bf16 (else fp16) autocast on
#: CUDA and float32 on the CPU; ``bf16`` autocast on CUDA or the CPU; ``fp16`` CUDA only; ``off`` float32
AMP_MODES = ("auto", "bf16", "fp16", "off")
#: the zero-shot evaluation sets (``evaluations.dataset``; models.evaluate)
EVAL_DATASETS = ("vindr-cxr", "openi", "chexpert", "padchest")
#: evaluation protocols (``evaluations.protocol``; models.evaluate.protocols): ``offclip`` every class of the
#: label file with "There is {finding}."; ``paper`` OFF-CLIP's official validation (models/evaluate/protocols.json)
EVAL_PROTOCOLS = ("offclip", "paper")
DEFAULT_EVAL_PROTOCOL = "offclip"

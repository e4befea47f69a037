"""Contracts of the WebDataset shards' JSON: each sample's ``.json`` and each shard's completion record.

``OUT/shards/<split>/<split>-NNNNNN.tar`` holds, per sample, ``<study_id>.json`` (:data:`SAMPLE`,
its sentences :data:`SAMPLE_SENTENCE`); ``OUT/shards/<split>/_complete/<name>.json`` is the
shard's completion record (:data:`SHARD_RECORD`, the Python class
``offclip.pipeline.shards.ShardRecord`` is made from it). The manifest's ``shards`` table
(:data:`offclip.data_contracts.manifest.SHARDS`) takes its columns from the record.
"""

from __future__ import annotations

import pyarrow as pa

from .contract import Column, Contract
from .curate import CLASSIFIER_VERSION_DOC
from .enums import CLASSIFIER, FILTER_REASONS, FRONTAL_VIEWS, LABEL_SOURCES, LABELS, SPLITS

#: one report sentence inside a sample's JSON (``sentences``): every sentence of the report,
#: kept or not, with the filter's decision
SAMPLE_SENTENCE = Contract(
    "sample_sentence",
    (
        Column("index", pa.int32(), min=0),
        Column("section", pa.string()),
        Column("text", pa.string()),
        Column("label", pa.string(), isin=LABELS, doc="the sentence label the filter used (its label policy)"),
        Column("score", pa.float64(), min=0.0, max=1.0, doc="P(abnormal), rounded to 6 decimals"),
        Column("kept", pa.bool_()),
        Column("reason", pa.string(), isin=FILTER_REASONS),
    ),
    doc="A report sentence in a shard sample's JSON.",
)

#: the ``.json`` member of each shard sample. The DICOM-derived fields are a whitelist: never
#: names, birth dates or accession numbers.
SAMPLE = Contract(
    "sample",
    (
        Column("subject_id", pa.int64()),
        Column("study_id", pa.int64()),
        Column("dicom_id", pa.string()),
        Column("view", pa.string(), isin=FRONTAL_VIEWS, nullable=True),
        Column("split", pa.string(), isin=SPLITS),
        Column("folder", pa.string(), pattern=r"p\d\d"),
        Column("pair_label", pa.string(), isin=LABELS),
        Column(
            "classifier_version",
            pa.string(),
            doc="the pair's model_version (curate's pairs table, the shard record, the manifest): the sentence "
            "classifier's version, named for what it is here (data_contracts.curate.CLASSIFIER_VERSION_DOC)",
        ),
        Column("threshold", pa.float64(), min=0.0, max=1.0, doc="rounded to 6 decimals"),
        Column("image_size", pa.list_(pa.int32()), doc="[rows, columns] of the normalised image"),
        Column("source_transfer_syntax", pa.string(), nullable=True),
        Column("source_photometric", pa.string(), nullable=True),
        Column("source_bits_stored", pa.int16()),
        Column("sentences", pa.list_(pa.struct(list(SAMPLE_SENTENCE.schema))), doc="SAMPLE_SENTENCE, report order"),
    ),
    keys=(("study_id",),),
    doc="A shard sample's JSON (sorted keys, UTF-8).",
)
#: the fields of a sample's JSON
SAMPLE_FIELDS = tuple(SAMPLE.names)

#: a shard's completion record: written after the shard is renamed into place; a shard without
#: one is not complete. Fields with a default were added later (older records lack them).
SHARD_RECORD = Contract(
    "shard_record",
    (
        Column("split", pa.string(), isin=SPLITS),
        Column("name", pa.string(), pattern=r"[a-z]+-\d{6}\.tar"),
        Column("samples", pa.int32(), min=1),
        Column("bytes", pa.int64(), min=1),
        Column("sha256", pa.string(), pattern=r"[0-9a-f]{64}"),
        Column("keys", pa.list_(pa.string()), default=list, doc="the samples' keys (study ids), in shard order"),
        Column("model_version", pa.string(), default="", doc=CLASSIFIER_VERSION_DOC + " (of the shard's samples)"),
        Column(
            "label_source",
            pa.string(),
            isin=LABEL_SOURCES,
            default=CLASSIFIER,
            doc="where the pair labels came from (curate --label-source)",
        ),
        Column(
            "digests",
            pa.list_(pa.string()),
            default=list,
            doc="each sample's digest (offclip.pipeline.shards.sample_digest), in the order of keys: "
            "what the sample was made from; a record without them predates them and is rewritten",
        ),
    ),
    doc="OUT/shards/<split>/_complete/<name>.json",
)

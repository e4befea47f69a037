"""Contracts of the manifest's own tables: runs, shards, samples, evaluations."""

from __future__ import annotations

import pyarrow as pa

from .contract import Column, Contract
from .enums import EVAL_DATASETS, EVAL_PROTOCOLS, SPLITS
from .shards import SHARD_RECORD

RUNS = Contract(
    "runs",
    (
        Column("run_id", pa.string(), unique=True),
        Column("stage", pa.string()),
        Column("started_at", pa.timestamp("us", tz="UTC")),
        Column("finished_at", pa.timestamp("us", tz="UTC")),
        Column("seconds", pa.float64(), min=0),
        Column("offclip_version", pa.string()),
        Column("code_version", pa.string(), doc="git commit of the checkout, or 'unknown'"),
        Column("model_version", pa.string(), nullable=True),
        Column("parameters", pa.string(), doc="JSON"),
        Column("counts", pa.string(), doc="JSON"),
    ),
    doc="One row per pipeline run that touched this manifest.",
)

SHARDS = Contract(
    "shards",
    (
        *SHARD_RECORD.pick("split", "name"),
        Column("path", pa.string(), unique=True, doc="shards/<split>/<name>, relative to the output root"),
        *SHARD_RECORD.pick("samples", "bytes", "sha256", "model_version"),
    ),
    doc="Complete shards (those with a completion record): their records' columns and the path.",
)

SAMPLES = Contract(
    "samples",
    (
        Column("key", pa.string(), unique=True),
        Column("study_id", pa.int64(), unique=True),
        Column("split", pa.string(), isin=SPLITS),
        Column("shard", pa.string()),
        Column("position", pa.int32(), min=0),
        Column(
            "digest",
            pa.string(),
            nullable=True,
            doc="the digest the shard's record gives the sample (NULL: a record from before digests)",
        ),
    ),
    doc="Which shard holds each sample.",
)

EXPECTED_SAMPLES = Contract(
    "expected_samples",
    (
        Column("key", pa.string(), unique=True),
        Column("study_id", pa.int64(), unique=True),
        Column("split", pa.string(), isin=SPLITS),
        Column("digest", pa.string(), doc="what the sample made from the current records would be"),
    ),
    doc="The sample every curated pair of a shard split should have (its digest): shard_health and "
    "shard_mismatches compare the shards' samples with these.",
)

#: ``class_name`` of the summary rows of an evaluation (the per-class rows name a class)
OVERALL = "_overall"

EVALUATIONS = Contract(
    "evaluations",
    (
        Column("evaluation_id", pa.string(), doc="one id per evaluate() call (uuid4)"),
        Column("evaluated_at", pa.timestamp("us", tz="UTC")),
        Column("model_dir", pa.string(), nullable=True, doc="None for an in-memory model"),
        Column("run_name", pa.string(), nullable=True, doc="the training run (model version)"),
        Column("loss", pa.string(), nullable=True, doc="training loss, from the model directory"),
        Column("seed", pa.int64(), nullable=True, doc="training seed, from the model directory"),
        Column("dataset", pa.string(), doc=", ".join(EVAL_DATASETS)),
        Column("class_name", pa.string(), doc=f"a class of the dataset, or '{OVERALL}' for summary rows"),
        Column(
            "metric",
            pa.string(),
            doc="auc, accuracy, threshold, fp, fn, pointing_game; summary: "
            "normal_auc, macro_auc, pointing_game, normal_fp, normal_fn, "
            "n_images, rejects",
        ),
        Column(
            "value",
            pa.float64(),
            nullable=True,
            doc="NULL when the metric is undefined (e.g. AUC of a class with one label value)",
        ),
        Column("n_pos", pa.int64(), nullable=True, min=0),
        Column("n_neg", pa.int64(), nullable=True, min=0),
        Column(
            "protocol",
            pa.string(),
            nullable=True,
            isin=EVAL_PROTOCOLS,
            doc="the evaluation protocol (models.evaluate.protocols); NULL in rows recorded before it "
            "existed, which were all 'offclip'",
        ),
    ),
    doc="Zero-shot evaluation figures, long format: one row per (evaluation, class, metric).",
    keys=(("evaluation_id", "class_name", "metric"),),
)

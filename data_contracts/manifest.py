"""Contracts of the manifest's own tables: runs, shards, samples."""

from __future__ import annotations

import pyarrow as pa

from .contract import Column, Contract
from .ingest import SPLITS

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
        Column("split", pa.string(), isin=SPLITS),
        Column("name", pa.string(), pattern=r"[a-z]+-\d{6}\.tar"),
        Column("path", pa.string(), unique=True),
        Column("samples", pa.int32(), min=1),
        Column("bytes", pa.int64(), min=1),
        Column("sha256", pa.string(), pattern=r"[0-9a-f]{64}"),
        Column("model_version", pa.string()),
    ),
    doc="Complete shards (those with a completion record).",
)

SAMPLES = Contract(
    "samples",
    (
        Column("key", pa.string(), unique=True),
        Column("study_id", pa.int64(), unique=True),
        Column("split", pa.string(), isin=SPLITS),
        Column("shard", pa.string()),
        Column("position", pa.int32(), min=0),
    ),
    doc="Which shard holds each sample.",
)

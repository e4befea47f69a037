"""The layout of a curation output root (OUT): every folder and file offclip writes there, named
once. Every reader and writer of an output root takes its paths from here.

    OUT/
      images/<folder>/p<subject>/s<study>/<dicom_id>.png|jpg   the normalised frontal images (ingest)
      ingest/{studies,images,sentences,rejects}.parquet        ingest's records (data_contracts.ingest)
      ingest/stamps.parquet                                    what each study was built from (the
                                                               incremental skip; not in the manifest)
      curate/{sentences,pairs}.parquet                         curate's records (data_contracts.curate)
      curate/study_labels.parquet                              MIMIC's label files beside the classifier's
                                                               label (only when a label file was found)
      cache/sentence_scores.duckdb                             classifier scores per unique sentence
      cache/llm_rewrites.duckdb                                the openai prompter's rewrites
      classifier/                                              the sentence classifier build-shards trains
                                                               when none is given
      shards/<split>/<split>-NNNNNN.tar                        WebDataset shards (pipeline/shards.py), with
      shards/<split>/_complete/<shard>.json, sizes.json        their completion records and sample sizes
      manifest.duckdb                                          the manifest (pipeline/manifest.py)
"""

from __future__ import annotations

import os
from pathlib import Path

PathLike = str | os.PathLike[str]

IMAGES_DIR = "images"
INGEST_DIR = "ingest"
CURATE_DIR = "curate"
CACHE_DIR = "cache"
CLASSIFIER_DIR = "classifier"
SHARD_DIR = "shards"
MANIFEST_FILE = "manifest.duckdb"

#: ingest's record tables, in the order they are written
INGEST_TABLES = ("studies", "images", "sentences", "rejects")
STAMPS_FILE = f"{INGEST_DIR}/stamps.parquet"
SCORE_CACHE_FILE = f"{CACHE_DIR}/sentence_scores.duckdb"
PROMPT_CACHE_FILE = f"{CACHE_DIR}/llm_rewrites.duckdb"


def ingest_table(out: PathLike, name: str) -> Path:
    """``OUT/ingest/<name>.parquet``."""
    return Path(out) / INGEST_DIR / f"{name}.parquet"


def curate_table(out: PathLike, name: str) -> Path:
    """``OUT/curate/<name>.parquet`` (sentences, pairs, study_labels)."""
    return Path(out) / CURATE_DIR / f"{name}.parquet"


def image_path(folder: str, subject_id: int, study_id: int, dicom_id: str, fmt: str) -> str:
    """Where a study's normalised image goes, relative to OUT."""
    ext = "jpg" if fmt == "jpg" else "png"
    return f"{IMAGES_DIR}/{folder}/p{subject_id}/s{study_id}/{dicom_id}.{ext}"


def split_dir(out: PathLike, split: str) -> Path:
    """``OUT/shards/<split>``: one split's shards, records and sizes."""
    return Path(out) / SHARD_DIR / split


def manifest_path(out: PathLike) -> Path:
    return Path(out) / MANIFEST_FILE


def classifier_dir(out: PathLike) -> Path:
    return Path(out) / CLASSIFIER_DIR

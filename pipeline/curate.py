"""The curation step after ingest: score sentences, filter, label pairs, optionally prompt.

Reads ``OUT/ingest/{studies,images,sentences}.parquet``, writes
``OUT/curate/{sentences,pairs}.parquet`` (contract-checked, atomic) and keeps the score cache in
``OUT/cache/sentence_scores.duckdb``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from ..data_contracts.contract import Contract
from ..data_contracts.curate import CURATED_SENTENCES, PAIRS
from .atomic import atomic_open
from .filtering import filter_sentences
from .ingest import read_table
from .prompting import make_prompter
from .scoring import Classifier, ScoreCache, ScoringStats, score_sentences

CURATE_DIR = "curate"
CACHE_FILE = "cache/sentence_scores.duckdb"


@dataclass
class CurateConfig:
    out: Path
    classifier: Path | None = None  #: a saved SentenceClassifier; None → pass `classifier=` to run
    threshold: float | None = None  #: None → the classifier's calibrated threshold
    prompting: str = "none"  #: none | template | openai
    prompt_options: dict = field(default_factory=dict)
    batch_size: int = 128


@dataclass
class CurateSummary:
    pairs: int
    normal: int
    abnormal: int
    sentences: int
    kept: int
    dropped: int
    scoring: ScoringStats
    model_version: str
    threshold: float
    seconds: float

    def to_text(self) -> str:
        s = self.scoring
        return (f"curate: {self.pairs} pairs — normal {self.normal}, abnormal {self.abnormal} "
                f"(classifier {self.model_version}, threshold {self.threshold:.3f})\n"
                f"  sentences {self.sentences}: kept {self.kept}, dropped {self.dropped} "
                f"(normal sentences of abnormal reports)\n"
                f"  unique {s.unique} · from cache {s.cached} · model calls {s.model_calls} · {self.seconds:.1f} s")


def _write(out: Path, name: str, contract: Contract, df: pd.DataFrame) -> None:
    table = contract.validate(df)
    with atomic_open(Path(out) / CURATE_DIR / f"{name}.parquet", "wb") as fh:
        pq.write_table(table, fh, compression="zstd")


def read_curated(out: Path, name: str) -> pd.DataFrame:
    return pq.read_table(Path(out) / CURATE_DIR / f"{name}.parquet").to_pandas()


def run_curate(config: CurateConfig, classifier: Classifier | None = None) -> CurateSummary:
    start = time.perf_counter()
    out = Path(config.out)
    if classifier is None:
        if config.classifier is None:
            raise ValueError("no classifier: pass a saved classifier directory (offclip classifier train)")
        from .classifier import SentenceClassifier

        classifier = SentenceClassifier.load(config.classifier)
    threshold = classifier.threshold if config.threshold is None else float(config.threshold)

    studies = read_table(out, "studies")
    studies = studies[studies["status"] == "ingested"]
    sentences = read_table(out, "sentences")
    sentences = sentences[sentences["study_id"].isin(studies["study_id"])]
    if sentences.empty:
        raise ValueError(f"{out} has no ingested sentences: run `offclip ingest` first")

    with ScoreCache(out / CACHE_FILE) as cache:
        scored, stats = score_sentences(sentences, classifier, cache, batch_size=config.batch_size)
    filtered, pairs = filter_sentences(scored, threshold)

    prompter = make_prompter(config.prompting, **config.prompt_options)
    filtered["prompt"] = None
    if prompter is not None:
        kept = filtered["kept"].to_numpy()
        filtered.loc[kept, "prompt"] = prompter.rewrite(filtered.loc[kept, "text"].tolist())
        texts = filtered[kept].groupby("study_id")["prompt"].agg(list)
        pairs["texts"] = pairs["study_id"].map(texts)

    images = read_table(out, "images")
    selected = images[images["status"] == "selected"].set_index("study_id")
    info = studies.set_index("study_id")
    pairs["folder"] = pairs["study_id"].map(info["folder"])
    pairs["split"] = pairs["study_id"].map(info["split"])
    pairs["dicom_id"] = pairs["study_id"].map(selected["dicom_id"])
    pairs["view"] = pairs["study_id"].map(info["frontal_view"])
    pairs["image_path"] = pairs["study_id"].map(selected["out_path"])
    pairs["model_version"] = classifier.version
    pairs = pairs[PAIRS.names]

    _write(out, "sentences", CURATED_SENTENCES, filtered[CURATED_SENTENCES.names])
    _write(out, "pairs", PAIRS, pairs)
    return CurateSummary(
        pairs=len(pairs), normal=int((pairs["pair_label"] == "normal").sum()),
        abnormal=int((pairs["pair_label"] == "abnormal").sum()), sentences=len(filtered),
        kept=int(filtered["kept"].sum()), dropped=int((~filtered["kept"]).sum()), scoring=stats,
        model_version=classifier.version, threshold=threshold, seconds=time.perf_counter() - start)

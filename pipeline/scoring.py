"""Score sentences with the anomaly classifier at corpus scale.

Radiology text repeats (Open-I has ~2.7× more sentences than unique ones; MIMIC far more), so
each *unique normalised sentence* is classified once, and every score is kept in a cache table
keyed by ``(key, model_version)`` in a DuckDB file. A re-run, or an incremental run with new
studies, sends only text the cache has not seen to the model.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd
import pyarrow as pa

if TYPE_CHECKING:
    import duckdb


class Classifier(Protocol):
    @property
    def version(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    def predict_proba(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray: ...


def _first(row: tuple[Any, ...] | None) -> Any:
    """The first value of a query's row (an aggregate's: a row there always is)."""
    assert row is not None
    return row[0]


class DuckDBCache:
    """A cache held in one DuckDB file (``self.con``): closed on exit of a ``with`` block."""

    con: duckdb.DuckDBPyConnection  #: set by __init__
    #: per table, the column :meth:`prune` keeps rows by (a subclass names its tables)
    PRUNE_BY: dict[str, str] = {}

    @classmethod
    def prune(cls, path: str | Path, keep: Iterable[str]) -> int:
        """Keep only the rows of the cache file ``path`` whose ``PRUNE_BY`` column is in ``keep``
        (the text of the current corpus): a study edited, rejected or purged since leaves nothing
        behind. When a row goes, the file is rewritten — the kept rows copied into a new file
        renamed over the old one — since a DELETE leaves the old bytes in the file's free blocks.
        Returns the number of rows dropped (0: the file is left as it was)."""
        import duckdb

        path = Path(path)
        if not path.is_file() or not cls.PRUNE_BY:
            return 0
        wanted = pa.table({"value": pa.array(sorted(set(keep)), pa.string())})
        with duckdb.connect(str(path), read_only=True) as con:
            con.register("wanted", wanted)
            tables = {r[0] for r in con.execute("SHOW TABLES").fetchall()}
            dropped = sum(
                _first(
                    con.execute(
                        f"SELECT count(*) FROM {table} WHERE {column} NOT IN (SELECT value FROM wanted)"
                    ).fetchone()
                )
                for table, column in cls.PRUNE_BY.items()
                if table in tables
            )
        if not dropped:
            return 0
        from .atomic import atomic_database

        with atomic_database(path) as tmp, cls(tmp) as new:  # the tables with their keys, as the class makes them
            new.con.execute("ATTACH '{}' AS old (READ_ONLY)".format(str(path).replace("'", "''")))
            new.con.register("wanted", wanted)
            for table, column in cls.PRUNE_BY.items():
                if table in tables:
                    new.con.execute(
                        f"INSERT INTO {table} SELECT * FROM old.{table} WHERE {column} IN (SELECT value FROM wanted)"
                    )
            new.con.execute("DETACH old")
            new.con.execute("CHECKPOINT")
        return dropped

    def __init__(self, path: str | Path | None = None) -> None:
        """Open (or create) the file at ``path``, or an in-memory database for None."""
        import duckdb

        self.path = None if path is None else Path(path)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.con = duckdb.connect(":memory:" if self.path is None else str(self.path))

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ScoreCache(DuckDBCache):
    """``sentence_scores(key, model_version, score, text)`` in a DuckDB file (or in memory), and
    beside it ``rule_labels(key, rules_version, label, rule)``: the rule labeler's verdict per
    unique key (:func:`label_sentences`)."""

    PRUNE_BY = {"sentence_scores": "key", "rule_labels": "key"}

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__(path)
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS sentence_scores ("
            " key VARCHAR NOT NULL, model_version VARCHAR NOT NULL, score FLOAT NOT NULL,"
            " text VARCHAR, PRIMARY KEY (key, model_version))"
        )
        self.con.execute(
            "CREATE TABLE IF NOT EXISTS rule_labels ("
            " key VARCHAR NOT NULL, rules_version VARCHAR NOT NULL, label VARCHAR NOT NULL,"
            " rule VARCHAR NOT NULL, PRIMARY KEY (key, rules_version))"
        )

    def lookup_rules(self, keys: Sequence[str], rules_version: str) -> dict[str, tuple[str, str]]:
        if not len(keys):
            return {}
        self.con.register("wanted", pa.table({"key": pa.array(list(keys), pa.string())}))
        try:
            rows = self.con.execute(
                "SELECT r.key, r.label, r.rule FROM rule_labels r JOIN wanted w USING (key) WHERE r.rules_version = ?",
                [rules_version],
            ).fetchall()
        finally:
            self.con.unregister("wanted")
        return {k: (label, rule) for k, label, rule in rows}

    def add_rules(self, keys: Sequence[str], labels: Sequence[str], rules: Sequence[str], rules_version: str) -> None:
        if not len(keys):
            return
        new = pa.table(
            {
                "key": pa.array(list(keys), pa.string()),
                "rules_version": pa.array([rules_version] * len(keys), pa.string()),
                "label": pa.array(list(labels), pa.string()),
                "rule": pa.array(list(rules), pa.string()),
            }
        )
        self.con.register("new_rules", new)
        try:
            self.con.execute("INSERT INTO rule_labels SELECT * FROM new_rules ON CONFLICT DO NOTHING")
        finally:
            self.con.unregister("new_rules")

    def lookup(self, keys: Sequence[str], model_version: str) -> dict[str, float]:
        if not len(keys):
            return {}
        wanted = pa.table({"key": pa.array(list(keys), pa.string())})
        self.con.register("wanted", wanted)
        try:
            rows = self.con.execute(
                "SELECT s.key, s.score FROM sentence_scores s JOIN wanted w USING (key) WHERE s.model_version = ?",
                [model_version],
            ).fetchall()
        finally:
            self.con.unregister("wanted")
        return {k: float(v) for k, v in rows}

    def add(self, keys: Sequence[str], texts: Sequence[str], scores: np.ndarray, model_version: str) -> None:
        if not len(keys):
            return
        new = pa.table(
            {
                "key": pa.array(list(keys), pa.string()),
                "model_version": pa.array([model_version] * len(keys), pa.string()),
                "score": pa.array(np.asarray(scores, dtype=np.float32)),
                "text": pa.array(list(texts), pa.string()),
            }
        )
        self.con.register("new_scores", new)
        try:
            self.con.execute("INSERT INTO sentence_scores SELECT * FROM new_scores ON CONFLICT DO NOTHING")
        finally:
            self.con.unregister("new_scores")

    def count(self, model_version: str | None = None) -> int:
        if model_version is None:
            return _first(self.con.execute("SELECT count(*) FROM sentence_scores").fetchone())
        return _first(
            self.con.execute("SELECT count(*) FROM sentence_scores WHERE model_version = ?", [model_version]).fetchone()
        )


@dataclass
class ScoringStats:
    sentences: int
    unique: int
    cached: int
    model_calls: int  #: sentences sent to the model in this run
    seconds: float

    @property
    def sentences_per_call(self) -> float:
        return self.sentences / self.model_calls if self.model_calls else float("inf")


def score_sentences(
    sentences: pd.DataFrame, classifier: Classifier, cache: ScoreCache, batch_size: int = 128
) -> tuple[pd.DataFrame, ScoringStats]:
    """Add ``score`` (P(abnormal)) and ``model_version`` to a frame with ``key``/``text``.
    (Labels come from the threshold, in :func:`offclip.pipeline.filtering.filter_sentences`.)

    Each unique key is classified at most once per model version, ever: the first text seen for
    a key stands for all of them (the key is what makes them identical).
    """
    start = time.perf_counter()
    unique = sentences.drop_duplicates("key", keep="first")[["key", "text"]]
    known = cache.lookup(unique["key"].tolist(), classifier.version)
    todo = unique[~unique["key"].isin(known.keys())]
    if len(todo):
        scores = classifier.predict_proba(todo["text"].tolist(), batch_size=batch_size)
        cache.add(todo["key"].tolist(), todo["text"].tolist(), scores, classifier.version)
        known.update(zip(todo["key"].tolist(), map(float, scores)))
    out = sentences.copy()
    out["score"] = out["key"].map(known).astype("float32")
    out["model_version"] = classifier.version
    stats = ScoringStats(len(sentences), len(unique), len(unique) - len(todo), len(todo), time.perf_counter() - start)
    return out, stats


def label_sentences(sentences: pd.DataFrame, labeler, cache: ScoreCache) -> tuple[pd.DataFrame, int]:
    """Add the rule labeler's ``rule_label``, ``rule`` and ``rules_version`` to a frame with
    ``key``/``text``: each unique key labelled once per rules version, kept in ``cache``.
    Returns (frame, number of keys labelled in this call)."""
    version = getattr(labeler, "version", None) or "rules"
    unique = sentences.drop_duplicates("key", keep="first")[["key", "text"]]
    known = cache.lookup_rules(unique["key"].tolist(), version)
    todo = unique[~unique["key"].isin(known.keys())]
    if len(todo):
        labels = labeler.label_many(todo["text"].tolist())
        pairs = [(lab.label, lab.rule) for lab in labels]
        cache.add_rules(todo["key"].tolist(), [p[0] for p in pairs], [p[1] for p in pairs], version)
        known.update(zip(todo["key"].tolist(), pairs))
    out = sentences.copy()
    out["rule_label"] = out["key"].map({k: v[0] for k, v in known.items()})
    out["rule"] = out["key"].map({k: v[1] for k, v in known.items()})
    out["rules_version"] = version
    return out, len(todo)

"""The result of one evaluation (:class:`EvalResult`): per-class table, summary, per-image
scores, pointing trials; as a dict/JSON, a score table (what the paired bootstrap reads) and
manifest rows."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ...data_contracts.manifest import EVALUATIONS, OVERALL
from .metrics import SUMMARY_METRICS, _count, _float

#: the score column of the prompt-free normal score (cosine to the training normal-text centroid)
CENTROID = "normal_centroid"


@dataclass(frozen=True)
class SavedScores:
    """An evaluation's score table read back (:func:`read_score_table`): what the paired bootstrap
    of ``models.compare.paired_differences`` reads from an :class:`EvalResult`."""

    scores: pd.DataFrame  #: index image_id, one column per class
    labels: pd.DataFrame  #: index image_id, one 0/1/NaN column per class
    centroid_scores: pd.Series  #: index image_id: the prompt-free normal score


def read_score_table(path: str | Path) -> SavedScores:
    """The scores, labels and prompt-free normal scores of ``<dataset>_scores.parquet`` (written
    from :meth:`EvalResult.score_table`), without evaluating again."""
    table = pd.read_parquet(path).set_index("image_id")
    label_columns = [c for c in table.columns if c.startswith("label:")]
    labels = table[label_columns].rename(columns=lambda c: c[len("label:") :])
    return SavedScores(scores=table[list(labels.columns)], labels=labels, centroid_scores=table[CENTROID])


@dataclass
class EvalResult:
    dataset: str
    root: str
    evaluation_id: str
    evaluated_at: dt.datetime
    model_dir: str | None
    run_name: str | None
    loss: str | None
    seed: int | None
    classes: pd.DataFrame  #: one row per class (:data:`TABLE_COLUMNS`), normal first
    summary: dict
    scores: pd.DataFrame  #: index image_id, one column per class: the cosine similarities
    pointing: pd.DataFrame  #: image_id, class_name, x, y (original pixels), hit
    rejects: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    prompts: dict = field(default_factory=dict)
    files: dict = field(default_factory=dict)
    labels: pd.DataFrame = field(default_factory=pd.DataFrame)  #: index image_id, one 0/1/NaN column per class
    #: index image_id: the prompt-free normal score (NaN column when the training texts are unknown)
    centroid_scores: pd.Series = field(default_factory=lambda: pd.Series(dtype=float))
    protocol: str = "offclip"  #: the evaluation protocol (models.evaluate.protocols)

    def to_dict(self) -> dict:
        """Plain Python (NaN stays NaN here; the JSON file writes it as null)."""
        return {
            "dataset": self.dataset,
            "root": self.root,
            "evaluation_id": self.evaluation_id,
            "evaluated_at": self.evaluated_at.isoformat(),
            "model_dir": self.model_dir,
            "run_name": self.run_name,
            "loss": self.loss,
            "seed": self.seed,
            "protocol": self.protocol,
            "summary": dict(self.summary),
            "classes": [_plain_row(r) for r in self.classes.to_dict("records")],
            "rejects": list(self.rejects),
            "notes": list(self.notes),
            "prompts": dict(self.prompts),
            "files": {k: str(v) for k, v in self.files.items()},
        }

    def score_table(self) -> pd.DataFrame:
        """One row per evaluated image: ``image_id``, each class's score, the prompt-free normal
        score, and each class's label as ``label:<class>`` (what the paired bootstrap reads)."""
        table = self.scores.copy()
        table[CENTROID] = self.centroid_scores.reindex(table.index)
        for column in self.labels.columns:
            table[f"label:{column}"] = self.labels[column].astype(float)
        return table.reset_index()

    def table(self) -> str:
        """The per-class table as text."""
        shown = self.classes.drop(columns=["prompt", "n_unknown"]).copy()
        for column in ("auc", "threshold", "accuracy", "pointing_game"):
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else f"{v:.3f}")
        for column in ("fp", "fn", "pointing_n", "pointing_hits"):
            shown[column] = shown[column].map(lambda v: "" if pd.isna(v) else str(int(v)))
        return shown.to_string(index=False)

    def manifest_rows(self) -> pd.DataFrame:
        """Long rows for the manifest's ``evaluations`` table (contract :data:`EVALUATIONS`)."""
        base = {
            "evaluation_id": self.evaluation_id,
            "evaluated_at": self.evaluated_at,
            "model_dir": self.model_dir,
            "run_name": self.run_name,
            "loss": self.loss,
            "seed": self.seed,
            "dataset": self.dataset,
            "protocol": self.protocol,
        }
        rows = []
        for r in self.classes.to_dict("records"):
            counts = {"n_pos": r["n_pos"], "n_neg": r["n_neg"]}
            metrics = ["auc", "accuracy", "threshold"] + (["fp", "fn"] if r["kind"] == "normal" else [])
            rows += [
                {**base, "class_name": r["class_name"], "metric": m, "value": _float(r[m]), **counts} for m in metrics
            ]
            if r["pointing_n"]:
                rows.append(
                    {
                        **base,
                        "class_name": r["class_name"],
                        "metric": "pointing_game",
                        "value": _float(r["pointing_game"]),
                        "n_pos": r["pointing_n"],
                        "n_neg": None,
                    }
                )
        rows += [
            {
                **base,
                "class_name": OVERALL,
                "metric": m,
                "value": _float(self.summary.get(m)),
                "n_pos": None,
                "n_neg": None,
            }
            for m in SUMMARY_METRICS
        ]
        df = pd.DataFrame(rows, columns=EVALUATIONS.names)
        for column in ("n_pos", "n_neg", "seed"):
            df[column] = df[column].astype("Int64")
        return df


def _plain_row(row: dict) -> dict:
    """A table row as plain Python: counts as int (NaN when undefined), metrics as float."""
    out = {}
    for key, value in row.items():
        if key in ("n_pos", "n_neg", "n_unknown", "fp", "fn", "pointing_n", "pointing_hits"):
            value = _count(value)
        elif isinstance(value, np.floating):
            value = float(value)
        out[key] = value
    return out


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, (Path, dt.datetime)):
        return str(value)
    return value

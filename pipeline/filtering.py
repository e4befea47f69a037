"""OFF-CLIP text filtering (the paper's step 3) and image–text pair labels.

- A report is **abnormal** if any of its sentences scores at or above the threshold.
- An abnormal report keeps only its abnormal sentences (the normal ones — "No pneumothorax." —
  would blur the pairing); a normal report keeps all its sentences.
- The report label becomes the pair label that the OFF-CLIP loss uses.

Nothing is deleted: every sentence keeps its score, label, model version, ``kept`` and the
``reason`` for it, so the manifest can answer "what was dropped and why".
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

KEEP_NORMAL_REPORT = "normal_report"  #: kept: the report is normal, all its sentences stay
KEEP_ABNORMAL = "abnormal_sentence"  #: kept: an abnormal sentence of an abnormal report
DROP_NORMAL_IN_ABNORMAL = "normal_sentence_in_abnormal_report"  #: dropped
REASONS = (KEEP_NORMAL_REPORT, KEEP_ABNORMAL, DROP_NORMAL_IN_ABNORMAL)


class FilterDecision(NamedTuple):
    keep: bool
    reason: str


def decide(report_abnormal: bool, sentence_abnormal: bool) -> FilterDecision:
    """The filter for one sentence, as a ``(keep, reason)`` pair (:func:`filter_sentences` applies
    the same rule to whole columns at once)."""
    if not report_abnormal:
        return FilterDecision(True, KEEP_NORMAL_REPORT)
    if sentence_abnormal:
        return FilterDecision(True, KEEP_ABNORMAL)
    return FilterDecision(False, DROP_NORMAL_IN_ABNORMAL)


def filter_sentences(scored: pd.DataFrame, threshold: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the filter to scored sentences (one row per sentence with ``study_id``, ``index``,
    ``text`` and ``score``); return (sentences with label/kept/reason, one pair row per study)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], not {threshold}")
    s = scored.sort_values(["study_id", "index"], kind="stable").reset_index(drop=True)
    sentence_abnormal = s["score"].to_numpy() >= threshold
    report_abnormal = pd.Series(sentence_abnormal).groupby(s["study_id"].to_numpy()).transform("any").to_numpy()
    s["label"] = np.where(sentence_abnormal, "abnormal", "normal")
    s["kept"] = ~report_abnormal | sentence_abnormal
    s["reason"] = np.select([~report_abnormal, sentence_abnormal], [KEEP_NORMAL_REPORT, KEEP_ABNORMAL],
                            DROP_NORMAL_IN_ABNORMAL)
    s["threshold"] = np.float32(threshold)

    g = s.groupby("study_id", sort=True)
    pairs = pd.DataFrame({
        "study_id": g["study_id"].first(),
        "subject_id": g["subject_id"].first(),
        "pair_label": np.where(g["label"].agg(lambda x: (x == "abnormal").any()), "abnormal", "normal"),
        "n_sentences": g.size().astype("int32"),
        "n_kept": g["kept"].sum().astype("int32"),
        "max_score": g["score"].max().astype("float32"),
        "texts": s[s["kept"]].groupby("study_id")["text"].agg(list),
    }).reset_index(drop=True)
    pairs["threshold"] = np.float32(threshold)
    return s, pairs

"""OFF-CLIP text filtering (the paper's step 3) and image–text pair labels.

- A report is **abnormal** if any of its sentences scores at or above the threshold.
- An abnormal report keeps only its abnormal sentences (the normal ones — "No pneumothorax." —
  would blur the pairing); a normal report keeps all its sentences.
- The report label becomes the pair label that the OFF-CLIP loss uses.

With another label source (``curate --label-source chexpert|negbio``) the pair label is given
(``pair_labels``) and only the sentence filter stays the classifier's: a normal pair keeps all
its sentences; an abnormal pair keeps the classifier-abnormal ones, or all of them when the
classifier found none (reason ``abnormal_report_without_abnormal_sentence``: the labeler saw a
finding the classifier missed, and an empty text would lose the pair).

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
#: kept: the pair label (from a labeler) is abnormal but the classifier found no abnormal sentence
KEEP_NO_ABNORMAL_SENTENCE = "abnormal_report_without_abnormal_sentence"
REASONS = (KEEP_NORMAL_REPORT, KEEP_ABNORMAL, DROP_NORMAL_IN_ABNORMAL, KEEP_NO_ABNORMAL_SENTENCE)


class FilterDecision(NamedTuple):
    keep: bool
    reason: str


def decide(report_abnormal: bool, sentence_abnormal: bool,
           report_has_abnormal_sentence: bool = True) -> FilterDecision:
    """The filter for one sentence, as a ``(keep, reason)`` pair (:func:`filter_sentences` applies
    the same rule to whole columns at once). ``report_has_abnormal_sentence`` matters only when the
    pair label comes from a labeler: False → an abnormal pair keeps all its sentences."""
    if not report_abnormal:
        return FilterDecision(True, KEEP_NORMAL_REPORT)
    if sentence_abnormal:
        return FilterDecision(True, KEEP_ABNORMAL)
    if not report_has_abnormal_sentence:
        return FilterDecision(True, KEEP_NO_ABNORMAL_SENTENCE)
    return FilterDecision(False, DROP_NORMAL_IN_ABNORMAL)


def filter_sentences(scored: pd.DataFrame, threshold: float,
                     pair_labels: pd.Series | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the filter to scored sentences (one row per sentence with ``study_id``, ``index``,
    ``text`` and ``score``); return (sentences with label/kept/reason, one pair row per study).

    ``pair_labels`` (``normal``/``abnormal`` by study_id, every study present): the pair labels
    of another label source; None → the classifier's (a report is abnormal if any sentence is)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], not {threshold}")
    s = scored.sort_values(["study_id", "index"], kind="stable").reset_index(drop=True)
    sentence_abnormal = s["score"].to_numpy() >= threshold
    classifier_abnormal = pd.Series(sentence_abnormal).groupby(s["study_id"].to_numpy()).transform("any").to_numpy()
    if pair_labels is None:
        report_abnormal = classifier_abnormal
    else:
        given = s["study_id"].map(pair_labels)
        if given.isna().any() or not given.isin(("normal", "abnormal")).all():
            bad = s.loc[given.isna() | ~given.isin(("normal", "abnormal")), "study_id"].unique()[:5].tolist()
            raise ValueError(f"pair_labels must give normal/abnormal for every study: not for {bad}")
        report_abnormal = (given == "abnormal").to_numpy()
    s["label"] = np.where(sentence_abnormal, "abnormal", "normal")
    s["kept"] = ~report_abnormal | sentence_abnormal | ~classifier_abnormal
    s["reason"] = np.select([~report_abnormal, sentence_abnormal, ~classifier_abnormal],
                            [KEEP_NORMAL_REPORT, KEEP_ABNORMAL, KEEP_NO_ABNORMAL_SENTENCE],
                            DROP_NORMAL_IN_ABNORMAL)
    s["threshold"] = np.float32(threshold)

    g = s.groupby("study_id", sort=True)
    pairs = pd.DataFrame({
        "study_id": g["study_id"].first(),
        "subject_id": g["subject_id"].first(),
        "pair_label": (np.where(g["label"].agg(lambda x: (x == "abnormal").any()), "abnormal", "normal")
                       if pair_labels is None else pair_labels.reindex(g["study_id"].first()).to_numpy()),
        "n_sentences": g.size().astype("int32"),
        "n_kept": g["kept"].sum().astype("int32"),
        "max_score": g["score"].max().astype("float32"),
        "texts": s[s["kept"]].groupby("study_id")["text"].agg(list),
    }).reset_index(drop=True)
    pairs["threshold"] = np.float32(threshold)
    return s, pairs

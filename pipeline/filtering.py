"""OFF-CLIP text filtering (the paper's step 3) and image–text pair labels.

- A report is **abnormal** if any of its sentences scores at or above the threshold.
- An abnormal report keeps only its abnormal sentences (the normal ones — "No pneumothorax." —
  would blur the pairing); a normal report keeps all its sentences.
- The report label becomes the pair label that the OFF-CLIP loss uses.

With another label source (``curate --label-source chexpert|negbio``) the pair label is given
(``pair_labels``) and only the sentence filter stays the classifier's: a normal pair keeps all
its sentences; an abnormal pair keeps the abnormal ones (by the label policy below), or all of
them when there is none (reason ``abnormal_report_without_abnormal_sentence``: the labeler saw a
finding the classifier missed, and an empty text would lose the pair).

**Sentence label policy** (``label_policy``): which sentences count as abnormal.

``cascade`` (curate's default)
    the rule labeler (:mod:`offclip.pipeline.labeler`, the classifier's teacher) decides where
    it has an opinion, the classifier where the rules are silent: abnormal when the rules say
    abnormal (a positive, uncertain, chronic, device or post-surgical mention), normal when they
    found evidence of normality (a normal phrase, or only negated findings), and the
    classifier's label (score >= threshold) when they found no finding word at all (rule
    ``no_finding``: wording outside the lexicon, where a learned model can generalise).
    Abnormal recall is never below the rules': a finding the student misses in wording its
    training data lacked ("free intraperitoneal air") is still caught; and the classifier's
    false positives on sentences the rules read as normal ("The hila are unremarkable.") do not
    count. Measured in docs/curation.md (a held-out set of MIMIC-style sentences and the demo world).
``union``
    abnormal when the classifier **or** the rules say so: abnormal recall never below either's,
    at the cost of both one's false positives on normal sentences.
``classifier``
    the classifier alone (the paper's; offclip's behaviour before label policies).
``rules``
    the rule labeler alone.

Each sentence keeps both opinions (``classifier_label``, ``rule_label`` and the ``rule`` that
fired) beside the policy's ``label``, so every decision is explainable.

Nothing is deleted: every sentence keeps its score, label, model version, ``kept`` and the
``reason`` for it, so the manifest can answer "what was dropped and why".
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd

from ..data_contracts.enums import (  # noqa: F401  (the reasons and policies are imported from here too)
    ABNORMAL,
    DEFAULT_LABEL_POLICY,
    DROP_NORMAL_IN_ABNORMAL,
    KEEP_ABNORMAL,
    KEEP_NO_ABNORMAL_SENTENCE,
    KEEP_NORMAL_REPORT,
    LABEL_POLICIES,
    LABELS,
    NORMAL,
)

#: the rule labeler's rule when a sentence mentions no finding and no normal phrase (rules silent)
RULES_SILENT = "no_finding"


def check_label_policy(policy: str) -> str:
    if policy not in LABEL_POLICIES:
        raise ValueError(f"label policy must be one of {', '.join(LABEL_POLICIES)}, not {policy!r}")
    return policy


def policy_abnormal(classifier_abnormal, rule_abnormal, policy: str, rule=None) -> np.ndarray:
    """The sentence label of ``policy`` from the two opinions (boolean arrays, True = abnormal;
    ``rule``: the rule ids, needed by ``cascade``)."""
    check_label_policy(policy)
    c = np.asarray(classifier_abnormal, dtype=bool)
    if policy == "classifier":
        return c
    r = np.asarray(rule_abnormal, dtype=bool)
    if r.shape != c.shape:
        raise ValueError("classifier and rule labels differ in length")
    if policy == "rules":
        return r
    if policy == "union":
        return c | r
    if rule is None:
        raise ValueError("the cascade policy needs the rule ids")
    silent = np.asarray(rule, dtype=object) == RULES_SILENT
    return r | (silent & c)


class FilterDecision(NamedTuple):
    keep: bool
    reason: str


def decide(report_abnormal: bool, sentence_abnormal: bool, report_has_abnormal_sentence: bool = True) -> FilterDecision:
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


def filter_sentences(
    scored: pd.DataFrame, threshold: float, pair_labels: pd.Series | None = None, label_policy: str = "classifier"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Apply the filter to scored sentences (one row per sentence with ``study_id``, ``index``,
    ``text`` and ``score``; with a policy other than ``classifier`` also ``rule_label``);
    return (sentences with classifier_label/label/kept/reason, one pair row per study).

    ``label_policy``: how a sentence's ``label`` follows from the classifier's
    (``classifier_label``: score >= threshold) and the rules' (``rule_label``) — see the module
    docstring. (The function's default is ``classifier``; curate's is ``cascade``.)
    ``pair_labels`` (``normal``/``abnormal`` by study_id, every study present): the pair labels
    of another label source; None → the sentences' (a report is abnormal if any sentence is)."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], not {threshold}")
    check_label_policy(label_policy)
    needs = {"classifier": (), "union": ("rule_label",), "rules": ("rule_label",), "cascade": ("rule_label", "rule")}
    missing = [c for c in needs[label_policy] if c not in scored.columns]
    if missing:
        raise ValueError(f"label policy {label_policy!r} needs the column(s) {', '.join(missing)}")
    s = scored.sort_values(["study_id", "index"], kind="stable").reset_index(drop=True)
    by_classifier = s["score"].to_numpy() >= threshold
    rule_abnormal = (s["rule_label"] == ABNORMAL).to_numpy() if "rule_label" in s.columns else None
    sentence_abnormal = policy_abnormal(
        by_classifier, rule_abnormal, label_policy, s["rule"].to_numpy() if "rule" in s.columns else None
    )
    s["classifier_label"] = np.where(by_classifier, ABNORMAL, NORMAL)
    has_abnormal = pd.Series(sentence_abnormal).groupby(s["study_id"].to_numpy()).transform("any").to_numpy()
    if pair_labels is None:
        report_abnormal = has_abnormal
    else:
        given = s["study_id"].map(pair_labels)
        if given.isna().any() or not given.isin(LABELS).all():
            bad = s.loc[given.isna() | ~given.isin(LABELS), "study_id"].unique()[:5].tolist()
            raise ValueError(f"pair_labels must give normal/abnormal for every study: not for {bad}")
        report_abnormal = (given == ABNORMAL).to_numpy()
    s["label"] = np.where(sentence_abnormal, ABNORMAL, NORMAL)
    s["kept"] = ~report_abnormal | sentence_abnormal | ~has_abnormal
    s["reason"] = np.select(
        [~report_abnormal, sentence_abnormal, ~has_abnormal],
        [KEEP_NORMAL_REPORT, KEEP_ABNORMAL, KEEP_NO_ABNORMAL_SENTENCE],
        DROP_NORMAL_IN_ABNORMAL,
    )
    s["threshold"] = np.float32(threshold)
    s["label_policy"] = label_policy

    g = s.groupby("study_id", sort=True)
    pairs = pd.DataFrame(
        {
            "study_id": g["study_id"].first(),
            "subject_id": g["subject_id"].first(),
            "pair_label": (
                np.where(g["label"].agg(lambda x: (x == ABNORMAL).any()), ABNORMAL, NORMAL)
                if pair_labels is None
                else pair_labels.reindex(g["study_id"].first()).to_numpy()
            ),
            "n_sentences": g.size().astype("int32"),
            "n_kept": g["kept"].sum().astype("int32"),
            "max_score": g["score"].max().astype("float32"),
            "texts": s[s["kept"]].groupby("study_id")["text"].agg(list),
        }
    ).reset_index(drop=True)
    pairs["threshold"] = np.float32(threshold)
    return s, pairs

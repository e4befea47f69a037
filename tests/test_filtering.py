"""OFF-CLIP's text filter and pair labels: invariants over many random reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from offclip.data_contracts.enums import (
    DEFAULT_LABEL_POLICY,
    DROP_NORMAL_IN_ABNORMAL,
    KEEP_ABNORMAL,
    KEEP_NORMAL_REPORT,
    LABEL_POLICIES,
)
from offclip.pipeline.filtering import decide, filter_sentences, policy_abnormal


def _reports(seed: int, n_reports: int = 120) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for study in range(n_reports):
        for index in range(int(rng.integers(1, 9))):
            # a third of reports are all-normal, the rest mix in abnormal sentences
            score = rng.uniform(0, 0.4) if study % 3 == 0 else rng.uniform(0, 1)
            rows.append({"study_id": 50_000_000 + study, "subject_id": 10_000_000 + study // 2, "index": index,
                         "text": f"sentence {study}.{index}", "key": f"k{study}.{index}", "score": np.float32(score)})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=seed)  # order must not matter


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
def test_filter_invariants(seed, threshold):
    scored = _reports(seed)
    sentences, pairs = filter_sentences(scored, threshold)
    assert len(sentences) == len(scored)  # nothing is deleted
    by_study = sentences.groupby("study_id")
    for study_id, group in by_study:
        pair = pairs[pairs["study_id"] == study_id].iloc[0]
        abnormal = (group["score"] >= threshold).any()
        assert pair["pair_label"] == ("abnormal" if abnormal else "normal")
        if abnormal:
            # an abnormal report contains no normal-labelled kept sentence …
            assert not ((group["label"] == "normal") & group["kept"]).any()
            assert set(group.loc[group["kept"], "reason"]) == {KEEP_ABNORMAL}
            assert set(group.loc[~group["kept"], "reason"]) <= {DROP_NORMAL_IN_ABNORMAL}
        else:  # … and a normal report keeps all its sentences
            assert group["kept"].all() and set(group["reason"]) == {KEEP_NORMAL_REPORT}
        assert pair["n_kept"] == group["kept"].sum() >= 1
        assert pair["texts"] == group.sort_values("index").loc[lambda g: g["kept"], "text"].tolist()
        assert pair["max_score"] == pytest.approx(group["score"].max())
        for row in group.itertuples():  # the vectorised filter is the per-sentence rule
            assert decide(abnormal, row.score >= threshold) == (row.kept, row.reason)
    assert len(pairs) == scored["study_id"].nunique()


def test_threshold_moves_reports_between_labels():
    scored = _reports(5)
    low = filter_sentences(scored, 0.2)[1]
    high = filter_sentences(scored, 0.9)[1]
    assert (low["pair_label"] == "abnormal").sum() > (high["pair_label"] == "abnormal").sum()
    with pytest.raises(ValueError, match="threshold"):
        filter_sentences(scored, 1.5)


def test_decide_is_the_papers_rule():
    assert decide(False, False) == (True, KEEP_NORMAL_REPORT)
    assert decide(False, True).keep  # cannot happen with one threshold, still kept
    assert decide(True, True) == (True, KEEP_ABNORMAL)
    assert decide(True, False) == (False, DROP_NORMAL_IN_ABNORMAL)


# ------------------------------------------------------------------------- label policies


def _with_rules(seed: int) -> pd.DataFrame:
    """Random reports with a random rule opinion per sentence (abnormal, evidence of normal, silent)."""
    scored = _reports(seed)
    rng = np.random.default_rng(seed + 100)
    kind = rng.choice(["positive:x", "negated_only", "normal_phrase:lungs_clear", "no_finding"], len(scored))
    scored["rule"] = kind
    scored["rule_label"] = np.where(kind == "positive:x", "abnormal", "normal")
    return scored


@pytest.mark.parametrize("policy", LABEL_POLICIES)
def test_label_policies(policy):
    scored = _with_rules(3)
    threshold = 0.5
    sentences, pairs = filter_sentences(scored, threshold, label_policy=policy)
    clf = sentences["score"] >= threshold
    rules = sentences["rule_label"] == "abnormal"
    silent = sentences["rule"] == "no_finding"
    expected = {"classifier": clf, "rules": rules, "union": clf | rules, "cascade": rules | (silent & clf)}[policy]
    assert ((sentences["label"] == "abnormal") == expected).all()
    assert (sentences["classifier_label"] == np.where(clf, "abnormal", "normal")).all()
    assert (sentences["label_policy"] == policy).all()
    if policy in ("union", "cascade"):  # never below the teacher's abnormal recall
        assert (sentences.loc[rules, "label"] == "abnormal").all()
    if policy == "cascade":  # where the rules saw evidence of normality, they decide
        assert (sentences.loc[~rules & ~silent, "label"] == "normal").all()
    # the filter follows the policy's labels: the paper's invariants hold
    for study_id, group in sentences.groupby("study_id"):
        pair = pairs[pairs["study_id"] == study_id].iloc[0]
        abnormal = (group["label"] == "abnormal").any()
        assert pair["pair_label"] == ("abnormal" if abnormal else "normal")
        if abnormal:
            assert not ((group["label"] == "normal") & group["kept"]).any()
        else:
            assert group["kept"].all()


def test_label_policy_needs_its_columns():
    scored = _reports(0)
    with pytest.raises(ValueError, match="rule_label"):
        filter_sentences(scored, 0.5, label_policy="union")
    with pytest.raises(ValueError, match="label policy"):
        filter_sentences(scored, 0.5, label_policy="majority")
    sentences, _ = filter_sentences(scored, 0.5)  # classifier, the function's default: no rule columns needed
    assert (sentences["label"] == sentences["classifier_label"]).all()
    assert DEFAULT_LABEL_POLICY == "cascade"
    assert list(policy_abnormal([True, False, False, True], [False, True, False, False], "cascade",
                                ["no_finding", "positive:x", "no_finding", "negated_only"])) == [True, True, False, False]

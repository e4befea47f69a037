"""The sentence label policy against held-out MIMIC-style wording (tests/data/mimic_style_sentences.tsv):
the policy is never worse than the rules (the classifier's teacher) on abnormal recall."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from offclip.data_contracts.enums import LABEL_POLICIES
from offclip.pipeline.filtering import policy_abnormal
from offclip.pipeline.labeler import RuleLabeler

DATA = Path(__file__).parent / "data" / "mimic_style_sentences.tsv"


def mimic_style_sentences() -> tuple[list[str], np.ndarray]:
    """(sentences, True = abnormal) of the held-out MIMIC-style set."""
    rows = [line.rstrip("\n").split("\t") for line in DATA.read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert rows[0] == ["label", "sentence"]
    return [r[1] for r in rows[1:]], np.array([r[0] == "abnormal" for r in rows[1:]])


def per_class(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(share of normal sentences called normal, share of abnormal sentences called abnormal)."""
    return float((~pred[~truth]).mean()), float(pred[truth].mean())


@pytest.fixture(scope="module")
def opinions(tiny_classifier):
    texts, truth = mimic_style_sentences()
    clf, _ = tiny_classifier
    labels = RuleLabeler().label_many(texts)
    return {"truth": truth,
            "classifier": clf.predict_proba(texts) >= clf.threshold,
            "rules": np.array([lab.label == "abnormal" for lab in labels]),
            "rule": np.array([lab.rule for lab in labels], dtype=object)}


def test_the_set_is_balanced_and_rare_in_open_i_wording():
    texts, truth = mimic_style_sentences()
    assert truth.sum() == (~truth).sum() == 40 and len(set(texts)) == 80
    low = " ".join(texts).lower()
    for finding in ("free intraperitoneal air", "loculated", "pneumomediastinum", "worsening multifocal"):
        assert finding in low


def test_rules_on_mimic_style_wording(opinions):
    normal, abnormal = per_class(opinions["rules"], opinions["truth"])
    assert normal >= 0.97 and abnormal >= 0.97


@pytest.mark.parametrize("policy", LABEL_POLICIES)
def test_policies_on_mimic_style_wording(opinions, policy):
    pred = policy_abnormal(opinions["classifier"], opinions["rules"], policy, opinions["rule"])
    normal, abnormal = per_class(pred, opinions["truth"])
    _, rules_abnormal = per_class(opinions["rules"], opinions["truth"])
    _, clf_abnormal = per_class(opinions["classifier"], opinions["truth"])
    if policy in ("cascade", "union"):  # never worse than the teacher (nor the student) on abnormal recall
        assert abnormal >= max(rules_abnormal, clf_abnormal if policy == "union" else 0.0)
    if policy == "cascade":  # the goal: >= 97 % of each class, whatever the classifier (here a tiny one)
        assert normal >= 0.97 and abnormal >= 0.97

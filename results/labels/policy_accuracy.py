"""Each label policy on the CheXpert-vocabulary sentence set (tests/data/chexpert_vocabulary/sentences.tsv)
with a given sentence classifier: right per form (definite / hedged -> abnormal, negated -> normal)
and overall, and every miss with both opinions (the rule that fired, its label, the classifier's score).

    python results/labels/policy_accuracy.py --classifier DIR [--classifier DIR ...] [--write MD]

The labels come from the library's own filter, exactly as curate gets them: the installed
RuleLabeler gives ``rule_label``/``rule``, the classifier's ``predict_proba`` the ``score``, and
``offclip.pipeline.filtering.filter_sentences`` (each sentence its own one-sentence report) applies
the policy at the classifier's calibrated threshold. ``--write``: the markdown, written atomically
(the commands that made it are put at its top by the caller, see results/labels/policy_accuracy.md).
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import time
from pathlib import Path

import pandas as pd

from offclip.data_contracts.enums import DEFAULT_LABEL_POLICY, LABEL_POLICIES
from offclip.pipeline.atomic import atomic_write_text
from offclip.pipeline.classifier import SentenceClassifier
from offclip.pipeline.filtering import RULES_SILENT, filter_sentences
from offclip.pipeline.labeler import RULES_VERSION, RuleLabeler

REPO = Path(__file__).resolve().parents[2]
SENTENCES = REPO / "tests/data/chexpert_vocabulary/sentences.tsv"
FORMS = ("definite", "negated", "hedged")
#: issue 27's targets for the default policy: overall and each form
TARGET_OVERALL, TARGET_FORM = 0.99, 0.98


def load_rows() -> list[list[str]]:
    lines = SENTENCES.read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines if line and not line.startswith("#")]


def score(rows: list[list[str]], classifier_dir: str) -> tuple[pd.DataFrame, dict]:
    texts = [r[4] for r in rows]
    clf = SentenceClassifier.load(classifier_dir)
    t0 = time.perf_counter()
    scores = clf.predict_proba(texts)
    seconds = time.perf_counter() - t0
    labels = RuleLabeler().label_many(texts)
    frame = pd.DataFrame({
        "study_id": range(len(rows)), "subject_id": 0, "index": 0, "text": texts,
        "form": [r[0] for r in rows], "observation": [r[1] for r in rows], "expected": [r[3] for r in rows],
        "score": scores.astype("float32"),
        "rule_label": [lab.label for lab in labels], "rule": [lab.rule for lab in labels],
    })
    meta = {"dir": str(classifier_dir), "version": clf.version, "threshold": clf.threshold,
            "method": clf.meta.get("method"), "head": clf.meta.get("head"),
            "trained_on": clf.meta.get("corpus") or "Open-I only", "seconds": seconds}
    return frame, meta


def by_policy(frame: pd.DataFrame, threshold: float) -> dict[str, pd.DataFrame]:
    out = {}
    for policy in LABEL_POLICIES:
        filtered, _pairs = filter_sentences(frame, threshold, label_policy=policy)
        filtered = filtered.sort_values("study_id").reset_index(drop=True)
        filtered["right"] = filtered["label"] == filtered["expected"]
        out[policy] = filtered
    return out


def table(results: dict[str, pd.DataFrame]) -> tuple[str, dict]:
    lines = ["| policy | definite | negated | hedged | overall | misses |", "|---|---|---|---|---|---|"]
    figures = {}
    for policy, f in results.items():
        per = {form: f.loc[f["form"] == form, "right"].mean() for form in FORMS}
        overall = f["right"].mean()
        figures[policy] = {**per, "overall": overall, "misses": int((~f["right"]).sum())}
        cells = [f"{per[form]:.1%} ({int(f.loc[f['form'] == form, 'right'].sum())}/"
                 f"{int((f['form'] == form).sum())})" for form in FORMS]
        name = f"**{policy}** (default)" if policy == DEFAULT_LABEL_POLICY else policy
        lines.append(f"| {name} | {' | '.join(cells)} | {overall:.1%} ({int(f['right'].sum())}/{len(f)}) | "
                     f"{figures[policy]['misses']} |")
    return "\n".join(lines), figures


def misses(results: dict[str, pd.DataFrame], policies=(DEFAULT_LABEL_POLICY, "classifier")) -> str:
    out = []
    for policy in policies:
        f = results[policy]
        wrong = f[~f["right"]]
        out.append(f"\n**{policy} misses ({len(wrong)})**" + "" + "\n")
        if policy == "classifier" and len(wrong) > 40:
            by = wrong.groupby(["form", wrong["rule"].str.split(":").str[0]]).size().sort_values(ascending=False)
            out.append("| form | rule kind (the rules' reading) | classifier misses |\n|---|---|---|")
            out += [f"| {form} | {rule} | {n} |" for (form, rule), n in by.items()]
            continue
        if len(wrong):
            out.append("| form | observation | sentence | rule | rule label | score | label |\n|---|---|---|---|---|---|---|")
            out += [f"| {r.form} | {r.observation} | {r.text} | {r.rule} | {r.rule_label} | {r.score:.3f} | {r.label} |"
                    for r in wrong.itertuples()]
    return "\n".join(out)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classifier", action="append", required=True, help="a saved classifier directory")
    ap.add_argument("--name", action="append", help="a name per classifier (default: its directory)")
    ap.add_argument("--write", help="write the markdown here (atomically)")
    ap.add_argument("--header", help="a markdown file whose text opens the written file")
    ap.add_argument("--footer", help="a markdown file whose text closes the written file")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    names = args.name or args.classifier
    rows = load_rows()
    counts = collections.Counter(r[0] for r in rows)
    parts = [Path(args.header).read_text(encoding="utf-8").rstrip() + "\n"] if args.header else []
    parts.append(f"Sentence set: {len(rows)} sentences ({', '.join(f'{f} {counts[f]}' for f in FORMS)}); "
                 f"rules {RULES_VERSION}. Targets for `{DEFAULT_LABEL_POLICY}`: >= {TARGET_OVERALL:.0%} overall, "
                 f">= {TARGET_FORM:.0%} each form.")
    all_figures = {}
    for name, directory in zip(names, args.classifier):
        frame, meta = score(rows, directory)
        results = by_policy(frame, meta["threshold"])
        text, figures = table(results)
        d = figures[DEFAULT_LABEL_POLICY]
        met = d["overall"] >= TARGET_OVERALL and all(d[f] >= TARGET_FORM for f in FORMS)
        silent = int((frame["rule"] == RULES_SILENT).sum())
        all_figures[name] = {"meta": meta, "figures": figures, "target_met": bool(met), "rules_silent": silent}
        parts.append(f"\n## {name}\n\n`{directory}`: {meta['version']} (method {meta['method']}, head "
                     f"{meta['head']}, calibrated threshold {meta['threshold']:.3f}; scoring {len(rows)} sentences "
                     f"{meta['seconds']:.1f} s)\n\n{text}\n\n`{DEFAULT_LABEL_POLICY}` targets "
                     f"{'met' if met else 'NOT met'}. The classifier decides under `{DEFAULT_LABEL_POLICY}` where the rules are "
                     f"silent (rule `{RULES_SILENT}`): {silent} of {len(rows)} sentences.\n" + misses(results))
        print(parts[-1], flush=True)
    if args.footer:
        parts.append("\n" + Path(args.footer).read_text(encoding="utf-8").rstrip() + "\n")
    if args.write:
        atomic_write_text(args.write, "\n".join(parts).rstrip() + "\n")
    if args.json:
        atomic_write_text(args.json, json.dumps(all_figures, indent=1, default=float) + "\n")


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Report-level check of the text filter on MIMIC-form reports (issue 27, point 3).

For each of the hand-written reports in ``tests/data/mimic_sections/`` this runs what ingest and
curate run, with the same library functions:

1. ``SentenceSplitter.split_report(text, study_id=...)`` as ingest calls it (the report's MIMIC
   study id where expected.json gives one, so its hand-checked section rule applies; otherwise a
   synthetic id outside MIMIC-CXR's range, as any other study would have);
2. ``score_sentences`` with a saved ``SentenceClassifier`` and ``label_sentences`` with the
   ``RuleLabeler`` (pipeline/scoring.py; an in-memory ``ScoreCache``);
3. ``filter_sentences`` with the classifier's calibrated threshold and the label policy
   (``cascade``, curate's default),

and compares the kept sentences, their labels and the pair label with
``tests/data/mimic_sections/expected_labels.json`` (a radiologist's reading of each report,
written by hand: not from this code's output). A report with no kept text (ingest's
``report_no_text`` reject) is expected to give no pair.

Run (from the repository root)::

    .venv/bin/python results/tools/report_level_check.py --classifier DIR [--policy cascade] [--out results/report-level]

prints the table and totals and writes ``<out>/<name>.md`` atomically (``--name``, default: the
classifier directory's name).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "mimic_sections"
NO_PAIR = "no pair"
SYNTHETIC_STUDY = 90_000_000  # + the report's number: outside MIMIC-CXR's 5xxxxxxx study ids


@dataclass
class ReportResult:
    report: str
    expected_pair: str
    got_pair: str
    right: int  #: expected sentences found with the expected label
    total: int  #: expected sentences (the expected kept text's, before the filter)
    kept_ok: bool  #: the filter kept exactly the expected sentences, with the expected labels
    misses: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def pair_ok(self) -> bool:
        return self.expected_pair == self.got_pair


def norm(text: str) -> str:
    """Whitespace collapsed and a leading de-identified fragment ("___. There is ...") left out:
    the splitter drops it where the section starts with it, and it carries no finding."""
    return re.sub(r"^(?:___\W*)+", "", " ".join(text.split()))


def load_expected() -> dict:
    return json.loads((DATA / "expected_labels.json").read_text())


def study_id(rid: str, meta: dict) -> int:
    if meta.get("study_id"):
        return int(meta["study_id"])
    return SYNTHETIC_STUDY + int(rid[1:3])


def ingest_sentences(splitter=None) -> pd.DataFrame:
    """One row per sentence of every report, as ingest writes sentences.parquet (the columns
    curate reads)."""
    from offclip.pipeline.text import SentenceSplitter

    splitter = splitter or SentenceSplitter()
    sections = json.loads((DATA / "expected.json").read_text())
    rows = []
    for rid, meta in sorted(sections.items()):
        sid = study_id(rid, meta)
        for s in splitter.split_report((DATA / f"{rid}.txt").read_text(), study_id=sid):
            rows.append({"report": rid, "study_id": sid, "subject_id": 10_000_000 + sid % 1000, "index": s.index,
                         "section": s.section, "text": s.text, "key": s.key})
    return pd.DataFrame(rows)


def score_reports(classifier, splitter=None) -> pd.DataFrame:
    """Every report's sentences with the classifier's ``score`` and the rules' ``rule_label`` /
    ``rule``, as run_curate computes them (an in-memory score cache)."""
    from offclip.pipeline.labeler import RuleLabeler
    from offclip.pipeline.scoring import ScoreCache, label_sentences, score_sentences

    sentences = ingest_sentences(splitter)
    with ScoreCache(None) as cache:
        scored, _ = score_sentences(sentences, classifier, cache)
        scored, _ = label_sentences(scored, RuleLabeler(), cache)
    return scored


def run_filter(classifier, label_policy: str = "cascade", splitter=None, threshold: float | None = None,
               scored: pd.DataFrame | None = None) -> pd.DataFrame:
    """filter_sentences as run_curate calls it (the classifier's calibrated threshold unless
    ``threshold``); returns the filtered sentences (with ``report``). ``scored``: the output of
    :func:`score_reports` for this classifier, to filter under several policies at one cost."""
    from offclip.pipeline.filtering import filter_sentences

    scored = score_reports(classifier, splitter) if scored is None else scored
    t = classifier.threshold if threshold is None else float(threshold)
    filtered, _ = filter_sentences(scored, t, label_policy=label_policy)
    return filtered


def compare(filtered: pd.DataFrame, expected: dict | None = None) -> list[ReportResult]:
    expected = expected or load_expected()
    by_report = {rid: g.sort_values("index") for rid, g in filtered.groupby("report")}
    results = []
    for rid, exp in sorted(expected.items()):
        g = by_report.get(rid)
        want_pair = exp["pair_label"] or NO_PAIR
        if g is None or g.empty:
            got_pair, got, kept = NO_PAIR, {}, []
        else:
            got_pair = "abnormal" if (g["label"] == "abnormal").any() else "normal"
            g = g.assign(norm=g["text"].map(norm))
            got = dict(zip(g["norm"], g["label"]))
            kept = list(zip(g.loc[g["kept"], "norm"], g.loc[g["kept"], "label"]))
        misses, right = [], 0
        for s in exp["sentences"]:
            t = norm(s["text"])
            if t not in got:
                misses.append(f"not kept by sectioning/splitting: {t!r}")
            elif got[t] != s["label"]:
                row = g[g["norm"] == t].iloc[0]
                misses.append(f"{t!r} {got[t]} (want {s['label']}; rules {row['rule_label']} "
                              f"[{row['rule']}], classifier {row['classifier_label']} {row['score']:.2f})")
            else:
                right += 1
        extra = [t for t in got if t not in {norm(s["text"]) for s in exp["sentences"]}]
        misses += [f"unexpected sentence: {t!r} ({got[t]})" for t in extra]
        want_kept = [(norm(s["text"]), s["label"]) for s in exp["kept"]]
        results.append(ReportResult(rid, want_pair, got_pair, right, len(exp["sentences"]), kept == want_kept,
                                    misses, exp.get("note", "")))
    return results


def totals(results: list[ReportResult]) -> dict:
    n = len(results)
    return {"reports": n, "pair_right": sum(r.pair_ok for r in results),
            "kept_right": sum(r.kept_ok for r in results),
            "sentences_right": sum(r.right for r in results), "sentences": sum(r.total for r in results)}


def markdown(results: list[ReportResult], title: str, meta: dict) -> str:
    t = totals(results)
    pct = lambda a, b: f"{100 * a / b:.1f} %" if b else "n/a"  # noqa: E731
    lines = [f"# Report-level check: {title}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items()]
    lines += ["",
              f"**Pair labels right: {t['pair_right']} / {t['reports']} ({pct(t['pair_right'], t['reports'])})** · "
              f"kept sentences and labels exactly right: {t['kept_right']} / {t['reports']} "
              f"({pct(t['kept_right'], t['reports'])}) · sentence labels right: {t['sentences_right']} / "
              f"{t['sentences']} ({pct(t['sentences_right'], t['sentences'])})", "",
              "| report | expected | got | sentences right | kept exact | misses |",
              "|---|---|---|---|---|---|"]
    for r in results:
        mark = "" if r.pair_ok else " ✗"
        miss = "; ".join(m.replace("|", "\\|") for m in r.misses)
        lines.append(f"| {r.report} | {r.expected_pair} | {r.got_pair}{mark} | {r.right}/{r.total} | "
                     f"{'yes' if r.kept_ok else 'no'} | {miss} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--classifier", required=True, type=Path, help="a saved SentenceClassifier directory")
    ap.add_argument("--policy", default=None, help="label policy (default: curate's, cascade)")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "report-level")
    ap.add_argument("--name", default=None, help="report file name (default: the classifier directory's name)")
    args = ap.parse_args(argv)

    from offclip.data_contracts.enums import DEFAULT_LABEL_POLICY
    from offclip.pipeline.atomic import atomic_open
    from offclip.pipeline.classifier import SentenceClassifier
    from offclip.pipeline.labeler import RULES_VERSION

    policy = args.policy or DEFAULT_LABEL_POLICY
    clf = SentenceClassifier.load(args.classifier)
    results = compare(run_filter(clf, policy))
    info = json.loads((args.classifier / "offclip.json").read_text()) if (args.classifier / "offclip.json").exists() else {}
    meta = {"classifier": f"`{args.classifier}` (version {clf.version}, method {info.get('method', '?')}, "
                          f"threshold {clf.threshold:.3f})",
            "label policy": policy, "rules version": RULES_VERSION,
            "expected": "`tests/data/mimic_sections/expected_labels.json` (hand-read labels)"}
    text = markdown(results, args.name or args.classifier.name, meta)
    print(text)
    out = args.out / f"{args.name or args.classifier.name}.md"
    with atomic_open(out, "w") as fh:
        fh.write(text)
    print(f"written: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

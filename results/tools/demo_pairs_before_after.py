"""Issue 27's "no change to what the demo world's reports keep unless it is a fix": every Open-I
report rendered as the demo world writes it (``demo.reports.mimic_report_text``), split into the
kept sentences, each labelled by the rule labeler, and the report's pair label under the ``rules``
policy (abnormal iff a kept sentence is; the default ``cascade`` differs only where the rules find
no finding word). Run ``dump`` with two checkouts' interpreters, then ``diff``::

    /tmp/before/.venv/bin/python results/tools/demo_pairs_before_after.py dump /tmp/pairs-before.json  # 30b11d0
    .venv/bin/python results/tools/demo_pairs_before_after.py dump /tmp/pairs-after.json
    .venv/bin/python results/tools/demo_pairs_before_after.py diff /tmp/pairs-before.json /tmp/pairs-after.json

(``/tmp/before``: a clone at the commit before, with its own virtualenv; the imports below are
that checkout's.)
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

EXAMS = ("CHEST (PA AND LAT)", "CHEST (PORTABLE AP)")


def dump(path: str) -> None:
    from offclip.demo.reports import mimic_report_text
    from offclip.pipeline import openi
    from offclip.pipeline.labeler import RULES_VERSION, RuleLabeler
    from offclip.pipeline.text import SentenceSplitter

    shared = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "openi"
    reports = openi.load_reports(openi.find_sources(str(shared) if shared.is_dir() else None).reports_tgz)
    splitter, labeler = SentenceSplitter(), RuleLabeler()
    out: dict[str, dict] = {"rules_version": RULES_VERSION, "reports": {}}
    for exam in EXAMS:
        texts = [mimic_report_text(r, examination=exam) for r in reports]
        kept = [[s.text for s in ss] for ss in splitter.pipe(texts)]
        unique = sorted({t for ss in kept for t in ss})
        labels = dict(zip(unique, (label.label for label in labeler.label_many(unique))))
        for report, sentences in zip(reports, kept):
            sentence_labels = [labels[t] for t in sentences]
            pair = "abnormal" if "abnormal" in sentence_labels else ("normal" if sentences else "none")
            out["reports"][f"{report.uid}|{exam}"] = {"kept": sentences, "labels": sentence_labels, "pair": pair}
    Path(path).write_text(json.dumps(out, sort_keys=True))
    print(f"{len(out['reports'])} report renders, rules {RULES_VERSION} → {path}")


def diff(before_path: str, after_path: str) -> None:
    before, after = (json.loads(Path(p).read_text()) for p in (before_path, after_path))
    b, a = before["reports"], after["reports"]
    print(f"rules {before['rules_version']} → {after['rules_version']}; {len(b)} report renders "
          f"({len(EXAMS)} examinations × {len(b) // len(EXAMS)} Open-I reports)")
    kept_b = sum(len(v["kept"]) for v in b.values())
    kept_a = sum(len(v["kept"]) for v in a.values())
    print(f"sentences kept: {kept_b} → {kept_a}")
    text_changed = [k for k in b if b[k]["kept"] != a[k]["kept"]]
    label_changed = [k for k in b if b[k]["kept"] == a[k]["kept"] and b[k]["labels"] != a[k]["labels"]]
    pairs = Counter((b[k]["pair"], a[k]["pair"]) for k in b if b[k]["pair"] != a[k]["pair"])
    print(f"renders whose kept sentences change: {len(text_changed)}; whose sentence labels change "
          f"(same sentences): {len(label_changed)}; pair label changes: {sum(pairs.values())} {dict(pairs)}")
    for k in sorted(set(text_changed) | set(label_changed)):
        if b[k]["pair"] == a[k]["pair"] and k not in text_changed:
            continue
        print(f"\n{k}: pair {b[k]['pair']} → {a[k]['pair']}")
        for t, lab in zip(b[k]["kept"], b[k]["labels"]):
            if t not in a[k]["kept"]:
                print(f"  - {lab:8s} {t}")
        for t, lab in zip(a[k]["kept"], a[k]["labels"]):
            old = dict(zip(b[k]["kept"], b[k]["labels"])).get(t)
            if old is None:
                print(f"  + {lab:8s} {t}")
            elif old != lab:
                print(f"  ~ {old} → {lab}  {t}")


if __name__ == "__main__":
    {"dump": dump, "diff": diff}[sys.argv[1]](*sys.argv[2:])

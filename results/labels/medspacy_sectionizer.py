"""medspacy's Sectionizer beside offclip's report sectioning on the 66 hand-written MIMIC-CXR-form
reports (tests/data/mimic_sections/*.txt, expected kept text in expected.json): right per report
form and overall, and time per report (issue 27).

medspacy is NOT a project dependency (medspacy 1.3.1 pins spacy<3.8 on Python < 3.12; the project
venv has spacy 3.8): it runs from its own venv and this file imports offclip only for
``--engine offclip`` (run from the project venv).

    python3 -m venv /tmp/medspacy-venv && /tmp/medspacy-venv/bin/pip install medspacy==1.3.1
    /tmp/medspacy-venv/bin/python results/labels/medspacy_sectionizer.py --engine medspacy --json /tmp/ms_sec.json
    .venv/bin/python results/labels/medspacy_sectionizer.py --engine offclip --json /tmp/offclip_sec.json

medspacy: ``spacy.blank("en")`` with ``nlp.add_pipe("medspacy_sectionizer")``, i.e. its default
English section rules as shipped (resources/en/section_patterns.json, 140 literal headers, matched
case-insensitively anywhere in the text). Those rules have no FINDINGS or IMPRESSION category:
"IMPRESSION:" is one of 21 headers of ``observation_and_plan``; "FINDINGS:"/"Findings:" are two of
20 headers of ``labs_and_studies`` (with "INDICATION:", "LABS:", "STUDIES:", "ECHO:", ...). Two
mappings are measured, each keeping, as MIMIC-CXR does, the last findings and the last impression
section (empty bodies dropped, document order):

- ``header``  (the main figure): impression = any ``observation_and_plan`` section; findings = a
  ``labs_and_studies`` section whose matched rule is "FINDINGS:"/"Findings:".
- ``category``: categories only, impression = ``observation_and_plan``, findings =
  ``labs_and_studies`` (so an INDICATION section counts as findings).

Nothing else is kept: the Sectionizer has no fallback for a report with neither (no
last-paragraph / COMPARISON rule, no study-specific rules), so such a report keeps nothing.

offclip: ``offclip.pipeline.text.report_sections(text, study_id=...)``, the kept text read as
tests/test_mimic_sections.py reads it.

A report is right when the kept text equals the expected text after whitespace is collapsed.
Time: all 66 reports processed ``--repeat`` times (medspacy: ``nlp.pipe`` + reading the sections;
offclip: ``report_sections`` per report), the best run / 66.
"""
from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests/data/mimic_sections"
FINDINGS_LITERALS = {"findings:"}
# Report forms, grouped by the report number (expected.json's "form" names each one).
FAMILIES = (
    ("standard, FINDINGS-only, IMPRESSION-only", range(1, 4)),
    ("study title as header", (*range(4, 12), 32)),
    ("no headers", range(12, 17)),
    ("misspelt headers", range(17, 22)),
    ("CONCLUSION, combined FINDINGS+IMPRESSION headers", range(22, 25)),
    ("addenda", range(25, 28)),
    ("sub-headings in a section", range(28, 32)),
    ("COMPARISON forms (text inside, narrative after)", (*range(33, 40), 59, 60)),
    ("lower / mixed-case headers", range(40, 42)),
    ("de-identification, wrapped lines", range(42, 44)),
    ("INDICATION / HISTORY variants", range(44, 51)),
    ("two IMPRESSIONs, WET READ, PFI, RECOMMENDATION, ...", (*range(51, 59),)),
    ("studies with a hand-assigned rule", range(61, 67)),
)


def family(rid: str) -> str:
    n = int(rid[1:3])
    return next(name for name, nums in FAMILIES if n in nums)


def collapse(text: str) -> str:
    return " ".join(text.split())


def load() -> tuple[dict, dict[str, str]]:
    expected = json.loads((DATA / "expected.json").read_text(encoding="utf-8"))
    texts = {rid: (DATA / f"{rid}.txt").read_text(encoding="utf-8") for rid in sorted(expected)}
    return expected, texts


def medspacy_engine(texts: dict[str, str], repeat: int):
    import medspacy  # noqa: F401  (registers the components)
    import spacy

    nlp = spacy.blank("en")
    nlp.add_pipe("medspacy_sectionizer")  # default rules, as shipped

    def kept_of(doc, mapping: str) -> str:
        last: dict[str, object] = {}
        for sec in doc._.sections:
            body = doc[sec.body_start:sec.body_end].text
            if not collapse(body):
                continue
            if sec.category == "observation_and_plan":
                last["impression"] = sec
            elif sec.category == "labs_and_studies":
                if mapping == "category" or (sec.rule is not None and sec.rule.literal.lower() in FINDINGS_LITERALS):
                    last["findings"] = sec
        chosen = sorted(last.values(), key=lambda s: s.body_start)
        return collapse(" ".join(doc[s.body_start:s.body_end].text for s in chosen))

    def run():
        docs = list(nlp.pipe(texts.values()))
        return {rid: {m: kept_of(doc, m) for m in ("header", "category")} | {
                    "sections": [(s.category, doc[s.title_start:s.title_end].text) for s in doc._.sections]}
                for rid, doc in zip(texts, docs)}

    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t0)
    return out, best / len(texts), f"medspacy {medspacy.__version__}, spacy {spacy.__version__}"


def offclip_engine(texts: dict[str, str], expected: dict, repeat: int):
    from offclip.pipeline.text import report_sections

    def run():
        out = {}
        for rid, text in texts.items():
            sid = expected[rid]["study_id"]
            secs = report_sections(text, study_id=int(sid) if sid else None)
            out[rid] = {"offclip": collapse(" ".join(s.text for s in secs)),
                        "sections": [(s.name, "") for s in secs]}
        return out

    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - t0)
    return out, best / len(texts), "offclip report_sections"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engine", choices=("medspacy", "offclip"), required=True)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--json", type=Path, help="write per-report results here")
    ap.add_argument("--misses", action="store_true", help="print each miss")
    args = ap.parse_args()

    expected, texts = load()
    if args.engine == "medspacy":
        out, per_report, what = medspacy_engine(texts, args.repeat)
        variants = ("header", "category")
    else:
        out, per_report, what = offclip_engine(texts, expected, args.repeat)
        variants = ("offclip",)

    print(f"{what}: {len(texts)} reports, {per_report * 1e3:.3f} ms per report (best of {args.repeat})")
    for v in variants:
        right = collections.Counter()
        total = collections.Counter()
        misses = []
        for rid, meta in expected.items():
            want = collapse(" ".join(meta["expected"]))
            ok = out[rid][v] == want
            right["all"] += ok
            total["all"] += 1
            out[rid][f"{v}_right"] = ok
            if not ok:
                misses.append(rid)
                if args.misses:
                    print(f"  MISS [{v}] {rid} ({meta['form']}): sections {out[rid]['sections']}\n"
                          f"      kept     {out[rid][v]!r}\n      expected {want!r}")
            right[family(rid)] += ok
            total[family(rid)] += 1
            right["kept nothing"] += not ok and not out[rid][v]
        print(f"[{v}] right {right['all']}/{total['all']} ({right['all'] / total['all']:.1%}); "
              f"wrong with nothing kept: {right['kept nothing']}; misses: {', '.join(misses) or 'none'}")
        for name, _ in FAMILIES:
            print(f"    {name:52s} {right[name]:2d}/{total[name]}")
    if args.json:
        args.json.write_text(json.dumps({"engine": what, "ms_per_report": per_report * 1e3,
                                         "reports": {rid: out[rid] | {"form": expected[rid]["form"]}
                                                     for rid in expected}}, indent=1))


if __name__ == "__main__":
    main()

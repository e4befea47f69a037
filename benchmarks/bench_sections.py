"""Report sectioning: offclip's parser beside a reading of MIMIC-CXR's own parser (issue 27).

``reference_kept`` below is *our reading* of the rules of MIMIC-CXR's report parser
(MIT-LCP/mimic-cxr ``txt/section_parser.py`` + ``txt/create_section_files.py``, MIT licence),
written for this benchmark from its documented behaviour, not its code: a header is a line
starting with one space then upper-case letters, spaces and ``()/,-`` and a colon followed by
whitespace; the line after a header line is never a header; names are normalised (the table
below, then "contains impression/findings/history/comparison/addendum", then study titles →
findings); empty findings/impression are dropped; the kept text is the last findings and the last
impression; without either, the last section without its first paragraph (split on ``"\\n \\n"``),
else the last comparison section; hand-checked studies by id (offclip.pipeline.section_rules).

Runs both over tests/data/mimic_sections (hand-written reports, expected.json), prints agreement,
each disagreement with who is right (the report's expected text decides), and the time per
report of each. Usage: .venv/bin/python benchmarks/bench_sections.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

from offclip.pipeline.section_rules import RANGE_BY_STUDY, SECTION_BY_STUDY
from offclip.pipeline.text import report_sections

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "mimic_sections"

# ------------------------------------------------------------ our reading of the reference
_HEADER = re.compile(r"\n ([A-Z ()/,-]+):\s")
_NAMES = {
    "comparisons": "comparison", "clinical history": "history", "reason for examination": "indication",
    "reason for exam": "indication", "clinical information": "history", "exam": "examination",
    "clinical indication": "indication", "conclusion": "impression", "chest, two views": "findings",
    "recommendation(s)": "recommendations", "type of examination": "examination",
    "reference exam": "comparison", "patient history": "history", "comparison exam": "comparison",
    "findings and impression": "impression", "comparison film": "comparison",
    "findings/impression": "impression", "pfi": "history", "recommendation": "recommendations",
    "wetread": "wet read", "ndication": "impression", "impresson": "impression",
    "imprression": "impression", "imoression": "impression", "impressoin": "impression",
    "imprssion": "impression", "impresion": "impression", "imperssion": "impression",
    "mpression": "impression", "impession": "impression", "findings/ impression": "impression",
    "finding": "findings", "findins": "findings", "findindgs": "findings", "findgings": "findings",
    "findngs": "findings", "findnings": "findings", "finidngs": "findings", "idication": "indication",
    "reference findings": "findings", "comparision": "comparison", "comparsion": "comparison",
    "comparrison": "comparison", "comparisions": "comparison",
}
_MAIN = ("impression", "findings", "history", "comparison", "addendum")
_TITLE = re.compile(r"chest|portable|pa and lat|lateral and pa|ap and lateral|lateral and ap|frontal and"
                    r"|two views|frontal view|pa view|ap view|one view|lateral view|bone window"
                    r"|frontal upright|frontal semi-upright|ribs")


def _name(raw: str) -> str:
    s = raw.lower().strip()
    if s in _NAMES:
        return _NAMES[s]
    for m in _MAIN:
        if m in s:
            return m
    return "findings" if _TITLE.search(s) else s


def reference_kept(text: str, study_id: int | None = None) -> list[str]:
    if study_id in RANGE_BY_STUDY:
        a, b = RANGE_BY_STUDY[study_id]
        return [text[a:b].strip()] if text[a:b].strip() else []
    secs: list[tuple[str, str]] = []  # (name, text)
    m = _HEADER.search(text)
    if m is None:
        secs.append(("full report", text))
    else:
        secs.append(("preamble", text[: m.start(1)]))
        while m is not None:
            name, a = _name(m.group(1)), m.end()
            nl = text.find("\n", a)
            m = _HEADER.search(text, a + (nl - a if nl != -1 else 0))
            secs.append((name, text[a : m.start() if m else len(text)]))
    secs = [(n, t) for n, t in secs if not (n in ("impression", "findings") and not t.strip())]
    names = [n for n, _ in secs]
    if study_id in SECTION_BY_STUDY:
        want = SECTION_BY_STUDY[study_id]
        hit = [t for n, t in secs if n == want]
        return [hit[-1].strip()] if hit and hit[-1].strip() else []
    if "impression" in names or "findings" in names:
        last = {n: i for i, (n, _) in enumerate(secs) if n in ("impression", "findings")}
        return [secs[i][1].strip() for i in sorted(last.values())]
    if "\n \n" in secs[-1][1]:
        rest = "\n \n".join(secs[-1][1].split("\n \n")[1:]).strip()
        if rest:
            return [rest]
    comp = [t for n, t in secs if n == "comparison"]
    return [comp[-1].strip()] if comp and comp[-1].strip() else []


# ------------------------------------------------------------------------------------ run
def collapse(text: str) -> str:
    return " ".join(text.split())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=50)
    args = ap.parse_args()
    expected = json.loads((DATA / "expected.json").read_text())
    reports = [(rid, (DATA / f"{rid}.txt").read_text(), int(m["study_id"]) if m["study_id"] else None)
               for rid, m in sorted(expected.items())]
    agree, right = 0, {"offclip": 0, "reference": 0, "neither": 0}
    for rid, text, sid in reports:
        ours = collapse(" ".join(s.text for s in report_sections(text, sid)))
        ref = collapse(" ".join(reference_kept(text, sid)))
        want = collapse(" ".join(expected[rid]["expected"]))
        if ours == ref:
            agree += 1
            continue
        who = "offclip" if ours == want else ("reference" if ref == want else "neither")
        right[who] += 1
        print(f"- {rid} ({expected[rid]['form']}): right: {who}\n    offclip:   {ours!r}\n"
              f"    reference: {ref!r}\n    why: {expected[rid]['why'] or '-'}")
    n = len(reports)
    print(f"\nagreement: {agree}/{n} reports keep the same text ({agree / n:.1%}); "
          f"of {n - agree} disagreements the right one is: {right}")
    print(f"expected text kept: offclip {sum(collapse(' '.join(s.text for s in report_sections(t, i))) == collapse(' '.join(expected[r]['expected'])) for r, t, i in reports)}/{n}, "
          f"reading of the reference {sum(collapse(' '.join(reference_kept(t, i))) == collapse(' '.join(expected[r]['expected'])) for r, t, i in reports)}/{n}")
    timings = {}
    for label, fn in (("offclip report_sections", report_sections), ("reading of the reference", reference_kept)):
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            for _, text, sid in reports:
                fn(text, sid)
        timings[label] = (time.perf_counter() - t0) / (args.repeat * n)
    a, b = timings.values()
    print(f"time per report: offclip {a * 1e6:.1f} µs, reading of the reference {b * 1e6:.1f} µs "
          f"(ratio {a / b:.2f}x; {args.repeat} passes over {n} reports, same process)")


if __name__ == "__main__":
    main()

"""Demo-world reports: what the sectioning keeps before and after issue 27 point 1.

Renders every Open-I report as the demo world writes it (demo.reports.mimic_report_text, the call
demo/world.py makes), splits it with the parser at git revision BEFORE (default e6194fd, the
commit before the sectioning change) and with the working tree's, and counts the reports whose
kept sentences or rule-labeler pair label (abnormal if any sentence is, else normal; none when
nothing is kept) change. Usage: .venv/bin/python results/sections/demo_before_after.py [BEFORE]
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from offclip.demo.reports import mimic_report_text
from offclip.pipeline import openi
from offclip.pipeline.labeler import RuleLabeler
from offclip.pipeline.text import SentenceSplitter

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data" / "openi"


def old_splitter(rev: str):
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:pipeline/text.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "offclip_text_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("offclip_text_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["offclip_text_before"] = mod
    spec.loader.exec_module(mod)
    return mod.SentenceSplitter()


def pair(labels: list[str]) -> str:
    return "abnormal" if "abnormal" in labels else ("normal" if labels else "none")


def main(rev: str = "e6194fd") -> None:
    reports = openi.load_reports(openi.find_sources(str(SHARED) if SHARED.is_dir() else None).reports_tgz)
    for exam in ("CHEST (PA AND LAT)", "CHEST (PORTABLE AP)"):
        texts = [mimic_report_text(r, examination=exam) for r in reports]
        before = [[s.text for s in ss] for ss in old_splitter(rev).pipe(texts)]
        after = [[s.text for s in ss] for ss in SentenceSplitter().pipe(texts)]
        labeler = RuleLabeler()
        lab = {t: l.label for t, l in zip(*(lambda u: (u, labeler.label_many(u)))(
            sorted({t for ss in before + after for t in ss})))}
        changed = [(r, b, a) for r, b, a in zip(reports, before, after) if b != a]
        pairs = Counter((pair([lab[t] for t in b]), pair([lab[t] for t in a])) for _, b, a in changed)
        print(f"examination {exam}: {len(reports)} reports, sentences kept before "
              f"{sum(map(len, before))}, after {sum(map(len, after))}; reports whose kept sentences "
              f"change: {len(changed)}; pair label changes: "
              f"{sum(v for (x, y), v in pairs.items() if x != y)} {dict(pairs)}")
        for r, b, a in changed:
            lost = [t for t in b if t not in a]
            gained = [t for t in a if t not in b]
            print(f"  uid {r.uid}: {len(b)} -> {len(a)} sentences; pair "
                  f"{pair([lab[t] for t in b])} -> {pair([lab[t] for t in a])}; "
                  f"lost {lost[:3]}{' ...' if len(lost) > 3 else ''}; gained {gained[:3]}")


if __name__ == "__main__":
    main(*sys.argv[1:])

"""The demo world's CheXpert columns before and after issue 19 part 5, over every Open-I report.

Before (commit 8895832): the demo's own NegEx-style regex engine (pipeline/demo/reports.py). After:
the pipeline's RuleLabeler reads the text (demo/reports.py). The MeSH side is the same in both.
Prints per-column changes, the most frequent (column, before, after) pairs, and the study-level
label the ``--label-source chexpert`` rule (pipeline/labels.py) gives.

    python results/tools/chexpert_engine_diff.py [TOP]
"""
import collections
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

from offclip.demo import reports as after
from offclip.pipeline.openi import find_sources, load_reports

BEFORE_COMMIT = "8895832"
repo = Path(__file__).resolve().parents[2]
source = subprocess.run(["git", "show", f"{BEFORE_COMMIT}:pipeline/demo/reports.py"], cwd=repo,
                        capture_output=True, text=True, check=True).stdout
source = source.replace("from offclip.pipeline.demo.lesions", "from offclip.demo.lesions")
with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / "reports_before.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("reports_before", path)
    before = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(before)


def study_label(labels):
    if labels["No Finding"] == 1.0:
        return "normal"
    if any(labels[c] in (1.0, -1.0) for c in after.CHEXPERT_COLUMNS if c != "No Finding"):
        return "abnormal"
    return None


corpus = load_reports(find_sources().reports_tgz)
cells = collections.Counter()
pairs = collections.defaultdict(list)
studies = collections.Counter()
changed = 0
for report in corpus:
    a, b = before.chexpert_labels(report), after.chexpert_labels(report)
    changed += a != b
    studies[(study_label(a), study_label(b))] += 1
    for column in after.CHEXPERT_COLUMNS:
        if a[column] != b[column]:
            cells[column] += 1
            pairs[(column, a[column], b[column])].append(report.uid)
n = len(corpus)
print(f"{n} Open-I reports; {changed} ({changed / n:.1%}) change at least one column; "
      f"{sum(cells.values())} of {n * 14} cells ({sum(cells.values()) / n / 14:.2%})\n")
print("| column | reports changed |\n|---|---|")
for column in after.CHEXPERT_COLUMNS:
    print(f"| {column} | {cells[column]} ({cells[column] / n:.1%}) |")
top = int(sys.argv[1]) if len(sys.argv) > 1 else 12
print("\n| column | before | after | reports | e.g. uid |\n|---|---|---|---|---|")
for (column, a, b), uids in sorted(pairs.items(), key=lambda kv: -len(kv[1]))[:top]:
    print(f"| {column} | {a} | {b} | {len(uids)} | {', '.join(map(str, uids[:3]))} |")
print("\nStudy label of --label-source chexpert (before → after):\n\n| before | after | reports |\n|---|---|---|")
for (a, b), count in sorted(studies.items(), key=str):
    print(f"| {a} | {b} | {count} |")

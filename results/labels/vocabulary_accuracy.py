"""The rules alone on the CheXpert-vocabulary sentence set (tests/data/chexpert_vocabulary/sentences.tsv):
right per form (definite / hedged -> abnormal, negated -> normal), and the misses.

    python results/labels/vocabulary_accuracy.py [LABELER_PY]     # default: the installed labeler

LABELER_PY: a labeler.py with its vocabulary/ beside it, e.g. the one before issue 27's rules:
    mkdir -p /tmp/rules1 && git archive 8a4dd86 pipeline/labeler.py pipeline/vocabulary | tar -x -C /tmp/rules1
    python results/labels/vocabulary_accuracy.py /tmp/rules1/pipeline/labeler.py
"""
import collections
import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if len(sys.argv) > 1:
    spec = importlib.util.spec_from_file_location("labeler_under_test", sys.argv[1])
    labeler = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = labeler
    spec.loader.exec_module(labeler)
else:
    from offclip.pipeline import labeler
lines = (REPO / "tests/data/chexpert_vocabulary/sentences.tsv").read_text(encoding="utf-8").splitlines()
rows = [line.split("\t") for line in lines if line and not line.startswith("#")]
labels = labeler.RuleLabeler().label_many([r[4] for r in rows])
total, right, misses = collections.Counter(), collections.Counter(), collections.Counter()
for (form, observation, _ref, expected, _text), lab in zip(rows, labels):
    total[form] += 1
    right[form] += lab.label == expected
    if lab.label != expected:
        misses[(form, observation)] += 1
print(f"rules {labeler.RULES_VERSION}: {sum(right.values())} of {sum(total.values())} "
      f"({sum(right.values()) / sum(total.values()):.1%})\n\n| form | right | of | % |\n|---|---|---|---|")
for form in ("definite", "negated", "hedged"):
    print(f"| {form} | {right[form]} | {total[form]} | {right[form] / total[form]:.1%} |")
print("\n| form | observation | misses |\n|---|---|---|")
for (form, observation), n in misses.most_common():
    print(f"| {form} | {observation} | {n} |")

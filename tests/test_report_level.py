"""Report-level check of the text filter on the MIMIC-form reports (issue 27, point 3).

The 66 hand-written reports of tests/data/mimic_sections/ go through what ingest and curate run
(``results/tools/report_level_check.py``: split_report with the study id, the classifier's score,
the rule labeler, the label policy, filter_sentences); the kept sentences, their labels and the
pair label are compared with ``expected_labels.json``, a radiologist's reading of each report
written by hand (devices, post-surgical change, chronic and hedged findings are abnormal, as the
labeling policy in docs/curation.md says).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "mimic_sections"


def _tool():
    spec = importlib.util.spec_from_file_location("report_level_check", ROOT / "results/tools/report_level_check.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


check = _tool()


@pytest.fixture(scope="module")
def splitter():
    from offclip.pipeline.text import SentenceSplitter

    return SentenceSplitter()


def test_expected_labels_cover_every_report_and_follow_the_filter_rule():
    labels = json.loads((DATA / "expected_labels.json").read_text())
    sections = json.loads((DATA / "expected.json").read_text())
    assert sorted(labels) == sorted(sections)
    for rid, exp in labels.items():
        labs = [s["label"] for s in exp["sentences"]]
        assert set(labs) <= {"normal", "abnormal"}, rid
        if not labs:
            assert exp["pair_label"] is None and not exp["kept"], rid
            continue
        abnormal = "abnormal" in labs
        assert exp["pair_label"] == ("abnormal" if abnormal else "normal"), rid
        # an abnormal report keeps only its abnormal sentences; a normal one keeps all
        assert exp["kept"] == [s for s in exp["sentences"] if not abnormal or s["label"] == "abnormal"], rid
        # the sentences are the expected kept text of point 1, in order (less list numbers "1.")
        words = [w for w in " ".join(sections[rid]["expected"]).split() if not re.fullmatch(r"\d+\.", w)]
        assert " ".join(s["text"] for s in exp["sentences"]).split() == words, rid


@pytest.fixture(scope="module")
def scored(tiny_classifier, splitter):
    return check.score_reports(tiny_classifier[0], splitter)


# measured with rules-2 and the session's tiny classifier (frozen, trained on the demo seed
# sentences): rules 64 / 66 (97.0 %), cascade 63 / 66 (95.5 %). The floors sit at or just below:
# rules 0.96 (one more miss fails), cascade 0.95 (63 / 66). The misses, all labels, none sectioning:
# r15 and r17, "Low lung volumes" (the rules' vocabulary calls low lung volumes abnormal; the hand
# reading, normal: debatable, noted in expected_labels.json); under cascade also r42, "Dr. ___ was
# paged at ___." called abnormal by the tiny classifier where the rules are silent.
FLOORS = {"rules": 0.96, "cascade": 0.95}


@pytest.mark.parametrize("policy", sorted(FLOORS))
def test_pair_labels_on_the_mimic_form_reports(tiny_classifier, scored, policy):
    results = check.compare(check.run_filter(tiny_classifier[0], policy, scored=scored))
    assert len(results) == 66
    wrong = [f"{r.report}: expected {r.expected_pair}, got {r.got_pair}; {'; '.join(r.misses)}"
             for r in results if not r.pair_ok]
    share = 1 - len(wrong) / len(results)
    assert share >= FLOORS[policy], f"pair label right on {share:.1%}; misses:\n" + "\n".join(wrong)
    by = {r.report: r for r in results}
    # a report with no text keeps nothing: no pair, as ingest's report_no_text reject
    assert by["r61_custom_keep_nothing"].got_pair == check.NO_PAIR == by["r36_comparison_none_only"].got_pair
    # the label flips stay fixed: the title's first paragraph and a report written inside
    # COMPARISON give abnormal pairs that keep their finding
    assert by["r04_title_two_paragraphs"].got_pair == "abnormal" and by["r04_title_two_paragraphs"].kept_ok
    assert by["r33_comparison_only_narrative"].got_pair == "abnormal" and by["r33_comparison_only_narrative"].kept_ok


def test_compare_catches_a_wrong_label_and_a_lost_sentence(tiny_classifier, scored):
    """The comparison itself: a flipped sentence label flips the pair and the kept text; a
    sentence the sectioning loses is reported as such."""
    filtered = check.run_filter(tiny_classifier[0], "rules", scored=scored)
    by = {r.report: r for r in check.compare(filtered)}
    assert by["r12_noheader_one_paragraph"].pair_ok and by["r12_noheader_one_paragraph"].kept_ok
    f = filtered.copy()
    hit = (f["report"] == "r12_noheader_one_paragraph") & (f["index"] == 0)
    f.loc[hit, "label"] = "abnormal"
    f = f[~((f["report"] == "r01_standard") & (f["index"] == 0))]
    by = {r.report: r for r in check.compare(f)}
    r = by["r12_noheader_one_paragraph"]
    assert (r.got_pair, r.pair_ok, r.kept_ok, r.right, r.total) == ("abnormal", False, False, 2, 3)
    r = by["r01_standard"]
    assert r.misses[0].startswith("not kept by sectioning/splitting") and r.right == 3

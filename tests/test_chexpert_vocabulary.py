"""The rule labeler on the field's vocabulary: sentences built from the CheXpert labeler's public
phrase lists (tests/data/chexpert_vocabulary/: phrases.tsv x templates.tsv + extra.tsv, generated
by make_sentences.py into sentences.tsv) in definite, negated and hedged forms. The rules alone
must be right on >= 97 % of each form (definite and hedged -> abnormal, negated -> normal)."""

from __future__ import annotations

import collections
import importlib.util
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parent / "data" / "chexpert_vocabulary"
FLOOR = 0.97


def _generator():
    spec = importlib.util.spec_from_file_location("make_sentences", DATA / "make_sentences.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows() -> list[list[str]]:
    lines = (DATA / "sentences.tsv").read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines if line and not line.startswith("#")]


def test_sentence_set_is_what_the_script_makes():
    made = [(f, o, r, s) for f, o, r, s in _generator().sentences()]
    kept = [(f, o, r, s) for f, o, r, _e, s in _rows()]
    assert kept == made, "rerun tests/data/chexpert_vocabulary/make_sentences.py"
    counts = collections.Counter(f for f, *_ in kept)
    assert len(kept) >= 1000 and all(counts[f] >= 300 for f in ("definite", "negated", "hedged"))


@pytest.fixture(scope="module")
def labeled():
    from offclip.pipeline.labeler import RuleLabeler

    rows = _rows()
    labels = RuleLabeler().label_many([r[4] for r in rows])
    return [(form, obs, expected, text, lab) for (form, obs, _ref, expected, text), lab in zip(rows, labels)]


@pytest.mark.parametrize("form", ["definite", "negated", "hedged"])
def test_rules_right_on_each_form(labeled, form):
    rows = [r for r in labeled if r[0] == form]
    misses = [f"{text!r} ({obs}): {lab.label} by {lab.rule}, expected {expected}"
              for _f, obs, expected, text, lab in rows if lab.label != expected]
    accuracy = 1 - len(misses) / len(rows)
    assert accuracy >= FLOOR, f"{form}: {accuracy:.1%} of {len(rows)}; misses:\n" + "\n".join(misses)


def test_issue_examples(labeled):
    """Every hand-written sentence of extra.tsv (issue 27's examples) is right."""
    wrong = [(text, lab.label, lab.rule) for _f, obs, expected, text, lab in labeled
             if obs == "issue 27" and lab.label != expected]
    assert not wrong

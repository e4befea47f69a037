"""medspacy's ConText beside the rule labeler on the CheXpert-vocabulary sentence set
(tests/data/chexpert_vocabulary/sentences.tsv): right per form, and time per sentence.

medspacy is NOT a project dependency (medspacy 1.3.1 pins spacy<3.8 on Python < 3.12; the project
venv has spacy 3.8): it runs from its own venv, the rules from the project's.

    python3 -m venv /tmp/medspacy-venv && /tmp/medspacy-venv/bin/pip install medspacy==1.3.1
    /tmp/medspacy-venv/bin/python results/labels/medspacy_context.py --engine medspacy --json /tmp/medspacy.json
    .venv/bin/python results/labels/medspacy_context.py --engine rules --json /tmp/rules.json

medspacy: ``medspacy.load()`` (its default pipeline: PyRuSH sentences, target matcher, ConText with
its default rules), the target matcher built from phrases.tsv (the CheXpert labeler's mention
phrases the sentences are made from): each noun phrase (leading article dropped) a literal target
of its observation; an anatomy phrase's finding is its predicate ("enlarged", "widened", ...), so
the predicate is the target (ConText reads modifiers outside a target's span: "The heart is not
enlarged" needs "not" outside it). A sentence is abnormal when a target is not negated
(``is_negated``; an uncertain target is abnormal, as the project's policy reads a hedge), normal
when every target is negated or none is found. Besides that label, the ConText reading itself:
definite = some target neither negated nor uncertain; negated = every target negated; hedged =
some target uncertain (``is_uncertain``) and not negated.

Time: the whole set labelled ``--repeat`` times (medspacy: ``nlp.pipe``; rules:
``RuleLabeler().label_many`` with a fresh labeler, i.e. no cache), the best run / sentences.
"""
from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests/data/chexpert_vocabulary"
FORMS = ("definite", "negated", "hedged")


def rows(name: str) -> list[list[str]]:
    lines = (DATA / name).read_text(encoding="utf-8").splitlines()
    return [line.split("\t") for line in lines if line.strip() and not line.startswith("#")]


def template_of(text: str, form: str, templates) -> str:
    """The templates.tsv template of ``form`` a sentence was made from (the most specific that
    matches: most literal characters), "extra.tsv" when none."""
    import re

    found = []
    for t_form, _applies, template in templates:
        if t_form != form:
            continue
        rx = re.escape(template)
        for k, v in ((r"\{X\}", ".+"), (r"\{x\}", ".+"), (r"\{is\}", "(is|are)"), (r"\{has\}", "(has|have)"),
                     (r"\{was\}", "(was|were)"), (r"\{p\}", r"\w+")):
            rx = rx.replace(k, v)
        if re.fullmatch(rx, text):
            found.append((len(re.sub(r"\{\w+\}", "", template)), template))
    return max(found)[1] if found else "extra.tsv"


def target_rules():
    from medspacy.ner import TargetRule

    rules, seen = [], set()
    for observation, form, phrase, _ref in rows("phrases.tsv"):
        kind, *rest = form.split(":")
        literal = rest[0] if kind == "anatomy" else phrase.split(" ", 1)[1] if phrase.startswith(("a ", "an ")) else phrase
        if (literal.lower(), observation) not in seen:
            seen.add((literal.lower(), observation))
            rules.append(TargetRule(literal, observation))
    return rules


def run_medspacy(texts: list[str], repeat: int) -> tuple[list[dict], dict]:
    import medspacy
    from loguru import logger

    logger.remove()  # PyRuSH logs every token at DEBUG through loguru: off, or it dominates the time
    nlp = medspacy.load()
    nlp.get_pipe("medspacy_target_matcher").add(target_rules())
    docs = list(nlp.pipe(texts))
    best = min(_timed(lambda: list(nlp.pipe(texts))) for _ in range(repeat))
    out = []
    for doc in docs:
        ents = [{"text": e.text, "label": e.label_, "negated": bool(e._.is_negated),
                 "uncertain": bool(e._.is_uncertain), "hypothetical": bool(e._.is_hypothetical),
                 "historical": bool(e._.is_historical)} for e in doc.ents]
        abnormal = any(not e["negated"] for e in ents)
        if not ents:
            reading = "none"
        elif not abnormal:
            reading = "negated"
        elif any(e["uncertain"] and not e["negated"] for e in ents):
            reading = "hedged"
        else:
            reading = "definite"
        out.append({"label": "abnormal" if abnormal else "normal", "reading": reading, "ents": ents})
    return out, {"engine": f"medspacy {medspacy.__version__}", "pipeline": nlp.pipe_names,
                 "targets": len(target_rules()), "seconds_best": best}


def run_rules(texts: list[str], repeat: int) -> tuple[list[dict], dict]:
    from offclip.pipeline.labeler import RULES_VERSION, RuleLabeler

    labels = RuleLabeler().label_many(texts)
    best = min(_timed(lambda: RuleLabeler().label_many(texts)) for _ in range(repeat))
    out = []
    for lab in labels:
        statuses = {m.status for m in lab.mentions}
        reading = ("none" if not statuses else "negated" if statuses == {"negated"}
                   else "hedged" if "uncertain" in statuses else "definite")
        out.append({"label": lab.label, "rule": lab.rule, "reading": reading, "statuses": sorted(statuses)})
    return out, {"engine": f"rules {RULES_VERSION}", "seconds_best": best}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", choices=("medspacy", "rules"), required=True)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", help="write figures and per-sentence readings here")
    args = ap.parse_args()
    data = rows("sentences.tsv")
    texts = [r[4] for r in data]
    readings, meta = (run_medspacy if args.engine == "medspacy" else run_rules)(texts, args.repeat)
    total, right, read_right, misses = collections.Counter(), collections.Counter(), collections.Counter(), []
    for (form, obs, _ref, expected, text), got in zip(data, readings):
        total[form] += 1
        right[form] += got["label"] == expected
        read_right[form] += got.get("reading") == form
        if got["label"] != expected:
            misses.append({"form": form, "observation": obs, "text": text, **got})
    n = sum(total.values())
    figures = {"n": n, "per_form": {f: right[f] / total[f] for f in FORMS}, "overall": sum(right.values()) / n,
               "ms_per_sentence": 1000 * meta["seconds_best"] / n, **meta}
    figures["reading_per_form"] = {f: read_right[f] / total[f] for f in FORMS}
    figures["no_mention"] = sum(r["reading"] == "none" for r in readings)
    templates = rows("templates.tsv")
    by_template = collections.defaultdict(collections.Counter)
    for (form, *_rest, text), got in zip(data, readings):
        t = by_template[(form, template_of(text, form, templates))]
        t["n"] += 1
        t["label_right"] += got["label"] == _rest[-1]
        t["reading_right"] += got["reading"] == form
    figures["by_template"] = {f"{form} | {t}": dict(c) for (form, t), c in by_template.items()}
    print(json.dumps({k: v for k, v in figures.items()}, indent=1))
    print(f"{len(misses)} misses; by form/observation:",
          collections.Counter((m["form"], m["observation"]) for m in misses).most_common(20))
    if args.json:
        Path(args.json).write_text(json.dumps({"figures": figures, "misses": misses}, indent=1) + "\n",
                                   encoding="utf-8")


if __name__ == "__main__":
    main()

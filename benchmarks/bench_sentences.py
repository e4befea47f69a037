"""Sentences at corpus scale: split rate, unique-sentence dedup, classifier calls on re-runs.

    python benchmarks/bench_sentences.py [--openi DIR] [--reports N] [--repeat 3]
                                         [--classifier DIR] [--json PATH]

All on the real Open-I corpus (3,955 reports; ``offclip.pipeline.openi``), in this one process.

1. **Split rate.** The same texts — every report's FINDINGS and IMPRESSION field — split by
   * ``offclip``     -- ``SentenceSplitter.split_many`` (spaCy tokenizer with radiology rules,
                        the rule sentencizer, offclip's boundary repairs, normalised keys);
   * ``sentencizer`` -- naive baseline 1: ``spacy.blank("en")`` + spaCy's rule ``sentencizer``,
                        ``nlp.pipe`` over the same texts (the library default offclip builds on);
   * ``regex``       -- naive baseline 2: ``re.split(r"(?<=[.!?])\\s+", text)`` (what most
                        scripts do);
   and, as extra rows, offclip on whole reports rendered MIMIC-style (headers, blank lines, lines
   wrapped at 78): ``SentenceSplitter.pipe`` (section parsing included) and ``split_report`` one
   report per call (what the ingest stage does). Interleaved rounds, the best round counts.
   Each row gives its own sentence count and how many fields it splits differently from offclip
   (what the baselines' speed costs in correctness).
2. **Dedup.** Sentences vs unique normalised keys (``normalize_key``): the model calls that
   classifying each distinct sentence once saves against one call per sentence (goal >= 2.5x).
3. **Model calls on re-runs,** through the real ``offclip.pipeline.scoring.score_sentences`` and
   an on-disk ``ScoreCache`` (DuckDB), reopened for every run as ``run_curate`` does:
   first run on 90 % of the reports, then all of them (incremental: only keys the cache has not
   seen are sent), then all again (a re-run: goal 0 calls). The classifier is wrapped to count
   the texts really passed to ``predict_proba``. Without ``--classifier`` it is a deterministic
   stand-in (a hash of the text: what is counted is calls, not model speed — that is
   ``bench_classifier.py``); with ``--classifier DIR`` the saved model runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from offclip.pipeline.openi import find_sources, load_reports  # noqa: E402
from offclip.pipeline.scoring import ScoreCache, score_sentences  # noqa: E402
from offclip.pipeline.text import SentenceSplitter  # noqa: E402

GOAL_DEDUP = 2.5
_REGEX = re.compile(r"(?<=[.!?])\s+")


# --- inputs --------------------------------------------------------------------------------
def render(findings: str, impression: str) -> str:
    """An Open-I report as MIMIC-CXR style text (headers, blank lines, lines wrapped at 78)."""

    def wrap(text: str) -> str:
        return "\n ".join(textwrap.wrap(text, 78, break_on_hyphens=False, break_long_words=False))

    return f" FINDINGS:\n \n {wrap(findings)}\n \n IMPRESSION:\n \n {wrap(impression)}\n"


def load_openi(openi: str | None, limit: int | None):
    reports = load_reports(find_sources(openi).reports_tgz)
    return reports[:limit] if limit else reports


# --- 1. split rate -------------------------------------------------------------------------
def split_methods(splitter: SentenceSplitter, fields: list[str], rendered: list[str]) -> dict:
    """name -> (function returning a list of sentence-text lists, the texts it splits)."""
    import spacy

    naive_nlp = spacy.blank("en")
    naive_nlp.add_pipe("sentencizer")

    def offclip():
        return [[s.text for s in ss] for ss in splitter.split_many(fields)]

    def sentencizer():
        return [[s.text.strip() for s in doc.sents if s.text.strip()] for doc in naive_nlp.pipe(fields)]

    def regex():
        return [[p for p in (x.strip() for x in _REGEX.split(t)) if p] if t.strip() else [] for t in fields]

    def offclip_reports():
        return [[s.text for s in ss] for ss in splitter.pipe(rendered)]

    def offclip_per_report():
        return [[s.text for s in splitter.split_report(t)] for t in rendered]

    return {"offclip": offclip, "sentencizer": sentencizer, "regex": regex,
            "offclip_reports_pipe": offclip_reports, "offclip_split_report": offclip_per_report}


def time_split(methods: dict, repeat: int) -> dict[str, dict]:
    outputs = {name: fn() for name, fn in methods.items()}  # warm-up, and the outputs compared
    best = {name: float("inf") for name in methods}
    for _ in range(repeat):  # interleaved rounds: every method once per round
        for name, fn in methods.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    ref = outputs["offclip"]
    rows = {}
    for name, out in outputs.items():
        n = sum(len(x) for x in out)
        row = {"seconds": best[name], "sentences": n, "sentences_per_s": n / best[name],
               "texts": len(out), "time_vs_offclip": best[name] / best["offclip"]}
        if len(out) == len(ref):  # the field-level rows: compare their splits with offclip's
            row["fields_split_differently"] = sum(a != b for a, b in zip(out, ref))
        rows[name] = row
    return rows


# --- 2 + 3. dedup and model calls -----------------------------------------------------------
class StandIn:
    """A deterministic classifier stand-in: P(abnormal) from a hash of the text."""

    version = "bench-stand-in-v1"
    threshold = 0.5

    def predict_proba(self, texts, batch_size: int = 128) -> np.ndarray:
        return np.array([int.from_bytes(hashlib.blake2b(t.encode(), digest_size=4).digest(), "little") / 2**32
                         for t in texts], dtype=np.float32)


class Counting:
    """Wraps a classifier and counts the texts really sent to its model."""

    def __init__(self, inner) -> None:
        self.inner, self.calls = inner, 0
        self.version, self.threshold = inner.version, inner.threshold

    def predict_proba(self, texts, batch_size: int = 128) -> np.ndarray:
        self.calls += len(texts)
        return self.inner.predict_proba(texts, batch_size=batch_size)


def sentence_table(splitter: SentenceSplitter, reports) -> pd.DataFrame:
    """What the ingest stage hands to curation: one row per sentence with its key."""
    findings = splitter.split_many([r.findings for r in reports], section="findings")
    impressions = splitter.split_many([r.impression for r in reports], section="impression")
    rows = []
    for r, f, i in zip(reports, findings, impressions):
        for k, s in enumerate(f + i):
            rows.append((r.uid, k, s.text, s.key, r.is_normal))
    return pd.DataFrame(rows, columns=["study_id", "index", "text", "key", "normal_report"])


def dedup_figures(sentences: pd.DataFrame) -> dict:
    out = {"sentences": len(sentences), "unique_keys": int(sentences["key"].nunique())}
    out["ratio"] = out["sentences"] / out["unique_keys"]
    for name, part in (("normal_reports", sentences[sentences["normal_report"]]),
                       ("abnormal_reports", sentences[~sentences["normal_report"]])):
        out[name] = {"sentences": len(part), "unique_keys": int(part["key"].nunique()),
                     "ratio": len(part) / max(1, part["key"].nunique())}
    return out


def model_calls(sentences: pd.DataFrame, classifier, cache_path: Path) -> list[dict]:
    """Three curate-like runs against one on-disk cache: 90 % of the reports, all, all again."""
    studies = np.sort(sentences["study_id"].unique())
    first = set(studies[: int(len(studies) * 0.9)])
    runs = [("first run, 90 % of the reports", sentences[sentences["study_id"].isin(first)]),
            ("incremental run, all reports", sentences),
            ("re-run, all reports", sentences)]
    seen: set[str] = set()
    out = []
    for name, part in runs:
        counting = Counting(classifier)
        with ScoreCache(cache_path) as cache:  # reopened each run, as run_curate does
            t = time.perf_counter()
            scored, stats = score_sentences(part, counting, cache)
            seconds = time.perf_counter() - t
            cached_rows = cache.count(classifier.version)
        new_keys = set(part["key"]) - seen
        seen |= set(part["key"])
        assert scored["score"].notna().all()
        out.append({"run": name, "sentences": len(part), "unique_keys": int(part["key"].nunique()),
                    "keys_new_to_cache": len(new_keys), "model_calls": counting.calls,
                    "stats_model_calls": stats.model_calls, "cache_rows_after": cached_rows,
                    "seconds": seconds,
                    "sentences_per_model_call": len(part) / counting.calls if counting.calls else None})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--openi", default=None, help="directory with the Open-I files (default: as offclip finds them)")
    ap.add_argument("--reports", type=int, default=None, help="only the first N reports (default: all 3,955)")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds of the split timing (best counts)")
    ap.add_argument("--classifier", type=Path, default=None, help="a saved SentenceClassifier (default: stand-in)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    t = time.perf_counter()
    reports = load_openi(args.openi, args.reports)
    splitter = SentenceSplitter()
    print(f"{len(reports)} Open-I reports loaded, splitter built in {time.perf_counter() - t:.1f} s", flush=True)
    fields = [f for r in reports for f in (r.findings, r.impression)]
    rendered = [render(r.findings, r.impression) for r in reports]

    split = time_split(split_methods(splitter, fields, rendered), args.repeat)
    print(f"\n1. split rate: {len(fields)} FINDINGS/IMPRESSION fields ({sum(map(len, fields)) / 1e6:.2f} M chars), "
          f"best of {args.repeat} interleaved rounds")
    print(f"{'method':<22} {'seconds':>8} {'sentences':>10} {'sent/s':>9} {'time vs offclip':>16} {'fields differ':>14}")
    for name, r in split.items():
        differ = r.get("fields_split_differently")
        print(f"{name:<22} {r['seconds']:8.3f} {r['sentences']:10d} {r['sentences_per_s']:9.0f} "
              f"{r['time_vs_offclip']:15.2f}x {'' if differ is None else differ:>14}")

    sentences = sentence_table(splitter, reports)
    dedup = dedup_figures(sentences)
    print(f"\n2. dedup: {dedup['sentences']} sentences, {dedup['unique_keys']} unique keys: "
          f"{dedup['ratio']:.2f}x fewer model calls than sentences (goal >= {GOAL_DEDUP}x; "
          f"MeSH-normal reports {dedup['normal_reports']['ratio']:.2f}x, "
          f"abnormal {dedup['abnormal_reports']['ratio']:.2f}x)")

    if args.classifier:
        from offclip.pipeline.classifier import SentenceClassifier

        classifier, model_name = SentenceClassifier.load(args.classifier), f"saved classifier {args.classifier}"
    else:
        classifier, model_name = StandIn(), "deterministic stand-in (calls counted, no model)"
    with tempfile.TemporaryDirectory(prefix="offclip-bench-sent-") as tmp:
        calls = model_calls(sentences, classifier, Path(tmp) / "scores.duckdb")
    print(f"\n3. model calls through score_sentences + an on-disk ScoreCache ({model_name}):")
    for r in calls:
        per = f"{r['sentences_per_model_call']:.2f}" if r["sentences_per_model_call"] else "inf"
        print(f"  {r['run']:<32} {r['sentences']:6d} sentences, {r['keys_new_to_cache']:5d} keys new to the cache, "
              f"{r['model_calls']:5d} model calls ({per} sentences per call), {r['seconds']:.2f} s")

    goals = {"dedup_ratio": dedup["ratio"] >= GOAL_DEDUP, "rerun_zero_calls": calls[-1]["model_calls"] == 0,
             "incremental_only_new_keys": calls[1]["model_calls"] == calls[1]["keys_new_to_cache"]}
    for goal, met in goals.items():
        print(f"goal {goal}: {'met' if met else 'MISSED'}")
    load = os.getloadavg()
    print(f"load average after the run: {load[0]:.2f} ({os.cpu_count()} CPUs)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "reports": len(reports), "fields": len(fields), "repeat": args.repeat, "split": split,
            "dedup": dedup, "model": model_name, "model_calls": calls, "goals": goals,
            "load_average_after": load, "cpus": os.cpu_count()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

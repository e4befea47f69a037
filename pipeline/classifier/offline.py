"""The offline step: Open-I (and optionally the corpus being curated) -> rule labels ->
classifier -> calibration and evaluation -> saved model with its card."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .evaluation import (
    _default_labeler,
    _report_table,
    calibrate_threshold,
    evaluate_openi,
    mesh_label,
    report_sentences,
    rule_agreement,
)
from .partition import OPENI_SPLIT_SEED, SPLIT_FRACTIONS, openi_partition
from .training import DEFAULT_FROZEN_HEAD, DEFAULT_METHOD, train_classifier

#: Where train_from_openi writes when not told otherwise.
DEFAULT_OUT_DIR = Path("out") / "sentence-classifier"
#: At most this many distinct corpus sentences join the training set (train_from_openi(corpus=));
#: a larger corpus is sampled uniformly by a keyed hash of the sentence key (order-independent).
DEFAULT_CORPUS_LIMIT = 20_000
#: Share of the corpus's distinct sentences held out (by a keyed hash of the key) to measure the
#: classifier's agreement with the rules on the corpus's own wording, unseen in training.
CORPUS_HOLDOUT = 0.1
CORPUS_SPLIT_SEED = 20251204


def _unique_by_key(sentence_lists: Iterable[list[str]]) -> tuple[list[str], int]:
    """Distinct sentences (first spelling per normalised key) and the occurrence count."""
    from ..text import normalize_key

    first: dict[str, str] = {}
    n = 0
    for v in sentence_lists:
        for s in v:
            n += 1
            first.setdefault(normalize_key(s), s)
    return list(first.values()), n


def _key_hash(key: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def corpus_sentences(
    corpus: str | os.PathLike,
    exclude_keys: Iterable[str] = (),
    *,
    limit: int | None = DEFAULT_CORPUS_LIMIT,
    holdout: float = CORPUS_HOLDOUT,
) -> tuple[list[str], list[str], dict[str, Any]]:
    """The distinct sentences of a curation output's ingested studies (``OUT/ingest``), for
    training: returns (train texts, held-out texts, counts).

    Distinct by normalised key (the first spelling kept, as in scoring); keys in
    ``exclude_keys`` (every Open-I sentence: already in the training set, or in the dev/test
    partitions whose figures must stay uncontaminated) are left out; of the rest, ``holdout``
    (by a keyed hash of the key) is held out, and at most ``limit`` of the others are kept (the
    lowest hashes: a uniform, order-independent sample)."""
    from ..ingest import read_table

    out = Path(corpus)
    sentences = read_table(out, "sentences")
    studies = read_table(out, "studies")
    if "status" in studies.columns:
        sentences = sentences[sentences["study_id"].isin(studies.loc[studies["status"] == "ingested", "study_id"])]
    if sentences.empty:
        raise ValueError(f"{out} has no ingested sentences: run `offclip ingest` before training on it")
    unique = sentences.sort_values(["study_id", "index"], kind="stable").drop_duplicates("key")
    exclude = set(exclude_keys)
    eligible = unique[~unique["key"].isin(exclude)]
    h = np.array([_key_hash(k, CORPUS_SPLIT_SEED) for k in eligible["key"]], dtype=np.float64)
    held = eligible[h < holdout]
    rest = eligible[h >= holdout]
    order = np.argsort(h[h >= holdout], kind="stable")
    if limit is not None and len(rest) > limit:
        rest = rest.iloc[np.sort(order[: int(limit)])]
    counts = {
        "path": str(out.resolve()),
        "sentences": int(len(sentences)),
        "unique_sentences": int(len(unique)),
        "in_openi": int(len(unique) - len(eligible)),
        "eligible": int(len(eligible)),
        "heldout": int(len(held)),
        "train_added": int(len(rest)),
        "limit": None if limit is None else int(limit),
        "holdout_share": holdout,
    }
    return rest["text"].tolist(), held["text"].tolist(), counts


def _rules_version(labeler) -> str | None:
    version = getattr(labeler, "version", None)
    if version is None:
        from .. import labeler as labeler_mod

        version = getattr(labeler_mod, "RULES_VERSION", None)
    return version


def _add_corpus(corpus, sentences: Mapping[int, list[str]], labeler, corpus_limit: int | None, say):
    """The corpus's distinct sentences not in Open-I, rule-labelled: returns (train texts, their
    labels, held-out texts, their labels, the corpus's counts for the model card)."""
    from ..text import normalize_key

    openi_keys = {normalize_key(x) for v in sentences.values() for x in v}
    c_texts, held_texts, corpus_info = corpus_sentences(corpus, openi_keys, limit=corpus_limit)
    c_labels = [lab.label for lab in labeler.label_many(c_texts)]
    held_labels = [lab.label for lab in labeler.label_many(held_texts)]
    c_abn = sum(1 for x in c_labels if x == "abnormal")
    corpus_info.update(
        {
            "rule_abnormal": c_abn,
            "rule_normal": len(c_labels) - c_abn,
            "abnormal_share": (c_abn / len(c_labels)) if c_labels else None,
            "weighting": "each distinct sentence once, as Open-I's; no class rebalancing",
        }
    )
    say(
        f"corpus {corpus}: {corpus_info['unique_sentences']} distinct sentences, "
        f"{corpus_info['in_openi']} already in Open-I (left out), {corpus_info['heldout']} held out, "
        f"{len(c_texts)} added ({c_abn} abnormal / {len(c_texts) - c_abn} normal by the rules)"
    )
    return c_texts, c_labels, held_texts, held_labels, corpus_info


def _calibrate_on_dev(clf, reports, partition, sentences, say) -> tuple[float, float]:
    """Set the report-level threshold on the dev reports against MeSH; returns it and the dev
    balanced accuracy at it."""
    dev_table, _ = _report_table(clf, reports, partition, "dev", sentences, 128)
    dev_table = [(r, s, p) for r, s, p in dev_table if mesh_label(r) is not None and s]
    threshold, dev_ba = calibrate_threshold(
        [max(p) for _, _, p in dev_table], [mesh_label(r) == "abnormal" for r, _, _ in dev_table]
    )
    clf.threshold = threshold
    say(f"threshold {threshold:.4f} (dev report-level balanced accuracy {dev_ba:.4f})")
    return threshold, dev_ba


def _training_data(
    src, reports, partition, rules_version, train_occ: int, train_texts, n_abn: int, dev_texts, corpus_info, fit_texts
) -> dict[str, Any]:
    """The model card's account of the training data."""
    counts = {name: sum(1 for v in partition.values() if v == name) for name, _ in SPLIT_FRACTIONS}
    return {
        "source": f"Open-I (Indiana University Chest X-ray Collection) {src.reports_tgz.name}",
        "licence": "CC BY-NC-ND 4.0",
        "reports": len(reports),
        "partition": {
            "seed": OPENI_SPLIT_SEED,
            "fractions": dict(SPLIT_FRACTIONS),
            "reports": counts,
            "key": "blake2b(f'{seed}:{uid}')",
        },
        "text": "FINDINGS + IMPRESSION, split by offclip SentenceSplitter.split_many",
        "dedup": "normalize_key, per partition (first spelling kept)",
        "train_sentences": train_occ,
        "train_unique_sentences": len(train_texts),
        "train_rule_abnormal": n_abn,
        "train_rule_normal": len(train_texts) - n_abn,
        "dev_unique_sentences": len(dev_texts),
        "labels": f"RuleLabeler {rules_version} (MeSH never used for training)",
        "threshold_calibration": "dev reports, MeSH, max sentence P, max balanced accuracy",
        "corpus": corpus_info,
        "fit_unique_sentences": len(fit_texts),
    }


def train_from_openi(
    openi_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike = DEFAULT_OUT_DIR,
    method: str = DEFAULT_METHOD,
    seed: int = 0,
    *,
    labeler=None,
    head: str = DEFAULT_FROZEN_HEAD,
    epochs: int | None = None,
    lr: float | None = None,
    class_weight: str | None = None,
    num_threads: int | None = None,
    progress: Callable[[str], None] | None = print,
    corpus: str | os.PathLike | None = None,
    corpus_limit: int | None = DEFAULT_CORPUS_LIMIT,
) -> dict[str, Any]:
    """The offline step: Open-I → sentences → rule labels → classifier → evaluation → save.

    ``corpus`` (a curation output root where ingest has run): the distinct sentences of the
    corpus being curated join the training set with their rule labels
    (:func:`corpus_sentences`: sentences already in Open-I are left out, 10 % are held out to
    measure agreement with the rules on the corpus's own wording, at most ``corpus_limit`` are
    added). Every distinct sentence, Open-I's or the corpus's, counts once (no reweighting, no
    class rebalancing). Threshold calibration and the dev/test figures stay Open-I's, computed
    exactly as without a corpus.

    1. load the Open-I reports (:func:`offclip.pipeline.openi.find_sources`) and partition
       them (:func:`openi_partition`);
    2. split FINDINGS and IMPRESSION into sentences, dedup each partition by normalised key;
    3. label the distinct train (and dev) sentences with :class:`RuleLabeler` — MeSH is never
       used for training;
    4. train (:func:`train_classifier`; dev rule labels pick C / the epoch);
    5. calibrate the threshold on the dev reports against MeSH (:func:`calibrate_threshold`);
    6. evaluate on dev and test (:func:`evaluate_openi`), save with model card to ``out_dir``.

    Returns the metrics (test figures under ``"test"``) plus version, paths and timings.
    """
    from ..openi import find_sources, load_reports
    from ..text import SentenceSplitter

    say = progress or (lambda _m: None)
    t_all = time.perf_counter()
    src = find_sources(openi_dir)
    reports = load_reports(src.reports_tgz)
    partition = openi_partition([r.uid for r in reports])
    t0 = time.perf_counter()
    sentences = report_sentences(reports, SentenceSplitter())
    t_split = time.perf_counter() - t0
    by_split = {name: [sentences[r.uid] for r in reports if partition[r.uid] == name] for name, _ in SPLIT_FRACTIONS}
    train_texts, train_occ = _unique_by_key(by_split["train"])
    dev_texts, dev_occ = _unique_by_key(by_split["dev"])
    say(
        f"Open-I: {len(reports)} reports; train {len(by_split['train'])} reports, "
        f"{train_occ} sentences, {len(train_texts)} distinct; dev {len(dev_texts)} distinct"
    )

    if labeler is None:
        labeler = _default_labeler()
    t0 = time.perf_counter()
    train_labels = [lab.label for lab in labeler.label_many(train_texts)]
    dev_labels = [lab.label for lab in labeler.label_many(dev_texts)]
    t_label = time.perf_counter() - t0
    rules_version = _rules_version(labeler)
    n_abn = sum(1 for x in train_labels if x == "abnormal")
    say(
        f"rule labels ({rules_version}): {n_abn} abnormal / {len(train_labels) - n_abn} normal "
        f"distinct train sentences ({t_label:.1f}s)"
    )

    corpus_info = None
    fit_texts, fit_labels = list(train_texts), list(train_labels)
    held_texts: list[str] = []
    held_labels: list[str] = []
    if corpus is not None:
        c_texts, c_labels, held_texts, held_labels, corpus_info = _add_corpus(
            corpus, sentences, labeler, corpus_limit, say
        )
        fit_texts += c_texts
        fit_labels += c_labels

    t0 = time.perf_counter()
    clf = train_classifier(
        fit_texts,
        fit_labels,
        method=method,
        dev_texts=dev_texts,
        dev_labels=dev_labels,
        seed=seed,
        epochs=epochs,
        lr=lr,
        head=head,
        class_weight=class_weight,
        num_threads=num_threads,
        progress=say,
    )
    t_train = time.perf_counter() - t0
    say(f"trained {method} in {t_train:.0f}s")

    t0 = time.perf_counter()
    threshold, dev_ba = _calibrate_on_dev(clf, reports, partition, sentences, say)
    dev_metrics = evaluate_openi(clf, reports, partition, "dev", labeler=labeler, sentences=sentences)
    test_metrics = evaluate_openi(clf, reports, partition, "test", labeler=labeler, sentences=sentences)
    corpus_metrics = None
    if corpus_info is not None:
        corpus_metrics = {"split": "corpus held-out", **rule_agreement(clf, held_texts, held_labels)}
        say(f"corpus held-out agreement with the rules: {corpus_metrics}")
    t_eval = time.perf_counter() - t0

    clf.meta.update(
        {
            "rules_version": rules_version,
            "training_data": _training_data(
                src, reports, partition, rules_version, train_occ, train_texts, n_abn, dev_texts, corpus_info, fit_texts
            ),
            "metrics": {
                "dev_calibration_balanced_accuracy": dev_ba,
                "dev": dev_metrics,
                "test": test_metrics,
                **({"corpus_heldout": corpus_metrics} if corpus_metrics is not None else {}),
            },
        }
    )
    timings = {
        "split_s": round(t_split, 1),
        "label_s": round(t_label, 1),
        "train_s": round(t_train, 1),
        "calibrate_evaluate_s": round(t_eval, 1),
        "total_s": round(time.perf_counter() - t_all, 1),
    }  # before saving
    clf.meta["timings"] = timings
    clf.save(out_dir)
    say(f"saved {clf.version} to {out_dir}")
    return {
        "version": clf.version,
        "method": method,
        "out_dir": str(out_dir),
        "threshold": threshold,
        "rules_version": rules_version,
        "dev": dev_metrics,
        "test": test_metrics,
        "timings": timings,
        "fit": clf.meta.get("fit"),
        "corpus": corpus_info,
        "corpus_heldout": corpus_metrics,
    }

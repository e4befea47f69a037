"""The curation step after ingest: score sentences, filter, label pairs, optionally prompt.

Reads ``OUT/ingest/{studies,images,sentences}.parquet``, writes
``OUT/curate/{sentences,pairs}.parquet`` (contract-checked, atomic) and keeps the score cache in
``OUT/cache/sentence_scores.duckdb`` (and, with ``prompting="openai"``, the LLM's answers in
``OUT/cache/llm_rewrites.duckdb``: :mod:`offclip.pipeline.prompting`). When the LLM endpoint
fails for good, the answers obtained stay in that cache and nothing is written to ``OUT/curate``.

**Label source** (``CurateConfig.label_source``): ``classifier`` (the paper's, the default) labels
a pair abnormal when any sentence is; ``chexpert`` / ``negbio`` take the pair label from MIMIC's
``mimic-cxr-2.0.0-{chexpert,negbio}.csv[.gz]`` (the rule: :mod:`offclip.pipeline.labels`) while
the sentence filter stays the classifier's (:func:`~offclip.pipeline.filtering.filter_sentences`).
A study the labeler leaves unknown (not in its file, or nothing positive and No Finding blank)
**keeps the classifier's label**: counted (``CurateSummary.label_fallback``) and visible per pair
(``pairs.label_source`` = ``classifier``), so the set of pairs does not depend on the source.

**Sentence label policy** (``CurateConfig.label_policy``, :mod:`offclip.pipeline.filtering`):
every unique sentence gets the classifier's score *and* the rule labeler's label and rule (cached
per rules version beside the scores); ``cascade`` (the default) takes the rules' label where they
have an opinion and the classifier's where they find no finding word, so the filter's abnormal
recall is never below the rules' (the classifier's teacher); ``union`` calls a sentence
abnormal when either does; ``classifier`` and ``rules`` use one opinion. All three columns stay in
``sentences.parquet`` (the manifest's ``classifier_rule_disagreements`` view).

Whenever a label file is found in ``label_dirs`` (whatever the source), the three labels of every
curated study go to ``OUT/curate/study_labels.parquet`` (the manifest's ``label_agreement``
views); with no label file there, a stale copy is removed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from ..data_contracts.contract import Contract
from ..data_contracts.curate import CURATED_SENTENCES, PAIRS, STUDY_LABELS
from ..data_contracts.enums import ABNORMAL, CLASSIFIER, DEFAULT_LABEL_POLICY, NORMAL
from .atomic import atomic_open
from .filtering import check_label_policy, filter_sentences
from .ingest import read_table
from .labels import StudyLabels, check_label_source, study_labels
from .layout import CURATE_DIR, PROMPT_CACHE_FILE, SCORE_CACHE_FILE, curate_table
from .prompting import PromptBackendError, PromptCache, PromptingStats, make_prompter
from .scoring import Classifier, ScoreCache, ScoringStats, label_sentences, score_sentences


@dataclass
class CurateConfig:
    out: Path
    classifier: Path | None = None  #: a saved SentenceClassifier; None → pass `classifier=` to run
    threshold: float | None = None  #: None → the classifier's calibrated threshold
    prompting: str = "none"  #: none | template | openai
    #: openai: base_url, model, api_key, timeout, max_concurrency, max_retries, backoff, progress,
    #: cache (default OUT/cache/llm_rewrites.duckdb); see OpenAIPrompter
    prompt_options: dict = field(default_factory=dict)
    batch_size: int = 128
    label_source: str = CLASSIFIER  #: classifier | chexpert | negbio: where pair labels come from
    #: directories searched, in order, for mimic-cxr-2.0.0-{chexpert,negbio}.csv[.gz]
    label_dirs: list[Path] = field(default_factory=list)
    #: cascade | union | classifier | rules: how a sentence's label follows from the classifier and
    #: the rules (offclip.pipeline.filtering)
    label_policy: str = DEFAULT_LABEL_POLICY

    def __post_init__(self) -> None:
        # checked where the settings enter, so a build fails before a long ingest: an unknown label
        # source or policy, a labeler's missing file
        self.out = Path(self.out)
        self.label_dirs = [Path(d) for d in self.label_dirs]
        check_label_source(self.label_source, self.label_dirs)
        check_label_policy(self.label_policy)


@dataclass
class CurateSummary:
    pairs: int
    normal: int
    abnormal: int
    sentences: int
    kept: int
    dropped: int
    scoring: ScoringStats
    model_version: str
    threshold: float
    seconds: float
    label_source: str = CLASSIFIER
    #: pairs whose label came from the classifier because the labeler left the study unknown
    label_fallback: int = 0
    #: labeler → {normal, abnormal, unknown, absent} over the curated studies (label files found)
    labeler_counts: dict = field(default_factory=dict)
    #: labeler → share of studies (both labels known) where it agrees with the classifier
    agreement: dict = field(default_factory=dict)
    prompting: str = "none"
    #: the openai prompter's dedup / cache / retry figures (None for none and template)
    prompt_stats: PromptingStats | None = None
    label_policy: str = DEFAULT_LABEL_POLICY
    rules_version: str | None = None
    #: unique sentences: classifier × rules label counts ({"normal/abnormal": n}, classifier first)
    opinions: dict = field(default_factory=dict)
    #: unique sentences whose classifier and rule labels differ, and the reports they touch
    disagreements: int = 0
    disagreement_reports: int = 0

    def counts(self) -> dict:
        """The figures a run record keeps (the manifest's ``runs.counts``), by their names there."""
        prompt = self.prompt_stats
        prompt_counts = (
            {}
            if prompt is None
            else {
                "prompt_unique": prompt.unique,
                "prompt_cached": prompt.cached,
                "prompt_model_calls": prompt.model_calls,
                "prompt_retries": prompt.retries,
            }
        )
        return {
            **prompt_counts,
            "pairs": self.pairs,
            "normal": self.normal,
            "abnormal": self.abnormal,
            "sentences": self.sentences,
            "kept": self.kept,
            "dropped": self.dropped,
            "model_calls": self.scoring.model_calls,
            "unique_sentences": self.scoring.unique,
            "model_version": self.model_version,
            "threshold": self.threshold,
            "label_source": self.label_source,
            "label_fallback": self.label_fallback,
            "label_policy": self.label_policy,
            "classifier_rule_disagreements": self.disagreements,
            "classifier_rule_disagreement_reports": self.disagreement_reports,
        }

    def to_text(self) -> str:
        s = self.scoring
        text = (
            f"curate: {self.pairs} pairs — normal {self.normal}, abnormal {self.abnormal} "
            f"(classifier {self.model_version}, threshold {self.threshold:.3f})\n"
            f"  sentences {self.sentences}: kept {self.kept}, dropped {self.dropped} "
            f"(normal sentences of abnormal reports)\n"
            f"  unique {s.unique} · from cache {s.cached} · model calls {s.model_calls} · {self.seconds:.1f} s"
        )
        if self.opinions:
            o = self.opinions
            text += (
                f"\n  label policy {self.label_policy}; unique sentences classifier/rules ({self.rules_version}): "
                f"both abnormal {o.get('abnormal/abnormal', 0)}, both normal {o.get('normal/normal', 0)}, "
                f"classifier only {o.get('abnormal/normal', 0)}, rules only {o.get('normal/abnormal', 0)} "
                f"({self.disagreements} disagreements in {self.disagreement_reports} reports)"
            )
        if self.prompt_stats is not None:
            text += "\n  " + self.prompt_stats.to_text()
        elif self.prompting != "none":
            text += f"\n  prompting {self.prompting}"
        if self.label_source != CLASSIFIER:
            text += (
                f"\n  pair labels from {self.label_source}; {self.label_fallback} studies it leaves unknown "
                f"keep the classifier's label"
            )
        for labeler, c in self.labeler_counts.items():
            share = self.agreement.get(labeler)
            text += (
                f"\n  {labeler}: normal {c['normal']}, abnormal {c['abnormal']}, unknown {c['unknown']} "
                f"({c['absent']} not in the file); agrees with the classifier on "
                + (f"{100 * share:.1f} %" if share is not None else "n/a")
                + " of the studies both label"
            )
        return text


def _write(out: Path, name: str, contract: Contract, df: pd.DataFrame) -> None:
    table = contract.validate(df)
    with atomic_open(curate_table(out, name), "wb") as fh:
        pq.write_table(table, fh, compression="zstd")


def read_curated(out: Path, name: str) -> pd.DataFrame:
    return pq.read_table(curate_table(out, name)).to_pandas()


def run_curate(config: CurateConfig, classifier: Classifier | None = None) -> CurateSummary:
    start = time.perf_counter()
    out = Path(config.out)
    label_dirs = config.label_dirs  # checked by CurateConfig
    if classifier is None:
        if config.classifier is None:
            raise ValueError("no classifier: pass a saved classifier directory (offclip classifier train)")
        from .classifier import SentenceClassifier

        classifier = SentenceClassifier.load(config.classifier)
    threshold = classifier.threshold if config.threshold is None else float(config.threshold)

    studies = read_table(out, "studies")
    studies = studies[studies["status"] == "ingested"]
    sentences = read_table(out, "sentences")
    sentences = sentences[sentences["study_id"].isin(studies["study_id"])]
    if sentences.empty:
        raise ValueError(f"{out} has no ingested sentences: run `offclip ingest` first")

    with ScoreCache(out / SCORE_CACHE_FILE) as cache:
        scored, stats = score_sentences(sentences, classifier, cache, batch_size=config.batch_size)
        from .labeler import RuleLabeler

        scored, _ = label_sentences(scored, RuleLabeler(), cache)
    # the filter's report labels: abnormal when any sentence is (by the label policy); these are
    # "classifier_label" in study_labels, the label the CheXpert / NegBio labels are compared with
    classifier_labels = filter_sentences(scored, threshold, label_policy=config.label_policy)[1].set_index("study_id")[
        "pair_label"
    ]
    labels = study_labels(scored.drop_duplicates("study_id")[["study_id", "subject_id"]], label_dirs, classifier_labels)
    if config.label_source == CLASSIFIER:
        filtered, pairs = filter_sentences(scored, threshold, label_policy=config.label_policy)
        pairs["label_source"] = CLASSIFIER
        fallback = 0
    else:
        given = labels.frame.set_index("study_id")[f"{config.label_source}_label"]
        known = given.notna()
        fallback = int((~known).sum())
        filtered, pairs = filter_sentences(
            scored,
            threshold,
            given.where(known, classifier_labels.reindex(given.index)),
            label_policy=config.label_policy,
        )
        pairs["label_source"] = pairs["study_id"].map(known).map({True: config.label_source, False: CLASSIFIER})

    options = dict(config.prompt_options)
    if config.prompting == "openai":
        options.setdefault("cache", out / PROMPT_CACHE_FILE)
    prompter = make_prompter(config.prompting, **options)
    filtered["prompt"] = None
    if prompter is not None:
        kept = filtered["kept"].to_numpy()
        try:
            filtered.loc[kept, "prompt"] = prompter.rewrite(filtered.loc[kept, "text"].tolist())
        except PromptBackendError as exc:  # before any output is written: OUT/curate stays as it was
            raise PromptBackendError(f"{exc}; nothing was written to {out / CURATE_DIR}") from exc
        texts = filtered[kept].groupby("study_id")["prompt"].agg(list)
        pairs["texts"] = pairs["study_id"].map(texts)

    images = read_table(out, "images")
    selected = images[images["status"] == "selected"].set_index("study_id")
    info = studies.set_index("study_id")
    pairs["folder"] = pairs["study_id"].map(info["folder"])
    pairs["split"] = pairs["study_id"].map(info["split"])
    pairs["dicom_id"] = pairs["study_id"].map(selected["dicom_id"])
    pairs["view"] = pairs["study_id"].map(info["frontal_view"])
    pairs["image_path"] = pairs["study_id"].map(selected["out_path"])
    pairs["model_version"] = classifier.version
    pairs = pairs[PAIRS.names]

    _write(out, "sentences", CURATED_SENTENCES, filtered[CURATED_SENTENCES.names])
    unique = filtered.drop_duplicates("key")
    opinions = (unique["classifier_label"] + "/" + unique["rule_label"]).value_counts().to_dict()
    differ = filtered["classifier_label"] != filtered["rule_label"]
    _write(out, "pairs", PAIRS, pairs)
    _write_study_labels(out, labels)
    # the caches keep the text of the current corpus only: the old sentences of a study whose
    # report was edited, or that was rejected or purged since, go (docs/shards-and-manifest.md:
    # "Edited inputs, PHI and offclip purge")
    ScoreCache.prune(out / SCORE_CACHE_FILE, sentences["key"])
    prompt_cache = options.get("cache", out / PROMPT_CACHE_FILE)
    if isinstance(prompt_cache, (str, Path)):
        PromptCache.prune(prompt_cache, (" ".join(t.split()) for t in filtered.loc[filtered["kept"], "text"]))
    return CurateSummary(
        pairs=len(pairs),
        normal=int((pairs["pair_label"] == NORMAL).sum()),
        abnormal=int((pairs["pair_label"] == ABNORMAL).sum()),
        sentences=len(filtered),
        kept=int(filtered["kept"].sum()),
        dropped=int((~filtered["kept"]).sum()),
        scoring=stats,
        model_version=classifier.version,
        threshold=threshold,
        seconds=time.perf_counter() - start,
        label_source=config.label_source,
        label_fallback=fallback,
        labeler_counts={k: labels.counts(k) for k in labels.files},
        agreement={k: agreement(labels.frame, k) for k in labels.files},
        prompting=config.prompting,
        prompt_stats=getattr(prompter, "stats", None),
        label_policy=config.label_policy,
        rules_version=str(filtered["rules_version"].iloc[0]),
        opinions={k: int(v) for k, v in opinions.items()},
        disagreements=int(filtered.loc[differ, "key"].nunique()),
        disagreement_reports=int(filtered.loc[differ, "study_id"].nunique()),
    )


def agreement(frame: pd.DataFrame, labeler: str) -> float | None:
    """Share of the studies both label where ``labeler`` agrees with the classifier (None: none)."""
    both = frame[f"{labeler}_label"].notna() & frame["classifier_label"].notna()
    if not both.any():
        return None
    return float((frame.loc[both, f"{labeler}_label"] == frame.loc[both, "classifier_label"]).mean())


def _write_study_labels(out: Path, labels: StudyLabels) -> None:
    """``OUT/curate/study_labels.parquet`` when a label file was found; else remove a stale one."""
    if labels.files:
        _write(out, "study_labels", STUDY_LABELS, labels.frame[STUDY_LABELS.names])
    else:
        curate_table(out, "study_labels").unlink(missing_ok=True)

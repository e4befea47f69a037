"""Contracts of the curation step: scored, filtered sentences and image–text pairs."""

from __future__ import annotations

import pyarrow as pa

from .contract import Column, Contract
from .enums import (  # noqa: F401  (FILTER_REASONS, LABELS, LABEL_SOURCES, LABEL_POLICIES: imported from here too)
    FILTER_REASONS,
    FRONTAL_VIEWS,
    LABEL_POLICIES,
    LABEL_SOURCES,
    LABELS,
    NO_FINDING_VALUES,
    SPLITS,
)

#: One concept, two names. The version of the sentence classifier (``SentenceClassifier.version``)
#: that scored a sentence is ``model_version`` in the curated tables, the shards' completion records
#: and the manifest (the name its SQL users query), and ``classifier_version`` in each shard
#: sample's JSON (the name a reader of a shard sees beside the image). Neither is renamed: the
#: sample JSON's name is part of every shard's bytes and digest (renaming it rewrites every shard
#: and breaks readers of existing ones), the tables' is part of every manifest query. For one
#: sample the two are always equal (pipeline/shards.py writes one from the other; tested in
#: tests/test_parameter_names.py).
CLASSIFIER_VERSION_DOC = (
    "the sentence classifier's version (SentenceClassifier.version) that scored the text; "
    "a shard sample's JSON calls it classifier_version"
)

CURATED_SENTENCES = Contract(
    "curated_sentences",
    (
        Column("study_id", pa.int64()),
        Column("subject_id", pa.int64()),
        Column("index", pa.int32(), min=0),
        Column("section", pa.string()),
        Column("text", pa.string()),
        Column("key", pa.string()),
        Column("score", pa.float32(), min=0.0, max=1.0, doc="P(abnormal) from the classifier"),
        Column("label", pa.string(), isin=LABELS, doc="the sentence label the filter uses (label_policy)"),
        Column("classifier_label", pa.string(), isin=LABELS, doc="abnormal iff score >= threshold"),
        Column("rule_label", pa.string(), isin=LABELS, doc="the rule labeler's label (the classifier's teacher)"),
        Column(
            "rule", pa.string(), doc="the rule that decided rule_label (positive:pleural_effusion, negated_only, ...)"
        ),
        Column("rules_version", pa.string()),
        Column(
            "label_policy",
            pa.string(),
            isin=LABEL_POLICIES,
            doc="how label follows from classifier_label and rule_label (cascade: the rules, the classifier "
            "where the rules are silent; union: abnormal if either is)",
        ),
        Column("model_version", pa.string(), doc=CLASSIFIER_VERSION_DOC),
        Column("threshold", pa.float32(), min=0.0, max=1.0),
        Column("kept", pa.bool_()),
        Column("reason", pa.string(), isin=FILTER_REASONS),
        Column("prompt", pa.string(), nullable=True, doc="templated rewrite of a kept sentence (text prompting)"),
    ),
    keys=(("study_id", "index"),),
    doc="Every report sentence with its score, the classifier's and the rules' labels, the policy's label, "
    "model version, kept flag and the reason.",
)

PAIRS = Contract(
    "pairs",
    (
        Column("study_id", pa.int64(), unique=True),
        Column("subject_id", pa.int64()),
        Column("folder", pa.string(), pattern=r"p\d\d"),
        Column("split", pa.string(), isin=SPLITS),
        Column("dicom_id", pa.string()),
        Column("view", pa.string(), isin=FRONTAL_VIEWS, nullable=True),
        Column("image_path", pa.string(), doc="normalised image, relative to the output root"),
        Column("pair_label", pa.string(), isin=LABELS),
        Column("n_sentences", pa.int32(), min=1),
        Column("n_kept", pa.int32(), min=1),
        Column("max_score", pa.float32(), min=0.0, max=1.0),
        Column("texts", pa.list_(pa.string()), doc="kept sentences (prompts when prompting is on)"),
        Column("model_version", pa.string(), doc=CLASSIFIER_VERSION_DOC),
        Column("threshold", pa.float32(), min=0.0, max=1.0),
        Column(
            "label_source",
            pa.string(),
            isin=LABEL_SOURCES,
            doc="where pair_label came from: the classifier, or MIMIC's CheXpert / NegBio labels "
            "(curate --label-source; a study the labeler leaves unknown keeps the classifier's)",
        ),
    ),
    doc="One image–text pair per ingested study: the frontal image, the kept text, the pair label.",
)

STUDY_LABELS = Contract(
    "study_labels",
    (
        Column("study_id", pa.int64(), unique=True),
        Column("subject_id", pa.int64()),
        Column(
            "classifier_label",
            pa.string(),
            isin=LABELS,
            doc="the sentence filter's report label (abnormal iff a sentence is, by the label policy)",
        ),
        Column(
            "chexpert_label",
            pa.string(),
            isin=LABELS,
            nullable=True,
            doc="from mimic-cxr-2.0.0-chexpert.csv by the rule of pipeline/labels.py; NULL = unknown",
        ),
        Column(
            "chexpert_no_finding",
            pa.float32(),
            isin=NO_FINDING_VALUES,
            nullable=True,
            doc="the raw No Finding value (NULL: blank, or the study is not in the file)",
        ),
        Column(
            "negbio_label",
            pa.string(),
            isin=LABELS,
            nullable=True,
            doc="from mimic-cxr-2.0.0-negbio.csv, same rule; NULL = unknown",
        ),
        Column("negbio_no_finding", pa.float32(), isin=NO_FINDING_VALUES, nullable=True),
    ),
    doc="Per curated study: the classifier's report label beside MIMIC's CheXpert and NegBio labels "
    "(written whenever a label file is found, whatever the label source).",
)

"""The data contracts: clear errors on bad tables, and one definition of every enumeration.

Every enumerated value (reject reasons, filter reasons, labels, label policies and sources,
splits, views, …) and every table / JSON schema lives in ``data_contracts/``; the pipeline, the
models and the flows import them from there. These tests hold the code to that: the values a
stage can emit are the contract's, the names the pipeline exports *are* the contract's objects,
and no module outside ``data_contracts/`` spells an enumeration again.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from offclip.data_contracts import curate as curate_contracts
from offclip.data_contracts import enums
from offclip.data_contracts import ingest as ingest_contracts
from offclip.data_contracts import manifest as manifest_contracts
from offclip.data_contracts import shards as shard_contracts
from offclip.data_contracts.contract import Column, Contract, ContractViolation
from offclip.data_contracts.curate import CURATED_SENTENCES

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# errors: a bad table is refused with the table, the column, the rule and the rows
# ------------------------------------------------------------------------------------------
def _sentences(n: int = 6) -> pd.DataFrame:
    """A valid curated sentences table of ``n`` rows (two reports)."""
    abnormal = np.arange(n) % 3 == 0
    label = np.where(abnormal, enums.ABNORMAL, enums.NORMAL)
    return pd.DataFrame({
        "study_id": np.repeat([50_000_001, 50_000_002], [n // 2, n - n // 2]).astype("int64"),
        "subject_id": np.int64(10_000_001),
        "index": np.r_[np.arange(n // 2), np.arange(n - n // 2)].astype("int32"),
        "section": "findings", "text": [f"Sentence {i}." for i in range(n)],
        "key": [f"sentence {i}" for i in range(n)], "score": np.where(abnormal, 0.9, 0.1).astype("float32"),
        "label": label, "classifier_label": label, "rule_label": label, "rule": "negated_only",
        "rules_version": "r1", "label_policy": enums.DEFAULT_LABEL_POLICY, "model_version": "m1",
        "threshold": np.float32(0.5), "kept": ~abnormal | abnormal,
        "reason": np.where(abnormal, enums.KEEP_ABNORMAL, enums.KEEP_NORMAL_REPORT), "prompt": None,
    })


def test_the_valid_table_passes():
    table = CURATED_SENTENCES.validate(_sentences())
    assert table.schema == CURATED_SENTENCES.schema and table.num_rows == 6


def _violation(df: pd.DataFrame) -> ContractViolation:
    with pytest.raises(ContractViolation) as info:
        CURATED_SENTENCES.validate(df)
    return info.value


def test_wrong_dtype_names_the_column_the_type_and_the_rows():
    df = _sentences()
    df["index"] = df["index"].astype("float64")
    df.loc[4, "index"] = 1.5
    exc = _violation(df)
    assert (exc.table, exc.column, exc.rule, exc.rows) == ("curated_sentences", "index", "type int32", [4])
    assert str(exc).startswith("curated_sentences.index violates 'type int32' in 1 row(s): row 4: 1.5 (float64 column")
    # values that convert exactly are accepted, as before (the Arrow cast is safe)
    df.loc[4, "index"] = 1.0
    assert CURATED_SENTENCES.validate(df).column("index").to_pylist() == [0, 1, 2, 0, 1, 2]


def test_bad_enum_value_names_the_column_the_allowed_values_and_the_row():
    df = _sentences()
    df.loc[3, "reason"] = "dropped_for_fun"
    exc = _violation(df)
    assert (exc.column, exc.rows) == ("reason", [3])
    assert exc.rule == f"in {list(enums.FILTER_REASONS)}"
    assert str(exc) == (f"curated_sentences.reason violates 'in {list(enums.FILTER_REASONS)}' in 1 row(s): "
                        f"row 3: 'dropped_for_fun'")


def test_null_in_a_required_column():
    df = _sentences()
    df.loc[[1, 2], "text"] = None
    exc = _violation(df)
    assert (exc.column, exc.rule, exc.rows) == ("text", "not null", [1, 2])
    assert str(exc).startswith("curated_sentences.text violates 'not null' in 2 row(s): row 1:")


def test_duplicate_key():
    df = _sentences()
    df.loc[1, "index"] = 0
    exc = _violation(df)
    assert (exc.column, exc.rule, exc.rows) == ("study_id,index", "unique key", [1])
    assert str(exc) == "curated_sentences.study_id,index violates 'unique key' in 1 row(s): row 1: [50000001, 0]"


def test_missing_and_undeclared_columns():
    assert _violation(_sentences().drop(columns="rule")).rule == "column present"
    exc = _violation(_sentences().assign(patient_name="x"))
    assert (exc.column, exc.rule) == ("patient_name", "no undeclared columns")


def test_record_class_fields_follow_the_contract():
    contract = Contract("thing", (Column("a", pa.string()), Column("b", pa.list_(pa.int64()), default=list),
                                  Column("c", pa.string(), default="x")))
    cls = contract.record_class("Thing")
    one, two = cls("p"), cls(a="q")
    assert (one.a, one.b, one.c) == ("p", [], "x") and one.b is not two.b
    assert list(one.__dict__) == contract.names


# ------------------------------------------------------------------------------------------
# one definition: the pipeline's enumerations are the contracts'
# ------------------------------------------------------------------------------------------
def test_pipeline_names_are_the_contract_objects():
    from offclip.pipeline import classifier, filtering, images, labels, prompting, scan, shards

    assert filtering.LABEL_POLICIES is enums.LABEL_POLICIES
    assert filtering.DEFAULT_LABEL_POLICY is enums.DEFAULT_LABEL_POLICY
    assert (filtering.KEEP_NORMAL_REPORT, filtering.KEEP_ABNORMAL, filtering.DROP_NORMAL_IN_ABNORMAL,
            filtering.KEEP_NO_ABNORMAL_SENTENCE) == enums.FILTER_REASONS
    assert images.REJECT_REASONS is enums.IMAGE_REJECT_REASONS
    assert set(enums.IMAGE_REJECT_REASONS) <= set(enums.REJECT_REASONS)
    assert labels.LABEL_SOURCES is enums.LABEL_SOURCES and labels.LABELERS is enums.LABELERS
    assert labels.CLASSIFIER is enums.CLASSIFIER
    assert (labels.POSITIVE, labels.NEGATIVE, labels.UNCERTAIN) == enums.NO_FINDING_VALUES
    assert labels.LABEL_COLUMNS is enums.CHEXPERT_LABEL_COLUMNS and labels.NO_FINDING is enums.NO_FINDING
    assert classifier.LABELS is enums.LABELS  # the classifier's class index order
    assert prompting.PROMPTERS is enums.PROMPTERS
    assert scan.FRONTAL_VIEWS is enums.FRONTAL_VIEWS and scan.LATERAL_VIEWS is enums.LATERAL_VIEWS
    assert shards.SAMPLE_FIELDS is shard_contracts.SAMPLE_FIELDS
    assert shards.ShardConfig(out=Path(".")).splits is enums.SHARD_SPLITS
    assert [f.name for f in dataclasses.fields(shards.ShardRecord)] == shard_contracts.SHARD_RECORD.names


def test_models_names_are_the_contract_objects():
    from offclip.models import data, evaluate, train_config

    assert data.TEXT_SOURCES is enums.TEXT_SOURCES and train_config.TEXT_SOURCES is enums.TEXT_SOURCES
    assert evaluate.DATASETS is enums.EVAL_DATASETS
    assert evaluate.CHEXPERT_CLASSES is enums.CHEXPERT_OBSERVATIONS


def test_chexpert_observations_in_both_orders(shared_data):
    """One list of the 14 CheXpert observations: CheXpert's own order is the real CheXpert
    file's header; MIMIC's label files order the same 14 alphabetically; the rule labeler's
    categories are the same but No Finding, plus "Other Finding"."""
    import gzip

    from offclip.demo import reports, world
    from offclip.pipeline import labeler

    with gzip.open(shared_data / "labels" / "chexpert_train.csv.gz", "rt") as fh:
        header = fh.readline().strip().split(",")
    assert tuple(header[header.index("AP/PA") + 1:]) == enums.CHEXPERT_OBSERVATIONS
    assert enums.CHEXPERT_LABEL_COLUMNS[:3] == ("Atelectasis", "Cardiomegaly", "Consolidation")
    assert enums.CHEXPERT_LABEL_COLUMNS[8] == enums.NO_FINDING == enums.CHEXPERT_OBSERVATIONS[0]
    assert set(enums.CHEXPERT_LABEL_COLUMNS) == set(enums.CHEXPERT_OBSERVATIONS)
    assert reports.CHEXPERT_COLUMNS is enums.CHEXPERT_LABEL_COLUMNS and world.CHEXPERT_ORDER is enums.CHEXPERT_OBSERVATIONS
    assert labeler.CATEGORIES == enums.CHEXPERT_OBSERVATIONS[1:] + ("Other Finding",)


def test_compare_arms_are_losses_by_contract_text_sources():
    from offclip.models.compare import ARMS
    from offclip.models.losses import LOSSES

    assert {text for _, text, _ in ARMS.values()} == set(enums.TEXT_SOURCES)
    assert {loss for loss, _, _ in ARMS.values()} == set(LOSSES)


def test_contract_columns_check_the_enumerations():
    i, c, m, s = ingest_contracts, curate_contracts, manifest_contracts, shard_contracts
    expected = {
        (i.STUDIES, "split"): enums.SPLITS, (i.STUDIES, "frontal_view"): enums.FRONTAL_VIEWS,
        (i.STUDIES, "status"): enums.STUDY_STATUSES, (i.STUDIES, "reject_reason"): tuple(enums.REJECT_REASONS),
        (i.IMAGES, "view"): enums.VIEWS, (i.IMAGES, "view_source"): enums.VIEW_SOURCES,
        (i.IMAGES, "status"): enums.IMAGE_STATUSES, (i.REJECTS, "stage"): enums.REJECT_STAGES,
        (i.REJECTS, "entity"): enums.REJECT_ENTITIES, (i.REJECTS, "reason"): tuple(enums.REJECT_REASONS),
        (c.CURATED_SENTENCES, "label"): enums.LABELS, (c.CURATED_SENTENCES, "classifier_label"): enums.LABELS,
        (c.CURATED_SENTENCES, "rule_label"): enums.LABELS, (c.CURATED_SENTENCES, "reason"): enums.FILTER_REASONS,
        (c.CURATED_SENTENCES, "label_policy"): enums.LABEL_POLICIES, (c.PAIRS, "split"): enums.SPLITS,
        (c.PAIRS, "view"): enums.FRONTAL_VIEWS, (c.PAIRS, "pair_label"): enums.LABELS,
        (c.PAIRS, "label_source"): enums.LABEL_SOURCES, (c.STUDY_LABELS, "chexpert_label"): enums.LABELS,
        (c.STUDY_LABELS, "chexpert_no_finding"): enums.NO_FINDING_VALUES,
        (m.SHARDS, "split"): enums.SPLITS, (m.SAMPLES, "split"): enums.SPLITS,
        (s.SAMPLE, "split"): enums.SPLITS, (s.SAMPLE, "view"): enums.FRONTAL_VIEWS,
        (s.SAMPLE, "pair_label"): enums.LABELS, (s.SAMPLE_SENTENCE, "label"): enums.LABELS,
        (s.SAMPLE_SENTENCE, "reason"): enums.FILTER_REASONS, (s.SHARD_RECORD, "label_source"): enums.LABEL_SOURCES,
    }
    for (contract, column), values in expected.items():
        assert contract.column(column).isin == values, (contract.name, column)
    # the manifest's shards table takes its columns from the completion record
    for name in ("split", "name", "samples", "bytes", "sha256", "model_version"):
        assert m.SHARDS.column(name) is s.SHARD_RECORD.column(name)


def _calls(path: Path, name: str) -> list[ast.Call]:
    tree = ast.parse(path.read_text())
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and getattr(n.func, "id", getattr(n.func, "attr", None)) == name]


def _const(node) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def test_every_reject_a_stage_can_emit_is_in_the_contract():
    pipeline = ROOT / "pipeline"
    decoder = {_const(c.args[0]) for path in sorted((pipeline / "images").glob("*.py"))
               for c in _calls(path, "ImageReject")} - {None}
    assert decoder == set(enums.IMAGE_REJECT_REASONS)  # every decoder reason is raised somewhere, and only those
    stages, entities, reasons = set(), set(), set()
    for call in _calls(pipeline / "ingest.py", "reject"):
        stage, entity, reason = (_const(a) for a in call.args[:3])
        stages.add(stage), entities.add(entity), reasons.add(reason)
    reasons |= {_const(c.args[0]) for c in _calls(pipeline / "ingest.py", "finish") if c.args}
    tree = ast.parse((pipeline / "ingest.py").read_text())
    read_report = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_read_report")
    reasons |= {_const(r.value.elts[1]) for r in ast.walk(read_report)
                if isinstance(r, ast.Return) and isinstance(r.value, ast.Tuple)}
    scan_tree = ast.parse((pipeline / "scan.py").read_text())
    for d in (n for n in ast.walk(scan_tree) if isinstance(n, ast.Dict)):
        fields = {_const(k): _const(v) for k, v in zip(d.keys, d.values) if _const(k)}
        if "reason" in fields:
            stages.add(fields["stage"]), entities.add(fields["entity"]), reasons.add(fields["reason"])
    reasons.discard(None)  # `exc.reason` (the decoder's, above) and finish(None)
    stages.discard(None), entities.discard(None)
    assert stages and stages <= set(enums.REJECT_STAGES)
    assert entities and entities <= set(enums.REJECT_ENTITIES)
    assert reasons and reasons <= set(enums.REJECT_REASONS), reasons - set(enums.REJECT_REASONS)
    # every contract reason is emitted by some stage
    assert reasons | decoder == set(enums.REJECT_REASONS)


def test_every_filter_reason_and_label_the_filter_emits_is_in_the_contract():
    from offclip.pipeline.filtering import filter_sentences

    rng = np.random.default_rng(0)
    rows = [{"study_id": s, "subject_id": s, "index": i, "section": "findings", "text": f"t{s}.{i}",
             "key": f"k{s}.{i}", "score": float(rng.random()), "rule_label": rng.choice(enums.LABELS),
             "rule": "no_finding" if rng.random() < 0.3 else "negated_only", "rules_version": "r", "model_version": "m"}
            for s in range(60) for i in range(int(rng.integers(1, 6)))]
    scored = pd.DataFrame(rows)
    reasons, labels = set(), set()
    for policy in enums.LABEL_POLICIES:
        for given in (None, pd.Series(rng.choice(enums.LABELS, 60), index=range(60))):
            sentences, pairs = filter_sentences(scored, 0.5, given, label_policy=policy)
            reasons |= set(sentences["reason"])
            labels |= set(sentences["label"]) | set(sentences["classifier_label"]) | set(pairs["pair_label"])
            assert set(sentences["label_policy"]) == {policy}
    assert reasons == set(enums.FILTER_REASONS)
    assert labels == set(enums.LABELS)


def test_classify_view_emits_the_contract_views_and_sources():
    from offclip.pipeline.scan import classify_view

    seen = {classify_view(*fields) for fields in [
        ("PA",), ("LL",), ("OBLIQUE",), (), (None, "postero-anterior"), (None, None, "CHEST LAT"),
        (None, None, None, "CHEST PA"),
    ]}
    assert {v for v, _, _ in seen} == set(enums.VIEWS)
    assert {s for _, _, s in seen} == set(enums.VIEW_SOURCES)


def test_shard_sample_json_follows_its_contract():
    """A sample's JSON, as the shard writer makes it, validates as SAMPLE and SAMPLE_SENTENCE (the
    end-to-end build: tests/test_shards_manifest.py)."""
    from offclip.pipeline.shards import _sample

    sentences = [{"index": 0, "section": "findings", "text": "Small effusion.", "label": enums.ABNORMAL,
                  "score": 0.91, "kept": True, "reason": enums.KEEP_ABNORMAL},
                 {"index": 1, "section": "impression", "text": "No pneumothorax.", "label": enums.NORMAL,
                  "score": 0.05, "kept": False, "reason": enums.DROP_NORMAL_IN_ABNORMAL}]
    row = {"subject_id": 10000001, "study_id": 50000001, "dicom_id": "d1", "view": "PA", "split": "train",
           "folder": "p10", "pair_label": enums.ABNORMAL, "model_version": "m", "threshold": 0.5,
           "texts": ["Small effusion."]}
    image = {"out_rows": 64, "out_columns": 52, "transfer_syntax": "1.2.840.10008.1.2.1",
             "photometric": "MONOCHROME2", "bits_stored": 12}
    meta = json.loads(_sample(row, sentences, image)["json"])
    assert tuple(sorted(meta)) == tuple(sorted(shard_contracts.SAMPLE_FIELDS))
    shard_contracts.SAMPLE.validate(pd.DataFrame([meta]))
    shard_contracts.SAMPLE_SENTENCE.validate(pd.DataFrame(meta["sentences"]))


# ------------------------------------------------------------------------------------------
# no second definition: no module outside data_contracts/ spells an enumeration again
# ------------------------------------------------------------------------------------------
_ENUMS = {name: frozenset(v) for name, v in vars(enums).items()
          if name.isupper() and isinstance(v, (tuple, dict)) and len(v) >= 2}


def _literal_sets(tree: ast.AST):
    literal_slices = {id(n.slice) for n in ast.walk(tree) if isinstance(n, ast.Subscript)
                      and getattr(n.value, "id", None) == "Literal"}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and id(node) not in literal_slices:
            values = [_const(e) for e in node.elts]
            if None not in values:
                yield node.lineno, frozenset(values)


def test_no_enumeration_is_defined_twice():
    found = []
    for folder in ("pipeline", "demo", "models", "flows", "offclip", "data_contracts"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "enums.py" and path.parent.name == "data_contracts":
                continue
            for line, values in _literal_sets(ast.parse(path.read_text())):
                for name, enum in _ENUMS.items():
                    if values == enum:
                        found.append(f"{path.relative_to(ROOT)}:{line} spells data_contracts.enums.{name}")
    assert not found, "\n".join(found)

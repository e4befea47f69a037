"""Pair-label sources: MIMIC's CheXpert / NegBio labels beside the sentence classifier.

The rule on hand-made and real label values, curation with a labeler's pair labels (the filter
stays the classifier's), the classifier default unchanged, the manifest's agreement views, the
demo world's NegBio file, and clear errors."""

from __future__ import annotations

import filecmp
import gzip
import shutil

import numpy as np
import pandas as pd
import pytest

from offclip.data_contracts.enums import KEEP_NO_ABNORMAL_SENTENCE
from offclip.pipeline.curate import CurateConfig, read_curated, run_curate
from offclip.pipeline.filtering import filter_sentences
from offclip.pipeline.labels import (
    FINDING_COLUMNS,
    LABEL_COLUMNS,
    LabelFileError,
    check_label_source,
    find_label_file,
    read_label_file,
    study_labels,
)

CHEXPERT = "mimic-cxr-2.0.0-chexpert.csv"
NEGBIO = "mimic-cxr-2.0.0-negbio.csv"


def _expected(row: dict) -> str | None:
    """The documented rule, written out row by row (independent of the vectorised code)."""
    if row.get("No Finding") == 1.0:
        return "normal"
    if any(row.get(c) in (1.0, -1.0) for c in FINDING_COLUMNS):
        return "abnormal"
    return None


def _label_csv(path, rows: list[dict]) -> None:
    """A MIMIC label file: subject_id, study_id, the 14 columns (missing keys → blank)."""
    df = pd.DataFrame([{"subject_id": r.get("subject_id", 10000000), "study_id": r["study_id"],
                        **{c: r.get(c) for c in LABEL_COLUMNS}} for r in rows])
    df.to_csv(path, index=False, float_format="%.1f")


@pytest.fixture()
def clf(tiny_classifier):
    return tiny_classifier[0]


@pytest.fixture()
def curated_copy(curated, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(curated[0], out)
    return out


def test_the_rule_on_a_hand_made_csv(tmp_path):
    rows = [
        {"study_id": 1, "No Finding": 1.0},                                 # normal
        {"study_id": 2, "No Finding": 1.0, "Support Devices": 1.0},         # normal: devices beside No Finding
        {"study_id": 3, "Cardiomegaly": 1.0, "Pleural Effusion": 0.0},      # abnormal
        {"study_id": 4, "Edema": -1.0},                                     # uncertain → abnormal
        {"study_id": 5, "Pneumothorax": 0.0, "Pleural Effusion": 0.0},      # only negatives: unknown
        {"study_id": 6},                                                    # all blank: unknown
        {"study_id": 7, "Support Devices": 1.0},                            # a device, No Finding blank: abnormal
    ]
    _label_csv(tmp_path / CHEXPERT, rows)
    studies = pd.DataFrame({"study_id": [1, 2, 3, 4, 5, 6, 7, 8], "subject_id": 10000000})  # 8: not in the file
    labels = study_labels(studies, [tmp_path / "elsewhere", tmp_path])
    frame = labels.frame.set_index("study_id")
    assert frame["chexpert_label"].tolist() == ["normal", "normal", "abnormal", "abnormal", None, None, "abnormal", None]
    assert frame["chexpert_label"].tolist()[:7] == [_expected(r) for r in rows]
    assert frame.loc[1, "chexpert_no_finding"] == 1.0 and np.isnan(frame.loc[3, "chexpert_no_finding"])
    assert frame["negbio_label"].isna().all() and frame["classifier_label"].isna().all()  # no negbio file
    assert labels.files == {"chexpert": tmp_path / CHEXPERT} and labels.absent == {"chexpert": 1}
    assert labels.counts("chexpert") == {"normal": 2, "abnormal": 3, "unknown": 3, "absent": 1}

    # gzipped, as MIMIC-CXR-JPG ships it: found and read the same
    gz = tmp_path / "gz"
    gz.mkdir()
    with open(tmp_path / CHEXPERT, "rb") as src, gzip.open(gz / f"{CHEXPERT}.gz", "wb") as dst:
        dst.write(src.read())
    assert find_label_file("chexpert", [gz]) == gz / f"{CHEXPERT}.gz"
    pd.testing.assert_frame_equal(read_label_file(gz / f"{CHEXPERT}.gz"), read_label_file(tmp_path / CHEXPERT))

    # a value the files never hold: a clear error, naming the column
    _label_csv(tmp_path / "bad.csv", [{"study_id": 1, "Edema": 2.0}])
    with pytest.raises(ValueError, match="'Edema'"):
        read_label_file(tmp_path / "bad.csv")


def test_the_rule_on_real_chexpert_labeler_values(shared_data, tmp_path):
    """Real CheXpert-labeler output (Stanford's CheXpert train labels: the same 14 columns and
    values as MIMIC's file) rewritten in MIMIC's layout, read back through the gzipped path."""
    path = shared_data / "labels" / "chexpert_train.csv.gz"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    real = pd.read_csv(path, nrows=4000)
    mimic = real[list(LABEL_COLUMNS)].copy()
    mimic.insert(0, "study_id", 50000000 + np.arange(len(mimic)))
    mimic.insert(0, "subject_id", 10000000 + np.arange(len(mimic)) // 3)
    mimic.to_csv(tmp_path / f"{CHEXPERT}.gz", index=False, float_format="%.1f")
    labels = study_labels(mimic[["study_id", "subject_id"]], [tmp_path]).frame
    expected = [_expected({k: (None if pd.isna(v) else v) for k, v in r.items()}) for r in real.to_dict("records")]
    assert labels["chexpert_label"].tolist() == expected
    counts = pd.Series(expected).value_counts(dropna=False)
    assert counts["normal"] and counts["abnormal"] and counts[None]  # the real data hold all three


def test_curate_with_chexpert_labels(clf, curated, small_world, curated_copy):
    world, _ = small_world
    summary = run_curate(CurateConfig(out=curated_copy, label_source="chexpert",
                                      label_dirs=[world]), classifier=clf)
    pairs = read_curated(curated_copy, "pairs").set_index("study_id")
    sentences = read_curated(curated_copy, "sentences")
    csv = pd.read_csv(world / CHEXPERT).set_index("study_id")
    truth = {sid: _expected({k: (None if pd.isna(v) else v) for k, v in row.items()}) for sid, row in csv.iterrows()}
    classifier = sentences.groupby("study_id")["label"].agg(lambda s: "abnormal" if (s == "abnormal").any() else "normal")

    known = np.array([truth.get(s) is not None for s in pairs.index])
    assert known.any() and (~known).any()  # the demo world has both
    assert (pairs.loc[known, "pair_label"] == pairs.index[known].map(truth)).all()
    assert (pairs.loc[known, "label_source"] == "chexpert").all()
    # unknown to CheXpert: the classifier's label, counted
    assert (pairs.loc[~known, "label_source"] == "classifier").all()
    assert (pairs.loc[~known, "pair_label"] == classifier[pairs.index[~known]]).all()
    assert summary.label_fallback == int((~known).sum()) and summary.label_source == "chexpert"
    assert "pair labels from chexpert" in summary.to_text()
    # the filter stays the classifier's
    for study_id, group in sentences.groupby("study_id"):
        pair = pairs.loc[study_id]
        abnormal = group["label"] == "abnormal"
        if pair["pair_label"] == "normal" or not abnormal.any():
            assert group["kept"].all()
        else:
            assert (group["kept"] == abnormal).all()
        assert list(pair["texts"]) == group.sort_values("index").loc[group["kept"], "text"].tolist()
    # the agreement table is written beside
    table = pd.read_parquet(curated_copy / "curate" / "study_labels.parquet").set_index("study_id")
    assert table.index.equals(pairs.index.sort_values())
    assert (table["classifier_label"] == classifier[table.index]).all()
    assert [None if pd.isna(v) else v for v in table["chexpert_label"]] == [truth.get(s) for s in table.index]


def test_an_abnormal_label_the_classifier_finds_no_sentence_for_keeps_all(clf, curated, curated_copy, tmp_path):
    sentences = read_curated(curated[0], "sentences")
    has_abnormal = sentences.groupby("study_id")["label"].agg(lambda s: (s == "abnormal").any())
    normal = has_abnormal[~has_abnormal].index.tolist()
    assert normal, "the tiny classifier calls some reports normal"
    studies = sentences["study_id"].unique().tolist()
    # every study abnormal by the labeler (Edema positive)
    _label_csv(tmp_path / CHEXPERT, [{"study_id": s, "Edema": 1.0} for s in studies])
    run_curate(CurateConfig(out=curated_copy, label_source="chexpert", label_dirs=[tmp_path]), classifier=clf)
    pairs = read_curated(curated_copy, "pairs").set_index("study_id")
    filtered = read_curated(curated_copy, "sentences")
    assert (pairs["pair_label"] == "abnormal").all() and (pairs["label_source"] == "chexpert").all()
    mine = filtered[filtered["study_id"].isin(normal)]
    assert mine["kept"].all() and (mine["reason"] == KEEP_NO_ABNORMAL_SENTENCE).all()
    assert (pairs.loc[normal, "n_kept"] == pairs.loc[normal, "n_sentences"]).all()


def test_the_classifier_default_is_unchanged(clf, curated, small_world, curated_copy):
    world, _ = small_world
    summary = run_curate(CurateConfig(out=curated_copy, label_dirs=[world]), classifier=clf)
    # same records as the fixture's plain run (no label directories), byte for byte
    assert filecmp.cmp(curated_copy / "curate" / "sentences.parquet", curated[0] / "curate" / "sentences.parquet",
                       shallow=False)
    pd.testing.assert_frame_equal(read_curated(curated_copy, "pairs"), read_curated(curated[0], "pairs"))
    pairs = read_curated(curated_copy, "pairs")
    assert (pairs["label_source"] == "classifier").all() and summary.label_fallback == 0
    assert (summary.normal, summary.abnormal) == (curated[1].normal, curated[1].abnormal)
    assert not (curated[0] / "curate" / "study_labels.parquet").exists()  # the fixture had no label directory
    assert set(summary.labeler_counts) == {"chexpert", "negbio"} and "agrees with the classifier" in summary.to_text()
    # filter_sentences given the classifier's own labels = the classifier default
    scored = read_curated(curated[0], "sentences")[["study_id", "subject_id", "index", "text", "score"]]
    plain_s, plain_p = filter_sentences(scored, 0.5)
    own = plain_p.set_index("study_id")["pair_label"]
    given_s, given_p = filter_sentences(scored, 0.5, own)
    pd.testing.assert_frame_equal(plain_s, given_s)
    pd.testing.assert_frame_equal(plain_p, given_p)


def test_agreement_views_match_pandas(clf, curated, small_world, curated_copy):
    from offclip.pipeline.manifest import build_manifest, query, summary

    world, _ = small_world
    run_curate(CurateConfig(out=curated_copy, label_dirs=[world]), classifier=clf)
    db = build_manifest(curated_copy)
    table = pd.read_parquet(curated_copy / "curate" / "study_labels.parquet")
    assert table["negbio_label"].notna().any() and table["chexpert_label"].notna().any()

    per_study = query(db, "SELECT * FROM label_agreement").set_index("study_id")
    assert len(per_study) == len(table)
    for labeler in ("chexpert", "negbio"):
        flag = per_study[f"classifier_agrees_{labeler}"]
        known = table.set_index("study_id")[f"{labeler}_label"].notna()
        assert flag[~known].isna().all()
        expected = (table.set_index("study_id")["classifier_label"] == table.set_index("study_id")[f"{labeler}_label"])[known]
        assert (flag[known].astype(bool) == expected).all()

    view = query(db, "SELECT * FROM label_agreement_summary")
    for labeler in ("chexpert", "negbio"):
        cross = pd.crosstab(table["classifier_label"], table[f"{labeler}_label"].fillna("unknown"))
        rows = view[view["labeler"] == labeler].set_index("classifier_label")
        assert set(rows.index) == set(cross.index)
        for label in cross.index:
            for column in ("normal", "abnormal", "unknown"):
                want = int(cross.loc[label, column]) if column in cross.columns else 0
                assert rows.loc[label, f"labeler_{column}"] == want, (labeler, label, column)
            assert rows.loc[label, "studies"] == int(cross.loc[label].sum())
        both = table[table[f"{labeler}_label"].notna()]
        share = 100 * (both["classifier_label"] == both[f"{labeler}_label"]).mean()
        assert rows["agreement_percent"].nunique() == 1 and rows["agreement_percent"].iloc[0] == round(share, 1)
    assert "label agreement" in summary(db)

    # without the label files: the manifest still builds, the views are there and empty
    bare = build_manifest(curated[0], db=curated_copy / "bare.duckdb")
    assert query(bare, "SELECT count(*) AS n FROM label_agreement")["n"][0] == 0
    assert query(bare, "SELECT count(*) AS n FROM label_agreement_summary")["n"][0] == 0
    assert "label agreement" not in summary(bare)


def test_a_missing_label_file_is_a_clear_error(clf, curated, curated_copy, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    before = (curated_copy / "curate" / "pairs.parquet").read_bytes()
    with pytest.raises(LabelFileError, match=rf"{NEGBIO}.*{empty}"):
        run_curate(CurateConfig(out=curated_copy, label_source="negbio", label_dirs=[empty]), classifier=clf)
    assert (curated_copy / "curate" / "pairs.parquet").read_bytes() == before  # nothing written
    with pytest.raises(ValueError, match="label source must be one of"):
        check_label_source("radgraph", [empty])

    from typer.testing import CliRunner

    from offclip.cli import app

    result = CliRunner().invoke(app, ["curate", str(curated_copy), "--classifier", str(tmp_path / "none"),
                                      "--label-source", "chexpert", "--label-dir", str(empty)])
    assert result.exit_code == 2 and CHEXPERT in result.output and str(empty) in result.output


def test_demo_world_negbio_differs_from_chexpert_on_hedges_only(small_world):
    world, _ = small_world
    chexpert, negbio = read_label_file(world / CHEXPERT), read_label_file(world / NEGBIO)
    assert list(pd.read_csv(world / NEGBIO, nrows=0).columns) == list(pd.read_csv(world / CHEXPERT, nrows=0).columns)
    assert chexpert["study_id"].tolist() == negbio["study_id"].tolist()
    differs = (chexpert.fillna(9) != negbio.fillna(9)).any(axis=1)
    assert differs.any(), "the two labelers disagree somewhere"
    hedged = (chexpert[list(FINDING_COLUMNS)] == -1.0).any(axis=1)
    assert not (differs & ~hedged).any()
    # NegBio only turns hedges into negations, never adds a finding
    assert ((negbio[list(FINDING_COLUMNS)] == -1.0) <= (chexpert[list(FINDING_COLUMNS)] == -1.0)).all().all()


def test_shards_refuse_labels_from_another_source(clf, curated, small_world, curated_copy):
    from offclip.pipeline.shards import ShardConfig, ShardError, complete_shards, write_shards

    world, _ = small_world
    write_shards(ShardConfig(out=curated_copy, max_samples=8))
    assert {r.label_source for r in complete_shards(curated_copy, "train")} == {"classifier"}
    run_curate(CurateConfig(out=curated_copy, label_source="chexpert", label_dirs=[world]), classifier=clf)
    with pytest.raises(ShardError, match="chexpert"):
        write_shards(ShardConfig(out=curated_copy, max_samples=8))


def test_label_source_is_a_build_parameter():
    import inspect

    from typer.testing import CliRunner

    from offclip.cli import app
    from offclip.flows.build import build_shards

    assert inspect.signature(build_shards.fn).parameters["label_source"].default == "classifier"
    for command in ("build-shards", "curate"):
        assert "--label-source" in CliRunner().invoke(app, [command, "--help"], terminal_width=200).output


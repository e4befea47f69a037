"""The ingest stage on a small demo world with every fault: selection, views, rejects, records,
incremental re-runs, and the data contracts."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from offclip.data_contracts.contract import ContractViolation
from offclip.data_contracts.ingest import REJECT_REASONS, STUDIES
from offclip.pipeline.executor import ProcessExecutor, make_executor
from offclip.pipeline.images import NormalizeConfig
from offclip.pipeline.ingest import (
    IngestConfig,
    IngestStage,
    plan_ingest,
    read_table,
    run_ingest,
    write_table,
)
from offclip.pipeline.scan import ScanConfig, classify_view, scan_source


def scan(config: ScanConfig) -> list:
    return scan_source(config).studies

FAULT_REASON = {
    "truncated_dicom": "truncated",
    "dicom_without_pixels": "no_pixel_data",
    "not_dicom": "not_dicom",
    "empty_report": "empty_report",
    "non_utf8_report": "report_not_utf8",
    "lateral_only": "no_frontal",
    "no_report": "no_report",
    "missing_file": "missing_file",
}


def _truth(world: Path, name: str) -> list[dict]:
    with open(world / "offclip_demo" / name, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def ingested(small_world, tmp_path_factory):
    world, _ = small_world
    out = tmp_path_factory.mktemp("ingest")
    config = IngestConfig(source=world, out=out, scan=ScanConfig(world, folders=None),
                          normalize=NormalizeConfig(long_side=128), batch_size=8, workers=2, progress=False)
    summary = run_ingest(config)
    return world, out, summary


def test_pool_workers_return_the_in_process_records(small_world, tmp_path):
    """The thread runner's executor (a process pool from the fork server, a batch cut into a
    chunk per worker): each batch's records, pickled back from the workers and merged, equal the
    same batch ingested in this process (and the images are written)."""
    world, _ = small_world
    normalize = NormalizeConfig(long_side=64)
    config = IngestConfig(source=world, out=tmp_path / "pool", scan=ScanConfig(world, folders=None),
                          normalize=normalize, batch_size=8)
    plan = plan_ingest(config)
    batches = plan.batches[:3]
    with make_executor(IngestStage(world, tmp_path / "pool", normalize), 2, from_threads=True) as pool:
        assert isinstance(pool, ProcessExecutor)
        pooled = [pool.process(batch, {}) for batch in batches]
    stage = IngestStage(world, tmp_path / "here", normalize)
    for batch, got in zip(batches, pooled):
        want = stage.process_batch(batch, {})
        assert got.rejects == want.rejects and got.sentences == want.sentences and got.images == want.images
        assert got.studies == want.studies and len(got.studies) == len(batch)
        for row in got.images:
            if row["out_path"]:
                assert (tmp_path / "pool" / row["out_path"]).read_bytes() == (tmp_path / "here" / row["out_path"]).read_bytes()


def test_every_fault_is_a_reject_with_its_reason(ingested):
    world, out, summary = ingested
    faults = json.loads((world / "faults.json").read_text())
    rejects = read_table(out, "rejects")
    studies = read_table(out, "studies").set_index("study_id")
    for fault in faults:
        reason = FAULT_REASON[fault["fault"]]
        mine = rejects[rejects["study_id"] == fault["study_id"]]
        assert reason in set(mine["reason"]), (fault, mine.to_dict("records"))
        assert studies.loc[fault["study_id"], "status"] == "rejected"
        if fault["dicom_id"] and fault["fault"] != "lateral_only":
            row = mine[mine["dicom_id"] == fault["dicom_id"]]
            assert list(row["reason"]) == [reason]
    assert set(rejects["reason"]) <= set(REJECT_REASONS)
    assert (rejects["message"].str.len() > 10).all()
    assert summary.studies == 40 and summary.rejected >= len(faults)
    assert summary.ingested + summary.rejected == summary.studies


def test_selected_images_are_real_frontals(ingested):
    world, out, summary = ingested
    truth = {r["dicom_id"]: r for r in _truth(world, "images.csv")}
    images = read_table(out, "images")
    studies = read_table(out, "studies")
    selected = images[images["status"] == "selected"]
    assert len(selected) == (studies["status"] == "ingested").sum() == summary.images
    assert set(selected["study_id"]) == set(studies.loc[studies["status"] == "ingested", "study_id"])
    for row in selected.itertuples():
        assert truth[row.dicom_id]["view_kind"] == "frontal"
        assert truth[row.dicom_id]["transfer_syntax"]  # decoded whatever the syntax
        img = Image.open(out / row.out_path)
        assert max(img.size) == 128 and img.size == (row.out_columns, row.out_rows)
        assert (row.rows, row.columns) == (int(truth[row.dicom_id]["rows"]), int(truth[row.dicom_id]["columns"]))
    # views told only by ViewCodeSequence / AcquisitionDeviceProcessingDescription are classified right
    for row in images.itertuples():
        t = truth.get(row.dicom_id)
        if t and row.view != "unknown":
            assert row.view == t["view_kind"], (row, t)
    assert {"ViewPosition", "ViewCodeSequence"} <= set(images["view_source"])


def test_sentences_records(ingested):
    world, out, _ = ingested
    sentences = read_table(out, "sentences")
    studies = read_table(out, "studies")
    ok = studies[studies["status"] == "ingested"]
    counts = sentences.groupby("study_id").size()
    assert (counts.reindex(ok["study_id"]).to_numpy() == ok["n_sentences"].to_numpy()).all()
    for study_id, group in sentences.groupby("study_id"):
        assert list(group["index"]) == list(range(len(group)))
        folder = f"p{str(group['subject_id'].iloc[0])[:2]}"
        text = (world / "files" / folder / f"p{group['subject_id'].iloc[0]}" / f"s{study_id}.txt").read_text()
        for s in group.itertuples():
            assert " ".join(text[s.start:s.end].split()).endswith(s.text[-5:])
    assert set(sentences["section"]) <= {"findings", "impression", "findings_impression", "addendum", "last_paragraph", "comparison", "custom", "other"}
    assert (sentences["key"] == sentences["key"].str.lower()).all()


def test_folder_and_split_filters(small_world):
    world, _ = small_world
    everything = scan(ScanConfig(world, folders=None))
    paper = scan(ScanConfig(world))  # default p10–p16
    assert {s.folder for s in paper} <= {f"p{i}" for i in range(10, 17)}
    assert len(paper) == sum(s.folder in {f"p{i}" for i in range(10, 17)} for s in everything) < len(everything)
    train = scan(ScanConfig(world, folders=None, splits=("train",)))
    assert {s.split for s in train} == {"train"} and 0 < len(train) < len(everything)


def test_frontal_choice_is_seeded_and_prefers_pa_when_asked(small_world):
    world, _ = small_world
    a = scan(ScanConfig(world, folders=None, seed=1))
    b = scan(ScanConfig(world, folders=None, seed=1))
    assert [s.frontal_order for s in a] == [s.frontal_order for s in b]
    for study in scan(ScanConfig(world, folders=None, prefer_pa=True)):
        views = {i.dicom_id: i.view_position for i in study.images}
        if "PA" in [views[d] for d in study.frontal_order]:
            assert views[study.frontal_order[0]] == "PA"
    multi = [s for s in a if len(s.frontal_order) > 1]
    if multi:  # with several frontals, some seed picks differently
        picks = {tuple(s.frontal_order[0] for s in scan(ScanConfig(world, folders=None, seed=k)) if len(s.frontal_order) > 1)
                 for k in range(8)}
        assert len(picks) > 1


def test_tree_scan_without_metadata_finds_the_same_studies(small_world, tmp_path):
    world, _ = small_world
    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    (copy / "mimic-cxr-2.0.0-metadata.csv").unlink()
    with_csv = scan(ScanConfig(world, folders=None))
    from_tree = scan(ScanConfig(copy, folders=None))
    # the metadata row of the missing file has no file to find; everything else is the same
    assert [s.study_id for s in with_csv] == [s.study_id for s in from_tree]
    a = {i.dicom_id: i.view for s in with_csv for i in s.images if i.exists}
    b = {i.dicom_id: i.view for s in from_tree for i in s.images}
    agree = [d for d in a if a[d] != "unknown" and b.get(d) != "unknown"]
    assert agree and all(a[d] == b[d] for d in agree)


def test_incremental_run_skips_unchanged_studies(small_world, tmp_path):
    world, _ = small_world
    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    config = IngestConfig(source=copy, out=tmp_path / "out", scan=ScanConfig(copy, folders=None),
                          normalize=NormalizeConfig(long_side=64), workers=1, progress=False)
    first = run_ingest(config)
    second = run_ingest(config)
    assert second.skipped == first.ingested and second.images == 0
    pd.testing.assert_frame_equal(read_table(tmp_path / "out", "sentences"), read_table(tmp_path / "out", "sentences"))
    studies = read_table(tmp_path / "out", "studies")
    one = studies[studies["status"] == "ingested"].iloc[0]
    report = copy / one["report_path"]
    report.write_text(report.read_text() + " \n ADDENDUM:\n \n New small left pleural effusion.\n")
    third = run_ingest(config)
    assert third.skipped == first.ingested - 1 and third.images == 1
    sentences = read_table(tmp_path / "out", "sentences")
    assert "New small left pleural effusion." in set(sentences.loc[sentences["study_id"] == one["study_id"], "text"])
    assert len(read_table(tmp_path / "out", "studies")) == len(studies)  # replaced, not duplicated


@pytest.mark.parametrize(
    "fields, expected",
    [
        (dict(view_position="PA"), ("frontal", "PA", "ViewPosition")),
        (dict(view_position="LL"), ("lateral", "LL", "ViewPosition")),
        (dict(view_code_meaning="antero-posterior"), ("frontal", "AP", "ViewCodeSequence")),
        (dict(device_description="CHEST LAT"), ("lateral", "LATERAL", "AcquisitionDeviceProcessingDescription")),
        (dict(procedure="CHEST (PORTABLE AP)"), ("frontal", "AP", "PerformedProcedureStepDescription")),
        (dict(procedure="CHEST (PA AND LAT)"), ("unknown", None, "none")),
        (dict(), ("unknown", None, "none")),
    ],
)
def test_classify_view_fallbacks(fields, expected):
    assert classify_view(**fields) == expected


def test_contract_violation_names_column_and_rows(tmp_path):
    good = pd.DataFrame([{"subject_id": 10000001, "study_id": 50000001, "folder": "p10", "split": "train",
                          "report_path": None, "n_images": 1, "n_frontal": 1, "frontal_dicom_id": "a",
                          "frontal_view": "PA", "n_sentences": 2, "status": "ingested", "reject_reason": None,
                          "content_hash": "x"}])
    write_table(tmp_path, "studies", good)
    bad = pd.concat([good, good.assign(study_id=50000002, split="training")], ignore_index=True)
    with pytest.raises(ContractViolation, match=r"studies\.split .*row 1: 'training'"):
        write_table(tmp_path, "studies", bad)
    dup = pd.concat([good, good], ignore_index=True)
    with pytest.raises(ContractViolation, match="study_id.*unique"):
        STUDIES.validate(dup)
    # the refused write left the previous file intact
    assert len(read_table(tmp_path, "studies")) == 1


def test_ingest_cli(small_world, tmp_path):
    import subprocess
    import sys

    world, _ = small_world
    run = subprocess.run([sys.executable, "-m", "offclip.cli", "ingest", str(world), str(tmp_path / "o"),
                          "--folders", "p10-p13", "--image-size", "64", "--workers", "1", "--quiet"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    studies = read_table(tmp_path / "o", "studies")
    assert set(studies["folder"]) <= {"p10", "p11", "p12", "p13"} and len(studies) > 0
    assert f"studies {len(studies)}" in run.stdout and "rejects" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "offclip.cli", "ingest", str(tmp_path), str(tmp_path / "o2")],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "not a MIMIC-CXR layout" in bad.stderr


# ------------------------------------------------------------------------------------------
# decode or reject, never guess (issue 26 point 2): the metadata's Rows/Columns, header-scan errors
# ------------------------------------------------------------------------------------------
def test_header_disagreeing_with_the_metadata_is_rejected_and_the_next_frontal_tried(small_world, tmp_path):
    """A frontal DICOM rewritten with Rows and Columns swapped (native, same pixel data length: it
    used to enter the outputs as sheared noise): a ``metadata_mismatch`` reject naming the file,
    and the study's next frontal image is the one ingested."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian

    world, _ = small_world
    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    studies = scan(ScanConfig(copy, folders=None))
    study, frontal = next((s, i) for s in studies for i in s.images if s.report_path and len(s.frontal_order) == 1
                          and i.dicom_id == s.frontal_order[0] and i.rows and i.columns and i.rows != i.columns)
    # a second frontal image for the study: the same file under another dicom_id, with its metadata row
    twin = frontal.dicom_id[:-1] + ("0" if frontal.dicom_id[-1] != "0" else "1")
    shutil.copy(copy / frontal.path, copy / frontal.path.replace(frontal.dicom_id, twin))
    metadata = pd.read_csv(copy / "mimic-cxr-2.0.0-metadata.csv", dtype=str, keep_default_na=False)
    row = metadata[metadata["dicom_id"] == frontal.dicom_id].assign(dicom_id=twin)
    pd.concat([metadata, row]).to_csv(copy / "mimic-cxr-2.0.0-metadata.csv", index=False)
    studies = scan(ScanConfig(copy, folders=None))
    study = next(s for s in studies if s.study_id == study.study_id)
    assert len(study.frontal_order) == 2
    first = next(i for i in study.images if i.dicom_id == study.frontal_order[0])
    ds = pydicom.dcmread(copy / first.path)
    pixels = ds.pixel_array
    assert (first.rows, first.columns) == pixels.shape and first.rows != first.columns
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = np.ascontiguousarray(pixels, dtype="<u2" if ds.BitsAllocated == 16 else np.uint8).tobytes()
    ds["PixelData"].VR = "OW" if ds.BitsAllocated == 16 else "OB"
    ds.Rows, ds.Columns = pixels.shape[1], pixels.shape[0]
    ds.save_as(copy / first.path, enforce_file_format=True)

    result = IngestStage(copy, tmp_path / "out", NormalizeConfig(long_side=64)).process_batch([study], {})
    (row,) = [r for r in result.rejects if r["dicom_id"] == first.dicom_id]
    assert row["reason"] == "metadata_mismatch" and first.path in row["message"]
    assert f"{first.rows}x{first.columns}" in row["message"] and "swapped" in row["message"]
    (studied,) = result.studies
    assert studied["status"] == "ingested" and studied["frontal_dicom_id"] == study.frontal_order[1]
    statuses = {r["dicom_id"]: r["status"] for r in result.images}
    assert statuses[first.dicom_id] == "rejected" and statuses[study.frontal_order[1]] == "selected"


@pytest.mark.parametrize("content,reason", [(b"", "truncated"), (b"Findings: none.\n" * 64, "not_dicom")])
def test_unreadable_header_in_the_view_scan_is_a_reject_naming_the_file(small_world, tmp_path, content, reason):
    """No metadata CSV: views come from the DICOM headers. A study's only frontal image emptied
    (or overwritten with text) used to leave a bare ``no_frontal`` that never named the file; now
    the image is a reject with its reason and its path, and the study's no_frontal names it."""
    world, _ = small_world
    copy = tmp_path / "w"
    shutil.copytree(world, copy)
    (copy / "mimic-cxr-2.0.0-metadata.csv").unlink()
    study = next(s for s in scan(ScanConfig(copy, folders=None)) if len(s.frontal_order) == 1 and s.report_path)
    image = next(i for i in study.images if i.dicom_id == study.frontal_order[0])
    (copy / image.path).write_bytes(content)

    (again,) = [s for s in scan(ScanConfig(copy, folders=None)) if s.study_id == study.study_id]
    assert again.frontal_order == []
    result = IngestStage(copy, tmp_path / "out", NormalizeConfig(long_side=64)).process_batch([again], {})
    (row,) = [r for r in result.rejects if r["dicom_id"] == image.dicom_id]
    assert (row["stage"], row["entity"], row["reason"], row["path"]) == ("scan", "image", reason, image.path)
    assert image.path in row["message"]
    (study_reject,) = [r for r in result.rejects if r["entity"] == "study"]
    assert study_reject["reason"] == "no_frontal" and image.path in study_reject["message"]
    assert result.studies[0]["status"] == "rejected"
    assert {r["dicom_id"]: r["status"] for r in result.images}[image.dicom_id] == "rejected"

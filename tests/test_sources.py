"""Every form of MIMIC-CXR read in place: the DICOM release (tree, record lists, metadata kept
apart), MIMIC-CXR-JPG with its reports in a zip or tar.gz; mismatches; the incremental re-run
that reads nothing but the reports. Real demo worlds in each form, real files, real ingest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from offclip.pipeline import scan as scan_mod
from offclip.demo.world import WorldConfig, build_world
from offclip.pipeline.images import NormalizeConfig
from offclip.pipeline.ingest import IngestConfig, plan_ingest, read_table, run_ingest
from offclip.pipeline.scan import ScanConfig, scan_source
from offclip.pipeline.sources import SourceError, resolve_source

WORLD = dict(studies=40, seed=7, scale=0.08, faults=True, workers=2, progress=False)


@pytest.fixture(scope="module")
def worlds(tmp_path_factory, openi_dir, small_world):
    """The same world (the session's small one: 40 studies, seed 7, faults) in three more forms."""
    root = tmp_path_factory.mktemp("forms")
    forms = {"dicom-tree": small_world[0]}
    for name, kw in {"jpg-zip": dict(layout="jpg", reports_archive="zip"),
                     "dicom-tgz-separate": dict(reports_archive="tgz", metadata_csvs="separate")}.items():
        build_world(WorldConfig(out=root / name, openi=openi_dir, **WORLD, **kw))
        forms[name] = root / name
    return forms


def _ingest(source: Path, out: Path, **scan_kw):
    return run_ingest(IngestConfig(source=source, out=out, workers=1, progress=False,
                                   normalize=NormalizeConfig(long_side=64),
                                   scan=ScanConfig(source, folders=None, **scan_kw)))


def test_the_forms_are_laid_out_as_the_releases(worlds):
    jpg, dicom = worlds["jpg-zip"], worlds["dicom-tree"]
    assert not list((jpg / "files").rglob("*.txt")) and not list((jpg / "files").rglob("*.dcm"))
    assert list((jpg / "files").rglob("*.jpg")) and (jpg / "mimic-cxr-reports.zip").is_file()
    assert (jpg / "mimic-cxr-2.0.0-metadata.csv.gz").is_file() and not (jpg / "mimic-cxr-2.0.0-metadata.csv").exists()
    records = pd.read_csv(dicom / "cxr-record-list.csv.gz")
    assert list(records.columns) == ["subject_id", "study_id", "dicom_id", "path"]
    assert sum(not (dicom / p).is_file() for p in records["path"]) == 1  # the missing_file fault
    meta = pd.read_csv(dicom / "mimic-cxr-2.0.0-metadata.csv")
    assert set(records["dicom_id"]) == set(meta["dicom_id"])  # the same images, told two ways
    separate = worlds["dicom-tgz-separate"]
    assert (separate / "metadata" / "mimic-cxr-2.0.0-metadata.csv").is_file()
    assert not list(separate.glob("mimic-cxr-2.0.0-*")) and (separate / "mimic-cxr-reports.tar.gz").is_file()


def test_jpg_root_with_a_reports_zip_ingests_the_same_reports(worlds, tmp_path):
    tree = _ingest(worlds["dicom-tree"], tmp_path / "tree")
    jpg = _ingest(worlds["jpg-zip"], tmp_path / "jpg")
    a = read_table(tmp_path / "tree", "studies").set_index("study_id")
    b = read_table(tmp_path / "jpg", "studies").set_index("study_id")
    assert a.index.equals(b.index)
    # the same studies are ingested (the three image faults fail in both forms, for their own
    # reasons), except where only a DICOM header told the view: a JPG has none, so its study
    # has no frontal image it can know of (real MIMIC-CXR-JPG users meet the same)
    differ = a.index[a["status"] != b["status"]]
    assert (b.loc[differ, "reject_reason"] == "no_frontal").all() and len(differ) < len(a) // 4
    dicom_images = read_table(tmp_path / "tree", "images").set_index("dicom_id")
    header_only = dicom_images.loc[a.loc[differ, "frontal_dicom_id"], "view_source"]
    assert (header_only == "AcquisitionDeviceProcessingDescription").all()
    a, b = a.drop(differ), b.drop(differ)
    assert (a["status"] == b["status"]).all()
    assert b.loc[b["status"] == "ingested", "report_path"].str.contains(r"mimic-cxr-reports\.zip!files/p1\d/").all()
    cols = ["study_id", "index", "section", "text", "key"]
    tree_sentences = read_table(tmp_path / "tree", "sentences")
    pd.testing.assert_frame_equal(tree_sentences[~tree_sentences["study_id"].isin(differ)][cols].reset_index(drop=True),
                                  read_table(tmp_path / "jpg", "sentences")[cols])
    images = read_table(tmp_path / "jpg", "images")
    selected = images[images["status"] == "selected"]
    assert len(selected) == jpg.images == tree.images - len(differ) and selected["path"].str.endswith(".jpg").all()
    assert set(selected["transfer_syntax"]) == {selected["transfer_syntax"].iloc[0]}
    reasons = set(read_table(tmp_path / "jpg", "rejects")["reason"])
    assert {"empty_report", "report_not_utf8", "no_report", "missing_file", "no_frontal"} <= reasons


def test_reports_tgz_and_separate_metadata(worlds, tmp_path):
    world = worlds["dicom-tgz-separate"]
    with_meta = scan_source(ScanConfig(world, folders=None, metadata=world / "metadata"))
    assert with_meta.source.metadata == world / "metadata" / "mimic-cxr-2.0.0-metadata.csv"
    assert all(s.report_data is not None for s in with_meta.studies if s.report_path)  # one streaming pass
    assert {s.split for s in with_meta.studies} >= {"train", "test"}
    _ingest(world, tmp_path / "tgz", metadata=world / "metadata")
    _ingest(worlds["dicom-tree"], tmp_path / "tree")
    cols = ["study_id", "index", "text"]
    pd.testing.assert_frame_equal(read_table(tmp_path / "tree", "sentences")[cols],
                                  read_table(tmp_path / "tgz", "sentences")[cols])


def test_dicom_release_without_metadata_reads_views_from_headers_in_parallel(worlds, monkeypatch):
    world = worlds["dicom-tgz-separate"]
    told = {i.dicom_id: i.view for s in scan_source(ScanConfig(world, folders=None, metadata=world / "metadata")).studies
            for i in s.images}
    monkeypatch.setattr(scan_mod, "PARALLEL_HEADERS_FROM", 1)  # a pool even for this small tree
    result = scan_source(ScanConfig(world, folders=None, workers=2))
    assert result.source.metadata is None and result.source.record_list.name == "cxr-record-list.csv.gz"
    read = {i.dicom_id: (i.view, i.view_source) for s in result.studies for i in s.images if i.exists}
    unreadable = [k for k, (_, src) in read.items() if src == "none"]
    assert len(read) > 60 and len(unreadable) <= 2  # the not-DICOM fault (a truncated file keeps its header)
    assert {k: v for k, (v, src) in read.items() if src != "none"} == {k: told[k] for k in read if k not in unreadable}
    assert {s.split for s in result.studies} == {"unknown"}  # the split CSV is in the metadata folder


def test_mismatches_are_named(worlds, tmp_path):
    jpg = tmp_path / "jpg"
    shutil.copytree(worlds["jpg-zip"], jpg)
    archive = jpg / "mimic-cxr-reports.zip"
    # a report for a study that has no image
    with zipfile.ZipFile(archive, "a") as zf:
        zf.writestr("files/p10/p10000001/s59999999.txt", "FINDINGS: No pneumothorax.\n")
    result = scan_source(ScanConfig(jpg, folders=None))
    orphans = [r for r in result.rejects if r["reason"] == "report_without_study"]
    assert [(r["subject_id"], r["study_id"]) for r in orphans] == [(10000001, 59999999)]
    _ingest(jpg, tmp_path / "o")
    rejects = read_table(tmp_path / "o", "rejects")
    assert (rejects["reason"] == "report_without_study").sum() == 1
    _ingest(jpg, tmp_path / "o")  # a re-run keeps one record of it, not two
    assert (read_table(tmp_path / "o", "rejects")["reason"] == "report_without_study").sum() == 1
    # a JPG root without its reports; without its metadata
    archive.rename(tmp_path / "elsewhere.zip")
    with pytest.raises(SourceError, match=r"no reports: pass --reports .*mimic-cxr-reports\.zip"):
        resolve_source(jpg)
    assert len(scan_source(ScanConfig(jpg, folders=None, reports=tmp_path / "elsewhere.zip")).studies) == 40
    (jpg / "mimic-cxr-2.0.0-metadata.csv.gz").unlink()
    with pytest.raises(SourceError, match=r"no mimic-cxr-2\.0\.0-metadata\.csv\(\.gz\) .*--metadata DIR"):
        resolve_source(jpg, reports=tmp_path / "elsewhere.zip")
    with pytest.raises(SourceError, match="--reports .*nothing.zip: no such file"):
        scan_source(ScanConfig(jpg, folders=None, reports=tmp_path / "nothing.zip", metadata=tmp_path))
    # the command says it before any server starts
    run = subprocess.run([sys.executable, "-m", "offclip.cli", "build-shards", str(jpg), str(tmp_path / "c"),
                          "--reports", str(tmp_path / "elsewhere.zip")], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "pass --metadata DIR" in run.stderr and not (tmp_path / "c").exists()


def test_an_unchanged_tree_is_not_read_again(small_world, tmp_path):
    world = tmp_path / "w"
    shutil.copytree(small_world[0], world)
    first = _ingest(world, tmp_path / "o")
    # planning finds every ingested study unchanged (two stats each): no batch, nothing read
    plan = plan_ingest(IngestConfig(source=world, out=tmp_path / "o", normalize=NormalizeConfig(long_side=64),
                                    scan=ScanConfig(world, folders=None)))
    assert len(plan.unchanged) == first.ingested
    # rejected studies are not looked at again either, but for one without a report (no stamp)
    assert len(plan.unchanged_rejected) == first.rejected - 1
    assert [s.report_path for b in plan.batches for s in b] == [None]
    images = read_table(tmp_path / "o", "images")
    selected = images[images["status"] == "selected"]["path"].tolist()
    # same size, same modification time, other bytes: a skip by stamp never reads it
    untouched = world / selected[0]
    st = untouched.stat()
    untouched.write_bytes(b"\0" * st.st_size)
    os.utime(untouched, ns=(st.st_atime_ns, st.st_mtime_ns))
    # same bytes, new modification time: read, hashed, found unchanged
    touched = world / selected[1]
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = _ingest(world, tmp_path / "o")
    assert second.skipped == first.ingested and second.rejected == first.rejected
    # a changed report is processed again
    studies = read_table(tmp_path / "o", "studies")
    report = world / studies[studies["status"] == "ingested"]["report_path"].iloc[-1]
    report.write_text(report.read_text() + "\nIMPRESSION: New left lower lobe opacity.\n")
    third = _ingest(world, tmp_path / "o")
    assert third.skipped == first.ingested - 1 and third.ingested == first.ingested
    # the zeroed file is found out once its stamp changes
    os.utime(untouched, ns=(st.st_atime_ns, st.st_mtime_ns + 2 * 10**9))
    fourth = _ingest(world, tmp_path / "o")
    assert fourth.skipped == first.ingested - 1
    assert read_table(tmp_path / "o", "studies")["status"].value_counts()["ingested"] == first.ingested - 1

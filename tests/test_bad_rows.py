"""Issue 26, point 3: one bad row of a CSV, or one corrupt report, never stops a run. Real files:
the small demo world copied and one line of its metadata CSV, split CSV or record list broken the
way a careless export breaks it (an unquoted comma: one field too many; an id that is not a
number), or a report with NUL bytes in it; then a real ingest. The bad row is a
``metadata_row_invalid`` reject naming the CSV and the line, the bad report a
``report_not_text`` reject naming the report, and every other study is ingested as before."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import pandas as pd
import pytest

from offclip.pipeline.images import NormalizeConfig
from offclip.pipeline.ingest import IngestConfig, read_table, run_ingest

META = "mimic-cxr-2.0.0-metadata.csv"
SPLIT = "mimic-cxr-2.0.0-split.csv"
RECORDS = "cxr-record-list.csv.gz"


def _ingest(source: Path, out: Path):
    from offclip.pipeline.scan import ScanConfig

    return run_ingest(IngestConfig(source=source, out=out, workers=1, progress=False,
                                   normalize=NormalizeConfig(long_side=64), scan=ScanConfig(source, folders=None)))


def _outcome(out: Path) -> pd.Series:
    """Each study's outcome: ``ingested`` or its reject reason."""
    studies = read_table(out, "studies").set_index("study_id")
    return studies["status"].where(studies["status"] == "ingested", studies["reject_reason"]).sort_index()


@pytest.fixture(scope="module")
def baseline(small_world, tmp_path_factory):
    """The small world ingested as it is (its own faults included): what every other study must match."""
    world, _ = small_world
    out = tmp_path_factory.mktemp("bad_rows_base") / "out"
    _ingest(world, out)
    return _outcome(out), read_table(out, "images"), read_table(out, "rejects")


def _copy(small_world, dest: Path, record_list: bool = False) -> Path:
    shutil.copytree(small_world[0], dest, symlinks=True)
    if record_list:  # no metadata CSV: the scan reads the DICOM release's record list
        for p in (dest / META, dest / f"{META}.gz"):
            p.unlink(missing_ok=True)
    return dest


def _lines(path: Path) -> list[str]:
    if path.suffix == ".gz":
        return gzip.decompress(path.read_bytes()).decode().splitlines(keepends=True)
    return path.read_text().splitlines(keepends=True)


def _write(path: Path, lines: list[str]) -> None:
    data = "".join(lines).encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _unselected_row(lines: list[str], images: pd.DataFrame) -> tuple[int, list[str]]:
    """(index, fields) of a data line whose image was not the selected one of an ingested study,
    in a study with other rows: leaving it out changes no study's outcome."""
    header = lines[0].rstrip("\n").split(",")
    selected = set(images.loc[images["status"] == "selected", "dicom_id"])
    counts = pd.Series([ln.split(",")[header.index("study_id")] for ln in lines[1:]]).value_counts()
    for i, ln in enumerate(lines[1:], start=1):
        f = ln.rstrip("\n").split(",")
        row = dict(zip(header, f))
        if row["dicom_id"] not in selected and counts[row["study_id"]] > 1 and '"' not in ln:
            return i, f
    raise AssertionError("no unselected image row")


def _check(out: Path, baseline, csv_name: str, line: int, study_id: int | None, summary, entity: str = "image"):
    outcome, _, base_rejects = baseline
    rejects = read_table(out, "rejects")
    bad = rejects[rejects["reason"] == "metadata_row_invalid"]
    assert len(bad) == 1, bad
    r = bad.iloc[0]
    assert r["stage"] == "scan" and r["entity"] == entity and r["path"] == csv_name
    assert csv_name in r["message"] and f"line {line}" in r["message"], r["message"]
    if study_id is None:
        assert pd.isna(r["study_id"])
    else:
        assert r["study_id"] == study_id
    assert summary.rejects_by_reason.get("metadata_row_invalid") == 1
    # every study comes out as it did from the intact CSV
    pd.testing.assert_series_equal(_outcome(out), outcome)
    assert len(rejects) == len(base_rejects) + 1


def test_a_metadata_line_with_an_unquoted_comma_is_a_reject_and_the_rest_is_ingested(small_world, baseline,
                                                                                       tmp_path):
    src = _copy(small_world, tmp_path / "w")
    lines = _lines(src / META)
    i, f = _unselected_row(lines, baseline[1])
    header = lines[0].rstrip("\n").split(",")
    k = header.index("PerformedProcedureStepDescription")
    f[k] = "CHEST, (PA AND LAT)"  # the unquoted comma: 13 fields for 12
    lines[i] = ",".join(f) + "\n"
    _write(src / META, lines)
    summary = _ingest(src, tmp_path / "out")
    _check(tmp_path / "out", baseline, META, i + 1, int(f[header.index("study_id")]), summary)
    # a re-run over the unchanged tree (every study skipped) keeps one reject for the line, not two
    again = _ingest(src, tmp_path / "out")
    assert again.skipped == again.ingested
    _check(tmp_path / "out", baseline, META, i + 1, int(f[header.index("study_id")]), again)


def test_a_metadata_line_whose_first_row_has_an_extra_field_is_not_taken_for_an_index(small_world, baseline,
                                                                                        tmp_path):
    src = _copy(small_world, tmp_path / "w")
    lines = _lines(src / META)
    i, f = _unselected_row(lines, baseline[1])
    lines.insert(1, lines.pop(i))  # the bad line first: pandas would take its extra field for an index
    lines[1] = lines[1].rstrip("\n") + ",\n"
    _write(src / META, lines)
    summary = _ingest(src, tmp_path / "out")
    header = lines[0].rstrip("\n").split(",")
    _check(tmp_path / "out", baseline, META, 2, int(f[header.index("study_id")]), summary)


def test_a_metadata_row_whose_study_id_is_not_a_number_is_a_reject(small_world, baseline, tmp_path):
    src = _copy(small_world, tmp_path / "w")
    lines = _lines(src / META)
    i, f = _unselected_row(lines, baseline[1])
    header = lines[0].rstrip("\n").split(",")
    f[header.index("study_id")] = "s" + f[header.index("study_id")]
    lines[i] = ",".join(f) + "\n"
    _write(src / META, lines)
    summary = _ingest(src, tmp_path / "out")
    _check(tmp_path / "out", baseline, META, i + 1, None, summary)
    r = read_table(tmp_path / "out", "rejects").query("reason == 'metadata_row_invalid'").iloc[0]
    assert "study_id" in r["message"] and r["subject_id"] == int(f[header.index("subject_id")])


def test_a_split_line_with_an_extra_field_is_a_reject(small_world, baseline, tmp_path):
    src = _copy(small_world, tmp_path / "w")
    lines = _lines(src / SPLIT)
    lines[3] = lines[3].rstrip("\n") + ",oops\n"
    _write(src / SPLIT, lines)
    header = lines[0].rstrip("\n").split(",")
    study_id = int(lines[3].split(",")[header.index("study_id")])
    summary = _ingest(src, tmp_path / "out")
    _check(tmp_path / "out", baseline, SPLIT, 4, study_id, summary)
    # the study's split still comes from its other rows (one per image)
    studies = read_table(tmp_path / "out", "studies").set_index("study_id")
    assert studies.loc[study_id, "split"] != "unknown"


def test_a_record_list_line_with_an_extra_field_is_a_reject(small_world, baseline, tmp_path):
    src = _copy(small_world, tmp_path / "w", record_list=True)
    base = tmp_path / "base"
    _ingest(src, base)  # the record list's own baseline (views come from the headers)
    outcome = _outcome(base)
    lines = _lines(src / RECORDS)
    i, f = _unselected_row(lines, read_table(base, "images"))
    lines[i] = lines[i].rstrip("\n") + ",x\n"
    _write(src / RECORDS, lines)
    summary = _ingest(src, tmp_path / "out")
    header = lines[0].rstrip("\n").split(",")
    _check(tmp_path / "out", (outcome, None, read_table(base, "rejects")), RECORDS, i + 1,
           int(f[header.index("study_id")]), summary)


def test_a_report_with_nul_bytes_is_a_report_not_text_reject(small_world, baseline, tmp_path):
    outcome, _, _ = baseline
    src = _copy(small_world, tmp_path / "w")
    study_id = int(outcome.index[outcome == "ingested"][0])
    report = next((src / "files").rglob(f"s{study_id}.txt"))
    text = report.read_bytes()
    cut = text.index(b".", text.index(b"FINDINGS")) + 1 if b"FINDINGS" in text else len(text) // 2
    report.write_bytes(text[:cut] + b"\x00" * 64 + text[cut:])
    summary = _ingest(src, tmp_path / "out")
    out = tmp_path / "out"
    rejects = read_table(out, "rejects")
    r = rejects[rejects["study_id"] == study_id]
    assert r["reason"].tolist() == ["report_not_text"], r
    rel = report.relative_to(src).as_posix()
    assert rel in r["message"].iloc[0] and f"byte {cut}" in r["message"].iloc[0] and "0x00" in r["message"].iloc[0]
    assert summary.rejects_by_reason.get("report_not_text") == 1
    # no sentence keeps a NUL; every other study as before
    assert not read_table(out, "sentences")["text"].str.contains("\x00", regex=False).any()
    got = _outcome(out)
    assert got[study_id] == "report_not_text"
    pd.testing.assert_series_equal(got.drop(index=study_id), outcome.drop(index=study_id))

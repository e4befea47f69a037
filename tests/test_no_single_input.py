"""Issue 26, point 3: no single input stops a run (and point 4's temporary files). Real inputs,
each a small demo world copied and broken the way a tester broke it: a 5 MB report (a tree file,
a zip member, a tar member), symlink loops in ``files/``, a tree linked in from another disk,
study and subject folders the run cannot read (a real permission denial: the run goes to a
subprocess without root's read override), a full disk (a real 64 KiB tmpfs), and a writer
killed with SIGKILL mid-write whose temporary file the next writer removes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from offclip.demo.world import WorldConfig, build_world
from offclip.pipeline.images import NormalizeConfig
from offclip.pipeline.ingest import IngestConfig, read_table, run_ingest, write_table
from offclip.pipeline.scan import ScanConfig, scan_source
from offclip.pipeline.sources import MAX_REPORT_BYTES, MAX_REPORT_BYTES_ENV

TREE_CSVS = ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-split.csv", "cxr-record-list.csv.gz",
             "cxr-study-list.csv.gz")


@pytest.fixture(scope="module")
def world(tmp_path_factory, openi_dir) -> Path:
    """Eight studies of four subjects (one subject with four studies), no faults: every study
    ingests, so any reject below is the one the test made."""
    out = tmp_path_factory.mktemp("robust") / "w"
    build_world(WorldConfig(out=out, studies=8, seed=3, scale=0.08, workers=1, progress=False, openi=openi_dir))
    return out


def _copy(world: Path, dest: Path, mode: str = "metadata") -> Path:
    """A copy of the world; ``tree``: without its CSVs, so the scan walks the directory tree."""
    shutil.copytree(world, dest, symlinks=True)
    if mode == "tree":
        for name in TREE_CSVS:
            for p in (dest / name, dest / f"{name}.gz"):
                p.unlink(missing_ok=True)
    return dest


def _to_archive(root: Path, kind: str) -> Path:
    """Move the tree's reports into mimic-cxr-reports.zip / .tar.gz (members files/pXX/pS/sT.txt)."""
    reports = sorted((root / "files").rglob("s*.txt"))
    archive = root / ("mimic-cxr-reports.zip" if kind == "zip" else "mimic-cxr-reports.tar.gz")
    if kind == "zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for p in reports:
                zf.write(p, p.relative_to(root).as_posix())
    else:
        with tarfile.open(archive, "w:gz") as tf:
            for p in reports:
                tf.add(p, p.relative_to(root).as_posix())
    for p in reports:
        p.unlink()
    return archive


def _ingest(source: Path, out: Path, **scan_kw):
    return run_ingest(IngestConfig(source=source, out=out, workers=1, progress=False,
                                   normalize=NormalizeConfig(long_side=32),
                                   scan=ScanConfig(source, folders=None, **scan_kw)))


def _studies(source: Path) -> pd.DataFrame:
    return pd.DataFrame([{"subject_id": s.subject_id, "study_id": s.study_id, "folder": s.folder,
                          "report_path": s.report_path}
                         for s in scan_source(ScanConfig(source, folders=None)).studies])


# ------------------------------------------------------------------------------------------------
# 1. a report over the size limit
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["tree", "zip", "tgz"])
def test_a_5mb_report_is_a_reject_naming_the_file_and_its_size(world, tmp_path, form):
    src = _copy(world, tmp_path / "w")
    known = _studies(src)
    victim = known.iloc[0]
    big = ("FINDINGS: " + "There is no focal consolidation. " * 160_000).encode()  # 5.3 MB
    (src / victim.report_path).write_bytes(big)
    if form != "tree":
        _to_archive(src, form)
    summary = _ingest(src, tmp_path / "out")

    rejects = read_table(tmp_path / "out", "rejects")
    studies = read_table(tmp_path / "out", "studies").set_index("study_id")
    row = rejects[rejects["study_id"] == victim.study_id]
    assert row["reason"].tolist() == ["report_too_large"]
    path, message = row["path"].iloc[0], row["message"].iloc[0]
    assert path.endswith(f"s{victim.study_id}.txt") and path in message
    assert f"{len(big):,} bytes" in message and f"{MAX_REPORT_BYTES:,}" in message
    assert studies.loc[victim.study_id, "reject_reason"] == "report_too_large"
    others = studies.drop(index=victim.study_id)
    assert (others["status"] == "ingested").all() and len(others) == len(known) - 1
    assert summary.rejects_by_reason == {"report_too_large": 1}


def test_the_size_limit_is_one_setting_and_a_report_under_it_is_split_whole(world, tmp_path, monkeypatch):
    """OFFCLIP_MAX_REPORT_BYTES raises the limit; a report of more characters than spaCy's
    default max_length (1,000,000: its E088 error) is then split like any other."""
    src = _copy(world, tmp_path / "w")
    victim = _studies(src).iloc[0]
    sentence = "There is no focal consolidation. "
    (src / victim.report_path).write_text("FINDINGS: " + sentence * 31_000)  # 1.02 M characters
    monkeypatch.setenv(MAX_REPORT_BYTES_ENV, "1200000")
    _ingest(src, tmp_path / "out")
    studies = read_table(tmp_path / "out", "studies").set_index("study_id")
    assert studies.loc[victim.study_id, "status"] == "ingested"
    assert studies.loc[victim.study_id, "n_sentences"] == 31_000
    smallest = min(p.stat().st_size for p in (src / "files").rglob("s*.txt"))
    monkeypatch.setenv(MAX_REPORT_BYTES_ENV, str(smallest - 1))  # and lowered, every report is over it
    summary = _ingest(src, tmp_path / "out2")
    assert summary.rejects_by_reason == {"report_too_large": summary.studies}


# ------------------------------------------------------------------------------------------------
# 2. symlinks: loops never raise; a tree linked in from another disk is read
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["tree", "metadata"])
def test_symlink_loops_in_files_never_stop_a_scan(world, tmp_path, mode):
    src = _copy(world, tmp_path / "w", mode)
    known = _studies(_copy(world, tmp_path / "clean", mode))
    subject = sorted((src / "files").glob("p*/p*"))[0]  # the first the walks meet
    os.symlink(".", src / "files" / "0loop")  # the tester's two loops
    os.symlink("..", subject / "loop")
    summary = _ingest(src, tmp_path / "out")

    studies = read_table(tmp_path / "out", "studies")
    assert sorted(studies["study_id"]) == sorted(known["study_id"]) and (studies["status"] == "ingested").all()
    assert summary.rejects_by_reason == {}
    skipped = dict(s.split(" -> ", 1) for s in summary.skipped_links)
    assert set(skipped) == {str(src / "files" / "0loop"), str(subject / "loop")}
    assert all("loop" in why for why in skipped.values())
    assert "symlinks not followed 2" in summary.to_text()


def test_a_tree_linked_in_from_another_disk_is_read_but_never_twice_or_around_a_loop(world, tmp_path):
    """``files/p13 -> /elsewhere/p13`` is followed (the folders of a big tree on several disks);
    inside it ``s99999999 -> ..`` (a loop there, named like a study), ``files/p19 -> /elsewhere/p13`` (the same folder a
    second time: the first link in name order is followed) and ``files/up -> ..`` (the root,
    which holds the tree) are not."""
    src = _copy(world, tmp_path / "w", "tree")
    known = _studies(src)
    folder = known["folder"].value_counts().index[0]  # the folder with the most studies
    elsewhere = tmp_path / "bigdisk"
    elsewhere.mkdir()
    shutil.move(src / "files" / folder, elsewhere / folder)
    os.symlink(elsewhere / folder, src / "files" / folder)
    loop = next((elsewhere / folder).glob("p*")) / "s99999999"
    os.symlink("..", loop)
    os.symlink(elsewhere / folder, src / "files" / "p19")
    os.symlink("..", src / "files" / "up")
    summary = _ingest(src, tmp_path / "out")

    studies = read_table(tmp_path / "out", "studies").set_index("study_id").sort_index()
    assert list(studies.index) == sorted(known["study_id"]) and (studies["status"] == "ingested").all()
    assert (studies["folder"] == known.set_index("study_id").sort_index()["folder"]).all()  # none as p19
    assert studies["report_path"].str.startswith(f"files/{folder}/").sum() == (known["folder"] == folder).sum()
    skipped = dict(s.split(" -> ", 1) for s in summary.skipped_links)
    walked = src / "files" / folder / loop.parent.name / loop.name  # named as the walk met it
    assert set(skipped) == {str(walked), str(src / "files" / "p19"), str(src / "files" / "up")}
    assert "already walked" in skipped[str(src / "files" / "p19")]
    assert "loop" in skipped[str(walked)] and "loop" in skipped[str(src / "files" / "up")]


# ------------------------------------------------------------------------------------------------
# 3. folders the run cannot read: a reject each, the rest ingested
# ------------------------------------------------------------------------------------------------
_RUN = """
import json, sys
from pathlib import Path
from offclip.pipeline.images import NormalizeConfig
from offclip.pipeline.ingest import IngestConfig, run_ingest
from offclip.pipeline.scan import ScanConfig
src, out = Path(sys.argv[1]), Path(sys.argv[2])
s = run_ingest(IngestConfig(source=src, out=out, workers=1, progress=False, normalize=NormalizeConfig(long_side=32),
                            scan=ScanConfig(src, folders=None)))
print(json.dumps(s.rejects_by_reason))
"""


def _without_read_override() -> list[str]:
    """A command prefix that runs without root's permission to read anything (root's
    CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH dropped), so that mode 000 means what it says."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv"):
        return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"]
    if shutil.which("capsh"):
        return ["capsh", "--drop=cap_dac_override,cap_dac_read_search", "--"]
    pytest.skip("running as root, and neither setpriv (util-linux) nor capsh (libcap2-bin) is here to drop "
                "root's read override: an unreadable folder cannot be made")


@pytest.mark.parametrize("mode", ["tree", "metadata"])
def test_unreadable_study_and_subject_folders_are_rejects_and_the_rest_is_ingested(world, tmp_path, mode):
    prefix = _without_read_override()
    src = _copy(world, tmp_path / "w", mode)
    known = _studies(src)
    by_subject = known.groupby("subject_id")["study_id"].apply(list)
    many = by_subject[by_subject.map(len) > 1].index[0]
    locked_study = known[known["subject_id"] == many].iloc[0]
    locked_subject = known[known["subject_id"] != many].iloc[0]
    study_dir = f"files/{locked_study.folder}/p{many}/s{locked_study.study_id}"
    subject_dir = f"files/{locked_subject.folder}/p{locked_subject.subject_id}"
    out = tmp_path / "out"
    out.mkdir()
    (src / study_dir).chmod(0)
    (src / subject_dir).chmod(0)
    try:
        run = subprocess.run(prefix + [sys.executable, "-c", _RUN, str(src), str(out)], capture_output=True,
                             text=True, timeout=300)
    finally:
        (src / study_dir).chmod(0o755)
        (src / subject_dir).chmod(0o755)
    assert run.returncode == 0, run.stderr[-3000:]

    rejects = read_table(out, "rejects")
    studies = read_table(out, "studies").set_index("study_id")
    # the study folder: the study is a read_error reject naming the folder
    row = rejects[rejects["study_id"] == locked_study.study_id]
    assert row[["stage", "entity", "reason", "path"]].values.tolist() == [["scan", "study", "read_error", study_dir]]
    assert study_dir in row["message"].iloc[0] and "Permission denied" in row["message"].iloc[0]
    assert studies.loc[locked_study.study_id, "reject_reason"] == "read_error"
    # the subject folder: a reject naming it (its studies, unknown to a tree walk, are not in the scan)
    folder_level = rejects[rejects["study_id"].isna()]
    assert folder_level[["reason", "path"]].values.tolist() == [["read_error", subject_dir]]
    assert folder_level["subject_id"].tolist() == [locked_subject.subject_id]
    lost = set(by_subject[locked_subject.subject_id])
    if mode == "metadata":  # the metadata names its studies: each is a read_error of its own
        assert set(studies.index[studies["reject_reason"] == "read_error"]) == lost | {locked_study.study_id}
    else:
        assert not lost & set(studies.index)
    rest = studies.drop(index=[locked_study.study_id, *lost], errors="ignore")
    assert (rest["status"] == "ingested").all() and len(rest) == len(known) - 1 - len(lost)
    assert json.loads(run.stdout.strip().splitlines()[-1]) == {"read_error": 2 + (len(lost) if mode == "metadata" else 0)}

    # readable again: a re-run ingests them, and the folder's reject of the last run is gone
    summary = _ingest(src, out)
    studies = read_table(out, "studies")
    assert len(studies) == len(known) and (studies["status"] == "ingested").all()
    assert len(read_table(out, "rejects")) == 0 and summary.rejects_by_reason == {}


# ------------------------------------------------------------------------------------------------
# 4. a full disk names the file; a dead writer's temporary file is removed by the next writer
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def tiny_disk(tmp_path):
    """A real 64 KiB tmpfs (mounting needs root or CAP_SYS_ADMIN)."""
    where = tmp_path / "tiny"
    where.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], check=True,
                       capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a 64 KiB tmpfs here (needs root or CAP_SYS_ADMIN): {exc}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False, timeout=30)


def test_a_full_disk_names_the_file_being_written(tiny_disk):
    from offclip.data_contracts.contract import frame
    from offclip.pipeline.atomic import atomic_write_bytes
    from offclip.pipeline.ingest import TABLES

    rng = np.random.default_rng(0)
    rows = [{"study_id": i, "subject_id": 10_000_000 + i, "index": 0, "section": "findings",
             "text": rng.bytes(40).hex(), "key": rng.bytes(40).hex(), "start": 0, "end": 80} for i in range(4000)]
    df = frame(TABLES["sentences"], rows)
    final = tiny_disk / "ingest" / "sentences.parquet"
    with pytest.raises(OSError) as info:
        write_table(tiny_disk, "sentences", df)
    assert info.value.errno == 28 and str(final) in str(info.value)
    image = tiny_disk / "images" / "p10" / "a.png"
    with pytest.raises(OSError) as info:
        atomic_write_bytes(image, rng.bytes(200_000))
    assert info.value.errno == 28 and str(image) in str(info.value)
    assert not final.exists() and not image.exists()
    assert not [p for p in tiny_disk.rglob("*") if p.is_file()]  # no temporary file left behind


def test_a_full_disk_while_writing_a_shard_names_the_shard(tiny_disk):
    from offclip.pipeline.shards import _write_shard

    rng = np.random.default_rng(1)
    samples = [{"__key__": str(50_000_000 + i), "png": rng.bytes(30_000), "txt": b"x"} for i in range(4)]
    with pytest.raises(OSError) as info:
        _write_shard(tiny_disk, "train-000000.tar", samples, 0)
    assert info.value.errno == 28 and str(tiny_disk / "train-000000.tar") in str(info.value)
    assert not [p for p in tiny_disk.rglob("*") if p.is_file()]  # no temporary tar left behind


_WRITER = """
import sys, time
from offclip.pipeline.atomic import atomic_open
with atomic_open(sys.argv[1], "wb") as fh:
    fh.write(b"half a parquet file" * 100)
    fh.flush()
    print("writing", flush=True)
    time.sleep(300)
"""


def _writer(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def _temps(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.glob(f".{path.name}.*.tmp"))


def test_the_next_writer_removes_a_killed_writers_temporary_file_not_a_live_ones(tmp_path):
    from offclip.data_contracts.curate import PAIRS
    from offclip.pipeline.curate import _write

    final = tmp_path / "ingest" / "studies.parquet"
    killed, alive = _writer(final), _writer(final)
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert len(_temps(final)) == 2
        live_temp = [n for n in _temps(final) if f"-{alive.pid}." in n]
        assert len(live_temp) == 1
        write_table(tmp_path, "studies", read_table(tmp_path, "studies"))  # the next writer
        assert _temps(final) == live_temp  # the dead writer's is gone, the live one's kept
        assert final.is_file() and len(read_table(tmp_path, "studies")) == 0
    finally:
        alive.kill()
        alive.wait(timeout=30)
    write_table(tmp_path, "studies", read_table(tmp_path, "studies"))
    assert _temps(final) == []

    curated = tmp_path / "curate" / "pairs.parquet"  # curate's writer too
    proc = _writer(curated)
    proc.kill()
    proc.wait(timeout=30)  # reaped: a zombie still holds its pid (and counts as alive)
    assert len(_temps(curated)) == 1
    _write(tmp_path, "pairs", PAIRS, PAIRS.empty())
    assert _temps(curated) == [] and curated.is_file()


def test_a_per_process_temporary_name_is_recognised_for_the_manifest(tmp_path):
    """``.manifest.duckdb.<pid>.tmp`` (the manifest writer's name) of a killed process is
    removed by :func:`remove_dead_temps`; this process's own is kept."""
    from offclip.pipeline.atomic import remove_dead_temps

    db = tmp_path / "manifest.duckdb"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(timeout=30)
    (tmp_path / f".manifest.duckdb.{dead.pid}.tmp").write_bytes(b"x")
    (tmp_path / f".manifest.duckdb.{os.getpid()}.tmp").write_bytes(b"x")
    (tmp_path / ".manifest.duckdb.a1b2c3d4.tmp").write_bytes(b"x")  # an older writer's: owner unknown
    assert remove_dead_temps(db) == [tmp_path / f".manifest.duckdb.{dead.pid}.tmp"]
    assert sorted(p.name for p in tmp_path.glob(".*.tmp")) == [f".manifest.duckdb.{os.getpid()}.tmp",
                                                               ".manifest.duckdb.a1b2c3d4.tmp"]

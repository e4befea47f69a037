"""Issue 26 point 6: SQL on a manifest reads and writes nothing outside the manifest's folder.

`offclip sql` (read-only by default) and `offclip manifest` open the manifest confined by DuckDB's
own settings (external access off except the output root, configuration locked) and refuse the
statements that make DuckDB write a file or open another database; `--write` opens it read-write,
still confined; `--allow-external` lifts the confinement. Real manifests, real files, the CLI run
for real (in-process with typer's runner, and as the installed `offclip` command).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from offclip.cli import app
from offclip.pipeline.curate import read_curated
from offclip.pipeline.manifest import build_manifest, query, summary
from offclip.pipeline.shards import ShardConfig, write_shards

OFFCLIP = Path(sys.executable).with_name("offclip")  # the installed command of this environment
SECRET = "TOP-SECRET-3f9a1c outside the root"


@pytest.fixture(scope="module")
def built(curated, tmp_path_factory):
    """A curated output with shards and a real manifest (as tests/test_shards_manifest.py builds
    it), shared by this module's tests: none of them may change it."""
    out = tmp_path_factory.mktemp("sandbox") / "out"
    shutil.copytree(curated[0], out)
    write_shards(ShardConfig(out=out, max_samples=4))
    build_manifest(out)
    return out


@pytest.fixture
def outside(tmp_path):
    """A file outside the manifest's folder, with content nobody may read or overwrite."""
    victim = tmp_path / "elsewhere" / "secret.csv"
    victim.parent.mkdir()
    victim.write_text(f"note\n{SECRET}\n")
    return victim


def _sql(*args: str):
    return CliRunner().invoke(app, ["sql", *args])


def _refused(result, *needles: str) -> None:
    assert result.exit_code == 2, (result.exit_code, result.output)
    for needle in needles:
        assert needle.lower() in result.stderr.lower(), result.stderr
    assert SECRET not in result.output


def test_copy_to_a_file_outside_the_root_fails_and_leaves_it(built, outside):
    db = str(built / "manifest.duckdb")
    before = outside.read_bytes()
    for extra in ([], ["--write"]):  # read-write is still confined to the root
        result = _sql(f"COPY (SELECT 1 AS x) TO '{outside}' (FORMAT csv)", "--db", db, *extra)
        _refused(result, "error:")
        assert outside.read_bytes() == before
    # the real command, as a scheduled job would run it
    real = subprocess.run([str(OFFCLIP), "sql", f"COPY (SELECT 1 AS x) TO '{outside}' (FORMAT csv)", "--db", db],
                          capture_output=True, text=True)
    assert real.returncode == 2 and "error:" in real.stderr and outside.read_bytes() == before


def test_read_only_writes_no_file_even_inside_the_root(built):
    db = str(built / "manifest.duckdb")
    target, exported, attached = built / "copied.csv", built / "exported", built / "attached.duckdb"
    for statement in (f"COPY (SELECT 1 AS x) TO '{target}' (FORMAT csv)",
                      f"SELECT 1; COPY (SELECT 1 AS x) TO '{target}' (FORMAT csv)",  # hidden behind a SELECT
                      f"EXPORT DATABASE '{exported}'",
                      f"ATTACH '{attached}' AS other (READ_ONLY false)"):
        _refused(_sql(statement, "--db", db), "read-only")
    assert not target.exists() and not exported.exists() and not attached.exists()
    assert query(db, "SELECT count(*) AS n FROM pairs")["n"][0] == len(read_curated(built, "pairs"))


def test_export_database_fails(built, tmp_path):
    db = str(built / "manifest.duckdb")
    for extra in ([], ["--write"]):
        _refused(_sql(f"EXPORT DATABASE '{tmp_path / 'dump'}'", "--db", db, *extra), "error:")
        assert not (tmp_path / "dump").exists()


def test_reading_files_outside_the_root_fails_clearly(built, outside):
    db = str(built / "manifest.duckdb")
    passwd = _sql("SELECT * FROM read_csv('/etc/passwd')", "--db", db)
    _refused(passwd, 'cannot access file "/etc/passwd"', "--allow-external")
    assert "root:" not in passwd.output
    _refused(_sql("SELECT * FROM glob('/root/**')", "--db", db), "cannot access file", "/root/**")
    _refused(_sql(f"SELECT * FROM read_text('{outside}')", "--db", db), "cannot access file")
    _refused(_sql(f"SELECT * FROM read_csv('{built}/../elsewhere/secret.csv')", "--db", db), "cannot access file")
    _refused(_sql(f"SELECT * FROM read_csv('{outside}')", "--db", db, "--write"), "cannot access file")


def test_settings_are_locked(built):
    db = str(built / "manifest.duckdb")
    for statement in ("SET enable_external_access = true", "RESET enable_external_access",
                      "SET allowed_directories = ['/']", "SET lock_configuration = false",
                      "SET temp_directory = '/tmp/elsewhere'", "PRAGMA enable_profiling = 'json'",
                      "SET enable_external_access = true; SELECT * FROM read_csv('/etc/passwd')"):
        _refused(_sql(statement, "--db", db), "locked")
    settings = query(db, "SELECT current_setting('enable_external_access') AS external, "
                         "current_setting('lock_configuration') AS locked, "
                         "current_setting('autoinstall_known_extensions') AS autoinstall, "
                         "current_setting('temp_directory') AS temp")
    assert not settings["external"][0] and settings["locked"][0] and not settings["autoinstall"][0]
    assert Path(settings["temp"][0]).resolve().is_relative_to(built.resolve())  # spills stay in the root


def test_attach_install_load_and_urls_are_refused(built, tmp_path):
    db = str(built / "manifest.duckdb")
    other = tmp_path / "other.duckdb"
    with duckdb.connect(str(other)) as con:
        con.execute("CREATE TABLE t AS SELECT 'other database' AS v")
    before = other.read_bytes()
    _refused(_sql(f"ATTACH '{other}' AS o", "--db", db, "--write"), f'cannot access file "{other}"')
    _refused(_sql(f"ATTACH '{other}' AS o (READ_ONLY)", "--db", db), "read-only")
    assert other.read_bytes() == before
    _refused(_sql("INSTALL httpfs", "--db", db), "disabled by configuration")
    _refused(_sql("LOAD httpfs", "--db", db), "disabled through configuration")
    _refused(_sql("SELECT * FROM read_csv('https://example.com/x.csv')", "--db", db), "cannot access file")


def test_a_hostile_manifest_prints_no_file_outside_its_root(built, outside, tmp_path):
    """A manifest from elsewhere whose views read a file outside its folder: `offclip manifest`
    and `offclip sql` fail on the view with a clear error and never print the file."""
    root = tmp_path / "shared"
    root.mkdir()
    db = root / "manifest.duckdb"
    shutil.copy(built / "manifest.duckdb", db)
    with duckdb.connect(str(db)) as con:
        con.execute(f"CREATE OR REPLACE VIEW label_distribution AS SELECT * FROM read_csv('{outside}')")
        con.execute("CREATE VIEW host AS SELECT * FROM read_csv('/etc/hostname', header = false)")
    shown = CliRunner().invoke(app, ["manifest", str(root)])
    _refused(shown, f'cannot access file "{outside}"')
    assert "Traceback" not in shown.output
    real = subprocess.run([str(OFFCLIP), "manifest", str(root)], capture_output=True, text=True)
    assert real.returncode == 2 and "cannot access file" in real.stderr.lower()
    assert SECRET not in real.stdout + real.stderr
    _refused(_sql("SELECT * FROM label_distribution", "--db", str(db)), "cannot access file")
    hostname = Path("/etc/hostname").read_text().strip()
    host = _sql("SELECT * FROM host", "--db", str(db))
    _refused(host, 'cannot access file "/etc/hostname"')
    assert not hostname or hostname not in host.stdout
    with pytest.raises(duckdb.PermissionException, match="Cannot access file"):
        summary(db)


def test_legitimate_queries_still_work(built, tmp_path):
    db = built / "manifest.duckdb"
    pairs = read_curated(built, "pairs")
    shown = CliRunner().invoke(app, ["manifest", str(built)])
    assert shown.exit_code == 0, shown.output
    assert "labels:" in shown.stdout and "shards:" in shown.stdout
    for name in ("label_distribution", "shard_health", "reject_reasons", "classifier_rule_agreement", "runs",
                 "pairs", "sentences", "samples"):
        assert _sql(f"SELECT * FROM {name}", "--db", str(db)).exit_code == 0
    counted = _sql("SELECT split, count(*) AS n FROM pairs GROUP BY split ORDER BY split", "--db", str(db),
                   "--format", "csv")
    assert counted.exit_code == 0 and sum(int(line.split(",")[1]) for line in counted.stdout.split()[1:]) == len(pairs)
    # files of the output root itself may be read, with an absolute or a relative path
    inside = _sql(f"SELECT count(*) AS n FROM read_parquet('{built}/curate/pairs.parquet')", "--db", str(db),
                  "--format", "csv")
    assert inside.exit_code == 0 and inside.stdout.split()[1] == str(len(pairs))
    # results are written by offclip (not DuckDB), wherever --out points
    for fmt, name in (("parquet", "r.parquet"), ("csv", "r.csv")):
        result = _sql("SELECT * FROM pairs", "--db", str(db), "--format", fmt, "--out", str(tmp_path / name))
        assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(tmp_path / "r.parquet")) == len(pd.read_csv(tmp_path / "r.csv")) == len(pairs)
    # the library readers (the flows' artifacts, the train flow's lookup of the last build)
    assert len(query(db, "SELECT * FROM shard_health"))
    assert list(query(db, "SELECT parameters FROM runs WHERE stage = 'build-shards'").columns) == ["parameters"]
    assert "labels:" in summary(db)


def test_write_is_confined_to_the_root(built, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    db = out / "manifest.duckdb"
    shutil.copy(built / "manifest.duckdb", db)
    assert _sql(f"COPY (SELECT * FROM pairs) TO '{out / 'pairs.csv'}' (FORMAT csv)", "--db", str(db),
                "--write").exit_code == 0
    assert len(pd.read_csv(out / "pairs.csv")) == len(read_curated(built, "pairs"))
    assert _sql("CREATE TABLE notes AS SELECT 'kept' AS note", "--db", str(db), "--write").exit_code == 0
    assert query(db, "SELECT note FROM notes")["note"].tolist() == ["kept"]


def test_allow_external_reads_the_outside_file(built, outside):
    db = str(built / "manifest.duckdb")
    result = _sql(f"SELECT * FROM read_csv('{outside}')", "--db", db, "--allow-external")
    assert result.exit_code == 0, result.output
    assert SECRET in result.stdout
    assert query(db, f"SELECT * FROM read_csv('{outside}')", allow_external=True)["note"][0] == SECRET

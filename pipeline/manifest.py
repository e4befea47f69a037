"""The DuckDB manifest: every record of a curation output in one queryable file.

Tables (loaded from the contract-checked Parquet records and shard completion records through
Arrow — never row-by-row inserts): ``runs``, ``studies``, ``images``, ``reports``, ``sentences``,
``pairs``, ``rejects``, ``shards``, ``samples``, ``evaluations``, ``study_labels`` (empty when
curate found no MIMIC label file). Views answer the common questions:
``label_distribution``, ``sentences_dropped_per_report``, ``top_dropped_normal_sentences``,
``reject_reasons``, ``shard_health``, ``shard_mismatches``, ``latest_evaluations``, ``label_agreement``,
``label_agreement_summary``, ``classifier_rule_disagreements``, ``classifier_rule_agreement``,
``latest_differences``.

``unique_sentences`` has one row per distinct sentence (normalised key) of the curated reports:
an example text, how many sentences and reports it occurs in, the classifier's score and label,
the rule labeler's label and the rule that fired, and the label the filter used (its policy).
``classifier_rule_disagreements`` lists those where classifier and rules disagree, the ones that
touch the most reports first: what the filter may get wrong, and how often.

The file is rebuilt into a temporary database and renamed over the old one (atomic); the
``runs`` history and the ``evaluations`` table are carried over (stages that do not
rebuild the file append to them: :func:`append_runs`, :func:`record_evaluations`). The plain
``duckdb`` client opens it as it is.

The three writers take :func:`manifest_lock` (a lock file beside the database), so a rebuild
never renames its copy over rows another process appended meanwhile: an append waits for the
rebuild and lands in the new file.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import uuid
from pathlib import Path

import pandas as pd
import pyarrow as pa

from .. import __version__
from ..data_contracts.curate import STUDY_LABELS
from ..data_contracts.manifest import EVALUATIONS, EXPECTED_SAMPLES, OVERALL, RUNS, SAMPLES, SHARDS
from .layout import MANIFEST_FILE, SHARD_DIR, curate_table, ingest_table

LOCK_TIMEOUT_S = 600.0  #: how long a writer waits for another one (a rebuild takes seconds)


def manifest_lock(db: str | os.PathLike, timeout: float = LOCK_TIMEOUT_S):
    """The inter-process write lock of the manifest ``db`` (``.<name>.lock`` beside it)."""
    from filelock import FileLock

    db = Path(db)
    db.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(db.with_name(f".{db.name}.lock")), timeout=timeout)


VIEWS = {
    "label_distribution": """
        SELECT split, pair_label, count(*) AS pairs,
               round(100.0 * count(*) / sum(count(*)) OVER (PARTITION BY split), 1) AS percent
        FROM pairs GROUP BY split, pair_label ORDER BY split, pair_label""",
    "sentences_dropped_per_report": """
        SELECT study_id, count(*) AS sentences, count(*) FILTER (WHERE NOT kept) AS dropped,
               count(*) FILTER (WHERE kept) AS kept
        FROM sentences GROUP BY study_id ORDER BY dropped DESC, study_id""",
    "top_dropped_normal_sentences": """
        SELECT key, any_value(text) AS example, count(*) AS dropped, round(avg(score), 4) AS mean_score
        FROM sentences WHERE reason = 'normal_sentence_in_abnormal_report'
        GROUP BY key ORDER BY dropped DESC, key""",
    # the distinct sentences where the classifier and its teacher (the rules) disagree, by how many
    # reports they touch (label: what the filter used, by its label_policy)
    "classifier_rule_disagreements": """
        SELECT text, reports, sentences, score, classifier_label, rule_label, rule, label, label_policy, key
        FROM unique_sentences WHERE classifier_label <> rule_label
        ORDER BY reports DESC, sentences DESC, key""",
    # classifier × rules over the distinct sentences: how many sentences, occurrences and reports
    "classifier_rule_agreement": """
        SELECT u.classifier_label, u.rule_label, count(DISTINCT u.key) AS unique_sentences, count(*) AS sentences,
               count(DISTINCT s.study_id) AS reports
        FROM unique_sentences u JOIN sentences s USING (key)
        GROUP BY u.classifier_label, u.rule_label ORDER BY u.classifier_label, u.rule_label""",
    "reject_reasons": """
        SELECT stage, entity, reason, count(*) AS rejects FROM rejects
        GROUP BY stage, entity, reason ORDER BY rejects DESC, reason""",
    # every sample of a shard that is not what the current records make (its digest differs: the
    # report, image, a label or the filter's decision changed since it was written; or its study is
    # no longer a pair, or is now of another split), and every pair of a shard split with no sample
    "shard_mismatches": """
        SELECT coalesce(e.split, s.split) AS split, s.shard, coalesce(s.key, e.key) AS key,
               coalesce(s.study_id, e.study_id) AS study_id,
               CASE WHEN s.key IS NULL THEN 'not_in_shards'
                    WHEN e.key IS NULL THEN 'not_a_pair'
                    WHEN s.split <> e.split THEN 'wrong_split'
                    WHEN s.digest IS NULL THEN 'unverified'
                    ELSE 'stale' END AS problem,
               s.digest AS shard_digest, e.digest AS expected_digest
        FROM samples s FULL JOIN expected_samples e USING (key)
        WHERE s.key IS NULL OR e.key IS NULL OR s.split <> e.split OR s.digest IS DISTINCT FROM e.digest
        ORDER BY split, study_id""",
    "shard_health": """
        WITH per_split AS (
            SELECT split, count(*) AS shards, sum(samples)::BIGINT AS samples, sum(bytes)::BIGINT AS bytes,
                   round(avg(samples), 1) AS mean_samples
            FROM shards GROUP BY split)
        SELECT h.*, (SELECT count(*) FROM pairs p WHERE p.split = h.split) AS pairs,
               (SELECT count(*) FROM shard_mismatches m WHERE m.split = h.split AND m.problem = 'not_in_shards')
                   AS not_in_shards,
               (SELECT count(*) FROM shard_mismatches m WHERE m.split = h.split AND m.problem <> 'not_in_shards')
                   AS mismatched
        FROM per_split h ORDER BY h.split""",
    # per study: the classifier's label beside MIMIC's CheXpert / NegBio labels (NULL = unknown);
    # an agreement flag is NULL when either of its two labels is unknown
    "label_agreement": """
        SELECT l.study_id, l.subject_id, p.split, p.pair_label, p.label_source,
               l.classifier_label, l.chexpert_label, l.negbio_label,
               l.chexpert_no_finding, l.negbio_no_finding,
               l.classifier_label = l.chexpert_label AS classifier_agrees_chexpert,
               l.classifier_label = l.negbio_label AS classifier_agrees_negbio,
               l.chexpert_label = l.negbio_label AS chexpert_agrees_negbio
        FROM study_labels l LEFT JOIN pairs p USING (study_id) ORDER BY l.study_id""",
    # confusion counts classifier × labeler (one row per labeler and classifier label), and the
    # labeler's agreement with the classifier over the studies both label
    "label_agreement_summary": """
        WITH long AS (
            SELECT 'chexpert' AS labeler, classifier_label, chexpert_label AS labeler_label FROM study_labels
            UNION ALL
            SELECT 'negbio', classifier_label, negbio_label FROM study_labels),
        counts AS (
            SELECT labeler, classifier_label,
                   count(*) FILTER (WHERE labeler_label = 'normal') AS labeler_normal,
                   count(*) FILTER (WHERE labeler_label = 'abnormal') AS labeler_abnormal,
                   count(*) FILTER (WHERE labeler_label IS NULL) AS labeler_unknown,
                   count(*) AS studies,
                   count(*) FILTER (WHERE labeler_label = classifier_label) AS agreeing
            FROM long GROUP BY labeler, classifier_label)
        SELECT *, round(100.0 * sum(agreeing) OVER w
                        / nullif(sum(labeler_normal + labeler_abnormal) OVER w, 0), 1) AS agreement_percent
        FROM counts WINDOW w AS (PARTITION BY labeler) ORDER BY labeler, classifier_label""",
}

#: views on the ``evaluations`` table (created with it, by build_manifest or record_evaluations)
EVALUATION_VIEWS = {
    # the most recent evaluation of each model (model_dir, else run_name) on each dataset,
    # its summary rows pivoted to one column per metric
    "latest_evaluations": f"""
        WITH evaluation AS (
            SELECT evaluation_id, any_value(evaluated_at) AS evaluated_at, any_value(model_dir) AS model_dir,
                   any_value(run_name) AS run_name, any_value(loss) AS loss, any_value(seed) AS seed,
                   any_value(dataset) AS dataset, any_value(coalesce(protocol, 'offclip')) AS protocol
            FROM evaluations GROUP BY evaluation_id
            HAVING count(*) FILTER (WHERE NOT starts_with(metric, 'delta_')) > 0),  -- not the differences
        latest AS (
            SELECT * FROM evaluation
            QUALIFY row_number() OVER (PARTITION BY coalesce(model_dir, run_name, evaluation_id), dataset, protocol
                                       ORDER BY evaluated_at DESC, evaluation_id DESC) = 1)
        SELECT l.dataset, l.run_name, l.model_dir, l.loss, l.seed, l.evaluated_at, l.evaluation_id,
               max(e.value) FILTER (WHERE e.metric = 'normal_auc') AS normal_auc,
               max(e.value) FILTER (WHERE e.metric = 'macro_auc') AS macro_auc,
               max(e.value) FILTER (WHERE e.metric = 'pointing_game') AS pointing_game,
               max(e.value) FILTER (WHERE e.metric = 'normal_fp')::BIGINT AS normal_fp,
               max(e.value) FILTER (WHERE e.metric = 'normal_fn')::BIGINT AS normal_fn,
               max(e.value) FILTER (WHERE e.metric = 'n_images')::BIGINT AS n_images,
               max(e.value) FILTER (WHERE e.metric = 'rejects')::BIGINT AS rejects,
               max(e.value) FILTER (WHERE e.metric = 'normal_auc_centroid') AS normal_auc_centroid,
               max(e.value) FILTER (WHERE e.metric = 'cos_centred_normal_normal') AS cos_centred_normal_normal,
               max(e.value) FILTER (WHERE e.metric = 'cos_centred_abnormal_abnormal') AS cos_centred_abnormal_abnormal,
               max(e.value) FILTER (WHERE e.metric = 'cos_centred_normal_abnormal') AS cos_centred_normal_abnormal,
               l.protocol
        FROM latest l JOIN evaluations e ON e.evaluation_id = l.evaluation_id AND e.class_name = '{OVERALL}'
        GROUP BY ALL ORDER BY l.dataset, l.run_name, l.model_dir""",
    # the most recent paired comparison of each "<model>-vs-<baseline>" (compare, or evaluate with
    # a baseline): one row per metric, the difference with its bootstrap interval
    "latest_differences": f"""
        WITH latest AS (
            SELECT evaluation_id, any_value(run_name) AS run_name, any_value(dataset) AS dataset,
                   any_value(evaluated_at) AS evaluated_at
            FROM evaluations WHERE metric LIKE 'delta_%' GROUP BY evaluation_id
            QUALIFY row_number() OVER (PARTITION BY any_value(run_name), any_value(dataset)
                                       ORDER BY any_value(evaluated_at) DESC, evaluation_id DESC) = 1)
        SELECT l.dataset, l.run_name AS comparison,
               regexp_replace(e.metric, '^delta_|_low$|_high$', '', 'g') AS metric,
               max(e.value) FILTER (WHERE NOT ends_with(e.metric, '_low') AND NOT ends_with(e.metric, '_high'))
                   AS difference,
               max(e.value) FILTER (WHERE ends_with(e.metric, '_low')) AS ci_low,
               max(e.value) FILTER (WHERE ends_with(e.metric, '_high')) AS ci_high,
               max(e.n_pos)::BIGINT AS n_images, l.evaluated_at
        FROM latest l JOIN evaluations e ON e.evaluation_id = l.evaluation_id AND e.class_name = '{OVERALL}'
        GROUP BY ALL ORDER BY l.dataset, comparison, metric""",
}


def code_version() -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_record(
    stage: str, started: dt.datetime, parameters: dict, counts: dict, model_version: str | None = None
) -> dict:
    finished = dt.datetime.now(dt.UTC)
    return {
        "run_id": str(uuid.uuid4()),
        "stage": stage,
        "started_at": started,
        "finished_at": finished,
        "seconds": (finished - started).total_seconds(),
        "offclip_version": __version__,
        "code_version": code_version(),
        "model_version": model_version,
        "parameters": json.dumps(parameters, sort_keys=True, default=str),
        "counts": json.dumps(counts, sort_keys=True, default=str),
    }


def _shard_tables(out: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    from .shards import complete_shards

    shards, samples = [], []
    root = out / SHARD_DIR
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        for rec in complete_shards(out, split_dir.name):
            shards.append({name: getattr(rec, name) for name in SHARDS.names})  # the record's columns and path
            digests = rec.digests or [None] * len(rec.keys)  # a record from before digests: NULL
            samples += [
                {"key": k, "study_id": int(k), "split": rec.split, "shard": rec.name, "position": i, "digest": d}
                for i, (k, d) in enumerate(zip(rec.keys, digests))
            ]
    return (pd.DataFrame(shards, columns=SHARDS.names), pd.DataFrame(samples, columns=SAMPLES.names))


def build_manifest(out: str | os.PathLike, db: str | os.PathLike | None = None, runs: list[dict] | None = None) -> Path:
    """(Re)build the manifest of curation output ``out``; append ``runs`` to its history."""
    out = Path(out)
    db = Path(db) if db else out / MANIFEST_FILE
    with manifest_lock(db):  # rows appended by others between the carry-over and the rename would be lost
        return _build_manifest(out, db, runs)


def _build_manifest(out: Path, db: Path, runs: list[dict] | None) -> Path:
    import duckdb

    history, evaluations = RUNS.empty(), EVALUATIONS.empty()
    if db.is_file():
        with duckdb.connect(str(db), read_only=True) as old:
            tables = {r[0] for r in old.execute("SHOW TABLES").fetchall()}
            if "runs" in tables:
                history = old.sql("SELECT * FROM runs").to_arrow_table().to_pandas()
            if "evaluations" in tables:
                present = [r[0] for r in old.execute("DESCRIBE evaluations").fetchall()]
                evaluations = (
                    old.sql(f"SELECT {', '.join(c for c in EVALUATIONS.names if c in present)} FROM evaluations")
                    .to_arrow_table()
                    .to_pandas()
                )
                evaluations = _with_nullable_columns(evaluations)  # a manifest written before a column existed
    if runs:
        history = pd.concat([history, pd.DataFrame(runs)], ignore_index=True) if len(history) else pd.DataFrame(runs)
    shards, samples = _shard_tables(out)
    expected = EXPECTED_SAMPLES.empty()
    if curate_table(out, "pairs").is_file():  # else the check below names what is missing
        from .shards import SampleSource

        expected = SampleSource(out).expected()

    from .atomic import atomic_database

    # a new file renamed over the old; a rebuild killed before its rename leaves a temporary file
    # that the next one removes (it holds the lock)
    with atomic_database(db) as tmp:
        with duckdb.connect(str(tmp)) as con:
            _load(con, "runs", RUNS.validate(history))
            parquet = {
                "studies": ingest_table(out, "studies"),
                "images": ingest_table(out, "images"),
                "rejects": ingest_table(out, "rejects"),
                "sentences": curate_table(out, "sentences"),
                "pairs": curate_table(out, "pairs"),
            }
            for name, path in parquet.items():
                if not path.is_file():
                    raise FileNotFoundError(f"{path} is missing: run ingest and curate before the manifest")
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM read_parquet(?)", [str(path)])
            _unique_sentences(con)
            _load(con, "shards", SHARDS.validate(shards))
            _load(con, "samples", SAMPLES.validate(samples))
            _load(con, "expected_samples", EXPECTED_SAMPLES.validate(expected))
            _load(con, "evaluations", EVALUATIONS.validate(evaluations))
            labels = curate_table(out, "study_labels")  # optional: only when a label file was found
            if labels.is_file():
                con.execute("CREATE TABLE study_labels AS SELECT * FROM read_parquet(?)", [str(labels)])
            else:
                _load(con, "study_labels", STUDY_LABELS.validate(STUDY_LABELS.empty()))
            con.execute("""
                CREATE TABLE reports AS
                SELECT s.study_id, s.subject_id, s.report_path, s.status, s.reject_reason, s.n_sentences,
                       p.pair_label, p.n_kept, p.max_score, p.model_version
                FROM studies s LEFT JOIN pairs p USING (study_id) ORDER BY s.study_id""")
            for name, sql in {**VIEWS, **EVALUATION_VIEWS}.items():
                con.execute(f"CREATE VIEW {name} AS {sql}")
            con.execute("CHECKPOINT")
    return db


#: curated sentence columns of the disagreement audit (NULL in outputs curated before them)
AUDIT_COLUMNS = {
    "classifier_label": "VARCHAR",
    "rule_label": "VARCHAR",
    "rule": "VARCHAR",
    "rules_version": "VARCHAR",
    "label_policy": "VARCHAR",
}


def _unique_sentences(con) -> None:
    """The ``unique_sentences`` table (one row per normalised key) from ``sentences``."""
    have = {
        r[0] for r in con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'sentences'").fetchall()
    }
    for name, kind in AUDIT_COLUMNS.items():
        if name not in have:  # curated before the audit: the columns exist, empty
            con.execute(f"ALTER TABLE sentences ADD COLUMN {name} {kind}")
    if "classifier_label" not in have:
        con.execute(
            "UPDATE sentences SET classifier_label = CASE WHEN score >= threshold THEN 'abnormal' ELSE 'normal' END"
        )
    con.execute("""
        CREATE TABLE unique_sentences AS
        SELECT key, arg_min(text, (study_id, index)) AS text, count(*) AS sentences,
               count(DISTINCT study_id) AS reports, any_value(score) AS score,
               any_value(classifier_label) AS classifier_label, any_value(rule_label) AS rule_label,
               any_value(rule) AS rule, any_value(rules_version) AS rules_version, any_value(label) AS label,
               any_value(label_policy) AS label_policy, any_value(model_version) AS model_version,
               any_value(threshold) AS threshold
        FROM sentences GROUP BY key ORDER BY reports DESC, key""")


def _load(con, name: str, table: pa.Table) -> None:
    con.register("incoming", table)
    try:
        con.execute(f"CREATE TABLE {name} AS SELECT * FROM incoming")
    finally:
        con.unregister("incoming")


#: statements with which DuckDB writes a file or opens another database file: refused on a manifest
#: opened read-only (its ``allowed_directories`` let SQL read and write alike inside the folder)
FILE_STATEMENTS = ("ATTACH", "COPY", "EXPORT")


def open_manifest(db: str | os.PathLike, write: bool = False, allow_external: bool = False):
    """A DuckDB connection to the manifest ``db`` (read-only unless ``write``; the caller closes
    it), confined unless ``allow_external``: DuckDB touches no file outside the manifest's folder
    (``allowed_directories`` = that folder, then ``enable_external_access = false``: no other file,
    URL, extension install or load, secret store or Python variable; its temp directory
    ``<db>.tmp`` stays inside) and ``lock_configuration`` keeps SQL from SETting any of it back."""
    import duckdb

    db = Path(db)
    if not db.is_file():
        raise FileNotFoundError(f"no manifest at {db}: build one with `offclip manifest OUT --build`")
    con = duckdb.connect(str(db), read_only=not write)
    if allow_external:
        return con
    root = db.resolve().parent
    try:
        settings = con.execute(
            "SELECT current_setting('lock_configuration'), current_setting('enable_external_access'), "
            "current_setting('allowed_directories')"
        ).fetchone()
        assert settings is not None  # a SELECT without FROM: one row
        locked, external, allowed = settings
        if locked:  # DuckDB shares one instance per file in a process: another connection confined it
            if external or root not in {Path(d) for d in allowed}:
                raise duckdb.PermissionException(f"{db} is open in this process with another configuration")
        else:
            con.execute("SET allowed_directories = ?", [[str(root)]])  # only while external access is on
            for setting in ("enable_external_access", "autoinstall_known_extensions", "autoload_known_extensions"):
                con.execute(f"SET {setting} = false")
            con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def query(db: str | os.PathLike, sql: str, write: bool = False, allow_external: bool = False) -> pd.DataFrame:
    """Run SQL on a manifest: read-only unless ``write``, confined to the manifest's folder unless
    ``allow_external`` (:func:`open_manifest`); read-only refuses :data:`FILE_STATEMENTS`."""
    import duckdb

    with open_manifest(db, write=write, allow_external=allow_external) as con:
        refused = [] if write else sorted({s.type.name for s in con.extract_statements(sql)} & set(FILE_STATEMENTS))
        if refused:
            raise duckdb.PermissionException(
                f"the manifest is open read-only: {', '.join(refused)} would write a file or open another "
                "database (offclip sql --out FILE saves a result; --write allows it inside the manifest's folder)"
            )
        try:
            relation = con.sql(sql)  # None for statements without a result
            return relation.to_arrow_table().to_pandas() if relation is not None else pd.DataFrame()
        except duckdb.PermissionException as exc:
            if allow_external:
                raise
            raise duckdb.PermissionException(
                f"{exc} (SQL on {db} may use files under {Path(db).resolve().parent} only; "
                "offclip sql --allow-external lifts this)"
            ) from exc


def summary(db: str | os.PathLike) -> str:
    """A human summary: table sizes, label distribution, rejects, shard health, last runs."""
    lines = [f"manifest {db}"]
    counts = query(db, "SELECT table_name, estimated_size FROM duckdb_tables() ORDER BY table_name")
    lines.append("  tables   " + ", ".join(f"{r.table_name} {r.estimated_size}" for r in counts.itertuples()))
    for title, sql in (
        ("labels", "SELECT * FROM label_distribution"),
        ("rejects", "SELECT * FROM reject_reasons"),
        ("shards", "SELECT * FROM shard_health"),
        (
            "runs",
            "SELECT stage, started_at, round(seconds, 1) AS seconds, model_version FROM runs "
            "ORDER BY started_at DESC LIMIT 5",
        ),
    ):
        df = query(db, sql)
        lines.append(f"  {title}:")
        lines += ["    " + line for line in (df.to_string(index=False) if len(df) else "(none)").splitlines()]
    # samples the shards hold that the records no longer make (a manifest from before has no such view)
    if len(query(db, "SELECT 1 FROM duckdb_views() WHERE view_name = 'shard_mismatches'")):
        df = query(
            db,
            "SELECT problem, count(*) AS samples, count(DISTINCT shard) AS shards, "
            "min(study_id) AS first_study FROM shard_mismatches GROUP BY problem ORDER BY problem",
        )
        if len(df):
            lines.append(
                "  shards out of step with the records (SELECT * FROM shard_mismatches; "
                "offclip shards OUT rewrites them):"
            )
            lines += ["    " + line for line in df.to_string(index=False).splitlines()]
    # the sentence filter's two opinions (a manifest from before the audit has no such view)
    if len(query(db, "SELECT 1 FROM duckdb_views() WHERE view_name = 'classifier_rule_agreement'")):
        df = query(db, "SELECT * FROM classifier_rule_agreement")
        lines.append("  sentence filter, classifier × rules (SELECT * FROM classifier_rule_disagreements):")
        lines += ["    " + line for line in (df.to_string(index=False) if len(df) else "(none)").splitlines()]
    # the label agreement, when curate found MIMIC's label files (a manifest from before has no such table)
    if len(query(db, "SELECT 1 FROM duckdb_tables() WHERE table_name = 'study_labels'")) and len(
        query(db, "SELECT 1 FROM study_labels LIMIT 1")
    ):
        df = query(db, "SELECT * FROM label_agreement_summary")
        lines.append("  label agreement (classifier × MIMIC labelers):")
        lines += ["    " + line for line in df.to_string(index=False).splitlines()]
    return "\n".join(lines)


def append_runs(db: str | os.PathLike, runs: list[dict]) -> int:
    """Add run records (``run_record``) to an existing manifest's ``runs`` history, in one
    transaction: stages that do not rebuild the manifest (train, evaluate) log here."""
    import duckdb

    table = RUNS.validate(pd.DataFrame(runs))
    with manifest_lock(db), duckdb.connect(str(db)) as con:
        con.register("incoming", table)
        try:
            con.execute("BEGIN")
            con.execute("INSERT INTO runs SELECT * FROM incoming")
            con.execute("COMMIT")
        finally:
            con.unregister("incoming")
    return len(runs)


def _with_nullable_columns(rows: pd.DataFrame) -> pd.DataFrame:
    """``rows`` with every nullable :data:`EVALUATIONS` column it lacks added as NULL (rows from
    writers, or manifests, older than the column: ``protocol``)."""
    missing = {c.name: None for c in EVALUATIONS.columns if c.nullable and c.name not in rows.columns}
    return rows.assign(**missing) if missing else rows


def _duckdb_type(arrow_type) -> str:
    import pyarrow as pa

    return {pa.string(): "VARCHAR", pa.float64(): "DOUBLE", pa.int64(): "BIGINT"}[arrow_type]


def record_evaluations(db: str | os.PathLike, rows: pd.DataFrame) -> int:
    """Append evaluation rows (contract :data:`EVALUATIONS`) to the ``evaluations`` table of the
    DuckDB file ``db`` in one transaction; the table (and its views) are created when missing, and
    so is the file (a stand-alone results database). Returns the number of rows added."""
    import duckdb

    table = EVALUATIONS.validate(_with_nullable_columns(rows))  # raises ContractViolation before anything is written
    with manifest_lock(db), duckdb.connect(str(db)) as con:
        con.register("incoming", table)
        try:
            con.execute("BEGIN")
            exists = "evaluations" in {r[0] for r in con.execute("SHOW TABLES").fetchall()}
            if exists:  # a table written before a nullable column existed gets it (NULL in its old rows)
                present = {r[0] for r in con.execute("DESCRIBE evaluations").fetchall()}
                for column in EVALUATIONS.columns:
                    if column.name not in present:
                        con.execute(f"ALTER TABLE evaluations ADD COLUMN {column.name} {_duckdb_type(column.type)}")
            if not exists:
                con.execute("CREATE TABLE evaluations AS SELECT * FROM incoming LIMIT 0")
                for name, sql in EVALUATION_VIEWS.items():
                    con.execute(f"CREATE OR REPLACE VIEW {name} AS {sql}")
            con.execute("INSERT INTO evaluations BY NAME SELECT * FROM incoming")
            con.execute("COMMIT")  # on any error before this, closing the connection rolls back
        finally:
            con.unregister("incoming")
    return table.num_rows

"""What a build produces, as one comparable fingerprint: the behaviour check of a refactor
(issue 30: "a 120-study world and its shards, ingest tables and manifest tables byte-identical
before and after, except recorded code versions").

    python results/tools/fingerprint.py WORK --classifier CLASSIFIER [--compare BEFORE.json]

Builds, under WORK (emptied first): a demo world of 120 studies (seed 0), then the same curation
two ways, each the way a user runs it:

* ``cli``:  ``offclip ingest`` → ``offclip curate`` → ``offclip shards`` (the library's own drivers)
* ``flow``: ``offclip build-shards`` (the Prefect flow run in place: its tasks, its executor)

and writes WORK/fingerprint.json: the SHA-256 of every file of the world and of both outputs
(Parquet and tar files byte for byte), and of every manifest table's rows (DuckDB's file is not
byte-stable; its tables are compared as sorted CSV), with the runs table's per-run fields (ids,
times, code version) left out and WORK's path replaced. ``--compare`` prints every entry that differs from an earlier
fingerprint and exits 1 if any does.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

#: the runs table's fields that differ between two runs of the same build by design
VOLATILE_RUN_COLUMNS = ("run_id", "started_at", "finished_at", "seconds", "code_version", "offclip_version")

def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def tree(root: Path, work: Path) -> dict[str, str]:
    """Every file byte for byte, except: a DuckDB file by its tables' rows (its pages are not
    byte-stable), the ingest stamps without their modification times (a rebuilt world's files
    are new files)."""
    out = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        if not path.is_file() or "__pycache__" in path.parts or path.name.endswith(".wal"):
            continue
        if path.suffix == ".duckdb":
            out.update({f"{key}:{k}": v for k, v in duckdb_tables(path, work).items()})
        elif path.name == "stamps.parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path).to_pydict()
            # a stamp is sizes and modification times (nanoseconds: 16 digits and more)
            stamps = [f"{i}={re.sub(r'[0-9]{16,}', 'T', s)}" for i, s in zip(table["study_id"], table["stamp"])]
            out[key + ":without-mtimes"] = sha("\n".join(stamps).encode())
        else:
            out[key] = sha(path.read_bytes())
    return out


def duckdb_tables(db: Path, work: Path) -> dict[str, str]:
    import duckdb

    out = {}
    with duckdb.connect(str(db), read_only=True) as con:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' ORDER BY 1").fetchall()]
        for name in names:
            df = con.execute(f'SELECT * FROM "{name}"').df()
            if name == "runs":
                df = df.drop(columns=[c for c in VOLATILE_RUN_COLUMNS if c in df.columns])
                if "counts" in df.columns:  # the ingest time is a count of seconds
                    df["counts"] = [json.dumps({k: v for k, v in json.loads(c).items() if "seconds" not in k},
                                               sort_keys=True) for c in df["counts"]]
            if "parameters" in df.columns:  # the paths of this build
                df["parameters"] = df["parameters"].str.replace(str(work), "WORK", regex=False)
            lines = df.astype(str).to_csv(index=False).splitlines()  # list columns included
            out[name] = sha("\n".join(lines[:1] + sorted(lines[1:])).encode())
    return out


def run(cmd: list[str], env: dict) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)


def build(work: Path, classifier: Path, offclip: str) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    world, cli, flow = work / "world", work / "cli", work / "flow"
    run([offclip, "demo-world", str(world), "--studies", "120", "--seed", "0", "--eval-images", "20"], env)
    run([offclip, "ingest", str(world), str(cli), "--folders", "all", "--image-size", "128", "-q"], env)
    run([offclip, "curate", str(cli), "--classifier", str(classifier)], env)
    run([offclip, "shards", str(cli)], env)
    run([offclip, "build-shards", str(world), str(flow), "--folders", "all", "--image-size", "128",
         "--classifier", str(classifier)], env)
    result = {}
    for name, root in (("world", world), ("cli", cli), ("flow", flow)):
        result.update({f"{name}:{k}": v for k, v in tree(root, work).items()})
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("work", type=Path)
    ap.add_argument("--classifier", type=Path, required=True, help="a saved sentence classifier (offclip classifier)")
    ap.add_argument("--compare", type=Path, help="an earlier fingerprint.json to compare with")
    ap.add_argument("--offclip", default=str(Path(sys.executable).parent / "offclip"))
    args = ap.parse_args(argv)
    result = build(args.work, args.classifier, args.offclip)
    (args.work / "fingerprint.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"{len(result)} entries → {args.work / 'fingerprint.json'}")
    if args.compare:
        before = json.loads(args.compare.read_text())
        differ = sorted(k for k in before.keys() | result.keys() if before.get(k) != result.get(k))
        for key in differ:
            print(f"differs: {key}: {before.get(key)} → {result.get(key)}")
        print(f"{len(differ)} of {len(before.keys() | result.keys())} entries differ")
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

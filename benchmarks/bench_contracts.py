"""Table contracts: offclip's own ``Contract.validate`` against pandera, on the curated sentences.

    python benchmarks/bench_contracts.py [--rows 2000000] [--repeat 3] [--json PATH]

The question (issue 19): adopt pandera for the contracts in ``data_contracts/`` or drop the
dependency. Measured on the table that decides it, the curated ``sentences`` table (contract
``CURATED_SENTENCES``: what ``curate`` validates before it writes ``OUT/curate/sentences.parquet``
and what the manifest's ``sentences`` table is loaded from), at MIMIC-CXR's size (~2 M report
sentences of the ~230 k studies; the pairs and study tables are ~9x smaller).

- **contract**: ``CURATED_SENTENCES.validate(df)``: the checks, then the Arrow table a write needs.
  Its two parts are timed apart too (``checks`` = validate − ``arrow``).
- **pandera**: a ``pandera.pandas.DataFrameSchema`` built from the same contract (same dtypes,
  nullability, ``isin`` / ``ge`` / ``le`` / full-match pattern / unique checks, the
  ``(study_id, index)`` key, no undeclared columns), ``validate(df)`` first-failure (``lazy=False``,
  as the contract) and collect-all (``lazy=True``); and pandera + the same Arrow conversion, which a
  write still needs (pandera gives no Arrow schema).
- **errors**: both on a small table broken four ways (wrong dtype, a value outside an
  enumeration, a null in a required column, a duplicate key): the messages, side by side.

The frame is what curate holds before the write: realistic dtypes (int64 ids, int32 index,
float32 scores), ~7 sentences per report, texts drawn (Zipf-like) from 150 k distinct sentences.
Methods are interleaved and each timed ``--repeat`` times (best and median reported); peak RSS
is reported, since a validator that copies the frame matters at this size.

pandera is no longer a dependency of offclip (this benchmark decided it: BENCHMARKS.md "Table
contracts"); without it installed (``pip install pandera``) only the contract is timed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from offclip.data_contracts import enums  # noqa: E402
from offclip.data_contracts.contract import Contract, ContractViolation  # noqa: E402
from offclip.data_contracts.curate import CURATED_SENTENCES  # noqa: E402
from offclip.demo.seed_sentences import ABNORMAL_SENTENCES, NORMAL_SENTENCES  # noqa: E402

_PANDAS_DTYPES = {pa.int64(): "int64", pa.int32(): "int32", pa.int16(): "int16", pa.float32(): "float32",
                  pa.float64(): "float64", pa.bool_(): "bool", pa.string(): str}


def pandera_schema(contract: Contract):
    """The pandera schema with the same checks as ``contract`` (no coercion, like the contract)."""
    import pandera.pandas as pdr

    columns = {}
    for c in contract.columns:
        checks = []
        if c.isin is not None:
            checks.append(pdr.Check.isin(list(c.isin)))
        if c.pattern is not None:
            checks.append(pdr.Check.str_matches(rf"(?:{c.pattern})\Z"))  # re.match + \Z = fullmatch
        if c.min is not None:
            checks.append(pdr.Check.ge(c.min))
        if c.max is not None:
            checks.append(pdr.Check.le(c.max))
        columns[c.name] = pdr.Column(_PANDAS_DTYPES.get(c.type), checks=checks or None, nullable=c.nullable,
                                     unique=c.unique, required=True)
    keys = [list(k) for k in contract.keys]
    return pdr.DataFrameSchema(columns, strict=True, unique=keys[0] if keys else None, name=contract.name)


def sentences_frame(rows: int, seed: int = 0) -> pd.DataFrame:
    """A contract-valid curated sentences frame of ``rows`` rows, with curate's dtypes."""
    rng = np.random.default_rng(seed)
    per_report = rng.integers(3, 12, size=rows // 5 + 10)
    study_of = np.repeat(np.arange(len(per_report), dtype=np.int64), per_report)[:rows]
    n_studies = int(study_of[-1]) + 1
    starts = np.r_[0, np.flatnonzero(np.diff(study_of)) + 1]
    index = (np.arange(rows) - np.repeat(starts, np.diff(np.r_[starts, rows]))).astype(np.int32)
    # 150 k distinct sentences, drawn Zipf-like (a few normal phrases dominate real reports)
    bases = NORMAL_SENTENCES + ABNORMAL_SENTENCES
    pool = np.array([f"{bases[i % len(bases)][:-1]}, finding {i // len(bases)}." if i >= len(bases) else bases[i]
                     for i in range(150_000)], dtype=object)
    keys = np.array([t.lower().rstrip(".") for t in pool], dtype=object)
    draw = np.minimum(rng.zipf(1.3, size=rows) - 1, len(pool) - 1)
    abnormal_pool = np.array([(i % len(bases)) >= len(NORMAL_SENTENCES) for i in range(len(pool))])
    score = np.where(abnormal_pool[draw], rng.uniform(0.5, 1.0, rows), rng.uniform(0.0, 0.5, rows)).astype(np.float32)
    clf = np.where(score >= 0.5, "abnormal", "normal").astype(object)
    rule = np.where(abnormal_pool[draw], "abnormal", "normal").astype(object)
    abnormal_report = pd.Series(clf == "abnormal").groupby(study_of).transform("any").to_numpy()
    kept = ~abnormal_report | (clf == "abnormal")
    reason = np.select([~abnormal_report, clf == "abnormal"], [enums.KEEP_NORMAL_REPORT, enums.KEEP_ABNORMAL],
                       enums.DROP_NORMAL_IN_ABNORMAL).astype(object)
    df = pd.DataFrame({
        "study_id": 50_000_000 + study_of, "subject_id": 10_000_000 + study_of // 3, "index": index,
        "section": np.where(index < 3, "findings", "impression").astype(object),
        "text": pool[draw], "key": keys[draw], "score": score, "label": clf, "classifier_label": clf,
        "rule_label": rule, "rule": np.where(rule == "abnormal", "positive:finding", "negated_only").astype(object),
        "rules_version": "rules-bench", "label_policy": "classifier", "model_version": "clf-bench",
        "threshold": np.float32(0.5), "kept": kept, "reason": reason, "prompt": None,
    })
    assert n_studies > 0 and list(df.columns) == CURATED_SENTENCES.names
    return df


def broken_tables() -> dict[str, pd.DataFrame]:
    """A valid 1,000-row table broken four ways, one at a time."""
    good = sentences_frame(1000, seed=1)
    wrong_dtype = good.copy()
    wrong_dtype["index"] = wrong_dtype["index"].astype("float64") + 0.5
    bad_enum = good.copy()
    bad_enum.loc[17, "label"] = "abnormall"
    null = good.copy()
    null.loc[[5, 9], "text"] = None
    duplicate = good.copy()
    duplicate.loc[3, ["study_id", "index"]] = duplicate.loc[2, ["study_id", "index"]].to_numpy()
    return {"wrong dtype (index float64, 0.5 added)": wrong_dtype, "bad enum value (label 'abnormall')": bad_enum,
            "null in a required column (text)": null, "duplicate key (study_id, index)": duplicate}


def _time(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    t = time.perf_counter()
    try:
        import pandera.pandas as pdr
    except ImportError:
        pdr = None
        print("pandera is not installed: timing the contract alone (pip install pandera to compare)")
    import_s = time.perf_counter() - t  # pandera's own import (pandas, pyarrow already loaded)
    schema = pandera_schema(CURATED_SENTENCES) if pdr else None
    t = time.perf_counter()
    df = sentences_frame(args.rows)
    build_s = time.perf_counter() - t
    frame_mb = df.memory_usage(deep=False).sum() / 1e6
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{len(df):,} rows, {df['study_id'].nunique():,} reports, {df['key'].nunique():,} distinct keys; built in "
          f"{build_s:.1f} s; load {os.getloadavg()[0]:.2f}", flush=True)

    arrow = CURATED_SENTENCES.schema
    methods = {
        "contract (checks + Arrow)": lambda: CURATED_SENTENCES.validate(df),
        "arrow only": lambda: pa.Table.from_pandas(df[CURATED_SENTENCES.names], schema=arrow, preserve_index=False),
    }
    if schema is not None:
        methods.update({
            "pandera (lazy=False)": lambda: schema.validate(df, lazy=False),
            "pandera (lazy=True)": lambda: schema.validate(df, lazy=True),
            "pandera + Arrow": lambda: pa.Table.from_pandas(schema.validate(df)[CURATED_SENTENCES.names], schema=arrow,
                                                            preserve_index=False),
        })
    times: dict[str, list[float]] = {m: [] for m in methods}
    rss: dict[str, float] = {}
    for _ in range(args.repeat):  # interleaved: drift in the machine's load hits every method alike
        for name, fn in methods.items():
            times[name] += _time(fn, 1)
            rss[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    res = {name: {"best_s": min(v), "median_s": statistics.median(v), "runs": v} for name, v in times.items()}
    checks_s = res["contract (checks + Arrow)"]["best_s"] - res["arrow only"]["best_s"]
    res["contract checks only (validate - arrow)"] = {"best_s": checks_s}
    base = res["contract (checks + Arrow)"]["best_s"]
    for name in ("pandera (lazy=False)", "pandera (lazy=True)", "pandera + Arrow"):
        if name in res:
            res[name]["vs_contract"] = res[name]["best_s"] / base
    if "pandera (lazy=False)" in res:
        res["pandera (lazy=False)"]["vs_contract_checks"] = res["pandera (lazy=False)"]["best_s"] / checks_s

    errors = {}
    for case, bad in broken_tables().items():
        row = {}
        try:
            CURATED_SENTENCES.validate(bad)
            row["contract"] = "(accepted)"
        except ContractViolation as exc:
            row["contract"] = str(exc)
        for lazy in (False, True) if schema is not None else ():
            try:
                schema.validate(bad, lazy=lazy)
                row[f"pandera lazy={lazy}"] = "(accepted)"
            except (pdr.errors.SchemaError, pdr.errors.SchemaErrors) as exc:
                row[f"pandera lazy={lazy}"] = str(exc)
        errors[case] = row

    result = {"rows": len(df), "reports": int(df["study_id"].nunique()), "frame_mb_shallow": frame_mb,
              "build_s": build_s, "pandera_import_s": import_s, "repeat": args.repeat, "results": res,
              "peak_rss_mb_after_frame": rss0, "peak_rss_mb_after": rss, "errors": errors,
              "load_average": os.getloadavg()}
    print(f"\n{'method':<40} {'best':>8} {'median':>8}  vs contract")
    for name, r in res.items():
        ratio = f"{r['vs_contract']:.2f}x" if "vs_contract" in r else ""
        print(f"{name:<40} {r['best_s']:8.2f} {r.get('median_s', float('nan')):8.2f}  {ratio}")
    print(f"pandera import {import_s:.2f} s; peak RSS {rss0:.0f} MB after the frame, "
          + ", ".join(f"{k} {v:.0f}" for k, v in rss.items()))
    for case, row in errors.items():
        print(f"\n== {case}")
        for who, msg in row.items():
            print(f"-- {who}:\n{msg}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Rewrite README.md's block of what `make demo` prints from a `make demo` output, so the figures
in the README are a run's of the current commit, never typed.

    make demo                                   # on a clean clone, note its wall time
    python results/tools/demo_readme.py out/curated --wall "23 min" [--readme README.md] [--check]

It reads the manifest (``latest_evaluations``, ``latest_differences``), takes the newest model
evaluated against its baseline (what ``offclip answer`` prints), and replaces what stands between
``<!-- demo-results:start -->`` and ``<!-- demo-results:end -->``. ``--check`` rewrites nothing
and exits 1 when the README's block differs from what this output gives.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

START, END = "<!-- demo-results:start -->", "<!-- demo-results:end -->"


def _f(value, signed: bool = False) -> str:
    if value is None or value != value:
        return "–"
    return f"{value:+.3f}" if signed else f"{value:.3f}"


def block(out: Path, wall: str | None, commit: str) -> str:
    from offclip.models.answer import latest_answer, latest_comparison
    from offclip.pipeline.manifest import query

    db = out / "manifest.duckdb"
    found = latest_comparison(db)
    if found is None:
        raise SystemExit(f"{db}: no model evaluated against a baseline (run `make demo` first)")
    rows = {r["metric"]: r for r in found["differences"]}
    model_run, base_run = found["model_run"], found["baseline_run"]
    model, base = found["model"], found["baseline"]
    pairs = query(db, "SELECT count(*) AS n FROM pairs WHERE split = 'train'")["n"].iloc[0]

    def diff(metric: str) -> str:
        r = rows.get(metric)
        return "" if r is None else f"{_f(r['difference'], True)} [{_f(r['ci_low'], True)}, {_f(r['ci_high'], True)}]"

    table = ["| run | normal AUC | macro AUC | normal FP / FN | prompt-free normal AUC |", "|---|---|---|---|---|"]
    for label, r, name in (("plain CLIP", base, base_run), ("OFF-CLIP", model, model_run)):
        short = re.sub(r"-[0-9a-f]{10}$", "-…", name)
        table.append(f"| {label} (`{short}`) | {_f(r['normal_auc'])} | {_f(r['macro_auc'])} | "
                     f"{r['normal_fp']} / {r['normal_fn']} | {_f(r['normal_auc_centroid'])} |")
    table.append(f"| difference [95 % CI, reports resampled] | {diff('normal_auc')} | {diff('macro_auc')} | | "
                 f"{diff('normal_auc_centroid')} |")
    head = (f"What `make demo` printed at commit `{commit}` on a clean clone with an empty home"
            + (f" (wall time: {wall})" if wall else "") +
            f": {model['n_images']:,} evaluation images (VinDr-format renders of the held-out reports), one seed, "
            f"{pairs:,} training pairs. Its last lines:")
    answer = latest_answer(db)
    return "\n".join([head, "", "```", answer, "```", "", *table])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="make demo's curated output (out/curated)")
    parser.add_argument("--wall", help="make demo's wall time, as measured (e.g. '23 min')")
    parser.add_argument("--readme", type=Path, default=Path("README.md"))
    parser.add_argument("--commit", help="default: the manifest's code version")
    parser.add_argument("--check", action="store_true", help="exit 1 when the README's block differs; write nothing")
    args = parser.parse_args(argv)
    commit = args.commit
    if commit is None:
        from offclip.pipeline.manifest import query

        runs = query(args.out / "manifest.duckdb", "SELECT code_version FROM runs ORDER BY started_at DESC LIMIT 1")
        commit = runs["code_version"].iloc[0] if len(runs) else "unknown"
    text = args.readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"{args.readme}: no {START} … {END} block")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    new = f"{before}{START}\n{block(args.out, args.wall, commit)}\n{END}{after}"
    if args.check:
        same = new.split(START)[1].split(END)[0].split("\n", 2)[2:] == text.split(START)[1].split(END)[0].split("\n", 2)[2:]
        print("README block matches" if same else "README block differs from this output")
        return 0 if same else 1
    args.readme.write_text(new, encoding="utf-8")
    print(block(args.out, args.wall, commit))
    return 0


if __name__ == "__main__":
    sys.exit(main())

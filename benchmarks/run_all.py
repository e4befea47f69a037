"""Run every CPU benchmark at a small size, one after the other (what ``make bench`` runs).

    python benchmarks/run_all.py [--out out/bench] [--only ingest,sentences,...] [--skip ...]

Sized to finish in under 10 minutes on a 2-core machine, on a fresh checkout after
``make setup``: what the benchmarks need is built first, small, with the real pipeline, under
``OUT/work/`` (reused by the next run; delete it for a fresh build):

* a 60-study demo world (``offclip demo-world``, default scale),
* a frozen sentence classifier trained on a few hand-labelled sentences,
* that world ingested, curated, sharded and put in a manifest (the input of ``bench_train.py``).

Each benchmark runs as its own process (so none inherits another's imports or warm caches) and
writes ``OUT/<name>.json``; its output goes to ``OUT/<name>.log``. At the end a summary table
(one headline ratio per benchmark, with its wall time) is printed and written to
``OUT/summary.json``. The figures in BENCHMARKS.md come from the larger runs it names; these small
runs check that every benchmark works and give a first, noisier reading (fixed costs weigh more
at small sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORLD_STUDIES = 60


def plan(work: Path, out: Path) -> dict[str, list[str]]:
    """name -> the command line (after ``python``) of each benchmark, small sizes."""
    world, clf, curated = work / "world", work / "classifier", work / "curated"
    return {
        "ingest": ["bench_ingest.py", "--n", "2", "--repeat", "3"],
        "png": ["bench_png.py", "--n", "2", "--repeat", "10"],
        "decode": ["bench_decode.py", "--n", "2", "--repeat", "3"],
        "mimic_scale": ["bench_mimic_scale.py", "--work", str(work / "mimic-scale"), "--fraction", "0.01", "--ingest"],
        "ingest_workers": ["bench_ingest_workers.py", "--world", str(world), "--subset", "all", "--batch-size", "8",
                           "--repeat", "2"],
        "sentences": ["bench_sentences.py", "--repeat", "2"],
        "classifier": ["bench_classifier.py", "--model", str(clf), "--n", "200", "--batch-sizes", "128",
                       "--repeat", "2"],
        "shards_manifest": ["bench_shards_manifest.py", "--pairs", "500", "--naive-rows", "2000",
                            "--sentences", "200000"],
        "contracts": ["bench_contracts.py", "--rows", "200000", "--repeat", "2"],
        "orchestration": ["bench_orchestration.py", "--world", str(world), "--classifier", str(clf)],
        "train": ["bench_train.py", "--shards", str(curated), "--steps", "4", "--warmup", "3", "--rounds", "2",
                  "--loader-batches", "10", "--num-workers", "0"],
    }


def headline(name: str, r: dict) -> str:
    """The one line worth reading from a benchmark's JSON."""
    try:
        if name == "ingest":
            le = r["results"]["explicit_le"]
            return (f"explicit LE: {le['speedup_vs_naive']:.1f}x the naive loop, {le['cost_vs_floor']:.2f}x the floor, "
                    f"{le['cost_vs_floor_png']:.2f}x floor+PNG; J2K {r['results']['j2k_lossless']['cost_vs_floor']:.2f}x "
                    f"the floor")
        if name == "png":
            res = r["results"]
            now, before = res["zlib-ng L1 Huffman only (now)"], res["zlib L1 run-length (before)"]
            return (f"PNG deflate {now['ms']:.2f} ms ({before['ms'] / now['ms']:.1f}x zlib run-length), "
                    f"{now['kb']:.0f} kB vs {before['kb']:.0f} kB")
        if name == "decode":
            res = r["results"]
            return (f"reduced decode vs full: JPEG {res['jpeg@512']['speedup_vs_full']:.2f}x, "
                    f"JPEG 2000 {res['j2k@512']['speedup_vs_full']:.1f}x at 512 px; mean |d| "
                    f"{max(v['mean_abs_diff'] for v in res.values()):.2f} of 255 at most")
        if name == "mimic_scale":
            return (f"{r['tree']['images']} images ({r['tree']['studies']} studies): scan {r['scan']['seconds']:.1f} s, "
                    f"{r['scan']['peak_rss_mb']:.0f} MB; {r['plan']['task_runs']} task runs; unchanged re-run "
                    f"{r['reingest']['vs_scan']:.1f}x the scan")
        if name == "ingest_workers":
            return (f"{r['images']} images: 1 -> 2 workers {r['scaling']['2']:.2f}x "
                    f"(serial parts allow about {r['ideal_ratio']['2']:.2f}x)")
        if name == "sentences":
            s = r["split"]
            return (f"split {s['offclip']['sentences_per_s']:.0f} sentences/s "
                    f"({1 / s['sentencizer']['time_vs_offclip']:.1f}x the sentencizer's time); "
                    f"dedup {r['dedup']['ratio']:.2f}x; re-run model calls {r['model_calls'][-1]['model_calls']}")
        if name == "classifier":
            rows = {(x["method"], x["batch_size"]): x for x in r["rows"]}
            best = max((x for x in r["rows"] if x["method"] == "offclip"), key=lambda x: x["sentences_per_s"])
            uns = rows[("unsorted", 128)]
            sorted128 = rows.get(("offclip", 128), best)
            return (f"{best['sentences_per_s']:.0f} sentences/s (batch {best['batch_size']}); length-sorted "
                    f"{uns['seconds'] / sorted128['seconds']:.2f}x unsorted")
        if name == "shards_manifest":
            return (f"shards {r['shards']['speedup']:.1f}x naive; manifest "
                    f"{r['manifest']['speedup_at_scale']:.0f}x row-by-row INSERT")
        if name == "contracts":
            res = r["results"]
            if "pandera + Arrow" not in res:
                return (f"{r['rows']:,} curated sentences: contract {res['contract (checks + Arrow)']['best_s']:.2f} s "
                        f"(pandera not installed)")
            return (f"{r['rows']:,} curated sentences: contract {res['contract (checks + Arrow)']['best_s']:.2f} s, "
                    f"pandera {res['pandera (lazy=False)']['vs_contract']:.2f}x, pandera + Arrow "
                    f"{res['pandera + Arrow']['vs_contract']:.2f}x")
        if name == "orchestration":
            d = r["direct_s"]
            return (f"{r['images']} images: thread runner {100 * (r['prefect_thread_s'] / d - 1):+.1f} %, "
                    f"process runner {100 * (r['prefect_process_s'] / d - 1):+.1f} % over direct ({d:.1f} s)")
        if name == "train":
            b = r["best"]
            loader = next(v for k, v in b.items() if k.startswith("loader ("))
            return (f"{r['config']}: synthetic {b['synthetic']['images_per_s']:.1f} images/s, with the loader "
                    f"{loader['images_per_s']:.1f} ({loader['vs_synthetic']:.2f}x; loading share "
                    f"{100 * loader['wait_share']:.1f} %)")
    except (KeyError, TypeError, StopIteration, ZeroDivisionError) as exc:
        return f"(no headline: {type(exc).__name__} {exc})"
    return ""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench")
    ap.add_argument("--only", default="", help="comma-separated benchmark names (default: all)")
    ap.add_argument("--skip", default="", help="comma-separated benchmark names to leave out")
    args = ap.parse_args(argv)
    out = args.out.resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    commands = plan(work, out)
    only = [x for x in args.only.split(",") if x] or list(commands)
    skip = {x for x in args.skip.split(",") if x}
    unknown = (set(only) | skip) - set(commands)
    if unknown:
        ap.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(commands)}")
    names = [n for n in commands if n in only and n not in skip]

    started = time.perf_counter()
    print(f"load average at the start: {os.getloadavg()[0]:.2f} ({os.cpu_count()} CPUs)", flush=True)
    from common import curated_shards, small_world, tiny_classifier

    t = time.perf_counter()
    world = small_world(work / "world", WORLD_STUDIES)
    clf = tiny_classifier(work / "classifier")
    if "train" in names:
        curated_shards(world, work / "curated", clf)
    inputs_s = time.perf_counter() - t
    print(f"inputs under {work}: {inputs_s:.0f} s", flush=True)

    summary = {"inputs_s": inputs_s, "benchmarks": {}}
    failed = []
    for name in names:
        cmd = [sys.executable, str(HERE / commands[name][0]), *commands[name][1:], "--json", str(out / f"{name}.json")]
        print(f"\n== {name}: python benchmarks/{' '.join(commands[name])}", flush=True)
        t = time.perf_counter()
        with open(out / f"{name}.log", "w") as log:
            rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        seconds = time.perf_counter() - t
        result = json.loads((out / f"{name}.json").read_text()) if rc == 0 and (out / f"{name}.json").is_file() else {}
        line = headline(name, result) if rc == 0 else f"FAILED (exit {rc}; see {out / f'{name}.log'})"
        if rc != 0:
            failed.append(name)
        summary["benchmarks"][name] = {"command": ["python", f"benchmarks/{commands[name][0]}", *commands[name][1:]],
                                       "seconds": seconds, "exit": rc, "headline": line}
        print(f"   {seconds:5.0f} s  {line}", flush=True)

    summary["wall_s"] = time.perf_counter() - started
    summary["load_average_end"] = os.getloadavg()
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\n{'benchmark':<16} {'seconds':>7}  headline")
    for name, s in summary["benchmarks"].items():
        print(f"{name:<16} {s['seconds']:7.0f}  {s['headline']}")
    print(f"total wall time {summary['wall_s']:.0f} s (inputs {inputs_s:.0f} s); results in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

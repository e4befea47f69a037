"""Orchestration overhead: the same build through the Prefect flow vs the stages called directly.

    python benchmarks/bench_orchestration.py --world out/demo-world --classifier out/curated/classifier

Both write to fresh output roots from the same demo world with the same saved classifier:

- **direct**: ``run_ingest`` (a process pool of ``--workers``) → ``run_curate`` → ``write_shards`` →
  ``build_manifest``;
- **prefect**: the ``build-shards`` flow on a temporary local Prefect server (started before the
  clock), with the process task runner of ``--workers`` and, for comparison, the thread runner.

Overhead = prefect time / direct time − 1 (goal ≤ 10 % on a 2,000-image build). With
``--repeat N`` the three paths run in N interleaved rounds: the overhead is given from the best
time of each path, and as the median of the rounds' own ratios (a noisy neighbour slows a
round, not a path). The classifier is loaded once before the clock, so no path pays the
first-load imports (transformers' model classes, ~5 s) that a fresh process pays in both.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def direct(world: Path, out: Path, classifier: Path, workers: int) -> float:
    from offclip.pipeline.curate import CurateConfig, run_curate
    from offclip.pipeline.ingest import IngestConfig, run_ingest
    from offclip.pipeline.manifest import build_manifest
    from offclip.pipeline.scan import ScanConfig
    from offclip.pipeline.shards import ShardConfig, write_shards

    t = time.perf_counter()
    run_ingest(IngestConfig(source=world, out=out, scan=ScanConfig(world, folders=None), workers=workers,
                            progress=False))
    run_curate(CurateConfig(out=out, classifier=classifier))
    write_shards(ShardConfig(out=out))
    build_manifest(out)
    return time.perf_counter() - t


def through_prefect(world: Path, out: Path, classifier: Path, workers: int, runner: str) -> float:
    from offclip.flows.build import build_shards

    t = time.perf_counter()
    build_shards(source=str(world), out=str(out), folders="all", classifier=str(classifier),
                 task_runner=runner, workers=workers, trigger_train=False)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=Path, required=True, help="a demo world (offclip demo-world)")
    ap.add_argument("--classifier", type=Path, required=True, help="a saved classifier (offclip classifier train)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1, help="rounds of the three paths, interleaved (best counts)")
    ap.add_argument("--runners", default="process,thread",
                    help="task runners to time against the direct path (comma-separated)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    import webdataset  # noqa: F401

    from offclip.pipeline.classifier import SentenceClassifier

    SentenceClassifier.load(args.classifier)  # torch, transformers, the model classes: before any clock

    # interleaved rounds, best of each path: a noisy neighbour slows one round, not one path
    runners = [r.strip() for r in args.runners.split(",") if r.strip()]
    times: dict[str, list[float]] = {"direct_s": [], **{f"prefect_{r}_s": [] for r in runners}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ["PREFECT_HOME"] = str(tmp / "prefect")
        with prefect_test_harness(server_startup_timeout=120):
            for _ in range(args.repeat):
                times["direct_s"].append(direct(args.world, tmp / "direct", args.classifier, args.workers))
                shutil.rmtree(tmp / "direct")
                for runner in runners:
                    times[f"prefect_{runner}_s"].append(
                        through_prefect(args.world, tmp / runner, args.classifier, args.workers, runner))
                    shutil.rmtree(tmp / runner)
    results = {k: min(v) for k, v in times.items()}
    results["rounds"] = times
    for runner in runners:
        ratios = sorted(p / d for p, d in zip(times[f"prefect_{runner}_s"], times["direct_s"]))
        results[f"median_round_overhead_{runner}"] = statistics.median(ratios) - 1
    import pandas as pd

    images = len(pd.read_csv(args.world / "mimic-cxr-2.0.0-metadata.csv"))
    results["images"] = images
    print(f"build of {args.world} ({images} images), {args.workers} workers")
    print(f"  direct stages            {results['direct_s']:7.1f} s")
    for runner in runners:
        s = results[f"prefect_{runner}_s"]
        print(f"  prefect, {runner:7s} runner {s:7.1f} s   overhead {100 * (s / results['direct_s'] - 1):+.1f} % "
              f"(median of the rounds {100 * results[f'median_round_overhead_{runner}']:+.1f} %)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Worker scaling of the real ingest stage: ``run_ingest`` with 1 worker vs 2 workers.

    python benchmarks/bench_ingest_workers.py --world /work/bench/world2k --subset explicit_le \\
        [--studies N] [--workers 1,2] [--repeat 2] [--batch-size N] [--machine-units 60]
        [--no-fsync] [--long-side 512] [--json PATH]

What is measured: images/s of ``offclip.pipeline.ingest.run_ingest`` (scan, report splitting,
DICOM decode + resize + PNG encode, the merge, the four Parquet tables) on the same studies,
into a fresh output root each run (so nothing is skipped as unchanged), with
``IngestConfig(workers=1)`` (in this process) and ``workers=2`` (a process pool). Runs alternate
1, 2, 1, 2, … so that load from other processes falls on both alike; the best run of each
counts, and the headline figure is the ratio of the two (goal: >= 1.8x from 1 to 2 workers).

The baseline, measured in the same run before each 1-vs-2 pair: what 2 processes of pure
compute (offclip's decode + encode of DICOMs held in memory: no disk, no fsync, no merge) get
from the machine against one process. On a VM this ceiling is not 2.00x and moves between
sessions (the 2 vCPUs may share physical cores with other guests); the ingest ratio is judged
against it.

Why a ratio and a breakdown: a process pool cannot scale better than its serial part allows.
Each run is split, by timing wrappers around ``plan_ingest`` and ``finish_ingest`` (run_ingest
itself is unchanged), into

* ``plan``    -- scanning the world and reading the previous run's tables (serial);
* ``process`` -- the studies themselves (parallel with >1 worker; includes the pool's start);
* ``finish``  -- merging the batches' records and writing the Parquet tables (serial);

and the fixed cost of a pool (start 2 processes, build the spaCy splitter in each) is timed on
its own. From these the script prints the ratio the serial parts allow (an Amdahl estimate).
Noise: for every run the CPU time *other* processes took (``/proc/stat`` minus this process and
its children) is reported; a run where they took over 15 % of the machine is flagged.

Inputs: a demo world (``offclip demo-world``). ``--subset explicit_le`` ingests only the studies
whose frontal images are all uncompressed explicit VR little endian (from the world's
``offclip_demo/images.csv``): there decoding is cheapest, so fixed and serial costs weigh most
(the harshest case for scaling). ``--subset all`` takes every study (mixed transfer syntaxes,
J2K among them). The subset is a tree of symbolic links plus filtered CSVs in a temporary
directory; the world itself is only read. Without ``--world`` a small world is built first.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from offclip.pipeline import ingest  # noqa: E402
from offclip.pipeline.images import NormalizeConfig  # noqa: E402
from offclip.pipeline.scan import ScanConfig  # noqa: E402

GOAL = 1.8
CSVS = ("mimic-cxr-2.0.0-metadata.csv", "mimic-cxr-2.0.0-split.csv", "mimic-cxr-2.0.0-chexpert.csv")


# --- input ---------------------------------------------------------------------------------
def subset_world(world: Path, dest: Path, subset: str, studies: int | None) -> tuple[Path, int]:
    """A view of ``world`` holding only the chosen studies (symlinks + filtered CSVs)."""
    meta = pd.read_csv(world / CSVS[0], dtype={"dicom_id": "string"})
    ids = sorted(meta["study_id"].unique())
    if subset == "explicit_le":
        truth = world / "offclip_demo" / "images.csv"
        if not truth.is_file():
            raise SystemExit(f"--subset explicit_le needs {truth} (a world built by offclip demo-world)")
        images = pd.read_csv(truth)
        frontal = images[images["view_kind"] == "frontal"]
        only_le = frontal.groupby("study_id")["transfer_syntax"].agg(lambda s: set(s) == {"explicit_le"})
        ids = sorted(only_le[only_le].index)
    if studies:
        ids = ids[:studies]
    if subset == "all" and not studies:
        return world, len(ids)  # the world itself: no view needed
    keep = set(ids)
    for name in CSVS:
        if (world / name).is_file():
            df = pd.read_csv(world / name, dtype={"dicom_id": "string"})
            df[df["study_id"].isin(keep)].to_csv(dest / name, index=False)
    rows = meta[meta["study_id"].isin(keep)].drop_duplicates("study_id")
    for subject, study in zip(rows["subject_id"], rows["study_id"]):
        rel = Path("files") / f"p{str(subject)[:2]}" / f"p{subject}"
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in (f"s{study}", f"s{study}.txt"):
            if (world / rel / name).exists():
                (dest / rel / name).symlink_to(world / rel / name)
    return dest, len(ids)


def build_small_world(dest: Path, studies: int) -> Path:
    from offclip.demo.world import WorldConfig, build_world

    build_world(WorldConfig(out=dest, studies=studies, seed=0, progress=False))
    return dest


def warm_page_cache(world: Path) -> int:
    """Read every file once, so no timed run pays for the disk (the first would, alone)."""
    n = 0
    for folder, _, names in os.walk(world / "files", followlinks=True):
        for name in names:
            n += len((Path(folder) / name).read_bytes())
    return n


# --- timing --------------------------------------------------------------------------------
class PhaseTimer:
    """Wraps ingest.plan_ingest / finish_ingest (module globals run_ingest calls) to time them."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self._originals = (ingest.plan_ingest, ingest.finish_ingest)

    def __enter__(self) -> "PhaseTimer":
        plan, finish = self._originals

        def timed(name, fn):
            def wrapper(*args, **kwargs):
                t = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.times[name] = time.perf_counter() - t
            return wrapper

        ingest.plan_ingest, ingest.finish_ingest = timed("plan", plan), timed("finish", finish)
        return self

    def __exit__(self, *exc) -> None:
        ingest.plan_ingest, ingest.finish_ingest = self._originals


def cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has been busy, CPU seconds of this process and its reaped
    children): their difference over a run is what *other* processes took (the noise)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        machine = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # minus idle, iowait
    except (OSError, ValueError, IndexError):
        machine = float("nan")
    own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime"))
    return machine, own


def one_run(world: Path, out: Path, workers: int, long_side: int, batch_size: int | None) -> dict:
    config = ingest.IngestConfig(source=world, out=out, scan=ScanConfig(world, folders=None), workers=workers,
                                 normalize=NormalizeConfig(long_side=long_side), progress=False)
    if batch_size:
        config.batch_size = batch_size
    with PhaseTimer() as phases:
        machine0, own0 = cpu_seconds()
        t = time.perf_counter()
        summary = ingest.run_ingest(config)
        total = time.perf_counter() - t
        machine1, own1 = cpu_seconds()
    other = max(0.0, (machine1 - machine0) - (own1 - own0))
    return {"workers": workers, "seconds": total, "plan_s": phases.times["plan"],
            "cpu_s": own1 - own0, "other_processes_cpu_share": other / (total * (os.cpu_count() or 1)),
            "finish_s": phases.times["finish"],
            "process_s": total - phases.times["plan"] - phases.times["finish"],
            "images": summary.images, "studies": summary.studies, "ingested": summary.ingested,
            "images_per_s": summary.images / total}


_SAMPLES: list[bytes] = []  #: DICOM files for _compute (set before the pool forks)


def _compute(units: int) -> float:
    """CPU-bound work with no file I/O: decode + resize + encode DICOMs held in memory."""
    from offclip.pipeline.images import decode_dicom, encode_file_bytes

    config = NormalizeConfig()
    t = time.perf_counter()
    for i in range(units):
        encode_file_bytes(decode_dicom(_SAMPLES[i % len(_SAMPLES)], config).pixels, config)
    return time.perf_counter() - t


def machine_scaling(world: Path, units: int, workers: int) -> dict:
    """The baseline of the scaling ratio: what ``workers`` processes get from this machine *now*
    for pure compute (offclip's own decode + encode on files held in memory, no disk, no fsync,
    no merge), against one process doing the same total work. Pool start-up is not counted (each
    worker times its own loop). On a VM the vCPUs can share a physical core with other guests, so
    this ceiling moves from session to session; the ingest ratio is only meaningful next to it."""
    import multiprocessing as mp

    _SAMPLES.clear()
    for folder, _, names in os.walk(world / "files", followlinks=True):
        _SAMPLES.extend((Path(folder) / n).read_bytes() for n in sorted(names) if n.endswith(".dcm"))
        if len(_SAMPLES) >= 16:
            break
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        pool.map(_compute, [2])  # warm-up: imports, first decode
        one = sum(pool.map(_compute, [units] * workers, chunksize=1))
    with ctx.Pool(workers) as pool:
        pool.map(_compute, [2] * workers, chunksize=1)
        many = max(pool.map(_compute, [units] * workers, chunksize=1))
    return {"units_per_worker": units, "one_process_s": one, "parallel_s": many, "ratio": one / many}


def pool_start_seconds(world: Path, out: Path, workers: int) -> float:
    """Start a pool as run_ingest does (``executor.ProcessExecutor``: each worker sets the stage
    up, i.e. builds the spaCy splitter, when it starts), one empty batch per worker, shut down
    (which waits for every worker, set up): the fixed cost of going parallel."""
    from offclip.pipeline.executor import ProcessExecutor

    t = time.perf_counter()
    with ProcessExecutor(ingest.IngestStage(world, out, NormalizeConfig()), workers) as pool:
        list(pool.map([[]] * workers, [{}] * workers))
    return time.perf_counter() - t


def splitter_seconds() -> tuple[float, float]:
    """(import spaCy and offclip's text module, build one SentenceSplitter). The import happens
    here, before any timed run: the pool's forked workers inherit it, so neither the 1-worker
    nor the 2-worker runs pay it (a fresh ``offclip ingest`` process pays it once, in its first
    worker or in parallel in each)."""
    t = time.perf_counter()
    from offclip.pipeline.text import SentenceSplitter

    imported = time.perf_counter()
    SentenceSplitter()
    return imported - t, time.perf_counter() - imported


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=Path, help="a demo world (default: build a small one in a temporary folder)")
    ap.add_argument("--build-studies", type=int, default=60, help="studies of the world built without --world")
    ap.add_argument("--subset", choices=("explicit_le", "all"), default="explicit_le")
    ap.add_argument("--studies", type=int, default=None, help="at most this many studies of the subset")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (the first is the base)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per worker count (best counts)")
    ap.add_argument("--long-side", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=None,
                    help="IngestConfig.batch_size (studies per task; default: IngestConfig's)")
    ap.add_argument("--no-fsync", action="store_true",
                    help="diagnosis only: make os.fsync a no-op (what the per-file fsync of atomic writes costs)")
    ap.add_argument("--machine-units", type=int, default=60,
                    help="images each process decodes in the machine-scaling baseline (0: skip it)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",") if w]
    if args.no_fsync:  # inherited by the pool's forked workers
        os.fsync = lambda fd: None

    with tempfile.TemporaryDirectory(prefix="offclip-bench-workers-") as tmp:
        tmp = Path(tmp)
        world = args.world or build_small_world(tmp / "world", args.build_studies)
        (tmp / "subset").mkdir()
        source, n_studies = subset_world(world, tmp / "subset", args.subset, args.studies)
        mb = warm_page_cache(source) / 1e6
        print(f"input: {n_studies} studies ({args.subset}) of {world}, {mb:.0f} MB read into the page cache",
              flush=True)
        import_s, build_s = splitter_seconds()
        fixed = {"spacy_import_s": import_s, "splitter_load_s": build_s,
                 "pool_start_s": {w: pool_start_seconds(source, tmp / "pool", w) for w in counts if w > 1}}
        runs, machine = [], []
        for r in range(args.repeat):
            if len(counts) > 1 and args.machine_units:
                m = machine_scaling(source, args.machine_units, counts[1])
                machine.append(m)
                print(f"  machine: {counts[1]} processes of pure compute get {m['ratio']:.2f}x one process's "
                      f"throughput now", flush=True)
            for w in counts:
                res = one_run(source, tmp / f"out-{w}-{r}", w, args.long_side, args.batch_size)
                runs.append(res)
                print(f"  run {r + 1}, {w} worker(s): {res['seconds']:.2f} s, {res['images_per_s']:.1f} images/s "
                      f"(plan {res['plan_s']:.2f} s, process {res['process_s']:.2f} s, "
                      f"finish {res['finish_s']:.2f} s; other processes used "
                      f"{100 * res['other_processes_cpu_share']:.0f} % of the CPUs)", flush=True)

    best = {w: min((r for r in runs if r["workers"] == w), key=lambda r: r["seconds"]) for w in counts}
    base = best[counts[0]]
    batch_size = args.batch_size or ingest.IngestConfig(source=".", out=".").batch_size
    results = {"world": str(world), "subset": args.subset, "studies": n_studies, "images": base["images"],
               "batch_size": batch_size, "batches": -(-n_studies // batch_size), "no_fsync": args.no_fsync,
               "long_side": args.long_side, "repeat": args.repeat, "fixed": fixed, "runs": runs,
               "best": {str(w): r for w, r in best.items()}, "scaling": {}, "machine": machine}
    print(f"\ningest of {n_studies} studies ({args.subset}), {base['images']} images, long side {args.long_side}, "
          f"{results['batches']} batches of <= {batch_size} studies, best of {args.repeat}"
          f"{', fsync disabled (diagnosis)' if args.no_fsync else ''}:")
    if results["batches"] <= 1:
        print("note: a single batch: run_ingest processes it in this process whatever the worker count "
              "(pass a smaller --batch-size)")
    print(f"{'workers':>8} {'seconds':>8} {'images/s':>9} {'plan':>6} {'process':>8} {'finish':>7} {'ratio':>6}")
    for w, r in best.items():
        ratio = r["images_per_s"] / base["images_per_s"]
        results["scaling"][str(w)] = ratio
        print(f"{w:>8} {r['seconds']:8.2f} {r['images_per_s']:9.1f} {r['plan_s']:6.2f} {r['process_s']:8.2f} "
              f"{r['finish_s']:7.2f} {ratio:5.2f}x")
    # Amdahl: the best an N-worker run could do with the serial parts as measured and the
    # per-study work split perfectly. The 1-worker run builds its splitter in-process (inside
    # "process"); an N-worker run instead starts a pool whose workers build theirs in parallel.
    for w in counts[1:]:
        work = max(base["process_s"] - fixed["splitter_load_s"], 0.0)
        serial = base["plan_s"] + base["finish_s"] + fixed["pool_start_s"].get(w, 0.0)
        ideal = base["seconds"] / (serial + work / w)
        results.setdefault("ideal_ratio", {})[str(w)] = ideal
        pair_ratios = [a["seconds"] / b["seconds"] for a, b in zip(runs[0::len(counts)], runs[counts.index(w)::len(counts)])]
        results.setdefault("pair_ratios", {})[str(w)] = pair_ratios
        print(f"{w} workers: {results['scaling'][str(w)]:.2f}x (runs paired in time: "
              f"{', '.join(f'{x:.2f}x' for x in pair_ratios)}); the serial parts allow about {ideal:.2f}x "
              f"(plan + finish {base['plan_s'] + base['finish_s']:.2f} s, pool start "
              f"{fixed['pool_start_s'].get(w, 0.0):.2f} s)")
    if machine:
        ceiling = max(m["ratio"] for m in machine)
        results["machine_ratio"] = ceiling
        results["scaling_vs_machine"] = results["scaling"][str(counts[1])] / ceiling
        print(f"baseline: {counts[1]} processes of pure compute got {ceiling:.2f}x one process on this machine "
              f"(best of {len(machine)}); ingest reached {results['scaling_vs_machine']:.0%} of that")
    print(f"spaCy splitter build (once per run: in-process, or in each pool worker): {fixed['splitter_load_s']:.2f} s; "
          f"importing spaCy (done before the clock): {fixed['spacy_import_s']:.2f} s")
    noisy = max(r["other_processes_cpu_share"] for r in runs)
    results["max_other_processes_cpu_share"] = noisy
    print(f"other processes took up to {100 * noisy:.0f} % of the CPUs during a run"
          + (" -- too noisy to trust, run again on a quiet machine" if noisy > 0.15 else ""))
    load = os.getloadavg()
    results["load_average_after"] = load
    results["cpus"] = os.cpu_count()
    print(f"load average after the run: {load[0]:.2f} ({os.cpu_count()} CPUs)")
    if len(counts) > 1 and counts[:2] == [1, 2]:
        met = results["scaling"]["2"] >= GOAL
        results["goal_met"] = met
        print(f"goal 1 -> 2 workers >= {GOAL}x: {'met' if met else 'MISSED'}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

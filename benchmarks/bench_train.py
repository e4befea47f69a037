"""Training throughput and how much of it data loading takes: the real step, fed two ways.

    python benchmarks/bench_train.py [--config tiny] [--device cpu] [--shards ROOT | --work DIR
                                     --studies 120] [--steps 10] [--warmup 3] [--batch-size N]
                                     [--num-workers 0[,1...]] [--rounds 1] [--loader-only]
                                     [--loader-batches 20] [--json PATH]
    python benchmarks/bench_train.py --config paper --device cuda --shards ROOT --num-workers 8

The step is the trainer's (``offclip.models.train``): ``build_model`` + ``get_loss("offclip")`` +
AdamW over ``param_groups``, autocast as ``amp="auto"`` picks (bf16 on CUDA, none on CPU),
backward, gradient clipping, optimizer step, ``logit_scale`` clamp, ``loss.item()``. It runs

* ``synthetic`` -- on the very batches the ``loader`` run trains on, in the same order, taken
                   from the loader beforehand and held in memory (already on the device): the
                   no-I/O ceiling, the baseline of the ratio;
* ``loader``    -- on batches from ``offclip.models.data.make_loader`` (WebDataset shards →
                   PNG decode → augmentation → tokenisation, in ``--num-workers`` DataLoader
                   workers; a new loader per epoch, as the trainer makes them);

``--text-layers`` times whole trainer runs (caches on) of the frozen text tower (``demo``) against
its top 4 layers trainable on cached lower-layer states (``demo-text4``): the median step time past
the first ``--warmup`` steps (from the runs' own per-step log: the one-off caches left out) and its
ratio (goal <= 2x), and the same over whole runs with their caches; ``--amp auto,bf16`` runs both
configs under each precision, interleaved (bf16 on the CPU: autocast), and prints each ratio and
what bf16 does to each config's step. ``benchmarks/bench_text_part.py`` takes the text part apart.

``--trainer`` times something else: whole runs of the trainer itself (``offclip.models.train.train``,
``--trainer-epochs`` epochs, a fresh run directory each) without its caches (``plain``: the frozen
text tower run at every step, every image read and decoded every epoch) and with them (``cached``:
each unique sentence embedded once, decoded images kept in memory), rounds interleaved; it reports
steps/s and images/s over the whole run, cache building included.

And, for reference, ``loader only``: the loader's own images/s with no training step (its
capacity; ``--loader-only`` runs just that, e.g. the paper config's 224 px loading on a CPU
machine). Per step of ``loader`` the time spent waiting for the next batch is separated from the
step itself; **data-loading share** = wait / wall time, and **loader / synthetic** = the ratio of
the two training rates (1.00 = loading costs nothing). On CUDA the **GPU busy share** is the sum,
over steps, of the time between CUDA events recorded at a step's start and end on the stream,
divided by the wall time (plus ``torch.cuda.utilization()`` samples when pynvml is there).
The first ``--warmup`` steps of each run are not timed. ``--rounds`` > 1 alternates the runs and
keeps the best of each.

Shards: ``--shards ROOT`` (a curation root holding ``shards/train``), else a small one is built
with the real pipeline (``benchmarks/common.py``: demo world → ingest → curate with a frozen
classifier → shards) in a temporary folder, or in ``--work DIR`` to reuse it across runs.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from offclip.models.clip import build_model, load_model_config  # noqa: E402
from offclip.models.data import make_loader  # noqa: E402
from offclip.models.losses import get_loss  # noqa: E402
from offclip.models.train import _amp_dtype, param_groups  # noqa: E402


class Trainer:
    """The model, optimizer and one training step exactly as ``models/train.py`` runs them."""

    def __init__(self, config: str, device: torch.device, batch_size: int | None, seed: int = 0) -> None:
        self.model_config = load_model_config(config)
        self.hyper = dict(self.model_config["train"])
        if batch_size:
            self.hyper["batch_size"] = batch_size
        self.device = device
        self.model, self.tokenizer = build_model(self.model_config, seed=seed)
        self.model.to(device)
        self.model.train()
        self.optimizer = torch.optim.AdamW(param_groups(self.model, self.hyper), betas=(0.9, 0.98), eps=1e-6)
        self.loss_fn = get_loss("offclip")
        self.amp_dtype = _amp_dtype("auto", device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.max_scale = math.log(self.model.config.max_logit_scale)
        self.grad_clip = self.hyper["grad_clip"] if self.hyper["grad_clip"] > 0 else float("inf")

    def step(self, batch) -> float:
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            logits = self.model(batch.pixel_values, batch.input_ids, batch.attention_mask)
            loss = self.loss_fn(logits, batch.is_normal)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        with torch.no_grad():
            self.model.logit_scale.clamp_(0.0, self.max_scale)
        return loss.item()  # the trainer reads the loss every step (a device sync on CUDA)

    def loader(self, shards: Path, epoch: int, num_workers: int):
        return make_loader(shards, "train", tokenizer=self.tokenizer, max_length=self.model.config.max_text_length,
                           image_size=self.model.config.image_size, batch_size=int(self.hyper["batch_size"]),
                           epoch=epoch, seed=0, train=True, num_workers=num_workers,
                           pin_memory=self.device.type == "cuda")


def batches(trainer: Trainer, shards: Path, num_workers: int):
    """Batches epoch after epoch, forever (a new loader per epoch, as the trainer does); yields
    (batch, first of its epoch)."""
    epoch = 0
    while True:
        n = 0
        for batch in trainer.loader(shards, epoch, num_workers):
            yield batch, n == 0
            n += 1
        if n == 0:
            raise SystemExit(f"no training batch in {shards}: too few train samples for the batch size")
        epoch += 1


class GpuClock:
    """Busy time of the CUDA stream within steps (events), and utilisation samples (NVML)."""

    def __init__(self, device: torch.device) -> None:
        self.on = device.type == "cuda"
        self.pairs: list = []
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = None

    def start_step(self):
        if not self.on:
            return None
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def end_step(self, start) -> None:
        if self.on:
            end = torch.cuda.Event(enable_timing=True)
            end.record()
            self.pairs.append((start, end))

    def __enter__(self):
        if self.on:
            try:
                torch.cuda.utilization()
            except Exception:  # noqa: BLE001 - pynvml missing: events only
                return self

            def sample():
                while not self._stop.wait(0.05):
                    self.samples.append(float(torch.cuda.utilization()))
            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def busy_seconds(self) -> float | None:
        if not self.on:
            return None
        torch.cuda.synchronize()
        return sum(a.elapsed_time(b) for a, b in self.pairs) / 1e3


def _timed_steps(trainer: Trainer, source, steps: int):
    """``steps`` training steps on (batch, first-of-a-worker) pairs from ``source``, timing the
    wait for each batch apart from the step: (images, wall, wait, first_wait, clock)."""
    clock = GpuClock(trainer.device)
    wait = first_wait = 0.0
    images = 0
    with clock:
        t0 = time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            batch, first = next(source)
            batch = batch.to(trainer.device, non_blocking=True)
            waited = time.perf_counter() - t
            wait += waited
            first_wait += waited if first else 0.0
            ev = clock.start_step()
            trainer.step(batch)
            clock.end_step(ev)
            images += len(batch)
        _sync(trainer.device)
        wall = time.perf_counter() - t0
    return images, wall, wait, first_wait, clock


def run_synthetic(trainer: Trainer, held: list, steps: int, warmup: int) -> dict:
    """The same batches the loader run gets, in the same order, already in device memory."""
    for batch in held[:warmup]:
        trainer.step(batch)
    _sync(trainer.device)
    images, wall, _, _, clock = _timed_steps(trainer, ((b, False) for b in held[warmup:]), steps)
    return _result("synthetic", images, wall, 0.0, 0.0, clock)


def run_loader(trainer: Trainer, shards: Path, steps: int, warmup: int, num_workers: int) -> dict:
    it = batches(trainer, shards, num_workers)
    for _ in range(warmup):
        trainer.step(next(it)[0].to(trainer.device, non_blocking=True))
    _sync(trainer.device)
    images, wall, wait, first_wait, clock = _timed_steps(trainer, it, steps)
    it.close()
    return _result(f"loader ({num_workers} workers)", images, wall, wait, first_wait, clock)


def run_loader_only(trainer: Trainer, shards: Path, n_batches: int, num_workers: int) -> dict:
    it = batches(trainer, shards, num_workers)
    next(it)  # start-up
    images = 0
    t0 = time.perf_counter()
    for _ in range(n_batches):
        batch, _ = next(it)
        images += len(batch)
    wall = time.perf_counter() - t0
    it.close()
    return {"mode": f"loader only ({num_workers} workers)", "images": images, "seconds": wall,
            "images_per_s": images / wall}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _result(mode: str, images: int, wall: float, wait: float, first_wait: float, clock: GpuClock) -> dict:
    busy = clock.busy_seconds()
    return {"mode": mode, "images": images, "seconds": wall, "images_per_s": images / wall,
            "wait_s": wait, "wait_share": wait / wall, "epoch_start_wait_s": first_wait,
            "gpu_busy_share": None if busy is None else busy / wall,
            "gpu_utilization_mean": (sum(clock.samples) / len(clock.samples)) if clock.samples else None}


def run_trainer(config: str, shards: Path, epochs: int, batch_size: int | None, cached: bool, work: Path) -> dict:
    """One whole training run, plain or with the caches; wall time includes building them."""
    from offclip.models.train import TrainConfig, train

    out = work / f"run-{'cached' if cached else 'plain'}-{time.monotonic_ns()}"
    t = time.perf_counter()
    result = train(TrainConfig(shards=shards, out=out, config=config, epochs=epochs, batch_size=batch_size,
                               device="cpu", text_cache=cached, image_cache_mb=2048 if cached else 0,
                               checkpoint_every=10**9))
    wall = time.perf_counter() - t
    images = result.images_per_second * result.seconds
    return {"mode": "cached" if cached else "plain", "steps": result.steps, "wall_s": wall,
            "train_s": result.seconds, "steps_per_s": result.steps / wall, "images_per_s": images / wall}


def _best(runs: list[dict], key: str) -> dict[str, dict]:
    """Per mode, the run with the smallest ``key`` (best of the rounds)."""
    best: dict[str, dict] = {}
    for r in runs:
        if r["mode"] not in best or r[key] < best[r["mode"]][key]:
            best[r["mode"]] = r
    return best


def main_trainer(args) -> int:
    with tempfile.TemporaryDirectory(prefix="offclip-bench-trainer-") as tmp:
        runs = []
        for _ in range(args.rounds):
            for cached in (False, True):
                runs.append(run_trainer(args.config, args.shards, args.trainer_epochs, args.batch_size, cached,
                                        Path(tmp)))
                r = runs[-1]
                print(f"  {r['mode']:<8} {r['steps']} steps in {r['wall_s']:6.1f} s: {r['steps_per_s']:6.2f} steps/s, "
                      f"{r['images_per_s']:7.1f} images/s", flush=True)
    best = _best(runs, "wall_s")
    ratio = best["plain"]["wall_s"] / best["cached"]["wall_s"]
    print(f"\ntrainer, config {args.config}, {args.trainer_epochs} epochs, best of {args.rounds}: plain "
          f"{best['plain']['steps_per_s']:.2f} steps/s, cached {best['cached']['steps_per_s']:.2f} steps/s "
          f"({ratio:.2f}x); load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"mode": "trainer", "config": args.config, "epochs": args.trainer_epochs,
                                         "shards": str(args.shards), "runs": runs, "best": best, "speedup": ratio,
                                         "threads": torch.get_num_threads(), "load_average_after": os.getloadavg()},
                                        indent=2) + "\n")
    return 0


def main_text_layers(args) -> int:
    """Whole trainer runs (caches on) of the frozen text tower (``demo``) and of its top layers
    trainable on cached lower-layer states (``--text-config``, default ``demo-text4``), interleaved;
    the ratio of their step times."""
    from offclip.models.train import TrainConfig, train

    amps = [a.strip() for a in args.amp.split(",") if a.strip()]

    def name(mode: str, amp: str) -> str:  # "frozen", "top-layers"; with another amp: "frozen (bf16)"
        return mode if amp == "auto" else f"{mode} ({amp})"

    configs = {"frozen": args.frozen_config, "top-layers": args.text_config}
    runs = []
    with tempfile.TemporaryDirectory(prefix="offclip-bench-text-") as tmp:
        for _ in range(args.rounds):
            for amp, (kind, config) in ((a, c) for a in amps for c in configs.items()):
                mode = name(kind, amp)
                out = Path(tmp) / f"{kind}-{amp}-{time.monotonic_ns()}"
                t = time.perf_counter()
                result = train(TrainConfig(shards=args.shards, out=out, config=config, epochs=args.trainer_epochs,
                                           batch_size=args.batch_size, device=args.device, amp=amp,
                                           checkpoint_every=10**9))
                wall = time.perf_counter() - t
                # each step's own time (the trainer logs batch size / step seconds), past the warm-up:
                # the step time without the run's one-off caches
                rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
                each = [r["batch_size"] / r["images_per_second"] for r in rows[args.warmup:]]
                runs.append({"mode": mode, "config": config, "amp": amp, "steps": result.steps, "wall_s": wall,
                             "train_s": result.seconds, "step_s": result.seconds / result.steps,
                             "steady_step_s": statistics.median(each), "images_per_s": result.images_per_second})
                r = runs[-1]
                print(f"  {mode:<10} [{config}] {r['steps']} steps: {1000 * r['steady_step_s']:7.1f} ms/step "
                      f"(median past the first {args.warmup}), {1000 * r['step_s']:7.1f} ms/step over the run with "
                      f"its caches, {r['images_per_s']:7.1f} images/s (wall {wall:.1f} s)", flush=True)
    best, whole = _best(runs, "steady_step_s"), _best(runs, "step_s")
    ratios, whole_ratios = {}, {}
    print()
    for amp in amps:
        top, frozen = name("top-layers", amp), name("frozen", amp)
        ratios[amp] = best[top]["steady_step_s"] / best[frozen]["steady_step_s"]
        whole_ratios[amp] = whole[top]["step_s"] / whole[frozen]["step_s"]
        print(f"step time, {args.text_config} / {args.frozen_config}, amp {amp} (best of {args.rounds}): "
              f"{ratios[amp]:.2f}x (goal <= 2x); over whole runs, caches included: {whole_ratios[amp]:.2f}x")
    for kind in configs:
        for amp in amps[1:]:
            other, base = best[name(kind, amp)], best[name(kind, amps[0])]
            print(f"{kind}: amp {amp} / amp {amps[0]} step time {other['steady_step_s'] / base['steady_step_s']:.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"mode": "text-layers", "amps": amps, "runs": runs, "best": best,
                                         "ratio": ratios[amps[0]], "ratios": ratios,
                                         "whole_run_ratio": whole_ratios[amps[0]], "whole_run_ratios": whole_ratios,
                                         "threads": torch.get_num_threads(), "load_average_after": os.getloadavg()},
                                        indent=2) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="tiny", help="a model config (models/configs) name or path")
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    ap.add_argument("--shards", type=Path, help="a curation root with shards/train (default: build a small one)")
    ap.add_argument("--work", type=Path, help="where to build (and reuse) the small curation root")
    ap.add_argument("--studies", type=int, default=120, help="studies of the demo world built without --shards")
    ap.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per run")
    ap.add_argument("--warmup", type=int, default=3,
                    help="untimed steps before each run (on CPU the first few steps are several times slower)")
    ap.add_argument("--loader-batches", type=int, default=20, help="batches timed in the loader-only run")
    ap.add_argument("--num-workers", default="0", help="DataLoader workers; comma-separated for several runs")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the runs this many times; best counts")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--loader-only", action="store_true",
                    help="only the loader's own rate (e.g. the paper config's 224 px loading on a CPU machine)")
    ap.add_argument("--trainer", action="store_true",
                    help="time whole trainer runs without and with the text and image caches (needs --shards)")
    ap.add_argument("--trainer-epochs", type=int, default=3, help="epochs of each --trainer run")
    ap.add_argument("--text-layers", action="store_true",
                    help="time trainer runs of the frozen text tower against its top layers trainable (needs --shards)")
    ap.add_argument("--frozen-config", default="demo", help="the frozen-text config of --text-layers")
    ap.add_argument("--text-config", default="demo-text4", help="the top-layers config of --text-layers")
    ap.add_argument("--amp", default="auto",
                    help="the trainer's amp for --text-layers' runs (auto, bf16, off; bf16 on the CPU: autocast); "
                         "comma-separated: both configs under each, interleaved (the first is the reference)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.text_layers:
        if args.shards is None:
            raise SystemExit("--text-layers needs --shards ROOT")
        return main_text_layers(args)
    if args.trainer:
        if args.shards is None:
            raise SystemExit("--trainer needs --shards ROOT")
        return main_trainer(args)
    device = torch.device(args.device)
    workers = [int(w) for w in args.num_workers.split(",") if w != ""]

    with tempfile.TemporaryDirectory(prefix="offclip-bench-train-") as tmp:
        shards = args.shards
        if shards is None:
            from common import curated_shards, small_world, tiny_classifier

            work = args.work or Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            world = small_world(work / "world", args.studies)
            clf = tiny_classifier(work / "classifier")
            shards = curated_shards(world, work / "curated", clf)
            print(f"built {shards} in {time.perf_counter() - t:.0f} s", flush=True)
        n_train = sum(1 for _ in (shards / "shards" / "train").glob("*.tar"))
        if n_train == 0:
            raise SystemExit(f"{shards}/shards/train holds no shard")

        trainer = Trainer(args.config, device, args.batch_size)
        bs = int(trainer.hyper["batch_size"])
        params = sum(p.numel() for p in trainer.model.parameters())
        print(f"config {args.config} ({params / 1e6:.1f} M parameters), batch {bs}, device {device}, "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, amp {trainer.amp_dtype}", flush=True)
        runs: list[dict] = []
        if args.loader_only:
            for _ in range(args.rounds):
                for w in workers:
                    runs.append(run_loader_only(trainer, shards, args.loader_batches, w))
                    print(f"  {runs[-1]['mode']:<24} {runs[-1]['images_per_s']:8.1f} images/s", flush=True)
            best = {}
            for r in runs:
                if r["mode"] not in best or r["images_per_s"] > best[r["mode"]]["images_per_s"]:
                    best[r["mode"]] = r
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"config": args.config, "batch_size": bs,
                                                 "image_size": trainer.model.config.image_size, "runs": runs,
                                                 "best": best, "load_average_after": os.getloadavg()}, indent=2) + "\n")
            return 0

        # the synthetic run's batches: exactly those the loader run will train on, held in memory
        stream = batches(trainer, shards, 0)
        held = [next(stream)[0].to(device) for _ in range(args.warmup + args.steps)]
        stream.close()
        mean_batch = sum(len(b) for b in held[args.warmup:]) / args.steps

        for _ in range(args.rounds):
            runs.append(run_synthetic(trainer, held, args.steps, args.warmup))
            for w in workers:
                runs.append(run_loader(trainer, shards, args.steps, args.warmup, w))
            for w in workers:
                runs.append(run_loader_only(trainer, shards, args.loader_batches, w))
            for r in runs[-(1 + 2 * len(workers)):]:
                print(f"  {r['mode']:<24} {r['images_per_s']:8.1f} images/s", flush=True)

    best = {}
    for r in runs:
        if r["mode"] not in best or r["images_per_s"] > best[r["mode"]]["images_per_s"]:
            best[r["mode"]] = r
    ceiling = best["synthetic"]["images_per_s"]
    print(f"\ntraining step, config {args.config}, batch {bs} (timed batches hold {mean_batch:.1f} pairs on "
          f"average: an epoch's last batch is smaller), {args.steps} timed steps after {args.warmup} warm-up, "
          f"best of {args.rounds}:")
    print(f"{'mode':<26} {'images/s':>9} {'vs synthetic':>13} {'loading share':>14} {'GPU busy':>9}")
    for mode, r in best.items():
        share = f"{100 * r['wait_share']:.1f} %" if "wait_share" in r else "-"
        gpu = f"{100 * r['gpu_busy_share']:.1f} %" if r.get("gpu_busy_share") is not None else "-"
        r["vs_synthetic"] = r["images_per_s"] / ceiling
        print(f"{mode:<26} {r['images_per_s']:9.1f} {r['vs_synthetic']:12.2f}x {share:>14} {gpu:>9}")
    load = os.getloadavg()
    print(f"load average after the run: {load[0]:.2f} ({os.cpu_count()} CPUs)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "config": args.config, "device": str(device), "batch_size": bs, "mean_timed_batch": mean_batch,
            "parameters": params,
            "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds, "num_workers": workers,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.machine(),
            "cuda_device": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "shards": str(shards), "runs": runs, "best": best, "load_average_after": load,
            "cpus": os.cpu_count()}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Train the OFF-CLIP dual encoder on curated WebDataset shards: exactly resumable, deterministic.

    python -m offclip.models.train --shards out/curated --run-dir out/run [--config demo] [--loss offclip]
    torchrun --nproc-per-node 2 -m offclip.models.train --shards out/curated --run-dir out/run

(the options it shares with ``offclip train`` are TrainParameters' fields, flows/parameters.py)

or from Python::

    result = train(TrainConfig(shards=Path("out/curated"), out=Path("out/run"), max_steps=100))

The run directory::

    OUT/checkpoint/last.pt    full state: model, optimizer, scheduler, grad scaler, step, epoch,
                              batch within the epoch, every rank's RNG states, the TrainConfig
    OUT/model/                the final model, in the format it started from (ClipAdapter.save;
                              offclip_model.json = training metadata, README.md = model card)
    OUT/metrics.jsonl         one JSON line per logged step
    OUT/training_curve.png    loss and learning rate against step
    OUT/train.json            the run's summary (TrainResult)

Design notes:

* **Exact resume.** Batches come from :mod:`offclip.models.data`, whose epochs are a pure function
  of ``(seed, epoch)`` and whose ``skip_batches`` jumps to any batch of an epoch without decoding
  images. Together with the checkpointed optimizer/scheduler/scaler state and RNG states (dropout),
  a run stopped after ``k`` steps and resumed reaches bit-identical parameters (on CPU) to a run
  that never stopped. ``max_steps`` only *truncates* a run: the learning-rate schedule always spans
  ``epochs``, so a truncated run is a prefix of the full one. Resuming with different settings
  (another loss, seed, batch size, …) is refused with an error naming them.
* **Refining a checkpoint** (``init``): any CLIP-style model directory :mod:`offclip.models.adapters`
  opens (offclip's own, a transformers ``CLIPModel`` or ``VisionTextDualEncoderModel``) is the
  starting point instead of a fresh model; its image size, channels and normalisation come from its
  processor config, and the result is saved in the same format. The model config then only gives
  the training hyper-parameters.
* **Files are written by rank 0, atomically** (temporary file + rename), except ``metrics.jsonl``,
  which is an append-only log: one complete line per ``write``; on resume it is rewritten
  (atomically) to the lines up to the checkpoint's step, which also drops a torn last line.
* **Batches**: see :mod:`offclip.models.data`: the last, smaller batch of an epoch is kept (a batch
  size above the data gives one batch per epoch, with a warning), a final batch of one is merged
  into the batch before it (a contrastive loss needs B >= 2).
* **A partly trainable text tower** (model config ``train.text_trainable_layers``: N > 0): the
  top N encoder layers of the text tower train with ``text_lr`` (default ``lr``) and their own
  warm-up ``text_warmup_steps`` (default ``warmup_steps``); the embeddings and lower layers are
  frozen (eval mode) and the hidden states they give each unique sentence are computed once per
  run (:class:`offclip.models.caches.TextHidden`), so each step runs only the top layers.
* **Optimisation**: AdamW with two learning rates, ``lr`` for the text tower and ``vision_lr``
  (default ``lr``) for the vision tower, projections and ``logit_scale``; no weight decay on
  biases, norm weights and ``logit_scale`` (every tensor with fewer than 2 dimensions). Linear
  warmup, then cosine decay to 0 (per step) or ReduceLROnPlateau on the epoch's mean loss;
  gradient clipping; ``logit_scale`` clamped to ``[0, ln(max_logit_scale)]`` after each step.
* **AMP** (``amp="auto"``): bf16 autocast on CUDA when supported, else fp16 with a GradScaler;
  off on CPU. **DDP**: when ``WORLD_SIZE > 1`` (torchrun) the process group is initialised (nccl
  on CUDA, gloo on CPU), the model is wrapped in DistributedDataParallel and each rank reads its
  own shards; the contrastive loss is computed within each rank's batch.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import torch

from offclip.pipeline.atomic import atomic_open, atomic_write_bytes, atomic_write_text
from offclip.pipeline.numerics import warmup_factor

from .adapters import ClipAdapter, load_adapter
from .clip import build_model, load_model_config
from ..data_contracts.enums import DEFAULT_MODEL_CONFIG, TEXT_SOURCES
from .data import derive_seed, make_loader, plan_epoch, split_records
from .losses import LOSSES, get_loss

__all__ = ["TrainConfig", "TrainResult", "main", "train"]

logger = logging.getLogger(__name__)

CHECKPOINT = Path("checkpoint") / "last.pt"
MODEL_DIR = "model"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training_curve.png"
SUMMARY_FILE = "train.json"
CHECKPOINT_FORMAT = 1
SCHEDULES = ("cosine", "plateau")
AMP_MODES = ("auto", "bf16", "fp16", "off")
#: the model config's "train" keys a TrainConfig can override (None = take the config's)
HYPER_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "schedule", "grad_clip")
#: settings that may change between a run and its resumption (the others must match)
RESUMABLE_CHANGES = ("out", "max_steps", "checkpoint_every", "resume", "log_every", "device", "allow_shard_change",
                     "text_cache", "image_cache_mb", "trace_every", "trace_samples")
#: ReduceLROnPlateau settings of schedule="plateau"
PLATEAU = {"factor": 0.5, "patience": 1}


@dataclass
class TrainConfig:
    shards: Path  #: the curation output root (holds shards/<split>/)
    out: Path  #: the run directory
    config: str = DEFAULT_MODEL_CONFIG  #: a model config name or .json path (models/configs)
    loss: str = "offclip"  #: offclip | infonce
    abnormal_weight: float = 1.0
    epochs: int | None = None  #: None: the model config's "train" value (also the next six)
    batch_size: int | None = None
    lr: float | None = None  #: given here, it sets both the text tower's lr and vision_lr
    weight_decay: float | None = None
    warmup_steps: int | None = None
    schedule: str | None = None  #: cosine | plateau
    grad_clip: float | None = None  #: 0 = no clipping
    seed: int = 0
    max_steps: int | None = None  #: stop after this many steps in all (the schedule still spans epochs)
    amp: str = "auto"  #: auto | bf16 | fp16 | off
    device: str = "auto"  #: auto | cpu | cuda | cuda:N
    num_workers: int = 0  #: DataLoader workers per rank
    checkpoint_every: int = 50  #: steps (a checkpoint is also written when the run stops)
    resume: bool = True  #: continue from OUT/checkpoint/last.pt when it exists
    text_model: str | None = None  #: a local HF directory for the text tower (see build_model)
    vision_model: str | None = None
    split: str = "train"
    log_every: int = 1  #: steps between two metrics lines / on_step calls
    #: resume although the shard set differs from the checkpoint's (default: refuse, naming the change)
    allow_shard_change: bool = False
    #: the training text: "filtered" (kept sentences) or "report" (every sentence); None: the
    #: model config's train.text_source, else "filtered"
    text_source: str | None = None
    #: with a frozen text tower: embed each unique sentence once at the start, not at every step
    text_cache: bool = True
    #: keep the decoded, resized training images in memory (num_workers=0) when they fit this
    #: many MiB; 0: read and decode every epoch
    image_cache_mb: int = 2048
    #: a model directory to refine instead of building one from the config (offclip's own, a
    #: transformers CLIPModel or VisionTextDualEncoderModel: models.adapters); the config's
    #: "model" section is then unused, its "train" section still gives the hyper-parameters
    init: str | None = None
    #: measure the embedding geometry of a fixed held-out probe every this many steps (and at
    #: the first and last) into RUN/geometry.jsonl (models.geometry); 0: never
    trace_every: int = 0
    trace_samples: int = 256  #: the probe's size (validation samples, first by key)

    def __post_init__(self):
        self.shards, self.out = Path(self.shards), Path(self.out)
        for name in ("text_model", "vision_model", "init"):
            if getattr(self, name) is not None:
                setattr(self, name, str(getattr(self, name)))

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


@dataclass
class TrainResult:
    model_dir: Path
    steps: int  #: optimizer steps done in all (resumed ones included)
    epochs: int  #: complete epochs
    final_loss: float  #: the loss of the last step
    seconds: float  #: training time of this call (resumed runs: since the resume)
    images_per_second: float  #: over this call's steps (all ranks)
    metrics_path: Path
    plot_path: Path | None
    resumed_from: int  #: the step the run resumed from (0: a fresh start)
    total_steps: int = 0  #: the run's planned length (min(epochs' batches, max_steps))
    hyper: dict = field(default_factory=dict)  #: the resolved hyper-parameters

    def to_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


# ------------------------------------------------------------------------------------------
# settings
# ------------------------------------------------------------------------------------------
def resolve_hyper(config: TrainConfig, model_config: dict) -> dict:
    """The hyper-parameters of the run: TrainConfig values, else the model config's "train"."""
    section = model_config.get("train", {})
    hyper = {}
    for key in HYPER_KEYS:
        value = getattr(config, key)
        hyper[key] = section.get(key) if value is None else value
    missing = [k for k in HYPER_KEYS if hyper[k] is None and k != "grad_clip"]
    if missing:
        raise ValueError(f"model config {model_config.get('name')!r} has no train setting for {missing}: "
                         "pass them in the TrainConfig")
    hyper["vision_lr"] = section.get("vision_lr", hyper["lr"]) if config.lr is None else config.lr
    # a frozen text tower (config "freeze_text": true): the pretrained sentence space is kept and
    # only the vision tower and both projections learn — half the compute, and no collapse of a
    # small-data text tower
    hyper["freeze_text"] = bool(section.get("freeze_text", False))
    # the paper's last-layers setting ("text_trainable_layers": N > 0): only the top N encoder
    # layers of the text tower train (with the text projection), with their own text_lr and
    # text_warmup_steps; the embeddings and lower layers stay frozen, and the hidden states they
    # give each unique sentence are computed once per run (caches.TextHidden). 0: freeze_text decides
    hyper["text_trainable_layers"] = int(section.get("text_trainable_layers", 0) or 0)
    if hyper["text_trainable_layers"] < 0:
        raise ValueError(f"text_trainable_layers must be >= 0, got {hyper['text_trainable_layers']}")
    if hyper["text_trainable_layers"]:
        hyper["freeze_text"] = False
    hyper["text_lr"] = float(section.get("text_lr", hyper["lr"]) if config.lr is None else config.lr)
    hyper["text_warmup_steps"] = int(section.get("text_warmup_steps", hyper["warmup_steps"])
                                     if config.warmup_steps is None else config.warmup_steps)
    hyper["grad_clip"] = float(hyper["grad_clip"] or 0.0)
    hyper["text_source"] = config.text_source or section.get("text_source") or "filtered"
    if hyper["text_source"] not in TEXT_SOURCES:
        raise ValueError(f"unknown text_source {hyper['text_source']!r}; available: {', '.join(TEXT_SOURCES)}")
    if hyper["schedule"] not in SCHEDULES:
        raise ValueError(f"unknown schedule {hyper['schedule']!r}; available: {', '.join(SCHEDULES)}")
    for key in ("epochs", "batch_size"):
        if int(hyper[key]) < 1:
            raise ValueError(f"{key} must be >= 1, got {hyper[key]}")
    if hyper["batch_size"] < 2:
        raise ValueError("batch_size must be >= 2: a contrastive loss needs at least two pairs per batch")
    return hyper


def _check_config(config: TrainConfig) -> None:
    if config.loss not in LOSSES:
        raise ValueError(f"unknown loss {config.loss!r}; available: {', '.join(sorted(LOSSES))}")
    if config.amp not in AMP_MODES:
        raise ValueError(f"unknown amp mode {config.amp!r}; available: {', '.join(AMP_MODES)}")
    if config.max_steps is not None and config.max_steps < 0:
        raise ValueError(f"max_steps must be >= 0, got {config.max_steps}")
    if config.checkpoint_every < 1 or config.log_every < 1:
        raise ValueError("checkpoint_every and log_every must be >= 1")
    if config.num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {config.num_workers}")
    if config.init is not None and (config.text_model is not None or config.vision_model is not None):
        raise ValueError("init starts from a whole model: text_model and vision_model cannot be given with it")


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} asked for, but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision."""
    if device.type != "cuda" or mode == "off":
        if mode in ("bf16", "fp16") and device.type != "cuda":
            logger.warning("amp=%s ignored on %s: training in float32", mode, device)
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16


# ------------------------------------------------------------------------------------------
# distributed
# ------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  #: we initialised the process group (and tear it down)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device_name: str) -> _Dist:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return _Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device_name != "cpu" and torch.cuda.is_available()
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True)


def _all_gather_objects(value: Any, dist_info: _Dist) -> list:
    if not dist_info.enabled:
        return [value]
    out: list = [None] * dist_info.world_size
    torch.distributed.all_gather_object(out, value)
    return out


# ------------------------------------------------------------------------------------------
# optimizer and schedule
# ------------------------------------------------------------------------------------------
def param_groups(model: torch.nn.Module, hyper: dict) -> list[dict]:
    """AdamW groups: (text tower | the rest) x (decayed | not decayed: tensors with < 2 dims)."""
    groups: dict[tuple[str, bool], list] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        tower = "text" if name.startswith("text_model.") else "vision"
        groups.setdefault((tower, param.ndim >= 2), []).append(param)
    out = []
    for (tower, decay), params in sorted(groups.items()):
        out.append({"params": params, "name": f"{tower}{'' if decay else '_no_decay'}",
                    "lr": hyper.get("text_lr", hyper["lr"]) if tower == "text" else hyper["vision_lr"],
                    "weight_decay": hyper["weight_decay"] if decay else 0.0})
    return out


class Schedule:
    """Linear warmup over ``warmup_steps``, then cosine decay to 0 at ``total_steps`` (stepped per
    batch), or, with ``plateau``, ReduceLROnPlateau on the epoch's mean loss (stepped per epoch,
    once warmup is over). ``text_warmup_steps`` (default ``warmup_steps``): the warm-up of the
    parameter groups named ``text*`` (the text tower's own)."""

    def __init__(self, optimizer: torch.optim.Optimizer, kind: str, warmup_steps: int, total_steps: int,
                 text_warmup_steps: int | None = None):
        self.kind, self.warmup, self.total = kind, max(0, int(warmup_steps)), max(1, int(total_steps))
        self.text_warmup = self.warmup if text_warmup_steps is None else max(0, int(text_warmup_steps))
        self.steps = 0
        if self.text_warmup == self.warmup:
            lambdas = self._factor
        else:
            lambdas = [self._text_factor if str(g.get("name", "")).startswith("text") else self._factor
                       for g in optimizer.param_groups]
        self.per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
        self.plateau = (torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", **PLATEAU)
                        if kind == "plateau" else None)

    def _factor(self, step: int) -> float:  # the shared warm-up factor (pipeline.numerics)
        return warmup_factor(step, self.warmup, self.total, "cosine" if self.kind == "cosine" else "constant")

    def _text_factor(self, step: int) -> float:
        return warmup_factor(step, self.text_warmup, self.total, "cosine" if self.kind == "cosine" else "constant")

    @property
    def longest_warmup(self) -> int:
        return max(self.warmup, self.text_warmup)

    def step_batch(self) -> None:
        # plateau: the per-step scheduler only runs the warmup, so it never undoes a plateau cut
        if self.kind == "cosine" or self.steps < self.longest_warmup:
            self.per_step.step()
        self.steps += 1

    def step_epoch(self, mean_loss: float) -> None:
        if self.plateau is not None and self.steps >= self.longest_warmup:
            self.plateau.step(mean_loss)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "per_step": self.per_step.state_dict(),
                "plateau": self.plateau.state_dict() if self.plateau is not None else None}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
        self.per_step.load_state_dict(state["per_step"])
        if self.plateau is not None:
            self.plateau.load_state_dict(state["plateau"])


# ------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------
def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _read_metrics(path: Path, up_to_step: int | None = None) -> list[dict]:
    """The complete lines of metrics.jsonl (a torn last line is ignored), up to a step."""
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if up_to_step is None or row.get("step", 0) <= up_to_step:
            rows.append(row)
    return rows


def _write_plot(rows: list[dict], path: Path) -> Path | None:
    """Loss and learning rate against step (matplotlib's Agg canvas: no display, no global
    backend change); None when matplotlib is not installed or there is nothing to plot."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning("matplotlib is not installed: no %s", path.name)
        return None
    if not rows:
        return None
    steps = [r["step"] for r in rows]
    figure = Figure(figsize=(8, 5.5))
    FigureCanvasAgg(figure)
    loss_ax, lr_ax = figure.subplots(2, 1, sharex=True)
    loss_ax.plot(steps, [r["loss"] for r in rows], lw=1, label="step loss")
    loss_ax.set_ylabel("loss")
    loss_ax.grid(alpha=0.3)
    lr_ax.plot(steps, [r["lr"] for r in rows], lw=1, label="lr (text tower)")
    if any(r.get("vision_lr") != r["lr"] for r in rows):
        lr_ax.plot(steps, [r["vision_lr"] for r in rows], lw=1, label="vision_lr (vision, projections)")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("step")
    lr_ax.grid(alpha=0.3)
    lr_ax.legend(loc="best", fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    atomic_write_bytes(path, buffer.getvalue())
    return path


def _shard_set(records: list) -> list[dict]:
    """What a run records of its shard set (checkpoint and model metadata): name, samples, sha256."""
    return [{"name": r.name, "samples": r.samples, "sha256": r.sha256} for r in records]


def _shard_metadata(shards: Path, split: str, records: list) -> dict:
    return {"root": str(shards), "split": split, "samples": sum(r.samples for r in records),
            "classifier_versions": sorted({r.model_version for r in records if r.model_version}),
            "shards": _shard_set(records)}


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def train(config: TrainConfig, progress: bool = False,
          on_step: Callable[[dict], None] | None = None) -> TrainResult:
    """Train (or resume, or find finished) the run in ``config.out``; see the module docstring.

    ``on_step`` receives each logged step's metrics (the metrics.jsonl line plus ``total_steps``);
    ``progress`` shows a tqdm bar.
    """
    _check_config(config)
    model_config = load_model_config(config.config)
    hyper = resolve_hyper(config, model_config)
    # the run's shard set, listed once: every epoch reads these, the checkpoint and the model
    # record them (a build that adds shards meanwhile changes nothing in this run)
    records = split_records(config.shards, config.split)  # a clear error when there are none
    dist_info = _init_distributed(config.device)
    try:
        device = _device(config.device, dist_info.local_rank)
        # a private RNG stream (dropout): the caller's global RNG state is left as it was
        with torch.random.fork_rng(devices=[device.index] if device.type == "cuda" else []):
            return _train(config, model_config, hyper, records, dist_info, device, progress, on_step)
    finally:
        if dist_info.owns_group:
            torch.distributed.destroy_process_group()


@dataclass
class _Run:
    """What one training run works with: built by :func:`_setup`; the loop advances ``state``
    (step, epoch, batch within the epoch, the epoch's loss sum: what a checkpoint resumes)."""

    config: TrainConfig
    hyper: dict
    records: list
    dist_info: _Dist
    device: torch.device
    adapter: ClipAdapter
    model: torch.nn.Module  #: what the checkpoint holds (adapter.model)
    loss_fn: Callable
    amp_dtype: torch.dtype | None
    text_cache: Any
    image_cache: Any
    batch_size: int
    epochs: int
    total_steps: int
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    state: dict = field(default_factory=lambda: {"step": 0, "epoch": 0, "batch_in_epoch": 0,
                                                 "epoch_loss_sum": 0.0, "epoch_batches": 0})
    resumed_from: int = 0
    net: torch.nn.Module | None = None  #: the adapter, or its DistributedDataParallel wrapper
    probe: Any = None  #: a models.geometry.GeometryProbe (rank 0, with trace_every)

    @property
    def geometry_path(self) -> Path:
        from .geometry import GEOMETRY_FILE

        return Path(self.config.out) / GEOMETRY_FILE

    @property
    def checkpoint_path(self) -> Path:
        return Path(self.config.out) / CHECKPOINT

    @property
    def metrics_path(self) -> Path:
        return Path(self.config.out) / METRICS_FILE


@dataclass
class _Tally:
    """This call's counts (a resumed run counts from the resume)."""

    checkpointed_at: int
    images: int = 0
    last_loss: float = float("nan")


def _train(config: TrainConfig, model_config: dict, hyper: dict, records: list, dist_info: _Dist,
           device: torch.device, progress: bool, on_step: Callable[[dict], None] | None) -> TrainResult:
    run = _setup(config, model_config, hyper, records, dist_info, device)
    tally, seconds = _loop(run, progress, on_step)
    return _finish(run, model_config, tally, seconds)


# -- setup ---------------------------------------------------------------------------------
def _setup(config: TrainConfig, model_config: dict, hyper: dict, records: list, dist_info: _Dist,
           device: torch.device) -> _Run:
    """The model, caches, step plan, optimizer and schedule of a run; resumed from its checkpoint
    when there is one (``config.resume``)."""
    loss_fn = get_loss(config.loss, config.abnormal_weight)
    amp_dtype = _amp_dtype(config.amp, device)
    adapter, model = _prepare_model(config, model_config, hyper, device)
    text_cache, image_cache = _caches(config, hyper, records, adapter, device)
    batch_size, epochs, schedule_steps, total_steps = _plan_steps(config, hyper, records, dist_info)

    optimizer = torch.optim.AdamW(param_groups(model, hyper), betas=(0.9, 0.98), eps=1e-6)
    schedule = Schedule(optimizer, hyper["schedule"], hyper["warmup_steps"], schedule_steps,
                        hyper.get("text_warmup_steps"))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    torch.manual_seed(derive_seed(config.seed, "train", dist_info.rank))
    run = _Run(config, hyper, records, dist_info, device, adapter, model, loss_fn, amp_dtype, text_cache,
               image_cache, batch_size, epochs, total_steps, optimizer, schedule, scaler)
    if config.trace_every and dist_info.main:
        from .geometry import GeometryProbe

        run.probe = GeometryProbe.from_shards(config.shards, adapter.image_size, hyper["text_source"],
                                              max_samples=config.trace_samples)
    _resume(run)
    run.net = adapter
    if dist_info.enabled:
        run.net = torch.nn.parallel.DistributedDataParallel(
            adapter, device_ids=[device.index] if device.type == "cuda" else None)
    return run


def _prepare_model(config: TrainConfig, model_config: dict, hyper: dict,
                   device: torch.device) -> tuple[ClipAdapter, torch.nn.Module]:
    """The adapter on ``device`` and its model (what the checkpoint holds); a frozen text tower
    is set to eval mode (no dropout; kept so at every step)."""
    adapter = _initial_model(config, model_config)
    model = adapter.model
    adapter.to(device)
    if hyper["freeze_text"]:
        model.text_model.requires_grad_(False)
        model.text_model.eval()
    elif hyper.get("text_trainable_layers"):
        _freeze_lower_text_layers(adapter, hyper["text_trainable_layers"])
    return adapter, model


def text_layer_split(adapter: ClipAdapter, trainable: int) -> int:
    """The first trainable encoder layer of the text tower when the top ``trainable`` train."""
    if adapter.kind != "offclip":
        raise ValueError(f"text_trainable_layers needs an offclip model (a BERT-like text tower), not {adapter.kind}")
    n_layers = len(adapter.model.text_model.encoder.layer)
    if trainable > n_layers:
        raise ValueError(f"text_trainable_layers {trainable} exceeds the text tower's {n_layers} layers")
    return n_layers - trainable


def _freeze_lower_text_layers(adapter: ClipAdapter, trainable: int) -> None:
    """Freeze the text tower's embeddings and every encoder layer below the top ``trainable``."""
    start = text_layer_split(adapter, trainable)
    text_model = adapter.model.text_model
    text_model.requires_grad_(False)
    for layer in text_model.encoder.layer[start:]:
        layer.requires_grad_(True)
    _text_modes(adapter.model, trainable)


def _text_modes(model: torch.nn.Module, trainable: int) -> None:
    """The frozen part of a partly trainable text tower in eval mode (no dropout, as in its cached
    states), the top ``trainable`` layers in the model's mode."""
    model.text_model.eval()
    start = len(model.text_model.encoder.layer) - trainable
    for layer in model.text_model.encoder.layer[start:]:
        layer.train(model.training)


def _caches(config: TrainConfig, hyper: dict, records: list, adapter: ClipAdapter, device: torch.device):
    """(text cache, image cache), each None when not used: a frozen text tower's features of every
    sentence; the decoded training images when they fit ``image_cache_mb`` (and no workers). The
    loader follows the model: its input size (grayscale batches; the adapter repeats and
    normalises them as the checkpoint's processor says)."""
    text_cache = None
    if hyper.get("text_trainable_layers") and config.text_cache:
        from .caches import TextHidden, shard_sentences

        sentences = shard_sentences(config.shards, records, config.split, hyper["text_source"])
        text_cache = TextHidden.for_run(adapter.model, adapter.tokenizer, sentences, adapter.max_text_length, device,
                                        text_layer_split(adapter, hyper["text_trainable_layers"]))
    elif hyper["freeze_text"] and config.text_cache:
        from .caches import TextFeatures, shard_sentences

        sentences = shard_sentences(config.shards, records, config.split, hyper["text_source"])
        text_cache = TextFeatures.for_run(adapter, adapter.tokenizer, sentences, adapter.max_text_length, device)
    image_cache = None
    if config.image_cache_mb > 0 and config.num_workers == 0:
        from .caches import ImageCache

        image_cache = ImageCache(adapter.image_size, config.image_cache_mb * 2**20)
        if not image_cache.fits(sum(r.samples for r in records)):
            logger.info("training images do not fit the %d MiB image cache: read from the shards every epoch",
                        config.image_cache_mb)
            image_cache = None
    return text_cache, image_cache


def _plan_steps(config: TrainConfig, hyper: dict, records: list, dist_info: _Dist) -> tuple[int, int, int, int]:
    """(batch size, epochs, the schedule's steps: every epoch's batches, this run's total steps:
    truncated by ``max_steps``)."""
    batch_size, epochs = int(hyper["batch_size"]), int(hyper["epochs"])
    plans = [plan_epoch(records, epoch=e, seed=config.seed, batch_size=batch_size, shuffle=True,
                        rank=dist_info.rank, world_size=dist_info.world_size, num_workers=config.num_workers,
                        min_batch=2) for e in range(epochs)]
    schedule_steps = sum(p.n_batches for p in plans)
    if schedule_steps == 0:
        raise ValueError(f"no training batch: {sum(r.samples for r in records)} sample(s) in split "
                         f"{config.split!r} cannot make a batch of >= 2 pairs per rank")
    per_rank = sum(r.samples for r in records) / dist_info.world_size
    if batch_size > per_rank:
        logger.warning("batch_size %d exceeds the %d samples per rank: each epoch is one batch of all of them",
                       batch_size, int(per_rank))
    total_steps = schedule_steps if config.max_steps is None else min(schedule_steps, config.max_steps)
    return batch_size, epochs, schedule_steps, total_steps


def _resume(run: _Run) -> None:
    """Load the checkpoint into ``run`` when resuming; rewrite metrics.jsonl to what the
    checkpoint covers (a fresh start empties it)."""
    config, dist_info = run.config, run.dist_info
    if config.resume and run.checkpoint_path.is_file():
        ckpt = torch.load(run.checkpoint_path, map_location="cpu", weights_only=True)
        _check_resumable(ckpt, config, dist_info)
        _check_shard_set(ckpt, config, run.records)
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.schedule.load_state_dict(ckpt["scheduler"])
        run.scaler.load_state_dict(ckpt["scaler"])
        run.state = dict(ckpt["state"])
        _set_rng_state(ckpt["rng"][dist_info.rank], run.device)
        run.resumed_from = run.state["step"]
        del ckpt
        logger.info("resuming %s at step %d (epoch %d, batch %d)", config.out, run.state["step"],
                    run.state["epoch"], run.state["batch_in_epoch"])
    if dist_info.main:
        rows = _read_metrics(run.metrics_path, run.state["step"]) if run.resumed_from else []
        atomic_write_text(run.metrics_path, "".join(json.dumps(r) + "\n" for r in rows))
        if run.probe is not None:
            from .geometry import read_geometry

            rows = read_geometry(run.config.out, run.state["step"]) if run.resumed_from else []
            atomic_write_text(run.geometry_path, "".join(json.dumps(r) + "\n" for r in rows))


def _save_checkpoint(run: _Run) -> None:
    rng = _all_gather_objects(_rng_state(run.device), run.dist_info)  # every rank's dropout stream
    if not run.dist_info.main:
        return
    payload = {"format": CHECKPOINT_FORMAT, "config": run.config.to_dict(), "hyper": run.hyper,
               "world_size": run.dist_info.world_size, "state": dict(run.state), "model": run.model.state_dict(),
               "optimizer": run.optimizer.state_dict(), "scheduler": run.schedule.state_dict(),
               "scaler": run.scaler.state_dict(), "rng": rng, "shards": _shard_set(run.records)}
    with atomic_open(run.checkpoint_path, "wb") as fh:
        torch.save(payload, fh)


# -- the loop ------------------------------------------------------------------------------
@dataclass
class _StepLog:
    """Where each step's metrics go: the progress bar, metrics.jsonl (rank 0), ``on_step``."""

    bar: Any
    file: Any
    on_step: Callable[[dict], None] | None
    log_every: int
    total_steps: int

    def step(self, row: dict) -> None:
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{row['loss']:.4f}", epoch=row["epoch"])
        if row["step"] % self.log_every == 0 or row["step"] == self.total_steps:
            if self.file is not None:
                self.file.write(json.dumps(row) + "\n")  # one whole line per write
                self.file.flush()
            if self.on_step is not None:
                self.on_step({**row, "total_steps": self.total_steps})


def _loop(run: _Run, progress: bool, on_step: Callable[[dict], None] | None) -> tuple[_Tally, float]:
    """Epochs until ``total_steps`` (or the last epoch); a checkpoint at the end. Returns this
    call's tally and seconds."""
    from tqdm import tqdm

    state = run.state
    bar = tqdm(total=run.total_steps, initial=min(state["step"], run.total_steps), unit="step", desc="train",
               disable=not (progress and run.dist_info.main))
    metrics_file = open(run.metrics_path, "a", encoding="utf-8") if run.dist_info.main else None
    log = _StepLog(bar, metrics_file, on_step, run.config.log_every, run.total_steps)
    started = time.perf_counter()
    tally = _Tally(checkpointed_at=state["step"])
    if state["step"] == 0:
        _trace(run)
    try:
        while state["step"] < run.total_steps and state["epoch"] < run.epochs:
            _run_epoch(run, tally, log)
        if tally.checkpointed_at != state["step"] or not run.checkpoint_path.is_file():
            _save_checkpoint(run)
    finally:
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
    return tally, time.perf_counter() - started


def _run_epoch(run: _Run, tally: _Tally, log: _StepLog) -> None:
    """The rest of the current epoch (from its next batch), up to ``total_steps``."""
    config, state, device = run.config, run.state, run.device
    epoch = state["epoch"]
    loader = make_loader(config.shards, config.split, tokenizer=run.adapter.tokenizer,
                         max_length=run.adapter.max_text_length, image_size=run.adapter.image_size,
                         batch_size=run.batch_size, epoch=epoch, seed=config.seed, train=True,
                         num_workers=config.num_workers, skip_batches=state["batch_in_epoch"],
                         rank=run.dist_info.rank, world_size=run.dist_info.world_size,
                         pin_memory=device.type == "cuda", records=run.records,
                         text_source=run.hyper["text_source"], text_tokens=run.text_cache is None,
                         image_cache=run.image_cache)
    tick = time.perf_counter()
    for batch in loader:
        batch = batch.to(device, non_blocking=True)
        loss, grad_norm, lrs = _optimise(run, batch, epoch)
        step_loss, n_normal, n_images = _reduce(run, loss, batch)
        state["step"] += 1
        state["batch_in_epoch"] += 1
        state["epoch_loss_sum"] += step_loss
        state["epoch_batches"] += 1
        tally.images += n_images
        tally.last_loss = step_loss
        now = time.perf_counter()
        log.step({"step": state["step"], "epoch": epoch, "batch": state["batch_in_epoch"], "loss": step_loss,
                  "lr": lrs[0], "vision_lr": lrs[1],
                  "logit_scale": float(run.model.logit_scale.detach().exp()), "grad_norm": float(grad_norm),
                  "batch_size": n_images, "n_normal": n_normal,
                  "images_per_second": n_images / max(now - tick, 1e-9)})
        if state["step"] % max(1, config.trace_every) == 0 or state["step"] == run.total_steps:
            _trace(run)
        tick = time.perf_counter()
        if state["step"] % config.checkpoint_every == 0:
            _save_checkpoint(run)
            tally.checkpointed_at = state["step"]
        if state["step"] >= run.total_steps:
            break  # max_steps
    if state["batch_in_epoch"] >= loader.plan.n_batches:  # the epoch is complete
        run.schedule.step_epoch(state["epoch_loss_sum"] / max(1, state["epoch_batches"]))
        state.update(epoch=epoch + 1, batch_in_epoch=0, epoch_loss_sum=0.0, epoch_batches=0)


def _trace(run: _Run) -> None:
    """One line of RUN/geometry.jsonl when the run traces (rank 0): the probe's geometry now."""
    if run.probe is None:
        return
    row = {"step": run.state["step"], "epoch": run.state["epoch"], **run.probe.measure(run.adapter, run.device)}
    with open(run.geometry_path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")  # one whole line per write


def _optimise(run: _Run, batch, epoch: int) -> tuple[torch.Tensor, torch.Tensor, tuple[float, float]]:
    """One optimizer step on ``batch``: (loss, gradient norm before clipping, the step's learning
    rates: text tower, vision)."""
    model, hyper, optimizer = run.model, run.hyper, run.optimizer
    run.net.train()
    if hyper["freeze_text"]:
        model.text_model.eval()  # a frozen tower never drops out (as in its cached features)
    elif hyper.get("text_trainable_layers"):
        _text_modes(model, hyper["text_trainable_layers"])
    with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
        if hasattr(run.text_cache, "layer"):  # the top text layers run on cached hidden states
            hidden, mask = run.text_cache.lookup(batch.texts)
            logits = run.net(batch.pixel_values, text_hidden=(hidden.to(run.device, non_blocking=True),
                                                               mask.to(run.device, non_blocking=True),
                                                               run.text_cache.layer))
        elif run.text_cache is not None:
            logits = run.net(batch.pixel_values,
                             text_features=run.text_cache.lookup(batch.texts).to(run.device, non_blocking=True))
        else:
            logits = run.net(batch.pixel_values, batch.input_ids, batch.attention_mask)
        loss = run.loss_fn(logits, batch.is_normal)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss {loss.item()} at step {run.state['step'] + 1} "
                                 f"(epoch {epoch}, keys {batch.keys[:4]}...)")
    optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        model.parameters(), hyper["grad_clip"] if hyper["grad_clip"] > 0 else float("inf"))
    lrs = _group_lr(optimizer, "text"), _group_lr(optimizer, "vision")  # this step's
    run.scaler.step(optimizer)
    run.scaler.update()
    run.schedule.step_batch()
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, math.log(run.adapter.max_logit_scale))
    return loss, grad_norm, lrs


def _reduce(run: _Run, loss: torch.Tensor, batch) -> tuple[float, int, int]:
    """One all-reduce: (the mean loss, normal pairs, batch size) over all ranks."""
    summary = torch.tensor([loss.item(), float(batch.is_normal.sum()), float(len(batch))],
                           dtype=torch.float64, device=run.device)
    if run.dist_info.enabled:
        torch.distributed.all_reduce(summary)
        summary[0] /= run.dist_info.world_size
    return summary[0].item(), int(summary[1]), int(summary[2])


# -- the end -------------------------------------------------------------------------------
def _finish(run: _Run, model_config: dict, tally: _Tally, seconds: float) -> TrainResult:
    """The result; on rank 0 the model (with its training metadata), the plot and train.json."""
    config, state, out = run.config, run.state, Path(run.config.out)
    rows = _read_metrics(run.metrics_path)
    images = tally.images
    result = TrainResult(model_dir=out / MODEL_DIR, steps=state["step"], epochs=state["epoch"],
                         final_loss=tally.last_loss if images or not rows else rows[-1]["loss"],
                         seconds=seconds, images_per_second=images / seconds if seconds > 0 and images else 0.0,
                         metrics_path=run.metrics_path, plot_path=None, resumed_from=run.resumed_from,
                         total_steps=run.total_steps, hyper=run.hyper)
    if run.dist_info.main:
        run.adapter.save(out / MODEL_DIR, extra=_model_metadata(run, model_config, result))
        result.plot_path = _write_plot(rows, out / PLOT_FILE)
        atomic_write_text(out / SUMMARY_FILE, json.dumps({**result.to_dict(), "train_config": config.to_dict()},
                                                         indent=1, sort_keys=True) + "\n")
    if run.dist_info.enabled:
        torch.distributed.barrier()
    return result


def _model_metadata(run: _Run, model_config: dict, result: TrainResult) -> dict:
    """``offclip_train``: what the saved model records of its training."""
    config, hyper, state = run.config, run.hyper, run.state
    extra = {"offclip_train": {
        "loss": config.loss, "abnormal_weight": config.abnormal_weight, "seed": config.seed,
        "text_source": hyper["text_source"],
        "config": model_config.get("name"), "steps": state["step"], "epochs": state["epoch"],
        "total_steps": run.total_steps, "world_size": run.dist_info.world_size, "hyper": hyper,
        "train_config": config.to_dict(), "shards": _shard_metadata(config.shards, config.split, run.records),
        "final_loss": result.final_loss}}
    if config.init is not None:
        extra["offclip_train"]["init"] = {"path": config.init, "format": run.adapter.kind}
    return extra


def _initial_model(config: TrainConfig, model_config: dict) -> ClipAdapter:
    """The model a run starts from: the ``init`` directory, else a fresh one from the config."""
    if config.init is not None:
        adapter = load_adapter(config.init)
        logger.info("refining %s (%s): %d px, %d channel(s)", config.init, adapter.kind, adapter.image_size,
                    adapter.image.channels)
        return adapter
    model, tokenizer = build_model(model_config, text_model=config.text_model, vision_model=config.vision_model,
                                   seed=config.seed)
    return ClipAdapter.from_offclip(model, tokenizer)


def _group_lr(optimizer: torch.optim.Optimizer, name: str) -> float:
    """The learning rate of the parameter group called ``name`` (text or vision, decayed)."""
    for group in optimizer.param_groups:
        if group["name"] == name:
            return float(group["lr"])
    return float(optimizer.param_groups[0]["lr"])


def _check_resumable(ckpt: dict, config: TrainConfig, dist_info: _Dist) -> None:
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"checkpoint format {ckpt.get('format')} is not {CHECKPOINT_FORMAT}: "
                         "start a fresh run (another out, or resume=False)")
    saved, now = dict(ckpt["config"]), config.to_dict()
    for key in ("shards", "init"):  # the same directory, however it was spelled
        if saved.get(key) and now[key]:
            saved[key], now[key] = (str(Path(p).resolve()) for p in (saved[key], now[key]))
    changed = {k: (saved.get(k), now[k]) for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]}
    if ckpt.get("world_size", 1) != dist_info.world_size:
        changed["world_size"] = (ckpt.get("world_size", 1), dist_info.world_size)
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
        raise ValueError(f"the checkpoint in {config.out} was made with other settings ({detail}); "
                         "resume with the same ones, or start a fresh run (another out, or resume=False)")


def _check_shard_set(ckpt: dict, config: TrainConfig, records: list) -> None:
    """Refuse to resume on another shard set than the checkpoint's (unless allowed): the epoch
    plans, hence which batches were already seen, depend on it."""
    saved = ckpt.get("shards")
    if saved is None:  # a checkpoint from before shard sets were recorded: nothing to compare
        logger.warning("the checkpoint in %s does not record its shard set: resuming unchecked", config.out)
        return
    before = {s["name"]: s["sha256"] for s in saved}
    now = {r.name: r.sha256 for r in records}
    if before == now:
        return
    added = sorted(set(now) - set(before))
    removed = sorted(set(before) - set(now))
    changed = sorted(n for n in set(now) & set(before) if now[n] != before[n])
    detail = "; ".join(f"{what}: {', '.join(names[:5])}" + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
                       for what, names in (("added", added), ("removed", removed), ("changed", changed)) if names)
    if config.allow_shard_change:
        logger.warning("resuming %s on a changed shard set (%s): allowed; the rest of the run reads the new set",
                       config.out, detail)
        return
    raise ValueError(f"the shard set of split {config.split!r} under {config.shards} changed since the checkpoint in "
                     f"{config.out} was written ({detail}): resuming would not continue the same run. Resume "
                     "anyway on the new set with --allow-shard-change (allow_shard_change=True), or start a "
                     "fresh run (another out, or resume=False)")


# ------------------------------------------------------------------------------------------
# command line (what torchrun launches)
# ------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    """The options a train run shares with ``offclip train`` and the train flow are made from
    their fields (``flows/parameters.py`` TrainParameters: one name, one default); the trainer's
    own follow. ``--out`` is the old spelling of ``--run-dir``."""
    from offclip.flows.parameters import ParameterParser, TrainParameters

    p = ParameterParser(prog="python -m offclip.models.train",
                        description="Train the OFF-CLIP dual encoder on curated WebDataset shards "
                                    "(resumes RUN_DIR/checkpoint/last.pt when present).")
    p.add_fields(TrainParameters, ("shards", "run_dir"), required=("run_dir",), aliases={"run_dir": ("--out",)},
                 helps={"run_dir": "The run directory; an unfinished run there is resumed exactly."})
    p.add_fields(TrainParameters, ("config", "loss", "abnormal_weight", "epochs", "batch_size", "lr"))
    p.add_argument("--weight-decay", type=float, help="default: the config's")
    p.add_argument("--warmup-steps", type=int, help="default: the config's")
    p.add_argument("--schedule", choices=SCHEDULES, help="default: the config's")
    p.add_argument("--grad-clip", type=float, help="default: the config's (0: no clipping)")
    p.add_fields(TrainParameters, ("seed", "max_steps"))
    p.add_argument("--amp", default="auto", choices=AMP_MODES)
    p.add_fields(TrainParameters, ("device", "num_workers"))
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start fresh even if a checkpoint exists")
    p.add_fields(TrainParameters, ("text_source",))
    p.add_argument("--no-text-cache", dest="text_cache", action="store_false",
                   help="run the frozen text tower at every step (default: each sentence once)")
    p.add_argument("--image-cache-mb", type=int, default=2048,
                   help="MiB of decoded training images kept in memory (0: decode every epoch)")
    p.add_fields(TrainParameters, ("allow_shard_change", "init", "text_model", "vision_model"))
    p.add_argument("--split", default="train")
    p.add_argument("--log-every", type=int, default=1)
    p.add_fields(TrainParameters, ("trace_every",))
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    args = vars(_parser().parse_args(argv))
    show = args.pop("progress")
    args["out"] = args.pop("run_dir")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    config = TrainConfig(**{f.name: args[f.name] for f in fields(TrainConfig) if f.name in args})
    result = train(config, progress=show)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps(result.to_dict(), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

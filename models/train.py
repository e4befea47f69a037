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
  off on CPU, where ``amp="bf16"`` asks for CPU autocast (matrix products in bf16; the top text
  layers keep their attention in float32, see ``clip.packed_bert_layers``). **DDP**: when
  ``WORLD_SIZE > 1`` (torchrun) the process group is initialised (nccl on CUDA, gloo on CPU),
  the model is wrapped in DistributedDataParallel and each rank reads its own shards; the
  contrastive loss is computed within each rank's batch.
* **Modules**: the settings are :mod:`.train_config`, the process group :mod:`.distributed`, the
  optimizer groups and schedule :mod:`.schedule`, the checkpoint and the run directory's other
  files :mod:`.checkpoint`; this module sets a run up, runs its loop and finishes it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from offclip.pipeline.atomic import atomic_write_text

from .adapters import ClipAdapter, load_adapter

# the rest of what this module defined before its split: still importable from here
from .checkpoint import (  # noqa: F401  # noqa: F401
    CHECKPOINT_FORMAT,
    RESUMABLE_CHANGES,
    _check_resumable,
    _check_shard_set,
    _read_metrics,
    _resume,
    _rng_state,
    _save_checkpoint,
    _set_rng_state,
    _shard_metadata,
    _shard_set,
    _write_plot,
)
from .clip import OffClipModel, build_model, load_model_config
from .data import derive_seed, make_loader, plan_epoch, split_records
from .distributed import (
    _all_gather_objects,  # noqa: F401
    _Dist,
    _init_distributed,
)
from .losses import get_loss
from .schedule import (
    PLATEAU,  # noqa: F401
    Schedule,
    param_groups,
)
from .train_config import (
    CHECKPOINT,
    HYPER_KEYS,  # noqa: F401
    METRICS_FILE,
    MODEL_DIR,
    PLOT_FILE,
    SCHEDULES,
    SUMMARY_FILE,
    TrainConfig,
    TrainResult,
    _amp_dtype,
    _check_config,
    _device,
    resolve_hyper,
)

if TYPE_CHECKING:
    from .adapters import WrappedModel
    from .caches import TextFeatures, TextHidden

__all__ = ["TrainConfig", "TrainResult", "main", "train"]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------
def train(config: TrainConfig, progress: bool = False, on_step: Callable[[dict], None] | None = None) -> TrainResult:
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
    model: WrappedModel  #: what the checkpoint holds (adapter.model)
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
    state: dict = field(
        default_factory=lambda: {"step": 0, "epoch": 0, "batch_in_epoch": 0, "epoch_loss_sum": 0.0, "epoch_batches": 0}
    )
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


def _train(
    config: TrainConfig,
    model_config: dict,
    hyper: dict,
    records: list,
    dist_info: _Dist,
    device: torch.device,
    progress: bool,
    on_step: Callable[[dict], None] | None,
) -> TrainResult:
    run = _setup(config, model_config, hyper, records, dist_info, device)
    tally, seconds = _loop(run, progress, on_step)
    return _finish(run, model_config, tally, seconds)


# -- setup ---------------------------------------------------------------------------------
def _setup(
    config: TrainConfig, model_config: dict, hyper: dict, records: list, dist_info: _Dist, device: torch.device
) -> _Run:
    """The model, caches, step plan, optimizer and schedule of a run; resumed from its checkpoint
    when there is one (``config.resume``)."""
    loss_fn = get_loss(config.loss, config.abnormal_weight)
    amp_dtype = _amp_dtype(config.amp, device)
    adapter, model = _prepare_model(config, model_config, hyper, device)
    text_cache, image_cache = _caches(config, hyper, records, adapter, device)
    batch_size, epochs, schedule_steps, total_steps = _plan_steps(config, hyper, records, dist_info)

    optimizer = torch.optim.AdamW(param_groups(model, hyper), betas=(0.9, 0.98), eps=1e-6)
    schedule = Schedule(
        optimizer, hyper["schedule"], hyper["warmup_steps"], schedule_steps, hyper.get("text_warmup_steps")
    )
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    torch.manual_seed(derive_seed(config.seed, "train", dist_info.rank))
    run = _Run(
        config,
        hyper,
        records,
        dist_info,
        device,
        adapter,
        model,
        loss_fn,
        amp_dtype,
        text_cache,
        image_cache,
        batch_size,
        epochs,
        total_steps,
        optimizer,
        schedule,
        scaler,
    )
    if config.trace_every and dist_info.main:
        from .geometry import GeometryProbe

        run.probe = GeometryProbe.from_shards(
            config.shards, adapter.image_size, hyper["text_source"], max_samples=config.trace_samples
        )
    _resume(run)
    run.net = adapter
    if dist_info.enabled:
        run.net = torch.nn.parallel.DistributedDataParallel(
            adapter, device_ids=[device.index] if device.type == "cuda" else None
        )
    return run


def _prepare_model(
    config: TrainConfig, model_config: dict, hyper: dict, device: torch.device
) -> tuple[ClipAdapter, WrappedModel]:
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
    n_layers = len(adapter._offclip.text_model.encoder.layer)
    if trainable > n_layers:
        raise ValueError(f"text_trainable_layers {trainable} exceeds the text tower's {n_layers} layers")
    return n_layers - trainable


def _freeze_lower_text_layers(adapter: ClipAdapter, trainable: int) -> None:
    """Freeze the text tower's embeddings and every encoder layer below the top ``trainable``."""
    start = text_layer_split(adapter, trainable)
    text_model = adapter._offclip.text_model
    text_model.requires_grad_(False)
    for layer in text_model.encoder.layer[start:]:
        layer.requires_grad_(True)
    _text_modes(adapter.model, trainable)


def _text_modes(model: WrappedModel, trainable: int) -> None:
    """The frozen part of a partly trainable text tower in eval mode (no dropout, as in its cached
    states), the top ``trainable`` layers in the model's mode."""
    assert isinstance(model, OffClipModel)  # text_layer_split lets only offclip models through
    model.text_model.eval()
    start = len(model.text_model.encoder.layer) - trainable
    for layer in model.text_model.encoder.layer[start:]:
        layer.train(model.training)


def _caches(config: TrainConfig, hyper: dict, records: list, adapter: ClipAdapter, device: torch.device):
    """(text cache, image cache), each None when not used: a frozen text tower's features of every
    sentence; the decoded training images when they fit ``image_cache_mb`` (and no workers). The
    loader follows the model: its input size (grayscale batches; the adapter repeats and
    normalises them as the checkpoint's processor says)."""
    text_cache: TextHidden | TextFeatures | None = None
    if hyper.get("text_trainable_layers") and config.text_cache:
        from .caches import TextHidden, shard_sentences

        sentences = shard_sentences(config.shards, records, config.split, hyper["text_source"])
        text_cache = TextHidden.for_run(
            adapter.model,
            adapter.tokenizer,
            sentences,
            adapter.max_text_length,
            device,
            text_layer_split(adapter, hyper["text_trainable_layers"]),
        )
    elif hyper["freeze_text"] and config.text_cache:
        from .caches import TextFeatures, shard_sentences

        sentences = shard_sentences(config.shards, records, config.split, hyper["text_source"])
        text_cache = TextFeatures.for_run(adapter, adapter.tokenizer, sentences, adapter.max_text_length, device)
    image_cache = None
    if config.image_cache_mb > 0 and config.num_workers == 0:
        from .caches import ImageCache

        image_cache = ImageCache(adapter.image_size, config.image_cache_mb * 2**20)
        if not image_cache.fits(sum(r.samples for r in records)):
            logger.info(
                "training images do not fit the %d MiB image cache: read from the shards every epoch",
                config.image_cache_mb,
            )
            image_cache = None
    return text_cache, image_cache


def _plan_steps(config: TrainConfig, hyper: dict, records: list, dist_info: _Dist) -> tuple[int, int, int, int]:
    """(batch size, epochs, the schedule's steps: every epoch's batches, this run's total steps:
    truncated by ``max_steps``)."""
    batch_size, epochs = int(hyper["batch_size"]), int(hyper["epochs"])
    plans = [
        plan_epoch(
            records,
            epoch=e,
            seed=config.seed,
            batch_size=batch_size,
            shuffle=True,
            rank=dist_info.rank,
            world_size=dist_info.world_size,
            num_workers=config.num_workers,
            min_batch=2,
        )
        for e in range(epochs)
    ]
    schedule_steps = sum(p.n_batches for p in plans)
    if schedule_steps == 0:
        raise ValueError(
            f"no training batch: {sum(r.samples for r in records)} sample(s) in split "
            f"{config.split!r} cannot make a batch of >= 2 pairs per rank"
        )
    per_rank = sum(r.samples for r in records) / dist_info.world_size
    if batch_size > per_rank:
        logger.warning(
            "batch_size %d exceeds the %d samples per rank: each epoch is one batch of all of them",
            batch_size,
            int(per_rank),
        )
    total_steps = schedule_steps if config.max_steps is None else min(schedule_steps, config.max_steps)
    return batch_size, epochs, schedule_steps, total_steps


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
    bar = tqdm(
        total=run.total_steps,
        initial=min(state["step"], run.total_steps),
        unit="step",
        desc="train",
        disable=not (progress and run.dist_info.main),
    )
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
    loader = make_loader(
        config.shards,
        config.split,
        tokenizer=run.adapter.tokenizer,
        max_length=run.adapter.max_text_length,
        image_size=run.adapter.image_size,
        batch_size=run.batch_size,
        epoch=epoch,
        seed=config.seed,
        train=True,
        num_workers=config.num_workers,
        skip_batches=state["batch_in_epoch"],
        rank=run.dist_info.rank,
        world_size=run.dist_info.world_size,
        pin_memory=device.type == "cuda",
        records=run.records,
        text_source=run.hyper["text_source"],
        text_tokens=run.text_cache is None,
        image_cache=run.image_cache,
    )
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
        log.step(
            {
                "step": state["step"],
                "epoch": epoch,
                "batch": state["batch_in_epoch"],
                "loss": step_loss,
                "lr": lrs[0],
                "vision_lr": lrs[1],
                "logit_scale": float(run.model.logit_scale.detach().exp()),
                "grad_norm": float(grad_norm),
                "batch_size": n_images,
                "n_normal": n_normal,
                "images_per_second": n_images / max(now - tick, 1e-9),
            }
        )
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
    assert run.net is not None  # _setup sets it
    run.net.train()
    if hyper["freeze_text"]:
        model.text_model.eval()  # a frozen tower never drops out (as in its cached features)
    elif hyper.get("text_trainable_layers"):
        _text_modes(model, hyper["text_trainable_layers"])
    with torch.autocast(run.device.type, dtype=run.amp_dtype or torch.float32, enabled=run.amp_dtype is not None):
        if hasattr(run.text_cache, "layer"):  # the top text layers run on cached hidden states
            hidden, mask = run.text_cache.lookup(batch.texts)
            logits = run.net(
                batch.pixel_values,
                text_hidden=(
                    hidden.to(run.device, non_blocking=True),
                    mask.to(run.device, non_blocking=True),
                    run.text_cache.layer,
                ),
            )
        elif run.text_cache is not None:
            logits = run.net(
                batch.pixel_values, text_features=run.text_cache.lookup(batch.texts).to(run.device, non_blocking=True)
            )
        else:
            logits = run.net(batch.pixel_values, batch.input_ids, batch.attention_mask)
        loss = run.loss_fn(logits, batch.is_normal)
    if not torch.isfinite(loss):
        raise FloatingPointError(
            f"non-finite loss {loss.item()} at step {run.state['step'] + 1} (epoch {epoch}, keys {batch.keys[:4]}...)"
        )
    optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()
    run.scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(
        model.parameters(), hyper["grad_clip"] if hyper["grad_clip"] > 0 else float("inf")
    )
    lrs = _group_lr(optimizer, "text"), _group_lr(optimizer, "vision")  # this step's
    run.scaler.step(optimizer)
    run.scaler.update()
    run.schedule.step_batch()
    with torch.no_grad():
        model.logit_scale.clamp_(0.0, math.log(run.adapter.max_logit_scale))
    return loss, grad_norm, lrs


def _reduce(run: _Run, loss: torch.Tensor, batch) -> tuple[float, int, int]:
    """One all-reduce: (the mean loss, normal pairs, batch size) over all ranks."""
    summary = torch.tensor(
        [loss.item(), float(batch.is_normal.sum()), float(len(batch))], dtype=torch.float64, device=run.device
    )
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
    result = TrainResult(
        model_dir=out / MODEL_DIR,
        steps=state["step"],
        epochs=state["epoch"],
        final_loss=tally.last_loss if images or not rows else rows[-1]["loss"],
        seconds=seconds,
        images_per_second=images / seconds if seconds > 0 and images else 0.0,
        metrics_path=run.metrics_path,
        plot_path=None,
        resumed_from=run.resumed_from,
        total_steps=run.total_steps,
        hyper=run.hyper,
    )
    if run.dist_info.main:
        run.adapter.save(out / MODEL_DIR, extra=_model_metadata(run, model_config, result))
        result.plot_path = _write_plot(rows, out / PLOT_FILE)
        atomic_write_text(
            out / SUMMARY_FILE,
            json.dumps({**result.to_dict(), "train_config": config.to_dict()}, indent=1, sort_keys=True) + "\n",
        )
    if run.dist_info.enabled:
        torch.distributed.barrier()
    return result


def _model_metadata(run: _Run, model_config: dict, result: TrainResult) -> dict:
    """``offclip_train``: what the saved model records of its training."""
    config, hyper, state = run.config, run.hyper, run.state
    extra = {
        "offclip_train": {
            "loss": config.loss,
            "abnormal_weight": config.abnormal_weight,
            "seed": config.seed,
            "text_source": hyper["text_source"],
            "config": model_config.get("name"),
            "steps": state["step"],
            "epochs": state["epoch"],
            "total_steps": run.total_steps,
            "world_size": run.dist_info.world_size,
            "hyper": hyper,
            "train_config": config.to_dict(),
            "shards": _shard_metadata(config.shards, config.split, run.records),
            "final_loss": result.final_loss,
        }
    }
    if config.init is not None:
        extra["offclip_train"]["init"] = {"path": config.init, "format": run.adapter.kind}
    return extra


def _initial_model(config: TrainConfig, model_config: dict) -> ClipAdapter:
    """The model a run starts from: the ``init`` directory, else a fresh one from the config."""
    if config.init is not None:
        adapter = load_adapter(config.init)
        logger.info(
            "refining %s (%s): %d px, %d channel(s)",
            config.init,
            adapter.kind,
            adapter.image_size,
            adapter.image.channels,
        )
        return adapter
    model, tokenizer = build_model(
        model_config, text_model=config.text_model, vision_model=config.vision_model, seed=config.seed
    )
    return ClipAdapter.from_offclip(model, tokenizer)


def _group_lr(optimizer: torch.optim.Optimizer, name: str) -> float:
    """The learning rate of the parameter group called ``name`` (text or vision, decayed)."""
    for group in optimizer.param_groups:
        if group["name"] == name:
            return float(group["lr"])
    return float(optimizer.param_groups[0]["lr"])


# ------------------------------------------------------------------------------------------
# command line (what torchrun launches)
# ------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    """The options a train run shares with ``offclip train`` and the train flow are made from
    their fields (``flows/parameters.py`` TrainParameters: one name, one default); the trainer's
    own follow. ``--out`` is the old spelling of ``--run-dir``."""
    from offclip.flows.parameters import ParameterParser, TrainParameters

    p = ParameterParser(
        prog="python -m offclip.models.train",
        description="Train the OFF-CLIP dual encoder on curated WebDataset shards "
        "(resumes RUN_DIR/checkpoint/last.pt when present).",
    )
    p.add_fields(
        TrainParameters,
        ("shards", "run_dir"),
        required=("run_dir",),
        aliases={"run_dir": ("--out",)},
        helps={"run_dir": "The run directory; an unfinished run there is resumed exactly."},
    )
    p.add_fields(TrainParameters, ("config", "loss", "abnormal_weight", "epochs", "batch_size", "lr"))
    p.add_argument("--weight-decay", type=float, help="default: the config's")
    p.add_argument("--warmup-steps", type=int, help="default: the config's")
    p.add_argument("--schedule", choices=SCHEDULES, help="default: the config's")
    p.add_argument("--grad-clip", type=float, help="default: the config's (0: no clipping)")
    p.add_fields(TrainParameters, ("seed", "max_steps", "amp", "device", "num_workers"))
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--no-resume", dest="resume", action="store_false", help="start fresh even if a checkpoint exists")
    p.add_fields(TrainParameters, ("text_source",))
    p.add_argument(
        "--no-text-cache",
        dest="text_cache",
        action="store_false",
        help="run the frozen text tower at every step (default: each sentence once)",
    )
    p.add_argument(
        "--image-cache-mb",
        type=int,
        default=2048,
        help="MiB of decoded training images kept in memory (0: decode every epoch)",
    )
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

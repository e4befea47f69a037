"""The trainer's run-directory files (:mod:`offclip.models.train`): RNG states, metrics.jsonl,
the training curve, the shard set a run records, and the checkpoint: written, checked against the
settings and shard set of a resumption, loaded."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from offclip.pipeline.atomic import atomic_open, atomic_write_bytes, atomic_write_text

from .distributed import _all_gather_objects, _Dist
from .train_config import TrainConfig

if TYPE_CHECKING:
    from .train import _Run

logger = logging.getLogger("offclip.models.train")  # the trainer's one logger: records keep its name

CHECKPOINT_FORMAT = 1
#: settings that may change between a run and its resumption (the others must match)
RESUMABLE_CHANGES = (
    "out",
    "max_steps",
    "checkpoint_every",
    "resume",
    "log_every",
    "device",
    "allow_shard_change",
    "text_cache",
    "image_cache_mb",
    "trace_every",
    "trace_samples",
)


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
    return {
        "root": str(shards),
        "split": split,
        "samples": sum(r.samples for r in records),
        "classifier_versions": sorted({r.model_version for r in records if r.model_version}),
        "shards": _shard_set(records),
    }


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
        logger.info(
            "resuming %s at step %d (epoch %d, batch %d)",
            config.out,
            run.state["step"],
            run.state["epoch"],
            run.state["batch_in_epoch"],
        )
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
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": run.config.to_dict(),
        "hyper": run.hyper,
        "world_size": run.dist_info.world_size,
        "state": dict(run.state),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.schedule.state_dict(),
        "scaler": run.scaler.state_dict(),
        "rng": rng,
        "shards": _shard_set(run.records),
    }
    with atomic_open(run.checkpoint_path, "wb") as fh:
        torch.save(payload, fh)


def _check_resumable(ckpt: dict, config: TrainConfig, dist_info: _Dist) -> None:
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint format {ckpt.get('format')} is not {CHECKPOINT_FORMAT}: "
            "start a fresh run (another out, or resume=False)"
        )
    saved, now = dict(ckpt["config"]), config.to_dict()
    for key in ("shards", "init"):  # the same directory, however it was spelled
        if saved.get(key) and now[key]:
            saved[key], now[key] = (str(Path(p).resolve()) for p in (saved[key], now[key]))
    changed = {k: (saved.get(k), now[k]) for k in now if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]}
    if ckpt.get("world_size", 1) != dist_info.world_size:
        changed["world_size"] = (ckpt.get("world_size", 1), dist_info.world_size)
    if changed:
        detail = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
        raise ValueError(
            f"the checkpoint in {config.out} was made with other settings ({detail}); "
            "resume with the same ones, or start a fresh run (another out, or resume=False)"
        )


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
    detail = "; ".join(
        f"{what}: {', '.join(names[:5])}" + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
        for what, names in (("added", added), ("removed", removed), ("changed", changed))
        if names
    )
    if config.allow_shard_change:
        logger.warning(
            "resuming %s on a changed shard set (%s): allowed; the rest of the run reads the new set",
            config.out,
            detail,
        )
        return
    raise ValueError(
        f"the shard set of split {config.split!r} under {config.shards} changed since the checkpoint in "
        f"{config.out} was written ({detail}): resuming would not continue the same run. Resume "
        "anyway on the new set with --allow-shard-change (allow_shard_change=True), or start a "
        "fresh run (another out, or resume=False)"
    )

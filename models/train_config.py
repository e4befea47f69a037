"""The trainer's settings (:mod:`offclip.models.train`): :class:`TrainConfig` and
:class:`TrainResult`, the run directory's file names, the hyper-parameters a run resolves from its
model config (:func:`resolve_hyper`), the checks of a config, the device and the autocast dtype."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..data_contracts.enums import AMP_MODES, DEFAULT_MODEL_CONFIG, TEXT_SOURCES
from .losses import LOSSES

logger = logging.getLogger("offclip.models.train")  # the trainer's one logger: records keep its name

CHECKPOINT = Path("checkpoint") / "last.pt"
MODEL_DIR = "model"
METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "training_curve.png"
SUMMARY_FILE = "train.json"
SCHEDULES = ("cosine", "plateau")
#: the model config's "train" keys a TrainConfig can override (None = take the config's)
HYPER_KEYS = ("epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "schedule", "grad_clip")


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
    amp: str = "auto"  #: AMP_MODES: auto | bf16 | fp16 | off
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
        raise ValueError(
            f"model config {model_config.get('name')!r} has no train setting for {missing}: "
            "pass them in the TrainConfig"
        )
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
    hyper["text_warmup_steps"] = int(
        section.get("text_warmup_steps", hyper["warmup_steps"]) if config.warmup_steps is None else config.warmup_steps
    )
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
    check_amp(config.amp)
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


def check_amp(mode: str) -> None:
    """A clear error for an amp mode that is not one of AMP_MODES (TrainConfig, CompareConfig)."""
    if mode not in AMP_MODES:
        raise ValueError(f"unknown amp mode {mode!r}; available: {', '.join(AMP_MODES)}")


def _amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision. ``auto``: bf16 on CUDA when supported, else
    fp16; full precision on the CPU. ``bf16`` on the CPU is CPU autocast (matrix products in bf16,
    fast on CPUs with AMX or AVX512-BF16); ``fp16`` there is ignored with a warning."""
    if mode == "off":
        return None
    if device.type != "cuda":
        if mode == "bf16":
            return torch.bfloat16
        if mode == "fp16":
            logger.warning("amp=fp16 ignored on %s: training in float32", device)
        return None
    if mode == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if mode == "bf16" else torch.float16

"""Training and evaluation batches from the curated WebDataset shards (open_clip style).

One epoch is a chain of small generator stages, each doing one thing::

    shard list  --(shuffled by seed+epoch, split by rank, then by DataLoader worker)-->
    tar members --(grouped into samples: webdataset.tarfile_to_samples)-->
    raw samples --(seeded shuffle buffer)--> (one kept sentence drawn per sample)-->
    raw batches --(skip the first N: resume)--> decode + augment + tokenise --> Batch

Determinism is designed in, so that a run is reproducible and can be resumed exactly:

* Everything random about one *sample* (which kept sentence it shows, how its image is
  augmented) comes from a generator seeded by ``(seed, epoch, key)``, never from a stream shared
  with other samples. A sample's text and pixels are therefore identical whether it was loaded by
  worker 0 of 1 or worker 3 of 4, on rank 0 or rank 1.
* What depends on the layout (which worker reads which shard, the shuffle buffer's order) is a
  pure function of ``(seed, epoch, rank, world_size, num_workers)``: the same loader settings give
  the same batches in the same order. :func:`plan_epoch` computes it up front from the shard
  sizes, so the number of batches of an epoch is known before any image is read.
* ``torch.utils.data.DataLoader`` returns the batches of an ``IterableDataset`` round-robin over
  its workers (skipping a worker once it is exhausted), so the global order is known too.
  Skipping the first ``N`` batches of an epoch (an exact resume) is done inside each worker on
  *raw* batches, before any image is decoded: a worker yields a small placeholder for each of its
  skipped batches (keeping its turn in the round-robin) and the loader drops them.

Batch sizes: a worker's samples are cut into batches of ``batch_size``; its last, smaller batch is
kept (``drop_last=False``: every sample is seen every epoch, even when the batch size exceeds the
data), except that in training a final batch of a single sample is merged into the batch before it
(the contrastive loss needs at least two pairs) or dropped when it is the worker's only sample.
Under DDP every rank must run the same number of steps, so a training epoch stops after the
smallest number of batches any rank has.

This module needs only torch, PIL and webdataset (no torchvision, no Prefect).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from offclip.data_contracts.enums import TEXT_SOURCES
from offclip.pipeline.layout import split_dir
from offclip.pipeline.shards import ShardError, ShardRecord, complete_shards

# Tokenisers are used in DataLoader workers (forked after the parent may have used them).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__all__ = [
    "AugmentConfig",
    "Batch",
    "EpochPlan",
    "ShardLoader",
    "augment",
    "batch_sizes",
    "collate",
    "decode_image",
    "derive_seed",
    "draw_sentence",
    "eval_transform",
    "kept_sentences",
    "make_loader",
    "plan_epoch",
    "round_robin",
    "split_records",
    "TEXT_SOURCES",
]

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg")
#: what a worker yields in place of a batch skipped for a resume (a string survives pickling)
SKIPPED = "offclip:skipped-batch"


# ------------------------------------------------------------------------------------------
# seeds
# ------------------------------------------------------------------------------------------
def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any tuple of values (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256(repr(tuple(parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _generator(*parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


# ------------------------------------------------------------------------------------------
# text: one kept sentence per sample per epoch
# ------------------------------------------------------------------------------------------
#: TEXT_SOURCES (data_contracts.enums), where a sample's training text comes from: ``filtered`` —
#: the sentences the filter kept (OFF-CLIP's text, the default); ``report`` — every sentence of the
#: report (a plain CLIP's text, the ablation's baseline). Both read the sample's ``.json``; the
#: pair label is the same.


def kept_sentences(sample: dict, source: str = "filtered") -> list[str]:
    """The distinct sentences a raw sample shows, in report order: the ``json`` sentences with
    ``kept=True`` (``source="filtered"``) or all of them (``source="report"``), else the lines of
    ``txt`` (shards written without sentence metadata)."""
    if source not in TEXT_SOURCES:
        raise ValueError(f"unknown text source {source!r} ({'|'.join(TEXT_SOURCES)})")
    meta = json.loads(sample["json"]) if sample.get("json") else {}
    sentences = meta.get("sentences") or []
    kept = [
        s["text"].strip()
        for s in sorted(sentences, key=lambda s: s.get("index", 0))
        if source == "report" or s.get("kept")
    ]
    if not any(kept):
        text = sample.get("txt", b"")
        kept = [line.strip() for line in (text.decode("utf-8") if isinstance(text, bytes) else text).splitlines()]
    # a sentence repeated in a report is one sentence (it would otherwise be drawn twice as often)
    return list(dict.fromkeys(s for s in kept if s))


def draw_sentence(sentences: Sequence[str], seed: int, epoch: int, key: str) -> str:
    """The sentence a sample shows in ``epoch``: sampling *without* replacement across epochs.

    Epochs are grouped in cycles of ``len(sentences)``; each cycle visits every sentence once,
    in an order drawn from ``(seed, cycle, key)``. So every kept sentence is used equally often,
    two consecutive epochs of a cycle never repeat a sentence, and the draw depends only on
    ``(seed, epoch, key)`` (not on which worker or rank loads the sample).
    """
    if not sentences:
        raise ValueError(f"sample {key!r} has no kept sentence and no txt")
    n = len(sentences)
    cycle, position = divmod(epoch, n)
    order = torch.randperm(n, generator=_generator(seed, "sentence", cycle, key))
    return sentences[int(order[position])]


# ------------------------------------------------------------------------------------------
# images: decode, eval resize, training augmentation (torch ops only)
# ------------------------------------------------------------------------------------------
def decode_image(data: bytes) -> torch.Tensor:
    """PNG/JPEG bytes -> float32 ``[1, H, W]`` in [0, 1] (8- or 16-bit grayscale)."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            array = np.asarray(im, dtype=np.float32) / 65535.0
        else:
            array = np.asarray(im.convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(array)).unsqueeze(0)


def eval_transform(image: torch.Tensor, size: int) -> torch.Tensor:
    """``[1, H, W]`` -> ``[1, size, size]``: zero-pad (centred) to a square, so the anatomy keeps
    its aspect ratio, then an antialiased bilinear resize. No randomness."""
    _, h, w = image.shape
    side = max(h, w)
    if h != w:
        top, left = (side - h) // 2, (side - w) // 2
        image = F.pad(image, (left, side - w - left, top, side - h - top))
    if side != size:
        image = F.interpolate(
            image.unsqueeze(0), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        ).squeeze(0)
    return image.clamp_(0.0, 1.0)


@dataclass(frozen=True)
class AugmentConfig:
    """The paper's augmentations. Defaults: crop area 80–100 %, aspect 0.9–1.1, rotation ±10°,
    translation ±5 %, zoom 0.95–1.05, brightness and contrast ±0.2, horizontal flip p=0.1."""

    crop_scale: tuple[float, float] = (0.8, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    degrees: float = 10.0
    translate: float = 0.05
    scale: tuple[float, float] = (0.95, 1.05)
    brightness: float = 0.2
    contrast: float = 0.2
    # Mild on purpose: reports name sides ("left pleural effusion"), so a flipped image contradicts
    # its sentence. A small rate still teaches some robustness to mirrored acquisitions.
    hflip: float = 0.1


def _uniform(g: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=g, dtype=torch.float64))


def augment(
    image: torch.Tensor, size: int, generator: torch.Generator, config: AugmentConfig = AugmentConfig()
) -> torch.Tensor:
    """One training view of ``[1, H, W]`` as ``[1, size, size]`` in [0, 1].

    The image is first brought to ``size`` by :func:`eval_transform`; then one ``grid_sample``
    applies the random resized crop, rotation, translation, zoom and flip together (a single
    resampling, composed as 3x3 matrices in the normalised [-1, 1] coordinates ``affine_grid``
    uses: each matrix maps output coordinates to input coordinates); then brightness and contrast.
    All draws come from ``generator``, in a fixed order.
    """
    base = eval_transform(image, size)
    g = generator
    # random resized crop: area fraction s, aspect ratio r (log-uniform) -> crop width/height
    area = _uniform(g, *config.crop_scale)
    ratio = math.exp(_uniform(g, math.log(config.crop_ratio[0]), math.log(config.crop_ratio[1])))
    crop_w = min(1.0, math.sqrt(area * ratio))
    crop_h = min(1.0, math.sqrt(area / ratio))
    centre_x = _uniform(g, -(1.0 - crop_w), 1.0 - crop_w)
    centre_y = _uniform(g, -(1.0 - crop_h), 1.0 - crop_h)
    crop = torch.tensor([[crop_w, 0.0, centre_x], [0.0, crop_h, centre_y], [0.0, 0.0, 1.0]], dtype=torch.float64)
    # small affine: rotation, zoom, translation (a fraction of the side = twice that in [-1, 1])
    angle = math.radians(_uniform(g, -config.degrees, config.degrees))
    zoom = _uniform(g, *config.scale)
    shift_x = 2.0 * _uniform(g, -config.translate, config.translate)
    shift_y = 2.0 * _uniform(g, -config.translate, config.translate)
    cos, sin = math.cos(angle) / zoom, math.sin(angle) / zoom
    affine = torch.tensor([[cos, -sin, shift_x], [sin, cos, shift_y], [0.0, 0.0, 1.0]], dtype=torch.float64)
    flip = float(torch.rand((), generator=g, dtype=torch.float64)) < config.hflip
    mirror = torch.diag(torch.tensor([-1.0 if flip else 1.0, 1.0, 1.0], dtype=torch.float64))
    theta = (crop @ affine @ mirror)[:2].to(torch.float32).unsqueeze(0)
    grid = F.affine_grid(theta, [1, 1, size, size], align_corners=False)
    out = F.grid_sample(base.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(0)
    # brightness then contrast (around the image mean), as torchvision's ColorJitter factors
    brightness = _uniform(g, 1.0 - config.brightness, 1.0 + config.brightness)
    contrast = _uniform(g, 1.0 - config.contrast, 1.0 + config.contrast)
    out = out * brightness
    mean = out.mean()
    out = (out - mean) * contrast + mean
    return out.clamp_(0.0, 1.0)


# ------------------------------------------------------------------------------------------
# the epoch plan: shards -> ranks -> workers -> batch sizes -> global order
# ------------------------------------------------------------------------------------------
def split_records(out: str | os.PathLike, split: str) -> list[ShardRecord]:
    """The complete shards of ``split`` under the curation root ``out`` (clear error when none)."""
    records = complete_shards(Path(out), split)
    if not records:
        raise ShardError(
            f"no complete shards for split {split!r} under {split_dir(out, split)} "
            f"(build them first: `offclip shards {out}`)"
        )
    return records


def batch_sizes(n: int, batch_size: int, min_batch: int = 1) -> list[int]:
    """How a stream of ``n`` samples is cut into batches: full batches, then the remainder if it
    has at least ``min_batch`` samples; a smaller remainder is merged into the previous batch, or
    dropped when there is none."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    full, rest = divmod(n, batch_size)
    sizes = [batch_size] * full
    if rest >= min_batch:
        sizes.append(rest)
    elif rest and sizes:
        sizes[-1] += rest
    return sizes


def round_robin(counts: Sequence[int]) -> list[tuple[int, int]]:
    """The order in which a DataLoader returns the batches of an IterableDataset: ``(worker,
    batch index within that worker)``, cycling over workers and skipping exhausted ones."""
    order = []
    for index in range(max(counts, default=0)):
        order += [(worker, index) for worker, count in enumerate(counts) if index < count]
    return order


@dataclass
class EpochPlan:
    """Everything about one epoch that does not need an image: per-worker shards and batch sizes,
    the number of batches this rank runs, and how many raw batches each worker skips."""

    epoch: int
    worker_shards: list[list[ShardRecord]]
    worker_batches: list[list[int]]  #: batch sizes, per worker, in that worker's order
    n_batches: int  #: batches this rank yields this epoch (before skipping)
    skip: int = 0  #: the first ``skip`` batches of the epoch are skipped (resume)
    worker_skip: list[int] = field(default_factory=list)

    @property
    def remaining(self) -> int:
        return max(0, self.n_batches - self.skip)

    @property
    def samples(self) -> int:
        order = round_robin([len(b) for b in self.worker_batches])[: self.n_batches]
        return sum(self.worker_batches[w][i] for w, i in order)


def plan_epoch(
    records: Sequence[ShardRecord],
    *,
    epoch: int,
    seed: int,
    batch_size: int,
    shuffle: bool,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
    min_batch: int = 1,
    equal_ranks: bool = True,
    skip: int = 0,
) -> EpochPlan:
    """Assign shards to ranks and workers and cut each worker's stream into batches.

    Shards are shuffled with ``(seed, epoch)`` (when ``shuffle``), then dealt round-robin to ranks
    and, within a rank, to workers. With ``equal_ranks`` every rank's epoch is cut to the smallest
    rank's number of batches (DDP needs the same number of steps everywhere)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"bad rank {rank} for world size {world_size}")
    if skip < 0:
        raise ValueError(f"skip must be >= 0, got {skip}")
    shards = sorted(records, key=lambda r: r.name)
    if shuffle:
        random.Random(derive_seed(seed, "shards", epoch)).shuffle(shards)
    if len(shards) < world_size:
        raise ShardError(
            f"{len(shards)} shard(s) cannot be split over {world_size} ranks: "
            "write smaller shards (offclip shards --shard-size) or use fewer processes"
        )
    workers = max(1, num_workers)

    def layout(r: int) -> tuple[list[list[ShardRecord]], list[list[int]]]:
        mine = shards[r::world_size]
        per_worker = [mine[w::workers] for w in range(workers)]
        sizes = [batch_sizes(sum(s.samples for s in ws), batch_size, min_batch) for ws in per_worker]
        return per_worker, sizes

    worker_shards, worker_batches = layout(rank)
    n_batches = sum(len(b) for b in worker_batches)
    if equal_ranks and world_size > 1:
        n_batches = min(sum(len(b) for b in layout(r)[1]) for r in range(world_size))
    order = round_robin([len(b) for b in worker_batches])[: min(skip, n_batches)]
    worker_skip = [sum(1 for w, _ in order if w == worker) for worker in range(workers)]
    return EpochPlan(epoch, worker_shards, worker_batches, n_batches, skip, worker_skip)


# ------------------------------------------------------------------------------------------
# stages (each takes an iterator and yields)
# ------------------------------------------------------------------------------------------
def shuffle_buffer(samples: Iterable[dict], size: int, rng: random.Random) -> Iterator[dict]:
    """A seeded shuffle buffer: hold up to ``size`` samples, emit a random one per new arrival."""
    buffer: list[dict] = []
    for sample in samples:
        if len(buffer) < size:
            buffer.append(sample)
            continue
        i = rng.randrange(size)
        buffer[i], sample = sample, buffer[i]
        yield sample
    rng.shuffle(buffer)
    yield from buffer


def with_sentence(
    samples: Iterable[dict], seed: int, epoch: int, mode: str, source: str = "filtered"
) -> Iterator[dict]:
    """Add ``text`` (the sentence(s) shown this epoch, from ``source``: :data:`TEXT_SOURCES`) and
    ``is_normal`` (from ``cls``)."""
    for sample in samples:
        key = sample["__key__"]
        sentences = kept_sentences(sample, source)
        if mode == "draw":
            text = draw_sentence(sentences, seed, epoch, key)
        elif mode == "all":
            text = " ".join(sentences)
        elif mode == "first":
            text = sentences[0]
        else:
            raise ValueError(f"unknown text mode {mode!r} (draw|all|first)")
        if not text:
            raise ValueError(f"sample {key!r} has no text")
        cls = sample.get("cls")
        if cls is None:
            raise ValueError(f"sample {key!r} has no cls (pair label)")
        sample["text"] = text
        sample["is_normal"] = int(cls) == 0
        yield sample


def group(samples: Iterable[dict], sizes: Sequence[int]) -> Iterator[list[dict]]:
    """Cut the stream into lists of the given sizes (leftover samples beyond them are dropped)."""
    it = iter(samples)
    for size in sizes:
        batch = [sample for _, sample in zip(range(size), it)]
        if len(batch) != size:
            raise ShardError(
                f"shards hold fewer samples than their completion records say "
                f"(a batch of {len(batch)}, {size} expected)"
            )
        yield batch


@dataclass
class Batch:
    """A collated batch: what a training step consumes."""

    pixel_values: torch.Tensor  #: float32 [B, 1, S, S] in [0, 1]
    input_ids: torch.Tensor  #: [B, L]
    attention_mask: torch.Tensor  #: [B, L]
    is_normal: torch.Tensor  #: bool [B]: the pair is normal (cls == 0)
    texts: list[str]
    keys: list[str]

    def __len__(self) -> int:
        return len(self.keys)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.pixel_values.to(device, non_blocking=non_blocking),
            self.input_ids.to(device, non_blocking=non_blocking),
            self.attention_mask.to(device, non_blocking=non_blocking),
            self.is_normal.to(device, non_blocking=non_blocking),
            self.texts,
            self.keys,
        )

    def pin_memory(self) -> Batch:  # DataLoader(pin_memory=True) calls this
        return Batch(
            self.pixel_values.pin_memory(),
            self.input_ids.pin_memory(),
            self.attention_mask.pin_memory(),
            self.is_normal.pin_memory(),
            self.texts,
            self.keys,
        )


def _image_bytes(sample: dict) -> bytes:
    for ext in IMAGE_EXTENSIONS:
        if ext in sample:
            return sample[ext]
    raise ShardError(
        f"sample {sample['__key__']!r} in {sample.get('__url__')} has no image (one of {', '.join(IMAGE_EXTENSIONS)})"
    )


def collate(
    samples: list[dict],
    *,
    image_size: int,
    train: bool,
    seed: int,
    epoch: int,
    tokenize: Callable[[list[str]], dict] | None,
    augment_config: AugmentConfig,
) -> Batch:
    """Decode, (augment,) stack and tokenise a list of raw samples. A sample may hold its image
    decoded already (``image``: ``[1, S, S]``, from the image cache); ``tokenize`` None: no tokens
    (the trainer looks the texts up in its text cache), empty ``input_ids``/``attention_mask``."""
    images = []
    for sample in samples:
        image = sample["image"] if "image" in sample else decode_image(_image_bytes(sample))
        if train:
            image = augment(image, image_size, _generator(seed, "augment", epoch, sample["__key__"]), augment_config)
        else:
            image = eval_transform(image, image_size)
        images.append(image)
    texts = [s["text"] for s in samples]
    if tokenize is None:
        empty = torch.zeros((len(texts), 0), dtype=torch.long)
        tokens = {"input_ids": empty, "attention_mask": empty}
    else:
        tokens = tokenize(texts)
    return Batch(
        torch.stack(images),
        tokens["input_ids"],
        tokens["attention_mask"],
        torch.tensor([s["is_normal"] for s in samples], dtype=torch.bool),
        texts,
        [s["__key__"] for s in samples],
    )


# ------------------------------------------------------------------------------------------
# the dataset and its loader
# ------------------------------------------------------------------------------------------
def _hf_tokenize(tokenizer, max_length: int) -> Callable[[list[str]], dict]:
    from .clip import tokenize as clip_tokenize  # padded to the batch's longest, truncated to max_length

    def tokenize(texts: list[str]) -> dict:
        return clip_tokenize(tokenizer, texts, max_length)

    return tokenize


class _EpochDataset(torch.utils.data.IterableDataset):
    """One epoch of one rank; each DataLoader worker runs its own share of :class:`EpochPlan`."""

    def __init__(
        self,
        root: Path,
        plan: EpochPlan,
        *,
        image_size: int,
        train: bool,
        seed: int,
        rank: int,
        shuffle_buffer: int,
        text_mode: str,
        tokenize: Callable | None,
        augment_config: AugmentConfig,
        text_source: str = "filtered",
        image_cache=None,
    ):
        super().__init__()
        self.root = Path(root)
        self.plan, self.image_size, self.train, self.seed, self.rank = plan, image_size, train, seed, rank
        self.shuffle_buffer, self.text_mode, self.text_source = shuffle_buffer, text_mode, text_source
        self.tokenize, self.augment_config = tokenize, augment_config
        self.image_cache = image_cache  # models.caches.ImageCache: main process only (num_workers=0)

    def __iter__(self) -> Iterator[Batch | str]:  # a str: SKIPPED
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        plan, epoch = self.plan, self.plan.epoch
        if worker >= len(plan.worker_shards):  # more DataLoader workers than the plan was made for
            raise RuntimeError(f"worker {worker} is not in the epoch plan ({len(plan.worker_shards)} workers)")
        cache = self.image_cache if info is None else None
        samples: Iterator[dict] = self._samples(plan.worker_shards[worker], cache)
        if self.train and self.shuffle_buffer > 1:
            rng = random.Random(derive_seed(self.seed, "samples", epoch, self.rank, worker))
            samples = shuffle_buffer(samples, self.shuffle_buffer, rng)
        samples = with_sentence(samples, self.seed, epoch, self.text_mode, self.text_source)
        batches = group(samples, plan.worker_batches[worker])
        for index, raw in enumerate(batches):
            if index < plan.worker_skip[worker]:
                # resume: a placeholder, not decoded. It keeps this worker's turn in the
                # DataLoader's round-robin, so the batches after it come in their usual order.
                yield SKIPPED
                continue
            yield collate(
                raw,
                image_size=self.image_size,
                train=self.train,
                seed=self.seed,
                epoch=epoch,
                tokenize=self.tokenize,
                augment_config=self.augment_config,
            )

    def _samples(self, records: Sequence[ShardRecord], cache) -> Iterator[dict]:
        """The raw samples of ``records``, in order: each shard read from its tar, or from ``cache``
        (copies: later stages add keys to a sample) once a first read has put it there."""
        for record in records:
            cached = cache.get(record) if cache is not None else None
            if cached is not None:
                yield from (dict(sample) for sample in cached)
                continue
            kept = []
            for sample in _read_shard(str(self.root / record.path)):
                if cache is not None and not cache.full:
                    image = eval_transform(decode_image(_image_bytes(sample)), self.image_size)
                    sample = {k: v for k, v in sample.items() if k not in IMAGE_EXTENSIONS}
                    sample["image"] = image
                    kept.append(sample)
                yield dict(sample)
            if cache is not None and not cache.full:
                cache.put(record, kept)


def _read_shard(url: str) -> Iterator[dict]:
    import webdataset as wds

    return wds.tarfile_to_samples(handler=wds.reraise_exception)(iter([{"url": url}]))


def _drop_inherited_exit_hooks(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: forget the ``threading`` at-exit hooks the parent registered.

    A forked worker inherits its parent's ``threading._register_atexit`` callbacks, which
    ``multiprocessing`` runs when the worker ends (``threading._shutdown()``, after the worker
    loop, outside its error handling: an exception there ends the worker with exit code 1 and no
    traceback). They are meant to stop the parent's own background threads, which do not exist in
    the worker. Prefect's services (``APILogWorker``, ``EventsWorker``, ... of a flow run or a test
    harness) register one that, once Prefect's at-fork handler has reset the service, fails an
    assertion in a forked child: every worker of a loader made in such a process died with code 1,
    and the DataLoader raised "worker exited unexpectedly" when its SIGCHLD came before the
    worker was unregistered. Only the standard library's ``concurrent.futures`` hooks are kept:
    registered once at import, they are what stops an executor that dataset code starts in the
    worker (for the parent's executors they only send a wake-up and join stopped threads).
    """
    hooks = getattr(threading, "_threading_atexits", None)
    if hooks:
        hooks[:] = [
            hook
            for hook in hooks
            if getattr(getattr(hook, "func", hook), "__module__", "").startswith("concurrent.futures.")
        ]


class ShardLoader:
    """The batches of one epoch: a DataLoader over :class:`_EpochDataset`, cut to the plan's
    number of batches (equal across DDP ranks), with ``len()`` = batches still to come."""

    def __init__(self, dataset: _EpochDataset, plan: EpochPlan, num_workers: int, pin_memory: bool = False):
        self.dataset, self.plan, self.num_workers = dataset, plan, num_workers
        self.pin_memory = pin_memory

    def __len__(self) -> int:
        return self.plan.remaining

    def __iter__(self) -> Iterator[Batch]:
        if self.plan.remaining == 0:
            return
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=None,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=False,
            in_order=True,
            worker_init_fn=_drop_inherited_exit_hooks,
            # its own generator: the DataLoader's base seed (unused
            # here) is then not drawn from the global RNG, which
            # must stay the trainer's (dropout, exact resume)
            generator=torch.Generator().manual_seed(0),
        )
        count = 0
        for batch in loader:
            if isinstance(batch, str) and batch == SKIPPED:
                continue  # the first ``plan.skip`` items of the round-robin
            yield batch
            count += 1
            if count == self.plan.remaining:
                break  # DDP: ranks with more data stop with the smallest one


def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is not None and world_size is not None:
        return rank, world_size
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return (
            torch.distributed.get_rank() if rank is None else rank,
            torch.distributed.get_world_size() if world_size is None else world_size,
        )
    return rank or 0, world_size or 1


def make_loader(
    shards: str | os.PathLike,
    split: str,
    *,
    tokenizer=None,
    max_length: int = 77,
    image_size: int = 224,
    batch_size: int = 32,
    epoch: int = 0,
    seed: int = 0,
    train: bool = True,
    num_workers: int = 0,
    skip_batches: int = 0,
    shuffle_buffer: int = 1000,
    text_mode: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    tokenize: Callable[[list[str]], dict] | None = None,
    augment_config: AugmentConfig = AugmentConfig(),
    pin_memory: bool = False,
    records: Sequence[ShardRecord] | None = None,
    text_source: str = "filtered",
    text_tokens: bool = True,
    image_cache=None,
) -> ShardLoader:
    """The batches of ``epoch`` of ``split`` (the complete shards under the curation root ``shards``).

    ``train=True``: shards and samples shuffled by ``(seed, epoch)``, one kept sentence drawn per
    sample (``text_mode="draw"``), images augmented, a final batch of one merged or dropped, ranks
    cut to equal lengths. ``train=False``: shard order, all kept sentences joined
    (``text_mode="all"``; or ``"first"``), a plain resize, every sample exactly once per rank.
    ``skip_batches`` skips the first batches of the epoch without decoding them (exact resume).
    ``rank``/``world_size`` default to ``torch.distributed`` when it is initialised.
    ``text_source``: ``filtered`` (the kept sentences) or ``report`` (every sentence of the
    report, for a whole-report baseline); :data:`TEXT_SOURCES`.
    ``text_tokens`` False: batches carry no tokens (a trainer with a text cache looks texts up);
    ``image_cache``: a :class:`offclip.models.caches.ImageCache` the epochs share (used when
    ``num_workers`` is 0).
    ``records``: the shard set to read (a trainer lists it once per run, :func:`split_records`);
    default: the split's complete shards, listed now.
    Text is tokenised by ``tokenize(texts)`` or else by ``tokenizer`` with :func:`offclip.models.clip.tokenize`.
    """
    if not text_tokens:
        tokenize = None
    elif tokenize is None:
        if tokenizer is None:
            raise ValueError("make_loader needs a tokenizer (or a tokenize function)")
        tokenize = _hf_tokenize(tokenizer, max_length)
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if text_source not in TEXT_SOURCES:
        raise ValueError(f"unknown text source {text_source!r} ({'|'.join(TEXT_SOURCES)})")
    rank, world_size = _dist_rank_world(rank, world_size)
    records = split_records(shards, split) if records is None else list(records)
    plan = plan_epoch(
        records,
        epoch=epoch,
        seed=seed,
        batch_size=batch_size,
        shuffle=train,
        rank=rank,
        world_size=world_size,
        num_workers=num_workers,
        min_batch=2 if train else 1,
        equal_ranks=train,
        skip=skip_batches,
    )
    dataset = _EpochDataset(
        Path(shards),
        plan,
        image_size=image_size,
        train=train,
        seed=seed,
        rank=rank,
        shuffle_buffer=shuffle_buffer,
        text_mode=text_mode or ("draw" if train else "all"),
        tokenize=tokenize,
        augment_config=augment_config,
        text_source=text_source,
        image_cache=image_cache if num_workers == 0 else None,
    )
    return ShardLoader(dataset, plan, num_workers, pin_memory)

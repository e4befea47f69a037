"""What a training run computes once instead of at every step.

* :class:`TextFeatures` — with a frozen text tower (the ``demo`` config), a sentence's pooled
  text-tower output never changes during a run, yet the plain path runs the tower on every
  sentence of every batch. The run embeds each unique sentence of its shard set once, at the
  start (sorted, in fixed batches: the same shard set gives bit-identical features), and each step
  only applies the trainable projection. Runs of one process with the same text tower and the same
  sentence set (the seeds of one ``offclip compare`` arm) share the features.
* :class:`ImageCache` — the training images after decoding and resizing to the model's input
  size (the deterministic part of the augmentation), kept in memory from the first epoch on, when
  they fit the budget; later epochs read no tar and decode no PNG. Only in the main process
  (``num_workers=0``): a DataLoader worker's memory is gone at the end of its epoch.

Both give the same batches as the plain path: the image cache bit for bit, the text cache up to
float rounding (a sentence is encoded in another batch than at the step).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tarfile
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import cast

import torch

logger = logging.getLogger(__name__)

#: text feature sets kept per process (key: text tower, max length, sentence set)
_SHARED: OrderedDict[str, TextFeatures | TextHidden] = OrderedDict()
SHARED_SETS = 4


def shard_sentences(root: str | Path, records: Sequence, split: str, text_source: str) -> list[str]:
    """Every distinct sentence a run on ``records`` can show (``text_source`` as in
    :func:`offclip.models.data.kept_sentences`), sorted: read from the samples' ``.json`` (and
    ``.txt``) members, images skipped."""
    from .data import kept_sentences

    found: set[str] = set()
    for record in records:
        path = Path(root) / record.path
        members: dict[str, dict] = {}
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext in ("json", "txt"):
                    handle = tar.extractfile(member)
                    if handle is None:  # not a regular file: a shard holds none
                        raise ValueError(f"{path}: member {member.name} is not a regular file")
                    members.setdefault(key, {})[ext] = handle.read()
        for sample in members.values():
            found.update(kept_sentences(sample, text_source))
    return sorted(found)


def _tower_digest(model) -> str:
    h = hashlib.sha256()
    for name, tensor in sorted(model.text_model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class TextFeatures:
    """Pooled text-tower outputs of a fixed set of sentences, and their lookup by text."""

    def __init__(self, sentences: list[str], features: torch.Tensor):
        self.index = {s: i for i, s in enumerate(sentences)}
        self.features = features  # [U, H], float32, CPU

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, texts: Iterable[str]) -> torch.Tensor:
        try:
            rows = [self.index[t] for t in texts]
        except KeyError as exc:
            raise KeyError(f"sentence not in the run's text cache: {exc.args[0]!r}") from None
        return self.features[torch.tensor(rows, dtype=torch.long)]

    @classmethod
    def encode(
        cls, model, tokenizer, sentences: list[str], max_length: int, device: torch.device, batch_size: int = 128
    ) -> TextFeatures:
        """Run the text tower once over ``sentences`` (in their order, fixed batches)."""
        from .clip import tokenize

        # batches of sentences of similar length (little padding), in a fixed order: the same
        # sentences give the same features
        order = sorted(range(len(sentences)), key=lambda i: (len(sentences[i]), sentences[i]))
        features = torch.zeros((len(sentences), model.text_model.config.hidden_size))
        training = model.text_model.training
        model.text_model.eval()  # a frozen tower: no dropout
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    tokens = tokenize(tokenizer, [sentences[i] for i in rows], max_length)
                    features[rows] = (
                        model.text_features(tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
                        .float()
                        .cpu()
                    )
        finally:
            model.text_model.train(training)
        return cls(list(sentences), features)

    @classmethod
    def for_run(cls, model, tokenizer, sentences: list[str], max_length: int, device: torch.device) -> TextFeatures:
        """The features of ``sentences`` for this text tower: computed, or shared with an earlier
        run of this process that had the same tower and the same sentences."""
        key = "/".join(
            (_tower_digest(model), str(max_length), hashlib.sha256(json.dumps(sentences).encode()).hexdigest()[:16])
        )
        if key in _SHARED:
            _SHARED.move_to_end(key)
            logger.info("text cache: %d sentences shared with an earlier run", len(sentences))
            return cast(TextFeatures, _SHARED[key])  # a TextFeatures key: no "hidden/" prefix
        made = cls.encode(model, tokenizer, sentences, max_length, device)
        _SHARED[key] = made
        while len(_SHARED) > SHARED_SETS:
            _SHARED.popitem(last=False)
        logger.info("text cache: %d unique sentences embedded once", len(sentences))
        return made


class TextHidden:
    """The hidden states entering text encoder layer ``layer`` of a fixed set of sentences (a run
    that trains only the top layers of the text tower: ``text_trainable_layers``), and their lookup
    by text as a padded batch with its attention mask.

    The layers below ``layer`` (and the embeddings) are frozen, so these states never change
    during a run: each unique sentence goes through them once, and each step runs only the top
    layers. Stored unpadded, float32, on the CPU: ``4 * hidden_size * tokens`` bytes per sentence
    (MiniLM: 1.5 KiB per token, ~30 KiB for a 20-token sentence, ~300 MB for 10,000 sentences)."""

    def __init__(self, sentences: list[str], states: torch.Tensor, offsets: torch.Tensor, layer: int):
        self.index = {s: i for i, s in enumerate(sentences)}
        self.states = states  # [sum of tokens, H]
        self.offsets = offsets  # [U + 1]
        self.layer = int(layer)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def nbytes(self) -> int:
        return self.states.numel() * self.states.element_size()

    def lookup(self, texts: Iterable[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden [B, L, H] padded with zeros to the longest, attention mask [B, L])."""
        try:
            rows = [self.index[t] for t in texts]
        except KeyError as exc:
            raise KeyError(f"sentence not in the run's text cache: {exc.args[0]!r}") from None
        starts, ends = self.offsets[rows], self.offsets[[r + 1 for r in rows]]
        lengths = ends - starts
        longest = int(lengths.max())
        hidden = torch.zeros((len(rows), longest, self.states.shape[1]), dtype=self.states.dtype)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, (a, n) in enumerate(zip(starts.tolist(), lengths.tolist())):
            hidden[i, :n] = self.states[a : a + n]
            mask[i, :n] = 1
        return hidden, mask

    @classmethod
    def encode(
        cls,
        model,
        tokenizer,
        sentences: list[str],
        max_length: int,
        device: torch.device,
        layer: int,
        batch_size: int = 128,
    ) -> TextHidden:
        """Run the embeddings and encoder layers below ``layer`` once over ``sentences`` (eval mode)."""
        from .clip import tokenize

        order = sorted(range(len(sentences)), key=lambda i: (len(sentences[i]), sentences[i]))
        pieces: list = [None] * len(sentences)
        training = model.text_model.training
        model.text_model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    tokens = tokenize(tokenizer, [sentences[i] for i in rows], max_length)
                    hidden = (
                        model.text_hidden_states(
                            tokens["input_ids"].to(device), tokens["attention_mask"].to(device), layer
                        )
                        .float()
                        .cpu()
                    )
                    for j, i in enumerate(rows):
                        pieces[i] = hidden[j, : int(tokens["attention_mask"][j].sum())].clone()
        finally:
            model.text_model.train(training)
        lengths = torch.tensor([0] + [p.shape[0] for p in pieces], dtype=torch.long)
        hidden_size = model.text_model.config.hidden_size
        states = torch.cat(pieces) if pieces else torch.zeros((0, hidden_size))
        return cls(list(sentences), states, lengths.cumsum(0), layer)

    @classmethod
    def for_run(
        cls, model, tokenizer, sentences: list[str], max_length: int, device: torch.device, layer: int
    ) -> TextHidden:
        """The states of ``sentences`` entering ``layer``: computed, or shared with an earlier run of
        this process whose text tower had the same weights."""
        key = "/".join(
            (
                "hidden",
                str(layer),
                _tower_digest(model),
                str(max_length),
                hashlib.sha256(json.dumps(sentences).encode()).hexdigest()[:16],
            )
        )
        if key in _SHARED:
            _SHARED.move_to_end(key)
            logger.info("text cache: hidden states of %d sentences shared with an earlier run", len(sentences))
            return cast(TextHidden, _SHARED[key])  # a "hidden/" key
        made = cls.encode(model, tokenizer, sentences, max_length, device, layer)
        _SHARED[key] = made
        while len(_SHARED) > SHARED_SETS:
            _SHARED.popitem(last=False)
        logger.info(
            "text cache: hidden states entering layer %d of %d unique sentences computed once (%.1f MB)",
            layer,
            len(sentences),
            made.nbytes / 2**20,
        )
        return made


class ImageCache:
    """Training samples with their image decoded and brought to ``image_size`` (what
    :func:`offclip.models.data.eval_transform` gives; the augmentation starts from it), by shard.

    A shard is served from memory once all its samples are in; samples keep their tar order, so
    the batches are the same as when reading the tar. Nothing is stored past ``budget_bytes``."""

    def __init__(self, image_size: int, budget_bytes: int):
        self.image_size, self.budget = int(image_size), int(budget_bytes)
        self.shards: dict[str, list[dict]] = {}
        self.used = 0
        self.full = False

    def sample_bytes(self) -> int:
        return 4 * self.image_size * self.image_size + 2048  # float32 image + json, cls, key

    def fits(self, n_samples: int) -> bool:
        return n_samples * self.sample_bytes() <= self.budget

    def get(self, record) -> list[dict] | None:
        return self.shards.get(record.name)

    def put(self, record, samples: list[dict]) -> None:
        size = sum(4 * s["image"].numel() + len(s.get("json", b"")) + 64 for s in samples)
        if self.used + size > self.budget:
            if not self.full:
                logger.info("image cache full at %.0f MB: later shards are read from disk", self.used / 2**20)
            self.full = True
            return
        self.shards[record.name] = samples
        self.used += size

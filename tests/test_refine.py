"""OFF-CLIP as a plug-in (issue 18): small random checkpoints of each format offclip opens —
its own ``OffClipModel``, transformers' ``CLIPModel`` and ``VisionTextDualEncoderModel`` — saved
with their processors to a temporary directory, refined on real shards (the session's
``shards_out``), saved as what they were, reloaded with plain transformers, evaluated."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from offclip.cli import app
from offclip.models.adapters import ClipAdapter, load_adapter
from offclip.models.clip import _minilm_path, build_model, load_extra, save_model
from offclip.models.data import make_loader
from offclip.models.evaluate import evaluate
from offclip.models.losses import get_loss
from offclip.models.train import TrainConfig, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

FORMATS = ("offclip", "clip", "vision-text-dual-encoder")
#: each format at its own input size, so that a loader not following the checkpoint would fail
SIZES = {"offclip": 64, "clip": 32, "vision-text-dual-encoder": 48}
TINY = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def _tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_minilm_path()))  # the shipped MiniLM's BERT vocabulary


def make_checkpoint(kind: str, path) -> None:
    """A random tiny model of ``kind`` with its tokenizer and image processor, saved to ``path``."""
    from transformers import (CLIPConfig, CLIPImageProcessorPil, CLIPModel, CLIPProcessor, VisionTextDualEncoderModel,
                              VisionTextDualEncoderProcessor, ViTConfig, ViTImageProcessorPil, ViTModel)

    tokenizer, size = _tokenizer(), SIZES[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if kind == "offclip":
            model, _ = build_model({"vision_config": {"model_type": "vit", "patch_size": 16, "num_channels": 1, **TINY},
                                    "text_config": {"model_type": "bert", **TINY}, "image_size": size,
                                    "projection_dim": 16, "max_text_length": 32}, seed=0)
            save_model(model, tokenizer, path)
            return
        if kind == "clip":  # CheXzero-style: a CLIPModel, CLIP's mean/std, a centre crop
            text = {**TINY, "vocab_size": tokenizer.vocab_size, "max_position_embeddings": 64,
                    "eos_token_id": tokenizer.sep_token_id, "pad_token_id": tokenizer.pad_token_id,
                    "bos_token_id": tokenizer.cls_token_id}
            model = CLIPModel(CLIPConfig(text_config=text, vision_config={**TINY, "image_size": size, "patch_size": 8},
                                         projection_dim=16))
            processor = CLIPProcessor(image_processor=CLIPImageProcessorPil(
                size={"shortest_edge": size}, crop_size={"height": size, "width": size}), tokenizer=tokenizer)
        else:  # a ViT and the shipped MiniLM (with its pooler: a VTDE pools BERT's pooler_output)
            model = VisionTextDualEncoderModel.from_vision_text_pretrained(
                vision_model=ViTModel(ViTConfig(image_size=size, patch_size=16, **TINY)),
                text_model_name_or_path=str(_minilm_path()), projection_dim=16)
            processor = VisionTextDualEncoderProcessor(image_processor=ViTImageProcessorPil(
                size={"height": size, "width": size}, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]),
                tokenizer=tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("inits")
    for kind in FORMATS:
        make_checkpoint(kind, root / kind)
    return {kind: root / kind for kind in FORMATS}


def fixed_batch(adapter: ClipAdapter, shards):
    """Every training sample once, unaugmented, at the adapter's size: the batch the loss is measured on."""
    return next(iter(make_loader(shards, "train", tokenizer=adapter.tokenizer, max_length=adapter.max_text_length,
                                 image_size=adapter.image_size, batch_size=64, train=False)))


def fixed_loss(adapter: ClipAdapter, batch) -> float:
    with torch.no_grad():
        return float(get_loss("offclip")(adapter(batch.pixel_values, batch.input_ids, batch.attention_mask),
                                         batch.is_normal))


def refine(shards, init, out, **kwargs):
    settings = {"shards": shards, "out": out, "config": "tiny", "init": str(init), "batch_size": 32, "lr": 1e-3,
                "warmup_steps": 0, "max_steps": 4, **kwargs}
    return train(TrainConfig(**settings))


@pytest.fixture(scope="module")
def refined(checkpoints, shards_out, tmp_path_factory) -> dict:
    """Each format refined for 4 steps (batch = the 21 training pairs)."""
    root = tmp_path_factory.mktemp("refined")
    return {kind: (refine(shards_out, checkpoints[kind], root / kind), root / kind) for kind in FORMATS}


@pytest.mark.parametrize("kind", FORMATS)
def test_refining_changes_the_weights_and_lowers_the_loss(kind, checkpoints, refined, shards_out):
    result, run = refined[kind]
    assert result.steps == 4 and result.model_dir == run / "model"
    before, after = load_adapter(checkpoints[kind]), load_adapter(run / "model")
    assert after.kind == kind  # saved as what was loaded
    start, end = before.model.state_dict(), after.model.state_dict()
    assert start.keys() == end.keys()
    for tower in ("text_model.", "vision_model."):
        moved = [k for k in start if k.startswith(tower) and start[k].ndim >= 2 and not torch.equal(start[k], end[k])]
        assert moved, f"{kind}: no {tower} weight changed"
    batch = fixed_batch(before, shards_out)
    assert len(batch) == 21 and batch.pixel_values.shape[-1] == SIZES[kind]
    assert fixed_loss(after, batch) < fixed_loss(before, batch) - 0.05

    # offclip's metadata in the side file and the model card, whatever the format
    meta = load_extra(run / "model")["offclip_train"]
    assert meta["init"] == {"path": str(checkpoints[kind]), "format": kind}
    assert meta["loss"] == "offclip" and meta["seed"] == 0 and meta["shards"]["classifier_versions"]
    card = (run / "model" / "README.md").read_text()
    for shard in meta["shards"]["shards"]:
        assert shard["sha256"] in card
    assert "refined from" in card and meta["shards"]["classifier_versions"][0] in card


@pytest.mark.parametrize("kind", ["clip", "vision-text-dual-encoder"])
def test_the_refined_model_loads_with_plain_transformers(kind, checkpoints, refined):
    """What transformers alone loads from the saved directory embeds exactly as the trained
    weights (the run's last checkpoint) did before saving; its processor comes back too."""
    from transformers import AutoProcessor, AutoTokenizer, CLIPModel, VisionTextDualEncoderModel

    model_class = CLIPModel if kind == "clip" else VisionTextDualEncoderModel
    _, run = refined[kind]
    plain = model_class.from_pretrained(str(run / "model")).eval()
    trained = model_class.from_pretrained(str(checkpoints[kind])).eval()
    trained.load_state_dict(torch.load(run / "checkpoint" / "last.pt", weights_only=True)["model"])
    tokenizer = AutoTokenizer.from_pretrained(str(run / "model"))
    text = tokenizer(["There is a small left pleural effusion.", "No acute findings."], padding=True,
                     return_tensors="pt")
    pixels = torch.rand(2, 3, SIZES[kind], SIZES[kind], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(plain.get_image_features(pixel_values=pixels).pooler_output,
                           trained.get_image_features(pixel_values=pixels).pooler_output)
        assert torch.equal(plain.get_text_features(**text).pooler_output,
                           trained.get_text_features(**text).pooler_output)
    processor = AutoProcessor.from_pretrained(str(run / "model"))
    assert tuple(processor.image_processor.image_mean) == load_adapter(run / "model").image.mean


@pytest.mark.parametrize("kind", FORMATS)
def test_grayscale_and_resolution_follow_the_checkpoint(kind, checkpoints, tmp_path):
    """The adapter reads size, channels, mean and std from the checkpoint: a grayscale radiograph
    through offclip's loader and the adapter embeds as the checkpoint's own processor + model do."""
    adapter = load_adapter(checkpoints[kind])
    size = SIZES[kind]
    assert adapter.image_size == size
    gray = np.random.default_rng(0).integers(0, 256, (size, size), dtype=np.uint8)
    ours = torch.from_numpy(gray.astype(np.float32) / 255.0)[None, None]  # what the loaders give: [1, 1, S, S]
    with torch.no_grad():
        embedded = adapter.encode_image(ours)
        if kind == "offclip":  # its own model normalises, from its own config
            assert adapter.image.channels == 1 and adapter.image.mean == (adapter.model.config.image_mean,)
            assert torch.equal(embedded, adapter.model.encode_image(ours))
            return
        from transformers import AutoProcessor

        processor = AutoProcessor.from_pretrained(str(checkpoints[kind]))
        theirs = processor(images=Image.fromarray(gray).convert("RGB"), return_tensors="pt")["pixel_values"]
        assert theirs.shape == (1, 3, size, size) and adapter.image.channels == 3
        assert adapter.image.mean == tuple(processor.image_processor.image_mean)
        reference = torch.nn.functional.normalize(adapter.model.get_image_features(pixel_values=theirs).pooler_output,
                                                  dim=-1)
    assert torch.allclose(embedded, reference, atol=1e-5)
    with pytest.raises(ValueError, match=f"must be {size}x{size}"):
        adapter.encode_image(torch.rand(1, 1, size + 16, size + 16))


@pytest.mark.parametrize("kind", FORMATS)
def test_evaluation_runs_on_each_format(kind, refined, small_world, tmp_path):
    _, run = refined[kind]
    result = evaluate(run / "model", "vindr-cxr", small_world[0] / "eval" / "vindr-cxr", out=tmp_path)
    summary = result.summary
    assert summary["n_images"] > 0 and 0.0 <= summary["normal_auc"] <= 1.0
    assert summary["pointing_trials"] > 0  # every tiny tower here is a ViT: a patch grid
    assert result.loss == "offclip" and result.seed == 0
    assert (tmp_path / "vindr-cxr.json").is_file()


def test_same_seed_same_refinement(checkpoints, refined, shards_out, tmp_path):
    again = refine(shards_out, checkpoints["clip"], tmp_path / "again")
    first = torch.load(refined["clip"][1] / "checkpoint" / "last.pt", weights_only=True)["model"]
    second = torch.load(tmp_path / "again" / "checkpoint" / "last.pt", weights_only=True)["model"]
    assert again.final_loss == refined["clip"][0].final_loss
    assert all(torch.equal(first[k], second[k]) for k in first)
    # resuming with another starting checkpoint is refused, naming it
    with pytest.raises(ValueError, match="other settings.*init"):
        refine(shards_out, checkpoints["vision-text-dual-encoder"], tmp_path / "again", max_steps=5)


def test_directories_that_are_no_supported_model_are_clear_errors(checkpoints, shards_out, tmp_path):
    from transformers import BertConfig, BertModel

    with pytest.raises(ValueError, match=r"no config\.json \(found: nothing\).*clip \(CLIPModel"):
        load_adapter(tmp_path)
    BertModel(BertConfig(**TINY, vocab_size=100)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match=r"model_type 'bert' \(BertModel\).*vision-text-dual-encoder"):
        load_adapter(tmp_path / "bert")
    bare = tmp_path / "clip-without-processor"
    shutil.copytree(checkpoints["clip"], bare)
    (bare / "processor_config.json").unlink()
    with pytest.raises(ValueError, match="no image processor config"):
        load_adapter(bare)
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_adapter(tmp_path / "nothing")
    with pytest.raises(ValueError, match="text_model and vision_model cannot be given"):
        refine(shards_out, checkpoints["clip"], tmp_path / "r", text_model="minilm")
    cli = CliRunner().invoke(app, ["train", str(shards_out), "--init", str(tmp_path / "bert")])
    assert cli.exit_code == 2 and "model_type 'bert'" in cli.output


def test_compare_refines_one_checkpoint(checkpoints, shards_out, small_world, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(shards_out, shards)
    result = CliRunner().invoke(app, ["compare", str(shards), str(small_world[0] / "eval" / "vindr-cxr"),
                                      "--init", str(checkpoints["clip"]), "--arms", "offclip/filtered",
                                      "--seeds", "0", "--batch-size", "8", "--max-steps", "2", "--n-boot", "100"])
    assert result.exit_code == 0, result.output
    out = shards / "compare-refine-clip"
    saved = json.loads((out / "compare.json").read_text())
    assert saved["config"]["init"] == str(checkpoints["clip"])
    assert [r["arm"] for r in saved["runs"]] == ["infonce/report", "offclip/filtered"]
    for arm in ("infonce-report", "offclip-filtered"):
        model_dir = out / f"{arm}-seed0" / "model"
        assert json.loads((model_dir / "config.json").read_text())["model_type"] == "clip"
        assert load_extra(model_dir)["offclip_train"]["init"]["format"] == "clip"
    assert f"refining `{checkpoints['clip']}`" in (out / "compare.md").read_text()
    assert {d["arm"] for d in saved["differences"]} == {"offclip/filtered"}


def test_train_deployment_takes_init(tmp_path):
    from prefect.utilities.callables import parameter_schema

    from offclip.flows.train import default_run_dir, train as train_flow

    assert "init" in parameter_schema(train_flow.fn).properties
    shards = tmp_path / "shards"
    (shards / "shards" / "train").mkdir(parents=True)
    assert default_run_dir(shards, "tiny", "offclip", 0, init="/models/chexzero").name.startswith(
        "tiny-refine-chexzero-offclip-seed0-")

"""Issue 28 point 1: a text tower whose top layers learn (``train.text_trainable_layers``, the
``demo-text4`` config), on hidden states of the frozen lower layers cached once per sentence."""

from __future__ import annotations

import json

import pytest
import torch

from offclip.models.caches import TextHidden, shard_sentences
from offclip.models.clip import build_model, load_model, load_model_config, tokenize
from offclip.models.data import split_records
from offclip.models.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(tmp_path, name: str, **train_keys) -> str:
    spec = load_model_config("demo")
    spec["train"].update(train_keys)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return str(path)


def _distinct_cosine(model_dir, sentences: list[str]) -> float:
    """Mean pairwise cosine of the text embeddings of distinct sentences (off-diagonal)."""
    model, tokenizer = load_model(model_dir)
    with torch.no_grad():
        emb = model.encode_text(**tokenize(tokenizer, sentences, model.config.max_text_length))
    sims = emb @ emb.t()
    n = len(sentences)
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def test_cached_top_layers_give_the_full_forward():
    model, tokenizer = build_model("demo", seed=0)
    model.eval()
    sentences = ["No pneumothorax.", "There is a large left pleural effusion with basal atelectasis.",
                 "Heart size is normal.", "There is no finding"]
    cache = TextHidden.encode(model, tokenizer, sentences, 64, torch.device("cpu"), layer=2)
    hidden, mask = cache.lookup(list(reversed(sentences)))
    with torch.no_grad():
        cached = model.project_text(model.text_features_from_hidden(hidden, mask, 2))
        full = model.encode_text(**tokenize(tokenizer, list(reversed(sentences)), 64))
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)
    assert cache.nbytes == 4 * 384 * int(cache.offsets[-1])


def test_top_layers_train_and_lower_layers_do_not(shards_out, tmp_path):
    out = tmp_path / "run"
    result = train(TrainConfig(shards=shards_out, out=out, config="demo-text4", batch_size=8, max_steps=3,
                               image_cache_mb=0))
    assert result.hyper["text_trainable_layers"] == 4 and result.hyper["freeze_text"] is False
    assert result.hyper["text_lr"] == 2e-5 and result.hyper["text_warmup_steps"] == 100
    initial = build_model("demo-text4", seed=0)[0].state_dict()
    trained = torch.load(out / "checkpoint" / "last.pt", weights_only=True)["model"]
    frozen = [k for k in trained if k.startswith(("text_model.embeddings.", "text_model.encoder.layer.0.",
                                                   "text_model.encoder.layer.1."))]
    assert frozen and all(torch.equal(trained[k], initial[k]) for k in frozen)
    for i in (2, 3, 4, 5):
        top = [k for k in trained if k.startswith(f"text_model.encoder.layer.{i}.") and trained[k].ndim >= 2]
        assert top and all(not torch.equal(trained[k], initial[k]) for k in top), i
    assert not torch.equal(trained["text_projection.weight"], initial["text_projection.weight"])


def test_cached_and_plain_paths_give_the_same_loss(shards_out, tmp_path):
    losses = {}
    for cached in (True, False):
        out = tmp_path / f"run-{cached}"
        train(TrainConfig(shards=shards_out, out=out, config="demo-text4", batch_size=8, max_steps=2,
                          text_cache=cached, image_cache_mb=0))
        losses[cached] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)


def test_text_warmup_is_its_own(tmp_path, shards_out):
    out = tmp_path / "run"
    train(TrainConfig(shards=shards_out, out=out, config=_config(tmp_path, "w", text_trainable_layers=2,
                                                                 text_lr=1e-4, text_warmup_steps=4,
                                                                 warmup_steps=2, freeze_text=True),
                      batch_size=8, max_steps=2, image_cache_mb=0))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == pytest.approx([1e-4 / 4, 2e-4 / 4])
    assert rows[0]["vision_lr"] == pytest.approx(1e-3 / 2)


#: mean pairwise cosine of distinct sentences' text embeddings after the short run below (40 steps
#: of 8 pairs on the test shards). Measured: top 4 layers at text_lr 2e-5 -> 0.488; the whole
#: MiniLM trainable at lr 1e-4 (the known failure, on its way to every embedding identical) -> 0.805
COLLAPSE_BOUND = 0.65


def test_top_layers_do_not_collapse(shards_out, tmp_path):
    records = split_records(shards_out, "train")
    sentences = shard_sentences(shards_out, records, "train", "filtered")
    figures = {}
    for name, keys in (("top4", {"text_trainable_layers": 4, "text_lr": 2e-5, "text_warmup_steps": 10}),
                       ("full-1e-4", {"freeze_text": False, "lr": 1e-4, "warmup_steps": 10})):
        out = tmp_path / name
        train(TrainConfig(shards=shards_out, out=out, config=_config(tmp_path, name, **keys), batch_size=8,
                          epochs=40, max_steps=40, image_cache_mb=0, checkpoint_every=10**6))
        figures[name] = _distinct_cosine(out / "model", sentences)
    print("mean pairwise cosine of distinct sentences:", figures)
    assert figures["top4"] < COLLAPSE_BOUND < figures["full-1e-4"]


def test_packed_top_layers_match_the_padded_layers_and_their_gradients():
    """The top layers run on the real tokens only (a BERT-family tower): the same features and the
    same gradients as the tower's own layers on the padded batch (eval mode: no dropout)."""
    from offclip.models.clip import packable_bert

    model, tokenizer = build_model("demo", seed=0)
    model.eval()
    assert packable_bert(model.text_model)
    sentences = ["No pneumothorax.", "There is a large left pleural effusion with basal atelectasis and a small "
                 "right apical pneumothorax.", "Normal heart.", "Clear lungs bilaterally without focal consolidation."]
    cache = TextHidden.encode(model, tokenizer, sentences, 64, torch.device("cpu"), layer=2)
    hidden, mask = cache.lookup(sentences)
    assert (mask == 0).any()  # the batch is padded: packing has something to leave out

    def run(padded: bool):
        model.zero_grad()
        if padded:
            out = model._text_layers(hidden, mask, 2)
            weights = mask.unsqueeze(-1).float()
            features = (out * weights).sum(1) / weights.sum(1)
        else:
            features = model.text_features_from_hidden(hidden, mask, 2)
        (features * torch.linspace(-1, 1, features.shape[1])).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.text_model.named_parameters() if p.grad is not None}
        return features.detach(), grads

    packed, packed_grads = run(padded=False)
    padded, padded_grads = run(padded=True)
    torch.testing.assert_close(packed, padded, atol=1e-5, rtol=1e-4)
    assert set(packed_grads) == set(padded_grads) and any(k.startswith("encoder.layer.5.") for k in packed_grads)
    for name in padded_grads:
        torch.testing.assert_close(packed_grads[name], padded_grads[name], atol=1e-5, rtol=1e-3, msg=name)

    # dropout follows each layer's own mode, not the model's: layers in eval mode draw nothing
    model.train()
    for layer in model.text_model.encoder.layer[2:]:
        layer.eval()
    with torch.no_grad():
        first, second = (model.text_features_from_hidden(hidden, mask, 2) for _ in range(2))
        torch.testing.assert_close(first, second, atol=0, rtol=0)
        model.text_model.encoder.layer[5].train()
        first, second = (model.text_features_from_hidden(hidden, mask, 2) for _ in range(2))
    assert not torch.allclose(first, second)


def test_a_tower_packing_cannot_compute_runs_its_own_layers():
    """Relative positions (or any tower not built of BertLayer's parts): the padded layers."""
    from offclip.models.clip import packable_bert

    model, _ = build_model("demo", seed=0)
    model.text_model.config.position_embedding_type = "relative_key"
    assert not packable_bert(model.text_model)
    assert not packable_bert(torch.nn.Linear(2, 2))


def test_packed_layers_under_cpu_autocast_stay_close_to_float32():
    """``amp=bf16`` on the CPU: the top layers' matrix products in bf16, the attention in float32;
    features and the gradient reaching the cached states within bf16's precision of float32's."""
    model, tokenizer = build_model("demo", seed=0)
    model.eval()
    sentences = ["No pneumothorax.", "There is a large left pleural effusion with basal atelectasis.",
                 "Heart size is normal.", "Clear lungs bilaterally without focal consolidation."]
    hidden, mask = TextHidden.encode(model, tokenizer, sentences, 64, torch.device("cpu"), layer=2).lookup(sentences)

    def run(bf16: bool):
        states = hidden.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            features = model.text_features_from_hidden(states, mask, 2)
        features.float().sum().backward()
        return features.detach().float(), states.grad

    full, full_grad = run(bf16=False)
    low, low_grad = run(bf16=True)
    assert not torch.equal(low, full)  # bf16 did run
    torch.testing.assert_close(low, full, atol=0.05, rtol=0.05)
    assert torch.isfinite(low_grad).all()
    cosine = torch.nn.functional.cosine_similarity(low_grad.flatten(), full_grad.flatten(), dim=0)
    assert cosine > 0.99, cosine


def test_amp_bf16_trains_on_the_cpu(shards_out, tmp_path):
    """``amp=bf16`` is CPU autocast (it used to be ignored there): the same run's losses differ from
    float32's by bf16 rounding only; ``auto`` stays float32 on the CPU; fp16 is ignored there."""
    from offclip.models.train_config import _amp_dtype

    cpu = torch.device("cpu")
    assert _amp_dtype("bf16", cpu) is torch.bfloat16
    assert _amp_dtype("auto", cpu) is None and _amp_dtype("fp16", cpu) is None and _amp_dtype("off", cpu) is None
    losses = {}
    for amp in ("off", "bf16"):
        out = tmp_path / amp
        train(TrainConfig(shards=shards_out, out=out, config="demo-text4", batch_size=8, max_steps=3, amp=amp,
                          image_cache_mb=0))
        assert json.loads((out / "train.json").read_text())["train_config"]["amp"] == amp
        losses[amp] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert losses["bf16"] != losses["off"]
    assert losses["bf16"] == pytest.approx(losses["off"], rel=0.02)

"""The trainer on real shards (the session's `shards_out`) with the tiny config: a smoke run,
exact resume, determinism, the loss switch, clear errors. Runs write only into tmp_path."""

from __future__ import annotations

import json
import logging

import pytest
import torch

from offclip.models.clip import build_model, load_extra, load_model
from offclip.models.data import make_loader
from offclip.models.train import TrainConfig, train
from offclip.pipeline.shards import ShardError, complete_shards


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def config(shards_out, out, **kwargs) -> TrainConfig:
    return TrainConfig(**{"shards": shards_out, "out": out, "config": "tiny", "batch_size": 8, **kwargs})


def weights(run) -> dict[str, torch.Tensor]:
    """The trained parameters (the state_dict in the run's checkpoint)."""
    return torch.load(run / "checkpoint" / "last.pt", weights_only=True)["model"]


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def smoke(shards_out, tmp_path_factory):
    """Two steps from scratch (seed 0), with the metrics passed to on_step."""
    out = tmp_path_factory.mktemp("smoke") / "run"
    seen = []
    result = train(config(shards_out, out, max_steps=2), on_step=seen.append)
    return result, out, seen


def test_two_step_smoke_run(smoke, shards_out):
    result, out, seen = smoke
    assert result.steps == 2 and result.resumed_from == 0 and result.total_steps == 2
    assert torch.isfinite(torch.tensor(result.final_loss))
    assert result.images_per_second > 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2]
    for row in lines:
        for key in ("epoch", "loss", "lr", "logit_scale", "images_per_second", "n_normal", "grad_norm"):
            assert key in row
        assert row["batch_size"] == 8 and torch.isfinite(torch.tensor(row["loss"]))
    assert lines[0]["lr"] < lines[1]["lr"]  # warmup
    assert [s["step"] for s in seen] == [1, 2] and seen[-1]["total_steps"] == 2
    assert (out / "training_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "train.json").read_text())["steps"] == 2

    # both towers moved away from the seed-0 initialisation
    initial = build_model("tiny", seed=0)[0].state_dict()
    trained = weights(out)
    for tower in ("text_model.", "vision_model."):
        matrices = [k for k in trained if k.startswith(tower) and trained[k].ndim >= 2]
        assert matrices and all(not torch.equal(trained[k], initial[k]) for k in matrices), tower

    # the training metadata names the shards it was trained on
    extra = load_extra(out / "model")["offclip_train"]
    assert extra["loss"] == "offclip" and extra["seed"] == 0 and extra["steps"] == 2 and extra["config"] == "tiny"
    assert [s["sha256"] for s in extra["shards"]["shards"]] == [r.sha256 for r in complete_shards(shards_out, "train")]
    assert extra["shards"]["classifier_versions"]


def test_saved_model_gives_the_trained_embeddings(smoke, shards_out):
    _, out, _ = smoke
    loaded, tokenizer = load_model(out / "model")
    in_memory, _ = build_model("tiny", seed=0)
    in_memory.load_state_dict(weights(out))
    loaded.eval(), in_memory.eval()
    batch = next(iter(make_loader(shards_out, "validate", tokenizer=tokenizer, max_length=64, image_size=96,
                                  batch_size=4, train=False)))
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(batch.pixel_values), in_memory.encode_image(batch.pixel_values))
        assert torch.equal(loaded.encode_text(batch.input_ids, batch.attention_mask),
                           in_memory.encode_text(batch.input_ids, batch.attention_mask))


def test_resume_is_exact_and_runs_are_deterministic(smoke, shards_out, tmp_path):
    """4 steps in one go (crossing an epoch boundary: 21 samples = batches of 8, 8, 5) equal 2
    steps, a stop, and a resume to 4; and a second 2-step run equals the smoke run."""
    straight = train(config(shards_out, tmp_path / "straight", max_steps=4))
    assert straight.steps == 4 and straight.epochs == 1

    stopped = train(config(shards_out, tmp_path / "resumed", max_steps=2))
    assert_same_weights(weights(tmp_path / "resumed"), weights(smoke[1]))  # deterministic
    resumed = train(config(shards_out, tmp_path / "resumed", max_steps=4))
    assert stopped.steps == 2 and resumed.resumed_from == 2 and resumed.steps == 4
    assert_same_weights(weights(tmp_path / "resumed"), weights(tmp_path / "straight"))

    rows = {name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
            for name in ("straight", "resumed")}
    assert [r["step"] for r in rows["resumed"]] == [1, 2, 3, 4]
    assert [(r["loss"], r["lr"], r["epoch"]) for r in rows["resumed"]] == [
        (r["loss"], r["lr"], r["epoch"]) for r in rows["straight"]]

    # a finished run is found finished: nothing trained, the same model
    again = train(config(shards_out, tmp_path / "resumed", max_steps=4))
    assert again.steps == 4 and again.resumed_from == 4
    assert_same_weights(weights(tmp_path / "resumed"), weights(tmp_path / "straight"))
    # resuming with other settings is refused, naming them
    with pytest.raises(ValueError, match="other settings.*loss: 'offclip' -> 'infonce'"):
        train(config(shards_out, tmp_path / "resumed", loss="infonce", max_steps=5))


def test_offclip_and_infonce_differ_on_batches_with_normal_pairs(shards_out, tmp_path, caplog):
    """With batch 32 > the 21 train samples, each step is the whole split: one batch with all
    its normal pairs (the trainer warns about the batch size)."""
    runs = {}
    for loss in ("offclip", "infonce"):
        with caplog.at_level(logging.WARNING, logger="offclip.models.train"):
            runs[loss] = train(TrainConfig(shards=shards_out, out=tmp_path / loss, config="tiny", loss=loss,
                                           batch_size=32, max_steps=1))
        row = json.loads((tmp_path / loss / "metrics.jsonl").read_text())
        assert row["n_normal"] >= 2 and row["batch_size"] == 21
    assert "exceeds" in caplog.text
    assert runs["offclip"].final_loss != runs["infonce"].final_loss
    a, b = weights(tmp_path / "offclip"), weights(tmp_path / "infonce")
    assert any(not torch.equal(a[k], b[k]) for k in a)


def test_bad_inputs_are_clear_errors(shards_out, tmp_path):
    with pytest.raises(ValueError, match="unknown loss 'clip'.*infonce, offclip"):
        train(config(shards_out, tmp_path / "r", loss="clip"))
    with pytest.raises(ShardError, match="no complete shards for split 'train'"):
        train(config(tmp_path / "nothing", tmp_path / "r"))
    with pytest.raises(ShardError, match="no complete shards for split 'nosuch'"):
        train(config(shards_out, tmp_path / "r", split="nosuch"))
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        train(config(shards_out, tmp_path / "r", schedule="linear"))
    with pytest.raises(ValueError, match="batch_size must be >= 2"):
        train(config(shards_out, tmp_path / "r", batch_size=1))
    with pytest.raises(ValueError, match="unknown amp mode"):
        train(config(shards_out, tmp_path / "r", amp="fp8"))
    with pytest.raises(ValueError, match="unknown model config 'huge'"):
        train(config(shards_out, tmp_path / "r", config="huge"))
    assert not (tmp_path / "r").exists()


def test_torchrun_ddp_on_cpu(shards_out, tmp_path):
    """Two CPU processes (gloo) through the command line torchrun launches: each rank reads its
    own shards, rank 0 writes the run; the logged batch is both ranks' together."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "offclip.models.train", "--shards", str(shards_out), "--run-dir", str(out), "--config", "tiny",
         "--max-steps", "2", "--batch-size", "4"],
        env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["batch_size"] == 8 for r in rows)
    assert load_extra(out / "model")["offclip_train"]["world_size"] == 2
    assert len(torch.load(out / "checkpoint" / "last.pt", weights_only=True)["rng"]) == 2  # per-rank RNG


def test_schedule_warmup_cosine_and_plateau():
    from offclip.models.train import Schedule

    def run(kind: str, epoch_losses: list[float]) -> list[float]:
        """The lr of each step: epochs of 4 steps, warmup 4 steps."""
        weight = torch.nn.Parameter(torch.zeros(2))
        optimizer = torch.optim.AdamW([weight], lr=1.0)
        schedule = Schedule(optimizer, kind, warmup_steps=4, total_steps=4 * len(epoch_losses))
        lrs = []
        for loss in epoch_losses:
            for _ in range(4):
                lrs.append(optimizer.param_groups[0]["lr"])
                optimizer.step()
                schedule.step_batch()
            schedule.step_epoch(loss)
        return lrs

    cosine = run("cosine", [1.0, 1.0, 1.0])
    assert cosine[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warmup
    assert all(a > b for a, b in zip(cosine[4:], cosine[5:])) and cosine[-1] < 0.1  # decays towards 0
    # no improvement for more than `patience` (1) epochs after the best: the lr is halved
    plateau = run("plateau", [1.0, 1.0, 1.0, 1.0])
    assert plateau[:4] == [0.25, 0.5, 0.75, 1.0] and plateau[4:12] == [1.0] * 8 and plateau[12:] == [0.5] * 4
    assert run("plateau", [4.0, 3.0, 2.0, 1.0])[4:] == [1.0] * 12  # improving: no cut


def test_param_groups_split_towers_and_decay():
    from offclip.models.train import param_groups

    model, _ = build_model("tiny", seed=0)
    groups = {g["name"]: g for g in param_groups(model, {"lr": 1e-4, "vision_lr": 5e-4, "weight_decay": 0.1})}
    assert sorted(groups) == ["text", "text_no_decay", "vision", "vision_no_decay"]
    assert groups["text"]["lr"] == 1e-4 and groups["vision"]["lr"] == 5e-4
    assert groups["text_no_decay"]["weight_decay"] == groups["vision_no_decay"]["weight_decay"] == 0.0
    no_decay = {id(p) for g in ("text_no_decay", "vision_no_decay") for p in groups[g]["params"]}
    assert id(model.logit_scale) in no_decay
    for name, param in model.named_parameters():
        if "LayerNorm" in name or "layernorm" in name or name.endswith("bias"):
            assert id(param) in no_decay, name
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))


def test_frozen_text_tower_stays_at_its_pretrained_weights(shards_out, tmp_path):
    """A config with "freeze_text": true trains the vision tower and both projections only."""
    from offclip.models.clip import load_model_config

    spec = load_model_config("tiny")
    spec["train"]["freeze_text"] = True
    path = tmp_path / "tiny-frozen.json"
    path.write_text(json.dumps(spec))
    result = train(config(shards_out, tmp_path / "run", config=str(path), max_steps=2))
    assert result.hyper["freeze_text"] is True
    initial = build_model("tiny", seed=0)[0].state_dict()
    trained = weights(tmp_path / "run")
    text = [k for k in trained if k.startswith("text_model.")]
    assert text and all(torch.equal(trained[k], initial[k]) for k in text)
    for prefix in ("vision_model.", "visual_projection.", "text_projection."):
        moved = [k for k in trained if k.startswith(prefix) and trained[k].ndim >= 2]
        assert moved and all(not torch.equal(trained[k], initial[k]) for k in moved), prefix


def _add_shard(shards, name: str) -> None:
    """A new complete shard in the train split, as an incremental build would add it (a copy of
    the first one under a new name, with its record)."""
    import shutil

    directory = shards / "shards" / "train"
    first = complete_shards(shards, "train")[0]
    shutil.copy(directory / first.name, directory / name)
    record = {**first.__dict__, "name": name}
    (directory / "_complete" / f"{name}.json").write_text(json.dumps(record, sort_keys=True) + "\n")


def test_a_run_keeps_its_shard_set_and_refuses_another_on_resume(shards_out, tmp_path):
    """The shard set is listed once, at the start: a shard added by a build during the run (here
    after step 1, before epoch 1 starts at step 4) is not read, and the checkpoint and the model
    record the set the run trained on; resuming on a changed set is refused, naming the change,
    unless allowed."""
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(shards_out, shards)
    original = [(r.name, r.sha256) for r in complete_shards(shards, "train")]

    def add_during_the_run(metrics: dict) -> None:
        if metrics["step"] == 1:
            _add_shard(shards, "train-000090.tar")

    train(config(shards, tmp_path / "run", max_steps=4), on_step=add_during_the_run)
    assert len(complete_shards(shards, "train")) == len(original) + 1  # the build did add it
    undisturbed = train(config(shards_out, tmp_path / "undisturbed", max_steps=4))
    assert undisturbed.steps == 4
    assert_same_weights(weights(tmp_path / "run"), weights(tmp_path / "undisturbed"))  # same batches
    extra = load_extra(tmp_path / "run" / "model")["offclip_train"]
    assert [(s["name"], s["sha256"]) for s in extra["shards"]["shards"]] == original
    ckpt = torch.load(tmp_path / "run" / "checkpoint" / "last.pt", weights_only=True)
    assert [(s["name"], s["sha256"]) for s in ckpt["shards"]] == original

    with pytest.raises(ValueError, match=r"shard set .* changed .*added: train-000090\.tar.*--allow-shard-change"):
        train(config(shards, tmp_path / "run", max_steps=5))
    resumed = train(config(shards, tmp_path / "run", max_steps=5, allow_shard_change=True))
    assert resumed.resumed_from == 4 and resumed.steps == 5
    extra = load_extra(tmp_path / "run" / "model")["offclip_train"]
    assert "train-000090.tar" in [s["name"] for s in extra["shards"]["shards"]]


def test_text_source_from_the_run_or_the_model_config(shards_out, tmp_path):
    from offclip.models.clip import load_model_config
    from offclip.models.train import resolve_hyper

    tiny = load_model_config("tiny")
    assert resolve_hyper(config(shards_out, tmp_path), tiny)["text_source"] == "filtered"  # the default
    as_config = {**tiny, "train": {**tiny["train"], "text_source": "report"}}
    assert resolve_hyper(config(shards_out, tmp_path), as_config)["text_source"] == "report"
    assert resolve_hyper(config(shards_out, tmp_path, text_source="filtered"), as_config)["text_source"] == "filtered"
    with pytest.raises(ValueError, match="unknown text_source 'all'"):
        resolve_hyper(config(shards_out, tmp_path, text_source="all"), tiny)
    result = train(config(shards_out, tmp_path / "report", max_steps=1, text_source="report"))
    assert load_extra(result.model_dir)["offclip_train"]["text_source"] == "report"
    # another text source is another run: resuming it with the other one is refused
    with pytest.raises(ValueError, match="text_source: 'report' -> 'filtered'"):
        train(config(shards_out, tmp_path / "report", max_steps=2, text_source="filtered"))


def test_text_cache_gives_the_loss_of_the_plain_path(shards_out, tmp_path):
    """With a frozen text tower (the demo config) each unique sentence is embedded once; a step
    on the cached features has the loss and the update of a step that runs the tower."""
    runs = {}
    for cached in (True, False):
        out = tmp_path / f"text-cache-{cached}"
        train(config(shards_out, out, config="demo", max_steps=2, text_cache=cached, image_cache_mb=0))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[cached] = ([r["loss"] for r in rows], weights(out))
    assert runs[True][0] == pytest.approx(runs[False][0], rel=1e-5, abs=1e-6)
    for key in runs[True][1]:
        torch.testing.assert_close(runs[True][1][key], runs[False][1][key], rtol=1e-4, atol=1e-5)


def test_image_cache_reads_each_shard_once_and_changes_nothing(shards_out, tmp_path, monkeypatch):
    """Two epochs (3 batches each): with the image cache the second epoch reads no tar, and the
    run is bit-identical to one that reads and decodes every epoch."""
    from offclip.models import data

    reads = []
    real = data._read_shard
    monkeypatch.setattr(data, "_read_shard", lambda url: reads.append(url) or real(url))
    n_shards = len(complete_shards(shards_out, "train"))
    for mb in (512, 0):
        reads.clear()
        train(config(shards_out, tmp_path / f"cache-{mb}", config="demo", max_steps=6, image_cache_mb=mb))
        assert len(reads) == (n_shards if mb else 2 * n_shards)
    assert_same_weights(weights(tmp_path / "cache-512"), weights(tmp_path / "cache-0"))
    losses = [[json.loads(line)["loss"] for line in (tmp_path / f"cache-{mb}" / "metrics.jsonl").read_text().splitlines()]
              for mb in (512, 0)]
    assert losses[0] == losses[1] and len(losses[0]) == 6


def test_caches_share_and_respect_their_budget(shards_out):
    from offclip.models.caches import ImageCache, TextFeatures, shard_sentences
    from offclip.models.clip import build_model

    model, tokenizer = build_model("demo", seed=0)
    records = complete_shards(shards_out, "train")
    sentences = shard_sentences(shards_out, records, "train", "filtered")
    assert sentences == sorted(set(sentences)) and len(sentences) > 10
    report = shard_sentences(shards_out, records, "train", "report")
    assert set(sentences) < set(report)  # the whole reports hold the dropped normal sentences too
    first = TextFeatures.for_run(model, tokenizer, sentences, 64, torch.device("cpu"))
    assert TextFeatures.for_run(model, tokenizer, sentences, 64, torch.device("cpu")) is first  # shared
    assert TextFeatures.for_run(model, tokenizer, report, 64, torch.device("cpu")) is not first
    from offclip.models.clip import tokenize

    with torch.no_grad():
        direct = model.eval().text_features(**tokenize(tokenizer, sentences[:3], 64))
    torch.testing.assert_close(first.lookup(sentences[:3]), direct, rtol=1e-4, atol=1e-5)
    with pytest.raises(KeyError, match="not in the run's text cache"):
        first.lookup(["A sentence from nowhere."])
    small = ImageCache(96, budget_bytes=3 * ImageCache(96, 0).sample_bytes())
    assert small.fits(3) and not small.fits(4)

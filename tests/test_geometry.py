"""Issue 28 point 4: the embedding geometry traced over training (``models.geometry``,
``TrainConfig.trace_every``): measured on real shards, without changing the run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from offclip.models.clip import build_model, tokenize
from offclip.models.geometry import GEOMETRY_FILE, NORMAL_PROMPT, GeometryProbe, read_geometry
from offclip.models.stats import compactness
from offclip.models.train import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_probe_holds_both_labels_and_the_arm_text(shards_out):
    filtered = GeometryProbe.from_shards(shards_out, 96, "filtered", max_samples=20)
    report = GeometryProbe.from_shards(shards_out, 96, "report", max_samples=20)
    assert filtered.keys == report.keys  # the same samples for every arm
    held_out = filtered.splits["validate"] + filtered.splits["test"]
    assert 0 < held_out < 20 and filtered.splits["train"] == 20 - held_out  # held-out ones first
    assert filtered.is_normal.any() and (~filtered.is_normal).any()
    assert filtered.images.shape[1:] == (1, 96, 96)
    assert filtered.sentences[-1] == report.sentences[-1] == NORMAL_PROMPT
    # whole reports hold more sentences than the kept ones, for the abnormal samples at least
    n_report = sum(len(o) for o in report.owners)
    n_filtered = sum(len(o) for o in filtered.owners)
    assert n_report > n_filtered


def test_measure_matches_a_direct_computation(shards_out):
    probe = GeometryProbe.from_shards(shards_out, 96, "filtered", max_samples=32)
    model, tokenizer = build_model("demo", seed=0)
    from offclip.models.adapters import ClipAdapter

    adapter = ClipAdapter.from_offclip(model, tokenizer)
    adapter.train()
    row = probe.measure(adapter, torch.device("cpu"))
    assert adapter.training and model.vision_model.training  # modes put back
    with torch.no_grad():
        adapter.eval()
        image = adapter.encode_image(probe.images).numpy()
        sentence = np.concatenate([adapter.encode_text(**tokenize(tokenizer, [s], adapter.max_text_length)).numpy()
                                   for s in probe.sentences])  # one at a time: padding changes nothing
    text = np.stack([sentence[o].mean(axis=0) for o in probe.owners])
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    normal = probe.is_normal
    assert row["image_centred_normal_normal"] == pytest.approx(
        compactness(image, normal, centre=True)["normal_normal"], abs=1e-5)
    assert row["text_abnormal_abnormal"] == pytest.approx(compactness(text, normal)["abnormal_abnormal"], abs=1e-5)
    assert row["cross_normal_image_normal_text"] == pytest.approx(float((image[normal] @ text[normal].T).mean()),
                                                                  abs=1e-5)
    assert row["prompt_abnormal_image"] == pytest.approx(float((image[~normal] @ sentence[-1]).mean()), abs=1e-5)
    assert row["logit_scale"] == pytest.approx(float(model.logit_scale.detach().exp()))
    assert row["n_probe"] == 32 and row["n_probe_normal"] == int(normal.sum())


def test_tracing_leaves_the_run_unchanged_and_resumes(shards_out, tmp_path):
    plain, traced = tmp_path / "plain", tmp_path / "traced"
    common = dict(shards=shards_out, config="demo", batch_size=8, image_cache_mb=0, loss="offclip")
    train(TrainConfig(out=plain, max_steps=6, **common))
    train(TrainConfig(out=traced, max_steps=3, trace_every=2, trace_samples=24, **common))  # stops at 3
    train(TrainConfig(out=traced, max_steps=6, trace_every=2, trace_samples=24, **common))  # resumed
    a = torch.load(plain / "checkpoint" / "last.pt", weights_only=True)["model"]
    b = torch.load(traced / "checkpoint" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # measuring drew no random number
    rows = read_geometry(traced)
    assert [r["step"] for r in rows] == [0, 2, 3, 4, 6]  # first, every 2nd, the stop at 3, last
    assert not (plain / GEOMETRY_FILE).exists()
    # the text changes as the projection trains; the logit scale is the checkpoint's
    assert rows[0]["text_normal_normal"] != rows[-1]["text_normal_normal"]
    assert rows[-1]["logit_scale"] == pytest.approx(float(b["logit_scale"].exp()), rel=1e-6)
    assert all(json.loads(line) for line in (traced / GEOMETRY_FILE).read_text().splitlines())

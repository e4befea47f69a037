"""The build-shards flow under a real Prefect test server: thread runner and a real local Dask
cluster of 2 workers produce the same records and byte-identical shards."""

from __future__ import annotations

import os

import pandas as pd
import pytest

from offclip.pipeline.curate import read_curated
from offclip.pipeline.ingest import read_table
from offclip.pipeline.manifest import query
from offclip.pipeline.shards import complete_shards


def _run(world, out, classifier, runner):
    from offclip.flows.build import build_shards

    return build_shards(source=str(world), out=str(out), folders="all", image_size=64, batch_size=8,
                        shard_size=6, classifier=str(classifier), task_runner=runner, workers=2,
                        trigger_train=False)


def test_build_shards_flow_thread_and_dask_agree(prefect_server, small_world, tiny_classifier, tmp_path):
    world, summary = small_world
    classifier = tiny_classifier[1]
    thread = _run(world, tmp_path / "thread", classifier, "thread")
    assert thread["studies"] == summary.studies and thread["pairs"] == thread["ingested"] > 0
    assert thread["samples_written"] == thread["pairs"] and thread["model_calls"] == thread["unique_sentences"]
    runs = query(thread["manifest"], "SELECT stage, model_version, counts FROM runs")
    assert list(runs["stage"]) == ["build-shards"] and runs["model_version"][0] == thread["model_version"]

    dask = _run(world, tmp_path / "dask", classifier, "dask")
    for name in ("studies", "images", "sentences", "rejects"):
        pd.testing.assert_frame_equal(read_table(tmp_path / "thread", name), read_table(tmp_path / "dask", name))
    for name in ("sentences", "pairs"):
        pd.testing.assert_frame_equal(read_curated(tmp_path / "thread", name), read_curated(tmp_path / "dask", name))
    for split in ("train", "validate", "test"):
        a = [(r.name, r.sha256) for r in complete_shards(tmp_path / "thread", split)]
        b = [(r.name, r.sha256) for r in complete_shards(tmp_path / "dask", split)]
        assert a == b

    # a second run finds nothing new: every study unchanged, no model call, no new shard
    again = _run(world, tmp_path / "thread", classifier, "thread")
    assert again["new_studies"] == again["rejected"] and again["unchanged"] == thread["ingested"]
    assert again["model_calls"] == 0 and again["shards_written"] == 0


def test_artifacts_are_published(prefect_server, small_world, tiny_classifier, tmp_path):
    from prefect.artifacts import Artifact

    _run(small_world[0], tmp_path / "o", tiny_classifier[1], "thread")
    counts = Artifact.get("offclip-build-counts")
    summary = Artifact.get("offclip-build-summary")
    progress = Artifact.get("offclip-ingest-progress")
    assert counts is not None and counts.type == "table" and "reject: truncated" in str(counts.data)
    assert summary is not None and "pair_label" in summary.data and "Shards" in summary.data
    assert "classifier × rules" in summary.data and "Top 20 classifier/rule disagreements" in summary.data
    assert progress is not None and float(progress.data) == 100.0


def test_a_classifier_trained_by_the_flow_learns_from_the_corpus(prefect_server, small_world, tiny_classifier,
                                                                  tmp_path, monkeypatch):
    """No classifier given or found: the flow trains one after ingest, on Open-I + its own OUT."""
    import shutil

    from offclip.flows import build

    calls = []

    def fake_train(out_dir, method, seed, openi, corpus=None):
        calls.append({"out_dir": out_dir, "corpus": corpus})
        assert (tmp_path / "o" / "ingest" / "sentences.parquet").is_file()  # ingest has run
        shutil.copytree(tiny_classifier[1], out_dir)
        return out_dir

    monkeypatch.setattr(build, "train_classifier_task", fake_train)
    result = build.build_shards(source=str(small_world[0]), out=str(tmp_path / "o"), folders="all", image_size=64,
                                batch_size=8, shard_size=6, classifier=None, task_runner="thread", workers=1,
                                trigger_train=False)
    assert calls == [{"out_dir": str(tmp_path / "o" / "classifier"), "corpus": str(tmp_path / "o")}]
    assert result["label_policy"] == "cascade" and result["pairs"] > 0

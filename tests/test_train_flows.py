"""The train / evaluate / retrain flows under a real Prefect test server: build-shards starts a
train run, train starts an evaluate run (as downstream deployments), and retrain does nothing
when no new sample arrived."""

from __future__ import annotations

import shutil
from pathlib import Path
from uuid import UUID

import pytest

from offclip.pipeline.manifest import query

pytestmark = pytest.mark.usefixtures("prefect_server")


def _deploy(*names: str) -> None:
    """Register deployments of the `offclip` flow on the test server (no worker: a triggered run
    stays scheduled, which is what the chaining tests look at)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("offclip")
        for name in names:
            client.create_deployment(flow_id=flow_id, name=name, entrypoint=f"flows/train.py:{name}")


def _flow_run(run_id: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(run_id))
        deployment = client.read_deployment(run.deployment_id)
    return run, deployment


def test_build_shards_triggers_a_train_run(small_world, tiny_classifier, tmp_path):
    from offclip.flows.build import build_shards

    world, _ = small_world
    _deploy("train")
    out = tmp_path / "out"
    result = build_shards(source=str(world), out=str(out), folders="all", image_size=64, batch_size=8,
                          classifier=str(tiny_classifier[1]), trigger_train=True,
                          train_parameters={"max_steps": 2, "loss": "infonce"})
    assert result["train_run"] is not None
    run, deployment = _flow_run(result["train_run"])
    assert deployment.name == "train" and run.state.is_scheduled()
    assert run.parameters["shards"] == str(out) and run.parameters["max_steps"] == 2
    assert run.parameters["loss"] == "infonce" and run.parameters["eval_root"] == str(world / "eval" / "vindr-cxr")


def test_train_triggers_evaluate_and_evaluate_records(shards_out, small_world, tmp_path):
    from offclip.flows.train import evaluate, train

    shards = tmp_path / "out"
    shutil.copytree(shards_out, shards)
    _deploy("evaluate")
    eval_root = small_world[0] / "eval" / "vindr-cxr"
    result = train(shards=str(shards), max_steps=2, batch_size=8, eval_root=str(eval_root))
    model_dir = Path(result["model_dir"])
    assert result["steps"] == 2 and (model_dir / "config.json").is_file()
    assert model_dir.is_relative_to(shards / "runs")
    runs = query(shards / "manifest.duckdb", "SELECT stage FROM runs WHERE stage = 'train'")
    assert len(runs) == 1

    run, deployment = _flow_run(result["evaluate_run"])
    assert deployment.name == "evaluate" and run.parameters["model"] == str(model_dir)
    assert run.parameters["root"] == str(eval_root)

    # what the triggered run would do, run here: figures land in the manifest and as artifacts
    from prefect.artifacts import Artifact

    evaluated = evaluate(**run.parameters)
    rows = query(shards / "manifest.duckdb", "SELECT DISTINCT dataset FROM evaluations")
    assert list(rows["dataset"]) == ["vindr-cxr"]
    assert Artifact.get("offclip-eval-metrics") is not None and Artifact.get("offclip-train-metrics") is not None
    assert "summary" in evaluated and (model_dir.parent / "eval" / "vindr-cxr.json").is_file()


def test_retrain_runs_once_then_skips_when_nothing_is_new(small_world, tiny_classifier, tmp_path):
    from offclip.flows.train import retrain

    world, _ = small_world
    out = tmp_path / "out"
    kwargs = dict(source=str(world), out=str(out), folders="all", image_size=64,
                  classifier=str(tiny_classifier[1]), max_steps=2, batch_size=8)
    first = retrain(**kwargs)
    assert first["skipped"] is False and first["new_samples"] > 0
    assert first["train"]["steps"] == 2 and first["evaluate"] is not None
    runs_before = sorted(p.name for p in (out / "runs").iterdir())

    second = retrain(**kwargs)
    assert second["skipped"] is True and second["build"]["samples_written"] == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == runs_before
    stages = query(out / "manifest.duckdb", "SELECT stage, count(*) AS n FROM runs GROUP BY stage ORDER BY stage")
    assert dict(zip(stages["stage"], stages["n"])) == {"build-shards": 2, "evaluate": 1, "train": 1}

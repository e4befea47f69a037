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


def _read(run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(str(run_id)))


def _parent_flow_run(run):
    """The flow run that created ``run`` (run_deployment links it through a task run there)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_task_run(run.parent_task_run_id).flow_run_id if run.parent_task_run_id else None


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
    # the build's own run is named from its parameters; the train run it created is its child
    build = _read(result["flow_run"])
    assert build.name.startswith(f"build-shards · {world.name} → out · ")
    assert _parent_flow_run(run) == build.id
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
    trained = _read(result["flow_run"])
    assert trained.name.startswith(f"train · offclip · seed 0 · demo · {shards.name} · ")
    assert _parent_flow_run(run) == trained.id
    assert run.parameters["root"] == str(eval_root)

    # what the triggered run would do, run here: figures land in the manifest and as artifacts
    from prefect.artifacts import Artifact

    evaluated = evaluate(**run.parameters)
    assert _read(evaluated["flow_run"]).name.startswith(f"evaluate · vindr-cxr · {model_dir.parent.name} · ")
    rows = query(shards / "manifest.duckdb", "SELECT DISTINCT dataset FROM evaluations")
    assert list(rows["dataset"]) == ["vindr-cxr"]
    assert Artifact.get("offclip-eval-metrics") is not None and Artifact.get("offclip-train-metrics") is not None
    assert "summary" in evaluated and (model_dir.parent / "eval" / "vindr-cxr.json").is_file()


def test_train_with_baseline_trains_the_plain_clip_and_evaluate_compares(shards_out, small_world, tmp_path):
    """train(baseline=True) trains the plain CLIP beside the model (InfoNCE on whole reports) and
    hands it to evaluate, which scores both on the same set and records their paired difference."""
    import json

    from prefect.artifacts import Artifact

    from offclip.flows.train import evaluate, train

    shards = tmp_path / "out"
    shutil.copytree(shards_out, shards)
    _deploy("evaluate")
    eval_root = small_world[0] / "eval" / "vindr-cxr"
    result = train(shards=str(shards), max_steps=2, batch_size=8, eval_root=str(eval_root), baseline=True)
    model_dir, base_dir = Path(result["model_dir"]), Path(result["baseline_model_dir"])
    assert model_dir != base_dir and (base_dir / "config.json").is_file()
    base_run = json.loads((base_dir.parent / "train.json").read_text())
    own_run = json.loads((model_dir.parent / "train.json").read_text())
    assert (base_run["train_config"]["loss"], base_run["hyper"]["text_source"]) == ("infonce", "report")
    assert (own_run["train_config"]["loss"], own_run["hyper"]["text_source"]) == ("offclip", "filtered")
    assert base_run["train_config"]["seed"] == own_run["train_config"]["seed"]
    assert base_run["steps"] == own_run["steps"] == 2

    run, _ = _flow_run(result["evaluate_run"])
    assert run.parameters["baseline"] == str(base_dir) and run.parameters["model"] == str(model_dir)
    evaluated = evaluate(**run.parameters)
    assert evaluated["baseline"]["model_dir"] == str(base_dir)
    # the differences are the two evaluations' own figures subtracted, with an interval around them
    by_metric = {d["metric"]: d for d in evaluated["differences"]}
    normal = by_metric["normal_auc"]
    expected = evaluated["summary"]["normal_auc"] - evaluated["baseline"]["summary"]["normal_auc"]
    assert normal["estimate"] == pytest.approx(expected, abs=1e-9)
    assert normal["low"] <= normal["estimate"] <= normal["high"] and normal["n_images"] == evaluated["summary"]["n_images"]
    db = shards / "manifest.duckdb"
    latest = query(db, "SELECT run_name FROM latest_evaluations ORDER BY run_name")
    assert sorted(latest["run_name"]) == sorted([model_dir.parent.name, base_dir.parent.name])
    differences = query(db, "SELECT * FROM latest_differences WHERE metric = 'normal_auc'")
    assert list(differences["comparison"]) == [f"{model_dir.parent.name}-vs-{base_dir.parent.name}"]
    assert differences["difference"][0] == pytest.approx(expected, abs=1e-9)
    assert differences["ci_low"][0] <= differences["difference"][0] <= differences["ci_high"][0]
    assert "difference [95 % CI]" in Artifact.get("offclip-eval-vs-baseline").data


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


def _linked_run(client, deployment_id, parent=None, state=None):
    """A flow run of a deployment, created the way ``run_deployment`` inside a flow creates one:
    linked to its parent flow run through a task run there."""
    from prefect.states import Completed

    parent_task_run_id = None
    if parent is not None:
        task_run = client.create_task_run(task=_stub_task(), flow_run_id=parent.id, dynamic_key="0")
        parent_task_run_id = task_run.id
    run = client.create_flow_run_from_deployment(deployment_id, parent_task_run_id=parent_task_run_id)
    client.set_flow_run_state(run.id, state or Completed(), force=True)
    return client.read_flow_run(run.id)


def _stub_task():
    from prefect import task

    @task(name="run-deployment-link")
    def link() -> None:
        return None
    return link


def test_wait_follows_the_runs_each_run_created_not_the_newest(tmp_path):
    """`offclip wait` follows build-shards → the train run *it* created → the evaluate run *that*
    created, though newer runs of train (still running) and evaluate (failed) exist; and a chain
    whose run ended without starting the next is reported missing at once, not waited out."""
    import time

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Failed, Running

    from offclip import service

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("offclip")
        deployment = {name: client.create_deployment(flow_id=flow_id, name=f"wait-{name}",
                                                     entrypoint=f"flows/train.py:{name}")
                      for name in ("build", "train", "evaluate")}
        build = _linked_run(client, deployment["build"])
        trained = _linked_run(client, deployment["train"], parent=build)
        evaluated = _linked_run(client, deployment["evaluate"], parent=trained)
        _linked_run(client, deployment["train"], state=Running())        # newer, someone else's
        _linked_run(client, deployment["evaluate"], state=Failed())      # newer, someone else's
        lonely = _linked_run(client, deployment["build"])               # started nothing

    chain = ["offclip/wait-build", "offclip/wait-train", "offclip/wait-evaluate"]
    url, lines = PREFECT_API_URL.value(), []
    followed = service.wait_for_runs(chain, run=str(build.id), url=url, poll=0.2, timeout=60, echo=lines.append)
    assert [f.run_id for f in followed] == [str(build.id), str(trained.id), str(evaluated.id)]
    assert [f.state for f in followed] == ["Completed"] * 3, lines

    t0 = time.monotonic()
    followed = service.wait_for_runs(chain, run=str(lonely.id), url=url, poll=0.2, timeout=60, echo=lines.append)
    assert [f.state for f in followed] == ["Completed", "missing", "missing"]
    assert time.monotonic() - t0 < 20  # known at once: the build run ended without a train run

    # without --run: the first deployment's newest run (here the lonely one)
    followed = service.wait_for_runs(chain[:2], url=url, poll=0.2, timeout=60, echo=lines.append)
    assert followed[0].run_id == str(lonely.id) and followed[1].state == "missing"
    with pytest.raises(ValueError, match="is not a run of offclip/wait-train"):
        service.wait_for_runs(chain[1:], run=str(build.id), url=url, timeout=5, echo=lines.append)


def test_two_runs_print_the_same_answer_and_the_baseline_has_its_own_artifacts(shards_out, small_world, tmp_path):
    """Issue 29 point 5: one commit, one set of printed numbers — two train(baseline) + evaluate
    chains on copies of the same shards give the same answer, figure for figure; and the
    baseline is a first-class run in the UI (its own metrics table, curve, per-class table, ROC)."""
    import json

    from prefect.artifacts import Artifact

    from offclip.flows.train import evaluate, train
    from offclip.models.answer import latest_answer

    _deploy("evaluate")
    eval_root = small_world[0] / "eval" / "vindr-cxr"
    answers = []
    for copy in ("a", "b"):
        shards = tmp_path / copy
        shutil.copytree(shards_out, shards)
        result = train(shards=str(shards), max_steps=3, batch_size=8, eval_root=str(eval_root), baseline=True)
        run, _ = _flow_run(result["evaluate_run"])
        evaluate(**run.parameters)
        answers.append(latest_answer(shards / "manifest.duckdb"))
    assert answers[0] is not None and "OFF-CLIP against the plain CLIP" in answers[0]
    assert answers[0] == answers[1]
    for key in ("offclip-baseline-train-metrics", "offclip-baseline-train-summary", "offclip-baseline-eval-metrics",
                "offclip-baseline-eval-summary", "offclip-train-summary", "offclip-answer"):
        assert Artifact.get(key) is not None, key
    assert "plain CLIP (baseline)" in Artifact.get("offclip-baseline-train-summary").data
    assert "ROC curves" in Artifact.get("offclip-baseline-eval-summary").data
    rows = json.loads(Artifact.get("offclip-baseline-eval-metrics").data,  # strict JSON: no Infinity, no NaN
                      parse_constant=lambda c: pytest.fail(f"{c} in an artifact's JSON"))
    assert list(rows[0])[:3] == ["class_name", "kind", "auc"]
    assert "The answer" in Artifact.get("offclip-answer").data

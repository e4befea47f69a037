"""The user path end to end, with real processes: `offclip up` → `prefect deployment run
offclip/build-shards --watch` → (the worker runs the chained train and evaluate runs) →
`offclip down` on a small demo world (the slow test)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from offclip.pipeline.curate import read_curated
from offclip.pipeline.manifest import query

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_up_deployment_run_down(small_world, tiny_classifier, tmp_path):
    world, _ = small_world
    home, out, port = tmp_path / "home", tmp_path / "out", _free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    offclip = [sys.executable, "-m", "offclip.cli"]
    up = subprocess.run(offclip + ["up", "--home", str(home), "--port", str(port)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert "offclip/build-shards" in up.stdout
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        run = subprocess.run(
            [sys.executable, "-m", "prefect", "deployment", "run", "offclip/build-shards", "--watch",
             "-p", f"source={world}", "-p", f"out={out}", "-p", f"classifier={tiny_classifier[1]}",
             "-p", "image_size=64", "-p", 'train_parameters={"max_steps": 2, "batch_size": 8}'],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
        pairs = read_curated(out, "pairs")
        assert len(pairs) > 0
        shards = query(out / "manifest.duckdb", "SELECT sum(samples)::BIGINT AS n FROM shards")
        assert shards["n"][0] == len(pairs)
        # build-shards started offclip/train, which started offclip/evaluate: wait for both
        runs = _wait_for_runs(env, ["train", "evaluate"], timeout=420)
        assert [r.state.type.value for r in runs] == ["COMPLETED", "COMPLETED"], [r.state for r in runs]
        assert runs[1].parameters["model"] == str(next((out / "runs").iterdir()) / "model")
        evaluations = query(out / "manifest.duckdb", "SELECT count(*) AS n FROM evaluations")
        assert evaluations["n"][0] > 0
    finally:
        down = subprocess.run(offclip + ["down", "--home", str(home)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "terminated" in down.stdout
    assert not list((home / "run").glob("*.pid"))


def _wait_for_runs(env: dict, names: list[str], timeout: float) -> list:
    """The first flow run of each named offclip deployment, once all are final (or the timeout)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout
    with temporary_settings(updates={PREFECT_API_URL: env["PREFECT_API_URL"]}):
        while True:
            with get_client(sync_client=True) as client:
                runs = []
                for name in names:
                    deployment = client.read_deployment_by_name(f"offclip/{name}")
                    found = [r for r in client.read_flow_runs() if r.deployment_id == deployment.id]
                    runs.append(found[0] if found else None)
            if all(r is not None and r.state.is_final() for r in runs) or time.monotonic() > deadline:
                return runs
            time.sleep(3)

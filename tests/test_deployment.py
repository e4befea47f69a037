"""The user path end to end, with real processes: `offclip up` → `prefect deployment run
offclip/build-shards --watch` → (the worker runs the chained train and evaluate runs) →
`offclip down` on a small demo world (the slow test)."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import sys
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
        # as docs/orchestration.md says: `. .offclip/env.sh && prefect deployment run …` (the server's
        # address and its secret: without the secret the server answers 401)
        command = [sys.executable, "-m", "prefect", "deployment", "run", "offclip/build-shards", "--watch",
                   "-p", f"source={world}", "-p", f"out={out}", "-p", f"classifier={tiny_classifier[1]}",
                   "-p", "image_size=64", "-p", 'train_parameters={"max_steps": 2, "batch_size": 8}']
        run = subprocess.run(["bash", "-c", f'. {shlex.quote(str(home / "env.sh"))} && exec "$@"', "bash", *command],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0 and "Completed" in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
        pairs = read_curated(out, "pairs")
        assert len(pairs) > 0
        shards = query(out / "manifest.duckdb", "SELECT sum(samples)::BIGINT AS n FROM shards")
        assert shards["n"][0] == len(pairs)
        # build-shards started offclip/train, which started offclip/evaluate: `offclip wait`
        # follows both to their end
        wait = subprocess.run(offclip + ["wait", "offclip/build-shards", "offclip/train", "offclip/evaluate",
                                         "--home", str(home), "--timeout", "420"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=480)
        assert wait.returncode == 0, wait.stdout + wait.stderr
        for name in ("build-shards", "train", "evaluate"):
            assert f"offclip/{name}: Completed" in wait.stdout
        # each run is named from its parameters (what the UI lists)
        assert f"(flow run build-shards · {world.name} → out · " in wait.stdout
        assert "(flow run train · offclip · seed 0 · demo · out · " in wait.stdout
        assert "(flow run evaluate · vindr-cxr · demo-offclip-seed0-" in wait.stdout
        (run_dir,) = (out / "runs").iterdir()
        evaluations = query(out / "manifest.duckdb", "SELECT DISTINCT model_dir FROM evaluations")
        assert list(evaluations["model_dir"]) == [str(run_dir / "model")]
    finally:
        down = subprocess.run(offclip + ["down", "--home", str(home)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "terminated" in down.stdout
    assert not list((home / "run").glob("*.pid"))


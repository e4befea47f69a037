"""The user path end to end, with real processes, as `make demo` takes it: `offclip up` →
`prefect deployment run offclip/build-shards` → `offclip wait` (the worker runs the chained train
and evaluate runs; the model and its plain-CLIP baseline) → `offclip answer` → `offclip down` on a
small demo world (the slow test)."""

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
        # as make demo does: start the run, then `offclip wait` follows it and the runs it starts
        command = [sys.executable, "-m", "prefect", "deployment", "run", "offclip/build-shards",
                   "-p", f"source={world}", "-p", f"out={out}", "-p", f"classifier={tiny_classifier[1]}",
                   "-p", "image_size=64", "-p", 'train_parameters={"max_steps": 2, "batch_size": 8, "baseline": true}']
        run = subprocess.run(["bash", "-c", f'. {shlex.quote(str(home / "env.sh"))} && exec "$@"', "bash", *command],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
        # build-shards started offclip/train, which started offclip/evaluate: `offclip wait`
        # follows the three to their end, printing what trains instead of Prefect's event stream
        wait = subprocess.run(offclip + ["wait", "offclip/build-shards", "offclip/train", "offclip/evaluate",
                                         "--home", str(home), "--timeout", "540"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert wait.returncode == 0, wait.stdout + wait.stderr
        for name in ("build-shards", "train", "evaluate"):
            assert f"offclip/{name}: Completed" in wait.stdout, wait.stdout
        assert "ingest: " in wait.stdout and " batches of studies" in wait.stdout, wait.stdout
        # two models train, one after the other, each saying so
        assert "OFF-CLIP: trained, 2 steps" in wait.stdout, wait.stdout
        assert "plain CLIP (baseline): trained, 2 steps" in wait.stdout, wait.stdout
        assert "evaluated the model on vindr-cxr: " in wait.stdout, wait.stdout
        assert "evaluated plain CLIP (baseline) on vindr-cxr: " in wait.stdout, wait.stdout
        pairs = read_curated(out, "pairs")
        assert len(pairs) > 0
        shards = query(out / "manifest.duckdb", "SELECT sum(samples)::BIGINT AS n FROM shards")
        assert shards["n"][0] == len(pairs)
        # the answer in sentences, from the manifest, and where to browse it
        answer = subprocess.run(offclip + ["answer", str(out), "--home", str(home)], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=120)
        assert answer.returncode == 0, answer.stdout + answer.stderr
        assert "OFF-CLIP against the plain CLIP on vindr-cxr" in answer.stdout, answer.stdout
        assert "95 % interval" in answer.stdout and "one training seed" in answer.stdout, answer.stdout
        assert f"http://127.0.0.1:{port}/artifacts/key/offclip-answer" in answer.stdout, answer.stdout
        # each run is named from its parameters (what the UI lists)
        assert f"(flow run build-shards · {world.name} → out · " in wait.stdout, wait.stdout
        assert "(flow run train · offclip · seed 0 · demo · out · " in wait.stdout, wait.stdout
        assert "(flow run evaluate · vindr-cxr · demo-offclip-seed0-" in wait.stdout, wait.stdout
        run_dirs = sorted((out / "runs").iterdir())
        assert [d.name.split("-")[1] for d in run_dirs] == ["infonce", "offclip"]  # the baseline, the model
        evaluations = query(out / "manifest.duckdb", "SELECT DISTINCT model_dir FROM evaluations WHERE model_dir IS NOT NULL ORDER BY 1")
        assert list(evaluations["model_dir"]) == [str(d / "model") for d in run_dirs]
    finally:
        down = subprocess.run(offclip + ["down", "--home", str(home)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=120)
    assert down.returncode == 0 and "terminated" in down.stdout
    assert not list((home / "run").glob("*.pid"))


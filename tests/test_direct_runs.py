"""Flows run directly (`offclip build-shards`, `train`, `evaluate`: no deployment) on a fresh
machine: a new, empty PREFECT_HOME, no `offclip up` server, no PREFECT_API_URL — the first run
must pass, and print no error about Prefect's telemetry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from offclip import service
from offclip.pipeline.manifest import query


def test_direct_run_settings_without_a_project_server(tmp_path):
    home = tmp_path / "no-server-here"
    temporary = service.direct_run_env(home, environ={})
    assert temporary.target == "temporary" and temporary.api_url is None
    # the temporary server's start timeout fits a cold start (Prefect's default, 20 s, does not)
    assert int(temporary.env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"]) >= 120
    assert temporary.env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "PREFECT_API_URL" not in temporary.env
    # a user's own server and settings are honoured
    user = service.direct_run_env(home, environ={"PREFECT_API_URL": "http://10.1.2.3:4200/api",
                                                 "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "7"})
    assert user.target == "user" and user.api_url == "http://10.1.2.3:4200/api" and "PREFECT_API_URL" not in user.env
    assert service.direct_run_env(home, environ={"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "7"}).env[
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] == "7"


def test_first_direct_build_on_a_fresh_prefect_home(small_world, tiny_classifier, tmp_path):
    """`offclip build-shards` with a PREFECT_HOME that does not exist yet: the temporary server
    creates its SQLite database (migrations: the cold start) and the run completes, first try."""
    world, _ = small_world
    prefect_home, out = tmp_path / "fresh-prefect-home", tmp_path / "out"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PREFECT_") and k not in ("OFFCLIP_HOME",)}
    env.update({"PREFECT_HOME": str(prefect_home), "HF_HUB_OFFLINE": "1"})
    t0 = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "offclip.cli", "build-shards", str(world), str(out),
                          "--folders", "all", "--image-size", "64", "--classifier", str(tiny_classifier[1]),
                          "--no-trigger-train"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - t0
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    assert "temporary server" in run.stderr
    assert (prefect_home / "prefect.db").is_file()  # a new database was made: a cold start
    logged = run.stdout + run.stderr
    assert "telemetry" not in logged.lower()
    assert "| ERROR" not in logged and "Traceback" not in logged
    result = json.loads(run.stdout[run.stdout.index("{"):])
    assert result["shards_written"] > 0
    assert query(result["manifest"], "SELECT count(*) AS n FROM pairs")["n"][0] == result["pairs"]
    print(f"first direct build-shards on a fresh PREFECT_HOME: {elapsed:.1f} s")

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


SERVER_MARKER = "prefect.server.api.server:create_app"   # Prefect 3.8.8's temporary server: uvicorn --factory


def _argv(pid: int) -> list[str]:
    try:
        return [a.decode() for a in open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0") if a]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")


def _children(pid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = open(f"/proc/{name}/stat", "rb").read()
            except OSError:
                continue
            if int(stat[stat.rindex(b")") + 2:].split()[1]) == pid:
                out.append(int(name))
    return out


def test_a_killed_direct_run_takes_its_temporary_server_with_it(small_world, tiny_classifier, tmp_path):
    """kill -9 of `offclip build-shards` (no `offclip up` server) while its flow runs: the temporary
    Prefect server it started (a uvicorn child, which Prefect stops only at a normal exit) is gone
    within seconds, not left serving. The server also asked for the run's own auth string."""
    import signal

    import httpx

    if not os.path.exists("/proc/self/environ"):
        import pytest

        pytest.skip("needs Linux /proc")
    world, _ = small_world
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_") and k not in ("OFFCLIP_HOME",)}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "HF_HUB_OFFLINE": "1"})
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        run = subprocess.Popen([sys.executable, "-m", "offclip.cli", "build-shards", str(world), str(tmp_path / "out"),
                                "--folders", "all", "--image-size", "64", "--classifier", str(tiny_classifier[1]),
                                "--no-trigger-train"],
                               cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = None
    try:
        deadline = time.monotonic() + 300
        while server is None:       # the temporary server: the run's uvicorn child
            assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            server = next((c for c in _children(run.pid) if SERVER_MARKER in _argv(c)), None)
            time.sleep(0.1)
        argv = _argv(server)
        url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}/api"
        with httpx.Client(trust_env=False, timeout=2) as http:
            while True:             # until it is up (answers health), the flow about to run
                assert run.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                try:
                    if http.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            assert http.get(f"{url}/admin/version").status_code == 401   # not open to anyone on the machine
            assert run.poll() is None                         # the run is still going: killed mid-run
            run.send_signal(signal.SIGKILL)
            run.wait()
            t0 = time.monotonic()
            while _alive(server) and time.monotonic() - t0 < 10:
                time.sleep(0.1)
            assert not _alive(server), f"the temporary server (pid {server}) outlived the killed run by 10 s"
            print(f"temporary server gone {time.monotonic() - t0:.1f} s after the kill")
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if server is not None and _alive(server) and SERVER_MARKER in _argv(server):
            os.kill(server, signal.SIGKILL)

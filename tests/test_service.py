"""`offclip up` / `status` / `down`: a real Prefect server and worker in a tmp home, no mocks."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from offclip import service

pytestmark = pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="needs Linux /proc")

POOL = "offclip-process"


def _alive(pid: int) -> bool:
    """Running and not a zombie (a zombie still answers kill(pid, 0))."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """This process's own prefect import (for the client) writes under tmp, not ~/.prefect."""
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "client-prefect-home"))
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return tmp_path


def test_up_status_down_real_processes(isolated):
    from typer.testing import CliRunner

    from offclip.cli import app

    home = isolated / "home"
    port = service.free_port()
    lay = service.layout(home)
    url = f"http://127.0.0.1:{port}/api"
    t0 = time.monotonic()
    # started as a script's background job is (`offclip up &`, cron, CI): SIGINT ignored, which
    # children inherit; Prefect's worker stops by sending itself SIGINT, so down must still
    # find it "terminated", not killed
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            first = service.up(home, port, POOL, deploy_flows=False, project=isolated)
        finally:
            signal.signal(signal.SIGINT, previous)
        assert first.api_url == url and not first.server_reused and first.pool_created
        assert service.health(url)
        assert first.worker_pid and _alive(first.worker_pid) and _alive(first.server_pid)
        assert lay.server_pid.read_text().strip() == str(first.server_pid)
        assert lay.worker_pid.read_text().strip() == str(first.worker_pid)
        assert (lay.prefect_home / "prefect.db").is_file()          # the SQLite DB is project-local
        assert lay.env_sh.read_text().strip().endswith(f"export PREFECT_API_URL={url}")
        assert service.api_url(home) == url and service.api_url(home, check=True) == url
        assert service.client_env(home, base={})["PREFECT_API_URL"] == url

        # The Prefect UI is served (by default): its page at /, its settings naming this server's API
        import httpx

        with httpx.Client(trust_env=False, timeout=10) as http:
            page = http.get(f"http://127.0.0.1:{port}/")
            assert page.status_code == 200 and "text/html" in page.headers["content-type"]
            assert "<!DOCTYPE html>" in page.text and "favicon" in page.text
            assert http.get(f"http://127.0.0.1:{port}/ui-settings").json()["api_url"] == url
        assert first.ui_url == f"http://127.0.0.1:{port}" and first.ui_url in first.to_text()

        # a direct flow run (offclip build-shards, train, evaluate) goes to this server
        direct = service.direct_run_env(home, environ={})
        assert direct.target == "project" and direct.env["PREFECT_API_URL"] == url
        assert direct.env["PREFECT_HOME"] == str(lay.prefect_home)

        # The pool, through the ordinary Prefect client with PREFECT_API_URL pointing at the server.
        from prefect.client.orchestration import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: url}):
            with get_client(sync_client=True) as client:
                pool = client.read_work_pool(POOL)
                assert pool.type == "process"
                assert first.worker_name in [w.name for w in client.read_workers_for_work_pool(POOL)]

        # Idempotent: the same server and worker, the pool left as it is.
        again = service.up(home, None, POOL, deploy_flows=False, project=isolated)
        assert again.server_reused and again.server_pid == first.server_pid and again.port == port
        assert again.worker_reused and again.worker_pid == first.worker_pid and not again.pool_created

        st = service.status(home)
        assert st.ok and st.server_alive and st.server_healthy and st.api_url == url
        assert st.worker_alive and st.worker_pid == first.worker_pid and st.worker_status == "ONLINE"
        assert st.pool_exists and st.deployments == [] and not st.errors

        out = CliRunner().invoke(app, ["status", "--home", str(home)])
        assert out.exit_code == 0, out.output
        assert f"export PREFECT_API_URL={url}" in out.output and "ONLINE" in out.output
    finally:
        stopped = service.down(home)
    elapsed = time.monotonic() - t0

    assert {s.role: s.outcome for s in stopped.stopped} == {"worker": "terminated", "server": "terminated"}
    assert not _alive(first.server_pid) and not _alive(first.worker_pid)
    assert not any(p.exists() for p in (lay.server_pid, lay.worker_pid, lay.server_json, lay.worker_json, lay.env_sh))
    assert not service.health(url)
    assert service.api_url(home) is None

    second = service.down(home)
    assert second.nothing_running and "nothing running" in second.to_text()
    st = service.status(home)
    assert not st.ok and not st.server_alive and not st.worker_alive
    print(f"up/up/status/down: {elapsed:.1f} s (server healthy after {first.server_start_s:.1f} s)")


def test_down_refuses_a_pid_that_is_not_prefect(isolated):
    home = isolated / "home"
    lay = service.layout(home)
    lay.run.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    # A Python process whose argv merely mentions prefect is not `prefect server start` either.
    impostor = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "prefect", "server", "start"],
                                start_new_session=True)
    try:
        lay.server_pid.write_text(f"{sleeper.pid}\n")
        lay.worker_pid.write_text(f"{impostor.pid}\n")
        result = service.down(home)
        outcomes = {s.role: s.outcome for s in result.stopped}
        assert outcomes["server"].startswith("refused") and "sleep" in outcomes["server"]
        assert outcomes["worker"].startswith("refused")
        time.sleep(0.3)
        assert sleeper.poll() is None and impostor.poll() is None       # both survive
        assert not lay.server_pid.exists() and not lay.worker_pid.exists()
        assert not result.nothing_running
    finally:
        for p in (sleeper, impostor):
            p.kill()
            p.wait()


def test_prefect_command_recognition():
    ok = service.is_prefect_command
    assert ok(["/v/bin/python3", "-m", "prefect", "server", "start", "--port", "1"], "server", "start")
    assert ok(["/v/bin/python3", "/v/bin/prefect", "worker", "start", "--pool", "p"], "worker", "start")
    assert ok(["prefect", "server", "start"], "server", "start")
    assert not ok(["/v/bin/python3", "-m", "prefect", "worker", "start"], "server", "start")
    assert not ok(["sleep", "60"], "server", "start")
    assert not ok(["python", "-c", "x", "prefect", "server", "start"], "server", "start")
    assert not ok(None, "server", "start") and not ok([], "server", "start")


def test_up_refuses_a_port_in_use(isolated):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(service.ServiceError, match=f"port {port} .* in use by another process"):
            service.up(isolated / "home", port, deploy_flows=False, worker=False, project=isolated)
    assert not service.layout(isolated / "home").server_pid.exists()


def test_nothing_to_stop_or_report(isolated):
    result = service.down(isolated / "empty")
    assert result.nothing_running and result.stopped == []
    st = service.status(isolated / "empty")
    assert not st.ok and st.api_url is None and st.pool_exists is None
    assert service.api_url(isolated / "empty") is None
    assert "server   down" in st.to_text()


def test_no_deployments_declared_is_a_note(isolated):
    (isolated / "prefect.yaml").write_text("name: x\nprefect-version: 3.8.8\ndeployments: []\n")
    note = service.deploy(service.layout(isolated / "home"), 1, isolated)
    assert note.startswith("skipped") and "declares no deployments" in note
    assert service.deploy(service.layout(isolated / "home"), 1, isolated / "nowhere").startswith("skipped: no prefect.yaml")


def test_stack_env_serves_the_ui_unless_turned_off(isolated):
    lay = service.layout(isolated / "home")
    on = service.stack_env(lay, 4321, base={"PREFECT_PROFILE": "x", "PATH": "/bin"})
    assert on["PREFECT_UI_ENABLED"] == on["PREFECT_SERVER_UI_ENABLED"] == "true"
    assert on["PREFECT_UI_API_URL"] == on["PREFECT_API_URL"] == "http://127.0.0.1:4321/api"
    assert on["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and "PREFECT_PROFILE" not in on
    off = service.stack_env(lay, 4321, base={}, ui=False)
    assert off["PREFECT_UI_ENABLED"] == off["PREFECT_SERVER_UI_ENABLED"] == "false"


def test_a_just_started_process_is_read_with_its_argv():
    """Straight after Popen a live process's /proc cmdline can read empty for a moment (16 % of
    reads on a loaded machine); _cmdline waits that out instead of calling the process gone."""
    for _ in range(40):
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "prefect", "server", "start"],
                                start_new_session=True)
        try:
            argv = service._cmdline(proc.pid)
            assert argv is not None and argv[-3:] == ["prefect", "server", "start"]
        finally:
            proc.kill()
            proc.wait()
    assert service._cmdline(proc.pid) is None          # gone: None at once

"""The API server: Prefect's own ``prefect server start --host 127.0.0.1 --port PORT``, run by
offclip detached, with its output in ``logs/server.log``, and waited for until it answers health.

What Prefect's server commands do and do not do here (prefect 3.8.8, ``prefect/cli/server.py``):

* ``prefect server start`` (foreground) is the server process itself: it binds 127.0.0.1 only
  (``--host``), reads its database, auth string, CORS and CSRF settings from the environment
  (:func:`.env.server_env`) and runs its migrations at start-up; its own port check refuses a
  taken port too. offclip runs exactly this command.
* ``--background`` is not used: it starts uvicorn with stdout and stderr on pipes to the CLI,
  which exits at once, so the server's output (a failed migration, an incompatible fastapi) is
  lost and a failed start cannot be explained; the server stays in the caller's process group;
  and the command returns before the server answers. offclip's :func:`.processes.spawn` starts
  it in its own session with its output in the log, recorded (start time, token) so that
  ``down`` can prove it is the one started.
* ``prefect server stop`` is not used: it sends SIGTERM to whatever pid ``$PREFECT_HOME/server.pid``
  holds (a reused pid included), does not wait for the exit, never escalates, and knows nothing of
  a server it did not start in the background: :func:`.processes.stop_process`.
* ``prefect server status [--wait]`` is not used: see :mod:`.health`.
"""

from __future__ import annotations

import datetime as dt
import json
import time

from .auth import AUTH_USER, CSRF_PROTECTION, auth_probe, auth_string, new_auth_string
from .env import server_env
from .health import health, port_free, wait_healthy
from .home import (
    DEFAULT_PORT,
    HOST,
    Layout,
    ServiceError,
    api_url_for,
    private_dir,
    read_json,
    read_pid,
    ui_url_for,
    write_private,
)
from .processes import owned_alive, ownership, prefect_argv, spawn, stop_child


def ensure_server(
    lay: Layout, port: int | None, timeout: float, ui: bool = True
) -> tuple[str, int, int, bool, float | None, str]:
    """Reuse the server a previous ``up`` started under ``lay`` (after checking it is that one and
    enforces its recorded auth string), else start one. Returns (api_url, port, pid, reused,
    seconds_to_healthy, auth_string)."""
    state = read_json(lay.server_json) or {}
    pid = read_pid(lay.server_pid)
    owner, why = ownership(pid, "server", state)
    if owner == "legacy":
        raise ServiceError(
            f"{why}. It was not started by this offclip, which runs the server with authentication "
            f"and records what it starts: if it is yours, stop it (`kill -TERM -- -{pid}`), "
            "then `offclip up`"
        )
    if owner == "ours":
        assert pid is not None  # "ours": a live process of that pid
        return _reuse(lay, state, pid, port, timeout)

    # Nothing (alive) of ours: clear stale files, then start one.
    for p in (lay.server_pid, lay.server_json, lay.env_sh, lay.auth):
        p.unlink(missing_ok=True)
    port = DEFAULT_PORT if port is None else port
    url = api_url_for(port)
    # Prefect's `server start` checks the port as well, but only after its ~3-5 s import, once the
    # secret and the records are written, and it cannot say whose the port is: checked first here.
    if not port_free(port):
        who = "a Prefect server not started by `offclip up` under this home" if health(url) else "another process"
        raise ServiceError(f"port {port} on {HOST} is in use by {who}; choose another with --port")
    lay.home.mkdir(mode=0o700, parents=True, exist_ok=True)  # a new home: owner only
    private_dir(lay.run)  # pid files, start records, the secret
    for d in (lay.prefect_home, lay.logs):
        d.mkdir(parents=True, exist_ok=True)
    auth = new_auth_string()
    write_private(lay.auth, auth + "\n")
    t0 = time.monotonic()
    proc, offset, record = spawn(
        prefect_argv("server", "start", "--host", HOST, "--port", str(port)),
        server_env(lay, port, auth, ui=ui),
        lay.server_log,
        cwd=lay.home,
    )
    write_private(lay.server_pid, f"{proc.pid}\n")
    write_private(
        lay.server_json,
        json.dumps(
            {
                "api_url": url,
                "host": HOST,
                "port": port,
                **record,
                "prefect_home": str(lay.prefect_home),
                "ui_url": ui_url_for(port) if ui else None,
                "auth": "basic",
                "auth_user": AUTH_USER,
                "cors_allowed_origins": ui_url_for(port),
                "csrf_protection": CSRF_PROTECTION,
                "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
            indent=2,
        )
        + "\n",
    )
    try:
        # the timeout covers a new SQLite database's migrations on 2 busy cores (a minute and more)
        wait_healthy(
            url,
            lambda: proc.poll() is None,
            timeout - (time.monotonic() - t0),
            lay.server_log,
            offset,
            "`prefect server start`",
        )
    except BaseException:  # also Ctrl-C: leave nothing half-started behind
        stop_child(proc)
        for p in (lay.server_pid, lay.server_json, lay.auth):
            p.unlink(missing_ok=True)
        raise
    return url, port, proc.pid, False, time.monotonic() - t0, auth


def _reuse(
    lay: Layout, state: dict, pid: int, port: int | None, timeout: float
) -> tuple[str, int, int, bool, float | None, str]:
    """The running server of ours, once it answers and is seen to enforce its recorded secret."""
    if not state.get("port"):
        raise ServiceError(
            f"a server (pid {pid}) from a previous `offclip up` is alive but {lay.server_json} "
            "has no port: run `offclip down` first"
        )
    old_port = int(state["port"])
    url = api_url_for(old_port)
    if port is not None and port != old_port:
        raise ServiceError(
            f"a server from a previous `offclip up` runs under {lay.home} on port {old_port} "
            f"(pid {pid}); use --port {old_port}, or `offclip down` first"
        )
    auth = auth_string(lay.home)
    if not state.get("auth") or not auth:
        raise ServiceError(
            f"the server (pid {pid}) running under {lay.home} was started without authentication "
            "(by an older offclip): anyone on this machine could run code through it. "
            "Run `offclip down`, then `offclip up`"
        )
    # Alive: healthy now, or still starting (a concurrent `up`): wait for it.
    wait_healthy(
        url, lambda: owned_alive(pid, "server", state), timeout, lay.server_log, 0, f"the running server (pid {pid})"
    )
    anonymous, authorised = auth_probe(url, auth)
    if anonymous != 401 or authorised != 200:
        raise ServiceError(
            f"the server (pid {pid}) at {url} does not enforce the auth string recorded in "
            f"{lay.auth} (without it: HTTP {anonymous}, with it: HTTP {authorised}). "
            "Run `offclip down`, then `offclip up`"
        )
    return url, old_port, pid, True, None, auth

"""Where the flows of a direct command (``offclip build-shards``, ``train``, ``evaluate``) run: the
user's server, the project's (``offclip up``), or a temporary one Prefect starts for the run —
and the reaper that stops that temporary server however the run ends.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .auth import api_url, auth_string, new_auth_string
from .home import layout
from .processes import DIRECT_RUN_TOKEN_ENV

#: the start timeout of the temporary server a direct flow run starts when no `offclip up` server
#: runs: a new SQLite database's migrations take ~15 s on 2 idle cores, more under load (Prefect's
#: default, 20 s, fails a first run on a fresh machine)
TEMPORARY_SERVER_TIMEOUT_S = 300


@dataclass
class DirectRun:
    """Where the flows of a direct command (``offclip build-shards``, ``train``, ``evaluate``) run."""

    target: str  # "user" ($PREFECT_API_URL), "project" (`offclip up`'s server) or "temporary"
    api_url: str | None  # None: a temporary server, started by Prefect for this process
    env: dict[str, str]  # the variables set

    def to_text(self) -> str:
        if self.target == "user":
            return f"flows run on the Prefect server at $PREFECT_API_URL ({self.api_url})"
        if self.target == "project":
            return f"flows run on the project's server ({self.api_url}, started by `offclip up`)"
        return (
            "no `offclip up` server is running: Prefect starts a temporary server for this run "
            "(~15 s; `offclip up` keeps one running, with the UI)"
        )


def direct_run_env(home: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> DirectRun:
    """Settings for running flows in this process, to be put into ``os.environ`` *before*
    ``prefect`` is imported (its settings are read once, at import):

    * ``$PREFECT_API_URL`` set by the user: used as it is;
    * else the project's server, when ``offclip up`` runs one under ``home`` (its auth string,
      and its ``PREFECT_HOME``, so the client writes nowhere else);
    * else Prefect's temporary server, with a start timeout that fits a cold start (a new
      SQLite database's migrations outlast Prefect's default 20 s on 2 cores), a fresh auth
      string of its own (Prefect passes the settings to the server it starts, and the client
      sends it), and a token (``OFFCLIP_DIRECT_RUN_TOKEN``) the server inherits, by which
      :func:`use_for_direct_runs`'s reaper finds it when the run is killed.

    Always: Prefect's analytics off (an offline tool must not log errors about phoning home)."""
    environ = dict(os.environ if environ is None else environ)
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false")}
    if environ.get("PREFECT_API_URL"):
        return DirectRun("user", environ["PREFECT_API_URL"], env)
    url = api_url(home, check=True)
    if url:
        env["PREFECT_API_URL"] = url
        env["PREFECT_HOME"] = environ.get("PREFECT_HOME") or str(layout(home).prefect_home)
        auth = auth_string(home)
        if auth:
            env["PREFECT_API_AUTH_STRING"] = auth
        return DirectRun("project", url, env)
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = environ.get(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(TEMPORARY_SERVER_TIMEOUT_S)
    )
    auth = new_auth_string()
    env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"] = auth
    env[DIRECT_RUN_TOKEN_ENV] = secrets.token_hex(16)
    return DirectRun("temporary", None, env)


def use_for_direct_runs(home: str | os.PathLike | None = None) -> DirectRun:
    """:func:`direct_run_env` put into ``os.environ``, for a command that is about to import
    prefect. Where prefect is imported already (a caller that set it up, e.g. under a test
    harness), its settings are the caller's and are left as they are.

    For a temporary server it also starts a *reaper*: a small process (``offclip/stack/_reaper.py``,
    own session, no output) that waits for this process to end, however it ends, then stops the
    temporary server if it is still there. Prefect starts that server (uvicorn) as a plain child
    and stops it only from an ``atexit`` hook, so a run killed with SIGKILL (or dead of a signal
    it does not handle) would leave it serving for good. The reaper knows the server by the token
    it inherited (``/proc/<pid>/environ``) and Prefect's server command line, nothing else."""
    if "prefect" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        return DirectRun("user", PREFECT_API_URL.value(), {})
    run = direct_run_env(home)
    os.environ.update(run.env)
    if run.target == "temporary" and Path("/proc/self/environ").exists():
        start_reaper(os.getpid(), run.env[DIRECT_RUN_TOKEN_ENV])
    return run


def start_reaper(parent: int, token: str) -> subprocess.Popen:
    """Start ``offclip/stack/_reaper.py`` for the process ``parent`` (see :func:`use_for_direct_runs`).
    Detached (its own session: a Ctrl-C or a kill of the run's process group does not take it
    first), its standard streams on /dev/null (it must not hold a caller's output pipe open),
    ``-I -S``: stdlib only, starts in ~20 ms."""
    return subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-S",
            str(Path(__file__).with_name("_reaper.py")),
            str(parent),
            DIRECT_RUN_TOKEN_ENV,
            token,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
    )

"""A one-command local Prefect stack: ``offclip up`` / ``offclip down`` / ``offclip status``.

Everything lives under one project-local *home* (default ``.offclip``)::

    <home>/prefect/          PREFECT_HOME of the server, the worker and `prefect deploy` (SQLite DB here)
    <home>/logs/server.log   server output (appended, one header line per start)
    <home>/logs/worker.log   worker output
    <home>/logs/deploy.log   output of the last `prefect deploy --all`
    <home>/run/server.pid    pid of `prefect server start` (leader of its own process group)
    <home>/run/worker.pid    pid of `prefect worker start`
    <home>/run/server.json   {"api_url", "host", "port", "pid", "starttime", "token", "auth", "ui_url", ...}
    <home>/run/worker.json   {"pid", "name", "pool", "api_url", "starttime", "token", "started_at"}
    <home>/run/auth          the server's basic-auth string, "offclip:<secret>" (mode 0600)
    <home>/env.sh            export PREFECT_API_URL=http://127.0.0.1:PORT/api PREFECT_API_AUTH_STRING=... (0600)

The server requires that auth string on every API request (Prefect's ``server.api.auth_string``;
its websockets check it too), allows cross-origin requests only from its own UI
(``http://127.0.0.1:PORT``) and turns on Prefect's CSRF protection. The secret is made by ``up``
(``secrets.token_urlsafe``) and handed only to its own clients: the worker's and ``prefect
deploy``'s environment, :func:`client_env`, :func:`direct_run_env`, ``offclip wait``/``status``,
and ``env.sh``. ``run/`` is created 0700 and every file in it, like ``env.sh``, 0600 from the start.

The server and the worker are started detached (``start_new_session=True``), so they outlive the
command that started them. ``down`` stops only processes it started: the pid in a pid file must
still have the start time (``/proc/<pid>/stat`` field 22) recorded when it was started, carry the
random token put into its environment (``/proc/<pid>/environ``) and run the prefect command;
anything else is refused, and its pid file kept.

Other offclip code finds the server with :func:`api_url` and :func:`auth_string` (or :func:`client_env`).

Known incompatibility: prefect 3.8.8's server needs ``fastapi<0.151`` — fastapi 0.151–0.154 make
every ``/…/filter`` call answer 422 (``limit: None`` rejected), and fastapi ≥0.155 dropped the
``min_items`` keyword the server still passes to ``Body()``, so it fails at import. ``up`` checks
this first and says how to fix it rather than starting a server that cannot work. It also warns
(without refusing) when sqlalchemy ≥2.1 is installed: the 3.8.8 scheduler service then fails to
insert scheduled runs (``InvalidRequestError: Can't evaluate bulk DML statement``), so deployment
schedules produce no runs, while manual runs (``prefect deployment run``) work.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shlex
import secrets
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

DEFAULT_HOME = ".offclip"
DEFAULT_PORT = 4200
DEFAULT_POOL = "offclip-process"
HOST = "127.0.0.1"
HEALTH_TIMEOUT_S = 120.0
WORKER_TIMEOUT_S = 60.0
DEPLOY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 15.0
AUTH_USER = "offclip"
#: the environment variable carrying the random token a process started by `up` is known by
TOKEN_ENV = "OFFCLIP_PROCESS_TOKEN"
#: the same for the temporary server of a direct run (see :func:`use_for_direct_runs`)
DIRECT_RUN_TOKEN_ENV = "OFFCLIP_DIRECT_RUN_TOKEN"

# Settings a user may have exported that would pull the stack out of its project-local home, or
# weaken it (its auth string, CORS and CSRF settings are offclip's own).
_DROPPED_ENV = ("PREFECT_PROFILE", "PREFECT_PROFILES_PATH", "PREFECT_API_KEY",
                "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL",
                "PREFECT_API_AUTH_STRING", "PREFECT_SERVER_API_AUTH_STRING",
                "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS", "PREFECT_SERVER_CORS_ALLOWED_ORIGINS",
                "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED", "PREFECT_SERVER_CSRF_PROTECTION_ENABLED",
                "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED", TOKEN_ENV, DIRECT_RUN_TOKEN_ENV)


class ServiceError(RuntimeError):
    """Something the user has to act on (port taken, server died, deploy failed, ...)."""


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    home: Path

    @property
    def prefect_home(self) -> Path: return self.home / "prefect"
    @property
    def logs(self) -> Path: return self.home / "logs"
    @property
    def run(self) -> Path: return self.home / "run"
    @property
    def server_log(self) -> Path: return self.logs / "server.log"
    @property
    def worker_log(self) -> Path: return self.logs / "worker.log"
    @property
    def deploy_log(self) -> Path: return self.logs / "deploy.log"
    @property
    def server_pid(self) -> Path: return self.run / "server.pid"
    @property
    def worker_pid(self) -> Path: return self.run / "worker.pid"
    @property
    def server_json(self) -> Path: return self.run / "server.json"
    @property
    def worker_json(self) -> Path: return self.run / "worker.json"
    @property
    def auth(self) -> Path: return self.run / "auth"
    @property
    def env_sh(self) -> Path: return self.home / "env.sh"


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """``home``, else ``$OFFCLIP_HOME``, else ``.offclip`` in the current directory — absolute."""
    return Path(home or os.environ.get("OFFCLIP_HOME") or DEFAULT_HOME).expanduser().resolve()


def layout(home: str | os.PathLike | None = None) -> Layout:
    return Layout(resolve_home(home))


def api_url_for(port: int) -> str:
    return f"http://{HOST}:{port}/api"


def api_url(home: str | os.PathLike | None = None, *, check: bool = False) -> str | None:
    """The API URL of the server ``offclip up`` started under ``home`` (see :func:`resolve_home`),
    or None when none was started there. With ``check=True``, None unless it also answers health.

    Other offclip code uses this to talk to the project's server, e.g. by putting
    ``PREFECT_API_URL`` into a subprocess's environment (:func:`client_env`) or with
    ``prefect.settings.temporary_settings({PREFECT_API_URL: url})``.
    """
    state = _read_json(layout(home).server_json)
    url = state.get("api_url") if state else None
    if url and check and not health(url):
        return None
    return url


def auth_string(home: str | os.PathLike | None = None) -> str | None:
    """The basic-auth string (``offclip:<secret>``) of the server ``offclip up`` started under
    ``home``, or None. Prefect clients take it as ``PREFECT_API_AUTH_STRING``; in the UI's login
    the part after ``offclip:`` is the password."""
    try:
        return layout(home).auth.read_text().strip() or None
    except OSError:
        return None


def client_env(home: str | os.PathLike | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) with PREFECT_API_URL and PREFECT_API_AUTH_STRING
    set to the project's server, when ``offclip up`` started one under ``home``."""
    env = dict(os.environ if base is None else base)
    url = api_url(home)
    if url:
        env["PREFECT_API_URL"] = url
        auth = auth_string(home)
        if auth:
            env["PREFECT_API_AUTH_STRING"] = auth
    return env


#: the start timeout of the temporary server a direct flow run starts when no `offclip up` server
#: runs: a new SQLite database's migrations take ~15 s on 2 idle cores, more under load (Prefect's
#: default, 20 s, fails a first run on a fresh machine)
TEMPORARY_SERVER_TIMEOUT_S = 300


@dataclass
class DirectRun:
    """Where the flows of a direct command (``offclip build-shards``, ``train``, ``evaluate``) run."""
    target: str          # "user" ($PREFECT_API_URL), "project" (`offclip up`'s server) or "temporary"
    api_url: str | None  # None: a temporary server, started by Prefect for this process
    env: dict[str, str]  # the variables set

    def to_text(self) -> str:
        if self.target == "user":
            return f"flows run on the Prefect server at $PREFECT_API_URL ({self.api_url})"
        if self.target == "project":
            return f"flows run on the project's server ({self.api_url}, started by `offclip up`)"
        return ("no `offclip up` server is running: Prefect starts a temporary server for this run "
                "(~15 s; `offclip up` keeps one running, with the UI)")


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
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(TEMPORARY_SERVER_TIMEOUT_S))
    auth = _new_auth_string()
    env["PREFECT_SERVER_API_AUTH_STRING"] = env["PREFECT_API_AUTH_STRING"] = auth
    env[DIRECT_RUN_TOKEN_ENV] = secrets.token_hex(16)
    return DirectRun("temporary", None, env)


def use_for_direct_runs(home: str | os.PathLike | None = None) -> DirectRun:
    """:func:`direct_run_env` put into ``os.environ``, for a command that is about to import
    prefect. Where prefect is imported already (a caller that set it up, e.g. under a test
    harness), its settings are the caller's and are left as they are.

    For a temporary server it also starts a *reaper*: a small process (``offclip/_reaper.py``,
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
    """Start ``offclip/_reaper.py`` for the process ``parent`` (see :func:`use_for_direct_runs`).
    Detached (its own session: a Ctrl-C or a kill of the run's process group does not take it
    first), its standard streams on /dev/null (it must not hold a caller's output pipe open),
    ``-I -S``: stdlib only, starts in ~20 ms."""
    return subprocess.Popen([sys.executable, "-I", "-S", str(Path(__file__).with_name("_reaper.py")),
                             str(parent), DIRECT_RUN_TOKEN_ENV, token],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)


def _new_auth_string() -> str:
    """``offclip:<secret>``: Prefect's basic-auth form ``user:password`` (the UI's login asks for
    the whole string); ``token_urlsafe`` has no ``:``."""
    return f"{AUTH_USER}:{secrets.token_urlsafe(32)}"


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------

@dataclass
class UpResult:
    home: str
    api_url: str
    port: int
    server_pid: int
    server_reused: bool
    server_start_s: float | None       # seconds until /api/health answered (None when reused)
    ui_url: str | None                 # the Prefect UI (None: started with --no-ui)
    pool: str
    pool_created: bool
    deployed: list[str] = field(default_factory=list)   # "flow/deployment" names after deploy
    deploy_note: str = ""
    worker_pid: int | None = None
    worker_name: str | None = None
    worker_reused: bool = False
    env_file: str = ""
    logs: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        srv = (f"reused (pid {self.server_pid})" if self.server_reused
               else f"started (pid {self.server_pid}, healthy after {self.server_start_s:.1f} s)")
        lines = [f"server   {self.api_url}  {srv}",
                 (f"ui       {self.ui_url}  (flow runs and their artifacts: progress, counts, ROC and "
                  "training curves; Deployments: the retrain schedule)" if self.ui_url
                  else "ui       off (--no-ui)"),
                 f"pool     {self.pool} (process): {'created' if self.pool_created else 'exists'}"]
        if self.deployed:
            lines.append(f"deploy   {len(self.deployed)} deployment(s): {', '.join(self.deployed)}")
        if self.deploy_note:
            lines.append(f"deploy   {self.deploy_note}")
        if self.worker_pid:
            lines.append(f"worker   {self.worker_name or '?'} on pool {self.pool}: "
                         f"{'reused' if self.worker_reused else 'started'} (pid {self.worker_pid})")
        else:
            lines.append("worker   not started (--no-worker)")
        lines += [f"warning  {w}" for w in self.warnings]
        lines += [f"auth     basic: every API request needs the auth string (PREFECT_API_AUTH_STRING); "
                  "UI login: paste the whole string, `offclip status --show-secret` prints it",
                  f"logs     {self.logs}",
                  "",
                  "Point Prefect clients at it (PREFECT_API_URL and PREFECT_API_AUTH_STRING):",
                  f"  . {self.env_file}"]
        return "\n".join(lines)


@dataclass
class ProcessStop:
    role: str
    pid: int
    outcome: str          # "terminated" | "killed" | "not running" | "refused: ..."


@dataclass
class DownResult:
    home: str
    stopped: list[ProcessStop] = field(default_factory=list)
    nothing_running: bool = False

    def to_text(self) -> str:
        if self.nothing_running:
            return f"nothing running under {self.home}"
        return "\n".join(f"{s.role:<8} pid {s.pid}: {s.outcome}" for s in self.stopped)


@dataclass
class DeploymentInfo:
    name: str             # "flow/deployment"
    schedules: list[str]
    paused: bool
    work_pool: str | None


@dataclass
class StatusResult:
    home: str
    api_url: str | None
    server_pid: int | None
    server_alive: bool
    server_healthy: bool
    worker_pid: int | None
    worker_alive: bool
    worker_name: str | None
    worker_status: str | None          # the server's view: ONLINE / OFFLINE
    pool: str
    pool_exists: bool | None           # None: server down, unknown
    pool_status: str | None
    ui_url: str | None = None
    auth: str | None = None            # "basic": the server requires the auth string (None: it does not)
    env_file: str | None = None        # PREFECT_API_URL and PREFECT_API_AUTH_STRING, to source
    deployments: list[DeploymentInfo] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.server_healthy

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        if self.server_healthy:
            srv = f"up      {self.api_url} (pid {self.server_pid})"
        elif self.server_alive:
            srv = f"STARTING or UNHEALTHY  {self.api_url} (pid {self.server_pid} alive, /api/health not answering)"
        else:
            srv = "down" + (f" (stale url {self.api_url})" if self.api_url else "")
        if self.worker_alive:
            wrk = f"running (pid {self.worker_pid}, {self.worker_name or '?'}" + \
                  (f", {self.worker_status})" if self.worker_status else ")")
        else:
            wrk = "not running"
        if self.pool_exists is None:
            pool = f"{self.pool}: unknown (server down)"
        else:
            pool = f"{self.pool}: " + (f"present ({self.pool_status})" if self.pool_exists else "MISSING")
        lines = [f"home     {self.home}", f"server   {srv}"]
        if self.server_healthy:
            lines.append(f"ui       {self.ui_url}  (login: the auth string; `offclip status --show-secret`)"
                         if self.ui_url else "ui       off (started with --no-ui)")
            lines.append("auth     basic (PREFECT_API_AUTH_STRING, in " + f"{self.env_file})" if self.auth
                         else "auth     NONE: anyone on this machine can use this server")
        lines += [f"worker   {wrk}", f"pool     {pool}"]
        if self.server_healthy:
            if self.deployments:
                lines.append(f"deployments ({len(self.deployments)}):")
                for d in self.deployments:
                    sched = "; ".join(d.schedules) if d.schedules else "no schedule"
                    lines.append(f"  {d.name:<40} {sched}" + ("  [paused]" if d.paused else "")
                                 + (f"  pool={d.work_pool}" if d.work_pool else ""))
            else:
                lines.append("deployments: none")
        lines += [f"error    {e}" for e in self.errors]
        if self.server_healthy:
            lines += ["", f"export PREFECT_API_URL={self.api_url}"
                      + (f"   # and its auth string: . {self.env_file}" if self.auth else "")]
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------------------------

def _running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie still answers kill(pid, 0))."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2:][:1] not in (b"Z", b"X", b"x")


def _cmdline(pid: int, settle_s: float = 1.0) -> list[str] | None:
    """argv of a running process, or None (gone, zombie, or exiting: its cmdline is empty then).
    A process that has only just been started also reads an empty cmdline for a moment (measured:
    16 % of reads straight after ``subprocess.Popen`` on a loaded machine), so an empty read of a
    live process is retried for up to ``settle_s``: a starting process shows its argv, an exiting
    one becomes a zombie or goes."""
    deadline = time.monotonic() + settle_s
    while _running(pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            return None
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if argv or time.monotonic() > deadline:
            return argv or None
        time.sleep(0.01)
    return None


def is_prefect_command(argv: list[str] | None, *subcommand: str) -> bool:
    """True when argv runs the prefect CLI (``prefect ...``, ``python .../bin/prefect ...`` or
    ``python -m prefect ...``) and, if given, with ``subcommand`` (e.g. ``"server", "start"``)."""
    if not argv:
        return False
    exe = os.path.basename(argv[0])
    if exe == "prefect":
        rest = argv[1:]
    elif exe.startswith("python") and argv[1:3] == ["-m", "prefect"]:
        rest = argv[3:]
    elif exe.startswith("python") and len(argv) > 1 and os.path.basename(argv[1]) == "prefect":
        rest = argv[2:]
    else:
        return False
    words = [a for a in rest if not a.startswith("-")]
    return words[:len(subcommand)] == list(subcommand)


_ROLE_CMD = {"server": ("server", "start"), "worker": ("worker", "start")}


def _starttime(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: when the process started, in clock ticks after boot. Set
    at fork and never changed, so (pid, starttime) names one process of this boot."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # fields 3.. follow the ")" that closes the command name (which may hold spaces or ")")
        return int(stat[stat.rindex(b")") + 2:].split()[22 - 3])
    except (OSError, ValueError, IndexError):
        return None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _has_token(pid: int, token: str, name: str = TOKEN_ENV) -> bool:
    """``name=token`` is in the environment ``pid`` was started with (``/proc/<pid>/environ``,
    readable by the same user only)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return False
    return f"{name}={token}".encode() in entries


def _ownership(pid: int | None, role: str, state: dict | None) -> tuple[str, str]:
    """("ours" | "gone" | "foreign" | "legacy", why). Ours: alive, with the start time and boot
    recorded in ``state`` when `up` started it, the token `up` put into its environment, and
    running ``prefect <role> start``. A command line alone (a look-alike, a reused pid) is not
    enough. "legacy": a prefect ``role`` process under a state file with no start record (an
    offclip from before the records)."""
    if pid is None:
        return "gone", "no pid"
    argv = _cmdline(pid)
    if argv is None:
        return "gone", "not running"
    state = state or {}
    want = f"prefect {' '.join(_ROLE_CMD[role])}"
    shown = f"cmdline: {' '.join(argv)[:120]!r}"
    if state.get("pid") != pid:
        if not state and is_prefect_command(argv, *_ROLE_CMD[role]):
            return "legacy", f"pid {pid} runs {want} but there is no record of starting it ({shown})"
        return "foreign", f"pid {pid} is not a process offclip recorded starting ({shown})"
    if "starttime" not in state or "token" not in state:
        if is_prefect_command(argv, *_ROLE_CMD[role]):
            return "legacy", (f"pid {pid} runs {want} but its record has no start time or token "
                              f"(started by an older offclip?) ({shown})")
        return "foreign", f"pid {pid} is not {want} ({shown})"
    if _starttime(pid) != state["starttime"] or (state.get("boot_id") and state["boot_id"] != _boot_id()):
        return "foreign", f"pid {pid} is another process than the one started (its start time differs; {shown})"
    if not _has_token(pid, state["token"]):
        return "foreign", f"pid {pid} does not carry the token its start put into its environment ({shown})"
    if not is_prefect_command(argv, *_ROLE_CMD[role]):
        return "foreign", f"pid {pid} is not {want} ({shown})"
    return "ours", ""


def _owned_alive(pid: int | None, role: str, state: dict | None) -> bool:
    return _ownership(pid, role, state)[0] == "ours"


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _private_dir(path: Path) -> None:
    """``path`` as a directory only its owner can enter: made 0700 (a new home too); one left by an
    older offclip with a looser mode is tightened."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, atomically; the file is created 0600 (owner only) from the
    start, never readable by others, even for a moment."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our own child (an `up` and a `down` in one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _gone(pid: int) -> bool:
    _reap(pid)
    return not _running(pid)


def _signal(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads (it was started with start_new_session), else the pid."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_process(pid: int, role: str, timeout: float = STOP_TIMEOUT_S, state: dict | None = None) -> str:
    """SIGTERM the process group of ``pid`` if it is the ``role`` process `up` started (recorded in
    ``state``: see :func:`_ownership`), wait, SIGKILL after ``timeout``. Returns what happened;
    never signals anything else."""
    owner, why = _ownership(pid, role, state)
    if owner == "gone":
        return "not running"
    if owner == "legacy":
        return f"refused: {why}; if it is yours, stop it with `kill -TERM -- -{pid}`"
    if owner != "ours":
        return f"refused: {why}"
    return _terminate(pid, timeout)


def _stop_child(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop a process this very process started and has not reaped (its pid cannot have been reused)."""
    if proc.poll() is None:
        _terminate(proc.pid, timeout)
    proc.wait()


def _terminate(pid: int, timeout: float) -> str:
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return "terminated"
        time.sleep(0.1)
    _signal(pid, signal.SIGKILL)
    for _ in range(50):
        if _gone(pid):
            break
        time.sleep(0.1)
    return "killed (did not exit on SIGTERM)"


def _tail(path: Path, start: int = 0, lines: int = 30) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except OSError:
        return "(no log)"
    text = data.decode(errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) or "(log empty)"


def _spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> tuple[subprocess.Popen, int, dict]:
    """Start ``argv`` detached (own session, so own process group), output appended to ``log``.
    Returns the process, the log offset where its output starts, and its start record
    (``pid``, ``starttime``, ``boot_id``, ``token``: put into its environment as $OFFCLIP_PROCESS_TOKEN)
    by which :func:`_ownership` knows it later."""
    log.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    with open(log, "ab") as f:
        f.write(f"\n=== {dt.datetime.now().isoformat(timespec='seconds')} {' '.join(argv)}\n".encode())
        offset = f.tell()
        proc = subprocess.Popen(argv, env={**env, TOKEN_ENV: token}, cwd=cwd, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                preexec_fn=_default_stop_signals)
    record = {"pid": proc.pid, "starttime": _starttime(proc.pid), "boot_id": _boot_id(), "token": token}
    return proc, offset, record


def _default_stop_signals() -> None:
    """In the child, before exec: SIGINT and SIGTERM back to their default action. A command
    started in the background by a script (``offclip up &``, cron, CI) inherits SIGINT *ignored*,
    and Prefect's worker stops by sending itself SIGINT on SIGTERM: it would then never stop, and
    ``offclip down`` would have to kill it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _prefect_argv(*args: str) -> list[str]:
    """The prefect CLI of *this* interpreter (works when the venv is not activated)."""
    return [sys.executable, "-m", "prefect", *args]


# --------------------------------------------------------------------------------------------
# Environment, checks
# --------------------------------------------------------------------------------------------

def ui_url_for(port: int) -> str:
    return f"http://{HOST}:{port}"


def last_ui_url(home: str | os.PathLike | None = None) -> str:
    """The UI of the running server, else the address a new `offclip up` serves it at."""
    return (_read_json(layout(home).server_json) or {}).get("ui_url") or ui_url_for(DEFAULT_PORT)


#: Prefect's CSRF protection on the server `up` starts: state-changing requests need a token from
#: ``GET /api/csrf-token`` (itself behind the auth string). Prefect 3.8.8's clients (worker,
#: ``prefect deploy``, flow runs, offclip's own) and its UI fetch and send it by themselves
#: (``PREFECT_CLIENT_CSRF_SUPPORT_ENABLED``, on by default and set here); tests/test_service.py runs
#: a worker, a deploy-free flow run and the CLI against it.
CSRF_PROTECTION = True


def stack_env(lay: Layout, port: int, base: dict[str, str] | None = None, ui: bool = True,
              auth: str | None = None) -> dict[str, str]:
    """Environment of the worker and `prefect deploy` (and, with :func:`server_env`'s additions,
    the server): project-local PREFECT_HOME, no analytics, the UI (served at ``/``, its pages
    calling this server's API) unless ``ui`` is off, and PREFECT_API_URL and, given ``auth``,
    PREFECT_API_AUTH_STRING for the clients. A user's own auth, CORS and CSRF settings are dropped."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _DROPPED_ENV}
    if auth:
        env["PREFECT_API_AUTH_STRING"] = auth
    env["PREFECT_CLIENT_CSRF_SUPPORT_ENABLED"] = "true"
    env.update({
        "PREFECT_HOME": str(lay.prefect_home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        # the dashboard that offclip's artifacts (progress, counts, ROC and training curves) are
        # made for; off, the server starts ~1 s sooner (no UI files to copy)
        "PREFECT_UI_ENABLED": "true" if ui else "false",
        "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
        "PREFECT_UI_API_URL": api_url_for(port),  # what the UI's pages call (/ui-settings)
        "PREFECT_API_URL": api_url_for(port),
        "PREFECT_WORKER_QUERY_SECONDS": "2",    # scheduled runs start within ~2 s
        "PYTHONUNBUFFERED": "1",
    })
    return env


def server_env(lay: Layout, port: int, auth: str, ui: bool = True, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of `prefect server start`: :func:`stack_env`, plus basic auth on every API
    request (``auth``, "user:password"), cross-origin requests allowed from its own UI's origin
    only (Prefect's default is ``*``), and CSRF protection (:data:`CSRF_PROTECTION`)."""
    env = stack_env(lay, port, base, ui=ui, auth=auth)
    env.pop("PREFECT_API_URL")   # the server serves it; it is the clients' setting
    env.update({
        "PREFECT_SERVER_API_AUTH_STRING": auth,
        "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": ui_url_for(port),
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true" if CSRF_PROTECTION else "false",
    })
    return env


def preflight() -> list[str]:
    """Fail early, clearly, when the stack cannot work in this Python; return warnings for what
    works only in part."""
    if importlib.util.find_spec("prefect") is None:
        raise ServiceError(f"prefect is not installed in {sys.executable}; install the project "
                           "(`pip install -e .` or `make setup`), which pins prefect==3.8.8")
    from packaging.version import Version

    try:
        prefect_v = Version(importlib.metadata.version("prefect"))
        fastapi_v = Version(importlib.metadata.version("fastapi"))
    except importlib.metadata.PackageNotFoundError as exc:
        raise ServiceError(f"{exc.name} is not installed in {sys.executable}; reinstall the project") from exc
    if prefect_v <= Version("3.8.8") and fastapi_v >= Version("0.151"):
        why = ("its server fails at import (fastapi dropped Body(min_items=...))" if fastapi_v >= Version("0.155")
               else "every /filter request the clients send is rejected with 422 (limit: null)")
        raise ServiceError(f"fastapi {fastapi_v} is installed, but prefect {prefect_v}'s server needs fastapi<0.151: "
                           f"with {fastapi_v} {why}. Fix: pip install 'fastapi>=0.139,<0.151' "
                           "(and pin it in pyproject.toml)")
    warnings = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        sqlalchemy_v = Version(importlib.metadata.version("sqlalchemy"))
        if prefect_v <= Version("3.8.8") and sqlalchemy_v >= Version("2.1"):
            warnings.append(f"sqlalchemy {sqlalchemy_v} is installed: prefect {prefect_v}'s scheduler cannot insert "
                            "scheduled runs with it (InvalidRequestError in logs/server.log), so deployment "
                            "schedules create no runs; manual runs work. Fix: pip install 'sqlalchemy[asyncio]>=2.0,<2.1'")
    return warnings


def health(url: str, timeout: float = 2.0) -> bool:
    """True when ``GET <url>/health`` answers 200."""
    import httpx

    try:
        # trust_env=False: a loopback URL must never go through an HTTP(S)_PROXY from the environment.
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            return client.get(url.rstrip("/") + "/health").status_code == 200
    except httpx.HTTPError:
        return False


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)    # as uvicorn does
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _client(url: str, auth: str | None = None) -> Iterator[Any]:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(url, auth_string=auth) as client:
        yield client


def _auth_probe(url: str, auth: str | None, timeout: float = 5.0) -> tuple[int | None, int | None]:
    """HTTP status of ``GET <url>/admin/version`` (status codes, None where it did not answer)
    without credentials, and with ``auth``: an authenticating server answers 401, then 200."""
    import base64

    import httpx

    codes: list[int | None] = []
    with httpx.Client(trust_env=False, timeout=timeout) as client:
        for a in (None, auth):
            headers = {"Authorization": "Basic " + base64.b64encode(a.encode()).decode()} if a else {}
            try:
                codes.append(client.get(url.rstrip("/") + "/admin/version", headers=headers).status_code)
            except httpx.HTTPError:
                codes.append(None)
    return codes[0], codes[1]


# --------------------------------------------------------------------------------------------
# up
# --------------------------------------------------------------------------------------------

def _wait_healthy(url: str, proc_alive, deadline: float, log: Path, offset: int, what: str) -> None:
    while True:
        if health(url, timeout=1.0):
            return
        if not proc_alive():
            raise ServiceError(f"{what} exited before {url}/health answered. Last lines of {log}:\n"
                               + _tail(log, offset))
        if time.monotonic() > deadline:
            raise ServiceError(f"{what} did not answer {url}/health within {HEALTH_TIMEOUT_S:.0f} s. "
                               f"Last lines of {log}:\n" + _tail(log, offset))
        time.sleep(0.25)


def _ensure_server(lay: Layout, port: int | None, timeout: float,
                   ui: bool = True) -> tuple[str, int, int, bool, float | None, str]:
    """(api_url, port, pid, reused, seconds_to_healthy, auth_string)."""
    state = _read_json(lay.server_json) or {}
    pid = _read_pid(lay.server_pid)
    owner, why = _ownership(pid, "server", state)
    if owner == "legacy":
        raise ServiceError(f"{why}. It was not started by this offclip, which runs the server with authentication "
                           f"and records what it starts: if it is yours, stop it (`kill -TERM -- -{pid}`), "
                           "then `offclip up`")
    if owner == "ours" and not state.get("port"):
        raise ServiceError(f"a server (pid {pid}) from a previous `offclip up` is alive but {lay.server_json} "
                           "has no port: run `offclip down` first")
    if owner == "ours":
        old_port = int(state["port"])
        url = api_url_for(old_port)
        if port is not None and port != old_port:
            raise ServiceError(f"a server from a previous `offclip up` runs under {lay.home} on port {old_port} "
                               f"(pid {pid}); use --port {old_port}, or `offclip down` first")
        auth = auth_string(lay.home)
        if not state.get("auth") or not auth:
            raise ServiceError(f"the server (pid {pid}) running under {lay.home} was started without authentication "
                               "(by an older offclip): anyone on this machine could run code through it. "
                               "Run `offclip down`, then `offclip up`")
        # Alive: healthy now, or still starting (a concurrent `up`): wait for it.
        _wait_healthy(url, lambda: _owned_alive(pid, "server", state), time.monotonic() + timeout,
                      lay.server_log, 0, f"the running server (pid {pid})")
        anonymous, authorised = _auth_probe(url, auth)
        if anonymous != 401 or authorised != 200:
            raise ServiceError(f"the server (pid {pid}) at {url} does not enforce the auth string recorded in "
                               f"{lay.auth} (without it: HTTP {anonymous}, with it: HTTP {authorised}). "
                               "Run `offclip down`, then `offclip up`")
        return url, old_port, pid, True, None, auth

    # Nothing (alive) of ours: clear stale files, then start one.
    for p in (lay.server_pid, lay.server_json, lay.env_sh, lay.auth):
        p.unlink(missing_ok=True)
    port = DEFAULT_PORT if port is None else port
    url = api_url_for(port)
    if not _port_free(port):
        who = "a Prefect server not started by `offclip up` under this home" if health(url) else "another process"
        raise ServiceError(f"port {port} on {HOST} is in use by {who}; choose another with --port")
    lay.home.mkdir(mode=0o700, parents=True, exist_ok=True)   # a new home: owner only
    _private_dir(lay.run)                                     # pid files, start records, the secret
    for d in (lay.prefect_home, lay.logs):
        d.mkdir(parents=True, exist_ok=True)
    auth = _new_auth_string()
    _write_atomic(lay.auth, auth + "\n")
    t0 = time.monotonic()
    proc, offset, record = _spawn(_prefect_argv("server", "start", "--host", HOST, "--port", str(port)),
                                  server_env(lay, port, auth, ui=ui), lay.server_log, cwd=lay.home)
    _write_atomic(lay.server_pid, f"{proc.pid}\n")
    _write_atomic(lay.server_json, json.dumps({
        "api_url": url, "host": HOST, "port": port, **record, "prefect_home": str(lay.prefect_home),
        "ui_url": ui_url_for(port) if ui else None, "auth": "basic", "auth_user": AUTH_USER,
        "cors_allowed_origins": ui_url_for(port), "csrf_protection": CSRF_PROTECTION,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}, indent=2) + "\n")
    try:
        _wait_healthy(url, lambda: proc.poll() is None, t0 + timeout, lay.server_log, offset,
                      "`prefect server start`")
    except BaseException:      # also Ctrl-C: leave nothing half-started behind
        _stop_child(proc)
        for p in (lay.server_pid, lay.server_json, lay.auth):
            p.unlink(missing_ok=True)
        raise
    return url, port, proc.pid, False, time.monotonic() - t0, auth


def ensure_pool(url: str, pool: str, auth: str | None = None) -> bool:
    """Create the process work pool ``pool`` unless it exists. True when created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with _client(url, auth) as client:
        try:
            existing = client.read_work_pool(pool)
        except ObjectNotFound:
            existing = None
        if existing is not None:
            if existing.type != "process":
                raise ServiceError(f"work pool {pool!r} exists with type {existing.type!r}, not 'process'")
            return False
        try:
            # The template straight from the installed ProcessWorker: no collections-registry fetch.
            client.create_work_pool(WorkPoolCreate(
                name=pool, type="process",
                base_job_template=ProcessWorker.get_default_base_job_template()))
        except ObjectAlreadyExists:   # created concurrently
            return False
    return True


def _declared_deployments(project: Path) -> list[dict] | None:
    """The `deployments:` of project/prefect.yaml (None when there is no prefect.yaml)."""
    import yaml

    path = project / "prefect.yaml"
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ServiceError(f"{path} is not valid YAML: {exc}") from exc
    return list(data.get("deployments") or [])


def deploy(lay: Layout, port: int, project: Path, timeout: float = DEPLOY_TIMEOUT_S, auth: str | None = None) -> str:
    """``prefect --no-prompt deploy --all`` in ``project``; returns a note. Raises on failure."""
    declared = _declared_deployments(project)
    if declared is None:
        return f"skipped: no prefect.yaml in {project}"
    if not declared:
        return f"skipped: {project / 'prefect.yaml'} declares no deployments"
    lay.logs.mkdir(parents=True, exist_ok=True)
    argv = _prefect_argv("--no-prompt", "deploy", "--all")
    with open(lay.deploy_log, "wb") as f:
        f.write(f"=== {dt.datetime.now().isoformat(timespec='seconds')} {' '.join(argv)} (in {project})\n".encode())
        f.flush()
        try:
            # prefect.yaml's pull step runs flows in this checkout: {{ $OFFCLIP_REPO }}
            env = {**stack_env(lay, port, auth=auth), "OFFCLIP_REPO": str(Path(project).resolve())}
            rc = subprocess.run(argv, env=env, cwd=project, stdin=subprocess.DEVNULL,
                                stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise ServiceError(f"`prefect deploy --all` did not finish within {timeout:.0f} s. "
                               f"Last lines of {lay.deploy_log}:\n{_tail(lay.deploy_log)}") from None
    if rc != 0:
        raise ServiceError(f"`prefect deploy --all` failed (exit {rc}) in {project}. "
                           f"Last lines of {lay.deploy_log}:\n{_tail(lay.deploy_log)}")
    return f"deployed {len(declared)} declared in {project / 'prefect.yaml'} (log {lay.deploy_log})"


def _ensure_worker(lay: Layout, url: str, port: int, pool: str, project: Path,
                   timeout: float, auth: str | None = None, server_reused: bool = False) -> tuple[int, str, bool]:
    """(pid, worker name, reused)."""
    pid = _read_pid(lay.worker_pid)
    state = _read_json(lay.worker_json) or {}
    owner, why = _ownership(pid, "worker", state)
    if owner == "legacy":
        raise ServiceError(f"{why}. If it is yours, stop it (`kill -TERM -- -{pid}`), then `offclip up`")
    if owner == "ours":
        if state.get("pool") not in (None, pool):
            raise ServiceError(f"a worker from a previous `offclip up` serves pool {state['pool']!r} (pid {pid}); "
                               "`offclip down` first to switch pools")
        if server_reused and state.get("api_url") in (None, url):
            return pid, state.get("name", "?"), True
        # ours, but polling a server that is gone (or one started since, with another secret): replace it
        stop_process(pid, "worker", state=state)
    for p in (lay.worker_pid, lay.worker_json):
        p.unlink(missing_ok=True)
    name = f"offclip-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    proc, offset, record = _spawn(_prefect_argv("worker", "start", "--pool", pool, "--type", "process", "--name", name),
                                  stack_env(lay, port, auth=auth), lay.worker_log, cwd=project)
    _write_atomic(lay.worker_pid, f"{proc.pid}\n")
    _write_atomic(lay.worker_json, json.dumps({
        **record, "name": name, "pool": pool, "api_url": url,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}, indent=2) + "\n")
    # Wait until the worker has registered with the pool (its first heartbeat): it is then polling.
    try:
        with _client(url, auth) as client:
            while True:
                if proc.poll() is not None:
                    raise ServiceError(f"`prefect worker start` exited (code {proc.returncode}). "
                                       f"Last lines of {lay.worker_log}:\n{_tail(lay.worker_log, offset)}")
                if any(w.name == name for w in client.read_workers_for_work_pool(pool)):
                    break
                if time.monotonic() - t0 > timeout:
                    raise ServiceError(f"the worker did not register with pool {pool!r} within {timeout:.0f} s. "
                                       f"Last lines of {lay.worker_log}:\n{_tail(lay.worker_log, offset)}")
                time.sleep(0.5)
    except BaseException:
        _stop_child(proc)
        for p in (lay.worker_pid, lay.worker_json):
            p.unlink(missing_ok=True)
        raise
    return proc.pid, name, False


def find_project(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) holding prefect.yaml, else ``start``."""
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "prefect.yaml").is_file():
            return d
    return start


def up(home: str | os.PathLike | None = None, port: int | None = None, pool: str = DEFAULT_POOL, *,
       deploy_flows: bool = True, worker: bool = True, project: str | os.PathLike | None = None,
       timeout: float = HEALTH_TIMEOUT_S, worker_timeout: float = WORKER_TIMEOUT_S, ui: bool = True) -> UpResult:
    """Start (or reuse) the project's server, create the work pool, deploy prefect.yaml, start a worker.

    ``port`` None: the running server's port, or 4200 for a new one. ``ui``: serve the Prefect UI
    at ``http://127.0.0.1:PORT`` (offclip's artifacts are read there). Idempotent: a second call
    reuses the server and the worker a first one started."""
    warnings = preflight()
    lay = layout(home)
    project_dir = Path(project).resolve() if project else find_project()
    url, port, server_pid, reused, elapsed, auth = _ensure_server(lay, port, timeout, ui)
    ui_url = (_read_json(lay.server_json) or {}).get("ui_url")
    if reused and ui and not ui_url:
        warnings.append("the running server was started with --no-ui: `offclip down`, then `offclip up` to serve the UI")
    _write_atomic(lay.env_sh, "# written by `offclip up` (owner-only: it holds the server's secret); source it to\n"
                              "# point Prefect clients at the project server\n"
                              f"export PREFECT_API_URL={shlex.quote(url)}\n"
                              f"export PREFECT_API_AUTH_STRING={shlex.quote(auth)}\n")
    try:
        created = ensure_pool(url, pool, auth)
    except ServiceError:
        raise
    except Exception as exc:   # the client's errors (HTTP status, connection) as one clear message
        raise ServiceError(f"could not read/create work pool {pool!r} at {url}: {exc}") from exc
    result = UpResult(home=str(lay.home), api_url=url, port=port, server_pid=server_pid, server_reused=reused,
                      server_start_s=elapsed, ui_url=ui_url, pool=pool, pool_created=created, env_file=str(lay.env_sh),
                      logs=str(lay.logs), warnings=warnings)
    if deploy_flows:
        result.deploy_note = deploy(lay, port, project_dir, auth=auth)
        if result.deploy_note.startswith("deployed"):
            result.deployed = [d.name for d in list_deployments(url, auth)]
    else:
        result.deploy_note = "skipped (--no-deploy)"
    if worker:
        result.worker_pid, result.worker_name, result.worker_reused = _ensure_worker(
            lay, url, port, pool, project_dir, worker_timeout, auth=auth, server_reused=reused)
    return result


# --------------------------------------------------------------------------------------------
# down
# --------------------------------------------------------------------------------------------

def down(home: str | os.PathLike | None = None, timeout: float = STOP_TIMEOUT_S) -> DownResult:
    """Stop the worker, then the server, that ``up`` started under ``home``; remove their pid files.
    Only a process `up` started is signalled (start time, environment token and command as
    recorded: :func:`_ownership`); any other is left alone, reported as refused, and its pid file
    and record kept (to look at, or to stop it by hand)."""
    lay = layout(home)
    result = DownResult(home=str(lay.home))
    for role, pid_file, extra in (("worker", lay.worker_pid, (lay.worker_json,)),
                                  ("server", lay.server_pid, (lay.server_json, lay.env_sh, lay.auth))):
        pid = _read_pid(pid_file)
        if pid is not None:
            outcome = stop_process(pid, role, timeout, state=_read_json(extra[0]))
            if outcome.startswith("refused"):
                outcome += f" — left running; {pid_file} kept"
                result.stopped.append(ProcessStop(role, pid, outcome))
                continue
            result.stopped.append(ProcessStop(role, pid, outcome))
        for p in (pid_file, *extra):
            p.unlink(missing_ok=True)
    result.nothing_running = all(s.outcome == "not running" for s in result.stopped)
    return result


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------

def _describe_schedule(s: Any) -> str:
    sch = s.schedule
    if getattr(sch, "cron", None):
        text = f"cron '{sch.cron}'" + (f" {sch.timezone}" if getattr(sch, "timezone", None) else "")
    elif getattr(sch, "interval", None) is not None:
        secs = int(sch.interval.total_seconds())
        text = f"every {secs // 3600}h{secs % 3600 // 60:02d}m" if secs >= 3600 else f"every {secs}s"
    elif getattr(sch, "rrule", None):
        text = f"rrule '{sch.rrule}'"
    else:
        text = type(sch).__name__
    return text + ("" if getattr(s, "active", True) else " (inactive)")


def list_deployments(url: str, auth: str | None = None) -> list[DeploymentInfo]:
    with _client(url, auth) as client:
        deployments = client.read_deployments()
        flows = {}
        out = []
        for d in deployments:
            if d.flow_id not in flows:
                flows[d.flow_id] = client.read_flow(d.flow_id).name
            out.append(DeploymentInfo(name=f"{flows[d.flow_id]}/{d.name}",
                                      schedules=[_describe_schedule(s) for s in (d.schedules or [])],
                                      paused=bool(d.paused), work_pool=d.work_pool_name))
    return sorted(out, key=lambda d: d.name)


def status(home: str | os.PathLike | None = None, pool: str = DEFAULT_POOL) -> StatusResult:
    lay = layout(home)
    state = _read_json(lay.server_json) or {}
    wstate = _read_json(lay.worker_json) or {}
    url = state.get("api_url")
    server_pid, worker_pid = _read_pid(lay.server_pid), _read_pid(lay.worker_pid)
    pool = wstate.get("pool") or pool
    auth = auth_string(home)
    st = StatusResult(home=str(lay.home), api_url=url, server_pid=server_pid,
                      server_alive=_owned_alive(server_pid, "server", state), server_healthy=False,
                      worker_pid=worker_pid, worker_alive=_owned_alive(worker_pid, "worker", wstate),
                      worker_name=wstate.get("name"), worker_status=None, pool=pool, pool_exists=None,
                      pool_status=None, ui_url=state.get("ui_url"),
                      auth=state.get("auth") if state.get("auth") and auth else None, env_file=str(lay.env_sh))
    if url and st.server_alive:
        st.server_healthy = health(url)
    if not st.server_healthy:
        return st
    if not st.auth:
        st.errors.append("the server was started without authentication (by an older offclip): "
                         "`offclip down`, then `offclip up`")
    from prefect.exceptions import ObjectNotFound

    try:
        with _client(url, auth) as client:
            try:
                wp = client.read_work_pool(pool)
                st.pool_exists = True
                st.pool_status = getattr(wp.status, "value", wp.status)
                if st.worker_name:
                    for w in client.read_workers_for_work_pool(pool):
                        if w.name == st.worker_name:
                            st.worker_status = getattr(w.status, "value", w.status)
            except ObjectNotFound:
                st.pool_exists = False
        st.deployments = list_deployments(url, auth)
    except Exception as exc:   # report, don't crash: status is what people run when things are wrong
        st.errors.append(f"querying {url}: {exc}")
    return st


# --------------------------------------------------------------------------------------------
# wait: follow chained runs (build-shards → train → evaluate) to their end
# --------------------------------------------------------------------------------------------

@dataclass
class FollowedRun:
    deployment: str       # "flow/deployment"
    state: str            # the run's final state name, or "missing" (never started), or its last state
    run_id: str | None = None
    run_name: str | None = None


def _resolve_url(home: str | os.PathLike | None, url: str | None) -> tuple[str, str | None]:
    """(url, auth string): ``url``, else the server `offclip up` started under ``home``, else
    ``$PREFECT_API_URL``; the auth string of the project's server when it is that one, else
    ``$PREFECT_API_AUTH_STRING``."""
    project = api_url(home, check=not url)
    found = url or project or os.environ.get("PREFECT_API_URL")
    if not found:
        raise RuntimeError(f"no offclip server is running under {resolve_home(home)} and PREFECT_API_URL is not "
                           "set: run `offclip up` first")
    if project and found.rstrip("/") == project.rstrip("/"):
        return found, auth_string(home)
    return found, os.environ.get("PREFECT_API_AUTH_STRING") or None


class _ProgressFollower:
    """The progress artifacts of the followed runs, printed at a steady rate: each unfinished
    one's description every ``every`` seconds, a finished one's once."""

    def __init__(self, every: float) -> None:
        self.every, self.last, self.finished = every, 0.0, set()

    def report(self, client, flow_run_id, echo) -> None:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

        now = time.monotonic()
        due = now - self.last >= self.every
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["progress"])))
        for artifact in sorted(artifacts, key=lambda a: a.created or 0):
            if artifact.id in self.finished or not artifact.description:
                continue
            done = float(artifact.data or 0.0) >= 100.0
            if done or due:
                echo(f"  {artifact.description}")
            if done:
                self.finished.add(artifact.id)
        if due:
            self.last = now


def wait_for_runs(deployments: list[str], home: str | os.PathLike | None = None, timeout: float = 1800.0,
                  poll: float = 3.0, echo=print, run: str | None = None,
                  url: str | None = None, progress_every: float = 30.0) -> list[FollowedRun]:
    """Follow a chain of runs (``offclip/build-shards`` → ``offclip/train`` → ``offclip/evaluate``)
    to its end, run by run. While a run is running, its progress artifacts (what trains, the
    step, the loss, the time left) are printed every ``progress_every`` seconds, and once more
    when each finishes: what a person waiting reads, not Prefect's event stream.

    The first run is ``run`` (a flow run id of the first deployment), else that deployment's
    newest run (waited for while there is none). Each next run is the one the run before it
    *created* (``run_deployment`` inside a flow links the new run to its parent): asked of the
    server with a filter on deployment and parent run, never guessed from recent runs. When a run
    ends without having started the next one, the rest are ``missing`` at once (no waiting out
    the timeout). Returns one :class:`FollowedRun` per deployment, in order."""
    from uuid import UUID

    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterParentFlowRunId,
    )
    from prefect.client.schemas.sorting import FlowRunSort
    from prefect.exceptions import ObjectNotFound

    url, auth = _resolve_url(home, url)
    deadline = time.monotonic() + timeout
    followed: list[FollowedRun] = []
    with _client(url, auth) as client:
        ids = {}
        for name in deployments:
            try:
                ids[name] = client.read_deployment_by_name(name).id
            except ObjectNotFound:
                raise ValueError(f"deployment {name!r} does not exist on {url} (`offclip up` deploys prefect.yaml)") from None

        def newest(name: str, parent) -> Any:
            flt = FlowRunFilter(deployment_id=FlowRunFilterDeploymentId(any_=[ids[name]]))
            if parent is not None:
                flt.parent_flow_run_id = FlowRunFilterParentFlowRunId(any_=[parent.id])
            runs = client.read_flow_runs(flow_run_filter=flt, sort=FlowRunSort.EXPECTED_START_TIME_DESC, limit=1)
            return runs[0] if runs else None

        progress = _ProgressFollower(progress_every)
        parent = None
        for position, name in enumerate(deployments):
            if parent is not None and not (parent.state and parent.state.is_completed()):
                # the run before did not complete: nothing after it is waited for
                followed.append(FollowedRun(name, "missing"))
                echo(f"{name}: not followed (the {deployments[position - 1]} run {parent.name} is "
                     f"{parent.state.name if parent.state else 'without a state'})")
                continue
            current, last = None, None
            if position == 0 and run is not None:
                current = client.read_flow_run(UUID(str(run)))
                if current.deployment_id != ids[name]:
                    raise ValueError(f"flow run {run} is not a run of {name}")
            while True:
                if current is None:
                    current = newest(name, parent)
                    if current is None and parent is not None:
                        parent = client.read_flow_run(parent.id)
                        if parent.state and parent.state.is_final():
                            current = newest(name, parent)  # created just before the parent ended?
                            if current is None:
                                break  # the run before ended without starting this one
                else:
                    current = client.read_flow_run(current.id)
                state = current.state.name if current and current.state else "missing"
                if state != last:
                    echo(f"{name}: {state}" + (f" (flow run {current.name}, {current.id})" if current else ""))
                    last = state
                if current is not None and (state == "Running" or (current.state and current.state.is_final())):
                    progress.report(client, current.id, echo)  # at the end too: the lines of what finished
                if (current and current.state and current.state.is_final()) or time.monotonic() > deadline:
                    break
                time.sleep(poll)
            if current is None:
                echo(f"{name}: missing" + (f" (the {deployments[position - 1]} run {parent.name} did not start one)"
                                           if parent is not None else ""))
            followed.append(FollowedRun(name, current.state.name if current and current.state else "missing",
                                        str(current.id) if current else None, current.name if current else None))
            parent = current
            if current is None:
                parent = None
                for rest in deployments[position + 1:]:
                    followed.append(FollowedRun(rest, "missing"))
                    echo(f"{rest}: missing")
                break
    return followed

"""A one-command local Prefect stack: ``offclip up`` / ``offclip down`` / ``offclip status``.

Everything lives under one project-local *home* (default ``.offclip``)::

    <home>/prefect/          PREFECT_HOME of the server, the worker and `prefect deploy` (SQLite DB here)
    <home>/logs/server.log   server output (appended, one header line per start)
    <home>/logs/worker.log   worker output
    <home>/logs/deploy.log   output of the last `prefect deploy --all`
    <home>/run/server.pid    pid of `prefect server start` (leader of its own process group)
    <home>/run/worker.pid    pid of `prefect worker start`
    <home>/run/server.json   {"api_url", "host", "port", "pid", "prefect_home", "ui_url", "started_at"}
    <home>/run/worker.json   {"pid", "name", "pool", "started_at"}
    <home>/env.sh            export PREFECT_API_URL=http://127.0.0.1:PORT/api

The server and the worker are started detached (``start_new_session=True``), so they outlive the
command that started them; ``down`` stops exactly the processes named in the pid files, and only
after ``/proc/<pid>/cmdline`` shows they are still the prefect commands it started.

Other offclip code finds the server with :func:`api_url` (or :func:`client_env`).

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

# Settings a user may have exported that would pull the stack out of its project-local home.
_DROPPED_ENV = ("PREFECT_PROFILE", "PREFECT_PROFILES_PATH", "PREFECT_API_KEY",
                "PREFECT_API_DATABASE_CONNECTION_URL", "PREFECT_SERVER_DATABASE_CONNECTION_URL")


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


def client_env(home: str | os.PathLike | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """A copy of ``base`` (default ``os.environ``) with PREFECT_API_URL set to the project's server,
    when ``offclip up`` started one under ``home``."""
    env = dict(os.environ if base is None else base)
    url = api_url(home)
    if url:
        env["PREFECT_API_URL"] = url
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
    * else the project's server, when ``offclip up`` runs one under ``home`` (and its
      ``PREFECT_HOME``, so the client writes nowhere else);
    * else Prefect's temporary server, with a start timeout that fits a cold start (a new
      SQLite database's migrations outlast Prefect's default 20 s on 2 cores).

    Always: Prefect's analytics off (an offline tool must not log errors about phoning home)."""
    environ = dict(os.environ if environ is None else environ)
    env = {"PREFECT_SERVER_ANALYTICS_ENABLED": environ.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false")}
    if environ.get("PREFECT_API_URL"):
        return DirectRun("user", environ["PREFECT_API_URL"], env)
    url = api_url(home, check=True)
    if url:
        env["PREFECT_API_URL"] = url
        env["PREFECT_HOME"] = environ.get("PREFECT_HOME") or str(layout(home).prefect_home)
        return DirectRun("project", url, env)
    env["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = environ.get(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(TEMPORARY_SERVER_TIMEOUT_S))
    return DirectRun("temporary", None, env)


def use_for_direct_runs(home: str | os.PathLike | None = None) -> DirectRun:
    """:func:`direct_run_env` put into ``os.environ``, for a command that is about to import
    prefect. Where prefect is imported already (a caller that set it up, e.g. under a test
    harness), its settings are the caller's and are left as they are."""
    if "prefect" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        return DirectRun("user", PREFECT_API_URL.value(), {})
    run = direct_run_env(home)
    os.environ.update(run.env)
    return run


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
        lines += [f"logs     {self.logs}",
                  "",
                  "Point Prefect clients at it (also in " + self.env_file + "):",
                  f"  export PREFECT_API_URL={self.api_url}"]
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
            lines.append(f"ui       {self.ui_url}" if self.ui_url else "ui       off (started with --no-ui)")
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
            lines += ["", f"export PREFECT_API_URL={self.api_url}"]
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


def _owned_alive(pid: int | None, role: str) -> bool:
    return pid is not None and is_prefect_command(_cmdline(pid), *_ROLE_CMD[role])


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


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
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


def stop_process(pid: int, role: str, timeout: float = STOP_TIMEOUT_S) -> str:
    """SIGTERM the process group of ``pid`` if it is still the prefect ``role`` command, wait,
    SIGKILL after ``timeout``. Returns what happened; never signals anything else."""
    argv = _cmdline(pid)
    if argv is None:
        return "not running"
    if not is_prefect_command(argv, *_ROLE_CMD[role]):
        return f"refused: pid {pid} is not `prefect {' '.join(_ROLE_CMD[role])}` (cmdline: {' '.join(argv)[:120]!r})"
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


def _spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> tuple[subprocess.Popen, int]:
    """Start ``argv`` detached (own session, so own process group), output appended to ``log``.
    Returns the process and the log offset where its output starts."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        f.write(f"\n=== {dt.datetime.now().isoformat(timespec='seconds')} {' '.join(argv)}\n".encode())
        offset = f.tell()
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                                preexec_fn=_default_stop_signals)
    return proc, offset


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


def stack_env(lay: Layout, port: int, base: dict[str, str] | None = None, ui: bool = True) -> dict[str, str]:
    """Environment of the server, the worker and `prefect deploy`: project-local PREFECT_HOME,
    no analytics, the UI (served at ``/``, its pages calling this server's API) unless ``ui`` is
    off, and PREFECT_API_URL for the clients."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _DROPPED_ENV}
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
def _client(url: str) -> Iterator[Any]:
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(url) as client:
        yield client


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
                   ui: bool = True) -> tuple[str, int, int, bool, float | None]:
    """(api_url, port, pid, reused, seconds_to_healthy)."""
    state = _read_json(lay.server_json) or {}
    pid = _read_pid(lay.server_pid)
    if _owned_alive(pid, "server") and not state.get("port"):
        raise ServiceError(f"a server (pid {pid}) from a previous `offclip up` is alive but {lay.server_json} "
                           "is missing, so its port is unknown: run `offclip down` first")
    if _owned_alive(pid, "server"):
        old_port = int(state["port"])
        url = api_url_for(old_port)
        if port is not None and port != old_port:
            raise ServiceError(f"a server from a previous `offclip up` runs under {lay.home} on port {old_port} "
                               f"(pid {pid}); use --port {old_port}, or `offclip down` first")
        # Alive: healthy now, or still starting (a concurrent `up`): wait for it.
        _wait_healthy(url, lambda: _owned_alive(pid, "server"), time.monotonic() + timeout,
                      lay.server_log, 0, f"the running server (pid {pid})")
        return url, old_port, pid, True, None

    # Nothing (alive) of ours: clear stale files, then start one.
    for p in (lay.server_pid, lay.server_json, lay.env_sh):
        p.unlink(missing_ok=True)
    port = DEFAULT_PORT if port is None else port
    url = api_url_for(port)
    if not _port_free(port):
        who = "a Prefect server not started by `offclip up` under this home" if health(url) else "another process"
        raise ServiceError(f"port {port} on {HOST} is in use by {who}; choose another with --port")
    for d in (lay.prefect_home, lay.logs, lay.run):
        d.mkdir(parents=True, exist_ok=True)
    env = stack_env(lay, port, ui=ui)
    env.pop("PREFECT_API_URL")   # the server serves it; it is the clients' setting
    t0 = time.monotonic()
    proc, offset = _spawn(_prefect_argv("server", "start", "--host", HOST, "--port", str(port)),
                          env, lay.server_log, cwd=lay.home)
    _write_atomic(lay.server_pid, f"{proc.pid}\n")
    _write_atomic(lay.server_json, json.dumps({
        "api_url": url, "host": HOST, "port": port, "pid": proc.pid, "prefect_home": str(lay.prefect_home),
        "ui_url": ui_url_for(port) if ui else None,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}, indent=2) + "\n")
    try:
        _wait_healthy(url, lambda: proc.poll() is None, t0 + timeout, lay.server_log, offset,
                      "`prefect server start`")
    except BaseException:      # also Ctrl-C: leave nothing half-started behind
        if proc.poll() is None:
            stop_process(proc.pid, "server", timeout=5)
        proc.wait()
        for p in (lay.server_pid, lay.server_json):
            p.unlink(missing_ok=True)
        raise
    return url, port, proc.pid, False, time.monotonic() - t0


def ensure_pool(url: str, pool: str) -> bool:
    """Create the process work pool ``pool`` unless it exists. True when created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with _client(url) as client:
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


def deploy(lay: Layout, port: int, project: Path, timeout: float = DEPLOY_TIMEOUT_S) -> str:
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
            env = {**stack_env(lay, port), "OFFCLIP_REPO": str(Path(project).resolve())}
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
                   timeout: float) -> tuple[int, str, bool]:
    """(pid, worker name, reused)."""
    pid = _read_pid(lay.worker_pid)
    state = _read_json(lay.worker_json) or {}
    if _owned_alive(pid, "worker"):
        if state.get("pool") not in (None, pool):
            raise ServiceError(f"a worker from a previous `offclip up` serves pool {state['pool']!r} (pid {pid}); "
                               "`offclip down` first to switch pools")
        if state.get("api_url") in (None, url):
            return pid, state.get("name", "?"), True
        stop_process(pid, "worker")     # ours, but polling a server that is gone: replace it
    for p in (lay.worker_pid, lay.worker_json):
        p.unlink(missing_ok=True)
    name = f"offclip-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    proc, offset = _spawn(_prefect_argv("worker", "start", "--pool", pool, "--type", "process", "--name", name),
                          stack_env(lay, port), lay.worker_log, cwd=project)
    _write_atomic(lay.worker_pid, f"{proc.pid}\n")
    _write_atomic(lay.worker_json, json.dumps({
        "pid": proc.pid, "name": name, "pool": pool, "api_url": url,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}, indent=2) + "\n")
    # Wait until the worker has registered with the pool (its first heartbeat): it is then polling.
    try:
        with _client(url) as client:
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
        if proc.poll() is None:
            stop_process(proc.pid, "worker", timeout=5)
        proc.wait()
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
    url, port, server_pid, reused, elapsed = _ensure_server(lay, port, timeout, ui)
    ui_url = (_read_json(lay.server_json) or {}).get("ui_url")
    if reused and ui and not ui_url:
        warnings.append("the running server was started with --no-ui: `offclip down`, then `offclip up` to serve the UI")
    _write_atomic(lay.env_sh, f"# written by `offclip up`; source it to point Prefect clients at the project server\n"
                              f"export PREFECT_API_URL={url}\n")
    try:
        created = ensure_pool(url, pool)
    except ServiceError:
        raise
    except Exception as exc:   # the client's errors (HTTP status, connection) as one clear message
        raise ServiceError(f"could not read/create work pool {pool!r} at {url}: {exc}") from exc
    result = UpResult(home=str(lay.home), api_url=url, port=port, server_pid=server_pid, server_reused=reused,
                      server_start_s=elapsed, ui_url=ui_url, pool=pool, pool_created=created, env_file=str(lay.env_sh),
                      logs=str(lay.logs), warnings=warnings)
    if deploy_flows:
        result.deploy_note = deploy(lay, port, project_dir)
        if result.deploy_note.startswith("deployed"):
            result.deployed = [d.name for d in list_deployments(url)]
    else:
        result.deploy_note = "skipped (--no-deploy)"
    if worker:
        result.worker_pid, result.worker_name, result.worker_reused = _ensure_worker(
            lay, url, port, pool, project_dir, worker_timeout)
    return result


# --------------------------------------------------------------------------------------------
# down
# --------------------------------------------------------------------------------------------

def down(home: str | os.PathLike | None = None, timeout: float = STOP_TIMEOUT_S) -> DownResult:
    """Stop the worker, then the server, that ``up`` started under ``home``; remove their pid files.
    A pid whose /proc cmdline is not the matching prefect command is left alone (reported as
    refused) and its pid file removed as stale."""
    lay = layout(home)
    result = DownResult(home=str(lay.home))
    for role, pid_file, extra in (("worker", lay.worker_pid, (lay.worker_json,)),
                                  ("server", lay.server_pid, (lay.server_json, lay.env_sh))):
        pid = _read_pid(pid_file)
        if pid is not None:
            result.stopped.append(ProcessStop(role, pid, stop_process(pid, role, timeout)))
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


def list_deployments(url: str) -> list[DeploymentInfo]:
    with _client(url) as client:
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
    st = StatusResult(home=str(lay.home), api_url=url, server_pid=server_pid,
                      server_alive=_owned_alive(server_pid, "server"), server_healthy=False,
                      worker_pid=worker_pid, worker_alive=_owned_alive(worker_pid, "worker"),
                      worker_name=wstate.get("name"), worker_status=None, pool=pool, pool_exists=None,
                      pool_status=None, ui_url=state.get("ui_url"))
    if url and st.server_alive:
        st.server_healthy = health(url)
    if not st.server_healthy:
        return st
    from prefect.exceptions import ObjectNotFound

    try:
        with _client(url) as client:
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
        st.deployments = list_deployments(url)
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


def _resolve_url(home: str | os.PathLike | None, url: str | None) -> str:
    """``url``, else the server `offclip up` started under ``home``, else ``$PREFECT_API_URL``."""
    if url:
        return url
    found = api_url(home, check=True) or os.environ.get("PREFECT_API_URL")
    if not found:
        raise RuntimeError(f"no offclip server is running under {resolve_home(home)} and PREFECT_API_URL is not "
                           "set: run `offclip up` first")
    return found


def wait_for_runs(deployments: list[str], home: str | os.PathLike | None = None, timeout: float = 1800.0,
                  poll: float = 3.0, echo=print, run: str | None = None,
                  url: str | None = None) -> list[FollowedRun]:
    """Follow a chain of runs (``offclip/build-shards`` → ``offclip/train`` → ``offclip/evaluate``)
    to its end, run by run.

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

    url = _resolve_url(home, url)
    deadline = time.monotonic() + timeout
    followed: list[FollowedRun] = []
    with _client(url) as client:
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

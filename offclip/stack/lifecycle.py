"""``offclip up`` and ``offclip down``: the stack's pieces in order, and what each did."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .auth import write_env_sh
from .deploy import deploy, list_deployments
from .health import preflight
from .home import (
    DEFAULT_POOL,
    HEALTH_TIMEOUT_S,
    STOP_TIMEOUT_S,
    WORKER_TIMEOUT_S,
    ServiceError,
    find_project,
    layout,
    read_json,
    read_pid,
)
from .processes import stop_process
from .server import ensure_server
from .worker import ensure_pool, ensure_worker


@dataclass
class UpResult:
    home: str
    api_url: str
    port: int
    server_pid: int
    server_reused: bool
    server_start_s: float | None  # seconds until /api/health answered (None when reused)
    ui_url: str | None  # the Prefect UI (None: started with --no-ui)
    pool: str
    pool_created: bool
    deployed: list[str] = field(default_factory=list)  # "flow/deployment" names after deploy
    deploy_note: str = ""
    worker_pid: int | None = None
    worker_name: str | None = None
    worker_reused: bool = False
    env_file: str = ""
    logs: str = ""
    warnings: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        srv = (
            f"reused (pid {self.server_pid})"
            if self.server_reused
            else f"started (pid {self.server_pid}, healthy after {self.server_start_s:.1f} s)"
        )
        lines = [
            f"server   {self.api_url}  {srv}",
            (
                f"ui       {self.ui_url}  (flow runs and their artifacts: progress, counts, ROC and "
                "training curves; Deployments: the retrain schedule)"
                if self.ui_url
                else "ui       off (--no-ui)"
            ),
            f"pool     {self.pool} (process): {'created' if self.pool_created else 'exists'}",
        ]
        if self.deployed:
            lines.append(f"deploy   {len(self.deployed)} deployment(s): {', '.join(self.deployed)}")
        if self.deploy_note:
            lines.append(f"deploy   {self.deploy_note}")
        if self.worker_pid:
            lines.append(
                f"worker   {self.worker_name or '?'} on pool {self.pool}: "
                f"{'reused' if self.worker_reused else 'started'} (pid {self.worker_pid})"
            )
        else:
            lines.append("worker   not started (--no-worker)")
        lines += [f"warning  {w}" for w in self.warnings]
        lines += [
            "auth     basic: every API request needs the auth string (PREFECT_API_AUTH_STRING); "
            "UI login: paste the whole string, `offclip status --show-secret` prints it",
            f"logs     {self.logs}",
            "",
            "Point Prefect clients at it (PREFECT_API_URL and PREFECT_API_AUTH_STRING):",
            f"  . {self.env_file}",
        ]
        return "\n".join(lines)


@dataclass
class ProcessStop:
    role: str
    pid: int
    outcome: str  # "terminated" | "killed" | "not running" | "refused: ..."


@dataclass
class DownResult:
    home: str
    stopped: list[ProcessStop] = field(default_factory=list)
    nothing_running: bool = False

    def to_text(self) -> str:
        if self.nothing_running:
            return f"nothing running under {self.home}"
        return "\n".join(f"{s.role:<8} pid {s.pid}: {s.outcome}" for s in self.stopped)


def up(
    home: str | os.PathLike | None = None,
    port: int | None = None,
    pool: str = DEFAULT_POOL,
    *,
    deploy_flows: bool = True,
    worker: bool = True,
    project: str | os.PathLike | None = None,
    timeout: float = HEALTH_TIMEOUT_S,
    worker_timeout: float = WORKER_TIMEOUT_S,
    ui: bool = True,
) -> UpResult:
    """Start (or reuse) the project's server, create the work pool, deploy prefect.yaml, start a worker.

    ``port`` None: the running server's port, or 4200 for a new one. ``ui``: serve the Prefect UI
    at ``http://127.0.0.1:PORT`` (offclip's artifacts are read there). Idempotent: a second call
    reuses the server and the worker a first one started."""
    warnings = preflight()
    lay = layout(home)
    project_dir = Path(project).resolve() if project else find_project()
    url, port, server_pid, reused, elapsed, auth = ensure_server(lay, port, timeout, ui)
    ui_url = (read_json(lay.server_json) or {}).get("ui_url")
    if reused and ui and not ui_url:
        warnings.append(
            "the running server was started with --no-ui: `offclip down`, then `offclip up` to serve the UI"
        )
    write_env_sh(lay.env_sh, url, auth)
    try:
        created = ensure_pool(url, pool, auth)
    except ServiceError:
        raise
    except Exception as exc:  # the client's errors (HTTP status, connection) as one clear message
        raise ServiceError(f"could not read/create work pool {pool!r} at {url}: {exc}") from exc
    result = UpResult(
        home=str(lay.home),
        api_url=url,
        port=port,
        server_pid=server_pid,
        server_reused=reused,
        server_start_s=elapsed,
        ui_url=ui_url,
        pool=pool,
        pool_created=created,
        env_file=str(lay.env_sh),
        logs=str(lay.logs),
        warnings=warnings,
    )
    if deploy_flows:
        result.deploy_note = deploy(lay, port, project_dir, auth=auth)
        if result.deploy_note.startswith("deployed"):
            result.deployed = [d.name for d in list_deployments(url, auth)]
    else:
        result.deploy_note = "skipped (--no-deploy)"
    if worker:
        result.worker_pid, result.worker_name, result.worker_reused = ensure_worker(
            lay, url, port, pool, project_dir, worker_timeout, auth=auth, server_reused=reused
        )
    return result


def down(home: str | os.PathLike | None = None, timeout: float = STOP_TIMEOUT_S) -> DownResult:
    """Stop the worker, then the server, that ``up`` started under ``home``; remove their pid files.
    Only a process `up` started is signalled (start time, environment token and command as
    recorded: :func:`.processes.ownership`); any other is left alone, reported as refused, and its
    pid file and record kept (to look at, or to stop it by hand)."""
    lay = layout(home)
    result = DownResult(home=str(lay.home))
    for role, pid_file, extra in (
        ("worker", lay.worker_pid, (lay.worker_json,)),
        ("server", lay.server_pid, (lay.server_json, lay.env_sh, lay.auth)),
    ):
        pid = read_pid(pid_file)
        if pid is not None:
            outcome = stop_process(pid, role, timeout, state=read_json(extra[0]))
            if outcome.startswith("refused"):
                result.stopped.append(ProcessStop(role, pid, outcome + f" — left running; {pid_file} kept"))
                continue
            result.stopped.append(ProcessStop(role, pid, outcome))
        for p in (pid_file, *extra):
            p.unlink(missing_ok=True)
    result.nothing_running = all(s.outcome == "not running" for s in result.stopped)
    return result

"""``offclip status``: the stack's processes (checked against their start records), the server's
health, and what the server holds (pool, worker, deployments).

offclip's own, not ``prefect server status``: that asks only whether ``$PREFECT_API_URL``
answers; this also tells a live but unhealthy server from a dead one, checks that the processes
are the ones `up` started, and reads the pool, the worker's heartbeat and the deployments.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Any

from .auth import auth_string, client
from .deploy import DeploymentInfo, list_deployments
from .health import health
from .home import DEFAULT_POOL, layout, read_json, read_pid
from .processes import owned_alive


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
    worker_status: str | None  # the server's view: ONLINE / OFFLINE
    pool: str
    pool_exists: bool | None  # None: server down, unknown
    pool_status: str | None
    ui_url: str | None = None
    auth: str | None = None  # "basic": the server requires the auth string (None: it does not)
    env_file: str | None = None  # PREFECT_API_URL and PREFECT_API_AUTH_STRING, to source
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
            wrk = f"running (pid {self.worker_pid}, {self.worker_name or '?'}" + (
                f", {self.worker_status})" if self.worker_status else ")"
            )
        else:
            wrk = "not running"
        if self.pool_exists is None:
            pool = f"{self.pool}: unknown (server down)"
        else:
            pool = f"{self.pool}: " + (f"present ({self.pool_status})" if self.pool_exists else "MISSING")
        lines = [f"home     {self.home}", f"server   {srv}"]
        if self.server_healthy:
            lines.append(
                f"ui       {self.ui_url}  (login: the auth string; `offclip status --show-secret`)"
                if self.ui_url
                else "ui       off (started with --no-ui)"
            )
            lines.append(
                "auth     basic (PREFECT_API_AUTH_STRING, in " + f"{self.env_file})"
                if self.auth
                else "auth     NONE: anyone on this machine can use this server"
            )
        lines += [f"worker   {wrk}", f"pool     {pool}"]
        if self.server_healthy:
            if self.deployments:
                lines.append(f"deployments ({len(self.deployments)}):")
                for d in self.deployments:
                    sched = "; ".join(d.schedules) if d.schedules else "no schedule"
                    lines.append(
                        f"  {d.name:<40} {sched}"
                        + ("  [paused]" if d.paused else "")
                        + (f"  pool={d.work_pool}" if d.work_pool else "")
                    )
            else:
                lines.append("deployments: none")
        lines += [f"error    {e}" for e in self.errors]
        if self.server_healthy:
            lines += [
                "",
                f"export PREFECT_API_URL={self.api_url}"
                + (f"   # and its auth string: . {self.env_file}" if self.auth else ""),
            ]
        return "\n".join(lines)


def status(home: str | os.PathLike | None = None, pool: str = DEFAULT_POOL) -> StatusResult:
    lay = layout(home)
    state = read_json(lay.server_json) or {}
    wstate = read_json(lay.worker_json) or {}
    url = state.get("api_url")
    server_pid, worker_pid = read_pid(lay.server_pid), read_pid(lay.worker_pid)
    pool = wstate.get("pool") or pool
    auth = auth_string(home)
    st = StatusResult(
        home=str(lay.home),
        api_url=url,
        server_pid=server_pid,
        server_alive=owned_alive(server_pid, "server", state),
        server_healthy=False,
        worker_pid=worker_pid,
        worker_alive=owned_alive(worker_pid, "worker", wstate),
        worker_name=wstate.get("name"),
        worker_status=None,
        pool=pool,
        pool_exists=None,
        pool_status=None,
        ui_url=state.get("ui_url"),
        auth=state.get("auth") if state.get("auth") and auth else None,
        env_file=str(lay.env_sh),
    )
    if url and st.server_alive:
        st.server_healthy = health(url)
    if not st.server_healthy or not url:  # (healthy only with a url)
        return st
    if not st.auth:
        st.errors.append(
            "the server was started without authentication (by an older offclip): `offclip down`, then `offclip up`"
        )
    from prefect.exceptions import ObjectNotFound

    try:
        with client(url, auth) as c:
            try:
                wp = c.read_work_pool(pool)
                st.pool_exists = True
                st.pool_status = getattr(wp.status, "value", wp.status)
                if st.worker_name:
                    for w in c.read_workers_for_work_pool(pool):
                        if w.name == st.worker_name:
                            st.worker_status = getattr(w.status, "value", w.status)
            except ObjectNotFound:
                st.pool_exists = False
        st.deployments = list_deployments(url, auth)
    except Exception as exc:  # report, don't crash: status is what people run when things are wrong
        st.errors.append(f"querying {url}: {exc}")
    return st

"""prefect.yaml's deployments: Prefect's own ``prefect --no-prompt deploy --all``, run in the
project with the stack's environment, and what the server then holds.

offclip adds only what the command lacks: a note instead of an error when there is nothing to
deploy (no prefect.yaml, or one declaring no deployments), a timeout, the output kept in
``logs/deploy.log`` and its last lines in the error, and ``$OFFCLIP_REPO`` for the pull step.
"""

from __future__ import annotations

import datetime as dt
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .auth import client
from .env import stack_env
from .home import DEPLOY_TIMEOUT_S, Layout, ServiceError, tail
from .processes import prefect_argv


@dataclass
class DeploymentInfo:
    name: str  # "flow/deployment"
    schedules: list[str]
    paused: bool
    work_pool: str | None


def declared_deployments(project: Path) -> list[dict] | None:
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
    declared = declared_deployments(project)
    if declared is None:
        return f"skipped: no prefect.yaml in {project}"
    if not declared:
        return f"skipped: {project / 'prefect.yaml'} declares no deployments"
    lay.logs.mkdir(parents=True, exist_ok=True)
    argv = prefect_argv("--no-prompt", "deploy", "--all")
    with open(lay.deploy_log, "wb") as f:
        f.write(f"=== {dt.datetime.now().isoformat(timespec='seconds')} {' '.join(argv)} (in {project})\n".encode())
        f.flush()
        try:
            # prefect.yaml's pull step runs flows in this checkout: {{ $OFFCLIP_REPO }}
            env = {**stack_env(lay, port, auth=auth), "OFFCLIP_REPO": str(Path(project).resolve())}
            rc = subprocess.run(
                argv,
                env=env,
                cwd=project,
                stdin=subprocess.DEVNULL,
                stdout=f,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            ).returncode
        except subprocess.TimeoutExpired:
            raise ServiceError(
                f"`prefect deploy --all` did not finish within {timeout:.0f} s. "
                f"Last lines of {lay.deploy_log}:\n{tail(lay.deploy_log)}"
            ) from None
    if rc != 0:
        raise ServiceError(
            f"`prefect deploy --all` failed (exit {rc}) in {project}. "
            f"Last lines of {lay.deploy_log}:\n{tail(lay.deploy_log)}"
        )
    return f"deployed {len(declared)} declared in {project / 'prefect.yaml'} (log {lay.deploy_log})"


def describe_schedule(s: Any) -> str:
    """One deployment schedule in a few words: ``cron '0 3 * * 0' UTC``, ``every 1h00m``, ..."""
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
    """The server's deployments, by name, with their schedules (``prefect deployment ls`` shows
    no schedules, and only as a table)."""
    with client(url, auth) as c:
        flows = {}
        out = []
        for d in c.read_deployments():
            if d.flow_id not in flows:
                flows[d.flow_id] = c.read_flow(d.flow_id).name
            out.append(
                DeploymentInfo(
                    name=f"{flows[d.flow_id]}/{d.name}",
                    schedules=[describe_schedule(s) for s in (d.schedules or [])],
                    paused=bool(d.paused),
                    work_pool=d.work_pool_name,
                )
            )
    return sorted(out, key=lambda d: d.name)

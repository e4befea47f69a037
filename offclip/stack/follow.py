"""``offclip wait``: follow a chain of runs (build-shards → train → evaluate) to its end, printing
their progress artifacts.

offclip's own: Prefect's ``prefect flow-run watch`` / ``deployment run --watch`` follow one run's
logs and events; a chain (the run each run *created*, found by its parent run) and the progress a
person waiting reads (the artifacts, at a steady rate) are not in Prefect.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .auth import api_url, auth_string
from .auth import client as _client
from .home import resolve_home

if TYPE_CHECKING:
    from uuid import UUID


@dataclass
class FollowedRun:
    deployment: str  # "flow/deployment"
    state: str  # the run's final state name, or "missing" (never started), or its last state
    run_id: str | None = None
    run_name: str | None = None


def _resolve_url(home: str | os.PathLike | None, url: str | None) -> tuple[str, str | None]:
    """(url, auth string): ``url``, else the server `offclip up` started under ``home``, else
    ``$PREFECT_API_URL``; the auth string of the project's server when it is that one, else
    ``$PREFECT_API_AUTH_STRING``."""
    project = api_url(home, check=not url)
    found = url or project or os.environ.get("PREFECT_API_URL")
    if not found:
        raise RuntimeError(
            f"no offclip server is running under {resolve_home(home)} and PREFECT_API_URL is not "
            "set: run `offclip up` first"
        )
    if project and found.rstrip("/") == project.rstrip("/"):
        return found, auth_string(home)
    return found, os.environ.get("PREFECT_API_AUTH_STRING") or None


class _ProgressFollower:
    """The progress artifacts of the followed runs, printed at a steady rate: each unfinished
    one's description every ``every`` seconds, a finished one's once."""

    def __init__(self, every: float) -> None:
        self.every, self.last = every, 0.0
        self.finished: set[UUID] = set()  # the ids of the artifacts printed at 100 %

    def report(self, client, flow_run_id, echo) -> None:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterType

        now = time.monotonic()
        due = now - self.last >= self.every
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]), type=ArtifactFilterType(any_=["progress"])
            )
        )
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


def wait_for_runs(
    deployments: list[str],
    home: str | os.PathLike | None = None,
    timeout: float = 1800.0,
    poll: float = 3.0,
    echo=print,
    run: str | None = None,
    url: str | None = None,
    progress_every: float = 30.0,
) -> list[FollowedRun]:
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
                raise ValueError(
                    f"deployment {name!r} does not exist on {url} (`offclip up` deploys prefect.yaml)"
                ) from None

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
                echo(
                    f"{name}: not followed (the {deployments[position - 1]} run {parent.name} is "
                    f"{parent.state.name if parent.state else 'without a state'})"
                )
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
                echo(
                    f"{name}: missing"
                    + (
                        f" (the {deployments[position - 1]} run {parent.name} did not start one)"
                        if parent is not None
                        else ""
                    )
                )
            followed.append(
                FollowedRun(
                    name,
                    current.state.name if current and current.state else "missing",
                    str(current.id) if current else None,
                    current.name if current else None,
                )
            )
            parent = current
            if current is None:
                parent = None
                for rest in deployments[position + 1 :]:
                    followed.append(FollowedRun(rest, "missing"))
                    echo(f"{rest}: missing")
                break
    return followed

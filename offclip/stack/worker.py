"""The process work pool and the worker serving it.

The worker is Prefect's own ``prefect worker start --pool POOL --type process``, run detached by
:func:`.processes.spawn` (Prefect has no background mode for it) and waited for until it has
registered with the pool. The pool is created through the client rather than with ``prefect
work-pool create --type process``: that command asks the collections registry for the list of
pool types (over the network, through the server) before it creates anything, and fails when
the pool exists; here the template comes straight from the installed ``ProcessWorker``, offline,
and an existing pool of the right type is kept.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from pathlib import Path

from .auth import client
from .env import stack_env
from .home import Layout, ServiceError, read_json, read_pid, tail, write_private
from .processes import ownership, prefect_argv, spawn, stop_child, stop_process


def ensure_pool(url: str, pool: str, auth: str | None = None) -> bool:
    """Create the process work pool ``pool`` unless it exists. True when created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with client(url, auth) as c:
        try:
            existing = c.read_work_pool(pool)
        except ObjectNotFound:
            existing = None
        if existing is not None:
            if existing.type != "process":
                raise ServiceError(f"work pool {pool!r} exists with type {existing.type!r}, not 'process'")
            return False
        try:
            # The template straight from the installed ProcessWorker: no collections-registry fetch.
            c.create_work_pool(
                WorkPoolCreate(
                    name=pool, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
                )
            )
        except ObjectAlreadyExists:  # created concurrently
            return False
    return True


def ensure_worker(
    lay: Layout,
    url: str,
    port: int,
    pool: str,
    project: Path,
    timeout: float,
    auth: str | None = None,
    server_reused: bool = False,
) -> tuple[int, str, bool]:
    """Reuse the worker a previous ``up`` started (same pool, same server), else start one.
    Returns (pid, worker name, reused)."""
    pid = read_pid(lay.worker_pid)
    state = read_json(lay.worker_json) or {}
    owner, why = ownership(pid, "worker", state)
    if owner == "legacy":
        raise ServiceError(f"{why}. If it is yours, stop it (`kill -TERM -- -{pid}`), then `offclip up`")
    if owner == "ours":
        assert pid is not None  # "ours": a live process of that pid
        if state.get("pool") not in (None, pool):
            raise ServiceError(
                f"a worker from a previous `offclip up` serves pool {state['pool']!r} (pid {pid}); "
                "`offclip down` first to switch pools"
            )
        if server_reused and state.get("api_url") in (None, url):
            return pid, state.get("name", "?"), True
        # ours, but polling a server that is gone (or one started since, with another secret): replace it
        stop_process(pid, "worker", state=state)
    for p in (lay.worker_pid, lay.worker_json):
        p.unlink(missing_ok=True)
    name = f"offclip-{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    proc, offset, record = spawn(
        prefect_argv("worker", "start", "--pool", pool, "--type", "process", "--name", name),
        stack_env(lay, port, auth=auth),
        lay.worker_log,
        cwd=project,
    )
    write_private(lay.worker_pid, f"{proc.pid}\n")
    write_private(
        lay.worker_json,
        json.dumps(
            {
                **record,
                "name": name,
                "pool": pool,
                "api_url": url,
                "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            },
            indent=2,
        )
        + "\n",
    )
    # Wait until the worker has registered with the pool (its first heartbeat): it is then polling.
    try:
        with client(url, auth) as c:
            while True:
                if proc.poll() is not None:
                    raise ServiceError(
                        f"`prefect worker start` exited (code {proc.returncode}). "
                        f"Last lines of {lay.worker_log}:\n{tail(lay.worker_log, offset)}"
                    )
                if any(w.name == name for w in c.read_workers_for_work_pool(pool)):
                    break
                if time.monotonic() - t0 > timeout:
                    raise ServiceError(
                        f"the worker did not register with pool {pool!r} within {timeout:.0f} s. "
                        f"Last lines of {lay.worker_log}:\n{tail(lay.worker_log, offset)}"
                    )
                time.sleep(0.5)
    except BaseException:
        stop_child(proc)
        for p in (lay.worker_pid, lay.worker_json):
            p.unlink(missing_ok=True)
        raise
    return proc.pid, name, False

"""A one-command local Prefect stack: ``offclip up`` / ``offclip down`` / ``offclip status`` /
``offclip wait``, and where direct flow runs go.

Its processes are Prefect's own commands — ``prefect server start`` (bound to 127.0.0.1),
``prefect worker start`` and ``prefect deploy --all`` — with every setting by environment. offclip
keeps only what Prefect lacks, one module per role:

    home.py       the project-local home (``.offclip``): layout, private files (0600, atomic)
    auth.py       the server's secret, env.sh, how clients find and reach the server
    env.py        the environment of the server, worker and deploy (PREFECT_HOME, auth, CORS, CSRF)
    processes.py  detached start, start records, ownership checks, stopping only what `up` started
    health.py     health (before prefect is imported), the wait for it, preflight version checks
    server.py     start or reuse the API server (why not ``prefect server start --background``/``stop``)
    worker.py     the process work pool and the worker
    deploy.py     ``prefect deploy --all`` and the deployments the server holds
    lifecycle.py  ``up`` and ``down``;  status.py: ``status``;  follow.py: ``wait``
    direct.py     direct runs' server, and the reaper (``_reaper.py``) of a temporary one

Other offclip code finds the server with :func:`api_url` and :func:`auth_string` (or :func:`client_env`).
"""

from __future__ import annotations

from .auth import api_url, auth_string, client_env, last_ui_url
from .deploy import DeploymentInfo, deploy, list_deployments
from .direct import TEMPORARY_SERVER_TIMEOUT_S, DirectRun, direct_run_env, start_reaper, use_for_direct_runs
from .env import server_env, stack_env
from .follow import FollowedRun, wait_for_runs
from .health import health, preflight
from .home import DEFAULT_HOME, DEFAULT_POOL, DEFAULT_PORT, HOST, Layout, ServiceError, layout, resolve_home
from .lifecycle import DownResult, ProcessStop, UpResult, down, up
from .processes import is_prefect_command, stop_process
from .status import StatusResult, status
from .worker import ensure_pool

__all__ = [
    "DEFAULT_HOME",
    "DEFAULT_POOL",
    "DEFAULT_PORT",
    "HOST",
    "TEMPORARY_SERVER_TIMEOUT_S",
    "DeploymentInfo",
    "DirectRun",
    "DownResult",
    "FollowedRun",
    "Layout",
    "ProcessStop",
    "ServiceError",
    "StatusResult",
    "UpResult",
    "api_url",
    "auth_string",
    "client_env",
    "deploy",
    "direct_run_env",
    "down",
    "ensure_pool",
    "health",
    "is_prefect_command",
    "last_ui_url",
    "layout",
    "list_deployments",
    "preflight",
    "resolve_home",
    "server_env",
    "stack_env",
    "start_reaper",
    "status",
    "stop_process",
    "up",
    "use_for_direct_runs",
    "wait_for_runs",
]

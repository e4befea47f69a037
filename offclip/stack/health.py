"""Is the stack's server answering, and can this Python run it at all.

offclip's own code, not ``prefect server status``: health is asked before ``prefect`` may be
imported (a direct run decides its settings first, and Prefect reads them once, at import), in a
loop while a server starts (a ~5 ms GET, where ``prefect server status`` is a 3 s interpreter
start per call), and while waiting it must notice a server process that has died and show its
log (``prefect server status --wait`` waits out its whole timeout instead).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

from .home import HOST, ServiceError, tail


def health(url: str, timeout: float = 2.0) -> bool:
    """True when ``GET <url>/health`` answers 200."""
    import httpx

    try:
        # trust_env=False: a loopback URL must never go through an HTTP(S)_PROXY from the environment.
        with httpx.Client(trust_env=False, timeout=timeout) as client:
            return client.get(url.rstrip("/") + "/health").status_code == 200
    except httpx.HTTPError:
        return False


def wait_healthy(url: str, alive: Callable[[], bool], timeout: float, log: Path, offset: int, what: str) -> None:
    """Until ``url`` answers health; a ServiceError with the last lines of ``log`` (from byte
    ``offset``: this start's) when the process dies first (``alive()`` false) or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        if health(url, timeout=1.0):
            return
        if not alive():
            raise ServiceError(
                f"{what} exited before {url}/health answered. Last lines of {log}:\n" + tail(log, offset)
            )
        if time.monotonic() > deadline:
            raise ServiceError(
                f"{what} did not answer {url}/health within {timeout:.0f} s. Last lines of {log}:\n" + tail(log, offset)
            )
        time.sleep(0.25)


def port_free(port: int) -> bool:
    """``port`` on 127.0.0.1 can be bound now (as uvicorn binds it: SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((HOST, port))
        except OSError:
            return False
    return True


def preflight() -> list[str]:
    """Fail early, clearly, when the stack cannot work in this Python; return warnings for what
    works only in part.

    prefect 3.8.8's server needs ``fastapi<0.151``: fastapi 0.151–0.154 make every ``/…/filter``
    call answer 422 (``limit: None`` rejected), and fastapi ≥0.155 dropped the ``min_items``
    keyword the server still passes to ``Body()``, so it fails at import. With sqlalchemy ≥2.1 the
    3.8.8 scheduler fails to insert scheduled runs (``InvalidRequestError: Can't evaluate bulk DML
    statement``): schedules produce no runs, while manual runs work — a warning, not a refusal."""
    if importlib.util.find_spec("prefect") is None:
        raise ServiceError(
            f"prefect is not installed in {sys.executable}; install the project "
            "(`pip install -e .` or `make setup`), which pins prefect==3.8.8"
        )
    from packaging.version import Version

    try:
        prefect_v = Version(importlib.metadata.version("prefect"))
        fastapi_v = Version(importlib.metadata.version("fastapi"))
    except importlib.metadata.PackageNotFoundError as exc:
        raise ServiceError(f"{exc.name} is not installed in {sys.executable}; reinstall the project") from exc
    if prefect_v <= Version("3.8.8") and fastapi_v >= Version("0.151"):
        why = (
            "its server fails at import (fastapi dropped Body(min_items=...))"
            if fastapi_v >= Version("0.155")
            else "every /filter request the clients send is rejected with 422 (limit: null)"
        )
        raise ServiceError(
            f"fastapi {fastapi_v} is installed, but prefect {prefect_v}'s server needs fastapi<0.151: "
            f"with {fastapi_v} {why}. Fix: pip install 'fastapi>=0.139,<0.151' "
            "(and pin it in pyproject.toml)"
        )
    warnings = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        sqlalchemy_v = Version(importlib.metadata.version("sqlalchemy"))
        if prefect_v <= Version("3.8.8") and sqlalchemy_v >= Version("2.1"):
            warnings.append(
                f"sqlalchemy {sqlalchemy_v} is installed: prefect {prefect_v}'s scheduler cannot insert "
                "scheduled runs with it (InvalidRequestError in logs/server.log), so deployment "
                "schedules create no runs; manual runs work. "
                "Fix: pip install 'sqlalchemy[asyncio]>=2.0,<2.1'"
            )
    return warnings

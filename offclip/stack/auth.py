"""The stack's credentials, and how a client finds and reaches its server.

The server requires one auth string on every API request (Prefect's ``server.api.auth_string``;
its websockets check it too), allows cross-origin requests only from its own UI
(``http://127.0.0.1:PORT``) and turns on Prefect's CSRF protection (:mod:`.env`). The secret is
made by ``up`` (``secrets.token_urlsafe``) and handed only to its own clients: the worker's and
``prefect deploy``'s environment, :func:`client_env`, a direct run's settings
(:mod:`.direct`), ``offclip wait``/``status`` (:func:`client`), and ``env.sh``
(:func:`write_env_sh`), always by environment or an owner-only file, never on a command line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .health import health
from .home import DEFAULT_PORT, layout, read_json, ui_url_for, write_private

AUTH_USER = "offclip"

#: Prefect's CSRF protection on the server `up` starts: state-changing requests need a token from
#: ``GET /api/csrf-token`` (itself behind the auth string). Prefect 3.8.8's clients (worker,
#: ``prefect deploy``, flow runs, offclip's own) and its UI fetch and send it by themselves
#: (``PREFECT_CLIENT_CSRF_SUPPORT_ENABLED``, on by default and set in :mod:`.env`);
#: tests/test_service.py runs a worker, a deploy-free flow run and the CLI against it.
CSRF_PROTECTION = True


def new_auth_string() -> str:
    """``offclip:<secret>``: Prefect's basic-auth form ``user:password`` (the UI's login asks for
    the whole string); ``token_urlsafe`` has no ``:``."""
    return f"{AUTH_USER}:{secrets.token_urlsafe(32)}"


def api_url(home: str | os.PathLike | None = None, *, check: bool = False) -> str | None:
    """The API URL of the server ``offclip up`` started under ``home`` (see
    :func:`~.home.resolve_home`), or None when none was started there. With ``check=True``, None
    unless it also answers health.

    Other offclip code uses this to talk to the project's server, e.g. by putting
    ``PREFECT_API_URL`` into a subprocess's environment (:func:`client_env`) or with
    ``prefect.settings.temporary_settings({PREFECT_API_URL: url})``.
    """
    state = read_json(layout(home).server_json)
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


def last_ui_url(home: str | os.PathLike | None = None) -> str:
    """The UI of the running server, else the address a new `offclip up` serves it at."""
    return (read_json(layout(home).server_json) or {}).get("ui_url") or ui_url_for(DEFAULT_PORT)


def write_env_sh(path: Path, url: str, auth: str) -> None:
    """``env.sh``, owner-only: sourced, it points Prefect clients at the project's server."""
    write_private(
        path,
        "# written by `offclip up` (owner-only: it holds the server's secret); source it to\n"
        "# point Prefect clients at the project server\n"
        f"export PREFECT_API_URL={shlex.quote(url)}\n"
        f"export PREFECT_API_AUTH_STRING={shlex.quote(auth)}\n",
    )


def auth_probe(url: str, auth: str | None, timeout: float = 5.0) -> tuple[int | None, int | None]:
    """HTTP status of ``GET <url>/admin/version`` (status codes, None where it did not answer)
    without credentials, and with ``auth``: an authenticating server answers 401, then 200."""
    import base64

    import httpx

    codes: list[int | None] = []
    with httpx.Client(trust_env=False, timeout=timeout) as http:
        for a in (None, auth):
            headers = {"Authorization": "Basic " + base64.b64encode(a.encode()).decode()} if a else {}
            try:
                codes.append(http.get(url.rstrip("/") + "/admin/version", headers=headers).status_code)
            except httpx.HTTPError:
                codes.append(None)
    return codes[0], codes[1]


@contextlib.contextmanager
def client(url: str, auth: str | None = None) -> Iterator[Any]:
    """Prefect's synchronous client for ``url``, sending ``auth``."""
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(url, auth_string=auth) as c:
        yield c

"""The environment of the stack's processes: the server, the worker and `prefect deploy`.

Prefect's commands take every setting the stack needs from the environment, so this is all
offclip adds to them: the project-local PREFECT_HOME, the UI, the API URL and the auth string,
CORS and CSRF (see :mod:`.auth`). A user's own settings that would pull the stack out of its home
or weaken it are dropped.
"""

from __future__ import annotations

import os

from .auth import CSRF_PROTECTION
from .home import Layout, api_url_for, ui_url_for
from .processes import DIRECT_RUN_TOKEN_ENV, TOKEN_ENV

# Settings a user may have exported that would pull the stack out of its project-local home, or
# weaken it (its auth string, CORS and CSRF settings are offclip's own).
DROPPED_ENV = (
    "PREFECT_PROFILE",
    "PREFECT_PROFILES_PATH",
    "PREFECT_API_KEY",
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_API_AUTH_STRING",
    "PREFECT_SERVER_API_AUTH_STRING",
    "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS",
    "PREFECT_SERVER_CORS_ALLOWED_ORIGINS",
    "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED",
    "PREFECT_SERVER_CSRF_PROTECTION_ENABLED",
    "PREFECT_CLIENT_CSRF_SUPPORT_ENABLED",
    TOKEN_ENV,
    DIRECT_RUN_TOKEN_ENV,
)


def stack_env(
    lay: Layout, port: int, base: dict[str, str] | None = None, ui: bool = True, auth: str | None = None
) -> dict[str, str]:
    """Environment of the worker and `prefect deploy` (and, with :func:`server_env`'s additions,
    the server): project-local PREFECT_HOME, no analytics, the UI (served at ``/``, its pages
    calling this server's API) unless ``ui`` is off, and PREFECT_API_URL and, given ``auth``,
    PREFECT_API_AUTH_STRING for the clients. A user's own auth, CORS and CSRF settings are dropped."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in DROPPED_ENV}
    if auth:
        env["PREFECT_API_AUTH_STRING"] = auth
    env["PREFECT_CLIENT_CSRF_SUPPORT_ENABLED"] = "true"
    env.update(
        {
            "PREFECT_HOME": str(lay.prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # the dashboard that offclip's artifacts (progress, counts, ROC and training curves) are
            # made for; off, the server starts ~1 s sooner (no UI files to copy)
            "PREFECT_UI_ENABLED": "true" if ui else "false",
            "PREFECT_SERVER_UI_ENABLED": "true" if ui else "false",
            "PREFECT_UI_API_URL": api_url_for(port),  # what the UI's pages call (/ui-settings)
            "PREFECT_API_URL": api_url_for(port),
            "PREFECT_WORKER_QUERY_SECONDS": "2",  # scheduled runs start within ~2 s
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def server_env(
    lay: Layout, port: int, auth: str, ui: bool = True, base: dict[str, str] | None = None
) -> dict[str, str]:
    """Environment of `prefect server start`: :func:`stack_env`, plus basic auth on every API
    request (``auth``, "user:password"), cross-origin requests allowed from its own UI's origin
    only (Prefect's default is ``*``), and CSRF protection (:data:`.auth.CSRF_PROTECTION`)."""
    env = stack_env(lay, port, base, ui=ui, auth=auth)
    env.pop("PREFECT_API_URL")  # the server serves it; it is the clients' setting
    env.update(
        {
            "PREFECT_SERVER_API_AUTH_STRING": auth,
            "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": ui_url_for(port),
            "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true" if CSRF_PROTECTION else "false",
        }
    )
    return env

"""The stack's project-local home: where each file lives, and how its private files are written.

Everything lives under one *home* (default ``.offclip``)::

    <home>/prefect/          PREFECT_HOME of the server, the worker and `prefect deploy` (SQLite DB here)
    <home>/logs/server.log   server output (appended, one header line per start)
    <home>/logs/worker.log   worker output
    <home>/logs/deploy.log   output of the last `prefect deploy --all`
    <home>/run/server.pid    pid of `prefect server start` (leader of its own process group)
    <home>/run/worker.pid    pid of `prefect worker start`
    <home>/run/server.json   {"api_url", "host", "port", "pid", "starttime", "token", "auth", "ui_url", ...}
    <home>/run/worker.json   {"pid", "name", "pool", "api_url", "starttime", "token", "started_at"}
    <home>/run/auth          the server's basic-auth string, "offclip:<secret>" (mode 0600)
    <home>/env.sh            export PREFECT_API_URL=http://127.0.0.1:PORT/api PREFECT_API_AUTH_STRING=... (0600)

``run/`` is created 0700 and every file in it, like ``env.sh``, 0600 from the start.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from offclip.pipeline.atomic import atomic_write_text

DEFAULT_HOME = ".offclip"
DEFAULT_PORT = 4200
DEFAULT_POOL = "offclip-process"
#: the only address the server listens on
HOST = "127.0.0.1"
HEALTH_TIMEOUT_S = 120.0
WORKER_TIMEOUT_S = 60.0
DEPLOY_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 15.0


class ServiceError(RuntimeError):
    """Something the user has to act on (port taken, server died, deploy failed, ...)."""


@dataclass(frozen=True)
class Layout:
    home: Path

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    @property
    def run(self) -> Path:
        return self.home / "run"

    @property
    def server_log(self) -> Path:
        return self.logs / "server.log"

    @property
    def worker_log(self) -> Path:
        return self.logs / "worker.log"

    @property
    def deploy_log(self) -> Path:
        return self.logs / "deploy.log"

    @property
    def server_pid(self) -> Path:
        return self.run / "server.pid"

    @property
    def worker_pid(self) -> Path:
        return self.run / "worker.pid"

    @property
    def server_json(self) -> Path:
        return self.run / "server.json"

    @property
    def worker_json(self) -> Path:
        return self.run / "worker.json"

    @property
    def auth(self) -> Path:
        return self.run / "auth"

    @property
    def env_sh(self) -> Path:
        return self.home / "env.sh"


def resolve_home(home: str | os.PathLike | None = None) -> Path:
    """``home``, else ``$OFFCLIP_HOME``, else ``.offclip`` in the current directory — absolute."""
    return Path(home or os.environ.get("OFFCLIP_HOME") or DEFAULT_HOME).expanduser().resolve()


def layout(home: str | os.PathLike | None = None) -> Layout:
    return Layout(resolve_home(home))


def api_url_for(port: int) -> str:
    return f"http://{HOST}:{port}/api"


def ui_url_for(port: int) -> str:
    return f"http://{HOST}:{port}"


def find_project(start: Path | None = None) -> Path:
    """The nearest directory at or above ``start`` (default: cwd) holding prefect.yaml, else ``start``."""
    start = (start or Path.cwd()).resolve()
    for d in (start, *start.parents):
        if (d / "prefect.yaml").is_file():
            return d
    return start


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def private_dir(path: Path) -> None:
    """``path`` as a directory only its owner can enter: made 0700 (a new home too); one left by an
    older offclip with a looser mode is tightened."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (:func:`offclip.pipeline.atomic.atomic_write_text`),
    owner-only from the start: its temporary file comes from ``tempfile.mkstemp``, which creates
    it 0600, and ``os.replace`` keeps that mode — never readable by others, even for a moment."""
    if not path.parent.exists():
        private_dir(path.parent)
    atomic_write_text(path, text)


def tail(path: Path, start: int = 0, lines: int = 30) -> str:
    """The last ``lines`` lines of ``path`` from byte ``start`` (a log's part written by one start)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
    except OSError:
        return "(no log)"
    text = data.decode(errors="replace").rstrip()
    return "\n".join(text.splitlines()[-lines:]) or "(log empty)"

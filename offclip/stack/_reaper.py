"""Stop a direct run's temporary Prefect server once the run's process is gone, however it ended.

Run as ``python -I -S _reaper.py PARENT_PID TOKEN_NAME TOKEN`` by
:func:`offclip.stack.direct.use_for_direct_runs` (stdlib only: it must start fast and import nothing of
the project). Prefect 3.8.8 starts the temporary server (``python -m uvicorn ...
prefect.server.api.server:create_app``) as a plain child and stops it only from an ``atexit``
hook, so a run killed with SIGKILL leaves it serving. This process waits until PARENT_PID is no
longer its parent (the run ended, and this process was re-parented), then stops every process
of this user that carries ``TOKEN_NAME=TOKEN`` in the environment it was started with (the run
put it into its own environment, so only what the run started inherits it) and runs Prefect's
server: SIGTERM, SIGKILL after 3 s. After a normal exit Prefect has stopped the server already
and this finds nothing.
"""

from __future__ import annotations

import os
import signal
import sys
import time

POLL_S = 0.2
GRACE_S = 3.0
SERVER_MARKER = "prefect.server.api.server:create_app"


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _starttime(pid: int) -> bytes | None:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    try:
        return stat[stat.rindex(b")") + 2 :].split()[19]
    except (ValueError, IndexError):
        return None


def leftovers(entry: bytes) -> list[tuple[int, bytes | None]]:
    """(pid, starttime) of the temporary servers carrying ``entry`` (``NAME=TOKEN``) in their environment."""
    found: list[tuple[int, bytes | None]] = []
    me = os.getpid()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        environ = _read(f"/proc/{name}/environ")
        if not environ or entry not in environ.split(b"\0"):
            continue
        cmdline = _read(f"/proc/{name}/cmdline") or b""
        if SERVER_MARKER.encode() in cmdline.split(b"\0"):
            found.append((int(name), _starttime(int(name))))
    return found


def main(argv: list[str]) -> int:
    parent, token_name, token = int(argv[1]), argv[2], argv[3]
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # outlive whatever ends the run; this ends by itself
    while os.getppid() == parent:
        time.sleep(POLL_S)
    entry = f"{token_name}={token}".encode()
    targets = leftovers(entry)
    for pid, _ in targets:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + GRACE_S
    while targets and time.monotonic() < deadline:
        time.sleep(0.1)
        targets = [(pid, st) for pid, st in targets if _starttime(pid) == st and _alive(pid)]
    for pid, st in targets:
        if _starttime(pid) == st:  # the same process still (not a reused pid)
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return 0


def _alive(pid: int) -> bool:
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return False
    return stat[stat.rindex(b")") + 2 :][:1] not in (b"Z", b"X", b"x")


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The stack's processes: started detached, known again by what was recorded at their start, and
stopped only when they are provably the ones started.

The server and the worker are started detached (``start_new_session=True``), so they outlive the
command that started them, with their output appended to a log. ``down`` stops only processes
``up`` started: the pid in a pid file must still have the start time (``/proc/<pid>/stat``
field 22) recorded when it was started, carry the random token put into its environment
(``/proc/<pid>/environ``) and run the prefect command; anything else is refused, and its pid
file kept.

This is offclip's, not ``prefect server start --background`` / ``prefect server stop``: Prefect's
background server writes its output to pipes whose reader (the CLI) exits at once, so a failed
start (a migration, an incompatible fastapi) leaves nothing to show; it stays in the caller's
process group; and ``prefect server stop`` sends SIGTERM to whatever pid its pid file holds (a
reused pid included), without waiting for it to exit or escalating. Prefect has no background
mode for its worker at all.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from .home import STOP_TIMEOUT_S

#: the environment variable carrying the random token a process started by `up` is known by
TOKEN_ENV = "OFFCLIP_PROCESS_TOKEN"
#: the same for the temporary server of a direct run (see :func:`.direct.use_for_direct_runs`)
DIRECT_RUN_TOKEN_ENV = "OFFCLIP_DIRECT_RUN_TOKEN"

ROLE_CMD = {"server": ("server", "start"), "worker": ("worker", "start")}


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie still answers kill(pid, 0))."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 :][:1] not in (b"Z", b"X", b"x")


def cmdline(pid: int, settle_s: float = 1.0) -> list[str] | None:
    """argv of a running process, or None (gone, zombie, or exiting: its cmdline is empty then).
    A process that has only just been started also reads an empty cmdline for a moment (measured:
    16 % of reads straight after ``subprocess.Popen`` on a loaded machine), so an empty read of a
    live process is retried for up to ``settle_s``: a starting process shows its argv, an exiting
    one becomes a zombie or goes."""
    deadline = time.monotonic() + settle_s
    while running(pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                raw = f.read()
        except OSError:
            return None
        argv = [a.decode(errors="replace") for a in raw.split(b"\0") if a]
        if argv or time.monotonic() > deadline:
            return argv or None
        time.sleep(0.01)
    return None


def is_prefect_command(argv: list[str] | None, *subcommand: str) -> bool:
    """True when argv runs the prefect CLI (``prefect ...``, ``python .../bin/prefect ...`` or
    ``python -m prefect ...``) and, if given, with ``subcommand`` (e.g. ``"server", "start"``)."""
    if not argv:
        return False
    exe = os.path.basename(argv[0])
    if exe == "prefect":
        rest = argv[1:]
    elif exe.startswith("python") and argv[1:3] == ["-m", "prefect"]:
        rest = argv[3:]
    elif exe.startswith("python") and len(argv) > 1 and os.path.basename(argv[1]) == "prefect":
        rest = argv[2:]
    else:
        return False
    words = [a for a in rest if not a.startswith("-")]
    return words[: len(subcommand)] == list(subcommand)


def starttime(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``: when the process started, in clock ticks after boot. Set
    at fork and never changed, so (pid, starttime) names one process of this boot."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        # fields 3.. follow the ")" that closes the command name (which may hold spaces or ")")
        return int(stat[stat.rindex(b")") + 2 :].split()[22 - 3])
    except (OSError, ValueError, IndexError):
        return None


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def has_token(pid: int, token: str, name: str = TOKEN_ENV) -> bool:
    """``name=token`` is in the environment ``pid`` was started with (``/proc/<pid>/environ``,
    readable by the same user only)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            entries = f.read().split(b"\0")
    except OSError:
        return False
    return f"{name}={token}".encode() in entries


def ownership(pid: int | None, role: str, state: dict | None) -> tuple[str, str]:
    """("ours" | "gone" | "foreign" | "legacy", why). Ours: alive, with the start time and boot
    recorded in ``state`` when `up` started it, the token `up` put into its environment, and
    running ``prefect <role> start``. A command line alone (a look-alike, a reused pid) is not
    enough. "legacy": a prefect ``role`` process under a state file with no start record (an
    offclip from before the records)."""
    if pid is None:
        return "gone", "no pid"
    argv = cmdline(pid)
    if argv is None:
        return "gone", "not running"
    state = state or {}
    want = f"prefect {' '.join(ROLE_CMD[role])}"
    shown = f"cmdline: {' '.join(argv)[:120]!r}"
    if state.get("pid") != pid:
        if not state and is_prefect_command(argv, *ROLE_CMD[role]):
            return "legacy", f"pid {pid} runs {want} but there is no record of starting it ({shown})"
        return "foreign", f"pid {pid} is not a process offclip recorded starting ({shown})"
    if "starttime" not in state or "token" not in state:
        if is_prefect_command(argv, *ROLE_CMD[role]):
            return "legacy", (
                f"pid {pid} runs {want} but its record has no start time or token "
                f"(started by an older offclip?) ({shown})"
            )
        return "foreign", f"pid {pid} is not {want} ({shown})"
    if starttime(pid) != state["starttime"] or (state.get("boot_id") and state["boot_id"] != boot_id()):
        return "foreign", f"pid {pid} is another process than the one started (its start time differs; {shown})"
    if not has_token(pid, state["token"]):
        return "foreign", f"pid {pid} does not carry the token its start put into its environment ({shown})"
    if not is_prefect_command(argv, *ROLE_CMD[role]):
        return "foreign", f"pid {pid} is not {want} ({shown})"
    return "ours", ""


def owned_alive(pid: int | None, role: str, state: dict | None) -> bool:
    return ownership(pid, role, state)[0] == "ours"


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our own child (an `up` and a `down` in one process)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _gone(pid: int) -> bool:
    _reap(pid)
    return not running(pid)


def _signal(pid: int, sig: int) -> None:
    """Signal the process group ``pid`` leads (it was started with start_new_session), else the pid."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def stop_process(pid: int, role: str, timeout: float = STOP_TIMEOUT_S, state: dict | None = None) -> str:
    """SIGTERM the process group of ``pid`` if it is the ``role`` process `up` started (recorded in
    ``state``: see :func:`ownership`), wait, SIGKILL after ``timeout``. Returns what happened;
    never signals anything else."""
    owner, why = ownership(pid, role, state)
    if owner == "gone":
        return "not running"
    if owner == "legacy":
        return f"refused: {why}; if it is yours, stop it with `kill -TERM -- -{pid}`"
    if owner != "ours":
        return f"refused: {why}"
    return terminate(pid, timeout)


def stop_child(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """Stop a process this very process started and has not reaped (its pid cannot have been reused)."""
    if proc.poll() is None:
        terminate(proc.pid, timeout)
    proc.wait()


def terminate(pid: int, timeout: float) -> str:
    """SIGTERM the group ``pid`` leads, wait up to ``timeout``, then SIGKILL: "terminated" or "killed ..."."""
    _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _gone(pid):
            return "terminated"
        time.sleep(0.1)
    _signal(pid, signal.SIGKILL)
    for _ in range(50):
        if _gone(pid):
            break
        time.sleep(0.1)
    return "killed (did not exit on SIGTERM)"


def spawn(argv: list[str], env: dict[str, str], log: Path, cwd: Path) -> tuple[subprocess.Popen, int, dict]:
    """Start ``argv`` detached (own session, so own process group), output appended to ``log``.
    Returns the process, the log offset where its output starts, and its start record
    (``pid``, ``starttime``, ``boot_id``, ``token``: put into its environment as $OFFCLIP_PROCESS_TOKEN)
    by which :func:`ownership` knows it later."""
    log.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(16)
    with open(log, "ab") as f:
        f.write(f"\n=== {dt.datetime.now().isoformat(timespec='seconds')} {' '.join(argv)}\n".encode())
        offset = f.tell()
        proc = subprocess.Popen(
            argv,
            env={**env, TOKEN_ENV: token},
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            preexec_fn=_default_stop_signals,
        )
    record = {"pid": proc.pid, "starttime": starttime(proc.pid), "boot_id": boot_id(), "token": token}
    return proc, offset, record


def _default_stop_signals() -> None:
    """In the child, before exec: SIGINT and SIGTERM back to their default action. A command
    started in the background by a script (``offclip up &``, cron, CI) inherits SIGINT *ignored*,
    and Prefect's worker stops by sending itself SIGINT on SIGTERM: it would then never stop, and
    ``offclip down`` would have to kill it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def prefect_argv(*args: str) -> list[str]:
    """The prefect CLI of *this* interpreter (works when the venv is not activated)."""
    return [sys.executable, "-m", "prefect", *args]

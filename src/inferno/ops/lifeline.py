"""Children that end with their supervisor, however the supervisor ends.

``inferno serve`` and the governator's local provider start the proxy and the nodes as
processes in their own sessions (so Ctrl-C reaches the supervisor alone, which then stops
them in order). Were the supervisor SIGKILLed (the OOM killer, ``kill -9``, a container
runtime's stop timeout), nothing would stop them: orphans holding ports and registrations.

So a supervisor starts each child with :func:`child_env` (``INFERNO_SUPERVISOR_PID``), and
every component calls :func:`hold` at start (``wiring.run_service``):

- On Linux, ``prctl(PR_SET_PDEATHSIG, SIGTERM)``: the kernel sends SIGTERM when the parent
  dies, which starts the component's normal drain. (The signal follows the *thread* that
  started the child; supervisors start children from their event loop's thread, which
  lives as long as they do.)
- Everywhere, a daemon thread checks twice a second that the parent is still the process
  that started it (an orphan is re-parented), and asks for the drain itself otherwise.
- Either way, an orphan exits within ``grace`` seconds of noticing, drained or not: nobody
  is left to send it work, and a new supervisor must find its ports free.

:func:`stale_children` finds the processes an earlier supervisor started and that outlive
it (``/proc``; Linux only), for ``inferno serve`` to end before it starts its own.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ENV = "INFERNO_SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1

log = logging.getLogger("inferno.lifeline")


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a child of this process: ``env`` (default: ours) naming us."""
    return {**(os.environ if env is None else env), ENV: str(os.getpid())}


def _pdeathsig(sig: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return int(libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def hold(orphaned: Callable[[], object], *, grace: float = 3.0, interval: float = 0.5) -> bool:
    """When a supervisor started this process, call ``orphaned`` (from any thread) once it
    is gone, and exit ``grace`` seconds later whatever the drain is doing. False when no
    supervisor started us (run by hand, or by a service manager): nothing is watched."""
    raw = os.environ.get(ENV, "")
    if not raw.isdigit():
        return False
    supervisor = int(raw)
    _pdeathsig(signal.SIGTERM)

    def watch() -> None:
        while os.getppid() == supervisor:
            time.sleep(interval)
        log.warning("the supervising process %d is gone; stopping within %.0f s",
                    supervisor, grace)
        with contextlib.suppress(Exception):
            orphaned()
        time.sleep(grace)
        os._exit(1)

    threading.Thread(target=watch, name="lifeline", daemon=True).start()
    return True


def die_with_parent() -> bool:
    """Be SIGKILLed, not asked to drain, when the parent dies (Linux; after :func:`hold`):
    for a process that is part of its parent, as a proxy worker is of its supervisor, so
    killing the parent ends the whole at once, as it would one process."""
    return _pdeathsig(signal.SIGKILL)


def stale_children(proc: Path = Path("/proc")) -> list[int]:
    """Processes started by a supervisor that no longer runs (its pid is gone, or now
    belongs to a process that is not its parent)."""
    needle = f"{ENV}=".encode()
    found = []
    for entry in proc.glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        for var in environ.split(b"\0"):
            if var.startswith(needle) and var[len(needle):].isdigit():
                supervisor = int(var[len(needle):])
                if ppid != supervisor and not _alive(supervisor):
                    found.append(pid)
                break
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end(pids: list[int], *, wait: float = 5.0) -> list[int]:
    """SIGTERM ``pids``, SIGKILL those still there after ``wait`` seconds; return them all."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return pids

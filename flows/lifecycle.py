"""How a long run stops: Ctrl-C, SIGTERM, and the processes a run starts.

A terminal's Ctrl-C sends SIGINT to every process of the foreground process group at once: the
pipeline, `dvc repro`, the stage and, if nothing prevents it, the Prefect API server they report
to. If the server dies first, every other process spends minutes retrying it while it tries to
record its end, and the run outlives the Ctrl-C. So:

- The temporary Prefect API server runs in a session of its own (`start_api`): Ctrl-C does not
  reach it, the processes of the run record how they ended, and the process that started it
  stops it last (`stop_api`); if that process is killed outright, the kernel ends the server too.
- Child commands (`dvc repro`, `prefect server start`) also run in sessions of their own
  (`spawn`), and the parent forwards the interrupt to them (`interrupt_children`): each gets
  GRACE_S seconds to end the way it would end on Ctrl-C (the stage marks its MLflow run KILLED,
  its Prefect flow run Crashed, DVC releases its lock, journals stay for the next run), then
  SIGTERM, then SIGKILL.
- `install_handlers`: the first SIGINT raises KeyboardInterrupt (the graceful path above); a
  second SIGINT, or a SIGTERM, ends the process and its children at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any
from unittest import mock

from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import get_current_settings

GRACE_S = 8.0  # what a child gets to end on its own after an interrupt, of the 10 s a Ctrl-C may take
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C

_children: list[subprocess.Popen] = []
_server: SubprocessASGIServer | None = None
_interrupted = False  # set by the first SIGINT: shutdown then waits less for what is still unsent


# Run as `python -c _DIE_WITH_PARENT <parent pid> <command...>`: asks the kernel (Linux) to SIGTERM this
# process when its parent dies, then becomes the command (exec keeps the request). A parent that already
# died before the request was made is caught by the pid check.
_DIE_WITH_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execv(sys.argv[2], sys.argv[2:])
"""


_Popen = subprocess.Popen  # the real one: _server_popen stands in for it while Prefect starts its server


def _server_popen(args: list[str], **kwargs: Any) -> subprocess.Popen:
    if sys.platform.startswith("linux"):
        args = [sys.executable, "-c", _DIE_WITH_PARENT, str(os.getpid()), *args]
    return _Popen(args, start_new_session=True, **kwargs)


class _OwnSessionServer(SubprocessASGIServer):
    """Prefect's temporary API server (the per-process singleton its client would start itself), started
    in a session of its own so that a Ctrl-C meant for the run does not kill it first, and (on Linux)
    ended by the kernel when the process that started it dies, even by SIGKILL (the OOM killer, `kill
    -9`), which runs no cleanup of ours: before, such a server outlived its run."""

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        with mock.patch.object(subprocess, "Popen", _server_popen):
            return super()._run_uvicorn_command()


def start_api() -> str:
    """The Prefect API this process talks to: PREFECT_API_URL when set, else a temporary server started
    now in a session of its own (Prefect's client then uses it instead of starting one)."""
    global _server
    url = get_current_settings().api.url
    if url:
        return url
    _server = _OwnSessionServer()
    _server.start()
    return _server.api_url


def stop_api() -> None:
    """Stop the temporary server `start_api` started, after sending what the run logged to it."""
    global _server
    if _server is None:
        return
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    drain_s = 1.0 if _interrupted else 5.0  # after a Ctrl-C the whole run has 10 s to end
    APILogWorker.drain_all(timeout=drain_s)
    EventsWorker.drain_all(timeout=drain_s)
    _server.stop()
    _server = None


def spawn(cmd: list[str], **kwargs: Any) -> subprocess.Popen:
    """`subprocess.Popen(cmd)` in a session of its own, remembered for `interrupt_children`."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    _children.append(proc)
    return proc


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # the child's session: it and everything it started
    except ProcessLookupError:
        pass


def interrupt_children(grace_s: float = GRACE_S) -> None:
    """SIGINT to every live child's process group; SIGTERM to those still running after `grace_s`, then
    SIGKILL. Returns when all have ended."""
    live = [p for p in _children if p.poll() is None]
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 1.0), (signal.SIGKILL, 5.0)):
        for p in live:
            _signal_group(p, sig)
        deadline = time.monotonic() + wait_s
        while live and time.monotonic() < deadline:
            live = [p for p in live if p.poll() is None]
            time.sleep(0.05)
        if not live:
            break
    for p in _children:
        if p.poll() is not None:
            _signal_group(p, signal.SIGKILL)  # what a dead child left behind in its group
    _children[:] = [p for p in _children if p.poll() is None]


def _hard_stop(signum: int, frame: Any) -> None:
    for p in _children:
        _signal_group(p, signal.SIGKILL)
    if _server is not None and _server.server_process is not None:
        _signal_group(_server.server_process, signal.SIGKILL)
    sys.stderr.write(f"\nstopped at once ({signal.Signals(signum).name})\n")
    os._exit(128 + signum)


def _first_interrupt(signum: int, frame: Any) -> None:
    global _interrupted
    _interrupted = True
    signal.signal(signal.SIGINT, _hard_stop)  # a second Ctrl-C does not wait for the graceful end
    raise KeyboardInterrupt


def install_handlers() -> None:
    """First SIGINT: KeyboardInterrupt (end gracefully); second SIGINT or SIGTERM: end at once, children too.

    A process started with SIGINT ignored (a background job of a non-interactive shell) keeps ignoring it."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _first_interrupt)
    signal.signal(signal.SIGTERM, _hard_stop)

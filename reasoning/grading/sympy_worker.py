"""The parent's side of the sympy child process: start it, send it checks, enforce the deadline.

Design choice: sympy can take unbounded time and memory on an adversarial identity, and
`signal.alarm` only works on the main thread, while grading runs in worker threads and daemonic
multiprocessing workers too. So the sympy checks run in one persistent child process started
lazily with `subprocess` (which daemonic workers may use, unlike `multiprocessing`), one request at
a time over JSON lines. The parent waits on the pipe with `select` until the deadline; a child that
overruns is killed and the next check starts a fresh one, as does a child that died at its memory
limit. A forked process forgets its parent's sympy child rather than share its pipes.

The child is started as a module (`python -m reasoning.grading.sympy_child`) in the directory that
holds this copy of the package, which is also put on its PYTHONPATH: the child imports the very
code the parent runs, whatever the caller's working directory, whether or not the project is
installed, and even when another copy of it is.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

from .limits import _STARTUP_TIMEOUT_S
from .verdict import _Timeout

_CHILD_MODULE = f"{__package__}.sympy_child"
# The directory that holds this copy of the top-level package: .../reasoning/grading/sympy_worker.py
_IMPORT_ROOT = Path(__file__).resolve().parents[2]


class _SympyWorker:
    """One persistent child process answering sympy checks, one request at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.buf = b""

    def start(self) -> None:
        # `-m` searches the working directory first, so the child finds this same copy of the package
        # even when the caller runs elsewhere or another copy is installed; PYTHONPATH as well, for
        # an interpreter that leaves the working directory off sys.path (PYTHONSAFEPATH).
        path = os.pathsep.join([str(_IMPORT_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
        self.proc = subprocess.Popen([sys.executable, "-m", _CHILD_MODULE], cwd=_IMPORT_ROOT,
                                     env={**os.environ, "PYTHONPATH": path}, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.buf = b""
        if self.read_line(time.monotonic() + _STARTUP_TIMEOUT_S) != {"ready": True}:
            raise RuntimeError("the sympy worker did not start")

    def read_line(self, deadline: float) -> dict:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                self.stop()
                raise _Timeout
            chunk = os.read(fd, 65536)
            if not chunk:
                self.stop()
                raise RuntimeError("the sympy worker exited")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def call(self, request: dict, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        if not self.lock.acquire(timeout=timeout_s):
            raise _Timeout
        try:
            if self.proc is not None and self.proc.poll() is not None:
                self.stop()  # it died (e.g. at its memory limit): start a fresh one
            if self.proc is None:
                self.start()
                deadline = time.monotonic() + timeout_s  # the start-up is not the check's time
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
            response = self.read_line(deadline)
        finally:
            self.lock.release()
        if "error" in response:
            raise RuntimeError(response["error"])
        return bool(response["ok"])

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc.stdin.close()
            self.proc.stdout.close()
            self.proc = None


_WORKER: _SympyWorker | None = None
_WORKER_LOCK = threading.Lock()


def _worker() -> _SympyWorker:
    global _WORKER
    with _WORKER_LOCK:
        if _WORKER is None:
            _WORKER = _SympyWorker()
        return _WORKER


def shutdown_worker() -> None:
    """Stop the sympy child process (it restarts on the next symbolic check)."""
    worker = _WORKER
    if worker is not None and worker.lock.acquire(timeout=5):
        try:
            worker.stop()
        finally:
            worker.lock.release()


def _forget_worker_after_fork() -> None:
    # A forked process shares the parent's pipes (and maybe a held lock): it starts its own child.
    global _WORKER, _WORKER_LOCK
    _WORKER, _WORKER_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_worker_after_fork)
atexit.register(shutdown_worker)

"""Child processes of tests, the demo and benchmarks: the one way to start them and to end them.

``ChildProcess`` is a ``subprocess.Popen`` that is ended whatever happens to its parent's work:

- ``stop()`` (also on leaving a ``with`` block) sends SIGTERM, waits, then SIGKILL;
- a child leads its own process group, and the signals go to the group, so its own children end with it;
- an ``atexit`` hook stops what is still running when the interpreter exits (after an uncaught exception or a
  KeyboardInterrupt too): a failed test or scenario leaves no server behind.

A child started by another ``ChildProcess`` (the demo run by a test) stays in its parent's group instead of
opening its own: ending the outer one then ends the whole tree.

``ServerProcess`` runs ``python -m <module>`` and waits for the ``READY {json}`` line it prints once listening.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Set in every child's environment: a process that has it is already inside a group a parent will end.
_IN_GROUP = "EMULATORS_PROCESS_GROUP"
_running: set[ChildProcess] = set()
_running_lock = threading.Lock()


class ChildProcess(subprocess.Popen):
    """``Popen`` (same arguments; ``cwd`` defaults to the repository, stdin to nothing) that ``stop()`` ends."""

    def __init__(self, args, *, cwd: str | Path = ROOT, env: dict[str, str] | None = None, name: str | None = None,
                 **kwargs):
        self.name = name or " ".join(map(str, args[-3:]))
        self.thread = threading.get_ident()  # who started it: a scenario runner ends what its thread left behind
        self.own_group = _IN_GROUP not in os.environ
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        super().__init__(args, cwd=cwd, env={**(os.environ if env is None else env), _IN_GROUP: "1"},
                         start_new_session=self.own_group, **kwargs)
        with _running_lock:
            _running.add(self)

    def send_signal(self, sig: int) -> None:
        """To the process group the child leads (else to the child alone); nothing once it was reaped."""
        self.poll()
        if self.returncode is None:
            try:
                os.killpg(self.pid, sig) if self.own_group else os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def wait_for(self, timeout: float) -> int | None:
        """The exit code, or None while still running after ``timeout`` seconds."""
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, up to ``timeout`` seconds to end, then SIGKILL; the exit code (negative when signalled)."""
        self.send_signal(signal.SIGTERM)
        if self.wait_for(timeout) is None:
            self.send_signal(signal.SIGKILL)
            self.wait()
        self._end_group()
        return self.returncode

    def kill(self) -> int:
        """SIGKILL, as a crash: the exit code (-9)."""
        self.send_signal(signal.SIGKILL)
        self.wait()
        self._end_group()
        return self.returncode

    def _end_group(self) -> None:
        # The leader is gone; whatever it started and left in its group goes too.
        if self.own_group:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        with _running_lock:
            _running.discard(self)

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def running_children() -> set[ChildProcess]:
    """The children still running (what a test's finalizer ends); those that ended by themselves are forgotten,
    and what they left in their group is ended."""
    with _running_lock:
        children = set(_running)
    for child in children:
        if child.poll() is not None:
            child._end_group()
    return {child for child in children if child.returncode is None}


@atexit.register
def _stop_all(timeout: float = 5.0) -> None:
    """The safety net: every child still running when the interpreter exits, all signalled at once."""
    with _running_lock:
        children = list(_running)
    for child in children:
        child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        child.stop(max(0.1, deadline - time.monotonic()))


def python_child(*args: str, **kwargs) -> ChildProcess:
    """``python ARGS...`` with this interpreter, from the repository root (``main.py PARAMETER``, ``-m module``)."""
    return ChildProcess([sys.executable, *args], **kwargs)


class ServerProcess:
    """A running ``python -m <module>`` that printed ``READY {json}``; ``info`` holds that JSON."""

    def __init__(self, module: str, *args: str, env: dict[str, str] | None = None, log_path: Path | None = None,
                 timeout: float = 60.0):
        self.module = module
        self.args = list(args)
        log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        try:
            self.proc = python_child("-m", module, *args, env={**os.environ, **(env or {})}, name=module,
                                     stdout=subprocess.PIPE, stderr=log)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # the child holds its own copy
        self.info = read_ready(self.proc, timeout)
        # Keep reading stdout so a chatty server never blocks on a full pipe.
        threading.Thread(target=self._drain_stdout, daemon=True).start()

    def _drain_stdout(self) -> None:
        for _ in self.proc.stdout:  # type: ignore[union-attr]
            pass

    def stop(self, timeout: float = 10.0) -> int:
        return self.proc.stop(timeout)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def read_ready(child: ChildProcess, timeout: float, describe: Callable[[], str] | None = None) -> dict:
    """The JSON of the ``READY {json}`` line the child prints on stdout; the child is stopped if none comes, and
    the error adds what ``describe`` returns then (its log)."""
    result: dict = {}

    def read() -> None:
        for raw in child.stdout:  # type: ignore[union-attr]
            line = raw.decode("utf-8", "replace").strip() if isinstance(raw, bytes) else raw.strip()
            if line.startswith("READY "):
                result.update(json.loads(line[len("READY "):]))
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not result:
        code = child.poll() if reader.is_alive() else child.wait_for(5)  # stdout closed: it is exiting
        child.stop()
        state = f"exited with code {code}" if code is not None else f"printed no READY line within {timeout} s"
        raise RuntimeError(f"{child.name} {state}" + (f":\n{describe()}" if describe else ""))
    return result


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


async def eventually(predicate, timeout: float, interval: float = 0.1) -> bool:
    """``wait_until`` for a coroutine: polls without blocking the event loop (the code under test runs on it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(interval)
    return bool(predicate())

"""The one helper that starts and ends child processes: nothing it started outlives the work that started it."""

from __future__ import annotations

import os
import signal
import subprocess

from emulators.process import ChildProcess, python_child, running_children, wait_until

# Starts a child of its own (through the helper when asked), prints the child's pid, then waits or fails.
PARENT = """
import subprocess, sys, time
from emulators.process import ChildProcess
child = ChildProcess(["sleep", "300"]) if sys.argv[1] == "helper" else subprocess.Popen(["sleep", "300"])
print(child.pid, flush=True)
if sys.argv[2] == "raise":
    raise KeyboardInterrupt
time.sleep(300)
"""


def gone(pid: int) -> bool:
    """Ended (a zombie waiting for its reaper counts: it runs no more)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def start_parent(how: str, then: str) -> tuple[ChildProcess, int]:
    parent = python_child("-c", PARENT, how, then, stdout=subprocess.PIPE)
    return parent, int(parent.stdout.readline())


def test_stop_ends_the_child_and_what_it_started():
    parent, grandchild = start_parent("popen", "wait")  # a grandchild the helper does not know about
    assert not gone(grandchild)
    assert parent.stop(5) == -signal.SIGTERM
    assert wait_until(lambda: gone(grandchild), 10)
    assert parent not in running_children()


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout():
    child = python_child("-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, "
                         "flush=True); time.sleep(300)", stdout=subprocess.PIPE)
    child.stdout.readline()  # SIGTERM ignored from here on
    assert child.stop(0.5) == -signal.SIGKILL


def test_a_child_of_a_child_joins_its_group_and_ends_with_it():
    parent, grandchild = start_parent("helper", "wait")
    assert os.getpgid(grandchild) == parent.pid
    parent.kill()  # as a crash: the parent had no chance to end it
    assert wait_until(lambda: gone(grandchild), 10)


def test_what_a_failed_run_left_running_is_ended_when_its_interpreter_exits():
    parent, grandchild = start_parent("helper", "raise")  # KeyboardInterrupt, nothing stopped by hand
    assert parent.wait(30) != 0
    assert wait_until(lambda: gone(grandchild), 10)


def test_with_block_ends_the_child_on_an_error():
    try:
        with ChildProcess(["sleep", "300"]) as child:
            raise RuntimeError("the test failed")
    except RuntimeError:
        pass
    assert child.returncode == -signal.SIGTERM

"""The log helpers' own logic: said once per outage, and a log queue that never blocks and stays bounded.

The pump's sending is a plain function here (pure queue logic); the reliability scenario ``runtime_logs_down``
runs it against the runtime stub with its log endpoint down and hanging.
"""

from __future__ import annotations

import threading

from connectors.logs import LogPump, OnceLogger, format_duration
from emulators.process import wait_until


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_once_logger_says_a_condition_when_it_begins_and_when_it_ends_with_its_duration():
    lines, clock = [], FakeClock()
    once = OnceLogger(lambda message, level: lines.append((level, message)), clock=clock)
    assert once.began("Store unreachable") and not once.began("Store unreachable")
    clock.now += 125
    assert once.lasting() == 125
    assert once.ended("Store reachable again") and not once.ended("Store reachable again")
    assert lines == [("warning", "Store unreachable"), ("info", "Store reachable again (after 2 min 5s)")]
    assert once.lasting() is None
    assert not once.ended("never began")  # an end without a beginning is not news


def test_once_logger_keys_reminders_and_forgetting():
    lines, clock = [], FakeClock()
    once = OnceLogger(lambda message, level: lines.append(message), remind_every=600, forget_after=120, clock=clock)
    once.began("partition 0 failing", key="0")
    once.began("partition 1 failing", key="1")  # another key: its own beginning
    for _ in range(10):
        clock.now += 61
        once.began("partition 0 failing", key="0")
    assert lines == ["partition 0 failing", "partition 1 failing", "partition 0 failing (still so after 10 min 10s, "
                     "11 times)"]
    clock.now += 121  # key 1 quiet for longer than forget_after: a new outage, said again
    once.began("partition 1 failing", key="1")
    assert lines[-1] == "partition 1 failing"


def test_format_duration():
    assert [format_duration(s) for s in (0.4, 59, 61, 3600 * 3 + 1234)] == ["0s", "59s", "1 min 1s", "3 h 20 min"]


class Runtime:
    """The runtime's log endpoint as the pump sees it: it may hang (until released) or refuse."""

    def __init__(self):
        self.received: list[dict] = []
        self.open = threading.Event()
        self.open.set()
        self.refusing = False
        self.calls = 0

    def send(self, batch: list[dict]) -> None:
        self.calls += 1
        self.open.wait()
        if self.refusing:
            raise ConnectionError("refused")
        self.received.extend(batch)

    def messages(self) -> list[str]:
        return [entry["message"] for entry in self.received]


def pump_for(runtime: Runtime, said: list, **kwargs) -> LogPump:
    pump = LogPump(runtime.send, lambda message, level: said.append((level, message)), **kwargs)
    return pump


def test_put_returns_while_the_runtime_hangs_and_the_lines_go_once_it_answers():
    runtime, said = Runtime(), []
    pump = pump_for(runtime, said, linger=0.05)
    runtime.open.clear()  # every send hangs
    logger = threading.Thread(target=lambda: [pump.put(f"line {n}", "error") for n in range(500)])
    logger.start()
    logger.join(30)
    assert not logger.is_alive(), "put waited on the runtime"
    assert wait_until(lambda: runtime.calls >= 1, 10)
    assert not pump.flush(0.05)  # bounded: the runtime still hangs
    runtime.open.set()
    assert pump.flush(10)
    assert runtime.messages() == [f"line {n}" for n in range(500)]  # all, in order, once


def test_a_full_queue_drops_the_oldest_info_lines_first_and_says_how_many_once_back():
    runtime, said = Runtime(), []
    pump = pump_for(runtime, said, capacity=10, batch_size=5, linger=0.0)
    runtime.refusing = True
    pump.put("first", "info")
    assert wait_until(lambda: said, 10)  # the outage is said once (through `say`, which queues it too)
    for n in range(5):
        pump.put(f"warning {n}", "warning")
    for n in range(20):
        pump.put(f"info {n}", "info")
    assert pump.queued <= 10 + 5  # the capacity, and the batch being retried
    runtime.refusing = False
    assert wait_until(lambda: any("accepts logs again" in message for _, message in said), 20)
    for level, message in said:  # what `say` said goes out the same way, as the trigger's log() does
        pump.put(message, level)
    assert pump.flush(10)
    messages = runtime.messages()
    # "first" was on its way when the runtime refused: kept; of the 25 lines queued after it, the 15 oldest info
    # lines went, the warnings stayed.
    assert messages[:11] == ["first"] + [f"warning {n}" for n in range(5)] + [f"info {n}" for n in range(15, 20)]
    [back] = [m for _, m in said if "accepts logs again" in m]
    assert "15 log lines were dropped meanwhile (15 info)" in back
    assert sum("failed" in m for _, m in said) == 1


def test_every_runs_on_the_pump_thread_until_the_process_ends():
    runtime, said = Runtime(), []
    pump = pump_for(runtime, said)
    ticks = []
    pump.every(0.05, lambda: (ticks.append(threading.current_thread().name), pump.put("status", "info")))
    assert wait_until(lambda: len(ticks) >= 3 and runtime.messages().count("status") >= 2, 10)
    assert set(ticks) == {"runtime-logs"}

"""The log helpers' own logic: said once per outage, and a log queue that never blocks and stays bounded.

The pump's queue logic with a plain function as the runtime; then a trigger's log() against the runtime stub with
its log endpoint hanging. The reliability scenarios ``*_runtime_logs_down`` run whole triggers through that.
"""

from __future__ import annotations

import signal
import threading

import pytest
from sekoia_automation.module import Module

from connectors.logs import LogPump, OnceLogger, format_duration
from connectors.trigger import CollectorTrigger
from emulators.process import wait_until
from emulators.runtime.harness import Runtime


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


class LogEndpoint:
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


def pump_for(runtime: LogEndpoint, said: list, **kwargs) -> LogPump:
    pump = LogPump(runtime.send, lambda message, level: said.append((level, message)), **kwargs)
    return pump


def test_put_returns_while_the_runtime_hangs_and_the_lines_go_once_it_answers():
    runtime, said = LogEndpoint(), []
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
    runtime, said = LogEndpoint(), []
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


class QuietTrigger(CollectorTrigger):
    """The base class alone: what every trigger's log() does."""

    def collect(self) -> None:
        pass


@pytest.fixture
def runtime(tmp_path):
    runtime = Runtime(tmp_path)
    yield runtime
    runtime.stop()


@pytest.fixture
def make_trigger(runtime, monkeypatch):
    """A trigger of ``cls`` with ``config``, in the environment the container gets from the runtime stub."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def make(cls: type[CollectorTrigger], config: dict) -> CollectorTrigger:
        for key, value in runtime.env(config).items():
            monkeypatch.setenv(key, value)
        return cls(Module())

    yield make
    for sig, handler in handlers.items():  # the SDK takes them over
        signal.signal(sig, handler)


def test_a_trigger_logs_without_waiting_for_a_hanging_runtime_and_the_lines_arrive_once_it_answers(
        runtime, make_trigger):
    trigger = make_trigger(QuietTrigger, {})
    trigger.log_request_timeout = (2.0, 2.0)  # each attempt against the hanging endpoint gives up sooner
    runtime.control(logs_hang_seconds=300)
    # The SDK sends error and critical lines at once, with retries: from an event loop that froze collection.
    logging = threading.Thread(target=lambda: [trigger.log(f"error {n}", "error") for n in range(20)] +
                               [trigger.log("fatal: stopping", "critical")])
    logging.start()
    logging.join(30)
    assert not logging.is_alive(), "log() waited on the runtime"
    exiting = threading.Thread(target=trigger._send_logs_to_api)  # what the SDK calls as the trigger ends
    exiting.start()
    exiting.join(trigger.log_flush_seconds + 20)
    assert not exiting.is_alive(), "the flush at exit is not bounded"
    runtime.control(logs_hang_seconds=0)
    assert wait_until(lambda: any("accepts logs again" in entry["message"] for entry in runtime.logs()), 60)
    messages = [entry["message"] for entry in runtime.logs()]
    assert [m for m in messages if m.startswith("error ")] == [f"error {n}" for n in range(20)]
    assert [(e["level"], e["message"]) for e in runtime.logs() if e["level"] == "critical"] == [
        ("critical", "fatal: stopping")]
    assert sum("Sending logs to the runtime failed (ReadTimeout)" in m for m in messages) == 1


class BeatingTrigger(CollectorTrigger):
    """A collect loop that beats like the triggers' monitors, and figures of its own."""

    def collect(self) -> None:
        self._delivered(7)
        while self.running:
            self.heartbeat()
            self._stopped.wait(0.05)

    def status(self) -> list[str]:
        return ["partition 0: 3 events behind"]


def test_the_status_line_comes_at_its_interval_with_the_triggers_figures(runtime, make_trigger):
    trigger = make_trigger(BeatingTrigger, {"status_interval_seconds": 0.3})
    running = threading.Thread(target=trigger.run)
    running.start()

    def statuses() -> list[str]:
        return [entry["message"] for entry in runtime.logs() if entry["message"].startswith("Status:")]

    try:
        assert wait_until(lambda: len(statuses()) >= 3, 30)
    finally:
        trigger.stop()
        running.join(30)
    first, second = statuses()[:2]
    assert first.startswith("Status: 7 records forwarded in the last ") and "partition 0: 3 events behind" in first
    assert second.startswith("Status: 0 records forwarded")  # since the previous line


def test_status_lines_keep_their_interval_when_beats_fall_just_after_it(make_trigger, monkeypatch):
    """Beats a little over a second apart (a busy loop) must not push every 2 s line to the next beat: 30 s of
    beats give 15 lines, not 10; after a stall, one line, then the interval again."""
    trigger = make_trigger(BeatingTrigger, {"status_interval_seconds": 2})
    trigger._status_interval = 2
    clock = [1000.0]
    monkeypatch.setattr("connectors.trigger.time.monotonic", lambda: clock[0])
    lines: list[str] = []
    monkeypatch.setattr(trigger, "status_line", lambda: lines.append("Status") or "Status: test")
    trigger._status_due = clock[0]
    for _ in range(28):  # a beat every 1.1 s: 0 .. 29.7 s
        trigger.heartbeat()
        clock[0] += 1.1
    assert len(lines) == 15
    clock[0] += 60  # stalled a minute
    trigger.heartbeat()
    trigger.heartbeat()
    assert len(lines) == 16
    clock[0] += 2.0
    trigger.heartbeat()
    assert len(lines) == 17

"""Delivery through a misbehaving network: the fault proxy between the forwarder and the runtime stub."""

import asyncio
import time
from urllib.parse import urlsplit

import orjson
import pytest

from connectors.delivery import BatchLimits, Forwarder
from connectors.progress import StallWatch
from connectors.retry import Backoff
from connectors.sinks import IntakeSink
from emulators.netfault import FaultProxy
from emulators.process import eventually


def events(count, start=0):
    return [orjson.dumps({"n": i}) for i in range(start, start + count)]


@pytest.fixture
def proxy(runtime):
    port = urlsplit(runtime.info["intake_url"]).port
    with FaultProxy("127.0.0.1", port) as proxy:
        yield proxy


def through(runtime, proxy, logs, timeout=(5.0, 120.0), progress=None, sink=None, max_bytes=1_000_000):
    sink = sink or IntakeSink(f"http://{proxy.address}", runtime.info["intake_key"], user_agent="tests")
    return Forwarder(
        sink,
        trigger="tests",
        limits=BatchLimits(max_events=50, max_age=0.1, max_bytes=max_bytes),
        log=lambda message, level: logs.append((level, message)),
        backoff=lambda: Backoff(base=0.05, cap=0.5),
        timeout=timeout,
        progress=progress,
    )


def acks_into(done, name):
    return lambda: done.append(name)


async def heartbeats(watch):
    """The trigger's heartbeat, as its collect loop beats: the watch is checked."""
    while True:
        watch.check()
        await asyncio.sleep(0.1)


def watched(runtime, proxy, logs, **options):
    """A forwarder whose sender is watched for stalls (1 s), recovered by renewing its connections, with the
    heartbeat running: (watch, forwarder, heartbeat task)."""
    watch = StallWatch("tests", "delivery", ("replacing its connections to the runtime",),
                       lambda message, level: logs.append((level, message)), stall_seconds=1.0)
    fwd = through(runtime, proxy, logs, progress=watch, **options)
    watch.recover = lambda reading, step: fwd.renew_connections()
    return watch, fwd, asyncio.create_task(heartbeats(watch))


async def test_a_frozen_connection_is_given_up_after_its_read_inactivity_bound(runtime, proxy):
    """A keep-alive connection gone silent (a NAT that forgot it: no byte, no FIN, no RST) costs the read
    inactivity bound, then the request goes again on a new connection: nothing lost."""
    logs, done = [], []
    fwd = through(runtime, proxy, logs, timeout=(5.0, 1.0))
    await fwd.add(events(50), ack=acks_into(done, "before"))
    assert await fwd.drain(timeout=30)
    assert proxy.freeze() >= 1  # the pool's connections
    started = time.monotonic()
    await fwd.add(events(50, start=50), ack=acks_into(done, "frozen"))
    assert await fwd.drain(timeout=60)
    recovered = time.monotonic() - started
    await fwd.close()
    assert done == ["before", "frozen"]
    assert sorted(runtime.delivered()) == sorted(events(100))
    assert any("Timeout" in message for level, message in logs if level == "warning")
    print(f"frozen connection: recovered in {recovered:.1f} s")


async def test_a_request_unanswered_for_the_stall_time_gets_new_connections(runtime, proxy):
    """With a read bound far off, the stall watch finds the request that hears nothing: the pool is replaced, the
    request sent again on a new connection; the watch says so, and that delivery progresses again."""
    logs, done = [], []
    watch, fwd, beating = watched(runtime, proxy, logs, timeout=(5.0, 120.0))
    try:
        await fwd.add(events(50), ack=acks_into(done, "before"))
        assert await fwd.drain(timeout=30)
        assert proxy.freeze() >= 1
        await fwd.add(events(50, start=50), ack=acks_into(done, "frozen"))
        assert await fwd.drain(timeout=60)
    finally:
        beating.cancel()
    await fwd.close()
    assert done == ["before", "frozen"]
    assert sorted(runtime.delivered()) == sorted(events(100))
    assert any(level == "warning" and "no progress" in m and "replacing its connections" in m for level, m in logs)
    assert any(level == "info" and "progresses again" in m for level, m in logs)
    assert watch.failed is None


async def test_a_runtime_that_never_answers_again_reaches_the_last_step_and_liveness(runtime, proxy):
    """Replacing the connections brings no answer (every connection, new ones too, is blackholed): the request
    given up is no progress, so the watch reaches its last step and reports the trigger unhealthy; once the
    runtime answers again, the records arrive and the trigger is healthy again."""
    logs, done = [], []
    watch, fwd, beating = watched(runtime, proxy, logs, timeout=(5.0, 120.0))
    try:
        await fwd.add(events(50), ack=acks_into(done, "before"))
        assert await fwd.drain(timeout=30)
        proxy.blackhole(True)
        await fwd.add(events(50, start=50), ack=acks_into(done, "held"))
        assert await eventually(lambda: watch.failed is not None, 30)
        assert any(level == "error" and "unhealthy" in m for level, m in logs)
        proxy.blackhole(False)
        assert await fwd.drain(timeout=60)
        assert await eventually(lambda: watch.failed is None, 10)
    finally:
        beating.cancel()
    await fwd.close()
    assert done == ["before", "held"]
    assert sorted(set(runtime.delivered())) == sorted(events(100))


async def test_a_connection_frozen_while_its_request_is_written_is_given_up_at_the_stall(runtime, proxy):
    """The read bound starts once the body is written: a connection frozen with megabytes still to write (its
    socket buffers full) would wait for ever. The stall watch gives the request up and it goes again."""
    logs, done = [], []
    # The read bound far off: when the body does fit the socket buffers, it must not race the stall watch.
    watch, fwd, beating = watched(runtime, proxy, logs, timeout=(5.0, 30.0), max_bytes=7_000_000)
    large = [orjson.dumps({"n": n, "pad": "p" * 130_000}) for n in range(50)]  # one request of 6.5 MB
    try:
        await fwd.add(events(50), ack=acks_into(done, "before"))
        assert await fwd.drain(timeout=30)
        assert proxy.freeze() >= 1
        await fwd.add(large, ack=acks_into(done, "large"))
        assert await fwd.drain(timeout=60)
    finally:
        beating.cancel()
    await fwd.close()
    assert done == ["before", "large"]
    assert sorted(runtime.delivered()) == sorted(events(50) + large)
    assert any(level == "warning" and "no progress" in m for level, m in logs)
    assert any("did not answer within the stall time" in m for _, m in logs)


async def test_a_blackholed_network_is_an_outage_and_nothing_is_lost_when_it_comes_back(runtime, proxy):
    logs, done = [], []
    fwd = through(runtime, proxy, logs, timeout=(1.0, 1.0))
    await fwd.add(events(50), ack=acks_into(done, "before"))
    assert await fwd.drain(timeout=30)
    proxy.blackhole(True)
    await fwd.add(events(100, start=50), ack=acks_into(done, "during"))
    assert await eventually(lambda: fwd.outage_seconds is not None, 30)
    proxy.blackhole(False)
    started = time.monotonic()
    assert await fwd.drain(timeout=60)
    recovered = time.monotonic() - started
    await fwd.close()
    assert done == ["before", "during"]
    delivered = runtime.delivered()
    assert set(delivered) == set(events(150))  # every event; those held in the hole may arrive twice
    assert fwd.outage_seconds is None
    assert any("reachable again" in message for _, message in logs)
    print(f"blackhole: recovered in {recovered:.1f} s after it ended, {len(delivered) - 150} duplicates")


class FlakySink(IntakeSink):
    """An intake sink with a bug that strikes its first few batches."""

    def __init__(self, *args, failures, **kwargs):
        super().__init__(*args, **kwargs)
        self.failures = failures

    def prepare(self, events):
        if self.failures:
            self.failures -= 1
            raise KeyError("a bug")
        return super().prepare(events)


async def test_an_unexpected_error_is_an_outage_in_the_status_and_its_figure(runtime, proxy):
    logs, done = [], []
    sink = FlakySink(f"http://{proxy.address}", runtime.info["intake_key"], user_agent="tests", failures=3)
    fwd = through(runtime, proxy, logs, sink=sink)
    await fwd.add(events(50), ack=acks_into(done, "all"))
    assert await eventually(lambda: fwd.outage_seconds is not None, 10)
    assert await fwd.drain(timeout=30)
    await fwd.close()
    assert done == ["all"] and fwd.outage_seconds is None
    assert [level for level, m in logs if "unexpectedly" in m] == ["error"]  # once, however many attempts
    assert any("works again" in m for _, m in logs)

"""The client's own ceiling: the bare aio ``EventHubConsumerClient.receive_batch`` reading every event, doing nothing.

Timed from the call to ``receive_batch`` (imports and the client made: its readiness, as the trigger's is its
liveness), the CPU spent until then reported apart, like the trigger's.

``python -m benchmarks.bare_consumer CONNECTION_STRING HUB GROUP EVENTS TIMEOUT`` prints one JSON line of figures.
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time

import orjson
from azure.eventhub.aio import EventHubConsumerClient


async def consume(connection_string: str, hub: str, group: str, expected: int, timeout: float) -> dict:
    client = EventHubConsumerClient.from_connection_string(connection_string, consumer_group=group,
                                                           eventhub_name=hub)
    received = 0
    first: tuple[float, int] | None = None  # when the first batch arrived, and its size
    done = asyncio.Event()

    async def on_batch(partition_context, events):
        nonlocal received, first
        received += len(events)
        if first is None:
            first = (time.monotonic() - started, received)
        if received >= expected:
            done.set()

    started = time.monotonic()
    before = resource.getrusage(resource.RUSAGE_SELF)  # imports and the client: its start-up, as the trigger's
    task = asyncio.create_task(client.receive_batch(on_batch, max_batch_size=300, starting_position="-1"))
    try:
        await asyncio.wait_for(done.wait(), timeout)
    except asyncio.TimeoutError:
        pass
    seconds = time.monotonic() - started
    await client.close()
    task.cancel()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    first_s, first_events = first or (None, 0)
    return {"events": received, "seconds": seconds, "cpu_seconds": usage.ru_utime + usage.ru_stime,
            "startup_cpu_seconds": before.ru_utime + before.ru_stime,
            "peak_rss_mb": usage.ru_maxrss * 1024 / 1e6, "first_batch_s": first_s, "first_batch_events": first_events}


def main() -> None:
    connection_string, hub, group, expected, timeout = sys.argv[1:6]
    figures = asyncio.run(consume(connection_string, hub, group, int(expected), float(timeout)))
    print(orjson.dumps(figures).decode(), flush=True)


if __name__ == "__main__":
    main()

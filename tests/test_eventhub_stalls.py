"""Never silently stuck (issue 16, Event Hubs): connections that go silent without closing, a checkpoint past the
end of its partition, a reading that stops progressing. The real clients against the emulator and Azurite, with a
fault proxy (``emulators.netfault``) between the trigger and a server."""

from __future__ import annotations

import time

import pytest

from emulators.netfault import FaultProxy
from tests.eventhub_helpers import EventHubStack, compare, ids_of, records_with_ids, terminate, wait_until


@pytest.fixture
def stack(tmp_path):
    with EventHubStack(tmp_path / "stack", partitions=4) as stack:
        yield stack


def through(proxy: FaultProxy, connection_string: str, port: int) -> str:
    """The connection string with its endpoint's port replaced by the proxy's."""
    assert f":{port};" in connection_string or f":{port}/" in connection_string
    return connection_string.replace(f":{port};", f":{proxy.port};").replace(f":{port}/", f":{proxy.port}/")


def all_delivered(stack: EventHubStack, records: list[bytes], proc) -> bool:
    wanted = set(ids_of(records))
    return wanted <= set(stack.delivered_ids()) or proc.poll() is not None


def test_frozen_hub_connections_are_dropped_and_reopened_within_a_minute(stack):
    """Every open AMQP connection goes silent for good (no byte, no FIN, no RST: a NAT that dropped its state):
    the client's idle timeout closes them, the partitions are read again on new connections, nothing is lost."""
    port = stack.emulator.info["port"]
    with FaultProxy("127.0.0.1", port) as proxy:
        config = stack.config(hub_connection_string=through(proxy, stack.connection_string, port))
        proc = stack.start_process(config)
        before = records_with_ids(400, "before")
        stack.publish_envelopes(before, per_envelope=10)
        assert wait_until(lambda: all_delivered(stack, before, proc), 60, 0.2)
        assert proc.poll() is None
        frozen = proxy.freeze()
        assert frozen >= 4  # the four partitions' connections at least
        frozen_at = time.monotonic()
        after = records_with_ids(400, "after")
        stack.publish_envelopes(after, per_envelope=10)  # straight to the hub, not through the proxy
        assert wait_until(lambda: all_delivered(stack, after, proc), 90, 0.2), \
            f"{len(set(ids_of(after)) - set(stack.delivered_ids()))} records not delivered after the freeze"
        recovered_s = time.monotonic() - frozen_at
        assert terminate(proc) == 0
    result = compare(ids_of(before + after), stack.delivered_ids())
    assert result["lost"] == 0, result
    assert recovered_s < 60, recovered_s
    print(f"frozen connections: recovered in {recovered_s:.1f} s, {result}")

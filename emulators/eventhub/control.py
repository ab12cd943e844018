"""Test-harness control over HTTP (``/_emulator/control``, like the other emulators), for what the real service
changes outside AMQP: raising a hub's partition count is an Azure Resource Manager operation there, and the AMQP
``$management`` READ then answers the new ``partition_count`` and ``partition_ids``.

    GET  /_emulator/control  -> {"hubs": {name: partitions}, "stats": {...}, "receivers_ended": [{at, hub,
                                consumer_group, partition, stolen}, ...]}  (consumer links gone, epoch seconds;
                                stolen: detached by a newer epoch, else closed by their client)
    POST /_emulator/control  {"hub": NAME (default: the first), "partition_count": N}
                             -> {"hubs": {...}, "added": ["4", "5"]}; 400 when N is lower than now (the service
                                never removes partitions) or not an integer, 404 for an unknown hub
    POST /_emulator/control  {"hub": NAME, "recreate": true} -> the hub deleted and created again under the same
                                name: same partitions, empty, sequence numbers from 0; its links detached
    POST /_emulator/control  {"hub": NAME, "stall_receivers": true} -> {"stalled": N}: the hub's consumer links open
                                now deliver nothing more, their connections alive (links attached later deliver)
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .server import EventHubEmulator


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(body), status=status, content_type="application/json")


class ControlApi:
    def __init__(self, emulator: EventHubEmulator) -> None:
        self.emulator = emulator
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self, host: str, port: int) -> str:
        app = web.Application()
        app.add_routes([web.get("/_emulator/control", self.get_control),
                        web.post("/_emulator/control", self.post_control)])
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://{host}:{bound}"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def view(self) -> dict[str, Any]:
        broker = self.emulator.broker
        return {"hubs": dict(self.emulator.hubs), "stats": self.emulator.stats(),
                "receivers_ended": list(broker.receivers_ended) if broker else []}

    async def get_control(self, request: web.Request) -> web.Response:
        return _json(self.view())

    async def post_control(self, request: web.Request) -> web.Response:
        try:
            changes = json.loads(await request.read() or b"{}")
            if not isinstance(changes, dict) or not ("partition_count" in changes or changes.get("recreate")
                                                     or changes.get("stall_receivers")):
                raise ValueError('expected {"hub": NAME, "partition_count": N} or {"hub": NAME, "recreate": true}')
            if changes.get("stall_receivers"):
                stuck = self.emulator.stall_receivers(changes.get("hub"))
                return _json({"hubs": dict(self.emulator.hubs), "stalled": stuck})
            if changes.get("recreate"):
                self.emulator.recreate_hub(changes.get("hub"))
                return _json({"hubs": dict(self.emulator.hubs), "recreated": True})
            added = self.emulator.set_partition_count(changes.get("hub"), changes["partition_count"])
        except KeyError as error:
            return _json({"error": f"unknown event hub {error.args[0]!r}"}, 404)
        except ValueError as error:
            return _json({"error": str(error)}, 400)
        return _json({"hubs": dict(self.emulator.hubs), "added": added})

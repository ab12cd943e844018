"""The "Consume EventHub messages" trigger: Azure Event Hubs records to Sekoia, checkpointed after delivery."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from typing import Any

from azure_eventhub.checkpoints import CheckpointWriter
from azure_eventhub.clients import build_client, build_credential, build_store, probe_hub, probe_store
from azure_eventhub.config import EventHubConfiguration
from azure_eventhub.consumer import Consumer, Settings, describe_store
from azure_eventhub.records import RecordSplitter, text_as_json, text_as_raw
from connectors.state import StateFile
from connectors.trigger import CollectorTrigger


class EventHubTrigger(CollectorTrigger):
    configuration_model = EventHubConfiguration
    settings = Settings()

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self._log_queue: queue.SimpleQueue | None = None

    def stop(self, *args, **kwargs) -> None:
        super().stop(*args, **kwargs)
        # Called from the SIGTERM handler (main thread) or another thread: wake the loop so it stops now.
        loop, event = self._loop, self._stop_requested
        if loop is not None and event is not None:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:
                pass  # the loop already ended

    def collect(self) -> None:
        # The client libraries log every HTTP request and link event at INFO: keep their warnings only.
        logging.getLogger("azure").setLevel(max(logging.WARNING, logging.getLogger("azure").level))
        asyncio.run(self._consume(self.configuration))  # type: ignore[arg-type]

    def _log_soon(self, message: str, level: str) -> None:
        """Log without blocking the event loop: from the loop, through a daemon thread.

        An error log is sent to the runtime synchronously, with retries for over a minute when the runtime is
        down: neither the loop nor the process exit may wait for that (the SDK sends what is left at exit).
        """
        loop = self._loop
        try:
            on_loop = loop is not None and asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False  # another thread (the record worker): it may block
        if not on_loop:
            self.log(message, level)
            return
        if self._log_queue is None:
            self._log_queue = queue.SimpleQueue()
            threading.Thread(target=self._pump_logs, args=(self._log_queue,), name="eventhub-logs",
                             daemon=True).start()
        self._log_queue.put((message, level))

    def _pump_logs(self, pending: queue.SimpleQueue) -> None:
        while True:
            message, level = pending.get()
            try:
                self.log(message, level)
            except Exception:  # noqa: BLE001,S110 - the SDK keeps unsent logs and sends them at exit
                pass

    async def _unless_stopped(self, coroutine) -> tuple[bool, Any]:
        """``(True, result)`` of a start-up step, or ``(False, None)`` if a stop came first (a probe may take a
        minute against an unreachable endpoint: SIGTERM must not wait for it)."""
        step = asyncio.ensure_future(coroutine)
        stop = asyncio.ensure_future(self._stop_requested.wait())  # type: ignore[union-attr]
        await asyncio.wait({step, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if step.done():
            return True, step.result()
        step.cancel()
        await asyncio.gather(step, return_exceptions=True)
        return False, None

    async def _consume(self, config: EventHubConfiguration) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        if not self.running:
            return
        forwarder = self.forwarder  # raises ConfigurationError for a missing intake_server, before connecting
        splitter = RecordSplitter(config.categories, text_as_raw if config.intake_key else text_as_json)
        credential = build_credential(config)
        store = client = None
        try:
            finished, _ = await self._unless_stopped(probe_store(config, credential))
            if finished:
                finished, properties = await self._unless_stopped(probe_hub(config, credential))
            if not finished:
                return
            store = build_store(config, self.state_dir, credential)
            client = build_client(config, store, credential)
            self._log_soon(
                f"Consuming event hub `{config.hub_name}` ({len(properties.get('partition_ids', []))} partitions) "
                f"of {config.namespace_host}, consumer group `{config.hub_consumer_group}`, checkpoints in "
                f"{describe_store(config, store)}",
                "info",
            )
            # Checkpoints must be written under the very namespace the client's processor reads them from.
            namespace = getattr(getattr(client, "_address", None), "hostname", None) or config.namespace_host
            writer = CheckpointWriter(store, namespace, config.hub_name or "", config.hub_consumer_group,
                                      self._log_soon, self._loop)
            consumer = Consumer(
                config, client, writer, forwarder, splitter,
                log=self._log_soon,
                stop_requested=self._stop_requested,
                is_running=lambda: self.running,
                heartbeat=self.heartbeat,
                lag=lambda seconds: self.put_events_lag(self.metric_intake, seconds),
                settings=self.settings,
                owner_file=StateFile(self.state_dir / "eventhub-owner.json") if config.uses_storage else None,
            )
            await consumer.run()
        finally:
            for closable in (client, store, credential):
                if closable is not None:
                    try:
                        await asyncio.wait_for(closable.close(), 10)
                    except Exception:  # noqa: BLE001,S110 - closing after a failure must not hide it
                        pass
            self._loop = None

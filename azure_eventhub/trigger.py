"""The "Consume EventHub messages" trigger: Azure Event Hubs records to Sekoia, checkpointed after delivery."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from azure_eventhub import metrics
from azure_eventhub.checkpoints import OWNER_CHECK_MAX_AGE, CheckpointWriter
from azure_eventhub.clients import build_client, build_credential, build_store, close_before, hub_namespace, probe
from azure_eventhub.config import EventHubConfiguration
from azure_eventhub.consumer import RECOVERY_STEPS, STOP_AFTER_GRACE, Consumer, Settings, describe_store
from azure_eventhub.records import RecordSplitter, text_as_json, text_as_raw
from connectors.logs import format_duration
from connectors.metrics import gauge_values
from connectors.state import StateFile
from connectors.stopping import Stopping
from connectors.trigger import CollectorTrigger


class EventHubTrigger(CollectorTrigger):
    configuration_model = EventHubConfiguration
    settings = Settings()

    def collect(self) -> None:
        # The client libraries log every HTTP request and link event at INFO: keep their warnings only.
        logging.getLogger("azure").setLevel(max(logging.WARNING, logging.getLogger("azure").level))
        self.run_async(lambda stopping: self._consume(self.configuration, stopping))  # type: ignore[arg-type]

    def _secret_values(self) -> list[str]:
        # storage_account_url is secret for its SAS token only: the account's address stays readable in messages.
        url = self.configuration.storage_account_url  # type: ignore[union-attr]
        values = [value for value in super()._secret_values() if value != url]
        return values + ([url.split("?", 1)[1]] if url and "?" in url else [])

    def status(self) -> list[str]:
        """Backlog and lag per partition owned, from the gauges the consumer's monitor keeps up to date."""
        backlog, lag = gauge_values(metrics.backlog), gauge_values(metrics.lag_seconds)
        owned = int(sum(gauge_values(metrics.owned_partitions).values()))
        if not owned:
            return ["no partition owned"]
        partitions = ", ".join(
            f"{partition}: {int(behind)} events behind, lag {format_duration(lag.get(partition, 0.0))}"
            for partition, behind in sorted(backlog.items(), key=lambda item: int(item[0]) if item[0].isdigit() else 0)
        )
        return [f"{owned} partitions owned" + (f" ({partitions})" if partitions else "")]

    async def _consume(self, config: EventHubConfiguration, stopping: asyncio.Event) -> None:
        if not self.running:
            return
        forwarder = self.forwarder  # raises ConfigurationError for a missing intake_server, before connecting
        splitter = RecordSplitter(config.categories, text_as_raw if config.intake_key else text_as_json)
        credential = build_credential(config)
        store = client = consumer = None
        try:
            properties = await self.unless_stopping(probe(config, credential))
            partition_ids = properties.get("partition_ids") or None
            store = build_store(config, self.state_dir, credential)
            client = build_client(config, store, credential)
            client.known_partition_ids = partition_ids  # the processor's first round: no second listing
            self.log(
                f"Consuming event hub `{config.hub_name}` ({len(partition_ids or [])} partitions) "
                f"of {config.namespace_host}, consumer group `{config.hub_consumer_group}`, checkpoints in "
                f"{describe_store(config, store)}",
                "info",
            )
            # Checkpoints must be written under the very namespace the client's processor reads them from.
            namespace = hub_namespace(config)
            writer = CheckpointWriter(store, namespace, config.hub_name or "", config.hub_consumer_group, self.log,
                                      owner_max_age=min(OWNER_CHECK_MAX_AGE, config.load_balancing_interval))
            consumer = Consumer(
                config, client, writer, forwarder, splitter,
                log=self.log,
                stop_requested=stopping,
                is_running=lambda: self.running,
                heartbeat=self.heartbeat,
                lag=lambda seconds: self.put_events_lag(self.metric_intake, seconds),
                settings=replace(self.settings, stop_grace=self.stop_grace_seconds),
                owner_file=StateFile(self.state_dir / "eventhub-owner.json") if config.uses_storage else None,
                partition_ids=partition_ids,
                watch=self.watch_progress("partition", RECOVERY_STEPS),
            )
            await consumer.run()
        except Stopping:
            pass  # stopped during the start-up probes: nothing was read
        finally:
            # Within the consumer's stop deadline when it was stopping, else (a start-up failure) this long.
            deadline = consumer.stop_deadline if consumer is not None else None
            await close_before((client, store, credential),
                               deadline or asyncio.get_running_loop().time() + STOP_AFTER_GRACE)

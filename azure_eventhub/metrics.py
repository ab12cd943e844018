"""Prometheus metrics of the Event Hubs trigger (same namespace as the module's shared metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from connectors.metrics import NAMESPACE

events_forwarded = Counter(
    "eventhub_events_forwarded", "Event Hubs messages whose records the runtime confirmed", namespace=NAMESPACE
)
records_forwarded = Counter(
    "eventhub_records_forwarded", "Records (one per diagnostic record) the runtime confirmed", namespace=NAMESPACE
)
bodies_skipped = Counter(
    "eventhub_skipped", "Bodies or records not forwarded, by reason (empty, heartbeat, filtered)", ["reason"],
    namespace=NAMESPACE,
)
text_bodies = Counter(
    "eventhub_text_bodies", "Non-JSON bodies forwarded as text, by encoding (utf8, invalid_utf8)", ["encoding"],
    namespace=NAMESPACE,
)
backlog = Gauge(
    "eventhub_backlog", "Events enqueued in the partition and not processed yet (last enqueued - last processed)",
    ["partition"], namespace=NAMESPACE,
)
lag_seconds = Gauge(
    "eventhub_lag_seconds", "Age of the last processed event when it was processed", ["partition"],
    namespace=NAMESPACE,
)
checkpoint_sequence = Gauge(
    "eventhub_checkpoint_sequence_number", "Sequence number of the last checkpoint written", ["partition"],
    namespace=NAMESPACE,
)
checkpoints_written = Counter("eventhub_checkpoints_written", "Checkpoints written to the store", namespace=NAMESPACE)
checkpoint_failures = Counter(
    "eventhub_checkpoint_failures", "Checkpoint writes that failed (retried)", namespace=NAMESPACE
)
checkpoints_dropped = Counter(
    "eventhub_checkpoints_dropped",
    "Delivered positions not checkpointed: their partition had closed here (moved to another instance), whose "
    "new owner checkpoints from where it started", namespace=NAMESPACE,
)
partitions = Gauge("eventhub_partitions", "Partitions of the event hub, checked while running", namespace=NAMESPACE)
owned_partitions = Gauge("eventhub_owned_partitions", "Partitions this instance reads now", namespace=NAMESPACE)
receive_errors = Counter(
    "eventhub_receive_errors", "Errors reported by the Event Hubs client, by kind", ["kind"], namespace=NAMESPACE
)
events_expired = Counter(
    "eventhub_events_expired",
    "Events that left the event hub (its retention) before this trigger read them: lost", ["partition"],
    namespace=NAMESPACE,
)

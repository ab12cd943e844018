"""Prometheus metrics of the module, next to the SDK's standard ones (served on the SDK's exporter port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

NAMESPACE = "symphony_module_microsoft"

# Shared by both triggers; the `trigger` label is the docker parameter.
delivered_events = Counter(
    "delivered_events", "Events confirmed by the Sekoia runtime", ["trigger"], namespace=NAMESPACE
)
delivery_batches = Counter(
    "delivery_batches", "Batches handed to the runtime, by outcome", ["trigger", "outcome"], namespace=NAMESPACE
)
delivery_seconds = Histogram(
    "delivery_seconds",
    "Time from handing a batch to the runtime until it was confirmed, retries included",
    ["trigger"],
    namespace=NAMESPACE,
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
delivery_retries = Counter(
    "delivery_retries", "Attempts to reach the runtime that failed and were retried", ["trigger"], namespace=NAMESPACE
)
oversize_events = Counter(
    "oversize_events",
    "Events over the intake's 250,000-byte limit: sent shortened, kept whole in the data path",
    ["trigger"],
    namespace=NAMESPACE,
)
refused_events = Counter(
    "refused_events",
    "Events the runtime refused for good (HTTP 400, 413...): not sent, kept in the data path",
    ["trigger"],
    namespace=NAMESPACE,
)
pending_batches = Gauge(
    "pending_batches", "Batches waiting for the runtime's confirmation", ["trigger"], namespace=NAMESPACE
)


def gauge_values(metric) -> dict[str, float]:
    """A metric's current values by its first label's value ("" without labels), through the public collect()."""
    values: dict[str, float] = {}
    for family in metric.collect():
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket", "_count", "_sum")):
                continue
            label = next(iter(sample.labels.values()), "")
            values[label] = values.get(label, 0.0) + sample.value
    return values

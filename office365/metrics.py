"""Prometheus metrics of the Office 365 trigger (same namespace as the module's shared ones)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from connectors.metrics import NAMESPACE

_P = "o365_"

records_forwarded = Counter(
    _P + "records_forwarded", "Audit records confirmed by the Sekoia runtime", ["content_type"], namespace=NAMESPACE
)
blobs_forwarded = Counter(
    _P + "blobs_forwarded", "Content blobs whose records were all confirmed", ["content_type"], namespace=NAMESPACE
)
duplicate_records = Counter(
    _P + "duplicate_records",
    "Records not forwarded because the same record was already forwarded from another blob",
    ["content_type"],
    namespace=NAMESPACE,
)
skipped_blobs = Counter(
    _P + "skipped_blobs",
    "Blobs skipped: not fetchable (expired, vanished, invalid id) or processing failed after every retry (failed)",
    ["content_type", "reason"],
    namespace=NAMESPACE,
)
bad_content = Counter(
    _P + "bad_content",
    "Unusable content: blobs that are not a JSON array, records that are not objects, invalid UTF-8",
    ["content_type", "kind"],
    namespace=NAMESPACE,
)
lag_seconds = Gauge(
    _P + "lag_seconds",
    "Age of the resume point: content created before it was all delivered",
    ["content_type"],
    namespace=NAMESPACE,
)
pending_blobs = Gauge(_P + "pending_blobs", "Blobs listed and not yet delivered", ["content_type"], namespace=NAMESPACE)
oldest_pending_seconds = Gauge(
    _P + "oldest_pending_seconds",
    "Age of the oldest blob listed and not yet delivered (content expires after 7 days)",
    ["content_type"],
    namespace=NAMESPACE,
)
throttled = Counter(_P + "throttled_responses", "Answers 403 AF429 or 429 from the API", namespace=NAMESPACE)
requests = Counter(
    _P + "requests",
    "Requests to the Management Activity API, by kind and outcome",
    ["kind", "outcome"],
    namespace=NAMESPACE,
)
concurrency = Gauge(_P + "concurrency", "Requests allowed in flight now (adaptive)", namespace=NAMESPACE)
quota_pace = Gauge(
    _P + "quota_pace_per_minute",
    "Requests per minute the trigger paces itself to (0: unpaced, no throttling seen)",
    namespace=NAMESPACE,
)

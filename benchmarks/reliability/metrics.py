"""Reading a trigger's Prometheus page: what it counted."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def counters(text: str | None) -> dict[tuple[str, tuple], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus page."""
    values: dict[tuple[str, tuple], float] = {}
    for family in text_string_to_metric_families(text or ""):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def total(values: dict, name: str, **labels: str) -> float:
    """Sum of the samples called ``name`` whose labels include ``labels``."""
    return sum(value for (sample, sample_labels), value in values.items()
               if sample == name and set(labels.items()) <= set(sample_labels))


def has(values: dict, name: str) -> bool:
    return any(sample == name for sample, _ in values)

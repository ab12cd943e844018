"""Errors that stop a trigger with one clear message instead of a retry storm."""

from __future__ import annotations


class ConfigurationError(Exception):
    """A configuration value the trigger cannot work with: names the field and what is expected."""

    def __init__(self, field: str, expected: str):
        self.field = field
        self.expected = expected
        super().__init__(f"Invalid configuration: `{field}`: {expected}")


class CorruptStateError(Exception):
    """A checkpoint file that cannot be read. Never treated as "start over": that would re-read or skip data."""

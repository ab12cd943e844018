"""The one place that reaches into sekoia-automation-sdk's non-public members, each where the SDK offers no public
way to do what the triggers need. Read from the version pinned in poetry.lock (``SDK_VERSION``);
tests/test_sdk_contract.py checks every member used here, so an SDK release that moves one fails there, by name,
and the upgrade is a lock update plus this file, not an investigation.
"""

from __future__ import annotations

from typing import Any

from sekoia_automation.trigger import Trigger

SDK_VERSION = "1.27.0"


def stop_log_timer(trigger: Trigger) -> None:
    """The SDK sends queued logs from a 5 s timer of its own; our pump sends them, so the timer must not."""
    trigger._logs_timer.stop()


def cached_configuration(trigger: Trigger) -> Any:
    """The configuration the SDK's ``configuration`` property caches (None until loaded)."""
    return trigger._configuration


def cache_configuration(trigger: Trigger, value: Any) -> None:
    trigger._configuration = value


def apply_node_secrets(trigger: Trigger) -> None:
    """A trigger's node-level secrets into its configuration: ``Connector`` skips them, ``Trigger`` applies them,
    and ours are trigger arguments."""
    Trigger._apply_node_secrets(trigger)


def fetch_runtime_secrets_once(trigger: Trigger) -> None:
    """The runtime's secrets applied as the SDK's ``execute`` applies them, but asked once: its fetch retries for
    minutes (a tenacity policy), too long for the pre-flight check."""
    from tenacity import stop_after_attempt

    fetch = Trigger._get_secrets_from_server.retry_with(stop=stop_after_attempt(1))  # type: ignore[attr-defined]
    secrets, node_secrets = fetch(trigger)
    trigger.module.set_secrets(secrets)
    trigger._node_secrets = node_secrets
    trigger._apply_node_secrets()


def reset_error_count(trigger: Trigger) -> None:
    """Successive uncaught errors: the SDK resets the count when it sends events itself, we do on delivery."""
    trigger._error_count = 0


class LogRules:
    """The SDK's two rules on the lines sent to the runtime, kept in its own state so that its ``log`` and ours
    agree: one critical line per run, and the same line at most once per ``log_ttl``."""

    def __init__(self, trigger: Trigger):
        self._trigger = trigger

    @property
    def critical_sent(self) -> bool:
        return self._trigger._critical_log_sent

    def critical_was_sent(self) -> None:
        self._trigger._critical_log_sent = True

    def first_in_a_while(self, key: str) -> bool:
        """True once per key and TTL (then remembered)."""
        cache = self._trigger._rate_limited_logs
        if cache.get(key):
            return False
        cache[key] = True
        return True

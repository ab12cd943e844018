"""Secret settings outside the log handlers: their values for the one client that needs them (``reveal``), and
error reports to Sentry without them (``scrub_sentry_events``).

The settings are ``pydantic.SecretStr``: a configuration printed, put in an exception or in a Sentry context
shows ``**********``. Sentry's SDK would still send, with an exception, the local variables of every frame (a
connection string held by the function that failed) and the breadcrumbs of log records taken before the log
handlers' redaction: every event is scrubbed here, whoever initialised Sentry and whenever.
"""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from connectors.logs import Redactor


def reveal(value: SecretStr | str | None) -> str | None:
    """The value of a secret setting. A plain string too: the SDK sets node-level secrets on the validated
    configuration with ``setattr``, unconverted."""
    if value is None:
        return None
    return value.get_secret_value() if isinstance(value, SecretStr) else str(value)


_state: dict[str, Any] = {"redactor": None, "installed": False}


def scrub_event(event: dict, redactor: Redactor | None) -> dict:
    """No frame's local variables, and every string of the event through the redaction."""
    for container in (event.get("exception"), event.get("threads")):
        for value in (container or {}).get("values", []) or []:
            for frame in ((value or {}).get("stacktrace") or {}).get("frames", []) or []:
                frame.pop("vars", None)
    return _redact(event, redactor) if redactor is not None else event


def _redact(value: Any, redactor: Redactor) -> Any:
    if isinstance(value, str):
        return redactor(value)
    if isinstance(value, dict):
        return {key: _redact(item, redactor) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item, redactor) for item in value]
    if isinstance(value, tuple):
        return tuple(_redact(item, redactor) for item in value)
    return value


def _processor(event: dict, hint: dict) -> dict:
    return scrub_event(event, _state["redactor"])


def scrub_sentry_events(redactor: Redactor) -> None:
    """Every Sentry event of the process (errors, messages, their breadcrumbs) goes through ``redactor`` and
    carries no local variables. A global event processor: it holds for a client initialised before or after
    this call (the SDK's ``Module`` initialises it from the runtime's DSN, without options of ours)."""
    import sentry_sdk

    _state["redactor"] = redactor
    if not _state["installed"]:
        sentry_sdk.scope.add_global_event_processor(_processor)
        _state["installed"] = True
    client = sentry_sdk.get_client()
    if client.is_active():
        client.options["include_local_variables"] = False  # not even collected

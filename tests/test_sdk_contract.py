"""The SDK's non-public members that connectors/sdk_internals.py uses, checked against the installed SDK: a release
that renames or changes one fails here, naming it, instead of somewhere in a run."""

import importlib.metadata
import inspect

import pytest
from sekoia_automation.connector import Connector
from sekoia_automation.module import Module
from sekoia_automation.trigger import Trigger

from connectors import sdk_internals


class _Bare(Trigger):
    def run(self) -> None:
        pass


@pytest.fixture
def trigger(tmp_path):
    return _Bare(Module(), data_path=tmp_path)


def test_the_installed_sdk_is_the_version_the_adapter_was_read_from():
    assert importlib.metadata.version("sekoia-automation-sdk") == sdk_internals.SDK_VERSION, (
        "sekoia-automation-sdk moved: check every member used in connectors/sdk_internals.py, then update SDK_VERSION")


def test_log_timer_and_configuration_cache(trigger):
    assert callable(trigger._logs_timer.stop) and callable(trigger._logs_timer.start)
    sdk_internals.stop_log_timer(trigger)
    assert sdk_internals.cached_configuration(trigger) is None
    sdk_internals.cache_configuration(trigger, {"a": 1})
    assert trigger.configuration == {"a": 1}  # the SDK's own property reads the cache we fill


def test_node_secrets_hook(trigger):
    # The SDK calls the hook by this name when it starts, and only Trigger's version applies node secrets.
    assert "self._apply_node_secrets()" in inspect.getsource(Trigger.execute)
    assert Connector._apply_node_secrets is not Trigger._apply_node_secrets
    sdk_internals.cache_configuration(trigger, {"secret": "placeholder"})
    trigger._node_secrets = {"secret": "value"}
    sdk_internals.apply_node_secrets(trigger)
    assert trigger.configuration == {"secret": "value"}


def test_error_count_and_log_rules(trigger):
    trigger._error_count = 4
    sdk_internals.reset_error_count(trigger)
    assert trigger._error_count == 0
    rules = sdk_internals.LogRules(trigger)
    assert rules.critical_sent is False
    rules.critical_was_sent()
    assert trigger._critical_log_sent is True
    assert rules.first_in_a_while("warning:x") and not rules.first_in_a_while("warning:x")
    assert rules.first_in_a_while("warning:y")


def test_secrets_fetch_is_a_tenacity_retry_whose_attempts_can_be_bounded():
    fetch = Trigger._get_secrets_from_server
    assert callable(getattr(fetch, "retry_with", None)), "the SDK's secrets fetch is no longer a tenacity retry"
    assert "_node_secrets" in inspect.getsource(Trigger.execute)

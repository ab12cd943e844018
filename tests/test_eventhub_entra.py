"""Entra ID to Event Hubs: every credential the trigger accepts moves records through the emulator, which checks the
tokens as the service does (signature, issuer, audience, expiry, RBAC role), over AMQPS and over WebSockets."""

from __future__ import annotations

import json

import orjson
import pytest

from connectors.trigger import CollectorTrigger
from tests.eventhub_entra_helpers import RECEIVER, SENDER, EntraRig
from tests.eventhub_helpers import InProcessTrigger, compare, ids_of, records_with_ids, terminate, wait_until


@pytest.fixture(scope="module")
def entra(tmp_path_factory):
    rig = EntraRig(tmp_path_factory.mktemp("entra"))
    yield rig
    rig.close()


@pytest.fixture(scope="module")
def stack(entra, tmp_path_factory):
    """The app and the managed identity may read; no storage (each case checkpoints in its own local state)."""
    with entra.hub_stack(tmp_path_factory.mktemp("hub"), roles={entra.client_id: RECEIVER,
                                                                entra.managed_identity: RECEIVER},
                         partitions=2, azurite=False) as stack:
        yield stack


@pytest.fixture(autouse=True)
def _reset_fatal():
    CollectorTrigger.fatal_error = None
    yield
    CollectorTrigger.fatal_error = None


def hub_stats(stack) -> dict:
    return stack.emulator.control_state()["stats"]


@pytest.mark.parametrize("credential", ["client_secret", "certificate", "workload_identity", "app_service_identity",
                                        "user_assigned_identity", "imds_identity"])
def test_each_credential_reads_records_through_entra_id(entra, stack, monkeypatch, tmp_path, credential):
    records = records_with_ids(40, credential)
    stack.publish_envelopes(records, per_envelope=10)
    config = entra.config(stack, credential=credential, hub_consumer_group=f"cg-{credential}")
    issued = dict(entra.emulator.stats.tokens_issued)
    accepted = hub_stats(stack)["tokens_accepted"]
    runner = InProcessTrigger(entra.env(stack, config, credential, data_path=tmp_path / "data"), monkeypatch).start()
    try:
        assert wait_until(lambda: set(ids_of(records)) <= set(stack.delivered_ids()) or not runner.thread.is_alive(),
                          60), [log["message"] for log in stack.logs()][-5:]
    finally:
        runner.stop()
    assert runner.error is None and CollectorTrigger.fatal_error is None
    kind = {"client_secret": "client_secret", "certificate": "client_assertion", "workload_identity": "federated"}
    assert entra.emulator.stats.tokens_issued[kind.get(credential, "managed_identity")] > issued.get(
        kind.get(credential, "managed_identity"), 0)
    assert hub_stats(stack)["tokens_accepted"] > accepted  # jwt put-tokens, checked against the Entra emulator


def test_websockets_read_and_checkpoint_in_azurite_as_amqp_does(entra, tmp_path):
    """The container as deployed (python main.py), AMQP over WebSockets with Entra ID; checkpoints in Azurite."""
    with entra.hub_stack(tmp_path / "hub", roles={entra.client_id: RECEIVER}, partitions=2) as stack:
        records = records_with_ids(300, "ws")
        stack.publish_envelopes(records, per_envelope=20)  # 15 envelopes: 8 on partition 0, 7 on partition 1
        config = entra.config(stack, websockets=True)
        proc = stack.start_process(config, env=entra.env(stack, config))
        try:
            assert wait_until(lambda: stack.delivered_count() >= 300 or proc.poll() is not None, 90)
            assert wait_until(lambda: stack.checkpoints() == {"0": 7, "1": 6} or proc.poll() is not None, 30), \
                stack.checkpoints()
        finally:
            assert terminate(proc) == 0
        assert compare(ids_of(records), stack.delivered_ids())["lost"] == 0
        stats = stack.emulator.control_state()["stats"]
        assert stats["tokens_accepted"] >= 1 and stats["tokens_refused"] == 0


def critical_lines(stack) -> list[str]:
    return [log["message"] for log in stack.logs() if log["level"] == "critical"]


def test_a_principal_without_the_receiver_role_is_told_which_role_to_grant(entra, tmp_path):
    """The app signs in (Entra issues the token, the hub accepts it) but is only a Data Sender: exit 2, naming the
    role and the scope."""
    with entra.hub_stack(tmp_path / "hub", roles={entra.client_id: SENDER}, partitions=2, azurite=False) as stack:
        config = entra.config(stack)
        proc = stack.start_process(config, env=entra.env(stack, config))
        assert proc.wait(120) == 2
        [critical] = critical_lines(stack)
        assert "`client_id`" in critical and entra.client_id in critical
        assert "Azure Event Hubs Data Receiver" in critical and "scope: the event hub `insights-logs`" in critical
        assert entra.info["client_secret"] not in json.dumps(stack.logs())


def test_a_token_of_another_tenant_is_refused_with_401(entra, tmp_path):
    """The hub trusts another tenant (same keys, another issuer): put-token answers 401 InvalidIssuer."""
    other_tenant = "0b1c2d3e-4f5a-4b6c-8d7e-9f0a1b2c3d4e"
    with entra.hub_stack(tmp_path / "hub", roles={entra.client_id: RECEIVER}, partitions=2, azurite=False,
                         authority=f"{entra.info['authority_host']}/{other_tenant}") as stack:
        config = entra.config(stack)
        proc = stack.start_process(config, env=entra.env(stack, config))
        assert proc.wait(120) == 2
        [critical] = critical_lines(stack)
        assert "`client_secret`" in critical and "InvalidIssuer" in critical and "401" in critical
        assert stack.emulator.control_state()["stats"]["tokens_refused"] >= 1

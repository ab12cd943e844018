"""Entra ID to Event Hubs: every credential the trigger accepts moves records through the emulator, which checks the
tokens as the service does (signature, issuer, audience, expiry, RBAC role), over AMQPS and over WebSockets."""

from __future__ import annotations

import asyncio
import json
import ssl
import time

import pytest
from azure.eventhub import TransportType
from azure.eventhub.exceptions import AuthenticationError

from connectors.trigger import CollectorTrigger
from tests.eventhub_entra_helpers import NAMESPACE, RECEIVER, SENDER, EntraRig
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


pytestmark = pytest.mark.usefixtures("reset_fatal")


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
    # Each credential signed in the way it should (the user-assigned identity through the App Service endpoint).
    kind = {"certificate": "client_assertion", "workload_identity": "federated",
            "user_assigned_identity": "app_service_identity"}.get(credential, credential)
    assert entra.emulator.stats.tokens_issued[kind] > issued.get(kind, 0)
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


def test_a_token_expired_on_arrival_is_refused_with_401_and_the_clock_is_blamed(entra, tmp_path):
    """The authority's clock two hours behind: its token is expired when it arrives, though the client, reading
    `expires_in`, thinks it good for an hour."""
    entra.emulator.control(token_skew_seconds=-7200)
    try:
        with entra.hub_stack(tmp_path / "hub", roles={entra.client_id: RECEIVER}, partitions=1,
                             azurite=False) as stack:
            config = entra.config(stack)
            proc = stack.start_process(config, env=entra.env(stack, config))
            assert proc.wait(120) == 2
            [critical] = critical_lines(stack)
            assert "401 ExpiredToken" in critical and "the authority's clock is off" in critical
    finally:
        entra.emulator.control(token_skew_seconds=0)


# -- tokens on a long-lived connection, and each token only to its audience --------------------------------------


def test_tokens_are_renewed_before_expiry_on_a_long_lived_connection(entra, stack, monkeypatch, tmp_path):
    """Tokens of 45 s: the client puts a new one before each expires, so no link is ever detached for an expired
    token (the emulator detaches those, see the next test) and records keep flowing on the same links. (Not
    shorter: azure-identity asks Entra again at most every 30 s, and the client renews at 90% of the lifetime.)"""
    entra.emulator.control(token_lifetime=45)
    try:
        config = entra.config(stack, hub_consumer_group="cg-refresh")
        runner = InProcessTrigger(entra.env(stack, config, data_path=tmp_path / "data"), monkeypatch).start()
        try:
            first = records_with_ids(20, "before")
            stack.publish_envelopes(first, per_envelope=10)
            assert wait_until(lambda: set(ids_of(first)) <= set(stack.delivered_ids()), 60)
            reading, ended = hub_stats(stack), len(stack.emulator.control_state()["receivers_ended"])
            # Past the first tokens' expiry, new ones were put on the connections already open.
            assert wait_until(lambda: hub_stats(stack)["tokens_renewed"] >= reading["tokens_renewed"] + 2, 120)
            second = records_with_ids(20, "after")
            stack.publish_envelopes(second, per_envelope=10)
            assert wait_until(lambda: set(ids_of(second)) <= set(stack.delivered_ids()), 60)
            stats, ended_after = hub_stats(stack), len(stack.emulator.control_state()["receivers_ended"])
        finally:
            runner.stop()
        assert runner.error is None and CollectorTrigger.fatal_error is None
        # The same receivers all along (an expired token would have ended them), no token refused or detached.
        assert ended_after == ended
        assert stats["links_unauthorized"] == 0 and stats["tokens_refused"] == reading["tokens_refused"]
    finally:
        entra.emulator.control(token_lifetime=3599)


class FixedToken:
    """A credential that always returns one token: what a client that cannot renew it presents."""

    def __init__(self, token: str, expires_on: int):
        from azure.core.credentials import AccessToken

        self.access_token = AccessToken(token, expires_on)

    async def get_token(self, *scopes, **kwargs):
        return self.access_token

    async def close(self):
        pass


def entra_token(entra, scope: str, lifetime: int | None = None) -> tuple[str, int]:
    import requests

    if lifetime:
        entra.emulator.control(token_lifetime=lifetime)
    try:
        answer = requests.post(entra.info["token_url"], verify=entra.info["ca_file"], timeout=10, data={
            "grant_type": "client_credentials", "client_id": entra.client_id,
            "client_secret": entra.info["client_secret"], "scope": scope})
    finally:
        if lifetime:
            entra.emulator.control(token_lifetime=3599)
    answer.raise_for_status()
    body = answer.json()
    return body["access_token"], int(time.time()) + int(body["expires_in"])


def consumer(entra, stack, credential, group: str):
    from azure.eventhub.aio import EventHubConsumerClient

    return EventHubConsumerClient(f"{NAMESPACE}.servicebus.windows.net", stack.hub, group, credential,
                                  custom_endpoint_address=stack.emulator.info["amqps_endpoint"],
                                  transport_type=TransportType.Amqp, retry_total=0,
                                  ssl_context=ssl.create_default_context(cafile=str(entra.ca_bundle)))


def test_a_link_whose_token_expires_unrenewed_is_detached(entra, stack):
    """A client whose clock runs an hour late believes its token valid: the service, which reads the token's own
    expiry, detaches its links when it lapses."""
    token, expires_on = entra_token(entra, "https://eventhubs.azure.net/.default", lifetime=6)
    before = hub_stats(stack)

    async def receive():
        client = consumer(entra, stack, FixedToken(token, expires_on + 3600), "cg-unrenewed")
        async def on_event(*_):
            pass

        task = asyncio.ensure_future(client.receive(on_event, partition_id="0", starting_position="-1"))
        try:
            # The receiver attached (the token was good), then lost its link when the token lapsed.
            deadline = time.monotonic() + 60
            while (hub_stats(stack)["links_unauthorized"] <= before["links_unauthorized"]
                   and time.monotonic() < deadline):
                await asyncio.sleep(0.5)
        finally:
            await client.close()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(receive())
    after = hub_stats(stack)
    assert after["tokens_accepted"] > before["tokens_accepted"]
    assert after["links_unauthorized"] > before["links_unauthorized"]


def forged(token: str) -> str:
    """The same claims and key id, signed with another key."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    claims = jwt.decode(token, options={"verify_signature": False})
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, other_key, algorithm="RS256", headers=jwt.get_unverified_header(token))


@pytest.mark.parametrize("scope, refusal", [
    ("https://storage.azure.com/.default", "InvalidAudience"),
    ("https://manage.office.com/.default", "InvalidAudience"),
    ("forged", "InvalidSignature"),
])
def test_event_hubs_accepts_only_tokens_meant_for_it(entra, stack, scope, refusal):
    if scope == "forged":
        token, expires_on = entra_token(entra, "https://eventhubs.azure.net/.default")
        token = forged(token)
    else:
        token, expires_on = entra_token(entra, scope)
    refused = hub_stats(stack)["tokens_refused"]

    async def properties():
        client = consumer(entra, stack, FixedToken(token, expires_on), "$Default")
        try:
            return await client.get_eventhub_properties()
        finally:
            await client.close()

    with pytest.raises(AuthenticationError) as raised:
        asyncio.run(properties())
    assert "401" in str(raised.value) and refusal in str(raised.value)
    assert hub_stats(stack)["tokens_refused"] > refused


def test_the_office365_api_refuses_an_event_hubs_token(entra):
    import requests

    token, _ = entra_token(entra, "https://eventhubs.azure.net//.default")  # the Event Hubs client's own scope
    answer = requests.get(f"{entra.info['api_root']}/subscriptions/list", verify=entra.info["ca_file"], timeout=10,
                          headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 401 and "audience" in answer.text


# -- the checkpoint store: Azurite over HTTPS in its OAuth mode, or a SAS URL -------------------------------------


@pytest.mark.parametrize("store", ["entra_id", "sas_url"])
def test_checkpoints_in_azurite_with_entra_id_or_a_sas_url(entra, tmp_path, store):
    """Entra ID: through the gate checking the token's signature and the role, to Azurite checking its audience,
    issuer and lifetime. A SAS URL: to Azurite directly."""
    from emulators.storage_roles import StorageRoleGate

    with entra.hub_stack(tmp_path / "hub", roles={entra.client_id: RECEIVER}, partitions=2) as stack:
        records = records_with_ids(200, store)
        stack.publish_envelopes(records, per_envelope=20)  # 10 envelopes, 5 per partition
        gate = StorageRoleGate(stack.azurite.account_url, entra.hub_ca, entra.authority, entra.info["ca_file"],
                               {entra.client_id: ["Storage Blob Data Contributor"]})
        gate.start_in_thread(entra.hub_certificate)
        account = gate.account_url if store == "entra_id" else stack.azurite.admin.container_sas_url("checkpoints")
        config = entra.config(stack, storage_account_url=account)
        config.pop("storage_connection_string")
        proc = stack.start_process(config, env=entra.env(stack, config))
        try:
            assert wait_until(lambda: stack.checkpoints() == {"0": 4, "1": 4} or proc.poll() is not None, 90), \
                stack.checkpoints()
        finally:
            assert terminate(proc) == 0
            gate.stop()
        assert not gate.refused
        assert compare(ids_of(records), stack.delivered_ids())["lost"] == 0
        assert set(stack.owners().values()) and "" not in stack.owners().values()  # ownership claimed, too
        if store == "sas_url":  # the token is never shown
            text = json.dumps(stack.logs())
            assert account.split("?")[1] not in text and "sig=" not in text


def test_storage_refuses_an_event_hubs_token(entra, tmp_path, monkeypatch):
    """Each token to its audience: Azurite (OAuth mode) refuses a token issued for Event Hubs, and the trigger's
    store probe says the account refused the request."""
    from azure.core.exceptions import ClientAuthenticationError

    from azure_eventhub.blobstore import BlobStore

    token, expires_on = entra_token(entra, "https://eventhubs.azure.net//.default")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(entra.ca_bundle))  # as the trigger trusts Azurite's CA
    with entra.hub_stack(tmp_path / "hub", roles={}, partitions=1) as stack:
        async def list_checkpoints():
            async with BlobStore(stack.azurite.account_url, "checkpoints", credential=FixedToken(token, expires_on),
                                 retry_total=0) as store:
                return await store.list_checkpoints("ns", "hub", "$default")

        with pytest.raises(ClientAuthenticationError) as raised:
            asyncio.run(list_checkpoints())
        assert raised.value.status_code in (401, 403) and "AuthenticationFailed" in str(raised.value)


def test_a_principal_without_the_storage_role_is_told_which_role_to_grant(entra, tmp_path):
    """The hub may be read, but the storage account (behind a gate doing Storage's RBAC) grants the app nothing:
    exit 2, naming the role and the container."""
    from emulators.storage_roles import StorageRoleGate

    with entra.hub_stack(tmp_path / "hub", roles={entra.client_id: RECEIVER}, partitions=1) as stack:
        gate = StorageRoleGate(stack.azurite.account_url, entra.hub_ca, entra.authority, entra.info["ca_file"],
                               {entra.managed_identity: ["Storage Blob Data Contributor"]})
        gate.start_in_thread(entra.hub_certificate)
        try:
            config = entra.config(stack, storage_account_url=gate.account_url)
            config.pop("storage_connection_string")
            proc = stack.start_process(config, env=entra.env(stack, config))
            assert proc.wait(120) == 2
        finally:
            gate.stop()
        [critical] = critical_lines(stack)
        assert "`storage_account_url`" in critical and "AuthorizationPermissionMismatch" in critical
        assert f"give the application {entra.client_id} the role Storage Blob Data Contributor" in critical
        assert "container `checkpoints`" in critical
        assert f"the storage account at {gate.account_url} refused" in critical
        assert gate.refused and all("lacks" in reason for reason in gate.refused)


def test_the_websocket_endpoint_wants_the_amqp_subprotocol(entra, stack):
    import aiohttp

    url = stack.emulator.info["websocket_endpoint"].replace("sb://", "wss://") + "/$servicebus/websocket"

    async def handshake(protocols):
        async with aiohttp.ClientSession() as session:
            context = ssl.create_default_context(cafile=str(entra.ca_bundle))
            async with session.ws_connect(url, protocols=protocols, ssl=context) as ws:
                return ws.protocol

    assert asyncio.run(handshake(("AMQPWSB10",))) == "AMQPWSB10"
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        asyncio.run(handshake(()))
    assert raised.value.status == 400

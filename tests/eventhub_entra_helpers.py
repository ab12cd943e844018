"""Locked-down tenants for the Event Hubs trigger tests: the Entra emulator (of the Office 365 emulator) and the
Event Hubs emulator serving AMQPS and WebSockets with a private CA and checking Entra ID tokens and roles.

    entra = EntraRig(workdir)                      # the tenant: app, managed identity, workload identity
    with entra.hub_stack(workdir / "hub", roles={entra.client_id: RECEIVER}) as stack:
        config = entra.config(stack, websockets=True)
        runner = InProcessTrigger(entra.env(stack, config), monkeypatch)
"""

from __future__ import annotations

from pathlib import Path

from emulators.office365.server import Office365Emulator
from tests.eventhub_helpers import EventHubStack
from tests.support.private_ca import private_ca_files

RECEIVER = "Azure Event Hubs Data Receiver"
SENDER = "Azure Event Hubs Data Sender"
NAMESPACE = "sekoia-emulated"  # a name alone: the cloud's suffix is added (sekoia-emulated.servicebus.windows.net)


class EntraRig:
    """The Entra emulator on a thread, and one CA bundle trusting it and the Event Hubs emulator's certificate."""

    def __init__(self, workdir: Path, hub_names: tuple[str, ...] = (), **settings):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.emulator = Office365Emulator(workdir=str(self.workdir / "entra"), blobs=0, **settings)
        self.info = self.emulator.start_in_thread()
        # One certificate for 127.0.0.1 serves the Event Hubs emulator and Azurite.
        self.hub_certificate, self.hub_ca = private_ca_files(self.workdir, hub_names)
        self.ca_bundle = self.workdir / "ca-bundle.pem"
        self.ca_bundle.write_bytes(Path(self.info["ca_file"]).read_bytes() + self.hub_ca.read_bytes())

    @property
    def client_id(self) -> str:
        return self.info["client_id"]

    @property
    def managed_identity(self) -> str:
        return self.info["managed_identity_client_id"]

    @property
    def authority(self) -> str:
        return f"{self.info['authority_host']}/{self.info['tenant_id']}"

    def hub_stack(self, workdir: Path, roles: dict[str, str], authority: str | None = None,
                  **stack_args) -> EventHubStack:
        extra = ["--tls-cert", str(self.hub_certificate), "--entra-authority", authority or self.authority,
                 "--entra-ca-file", self.info["ca_file"]]
        for principal, role in roles.items():
            extra += ["--role", f"{principal}={role}"]
        # Azurite over HTTPS, taking Entra ID tokens as well as its account key.
        azurite = {"certificate": self.hub_certificate, "ca_file": self.hub_ca, "oauth": True}
        return EventHubStack(workdir, emulator_args={"extra_args": extra}, azurite_args=azurite, **stack_args)

    def config(self, stack: EventHubStack, websockets: bool = False, credential: str = "client_secret",
               **overrides) -> dict:
        """The trigger's configuration without any connection string to the hub."""
        endpoint = stack.emulator.info["websocket_endpoint" if websockets else "amqps_endpoint"]
        config = {key: value for key, value in stack.config().items() if key != "hub_connection_string"}
        config.update(fully_qualified_namespace=NAMESPACE, custom_endpoint_address=endpoint,
                      use_websockets=websockets, tenant_id=self.info["tenant_id"])
        if credential == "client_secret":
            config.update(client_id=self.client_id, client_secret=self.info["client_secret"])
        elif credential == "certificate":
            config.update(client_id=self.client_id,
                          certificate=Path(self.info["certificate_with_key_file"]).read_text())
        elif credential == "workload_identity":
            config.update(client_id=self.client_id)
        elif credential == "user_assigned_identity":
            config.update(client_id=self.managed_identity)
        config.update(overrides)
        return config

    def env(self, stack: EventHubStack, config: dict, credential: str = "client_secret", **kwargs) -> dict[str, str]:
        env = stack.env(config, **kwargs)
        env.update(SSL_CERT_FILE=str(self.ca_bundle), REQUESTS_CA_BUNDLE=str(self.ca_bundle),
                   AZURE_AUTHORITY_HOST=self.info["authority_host"])
        if credential == "workload_identity":
            token_file = self.workdir / "service-account-token"
            token_file.write_text(self.emulator.entra.federated_token())  # what Kubernetes projects in the pod
            env["AZURE_FEDERATED_TOKEN_FILE"] = str(token_file)
        elif credential in ("app_service_identity", "user_assigned_identity"):
            env.update(IDENTITY_ENDPOINT=self.info["identity_endpoint"], IDENTITY_HEADER=self.info["identity_header"])
        elif credential == "imds_identity":
            env["AZURE_POD_IDENTITY_AUTHORITY_HOST"] = self.info["imds_host"]
        return env

    def close(self) -> None:
        self.emulator.stop_thread()

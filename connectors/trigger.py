"""The base both triggers stand on: configuration, secrets kept out of logs, delivery, state, clean stop."""

from __future__ import annotations

import hashlib
import os
from abc import abstractmethod
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sekoia_automation.configuration.exception import MissingConfigurationError
from sekoia_automation.connector import Connector
from sekoia_automation.exceptions import ModuleConfigurationError, TriggerConfigurationError
from sekoia_automation.trigger import Trigger

from connectors.delivery import STOP_GRACE_SECONDS, BatchLimits, Forwarder, IntakeSink, PlaybookSink, SetAsideStore
from connectors.errors import ConfigurationError, CorruptStateError
from connectors.logs import Redactor, install_redaction
from connectors.retry import Backoff

# Outside a container there is no /symphony_data: this variable moves the data path (checkpoints, records files).
DATA_PATH_VARIABLE = "SEKOIA_DATA_PATH"


class CollectorConfiguration(BaseModel):
    """What every collector of the module accepts besides its own source settings."""

    model_config = ConfigDict(extra="ignore")

    # Titles and descriptions are what Sekoia shows of each argument: connectors/schema.py writes them to the JSON.
    intake_key: str | None = Field(
        None,
        title="Intake key",
        description="Intake key of the Sekoia.io intake receiving the records; without it, records go to the playbook",
    )
    intake_server: str | None = Field(
        None,
        title="Intake server",
        description="Base URL of the Sekoia.io intake (defaults to the runtime's, e.g. https://intake.sekoia.io)",
    )
    batch_max_events: int = Field(
        10_000, ge=1, le=100_000, title="Batch size (events)", description="Most records sent to Sekoia.io in one request"
    )
    batch_max_bytes: int = Field(
        4_000_000,
        ge=10_000,
        le=7_000_000,
        title="Batch size (bytes)",
        description="Most bytes of records sent to Sekoia.io in one request",
    )
    batch_max_age_seconds: float = Field(
        1.0,
        gt=0,
        le=300,
        title="Batch age (seconds)",
        description="Longest time a record waits in a batch before it is sent",
    )

    # Configuration fields whose values must never appear in a log line or a metric.
    secret_fields: ClassVar[tuple[str, ...]] = ("intake_key",)


def configuration_error(error: ValidationError) -> ConfigurationError:
    """The first problem of a pydantic error, without the input value (it may be a secret)."""
    first = error.errors(include_input=False, include_url=False)[0]
    field = ".".join(str(part) for part in first.get("loc", ())) or "configuration"
    message = first.get("msg", "invalid value")
    if first.get("type") == "missing":
        message = "is required"
    return ConfigurationError(field, message)


def parse_configuration(model: type[BaseModel], value: Any) -> BaseModel:
    if isinstance(value, model):
        return value
    if not isinstance(value, dict):
        raise ConfigurationError("configuration", "expected a JSON object")
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise configuration_error(error) from None


class CollectorTrigger(Connector):
    """A trigger that collects records from a source and forwards them, marking them read only once delivered."""

    configuration_model: ClassVar[type[CollectorConfiguration]] = CollectorConfiguration
    # Quiet tenants are normal: liveness follows the collect loop's heartbeat, not the flow of events.
    seconds_without_events = 0
    last_heartbeat_threshold = 900
    # Delivery's share of the 20 s an orchestrator gives after SIGTERM, counted from the signal.
    stop_grace_seconds = STOP_GRACE_SECONDS
    # Set when a run ended on a configuration or state error, so main.py exits non-zero.
    fatal_error: ClassVar[str | None] = None

    def __init__(self, module=None, data_path: Path | None = None, **kwargs):
        if data_path is None and os.environ.get(DATA_PATH_VARIABLE):
            data_path = Path(os.environ[DATA_PATH_VARIABLE])
        super().__init__(module, data_path, **kwargs)
        self._redactor = Redactor()
        self._failures = Backoff(base=2.0, cap=120.0)

    # -- configuration ----------------------------------------------------------------------------------------

    @property  # type: ignore[override]
    def configuration(self) -> CollectorConfiguration:
        if self._configuration is None:
            try:
                raw = self.module.load_config(self.CONNECTOR_CONFIGURATION_FILE_NAME, "json")
            except MissingConfigurationError:
                raw = self.module.load_config(self.TRIGGER_CONFIGURATION_FILE_NAME, "json")
            self.configuration = raw
        return self._configuration  # type: ignore[return-value]

    @configuration.setter
    def configuration(self, value: Any) -> None:
        self._configuration = parse_configuration(self.configuration_model, value)

    def _apply_node_secrets(self) -> None:
        # The SDK's Connector ignores node-level secrets; ours are trigger arguments, so apply them.
        Trigger._apply_node_secrets(self)

    def _secret_values(self) -> list[str]:
        config = self.configuration
        return [str(getattr(config, name)) for name in config.secret_fields if getattr(config, name, None)]

    # -- logging ------------------------------------------------------------------------------------------------

    def log(self, message: str, level: str = "info", *args, **kwargs) -> None:
        super().log(self._redactor(message), level, *args, **kwargs)

    # log_exception needs no override: its text goes through log() above, its traceback through the root
    # handlers' RedactingFilter.

    # -- delivery and state -------------------------------------------------------------------------------------

    @cached_property
    def state_dir(self) -> Path:
        path = Path(self.data_path) / "state" / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @cached_property
    def metric_intake(self) -> str:
        """Label for the SDK's per-intake metrics: a fingerprint, since the intake key is a credential."""
        key = self.configuration.intake_key or "playbook"
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    @cached_property
    def forwarder(self) -> Forwarder:
        config = self.configuration
        if config.intake_key:
            try:
                intake_url = config.intake_server or self.intake_url
            except MissingConfigurationError:
                raise ConfigurationError(
                    "intake_server", "required when the runtime gives no INTAKE_URL (e.g. https://intake.sekoia.io)"
                ) from None
            sink: Any = IntakeSink(intake_url, config.intake_key, user_agent=self._user_agent)
        else:
            sink = PlaybookSink(self.callback_url, self.token, self.data_path, self.name)
        limits = BatchLimits(config.batch_max_events, config.batch_max_bytes, config.batch_max_age_seconds)
        return Forwarder(
            sink,
            trigger=self.name,
            limits=limits,
            log=self.log,
            set_aside=SetAsideStore(self.state_dir / "set-aside-events.jsonl"),
            on_delivered=self._delivered,
            on_fatal=self._stop_on_configuration_error,
        )

    @property
    def _user_agent(self) -> str:
        manifest = self.module.manifest
        return f"sekoiaio-connector/{manifest.get('slug', 'microsoft')}-{manifest.get('version', '0')}"

    def _stop_on_configuration_error(self, error: ConfigurationError) -> None:
        """A delivery thread met a configuration error (the intake refused the key): one critical log, stop,
        exit code 2. Nothing more is sent or acknowledged."""
        CollectorTrigger.fatal_error = str(error)
        self.log(str(error), "critical")
        self.stop()

    def _delivered(self, count: int) -> None:
        self._error_count = 0
        self._failures.reset()
        self.put_forwarded_events(intake_key=self.metric_intake, count=count)

    # -- run ----------------------------------------------------------------------------------------------------

    @abstractmethod
    def collect(self) -> None:
        """Collect until ``self.running`` turns false; hand records to ``self.forwarder`` with their acks."""

    def stop(self, *args, **kwargs) -> None:
        super().stop(*args, **kwargs)
        forwarder = self.__dict__.get("forwarder")
        if forwarder is not None:  # delivery's deadline counts from the stop request
            forwarder.stopping(self.stop_grace_seconds)

    def run(self) -> None:
        try:
            self._redactor.add(self._secret_values())
            install_redaction(self._redactor)
            self.collect()
        except (ConfigurationError, CorruptStateError, TriggerConfigurationError, ModuleConfigurationError) as error:
            CollectorTrigger.fatal_error = str(error)
            self.log(str(error), "critical")
            self.stop()
        except Exception as error:  # noqa: BLE001 - the SDK would restart us at once; wait first
            delay = self._failures.next_delay()
            self.log_exception(error, message=f"Collection failed ({type(error).__name__}); restarting in {delay:.0f}s")
            self._stop_event.wait(delay)
        finally:
            if not self.running and "forwarder" in self.__dict__:
                if not self.forwarder.close(grace=self.stop_grace_seconds):
                    self.log("Stopped with undelivered events; they will be collected again at the next start", "warning")
            self.heartbeat()


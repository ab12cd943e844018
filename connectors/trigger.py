"""The base both triggers stand on: configuration, secrets kept out of logs, logs that never block, a status
line, delivery, state, one way to stop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import time
from abc import abstractmethod
from collections.abc import Awaitable, Callable
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import requests
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from sekoia_automation.configuration.exception import MissingConfigurationError
from sekoia_automation.connector import Connector
from sekoia_automation.exceptions import ModuleConfigurationError, TriggerConfigurationError
from sekoia_automation.module import ModuleItem

import connectors.stopping
from connectors.delivery import STOP_GRACE_SECONDS, BatchLimits, Forwarder
from connectors.errors import ConfigurationError, CorruptStateError
from connectors.executor import RunExecutor
from connectors.logs import LogPump, Redactor, format_duration, install_redaction
from connectors.progress import DEFAULT_STALL_SECONDS, StallWatch
from connectors.retry import Backoff
from connectors.sdk_internals import (
    LogRules,
    apply_node_secrets,
    cache_configuration,
    cached_configuration,
    reset_error_count,
    stop_log_timer,
)
from connectors.secrets import reveal, scrub_sentry_events
from connectors.setaside import MB, SetAsideStore
from connectors.sinks import IntakeSink, PlaybookSink
from connectors.state import private_directory
from connectors.stopping import unless_stopping

T = TypeVar("T")

# A delivery request unanswered for stall_seconds: its connection (silent, never closed) and the pool's others are
# replaced; if that brings no answer either, the trigger reports itself unhealthy.
DELIVERY_RECOVERY = ("replacing its connections to the runtime",)

# Outside a container there is no /symphony_data: this variable moves the data path (checkpoints, records files).
DATA_PATH_VARIABLE = "SEKOIA_DATA_PATH"


class CollectorConfiguration(BaseModel):
    """What every collector of the module accepts besides its own source settings."""

    model_config = ConfigDict(extra="ignore")

    # Titles and descriptions are what Sekoia shows of each argument: connectors/schema.py writes them to the JSON.
    # Secrets are SecretStr: a repr of the configuration, an error or a Sentry context shows none (reveal() reads one).
    intake_key: SecretStr | None = Field(
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
        1_000_000,
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
    status_interval_seconds: float = Field(
        600.0,
        ge=0,
        description="Every this many seconds, one status line in the playbook's logs: records forwarded, lag and "
        "pending work, throttling, set-aside events, runtime outage. 0: no status line",
    )

    stall_seconds: float = Field(
        DEFAULT_STALL_SECONDS,
        ge=5,
        le=3600,
        title="Stall detection (seconds)",
        description="A partition or content type that made no progress for this long while its source holds more "
        "is stalled: logged, its connection reopened, then its client, then the run",
    )
    set_aside_cap_mb: int = Field(
        200,
        ge=1,
        title="Refused events file (MB)",
        description="Events the runtime refuses are kept whole in a local file: warned at 80 % of this size and at "
        "it; they are still kept past it, while the disk has room",
    )
    originals_cap_mb: int = Field(
        200,
        ge=1,
        title="Originals of shortened events (MB)",
        description="Events over the intake's size limit are sent shortened and their originals kept in local "
        "files: the oldest are removed past this size",
    )
    originals_max_age_days: float = Field(
        30,
        gt=0,
        title="Originals of shortened events (days)",
        description="Originals of events sent shortened are removed after this many days",
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
    # No record added for this long, the end of a burst (Event Hubs: two of its client's 50 ms polls without a
    # batch): delivery sends what it buffers now, not at its max age.
    idle_flush_seconds = 0.1
    # Delivery's share of the 20 s an orchestrator gives after SIGTERM, counted from the signal.
    stop_grace_seconds = STOP_GRACE_SECONDS
    # At the end of a run, file writes still running (asyncio.to_thread) get this long: then they are left.
    io_shutdown_seconds = 3.0
    # At exit, queued log lines (a critical one above all) get this long to reach the runtime.
    log_flush_seconds = 3.0
    log_request_timeout = (5.0, 10.0)  # connect, read: one attempt to send log lines (the pump retries)
    # Set when a run ended on a configuration or state error, so main.py exits non-zero.
    fatal_error: ClassVar[str | None] = None

    def __init__(self, module=None, data_path: Path | None = None, **kwargs):
        if data_path is None and os.environ.get(DATA_PATH_VARIABLE):
            data_path = Path(os.environ[DATA_PATH_VARIABLE])
        super().__init__(module, data_path, **kwargs)
        self._redactor = Redactor()
        self._failures = Backoff(base=2.0, cap=120.0)
        stop_log_timer(self)  # logs reach the runtime through our pump only
        self._log_rules = LogRules(self)
        self._stopped = threading.Event()  # set by stop(): the wait before a failed run restarts ends at once
        self._runtime_logs = LogPump(self._post_logs, self.log)
        self._log_lock = threading.Lock()  # the SDK's rate-limit cache is not thread-safe
        self._forwarded = 0  # counted and read on the run's loop (delivery's callback, the heartbeat)
        self._status_interval = 0.0
        self._status_since = self._status_due = time.monotonic()
        # The running event loop and its stop event, woken by stop() from the signal handler or any thread.
        self._wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._watches: dict[str, StallWatch] = {}  # by what they watch; they outlive runs
        if connectors.stopping.requested_while_starting:  # SIGTERM came before the SDK's handler replaced main.py's
            self.stop()

    # -- configuration ----------------------------------------------------------------------------------------

    @property  # type: ignore[override]
    def configuration(self) -> CollectorConfiguration:
        if cached_configuration(self) is None:
            try:
                raw = self.module.load_config(self.CONNECTOR_CONFIGURATION_FILE_NAME, "json")
            except MissingConfigurationError:
                raw = self.module.load_config(self.TRIGGER_CONFIGURATION_FILE_NAME, "json")
            self.configuration = raw
        return cached_configuration(self)

    @configuration.setter
    def configuration(self, value: Any) -> None:
        cache_configuration(self, parse_configuration(self.configuration_model, value))

    def _apply_node_secrets(self) -> None:  # the SDK's hook, called when it loads the configuration
        try:
            apply_node_secrets(self)
        except ConfigurationError:
            return  # a bad configuration: run() loads it again, and reports it with one critical line (exit 2)
        # It sets them as plain strings, after validation: the SecretStr fields secret again, or a repr would show
        # them (a secret field typed str, such as a URL that may carry a SAS token, stays a str).
        config = cached_configuration(self)
        if config is None:  # no node secret: not loaded yet (run() loads it, where a bad one is reported)
            return
        for name in config.secret_fields:
            field = type(config).model_fields.get(name)
            if field is not None and "SecretStr" in str(field.annotation) and isinstance(getattr(config, name), str):
                setattr(config, name, SecretStr(getattr(config, name)))

    def _secret_values(self) -> list[str]:
        config = self.configuration
        return [reveal(getattr(config, name)) for name in config.secret_fields if getattr(config, name, None)]

    # -- logging ------------------------------------------------------------------------------------------------

    def log(self, message: str, level: str = "info", *args, **kwargs) -> None:
        """Log locally at once and queue for the runtime: never waits, whatever the runtime does (the SDK's own
        ``log`` sends synchronously, with retries for over a minute, from whichever thread logs)."""
        message = self._redactor(message)
        with self._log_lock:
            if level == "critical" and self._log_rules.critical_sent:
                level = "error"  # the SDK's rule: one critical line per run
            if kwargs.pop("propagate", True):
                ModuleItem.log(self, message, level, *args, **kwargs)  # the process's output (and Sentry)
            if not self._log_rules.first_in_a_while(f"{level.lower()}:{message}"):
                return
            if level == "critical":
                self._log_rules.critical_was_sent()
        self._runtime_logs.put(message, level)

    # log_exception needs no override: its text goes through log() above, its traceback through the root
    # handlers' RedactingFilter.

    def _post_logs(self, batch: list[dict]) -> None:
        """One attempt (the pump retries), on the pump's thread; the SDK's endpoint, token and body."""
        response = self._logs_session.post(self.logs_url, json={"logs": batch},
                                           headers={"Authorization": f"Bearer {self.token}"},
                                           timeout=self.log_request_timeout)
        response.raise_for_status()

    @cached_property
    def _logs_session(self) -> requests.Session:
        return requests.Session()

    def _send_logs_to_api(self) -> None:
        """Called by the SDK when the trigger ends: what is queued gets a bounded wait, not the SDK's minute."""
        self._runtime_logs.flush(self.log_flush_seconds)

    # -- status line ----------------------------------------------------------------------------------------

    def status(self) -> list[str]:
        """The trigger's own figures for the status line (lag and pending work per content type or partition,
        throttling...), each a short phrase; called by the heartbeat, on the run's loop."""
        return []

    def status_line(self) -> str:
        forwarded, self._forwarded = self._forwarded, 0
        now = time.monotonic()
        period, self._status_since = now - self._status_since, now
        parts = [f"{forwarded} records forwarded in the last {format_duration(period)}"]
        try:
            parts += self.status()
        except Exception as error:  # noqa: BLE001 - the line still says what the base knows
            parts.append(f"trigger figures unavailable ({type(error).__name__})")
        forwarder = self.__dict__.get("forwarder")
        if forwarder is not None:
            kept = forwarder.set_aside
            if forwarder.refused:
                parts.append(f"{forwarder.refused} events refused by the runtime since the start, kept in "
                             f"{kept.path if kept else 'no file'}")
            if forwarder.shortened:
                parts.append(f"{forwarder.shortened} oversize events sent shortened since the start, originals kept "
                             f"in {kept.where(sent=True) if kept else 'no file'}")
            outage = forwarder.outage_seconds
            if outage is not None:
                parts.append(f"the runtime has not confirmed a batch for {format_duration(outage)}")
        for watch in self._watches.values():
            parts += watch.status()
        logs_outage = self._runtime_logs.outage.lasting()
        if logs_outage is not None:
            parts.append(f"the runtime's log endpoint has failed for {format_duration(logs_outage)}")
        return "Status: " + "; ".join(parts)

    def heartbeat(self) -> None:
        """The collect loops beat every second or two, on the run's loop (no lock: one thread): the status line's
        clock (on time whatever the runtime does, since logging never waits; a stalled loop shows as missing lines
        and a failing liveness)."""
        super().heartbeat()
        for watch in self._watches.values():
            watch.check()
        now = time.monotonic()
        if not self._status_interval or now < self._status_due:
            return
        # Due from the last due time, not from this beat: beats a second apart would otherwise push each line up
        # to a beat late, and the lines drift off their interval. After a stall, one line, then the interval.
        self._status_due += self._status_interval
        if self._status_due <= now:
            self._status_due = now + self._status_interval
        line = self._redactor(self.status_line())
        ModuleItem.log(self, line, "info")
        self._runtime_logs.put(line, "info")  # not rate-limited: a quiet trigger's lines may repeat

    # -- progress -----------------------------------------------------------------------------------------------

    def watch_progress(self, what: str, steps: tuple[str, ...]) -> StallWatch:
        """The trigger's watch of one kind of reading ("partition", "content type"), checked at every heartbeat,
        in the status line, and in liveness; the same one for every run (each run sets its ``recover``)."""
        watch = self._watches.get(what)
        if watch is None:
            watch = self._watches[what] = StallWatch(self.name, what, steps, self.log,
                                                     self.configuration.stall_seconds)
        return watch

    def is_alive(self) -> bool:
        """Unhealthy only when a stall outlived every recovery step: an idle but healthy reader stays alive."""
        return all(watch.failed is None for watch in self._watches.values()) and super().is_alive()

    # -- delivery and state -------------------------------------------------------------------------------------

    @cached_property
    def state_dir(self) -> Path:
        # Both levels: the directory of every trigger's state is no one else's business either.
        return private_directory(private_directory(Path(self.data_path) / "state") / self.name)

    @cached_property
    def metric_intake(self) -> str:
        """Label for the SDK's per-intake metrics: a fingerprint, since the intake key is a credential."""
        key = reveal(self.configuration.intake_key) or "playbook"
        return hashlib.sha256(key.encode()).hexdigest()[:12]

    @cached_property
    def forwarder(self) -> Forwarder:
        """The run's forwarder, made at first use on the run's loop (inside ``run_async``), dropped at its end."""
        config = self.configuration
        if config.intake_key:
            try:
                intake_url = config.intake_server or self.intake_url
            except MissingConfigurationError:
                raise ConfigurationError(
                    "intake_server", "required when the runtime gives no INTAKE_URL (e.g. https://intake.sekoia.io)"
                ) from None
            sink: Any = IntakeSink(intake_url, reveal(config.intake_key), user_agent=self._user_agent)
        else:
            sink = PlaybookSink(self.callback_url, self.token, self.data_path, self.name)
        limits = BatchLimits(config.batch_max_events, config.batch_max_bytes, config.batch_max_age_seconds)
        watch = self.watch_progress("delivery", DELIVERY_RECOVERY)
        forwarder = Forwarder(
            sink,
            trigger=self.name,
            limits=limits,
            log=self.log,
            set_aside=SetAsideStore(self.state_dir, refused_cap_bytes=config.set_aside_cap_mb * MB,
                                    originals_cap_bytes=config.originals_cap_mb * MB,
                                    originals_max_age_seconds=config.originals_max_age_days * 86400.0, log=self.log),
            on_delivered=self._delivered,
            on_fatal=self._stop_on_configuration_error,
            idle_flush=self.idle_flush_seconds,
            progress=watch,
        )
        watch.recover = lambda reading, step: forwarder.renew_connections()
        return forwarder

    @property
    def _user_agent(self) -> str:
        manifest = self.module.manifest
        return f"sekoiaio-connector/{manifest.get('slug', 'microsoft')}-{manifest.get('version', '0')}"

    def _stop_on_configuration_error(self, error: ConfigurationError) -> None:
        """Delivery met a configuration error (the intake refused the key): one critical log, stop, exit code 2.
        Nothing more is sent or acknowledged."""
        CollectorTrigger.fatal_error = str(error)
        self.log(str(error), "critical")
        self.stop()

    def _delivered(self, count: int) -> None:
        """On the loop, after each confirmed batch."""
        reset_error_count(self)
        self._failures.reset()
        self._forwarded += count
        self.put_forwarded_events(intake_key=self.metric_intake, count=count)

    # -- run ----------------------------------------------------------------------------------------------------

    @abstractmethod
    def collect(self) -> None:
        """Collect until ``self.running`` turns false, inside ``run_async``; hand records to ``await
        self.forwarder.add(...)`` with their acks."""

    # One way to stop: SIGTERM -> stop() -> the run's stop event, set on its loop at once -> every wait of the
    # collection ends ("unless stopping") -> the run's main returns -> await finish_delivery(): the forwarder gets
    # what is left of stop_grace_seconds.

    def run_async(self, main: Callable[[asyncio.Event], Awaitable[None]]) -> None:
        """Run ``main(stopping)`` on a new event loop; ``stop()`` sets ``stopping`` from any thread. The forwarder
        lives for this one run: made on this loop at first use, closed and dropped at its end. Its end waits at most
        ``io_shutdown_seconds`` for file writes still running (``RunExecutor``), not without bound as
        ``asyncio.run``."""

        async def body() -> None:
            event = asyncio.Event()
            self._wake = (asyncio.get_running_loop(), event)
            if not self.running:  # stopped before the loop listened
                event.set()
            try:
                await main(event)
            finally:
                try:
                    await self.finish_delivery()  # every run, failed or stopped, ends its delivery here
                finally:
                    self._wake = None

        with asyncio.Runner() as runner:  # asyncio.run, but with the loop's executor set first
            runner.get_loop().set_default_executor(RunExecutor(f"{self.name}-io", self.io_shutdown_seconds, self.log))
            runner.run(body())

    async def unless_stopping(self, step: Awaitable[T]) -> T:
        """A start-up step (a probe may wait a minute for an unreachable endpoint), cut short by a stop
        (raises ``Stopping``)."""
        if self._wake is None:
            raise RuntimeError("unless_stopping outside run_async")
        return await unless_stopping(step, self._wake[1])

    def stop(self, *args, **kwargs) -> None:
        super().stop(*args, **kwargs)
        stopped = self.__dict__.get("_stopped")  # a SIGTERM may come while __init__ runs
        if stopped is not None:
            stopped.set()
        forwarder = self.__dict__.get("forwarder")
        if forwarder is not None:  # delivery's deadline counts from the stop request (only sets a value)
            forwarder.stopping(self.stop_grace_seconds)
        wake = self.__dict__.get("_wake")  # a SIGTERM may come while __init__ has not set it yet
        if wake is not None:
            try:
                wake[0].call_soon_threadsafe(wake[1].set)
            except RuntimeError:
                pass  # the loop already ended

    async def finish_delivery(self) -> bool:
        """After the collect loop, before the trigger closes its state: deliver what was handed over within the
        grace, then close the forwarder and drop it (the next run builds a new one on its own loop): no
        acknowledgement of this run can reach the state, or the checkpoint writer, that the next run opens.
        ``run_async`` calls it at the end of every run (then it finds nothing left). True when all was
        confirmed; what was not is collected again."""
        forwarder = self.__dict__.get("forwarder")
        if forwarder is None:
            return True
        confirmed = await forwarder.close(grace=self.stop_grace_seconds)  # a second caller waits for the first
        if self.__dict__.get("forwarder") is forwarder:
            del self.__dict__["forwarder"]
            if not confirmed and not self.running:
                self.log("Stopped with undelivered events; they will be collected again at the next start", "warning")
        return confirmed

    def run(self) -> None:
        retry_in = 0.0
        try:
            self._redactor.add(self._secret_values())
            install_redaction(self._redactor)
            scrub_sentry_events(self._redactor)
            self._status_interval = self.configuration.status_interval_seconds
            self._status_due = time.monotonic() + self._status_interval
            self.collect()
        except (ConfigurationError, CorruptStateError, TriggerConfigurationError, ModuleConfigurationError) as error:
            CollectorTrigger.fatal_error = str(error)
            self.log(str(error), "critical")
            self.stop()
        except Exception as error:  # noqa: BLE001 - the SDK would restart us at once; wait first
            retry_in = self._failures.next_delay()
            self.log_exception(error, message=f"Collection failed ({type(error).__name__}); restarting in "
                                              f"{retry_in:.0f}s")
        finally:
            # Delivery ended with the run's loop (run_async's finish_delivery): nothing of it is left here.
            if retry_in:
                self._stopped.wait(retry_in)
            self.heartbeat()


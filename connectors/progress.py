"""Progress watched against the source: a reading (an Event Hubs partition, an Office 365 content type, delivery)
that has not moved for ``stall_seconds`` while its source holds more for it is stalled. Said once, recovered by
steps that grow (the reading, its client, the run), and, when the last step did not bring progress either, the
trigger reports itself unhealthy so that an orchestrator restarts it.

Beside it, the time left until loss: how long until the oldest record a reading has not delivered leaves the
source's retention. Warned once under a day and again under an hour.

A watch holds no connection and no task: its owner tells it what moved (``progressed``) and what the source
holds (``behind``, ``until_loss``), and calls ``check`` from the heartbeat (on the run's loop); ``check`` calls
the owner's ``recover(reading, step)``, which starts the recovery and returns at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import Gauge

from connectors.logs import format_duration
from connectors.metrics import NAMESPACE

DEFAULT_STALL_SECONDS = 60.0
LOSS_WARNINGS = (24 * 3600.0, 3600.0)  # warned once below each

stalled_seconds = Gauge(
    "stalled_seconds",
    "Seconds since the reading last progressed while its source held more for it (0: not behind, or moving)",
    ["trigger", "reading"],
    namespace=NAMESPACE,
)
seconds_until_loss = Gauge(
    "seconds_until_loss",
    "Seconds until the oldest record not yet delivered by the reading leaves the source's retention",
    ["trigger", "reading"],
    namespace=NAMESPACE,
)


@dataclass
class _Reading:
    progress_at: float  # last progress, or when it fell behind while idle
    behind: bool = False
    step: int = 0  # recovery steps taken in this stall (0: not stalled)
    step_at: float = 0.0
    until_loss: float | None = None
    until_loss_at: float = 0.0
    loss_warned: int = 0  # how many of the watch's loss_warnings were said


class StallWatch:
    """The readings of one trigger of one kind (``what``: "partition", "content type", ...)."""

    def __init__(
        self,
        trigger: str,
        what: str,
        steps: Sequence[str],
        log: Callable[..., None],
        stall_seconds: float = DEFAULT_STALL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``steps`` names what each recovery step does, mildest first ("reopening its receiver", ...). The watch
        outlives a run (a stall that a restarted run does not end still reaches ``failed``): each run sets
        ``recover``, called as ``recover(reading, index)`` with the index of the step to take."""
        if not steps:
            raise ValueError("at least one recovery step")
        self.trigger = trigger
        self.what = what
        self.steps = tuple(steps)
        self.stall_seconds = stall_seconds
        # How long a step gets to bring progress before the next one: at least stall_seconds, more when the owner's
        # step takes longer to act (a partition reopened only at the next load-balancing round).
        self.step_seconds = stall_seconds
        self.recover: Callable[[str, int], None] = lambda name, index: None
        self._log = log
        self._clock = clock
        self._readings: dict[str, _Reading] = {}
        self.failed: str | None = None  # set when a stall outlived every step: the trigger is unhealthy
        self.loss_warnings: tuple[float, ...] = LOSS_WARNINGS  # seconds until loss warned under, longest first

    # -- what the owner tells ------------------------------------------------------------------------------

    def _reading(self, name: str) -> _Reading:
        reading = self._readings.get(name)
        if reading is None:
            reading = self._readings[name] = _Reading(self._clock())
        return reading

    def progressed(self, name: str) -> None:
        """The reading moved (records delivered, a position advanced)."""
        reading = self._reading(name)
        reading.progress_at = self._clock()
        if reading.step:
            self._log(f"{self._label(name)} progresses again after {self._describe_steps(reading.step)}", "info")
            reading.step = 0
            if self.failed == name:
                self.failed = None

    def behind(self, name: str, behind: bool) -> None:
        """Whether the source holds more for the reading than it delivered. A reading that falls behind while it
        was idle starts its clock now: being idle is not a stall."""
        reading = self._reading(name)
        if behind and not reading.behind:
            reading.progress_at = max(reading.progress_at, self._clock())
        reading.behind = behind
        if not behind and reading.step:
            self.progressed(name)

    def until_loss(self, name: str, seconds: float | None) -> None:
        """Seconds until the reading's oldest undelivered record leaves the source (None: nothing at risk)."""
        reading = self._reading(name)
        reading.until_loss, reading.until_loss_at = seconds, self._clock()
        if seconds is None:
            reading.loss_warned = 0

    def forget(self, name: str) -> None:
        """The reading is no longer this trigger's (a partition moved to another instance)."""
        if self._readings.pop(name, None) is not None:
            self._drop_gauge(stalled_seconds, name)
            self._drop_gauge(seconds_until_loss, name)
        if self.failed == name:
            self.failed = None

    def readings(self) -> list[str]:
        """The readings watched (a new run of the owner forgets those it does not read again)."""
        return list(self._readings)

    # -- from the heartbeat ---------------------------------------------------------------------------------

    def stalled_for(self, name: str) -> float:
        """Seconds since progress while behind (0 when not behind)."""
        reading = self._readings.get(name)
        if reading is None or not reading.behind:
            return 0.0
        return max(0.0, self._clock() - reading.progress_at)

    def check(self) -> None:
        now = self._clock()
        for name, reading in list(self._readings.items()):
            stalled = self.stalled_for(name)
            stalled_seconds.labels(self.trigger, name).set(round(stalled, 1))
            self._check_loss(name, reading, now)
            if stalled < self.stall_seconds:
                continue
            # A step gets step_seconds to bring progress before the next one; after the last, the trigger is
            # unhealthy (the orchestrator's restart is the last resort), and the last step is retried meanwhile.
            if reading.step and now - reading.step_at < max(self.step_seconds, self.stall_seconds):
                continue
            if reading.step >= len(self.steps) and self.failed is None:
                self.failed = name
                self._log(f"{self._label(name)} still makes no progress after {self._describe_steps(reading.step)}: "
                          "reporting the trigger unhealthy so that it is restarted", "error")
            index = min(reading.step, len(self.steps) - 1)
            if reading.step < len(self.steps):
                self._log(f"{self._label(name)} has made no progress for {format_duration(stalled)} while the source "
                          f"holds more for it: {self.steps[index]}", "warning")
            reading.step += 1
            reading.step_at = now
            self.recover(name, index)

    def _check_loss(self, name: str, reading: _Reading, now: float) -> None:
        left = self._left(reading, now)
        if left is None:
            self._drop_gauge(seconds_until_loss, name)
            return
        seconds_until_loss.labels(self.trigger, name).set(round(left))
        crossed = sum(1 for threshold in self.loss_warnings if left < threshold)
        reading.loss_warned = min(reading.loss_warned, crossed)  # caught up: warned again if it falls back
        if crossed > reading.loss_warned:  # one warning per threshold crossed, the most urgent when several
            reading.loss_warned = crossed
            self._log(f"{self._label(name)}: the oldest record not delivered yet leaves the source in "
                      f"{format_duration(left)}; it is lost if it is not read by then", "warning")

    # -- what the trigger says -----------------------------------------------------------------------------

    def status(self) -> list[str]:
        parts = []
        for name in sorted(self._readings):
            stalled = self.stalled_for(name)
            if stalled >= self.stall_seconds:
                parts.append(f"{self._label(name)} stalled for {format_duration(stalled)}")
        now = self._clock()
        lefts = [(left, name) for name, reading in self._readings.items()
                 if (left := self._left(reading, now)) is not None]
        if lefts:
            left, name = min(lefts)
            parts.append(f"oldest undelivered record leaves the source in {format_duration(left)} ({self.what} {name})")
        return parts

    # -- helpers --------------------------------------------------------------------------------------------

    @staticmethod
    def _left(reading: _Reading, now: float) -> float | None:
        if reading.until_loss is None:
            return None
        return max(0.0, reading.until_loss - (now - reading.until_loss_at))

    def _label(self, name: str) -> str:
        return f"{self.what.capitalize()} {name}"

    def _describe_steps(self, taken: int) -> str:
        return ", then ".join(self.steps[:taken])

    def _drop_gauge(self, gauge: Gauge, name: str) -> None:
        try:
            gauge.remove(self.trigger, name)
        except KeyError:
            pass

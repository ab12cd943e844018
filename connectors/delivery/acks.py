"""Acknowledgements in order: batches are numbered as they are cut; several may be on the wire at once, but their
acknowledgements run on the loop strictly in that order, each only once every batch before it was confirmed. After
a batch that was never confirmed (stopping, a configuration error), no later acknowledgement runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from connectors import metrics
from connectors.delivery.control import Control

if TYPE_CHECKING:
    from connectors.delivery.batches import Batch

Ack = Callable[[], None]  # runs on the loop and must not block (record a position; files via asyncio.to_thread)


class OrderedAcks:
    def __init__(self, control: Control, *, trigger: str):
        self.control = control
        self.trigger = trigger
        self.cut_count = 0  # batches cut so far: the next batch's number
        self.acked_count = 0  # batches whose acknowledgements ran (or were dropped): all below this number
        self._finished: dict[int, tuple[Batch, bool]] = {}  # sent batches waiting for their turn to be acked

    @property
    def pending(self) -> int:
        """Batches cut and not yet acknowledged."""
        return self.cut_count - self.acked_count

    def number(self, batch: Batch) -> None:
        """The batch was cut: it takes the next turn."""
        batch.seq = self.cut_count
        self.cut_count += 1
        metrics.pending_batches.labels(self.trigger).set(self.pending)

    def finished(self, batch: Batch, confirmed: bool) -> None:
        """A sender is done with the batch (confirmed or not): the acknowledgements of every finished batch whose
        turn came run now (synchronous: nothing interleaves)."""
        self._finished[batch.seq] = (batch, confirmed)
        control = self.control
        progressed = False
        while (entry := self._finished.pop(self.acked_count, None)) is not None:
            batch, confirmed = entry
            if not confirmed:
                control.failure = control.failure or "a batch was not confirmed"
            if control.failure is None:
                self._run(batch)
            self.acked_count += 1
            progressed = True
        if progressed:
            metrics.pending_batches.labels(self.trigger).set(self.pending)
            control.notify()

    def _run(self, batch: Batch) -> None:
        for ack in batch.acks:
            if self.control.closed and self.control.failure is not None:
                return  # closed with batches unconfirmed: the trigger closes its state next, no ack may touch it
            try:
                ack()
            except Exception as error:  # noqa: BLE001 - one failed checkpoint must not stop the others
                self.control.log(
                    f"Saving progress after a confirmed delivery failed ({error!r}): the events were delivered "
                    "and may be delivered again after a restart",
                    "error",
                )

    def drop_rest(self) -> None:
        """Closed: what the senders never finished is dropped, nothing is left to wait for."""
        self._finished.clear()
        self.acked_count = self.cut_count
        metrics.pending_batches.labels(self.trigger).set(0)

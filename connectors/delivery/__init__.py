"""Delivery to the Sekoia runtime: batching, two ways out, answers classified, acknowledgements after confirmation.

A trigger hands serialized events to a ``Forwarder`` together with an acknowledgement callback (save a
checkpoint, record a blob as done). Everything runs on the trigger's one event loop: ``await add(...)`` buffers
(and is the backpressure), batches are cut on count, bytes or age, and sender tasks send each through a ``Sink``
(``connectors.sinks``: the intake ``/batch`` API over aiohttp, or a playbook event pointing at a records file)
until the runtime confirms it. Only then are the batch's acknowledgements called, on the loop, in the order they
were added, so nothing is ever marked as read before it was delivered. File writes go through
``asyncio.to_thread``; a local write that fails (the playbook's records file, the refused events file: a full
disk) is retried with backoff like an outage, said once, and nothing after it is acknowledged meanwhile.

One role per module:

- ``forwarder``: the ``Forwarder`` a trigger holds; wires the roles, runs the sender tasks, closes at a stop.
- ``batches``: the buffer, cut on count, bytes, age or quiet; the cut batches waiting for a sender; backpressure.
- ``acks``: batches numbered as cut, acknowledgements run strictly in that order, only after confirmation.
- ``transport``: one request until the runtime answers: connections, timeouts, retries, outages, stalls.
- ``refusals``: a batch's requests, and what the runtime refuses for good: split, shortened (413), set aside.
- ``oversize``: events over the intake's size limit, sent shortened as they are added, originals kept.
- ``control``: what they share: failure, stop deadline, the waits that end on either, local writes retried.
"""

from connectors.delivery.batches import BatchLimits
from connectors.delivery.control import STOP_GRACE_SECONDS, DeliveryAborted
from connectors.delivery.forwarder import DeliveryBroken, Forwarder
from connectors.delivery.refusals import REFUSES_EVERYTHING_REQUESTS, UnkeptRefusal
from connectors.delivery.transport import UNEXPECTED

__all__ = ["REFUSES_EVERYTHING_REQUESTS", "STOP_GRACE_SECONDS", "UNEXPECTED", "BatchLimits", "DeliveryAborted",
           "DeliveryBroken", "Forwarder", "UnkeptRefusal"]

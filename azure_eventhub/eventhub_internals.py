"""The one place that reaches into azure-eventhub's non-public members, each where the client offers no public way
to do what the trigger needs. Read from the version pinned in poetry.lock (``EVENTHUB_VERSION``);
tests/test_eventhub_client_internals.py checks every member used here on the installed client, so a release that
moves one fails there, by name, and the upgrade is a lock update plus this file, not an investigation.

Without them the trigger degrades quietly, which is why each is looked up defensively here (``getattr`` with a
default) and checked strictly in the test:

- ``EventHubConsumerClient._event_processors``: the client's event processors (one per running ``receive``); the
  client hands them out nowhere.
- ``EventProcessor._id``: the owner id the processor writes in the ownership records. Without it checkpoints are
  written without checking who owns the partition, and after a crash partitions resume only once their ownership
  expires. (Public alternative, not taken: the checkpoint store's ``list_ownership``, but that tells whose records
  they are only by guessing which owner is this instance, and costs a listing.)
- ``EventProcessor._tasks``: the partition's reading task, cancelled as the processor does when it loses the
  partition (its receiver and connection closed, its ownership released), the stall watch's first step. Without it
  a stalled partition is recovered only by restarting the run.
- ``EventProcessor._ownership_manager.cached_parition_ids`` (sic): the partition list the load balancing lists once
  and keeps; replaced when the partition watch sees partitions added to a running hub. Without it new partitions
  are read only after a restart.
- ``EventProcessor._consumers[partition]._handler._link._received_delivery_tags``: the tag of every delivery the
  partition's AMQP receiver took, kept until it sends a disposition, which it never does for Event Hubs (the
  service pre-settles them): emptied at every received batch. Without it the set grows by one tag per event for as
  long as the receiver lives (tens of megabytes per ten million events).

The namespace the processor writes into its records (``client._address.hostname``) is not read here: it is the
namespace the client was built with, found publicly (``azure_eventhub.clients.hub_namespace``); the test checks
both agree.
"""

from __future__ import annotations

from typing import Any

from azure.eventhub.aio import EventHubConsumerClient

EVENTHUB_VERSION = "5.15.1"


def client_processors(client: EventHubConsumerClient) -> list[Any]:
    """The client's event processors (one per ``receive`` running)."""
    return list(getattr(client, "_event_processors", {}).values())


def client_owner_id(client: EventHubConsumerClient) -> str | None:
    """The owner id the client's processor writes in the ownership blobs (None while not receiving)."""
    processors = client_processors(client)
    return getattr(processors[0], "_id", None) if processors else None


def reopen_partition(client: EventHubConsumerClient, partition_id: str) -> bool:
    """Close this instance's reading of a partition as the processor does when it loses it (its receiver and
    connection closed, its ownership released): the next load-balancing round opens it again from its checkpoint.
    False when the client is not reading it."""
    for processor in client_processors(client):
        task = getattr(processor, "_tasks", {}).get(partition_id)
        if task is not None and not task.done():
            task.cancel()
            return True
    return False


def set_partition_ids(client: EventHubConsumerClient, ids: list[str]) -> bool:
    """Replace the partition list the client's load balancing keeps (it lists them once, when empty). True when not
    receiving yet (the processor lists them itself when it starts) or once told; False when the list is not found."""
    processors = client_processors(client)
    if not processors:
        return True
    managers = [getattr(processor, "_ownership_manager", None) for processor in processors]
    managers = [manager for manager in managers if hasattr(manager, "cached_parition_ids")]  # sic, the client's
    for manager in managers:
        manager.cached_parition_ids = list(ids)
    return bool(managers)


def forget_delivery_tags(client: EventHubConsumerClient, partition_id: str) -> bool:
    """Empty the delivery tags the partition's receiver keeps for settling (never, on Event Hubs: see above). False
    when the client is not reading the partition or the set is not found."""
    for processor in client_processors(client):
        consumer = getattr(processor, "_consumers", {}).get(partition_id)
        link = getattr(getattr(consumer, "_handler", None), "_link", None)
        tags = getattr(link, "_received_delivery_tags", None)
        if isinstance(tags, set):
            tags.clear()
            return True
    return False

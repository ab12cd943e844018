"""Local AMQP 1.0 Azure Event Hubs emulator for the real `azure-eventhub` client (pyamqp transport).

python -m emulators.eventhub --port 0 --hub NAME[:PARTITIONS]     # prints `READY {json}`
from emulators.eventhub import EventHubEmulator                   # in-process (async or thread)
from emulators.eventhub.harness import EmulatorProcess            # subprocess helper for tests
"""

from .server import EventHubEmulator

__all__ = ["EventHubEmulator"]

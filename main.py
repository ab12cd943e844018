"""Entry point of the container: ``python main.py <docker_parameters>``."""

import sys

from sekoia_automation.module import Module

from azure_eventhub.trigger import EventHubTrigger
from connectors.trigger import CollectorTrigger
from office365.trigger import Office365Trigger

if __name__ == "__main__":
    module = Module()
    module.register(Office365Trigger, "office365_management_api")
    module.register(EventHubTrigger, "consume_eventhub_messages")
    module.run()
    # A configuration or state error was logged as critical: exit non-zero so a supervisor sees it.
    sys.exit(2 if CollectorTrigger.fatal_error else 0)

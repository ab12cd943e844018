"""Entry point of the container: ``python main.py <docker_parameters>``, or ``python main.py check
<docker_parameters>`` for the pre-flight check (connectors/preflight.py).

Only the trigger asked for is imported: the Office 365 one never loads the azure packages, the Event Hubs one
never loads msal, so each starts collecting sooner.
"""

import os
import signal
import sys

from connectors import stopping

OFFICE365 = "office365_management_api"
EVENTHUB = "consume_eventhub_messages"


def _stopped_while_starting(signum: int, frame: object) -> None:
    """SIGTERM before the trigger exists (the SDK's handler replaces this one when it does): remembered, and the
    trigger stops as soon as it is made, through the one stop path (exit 0, nothing collected yet). Not an
    exception raised here: an import in progress could swallow it and the stop would be lost."""
    stopping.requested_while_starting = True


def main() -> int:
    signal.signal(signal.SIGTERM, _stopped_while_starting)
    if sys.argv[1:2] == ["check"]:  # `python main.py check <docker_parameters>`: the pre-flight check, not a run
        from connectors.preflight import main as check

        return check(sys.argv[2:])
    # Every file the process writes holds audit data or leads to it (state, ledgers, set-aside events, the
    # records files of playbook events): readable by this user only (files 0600, directories 0700).
    os.umask(0o077)
    # The SDK's storage layer probes every smart_open transport at import; the Azure one imports
    # azure.storage.blob where it is installed (a development dependency): a heavy import at every start for a
    # transport the SDK never uses here.
    sys.modules.setdefault("smart_open.azure", None)  # type: ignore[arg-type]
    from sekoia_automation.module import Module

    from connectors.trigger import CollectorTrigger

    module = Module()
    # One literal registration per trigger (Sekoia's tooling reads them from this file), each behind its own
    # import; an unknown command registers both so that the SDK names the ones it knows.
    everything = module.command not in (OFFICE365, EVENTHUB)
    if everything or module.command == OFFICE365:
        from office365.trigger import Office365Trigger

        module.register(Office365Trigger, "office365_management_api")
    if everything or module.command == EVENTHUB:
        from azure_eventhub.trigger import EventHubTrigger

        module.register(EventHubTrigger, "consume_eventhub_messages")
    module.run()
    # A configuration or state error was logged as critical: exit non-zero so a supervisor sees it.
    return 2 if CollectorTrigger.fatal_error else 0


if __name__ == "__main__":
    sys.exit(main())

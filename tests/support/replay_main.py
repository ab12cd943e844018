"""``python tests/support/replay_main.py replay_file``: the foundation's test trigger, run as the container runs main.py."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sekoia_automation.module import Module  # noqa: E402

from connectors.trigger import CollectorTrigger  # noqa: E402
from tests.support.replay_trigger import ReplayTrigger  # noqa: E402

if __name__ == "__main__":
    module = Module()
    module.register(ReplayTrigger, "replay_file")
    module.run()
    sys.exit(2 if CollectorTrigger.fatal_error else 0)

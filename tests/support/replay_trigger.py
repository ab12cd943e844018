"""A minimal collector on the shared base, for testing the foundation end to end without a Microsoft source.

It forwards the lines of an NDJSON file from a durable offset, saving the offset only in the forwarder's ack,
exactly as the real triggers do with their checkpoints. ``REPLAY_CRASH_BEFORE_CHECKPOINT=1`` kills the process
in the first ack, after the runtime confirmed a batch and before the offset is saved: the window where a
collector may re-deliver but must never lose.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import Field

from connectors.state import StateFile
from connectors.trigger import CollectorConfiguration, CollectorTrigger


class ReplayConfiguration(CollectorConfiguration):
    source: str = Field(..., min_length=1)
    chunk: int = Field(100, ge=1)


class ReplayTrigger(CollectorTrigger):
    configuration_model = ReplayConfiguration

    def collect(self) -> None:
        config = self.configuration
        checkpoint = StateFile(self.state_dir / "offset.json")
        offset = checkpoint.load({"line": 0})["line"]
        lines = Path(config.source).read_bytes().splitlines()
        crash = os.environ.get("REPLAY_CRASH_BEFORE_CHECKPOINT") == "1"

        def saver(line: int):
            def ack() -> None:
                if crash:
                    os._exit(9)
                checkpoint.save({"line": line})

            return ack

        while offset < len(lines) and self.running:
            chunk = lines[offset : offset + config.chunk]
            offset += len(chunk)
            self.forwarder.add(chunk, ack=saver(offset), origin=f"{config.source}:{offset}")
            self.heartbeat()
        self.forwarder.drain()
        self.log(f"Replayed up to line {offset}", "info")
        while self.running:
            time.sleep(0.2)

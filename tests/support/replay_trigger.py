"""A minimal collector on the shared base, for testing the foundation end to end without a Microsoft source.

It forwards the lines of an NDJSON file from a durable offset, saving the offset only in the forwarder's ack,
exactly as the real triggers do with their checkpoints. ``REPLAY_CRASH_BEFORE_CHECKPOINT=1`` kills the process
in the first ack, after the runtime confirmed a batch and before the offset is saved: the window where a
collector may re-deliver but must never lose.
"""

from __future__ import annotations

import asyncio
import os
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
        self.run_async(self._replay)

    async def _replay(self, stopping: asyncio.Event) -> None:
        config = self.configuration
        checkpoint = StateFile(self.state_dir / "offset.json")
        offset = checkpoint.load({"line": 0})["line"]
        lines = Path(config.source).read_bytes().splitlines()
        crash = os.environ.get("REPLAY_CRASH_BEFORE_CHECKPOINT") == "1"
        confirmed = {"line": offset}
        moved = asyncio.Event()
        finished = False

        def saver(line: int):
            def ack() -> None:  # on the loop, so it does not block: records the position, the writer saves it
                if crash:
                    os._exit(9)
                confirmed["line"] = line
                moved.set()

            return ack

        async def write_checkpoints() -> None:
            saved = offset
            # Until finished and nothing moved since the last save (the last position may come during a save).
            while not finished or moved.is_set():
                await moved.wait()
                moved.clear()
                if confirmed["line"] != saved:
                    saved = confirmed["line"]
                    await asyncio.to_thread(checkpoint.save, {"line": saved})

        writer = asyncio.create_task(write_checkpoints())
        try:
            while offset < len(lines) and self.running:
                chunk = lines[offset : offset + config.chunk]
                offset += len(chunk)
                await self.forwarder.add(chunk, ack=saver(offset), origin=f"{config.source}:{offset}")
                self.heartbeat()
            await self.forwarder.drain()
            self.log(f"Replayed up to line {offset}", "info")
            await stopping.wait()
        finally:
            await self.finish_delivery()  # its last acknowledgements, then their position saved
            finished = True
            moved.set()
            await writer

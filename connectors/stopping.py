"""How a run stops, the same for both triggers.

SIGTERM (or ``stop()`` from any thread) sets the run's stop event on its event loop at once; every wait of the
collection is a wait "unless stopping", so the collect loop ends within moments, and the trigger then gives the
forwarder its grace to deliver what was handed over.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Set by main.py's SIGTERM handler, the one in place until the SDK installs its own in the trigger's __init__:
# that __init__ then stops the trigger at once (nothing was collected yet; the process exits 0).
requested_while_starting = False


class Stopping(Exception):
    """The trigger is stopping: give up quietly."""


async def unless_stopping(step: Awaitable[T], stopping: asyncio.Event) -> T:
    """The result of ``step`` (a start-up step may wait a minute for an unreachable endpoint), or ``Stopping``
    as soon as the trigger is asked to stop, the step then being cancelled."""
    task = asyncio.ensure_future(step)
    stop = asyncio.ensure_future(stopping.wait())
    cut_short = False
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        # Also when the caller is cancelled: the step must not run on, orphaned.
        stop.cancel()
        if not task.done():
            cut_short = True
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if cut_short:
        raise Stopping()
    return task.result()


async def sleep_or_stop(delay: float, stopping: asyncio.Event) -> bool:
    """Sleep ``delay`` seconds unless ``stopping`` is set first (a stop, a flush); True when it is set."""
    try:
        await asyncio.wait_for(stopping.wait(), timeout=max(0.0, delay))
        return True
    except TimeoutError:
        return stopping.is_set()


def pause_or_stop(stopping: asyncio.Event) -> Callable[[float], Awaitable[None]]:
    """A wait between retries (``connectors.retry.retrying``'s ``pause``) that raises ``Stopping`` as soon as
    ``stopping`` is set."""

    async def pause(delay: float) -> None:
        if await sleep_or_stop(delay, stopping):
            raise Stopping()

    return pause

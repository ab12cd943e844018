"""Room for fetched bodies: fetches wait once the bodies waiting (and those on their way) fill the byte budget."""

from __future__ import annotations

import asyncio

from office365.fetch_room import FIRST_GUESS, FetchRoom


async def test_fetches_wait_for_bytes_not_only_for_blobs():
    room = FetchRoom(blobs=64, max_bytes=3 * FIRST_GUESS)
    first = await room.acquire()
    room.fetched(first, 2 * FIRST_GUESS)  # a big body: the guess grows
    second = await room.acquire()
    assert second > FIRST_GUESS and room.held >= room.max_bytes
    third = asyncio.create_task(room.acquire())
    await asyncio.sleep(0.05)
    assert not third.done()  # the budget is spent, though 62 blobs could still wait
    room.release(2 * FIRST_GUESS)  # the big body was processed
    assert await asyncio.wait_for(third, 5) > 0
    room.release(second)  # a fetch given up gives back what it reserved
    room.release(third.result())
    assert room.held == 0


async def test_a_body_larger_than_the_whole_budget_still_goes_alone():
    room = FetchRoom(blobs=4, max_bytes=FIRST_GUESS)
    reserved = await room.acquire()
    room.fetched(reserved, 50 * FIRST_GUESS)
    waiting = asyncio.create_task(room.acquire())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    room.release(50 * FIRST_GUESS)
    assert await asyncio.wait_for(waiting, 5) > 0


async def test_the_number_of_blobs_still_bounds_small_bodies():
    room = FetchRoom(blobs=2, max_bytes=100 * FIRST_GUESS)
    for _ in range(2):
        room.fetched(await room.acquire(), 10)
    waiting = asyncio.create_task(room.acquire())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    room.release(10)
    await asyncio.wait_for(waiting, 5)

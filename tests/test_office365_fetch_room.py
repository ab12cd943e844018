"""Room for fetched bodies: fetches wait once the bodies held (and those on their way, counted at the largest recent
body) would pass the byte budget."""

from __future__ import annotations

import asyncio

from office365.fetch_room import FetchRoom

MB = 1024 * 1024


async def started(room: FetchRoom, kind: str = "") -> list[int]:
    """Every fetch of this kind the room lets start now (their reservations)."""
    reservations = []
    while True:
        attempt = asyncio.create_task(room.acquire(kind))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        if not attempt.done():
            attempt.cancel()
            await asyncio.gather(attempt, return_exceptions=True)
            return reservations
        reservations.append(attempt.result())


async def test_fetches_wait_for_bytes_not_only_for_blobs():
    room = FetchRoom(blobs=64, max_bytes=8 * MB)
    first = await room.acquire()
    room.fetched(first, 3 * MB)  # a big body: the next fetches are counted at its size
    more = await started(room)
    assert more == [3 * MB]  # 3 MB held + 3 MB on its way; a third would pass 8 MB, though 62 blobs could still wait
    room.release(3 * MB)  # the big body was cut into records
    assert await started(room) == [3 * MB]
    for reserved in more * 2:
        room.release(reserved)  # a fetch given up gives back what it reserved
    assert room.held == 0


async def test_a_wave_of_fetches_stays_within_the_budget_when_every_body_is_as_big_as_the_largest():
    room = FetchRoom(blobs=64, max_bytes=16 * MB)
    wave = await started(room)  # before any body: a quarter of the room each
    assert len(wave) == 4
    for reserved in wave:
        room.fetched(reserved, 2 * MB)
    assert room.held == 8 * MB
    room.fetched(await room.acquire(), 4 * MB)  # one body twice as big as the others
    wave = await started(room)  # now counted at 4 MB each
    for reserved in wave:
        room.fetched(reserved, 4 * MB)  # they all came back that big
    assert room.held <= room.max_bytes


async def test_a_smaller_body_than_reserved_lets_a_waiting_fetch_start():
    room = FetchRoom(blobs=64, max_bytes=5 * MB)
    first = await room.acquire()
    room.fetched(first, 2 * MB)
    second = await room.acquire()  # counted at 2 MB: no room for a third
    waiting = asyncio.create_task(room.acquire())
    await asyncio.sleep(0)
    assert not waiting.done()
    room.fetched(second, 1000)  # the second body was small: room for one more at the estimate
    assert await asyncio.wait_for(waiting, 5) == 2 * MB


async def test_a_body_larger_than_the_whole_budget_still_goes_alone():
    room = FetchRoom(blobs=4, max_bytes=MB)
    reserved = await room.acquire()
    room.fetched(reserved, 50 * MB)
    waiting = asyncio.create_task(room.acquire())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    room.release(50 * MB)
    assert await asyncio.wait_for(waiting, 5) == 50 * MB  # alone again: counted at that size
    assert await started(room) == []


async def test_the_number_of_blobs_still_bounds_small_bodies():
    room = FetchRoom(blobs=2, max_bytes=100 * MB)
    for _ in range(2):
        room.fetched(await room.acquire(), 10)
    waiting = asyncio.create_task(room.acquire())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    room.release(10)
    await asyncio.wait_for(waiting, 5)


async def test_a_run_of_small_bodies_of_one_kind_does_not_open_the_room_to_big_ones_of_another():
    """The listers hand over runs of one content type: each is counted at its own kind's bodies."""
    room = FetchRoom(blobs=64, max_bytes=8 * MB)
    room.fetched(await room.acquire("Audit.AzureActiveDirectory"), 3 * MB, "Audit.AzureActiveDirectory")
    room.release(3 * MB)
    for _ in range(20):  # a run of small bodies
        reserved = await room.acquire("Audit.General")
        room.fetched(reserved, MB // 2, "Audit.General")
        room.release(MB // 2)
    assert room.estimate("Audit.General") == MB // 2
    assert room.estimate("Audit.AzureActiveDirectory") == 3 * MB
    assert room.estimate("DLP.All") == 3 * MB  # a kind not seen yet: the largest body of any
    wave = await started(room, "Audit.AzureActiveDirectory")
    for reserved in wave:
        room.fetched(reserved, 3 * MB, "Audit.AzureActiveDirectory")
    assert len(wave) == 2 and room.held <= room.max_bytes


async def test_skipped_blobs_tell_nothing_of_their_kind_s_size():
    room = FetchRoom(blobs=64, max_bytes=8 * MB)
    room.fetched(await room.acquire("a"), 2 * MB, "a")
    room.release(2 * MB)
    for _ in range(10):
        room.fetched(await room.acquire("b"), 0, "b")  # expired or vanished: no body
        room.release(0)
    assert room.estimate("b") == 2 * MB


async def test_a_kind_not_seen_yet_is_counted_at_a_quarter_of_the_room_at_least():
    """At the start, small bodies of the first kind seen do not let a wave of another kind's big ones out."""
    room = FetchRoom(blobs=64, max_bytes=8 * MB)
    room.fetched(await room.acquire("Audit.General"), MB // 2, "Audit.General")
    room.release(MB // 2)
    wave = await started(room, "Audit.AzureActiveDirectory")
    assert len(wave) == 4
    for reserved in wave:
        room.fetched(reserved, 2 * MB, "Audit.AzureActiveDirectory")
    assert room.held <= room.max_bytes

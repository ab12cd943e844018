"""``o365_state_scale``: a week of a big tenant's delivered history in the state, then a start of the trigger.

The history goes through the product's own state code (``CollectorState.commit`` and ``save``, as acknowledgements
and their writes do): 7 days of a 5 million records a day tenant in blobs of 500 records, each blob's records with
their filter keys, written a hundred blobs at a time (what coalesced writes do at full speed). The trigger then
starts on that state against the Office 365 emulator holding a backlog: the start-up (process start to the
first request to the emulator, the state opened before it) and the peak RSS are measured on the trigger process,
as the other scenarios do, and the state's size on disk is divided by the records of history. The backlog is of
big blobs (1,000 records each, about 1 MB): the peak RSS covers reading them on top of the history.
"""

from __future__ import annotations

import os
import time
from array import array
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from benchmarks.measure import goal
from office365.config import CONTENT_TYPES, Office365Configuration
from office365.listing import ContentRef
from office365.state import CollectorState, Delivered

if TYPE_CHECKING:
    from benchmarks.scenarios import Workspace

RECORDS_PER_DAY = 5_000_000
DAYS = 7
RECORDS_PER_BLOB = 500
BLOBS_PER_WRITE = 100
BIG_BLOB_RECORDS = 1000
STARTUP_GOAL_S = 2.0
PEAK_RSS_GOAL_MB = 150.0
BYTES_PER_RECORD_GOAL = 3.0


def synthesize(state_dir: Path, records: int, filter_capacity: int) -> dict:
    """``records`` of delivered history spread over the last ``DAYS`` days, written by ``CollectorState``."""
    content_types = list(CONTENT_TYPES)
    now = datetime.now(UTC)
    state = CollectorState(state_dir, content_types, initial_lookback=timedelta(days=DAYS),
                           filter_capacity=filter_capacity, now=now)
    blobs = records // RECORDS_PER_BLOB
    span = DAYS * 86400.0
    started = time.monotonic()
    try:
        for first in range(0, blobs, BLOBS_PER_WRITE):
            batch = []
            for index in range(first, min(blobs, first + BLOBS_PER_WRITE)):
                created = now.timestamp() - span + span * index / blobs
                content_type = content_types[index % len(content_types)]
                ref = ContentRef(content_type, f"{int(created)}${index:012d}history", "https://history/",
                                 created, created + span)
                keys = array("Q")
                keys.frombytes(os.urandom(8 * RECORDS_PER_BLOB))
                batch.append(Delivered(ref, keys=[key >> 1 for key in keys], records=RECORDS_PER_BLOB))
            state.commit(batch)
            state.save()
    finally:
        state.close()  # its resume points stay at the lookback: the trigger lists the emulator's backlog
    size = sum(path.stat().st_size for path in state_dir.iterdir() if path.is_file())
    return {"history_records": blobs * RECORDS_PER_BLOB, "history_blobs": blobs, "state_bytes": size,
            "bytes_per_record": round(size / (blobs * RECORDS_PER_BLOB), 3),
            "synthesis_s": round(time.monotonic() - started, 1)}


def o365_state_scale(ws: Workspace, quick: bool) -> dict:
    from benchmarks.scenarios import Office365Backlog, run_office365

    days = 1 if quick else DAYS  # quick: one day of the same tenant (5 million records)
    records = RECORDS_PER_DAY * days
    capacity = Office365Configuration.model_fields["record_filter_size"].default
    blobs = 10 if quick else 40
    work = ws.new("o365_state_scale")
    backlog = Office365Backlog(work, blobs, BIG_BLOB_RECORDS)
    history: dict = {}

    def prepare(data_path: Path) -> None:
        history.update(synthesize(data_path / "state" / "office365_management_api", records, capacity))

    try:
        run = run_office365(ws.new("o365_state_scale-ours"), backlog, 600, prepare=prepare)
    finally:
        backlog.stop()
    figures = run.figures()
    return {
        "workload": f"{records:,} records of delivered history ({days} days of {RECORDS_PER_DAY:,} a day, "
                    f"{RECORDS_PER_BLOB} a blob) in the state, then a start on {blobs * 5} blobs x {BIG_BLOB_RECORDS} "
                    "records over 5 content types",
        "history": history, "ours": figures,
        "goals": [goal("start-up on a week of history: first request (s)", figures["first_request_s"], "<=",
                       STARTUP_GOAL_S),
                  goal("peak RSS on a week of history (MB)", figures["peak_rss_mb"], "<=", PEAK_RSS_GOAL_MB),
                  goal("state on disk (bytes per record of history)", history.get("bytes_per_record"), "<=",
                       BYTES_PER_RECORD_GOAL)],
        "timeline": {"ours": run.timeline},
    }

"""``o365_soak`` and ``eventhub_soak``: 10 million records streamed through each trigger, run as production runs it.

Memory: the trigger's resident set (``VmRSS`` of ``/proc/<pid>/status``) is sampled every ``SAMPLE_S`` while records
flow (from the first confirmed record to the last); the goal holds the median of the last third of the samples
(by time) within 10 % of the median of the first third. Medians, not means: the first seconds' ramp (buffers and
caches filling) and a collection's spike are single samples, a leak moves the whole third. At the quick size
(500,000 records) Office 365 streams for 6 to 12 s, a third of it ramping up to 32 blobs in flight: its ratio there
says nothing of a leak (1.5-1.9 measured, 1.007-1.015 at full size).

State: the size of what the trigger keeps once a third of the records were confirmed, against its size at the end
(after the trigger stopped and flushed): it must not grow with the records. Office 365: the files of the data path
(checkpoint and ledger of delivered blobs). Event Hubs: the data path's files plus the checkpoint and ownership
blobs in Azurite (names and metadata: they have no content).

Streaming: Office 365 renders each blob's body when the trigger fetches it (``--prerender-mb 0``, a small LRU):
the emulator holds ranges of record keys, not 10 GB of JSON. Event Hubs: a producer thread (the real client)
publishes while the trigger reads, never more than ``WINDOW_RECORDS`` ahead of what the runtime confirmed, and
the emulator keeps at most ``RETAINED_EVENTS`` per partition, more than the window: its memory is bounded and no
unread event is ever trimmed (the count confirmed by the runtime stub is the proof: ``records lost``).
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import psutil
import requests

from benchmarks.measure import PEAK_RSS_GOAL_MB, Run, goal, run_trigger
from emulators.azurite import Azurite
from emulators.process import ServerProcess
from emulators.runtime.harness import Runtime

if TYPE_CHECKING:
    from benchmarks.scenarios import Workspace

# benchmarks.scenarios is imported where used: it imports this module's scenarios at its end.

FULL_RECORDS = 10_000_000
QUICK_RECORDS = 500_000
SAMPLE_S = 1.0
RSS_GOAL = 1.10  # last third's median RSS over the first third's
STATE_GOAL = 1.10  # state size at the end over its size after the first third
O365_RECORDS_PER_BLOB = 1_000
ENVELOPE_RECORDS = 20  # the shapes and size of eventhub_envelopes (about 36 KB an event)
WINDOW_RECORDS = 50_000  # how far the producer may run ahead of the runtime's confirmations
RETAINED_EVENTS = WINDOW_RECORDS // ENVELOPE_RECORDS + 500  # per partition: the window plus a full batch or more


def soak_records(quick: bool) -> int:
    return QUICK_RECORDS if quick else FULL_RECORDS


def _rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        pass
    return None


class Probe:
    """Wraps the counter ``run_trigger`` polls: samples the trigger's RSS every ``SAMPLE_S`` while records flow, and
    the state's size once a third of the records were confirmed (run_trigger does not expose the process: it is
    found among this process's children by its command line)."""

    def __init__(self, counter: Callable[[], int], parameter: str, expected: int, state: Callable[[], dict],
                 at_first_record: Callable[[], object] | None = None):
        self.counter, self.parameter, self.expected, self.state = counter, parameter, expected, state
        self.at_first_record = at_first_record
        self.early: object = None  # what at_first_record answered, once records flowed
        self.started = time.monotonic()
        self.pid: int | None = None
        self.next_sample = 0.0
        self.samples: list[tuple[float, int, float]] = []  # (seconds since start, confirmed records, RSS MB)
        self.third: dict | None = None

    def _trigger_pid(self) -> int | None:
        if self.pid is None or not psutil.pid_exists(self.pid):
            self.pid = next((child.pid for child in psutil.Process().children()
                             if self._is_trigger(child)), None)
        return self.pid

    def _is_trigger(self, child: psutil.Process) -> bool:
        try:
            command = child.cmdline()
        except psutil.Error:
            return False
        return self.parameter in command and any(part.endswith("main.py") for part in command)

    def __call__(self) -> int:
        count = self.counter()
        now = time.monotonic()
        if count and self.at_first_record is not None and self.early is None:
            self.early = self.at_first_record()
        if count and now >= self.next_sample:
            self.next_sample = now + SAMPLE_S
            pid = self._trigger_pid()
            rss = _rss_mb(pid) if pid else None
            if rss is not None:
                self.samples.append((round(now - self.started, 2), count, round(rss, 1)))
        if self.third is None and count >= self.expected / 3:
            self.third = {"records": count, **self.state()}
        return count


def rss_thirds(samples: list[tuple[float, int, float]]) -> dict:
    """Medians of the first and last thirds (by time) of the samples taken while records flowed."""
    if len(samples) < 3:
        return {"samples": len(samples), "first_third_median_mb": None, "last_third_median_mb": None, "ratio": None}
    start, end = samples[0][0], samples[-1][0]
    span = (end - start) / 3
    first = [rss for t, _, rss in samples if t <= start + span]
    last = [rss for t, _, rss in samples if t >= end - span]
    first_mb, last_mb = statistics.median(first), statistics.median(last)
    return {"samples": len(samples), "first_third_median_mb": round(first_mb, 1),
            "last_third_median_mb": round(last_mb, 1), "ratio": round(last_mb / first_mb, 3),
            "min_mb": min(rss for *_, rss in samples), "max_mb": max(rss for *_, rss in samples)}


def files_size(directory: Path) -> dict:
    """Bytes of every file under the data path, by name (the lock file included: it is the trigger's too)."""
    files = {str(path.relative_to(directory)): path.stat().st_size for path in sorted(directory.rglob("*"))
             if path.is_file()}
    return {"bytes": sum(files.values()), "files": files}


def checkpoint_blobs_size(azurite: Azurite, container: str) -> dict:
    """What the checkpoint store keeps in Azurite: blob names and metadata (its blobs have no content)."""
    blobs = azurite.admin.list_blobs(container)
    size = sum(len(blob["name"]) + sum(len(k) + len(v or "") for k, v in blob["metadata"].items()) for blob in blobs)
    return {"bytes": size, "blobs": len(blobs)}


def _soak_result(workload: str, run: Run, probe: Probe, end_state: dict, expected: int, extra: dict) -> dict:
    figures = run.figures()
    rss = rss_thirds(probe.samples)
    third = probe.third or {}
    state_ratio = round(end_state["bytes"] / third["bytes"], 3) if third.get("bytes") else None
    after_third = run.records - third.get("records", 0)
    growth_per_record = (round((end_state["bytes"] - third["bytes"]) / after_third, 3)
                         if third.get("bytes") is not None and after_third > 0 else None)
    return {
        "workload": workload,
        "ours": figures,
        "lost": expected - run.records,
        "rss": rss,
        "state": {"after_first_third": third, "end": {"records": run.records, **end_state}, "ratio": state_ratio,
                  "bytes_per_record_after_first_third": growth_per_record},
        **extra,
        "goals": [goal("records lost", expected - run.records, "<=", 0),
                  goal("soak RSS last/first third (median)", rss["ratio"], "<=", RSS_GOAL),
                  goal("soak state end/first third", state_ratio, "<=", STATE_GOAL),
                  goal("peak RSS (MB)", figures["peak_rss_mb"], "<=", PEAK_RSS_GOAL_MB)],
        # (seconds, records confirmed, RSS MB) a second, for the report's soak panel; no "timeline": minutes of 50 ms
        # points would squash the throughput panel's runs of seconds.
        "samples": [list(sample) for sample in probe.samples],
    }


# -- Office 365 -----------------------------------------------------------------------------------------------------


def o365_soak(ws: Workspace, quick: bool) -> dict:
    from benchmarks.scenarios import O365_CONTENT_TYPES, Office365Backlog

    records = soak_records(quick)
    blobs = records // (O365_CONTENT_TYPES * O365_RECORDS_PER_BLOB)
    work = ws.new("o365_soak")
    # Bodies rendered when fetched (none before READY), a small LRU: the emulator's memory does not hold the records.
    backlog = Office365Backlog(work, blobs, O365_RECORDS_PER_BLOB, "--prerender-mb", "0", "--cache-mb", "16")
    runtime = Runtime(ws.new("o365_soak-ours") / "runtime", "--count-only")
    try:
        info = backlog.info
        configuration = {"tenant_id": info["tenant_id"], "client_id": info["client_id"],
                         "client_secret": info["client_secret"], "login_url": info["login_url"],
                         "management_url": info["management_url"]}
        env = runtime.env(configuration)
        env.update(SSL_CERT_FILE=info["ca_file"], REQUESTS_CA_BUNDLE=info["ca_file"])
        probe = Probe(runtime.counter(), "office365_management_api", backlog.expected,
                      lambda: files_size(runtime.data_path))
        backlog.control(reset_stats=True)
        run = run_trigger("office365_management_api", env, probe, backlog.expected, 600 if quick else 7200,
                          work / "trigger.log",
                          first_request=lambda: backlog.get("/_emulator/stats")["first_request_at"])
        end_state = files_size(runtime.data_path)  # after the stop: what the trigger flushed is counted
    finally:
        runtime.stop()
        backlog.stop()
    return _soak_result(f"{blobs * O365_CONTENT_TYPES} blobs x {O365_RECORDS_PER_BLOB} records over 5 content "
                        f"types, rendered as fetched", run, probe, end_state, backlog.expected, {})


# -- Event Hubs -----------------------------------------------------------------------------------------------------


class EventHubStream:
    """The Event Hubs emulator fed while the trigger reads, by the real producer client in a thread (the way
    ``scenarios.EventHubBacklog.load`` feeds it, paced by the runtime's confirmations)."""

    def __init__(self, work: Path, hub: str = "soak", partitions: int = 4):
        self.hub = hub
        self.server = ServerProcess("emulators.eventhub", "--port", "0", "--hub", hub, "--partitions",
                                    str(partitions), "--max-events", str(RETAINED_EVENTS),
                                    log_path=work / "emulator.log")
        self.info = self.server.info
        self.records = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._sent = threading.Event()  # a first batch is in: the producer's connection is not the trigger's
        self._thread: threading.Thread | None = None

    def stream(self, bodies, records_per_body: int, confirmed: Callable[[], int]) -> None:
        """Publish ``bodies`` in the background, at most ``WINDOW_RECORDS`` ahead of ``confirmed()``."""
        self._thread = threading.Thread(target=self._produce, args=(bodies, records_per_body, confirmed),
                                        name="soak-producer", daemon=True)
        self._thread.start()
        self._sent.wait(60)  # the start-up figure takes the first connection after the trigger's launch

    def _produce(self, bodies, records_per_body: int, confirmed: Callable[[], int]) -> None:
        from azure.eventhub import EventData, EventHubProducerClient

        try:
            producer = EventHubProducerClient.from_connection_string(self.info["connection_string"])
            with producer:
                batch, in_batch = producer.create_batch(), 0
                for body in bodies:
                    # Records added to the open batch count as published: the window stays a bound on the unread.
                    while self.records - confirmed() >= WINDOW_RECORDS and not self._stop.is_set():
                        if in_batch:
                            producer.send_batch(batch)
                            batch, in_batch = producer.create_batch(), 0
                            self._sent.set()
                        time.sleep(0.005)
                    if self._stop.is_set():
                        return
                    try:
                        batch.add(EventData(body))
                    except ValueError:  # batch full
                        producer.send_batch(batch)
                        self._sent.set()
                        batch = producer.create_batch()
                        batch.add(EventData(body))
                        in_batch = 0
                    in_batch += 1
                    self.records += records_per_body
                if in_batch:
                    producer.send_batch(batch)
        except BaseException as exc:  # noqa: BLE001 - reported by the scenario
            self.error = exc
        finally:
            self._sent.set()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.server.stop()

    def stats(self) -> dict:
        return requests.get(self.info["control_url"] + "/_emulator/control", timeout=30).json()["stats"]

    def connections_opened_at(self) -> list[float]:
        return self.stats()["connections_opened_at"]


def eventhub_soak(ws: Workspace, quick: bool) -> dict:
    from benchmarks.scenarios import envelopes

    records = soak_records(quick)
    count = records // ENVELOPE_RECORDS
    work = ws.new("eventhub_soak")
    stream = EventHubStream(work)
    azurite = Azurite(location=work / "azurite").start()
    runtime = Runtime(ws.new("eventhub_soak-ours") / "runtime", "--count-only")
    container = "ckpt-soak"
    try:
        azurite.create_container(container)
        configuration = {"hub_connection_string": stream.info["connection_string"], "hub_name": stream.hub,
                         "hub_consumer_group": "sekoia", "starting_position": "earliest",
                         "storage_connection_string": azurite.connection_string,
                         "storage_container_name": container}
        env = runtime.env(configuration)

        def state() -> dict:
            local, blobs = files_size(runtime.data_path), checkpoint_blobs_size(azurite, container)
            return {"bytes": local["bytes"] + blobs["bytes"], "data_path": local, "checkpoint_store": blobs}

        stream.stream(envelopes(count, ENVELOPE_RECORDS), ENVELOPE_RECORDS, runtime.counter())
        # The emulator keeps the last 100 connection times and the trigger keeps opening connections (31 in a
        # 96 s run): by the end of a long run its first one is gone, so they are read once records flow.
        probe = Probe(runtime.counter(), "consume_eventhub_messages", records, state,
                      at_first_record=stream.connections_opened_at)
        run = run_trigger("consume_eventhub_messages", env, probe, records, 600 if quick else 7200,
                          work / "trigger.log", first_request=lambda: probe.early)
        end_state = state()
        emulator = stream.stats()
    finally:
        runtime.stop()
        azurite.stop()
        stream.stop()
    if stream.error is not None:
        raise RuntimeError(f"the soak producer failed: {stream.error!r}") from stream.error
    return _soak_result(
        f"{count} diagnostic-settings envelopes x {ENVELOPE_RECORDS} records (fixture shapes) published while the "
        f"trigger reads, at most {WINDOW_RECORDS} records ahead; Azurite checkpoints",
        run, probe, end_state, records,
        {"emulator": {"events_published": emulator["events_published"],
                      "connections_total": emulator["connections_total"],
                      # read, then dropped past the retention: memory bound, not loss (see "records lost")
                      "events_trimmed": emulator["events_trimmed"], "retained_per_partition": RETAINED_EVENTS}})

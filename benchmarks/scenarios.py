"""The benchmark scenarios: each runs the trigger as production does and its baseline, in the same run."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson
import requests

from benchmarks.measure import Run, cost_goals, goal, run_trigger
from emulators import fixtures
from emulators.azurite import Azurite
from emulators.process import ServerProcess, python_child
from emulators.runtime.harness import Runtime

O365_CONTENT_TYPES = 5


class Workspace:
    """A directory per run, so every run starts without checkpoints."""

    def __init__(self, root: Path):
        self.root = root
        self.count = 0

    def new(self, name: str) -> Path:
        self.count += 1
        path = self.root / f"{self.count:02d}-{name}"
        path.mkdir(parents=True)
        return path


# -- Office 365 -----------------------------------------------------------------------------------------------------


class Office365Backlog:
    """The Office 365 emulator holding a backlog of generated blobs."""

    def __init__(self, work: Path, blobs_per_type: int, records_per_blob: int = 50, *extra: str):
        self.server = ServerProcess(
            "emulators.office365", "--port", "0", "--workdir", str(work / "emulator"),
            "--blobs", str(blobs_per_type), "--records-per-blob", str(records_per_blob), "--seed", "7", *extra,
            log_path=work / "emulator.log", timeout=300,
        )
        self.info = self.server.info
        self.expected = blobs_per_type * O365_CONTENT_TYPES * records_per_blob

    def get(self, path: str) -> dict:
        return requests.get(self.info["management_url"] + path, verify=self.info["ca_file"], timeout=30).json()

    def control(self, **knobs) -> dict:
        return requests.post(self.info["management_url"] + "/_emulator/control", json=knobs,
                             verify=self.info["ca_file"], timeout=30).json()

    def stop(self) -> None:
        self.server.stop()


def run_office365(work: Path, backlog: Office365Backlog, timeout: float,
                  prepare: Callable[[Path], None] | None = None, **overrides) -> Run:
    """``prepare(data_path)`` runs before the trigger starts (a state to start from)."""
    runtime = Runtime(work / "runtime", "--count-only")  # checked and counted, not written: see the stub
    try:
        if prepare is not None:
            prepare(runtime.data_path)
        info = backlog.info
        configuration = {
            "tenant_id": info["tenant_id"], "client_id": info["client_id"], "client_secret": info["client_secret"],
            "login_url": info["login_url"], "management_url": info["management_url"], **overrides,
        }
        env = runtime.env(configuration)
        env.update(SSL_CERT_FILE=info["ca_file"], REQUESTS_CA_BUNDLE=info["ca_file"])
        backlog.control(reset_stats=True)  # the counters and the first request are this run's
        return run_trigger("office365_management_api", env, runtime.counter(), backlog.expected,
                           timeout, work / "trigger.log",
                           first_request=lambda: backlog.get("/_emulator/stats")["first_request_at"])
    finally:
        runtime.stop()


def o365_latency(ws: Workspace, quick: bool) -> dict:
    # Quick: half the full backlog, so that the fixed start (token, subscriptions, listing seven days window by window,
    # about 0.8 s at 50 ms a request) weighs in the speedup about as it does in the full run.
    blobs = 200 if quick else 400
    work = ws.new("o365_latency")
    backlog = Office365Backlog(work, blobs, 50, "--latency-ms", "50")
    try:
        ours = run_office365(ws.new("o365_latency-ours"), backlog, 600)
        baseline = run_office365(ws.new("o365_latency-baseline"), backlog, 1800, max_concurrency=1)
    finally:
        backlog.stop()
    speedup = round(ours.records_per_s / baseline.records_per_s, 2) if baseline.records_per_s else None
    return {
        "workload": f"{blobs * 5} blobs x 50 records over 5 content types, 50 ms added per request",
        "ours": ours.figures(), "baseline": baseline.figures(),
        "baseline_kind": "the same trigger with max_concurrency=1",
        "speedup": speedup,
        "goals": [goal("speedup over one request at a time (x)", speedup, ">=", 20), *cost_goals(ours.figures())],
        "timeline": {"ours": ours.timeline, "baseline": baseline.timeline},
    }


def o365_cpu(ws: Workspace, quick: bool, scale: int = 1) -> dict:
    blobs = (200 if quick else 400) * scale  # quick: enough records that listing and the first token weigh little
    work = ws.new(f"o365_cpu-x{scale}")
    backlog = Office365Backlog(work, blobs, 50)
    try:
        ours = run_office365(ws.new(f"o365_cpu-x{scale}-ours"), backlog, 900)
    finally:
        backlog.stop()
    figures = ours.figures()
    return {
        "workload": f"{blobs * 5} blobs x 50 records over 5 content types, no added latency",
        "ours": figures,
        "goals": [goal("records/s from readiness", figures["records_per_s"], ">=", 40_000),
                  goal("CPU us per record after start-up", figures["cpu_us_per_record"], "<=", 20),
                  *cost_goals(figures)],
        "timeline": {"ours": ours.timeline},
    }


def o365_quota(ws: Workspace, quick: bool) -> dict:
    """Paced from the start (``max_requests_per_minute`` set to the quota, 2,000 at Microsoft), and, apart,
    the adaptive pacer alone (no cap: it learns the quota from the first throttled answers)."""
    quota = 2000
    duration = 40 if quick else 90
    blobs = 1000 if quick else 2000  # more blobs than the quota lets through in the run
    capped = _quota_run(ws, "o365_quota", quota, duration, blobs, max_requests_per_minute=quota)
    adaptive = _quota_run(ws, "o365_quota-adaptive", quota, duration, blobs)
    allowed = capped.pop("allowed")
    adaptive.pop("allowed")
    return {
        "workload": f"{blobs * 5} blobs x 5 records, emulator quota {quota} requests/minute (403 AF429 above it), "
                    f"{duration} s run",
        **capped, "baseline": {"quota_per_minute": quota, "requests_allowed_in_run": allowed},
        "adaptive": {key: value for key, value in adaptive.items() if key != "timeline"},
        "goals": [goal("quota use", capped["quota_use"], ">=", 0.9),
                  goal("throttled share", capped["throttled_share"], "<=", 0.02), *cost_goals(capped["ours"])],
    }


def _quota_run(ws: Workspace, name: str, quota: int, duration: float, blobs: int, **overrides) -> dict:
    work = ws.new(name)
    backlog = Office365Backlog(work, blobs, 5, "--quota-per-minute", str(quota))
    try:
        run = run_office365(ws.new(f"{name}-ours"), backlog, duration, **overrides)  # counters reset at its start
        after = backlog.get("/_emulator/stats")
    finally:
        backlog.stop()
    throttled = after["throttled_total"]
    served = _api_requests(after) - throttled
    allowed = quota * run.busy_seconds / 60  # no request can come before readiness
    return {
        "ours": run.figures(), "allowed": round(allowed),
        "requests_served": served, "requests_throttled": throttled,
        "quota_use": round(served / allowed, 3) if allowed else None,
        "throttled_share": round(throttled / (served + throttled), 4) if served + throttled else None,
        "timeline": {"ours": run.timeline},
    }


def _api_requests(stats: dict) -> int:
    """Management API requests the emulator answered (the token endpoint is outside the quota)."""
    return sum(count for kind, count in stats["requests"].items() if kind != "token")


# -- Event Hubs -----------------------------------------------------------------------------------------------------


class EventHubBacklog:
    """The Event Hubs emulator with events pre-loaded by the real producer client."""

    def __init__(self, work: Path, hub: str = "bench", partitions: int = 4):
        self.hub = hub
        self.server = ServerProcess("emulators.eventhub", "--port", "0", "--hub", hub, "--partitions",
                                    str(partitions), log_path=work / "emulator.log")
        self.info = self.server.info
        self.events = 0
        self.records = 0

    def connections_opened_at(self) -> list[float]:
        """Epoch times of the last connections opened (the start-up bench's first request is the first after a
        start)."""
        control = requests.get(self.info["control_url"] + "/_emulator/control", timeout=30).json()
        return control["stats"]["connections_opened_at"]

    def load(self, bodies, records_per_body: int = 1) -> None:
        from azure.eventhub import EventData, EventHubProducerClient

        producer = EventHubProducerClient.from_connection_string(self.info["connection_string"])
        with producer:
            batch = producer.create_batch()
            for body in bodies:
                try:
                    batch.add(EventData(body))
                except ValueError:  # batch full
                    producer.send_batch(batch)
                    batch = producer.create_batch()
                    batch.add(EventData(body))
                self.events += 1
                self.records += records_per_body
            if len(batch):
                producer.send_batch(batch)

    def stop(self) -> None:
        self.server.stop()


def one_kb_events(count: int):
    pad = "x" * 900
    for i in range(count):
        yield orjson.dumps({"id": i, "category": "Bench", "time": "2026-11-25T10:00:00Z", "pad": pad})


def envelopes(count: int, per_envelope: int = 20):
    records = [orjson.loads(line) for line in fixtures.eventhub_lines()]
    for i in range(count):
        chosen = [records[(i * per_envelope + k) % len(records)] for k in range(per_envelope)]
        yield orjson.dumps({"records": chosen})


def run_eventhub(work: Path, backlog: EventHubBacklog, group: str, timeout: float, azurite: Azurite | None,
                 **overrides) -> Run:
    runtime = Runtime(work / "runtime", "--count-only")
    try:
        configuration = {"hub_connection_string": backlog.info["connection_string"], "hub_name": backlog.hub,
                         "hub_consumer_group": group, "starting_position": "earliest", **overrides}
        if azurite is not None:
            container = f"ckpt-{group}".lower()
            azurite.create_container(container)
            configuration.update(storage_connection_string=azurite.connection_string,
                                 storage_container_name=container)
        env = runtime.env(configuration)
        return run_trigger("consume_eventhub_messages", env, runtime.counter(), backlog.records,
                           timeout, work / "trigger.log", first_request=backlog.connections_opened_at)
    finally:
        runtime.stop()


def run_bare_client(work: Path, backlog: EventHubBacklog, group: str, timeout: float,
                    records_per_event: int = 1) -> Run:
    """The bare azure-eventhub aio consumer reading the same events and doing nothing: the client's ceiling, timed
    from its readiness as the trigger is (``records`` counts ``records_per_event`` for each event it read)."""
    run = Run()
    with python_child("-m", "benchmarks.bare_consumer", backlog.info["connection_string"], backlog.hub, group,
                      str(backlog.events), str(timeout), name="bare_consumer", stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE) as proc:
        stdout, stderr = proc.communicate(timeout=timeout + 60)
    (work / "bare.log").write_bytes(stderr)
    figures = orjson.loads(stdout.splitlines()[-1])
    run.records, run.seconds = figures["events"] * records_per_event, figures["seconds"]
    run.cpu_seconds, run.peak_rss_mb = figures["cpu_seconds"], figures["peak_rss_mb"]
    run.startup_cpu_s = figures["startup_cpu_seconds"]
    run.first_delivery_s = None if figures["first_batch_s"] is None else round(figures["first_batch_s"], 3)
    run.first_delivered = figures["first_batch_events"] * records_per_event
    run.complete = figures["events"] >= backlog.events
    run.exit_code = proc.returncode
    return run


def eventhub_1kb(ws: Workspace, quick: bool, scale: int = 1, baselines: bool = True) -> dict:
    count = (20_000 if quick else 100_000) * scale
    work = ws.new(f"eventhub_1kb-x{scale}")
    backlog = EventHubBacklog(work)
    azurite = Azurite(location=work / "azurite").start()
    try:
        backlog.load(one_kb_events(count))
        result: dict = {"workload": f"{count} x 1 KB JSON events in 4 partitions, Azurite checkpoints on"}
        if baselines:
            bare = run_bare_client(ws.new("eventhub_1kb-bare"), backlog, "bare", 900)
            local = run_eventhub(ws.new("eventhub_1kb-local"), backlog, "local", 900, None)
            result.update(baseline=bare.figures(), client_ceiling_per_s=round(bare.records_per_s, 1),
                          without_azurite=local.figures(),
                          baseline_kind="bare aio EventHubConsumerClient.receive_batch doing nothing; and the "
                                        "trigger with checkpoints in the local state store instead of Azurite")
        ours = run_eventhub(ws.new(f"eventhub_1kb-x{scale}-ours"), backlog, "sekoia", 900, azurite)
        result.update(ours=ours.figures(), timeline={"ours": ours.timeline})
        if baselines:
            result.update(_ratios(ours, bare))
            result["goals"] = [goal("ratio to the bare client", result["ratio"], ">=", 0.9),
                               *cost_goals(result["ours"])]
        return result
    finally:
        azurite.stop()
        backlog.stop()


def eventhub_envelopes(ws: Workspace, quick: bool) -> dict:
    # Quick: half the full backlog; at a fifth, the ~2.5 s from readiness to the first batch outweighed the records.
    count = 2_500 if quick else 5_000
    work = ws.new("eventhub_envelopes")
    backlog = EventHubBacklog(work)
    azurite = Azurite(location=work / "azurite").start()
    try:
        backlog.load(envelopes(count), records_per_body=20)
        # The ratio's baseline: the bare client reading these same envelopes in this run (20 records each).
        bare = run_bare_client(ws.new("eventhub_envelopes-bare"), backlog, "bare", 900, records_per_event=20)
        ours = run_eventhub(ws.new("eventhub_envelopes-ours"), backlog, "sekoia", 900, azurite)
    finally:
        azurite.stop()
        backlog.stop()
    ceiling, figures, ratios = bare.figures(), ours.figures(), _ratios(ours, bare)
    return {"workload": f"{count} diagnostic-settings envelopes x 20 records (fixture shapes), Azurite checkpoints",
            "ours": figures, "baseline": ceiling, **ratios,
            "baseline_kind": "the bare aio client receiving the same envelopes, doing nothing (20 records each)",
            "client_ceiling_records_per_s": ceiling["records_per_s"],
            "goals": [goal("records/s from readiness", figures["records_per_s"], ">=", 50_000),
                      goal("ratio to the bare client", ratios["ratio"], ">=", 0.75),
                      *cost_goals(figures)],
            "timeline": {"ours": ours.timeline}}


def _ratios(ours: Run, bare: Run) -> dict:
    """The goal's ratio (rates from readiness) and, apart, the ratio once both were streaming (start excluded)."""
    def ratio(a: float, b: float) -> float | None:
        return round(a / b, 3) if b else None

    return {"ratio": ratio(ours.records_per_s, bare.records_per_s),
            "steady_ratio": ratio(ours.steady_records_per_s, bare.steady_records_per_s)}


def growth(ws: Workspace, quick: bool, o365_1x: dict, eventhub_1x: dict) -> dict:
    o365_5x = o365_cpu(ws, quick, scale=5)
    eventhub_5x = eventhub_1kb(ws, quick, scale=5, baselines=False)
    result = {}
    for name, small, large in (("o365_cpu", o365_1x, o365_5x), ("eventhub_1kb", eventhub_1x, eventhub_5x)):
        result[name] = {
            "baseline": small["ours"], "ours": large["ours"],
            "time_growth": round(large["ours"]["busy_seconds"] / small["ours"]["busy_seconds"], 2),  # start-up apart
            "rss_growth": round(large["ours"]["peak_rss_mb"] / small["ours"]["peak_rss_mb"], 2),
        }
    goals = [goal(f"{name} {what} growth at 5x", result[name][key], "<=", limit)
             for name in result for what, key, limit in (("time", "time_growth", 5.5), ("RSS", "rss_growth", 1.3))]
    return {"workload": "o365_cpu and eventhub_1kb at 1x and 5x", **result, "goals": goals}


from benchmarks.freshness import o365_freshness  # noqa: E402,F401 - a scenario of its own module
from benchmarks.state_scale import o365_state_scale  # noqa: E402,F401 - a scenario of its own module
from benchmarks.soak import eventhub_soak, o365_soak  # noqa: E402,F401 - scenarios of their own module

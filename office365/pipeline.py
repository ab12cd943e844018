"""The collection loop: one lister per content type, a pool of fetchers, one processing task, one event loop.

    listers --ContentRef--> queue --> fetchers (paced, adaptive concurrency) --body--> processor --> forwarder

The listers (``office365.lister``) walk time windows up to now, track the blobs not seen yet, and wait while too
many of their blobs are pending. Fetched bodies (``office365.fetcher``) wait for the processor
(``office365.processor``) in bounded room (a number of blobs and of bytes, ``FetchRoom``), so memory stays bounded
whatever the backlog and the blobs' size. A monitor
keeps the metrics, the progress watch (stalls, time until loss, ``office365.watch``) and the checkpoint up to date.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from connectors.delivery import Forwarder
from connectors.logs import LogFunction, Redactor, SampledLog
from connectors.progress import StallWatch
from connectors.retry import Backoff, RetryOn, retrying
from connectors.stopping import pause_or_stop, sleep_or_stop, unless_stopping
from office365 import metrics
from office365.auth import TokenProvider
from office365.client import ApiError, ManagementClient, Throttled, TransientError
from office365.config import CLOUDS, Credential, Endpoints, Office365Configuration
from office365.fetch_room import FetchRoom
from office365.fetcher import Deferred, Fetched, Stopping, fetch_blob
from office365.lister import Lister
from office365.listing import ContentRef
from office365.pacing import ConcurrencyLimit, Gate, QuotaPacer
from office365.processor import Processor
from office365.state import CollectorState
from office365.subscriptions import Subscriptions, fatal
from office365.watch import ContentTypeProgress, Recovery, StalledRun

MONITOR_INTERVAL = 2.0
PROCESSING_STOP_SECONDS = 10.0  # at stop, for the blob at hand and its acknowledgement
# Fetched bodies not yet cut into records, and those on their way: 2 to 4 blobs of 1,000 records (1.3 to 3 MB),
# or the 64 blobs the count allows when they are small: a few hundred ms a fetch then still bring thousands of
# records a second. With the record filter, the records in hand and the delivery's batches, what keeps a trigger
# reading big blobs under 150 MB.
FETCHED_BYTES = 6 * 1024 * 1024
STARTUP_BACKOFF = functools.partial(Backoff, base=1.0, cap=30.0)


class Pipeline:
    def __init__(
        self,
        config: Office365Configuration,
        endpoints: Endpoints,
        credential: Credential,
        state: CollectorState,
        forwarder: Forwarder,
        log: LogFunction,
        heartbeat: Callable[[], None] = lambda: None,
        report_lag: Callable[[float], None] = lambda lag: None,
        user_agent: str = "sekoiaio-connector/office365",
        redactor: Redactor | None = None,
        stopping: asyncio.Event | None = None,
        watch: StallWatch | None = None,
    ):
        self.config = config
        self.endpoints = endpoints
        self.credential = credential
        self.state = state
        self.forwarder = forwarder
        self._log = log
        self._sampled = SampledLog(log)
        self._heartbeat = heartbeat
        self._report_lag = report_lag
        self._user_agent = user_agent
        self._redactor = redactor  # access tokens obtained at run time join it
        self.stopping = stopping or asyncio.Event()
        self.watch = watch
        self.progress: ContentTypeProgress | None = None
        if watch is not None:
            self.progress = ContentTypeProgress(watch, state, config.content_types, config.poll_interval_seconds)
        self._stalled = asyncio.Event()  # the stall watch's last step: end the run
        self._stalled_type = ""
        self.lister = Lister(config, state, log, self.stopping, self.progress)

    # -- top level ------------------------------------------------------------------------------------------

    async def run(self) -> None:
        config = self.config
        tokens = TokenProvider(
            self.endpoints,
            config.client_id,
            self.credential,
            self._log,
            timeout=config.request_timeout_seconds,
            redactor=self._redactor,
        )
        self.limit = ConcurrencyLimit(config.max_concurrency, initial=min(config.max_concurrency, 8))
        gate = Gate(self.limit, QuotaPacer(config.max_requests_per_minute))
        self.gate = gate
        metrics.concurrency.set(self.limit.current)
        client = ManagementClient(
            self.endpoints.feed,
            self.endpoints.publisher_identifier,
            tokens,
            gate,
            timeout=config.request_timeout_seconds,
            pool_size=config.max_concurrency + 4,
            user_agent=self._user_agent,
            rewrite_origin=config.management_url is not None,
            api_hosts=(CLOUDS[config.cloud][1],),
            on_throttling=functools.partial(SampledLog(self._log, interval=600.0), "throttled"),
            on_foreign_url=lambda message: self._log(message, "error"),
        )
        room = FetchRoom(config.max_concurrency * 2, FETCHED_BYTES)
        queue: asyncio.Queue = asyncio.Queue()

        def processed(item: Fetched) -> None:
            room.release(len(item.body or b""))

        processor = Processor(self.forwarder, self.state, self._log, processed, self._later)
        processing: asyncio.Task | None = None
        self._queue = queue
        if self.watch is not None:
            self.watch.recover = Recovery(client, tokens, self._restart)
        starting = asyncio.create_task(self._watch_while_starting())
        try:
            async with client:
                # Wrong credentials stop here, with one clear message.
                await unless_stopping(tokens.token(), self.stopping)
                subscriptions = Subscriptions(client, self._log)
                denied = await unless_stopping(
                    self._retrying(lambda: subscriptions.ensure(config.content_types), "starting subscriptions"),
                    self.stopping,
                )
                starting.cancel()  # the monitor takes over
                collected = [ct for ct in config.content_types if ct not in denied]
                if not collected:  # nothing the app may read: only a person can fix it
                    raise fatal(ApiError(401, "AF10001", "permission"), denied[0])
                self.lister.rewind_future_resume_points(client.now())
                self._log(
                    f"Collecting {', '.join(collected)} from {self.endpoints.feed} "
                    f"(up to {config.max_concurrency} requests in flight)",
                    "info",
                )
                processing = asyncio.create_task(processor.run())
                tasks = [
                    asyncio.create_task(self.lister.collect(ct, client, subscriptions, queue, ct in denied))
                    for ct in config.content_types
                ]
                tasks += [
                    asyncio.create_task(self._fetcher(client, queue, room, processor))
                    for _ in range(config.max_concurrency)
                ]
                tasks.append(asyncio.create_task(self._monitor(client)))
                tasks.append(asyncio.create_task(self._until_stalled()))
                await self._until_stop_or_failure(tasks, processing)
        except Stopping:
            pass
        finally:
            starting.cancel()
            self.stopping.set()
            if self.watch is not None:
                self.watch.recover = lambda name, index: None  # this run's client is closed
            if processing is not None:
                await self._stop_processing(processor, processing)

    async def _watch_while_starting(self) -> None:
        """A stall that a restarted run did not end (its start-up keeps failing) still reaches the watch's last step;
        no heartbeat meanwhile: liveness says whether the run gets past its start-up."""
        if self.watch is None:
            return
        while True:
            await asyncio.sleep(MONITOR_INTERVAL)
            self.watch.check()

    def _later(self, ref: ContentRef, delay: float) -> None:
        """Fetch ``ref`` again in ``delay`` seconds; meanwhile its content type is not stalled on it."""
        waiting = self.progress.waiting if self.progress is not None else None

        def again() -> None:
            if waiting is not None:
                waiting[ref.content_type] -= 1
            self._queue.put_nowait(ref)

        if waiting is not None:
            waiting[ref.content_type] += 1
        asyncio.get_running_loop().call_later(delay, again)

    def _restart(self, content_type: str) -> None:
        self._stalled_type = content_type
        self._stalled.set()

    async def _until_stalled(self) -> None:
        await self._stalled.wait()
        raise StalledRun(f"{self._stalled_type} made no progress after new connections and a new token")

    async def _stop_processing(self, processor: Processor, processing: asyncio.Task) -> None:
        """The blob at hand is finished and its acknowledgement queued; a forwarder that cannot take
        them (the runtime does not answer) is not waited for past a bound: those blobs are fetched again."""
        processor.stop()
        done, _ = await asyncio.wait([processing], timeout=PROCESSING_STOP_SECONDS)
        if not done:
            processing.cancel()
            self._log("Processing did not stop in time (the runtime is slow to accept events)", "warning")
        await asyncio.gather(processing, return_exceptions=True)

    async def _until_stop_or_failure(self, tasks: list[asyncio.Task], processing: asyncio.Task) -> None:
        """Until a stop or a task's failure; ``processing`` is watched too but left running (stopped in order)."""
        stop = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait([*tasks, processing, stop], return_when=asyncio.FIRST_COMPLETED)
            if processing.done() and not processing.cancelled() and processing.exception() is not None:
                raise processing.exception()  # a bug: the fetchers would wait for room forever
        finally:
            stop.cancel()
            for task in tasks:
                task.cancel()
            results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, (asyncio.CancelledError, Stopping)):
                raise result

    async def _retrying(self, call, what: str):
        """Retry a start-up call through transient trouble until it works (its result) or the trigger stops."""

        def failed(error: BaseException, failures: int) -> None:
            if failures == 3:
                self._log(f"{what.capitalize()} keeps failing, still retrying: {error}", "warning")

        try:
            return await retrying(call, RetryOn((Throttled, TransientError)), backoff=STARTUP_BACKOFF,
                                  pause=pause_or_stop(self.stopping), on_failure=failed)
        except ApiError as error:
            raise fatal(error) or error from None

    # -- fetching -------------------------------------------------------------------------------------------

    async def _fetcher(
        self, client: ManagementClient, queue: asyncio.Queue, room: FetchRoom, processor: Processor
    ) -> None:
        while True:
            ref = await queue.get()
            reserved = await room.acquire(ref.content_type)
            try:
                fetched = await fetch_blob(client, ref, self.stopping)
            except Deferred as deferred:
                room.release(reserved)
                self._sampled(
                    f"defer:{ref.content_type}",
                    f"Blob {ref.content_id} of {ref.content_type} could not be fetched ({deferred.reason}); "
                    f"trying again in {deferred.delay:.0f}s",
                )
                self._later(ref, deferred.delay)
                continue
            except BaseException:
                room.release(reserved)
                raise
            room.fetched(reserved, len(fetched.body or b""), ref.content_type)
            processor.put(fetched)
            del fetched  # waiting for the next blob, a fetcher must not keep this one's body

    # -- monitoring -----------------------------------------------------------------------------------------

    async def _monitor(self, client: ManagementClient) -> None:
        while not self.stopping.is_set():
            if self.progress is not None:
                delivery_down = self.forwarder.outage_seconds is not None
                self.progress.tick(client.now(), self.gate.pacer.throttled, delivery_down, client.received["blob"])
            self._heartbeat()  # checks the stall watch
            now = client.now().timestamp()  # resume points and blob creation times are on the API's clock
            worst_lag = 0.0
            for content_type in self.config.content_types:
                count, oldest = self.state.pending(content_type)
                lag = max(0.0, now - self.state.resume_point(content_type).timestamp())
                worst_lag = max(worst_lag, lag)
                metrics.lag_seconds.labels(content_type).set(lag)
                metrics.pending_blobs.labels(content_type).set(count)
                metrics.oldest_pending_seconds.labels(content_type).set(now - oldest if oldest else 0)
            self._report_lag(worst_lag)
            metrics.concurrency.set(self.limit.current)
            await self.state.persist()
            await sleep_or_stop(MONITOR_INTERVAL, self.stopping)

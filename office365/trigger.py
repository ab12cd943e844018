"""The "Office 365 Management API" trigger: every audit record of a tenant, forwarded once, resumed exactly."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from connectors.logs import format_duration
from connectors.metrics import gauge_values
from connectors.trigger import CollectorTrigger
from office365 import metrics
from office365.config import Office365Configuration, resolve_credential, resolve_endpoints
from office365.pipeline import Pipeline
from office365.state import CollectorState
from office365.watch import READING, STEPS


class Office365Trigger(CollectorTrigger):
    configuration_model = Office365Configuration
    idle_flush_seconds = 0.05  # blobs come from concurrent fetches: 50 ms without one, and the fetchers are idle
    _throttled_before = 0.0

    def status(self) -> list[str]:
        """Lag and pending blobs per content type, and throttling, from the gauges the pipeline's monitor keeps."""
        lag, pending = gauge_values(metrics.lag_seconds), gauge_values(metrics.pending_blobs)
        config: Office365Configuration = self.configuration  # type: ignore[assignment]
        parts = [
            f"{content_type}: lag {format_duration(lag[content_type])}, {int(pending.get(content_type, 0))} blobs "
            "pending" for content_type in config.content_types if content_type in lag
        ] or ["no content type listed yet"]
        throttled = sum(gauge_values(metrics.throttled).values())
        recent, self._throttled_before = throttled - self._throttled_before, throttled
        pace = sum(gauge_values(metrics.quota_pace).values())
        if recent:
            parts.append(f"throttled {int(recent)} times" + (f", pacing at {pace:.0f} requests/min" if pace else ""))
        else:
            parts.append("not throttled")
        return parts

    def collect(self) -> None:
        config: Office365Configuration = self.configuration  # type: ignore[assignment]
        credential = resolve_credential(config)
        if credential.private_key_pem:
            self._redactor.add([credential.private_key_pem])  # re-encoded from an encrypted key: new text
        endpoints = resolve_endpoints(config)
        watch = self.watch_progress(READING, STEPS)
        watch.loss_warnings = tuple(sorted({config.expiry_warning_hours * 3600.0, 3600.0}, reverse=True))
        # Read from disk at every run: the record filter must only hold records whose delivery was confirmed.
        state = CollectorState(
            self.state_dir,
            config.content_types,
            initial_lookback=timedelta(hours=config.initial_lookback_hours),
            filter_capacity=config.record_filter_size,
        )

        async def collect_on_loop(stopping: asyncio.Event) -> None:
            pipeline = Pipeline(
                config,
                endpoints,
                credential,
                state,
                self.forwarder,  # made on this run's loop
                self.log,
                heartbeat=self.heartbeat,
                report_lag=lambda lag: self.put_events_lag(intake_key=self.metric_intake, lag=lag),
                user_agent=self._user_agent,
                redactor=self._redactor,
                stopping=stopping,
                watch=watch,
            )
            # run_async then delivers what was handed over (finish_delivery): its acknowledgements move the resume
            # point before the state closes below.
            await pipeline.run()

        try:
            self.run_async(collect_on_loop)
        finally:
            state.close()  # the loop ended: no write of the state is running

"""The "Office 365 Management API" trigger: every audit record of a tenant, forwarded once, resumed exactly."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from connectors.trigger import CollectorTrigger
from office365.config import Office365Configuration, resolve_credential, resolve_endpoints
from office365.pipeline import Pipeline
from office365.state import CollectorState


class Office365Trigger(CollectorTrigger):
    configuration_model = Office365Configuration

    def collect(self) -> None:
        config: Office365Configuration = self.configuration  # type: ignore[assignment]
        credential = resolve_credential(config)
        if credential.private_key_pem:
            self._redactor.add([credential.private_key_pem])  # re-encoded from an encrypted key: new text
        endpoints = resolve_endpoints(config)
        # Read from disk at every run: the record filter must only hold records whose delivery was confirmed.
        state = CollectorState(
            self.state_dir,
            config.content_types,
            initial_lookback=timedelta(hours=config.initial_lookback_hours),
            filter_capacity=config.record_filter_size,
        )
        pipeline = Pipeline(
            config,
            endpoints,
            credential,
            state,
            self.forwarder,
            self.log,
            lambda: self.running,
            heartbeat=self.heartbeat,
            report_lag=lambda lag: self.put_events_lag(intake_key=self.metric_intake, lag=lag),
            user_agent=self._user_agent,
        )
        try:
            asyncio.run(pipeline.run())
        finally:
            if not self.running:
                # Deliver what was handed over, then save the resume point its acknowledgements moved.
                self.forwarder.close(grace=self.stop_grace_seconds)
            else:
                # Failed run: let what was handed over be confirmed, so the next run reads a complete ledger.
                self.forwarder.drain(timeout=self.stop_grace_seconds)
            state.close()

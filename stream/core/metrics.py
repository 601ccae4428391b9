"""The one small interface the pipeline reports through (after faust's Sensor).

:class:`Metrics` does nothing; ``stream.ops.prometheus.PrometheusMetrics`` exports to Prometheus.
"""
from __future__ import annotations

from typing import Callable, Mapping


class Metrics:
    def on_event_in(self, event_type: str) -> None: ...

    def on_dead_letter(self, reason: str) -> None: ...

    def on_recommendation_out(self, n: int = 1) -> None: ...

    def on_batch(self, events: int, users: int) -> None: ...

    def observe_encoder(self, seconds: float) -> None: ...

    def observe_index(self, seconds: float) -> None: ...

    def on_one_event_results(self, kept: int, computed: int) -> None:
        """A batch's sessions: ``kept`` took the result of an earlier one-event session like them,
        ``computed`` were encoded and searched."""

    def observe_end_to_end(self, seconds: float) -> None: ...

    def on_served(self, variant: str, model: str, n: int = 1) -> None:
        """Recommendations published by ``variant`` with session model ``model`` (feedback trials)."""

    def on_hit(self, variant: str, model: str, event_type: str) -> None:
        """A served product was clicked, carted or bought within the horizon (one per recommendation)."""

    def set_index(self, version: str, size: int) -> None: ...

    def set_model(self, version: str) -> None: ...

    def on_catalog_restart(self) -> None:
        """Catalogue sync failed and is being restarted (with backoff)."""

    def set_catalog_healthy(self, healthy: bool) -> None:
        """Catalogue sync is running (True) or down, waiting to be restarted (False)."""

    def set_catalog_synced(self, synced: bool) -> None:
        """Catalogue sync has read the catalog topic to the end it had at start."""

    def set_store_failing(self, store: str, partition: int, failing: bool) -> None:
        """The worker's ``store`` (the sessions table) refuses reads or writes on ``partition``."""

    def watch_send_wait(self, source: Callable[[], float]) -> None:
        """Register where the seconds the worker's sends have waited for Kafka are read from."""

    def on_control_record_skipped(self, kind: str, reason: str) -> None:
        """A control record (``kind``: catalog, forget, models) that is not valid was logged and skipped."""

    def on_artifact_fetched(self, size: int) -> None:
        """Bytes of a registry artifact downloaded into this host's cache."""

    def on_artifact_refused(self, reason: str) -> None:
        """A registry artifact could not be fetched or failed its sha256 check, and was not loaded."""

    def watch_lag(self, source: Callable[[], Mapping[tuple[str, int], int]]) -> None:
        """Register where consumer lag per (topic, partition) is read from when scraped."""

    def watch_restore(self, source: Callable[[], Mapping[str, Mapping[str, int]]]) -> None:
        """Register where sessions restore progress ({partition: {"done", "total"}}) is read from."""

    def exposition(self) -> tuple[bytes, str] | None:
        """The metrics as (body, content type) for ``/metrics``; None when nothing is exported."""
        return None

"""Prometheus metrics, served at /.well-known/wagi/metrics: requests (answered and in
flight), latency, guest time, pools, the compiled cache, and requests stopped by limits.

With several workers, prometheus-client's multiprocess mode is used: each worker writes
its values to files in a folder the supervisor makes (`PROMETHEUS_MULTIPROC_DIR`), and
the metrics path on any worker adds them all up. The supervisor sets that up before
starting workers, since prometheus-client reads it when imported.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

if TYPE_CHECKING:
    from .loader import LoadedApp

MULTIPROCESS_FOLDER = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
# Seconds: from a fraction of a millisecond (a small guest) to the longest timeouts.
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    """The gateway's metric families, and a way to render them."""

    def __init__(self) -> None:
        # A registry of its own: several gateways may live in one process (tests).
        self.registry = CollectorRegistry()
        registry = self.registry
        self.requests = Counter(
            "wagi_requests",
            "Requests answered, by component, route and status",
            ["component", "route", "status"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "wagi_requests_in_flight",
            "Requests for the app being handled now: waiting for admission, running, answering",
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.request_seconds = Histogram(
            "wagi_request_duration_seconds",
            "Time from a request's arrival to its answer",
            ["component", "route"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.guest_seconds = Histogram(
            "wagi_guest_duration_seconds",
            "Time guests ran, from their start to their end",
            ["component"],
            buckets=_BUCKETS,
            registry=registry,
        )
        self.pool_ready = Gauge(
            "wagi_pool_ready_instances",
            "Instances ready in a component's pool",
            ["component"],
            multiprocess_mode="livesum",
            registry=registry,
        )
        self.pool_takes = Counter(
            "wagi_pool_takes",
            "Instances requests took from pools: hit (one was ready) or miss (made on the spot)",
            ["component", "result"],
            registry=registry,
        )
        self.module_loads = Counter(
            "wagi_module_loads",
            "Modules loaded: compiled, read from the compiled cache (cached), or reused on reload",
            ["how"],
            registry=registry,
        )
        self.limit_violations = Counter(
            "wagi_limit_violations",
            "Requests stopped by a limit, by kind",
            ["component", "kind"],
            registry=registry,
        )
        self.version = Gauge(
            "wagi_app_version",
            "The version of the app being served",
            multiprocess_mode="max",
            registry=registry,
        )
        # `labels()` takes a lock and builds a key each time (~1.5 us); requests reuse a
        # handful of label sets, so their children are kept here.
        self._children: dict[tuple[object, tuple[str, ...]], Any] = {}

    def _child(self, family: Counter | Histogram, *labels: str) -> Any:
        key = (family, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = family.labels(*labels)
        return child

    def request(self, component: str, route: str, status: int, seconds: float) -> None:
        """Count an answered request and its latency."""
        self._child(self.requests, component, route, str(status)).inc()
        self._child(self.request_seconds, component, route).observe(seconds)

    def guest(self, component: str, seconds: float) -> None:
        """Record how long a guest ran."""
        self._child(self.guest_seconds, component).observe(seconds)

    def limit(self, component: str, kind: str) -> None:
        """Count a request stopped by a limit (timeout, memory, output, body, ...)."""
        self._child(self.limit_violations, component, kind).inc()

    def loaded(self, app: LoadedApp) -> None:
        """Record a newly loaded version: its number and how its modules were obtained."""
        self.version.set(app.version)
        for component in app.components.values():
            self.module_loads.labels(component.module.how).inc()

    def sync_pools(self, app: LoadedApp | None) -> None:
        """Bring the pool metrics up to date with the pools of the running version."""
        if app is None:
            return
        for component in app.components.values():
            pool = component.pool
            self.pool_ready.labels(component.id).set(len(pool))
            hits, misses = pool.take_counts()
            self.pool_takes.labels(component.id, "hit").inc(hits)
            self.pool_takes.labels(component.id, "miss").inc(misses)

    def retired(self, old: LoadedApp, new: LoadedApp) -> None:
        """Count the last takes of a replaced version; drop the gauges of its removed components."""
        self.sync_pools(old)
        for component_id in old.components.keys() - new.components.keys():
            self.pool_ready.labels(component_id).set(0)  # what other workers' sums still see
            if not os.environ.get(MULTIPROCESS_FOLDER):  # there, its file keeps the 0
                self.pool_ready.remove(component_id)

    def render(self) -> bytes:
        """The metrics in Prometheus' text format (every worker's, with several)."""
        if os.environ.get(MULTIPROCESS_FOLDER):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

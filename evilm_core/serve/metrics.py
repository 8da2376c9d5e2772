"""Prometheus metrics of `evilm serve` (docs/serving.md, "Metrics"): requests by route template,
method and status; latency; query batch sizes and their forward-pass time; errors. One registry
per app, so two apps in one process (tests) do not collide."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("evilm_requests", "HTTP requests served", ["route", "method", "status"],
                                registry=self.registry)
        self.errors = Counter("evilm_errors", "HTTP requests answered with a 5xx status", ["route"],
                              registry=self.registry)
        self.latency = Histogram("evilm_request_seconds", "Time to answer a request", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_size = Histogram("evilm_batch_queries", "Text queries embedded in one forward pass",
                                    buckets=BATCH_BUCKETS, registry=self.registry)
        self.batch_seconds = Histogram("evilm_batch_seconds", "Time to embed and rank one batch",
                                       buckets=LATENCY_BUCKETS, registry=self.registry)
        self._series: dict[tuple, tuple] = {}  # (route, method, status) -> its two series: labels() per request is slow

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        series = self._series.get((route, method, status))
        if series is None:  # routes x methods x statuses: few
            series = self._series[route, method, status] = (self.requests.labels(route, method, str(status)),
                                                             self.latency.labels(route))
        count, latency = series
        count.inc()
        latency.observe(seconds)
        if status >= 500:
            self.errors.labels(route).inc()

    def batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)

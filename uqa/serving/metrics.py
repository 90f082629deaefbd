"""Prometheus metrics of one server (`GET /metrics`, prometheus_client's text format).

- `uqa_requests_total{route,status}`: every request, refused ones included (route: the path of a known
  route, else "other", so a stranger's paths cannot grow the label set);
- `uqa_request_duration_seconds{route}`: a histogram of the time to answer;
- `uqa_model_info{name,version,stage,backend}`: the version being served (1);
- `uqa_queue_windows`, `uqa_queue_requests`: work waiting now; `uqa_request_windows`: windows per
  answered request; `uqa_forward_windows`: windows per forward pass (the batch size);
- `uqa_model_swaps_total`, `uqa_follow_errors_total`: moving to new versions, and failing to.

Each server has a registry of its own (not prometheus_client's global one): two apps in one process
(the tests) count apart."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WINDOW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _State:
    """Read at each scrape: the holder's version, swaps and follow errors, the scheduler's queue."""

    def __init__(self, holder, scheduler):
        self.holder, self.scheduler = holder, scheduler

    def collect(self):
        served = self.holder.current
        info = InfoMetricFamily("uqa_model", "the version being served")
        if served is not None:
            r = served.resolved
            info.add_metric([], {"name": r.name or "", "version": r.version, "stage": r.stage or "",
                                 "backend": served.backend})
        yield info
        yield CounterMetricFamily("uqa_model_swaps", "moves to a new version of the followed stage",
                                  value=len(self.holder.swaps))
        yield CounterMetricFamily("uqa_follow_errors", "checks of the followed stage that failed or refused a version",
                                  value=self.holder.follow_errors)
        yield GaugeMetricFamily("uqa_queue_windows", "windows waiting to be computed",
                                value=self.scheduler.waiting_windows)
        yield GaugeMetricFamily("uqa_queue_requests", "requests with windows waiting",
                                value=self.scheduler.waiting_requests)


class ServerMetrics:
    def __init__(self, holder, scheduler):
        self.registry = CollectorRegistry()
        self.requests = Counter("uqa_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=self.registry)
        self.duration = Histogram("uqa_request_duration_seconds", "time to answer a request", ["route"],
                                  buckets=SECONDS_BUCKETS, registry=self.registry)
        self.request_windows = Histogram("uqa_request_windows", "windows of the model per answered request",
                                         buckets=WINDOW_BUCKETS, registry=self.registry)
        self.forward_windows = Histogram("uqa_forward_windows", "windows per forward pass (the batch size)",
                                         buckets=WINDOW_BUCKETS, registry=self.registry)
        self.registry.register(_State(holder, scheduler))

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.duration.labels(route=route).observe(seconds)

    def text(self, accept: str = "") -> tuple[bytes, str]:
        """The metrics in the format the scraper asks for: OpenMetrics (where `uqa_model` is an info
        family) when its Accept header names it, as Prometheus's does, else the classic text format."""
        if "application/openmetrics-text" in accept:
            from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST
            from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

            return openmetrics(self.registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE

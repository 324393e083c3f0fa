"""Prometheus metrics in the text exposition format (version 0.0.4), without ``prometheus_client``.

``prometheus_client`` is not a dependency, and the server needs only counters and histograms:

* ``textclf_requests_total{route,method,status}`` (counter)
* ``textclf_request_duration_seconds{route}`` (histogram: latency of every request)
* ``textclf_request_texts`` (histogram: texts per ``POST /predict``)
* ``textclf_batch_size`` (histogram: texts per model call; above the request sizes when the
  micro-batcher merges concurrent requests)
* ``textclf_model_ready``, ``textclf_queue_depth`` (gauges) and ``textclf_model_info{kind,backend}``

With ``--workers N`` each worker process keeps its own numbers (a scrape sees one worker).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in pairs)
    return "{" + inner + "}" if inner else ""


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class Histogram:
    """Cumulative buckets, sum and count of observed values (one label set)."""

    def __init__(self, buckets: Iterable[float]):
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Add one observation."""
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self.counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def lines(self, name: str, labels: tuple[tuple[str, str], ...] = ()) -> list[str]:
        """Exposition lines: ``_bucket`` (cumulative, ``le`` labels), ``_sum``, ``_count``."""
        out, running = [], 0
        for bound, n in zip(self.bounds, self.counts, strict=True):
            running += n
            out.append(f"{name}_bucket{_labels((*labels, ('le', _number(float(bound)))))} {running}")
        out.append(f"{name}_bucket{_labels((*labels, ('le', '+Inf')))} {self.count}")
        out.append(f"{name}_sum{_labels(labels)} {_number(self.sum)}")
        out.append(f"{name}_count{_labels(labels)} {self.count}")
        return out


class Metrics:
    """The server's counters and histograms; thread-safe; :meth:`render` gives the exposition text."""

    def __init__(self):
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.request_texts = Histogram(SIZE_BUCKETS)
        self.batch_sizes = Histogram(SIZE_BUCKETS)
        self.started = time.time()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency."""
        with self._lock:
            key = (route, method, str(status))
            self.requests[key] = self.requests.get(key, 0) + 1
            hist = self.latency.get(route)
            if hist is None:
                hist = self.latency[route] = Histogram(LATENCY_BUCKETS)
            hist.observe(seconds)

    def observe_texts(self, n: int) -> None:
        """Texts in one accepted ``POST /predict``."""
        with self._lock:
            self.request_texts.observe(n)

    def observe_batch(self, n: int) -> None:
        """Texts in one model call."""
        with self._lock:
            self.batch_sizes.observe(n)

    def render(self, gauges: dict[str, float] | None = None, info: dict[str, str] | None = None) -> str:
        """The whole exposition text (``gauges``: name -> value; ``info``: labels of ``textclf_model_info``)."""
        lines = ["# HELP textclf_requests_total HTTP requests by route, method and status.",
                 "# TYPE textclf_requests_total counter"]
        with self._lock:
            for (route, method, status), n in sorted(self.requests.items()):
                lines.append(f"textclf_requests_total{_labels((('route', route), ('method', method), ('status', status)))} {n}")
            lines += ["# HELP textclf_request_duration_seconds Request latency in seconds.",
                      "# TYPE textclf_request_duration_seconds histogram"]
            for route, hist in sorted(self.latency.items()):
                lines += hist.lines("textclf_request_duration_seconds", (("route", route),))
            lines += ["# HELP textclf_request_texts Texts per POST /predict request.", "# TYPE textclf_request_texts histogram"]
            lines += self.request_texts.lines("textclf_request_texts")
            lines += ["# HELP textclf_batch_size Texts per model call (micro-batches merge concurrent requests).",
                      "# TYPE textclf_batch_size histogram"]
            lines += self.batch_sizes.lines("textclf_batch_size")
        for name, value in (gauges or {}).items():
            lines += [f"# TYPE {name} gauge", f"{name} {_number(value)}"]
        if info is not None:
            lines += ["# HELP textclf_model_info The model being served.", "# TYPE textclf_model_info gauge",
                      f"textclf_model_info{_labels(sorted(info.items()))} 1"]
        lines += ["# TYPE textclf_process_start_time_seconds gauge", f"textclf_process_start_time_seconds {self.started}"]
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request and its latency (unknown paths grouped as ``other``)."""

    def __init__(self, app, metrics: Metrics, routes: Callable[[], Iterable[str]]):
        self.app = app
        self.metrics = metrics
        self._routes = routes
        self._known: frozenset[str] | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            if self._known is None:
                self._known = frozenset(self._routes())
            path = scope.get("path", "")
            self.metrics.observe_request(path if path in self._known else "other", scope.get("method", ""), status[0],
                                         time.perf_counter() - start)

"""Prometheus metrics of ``textclf serve`` on ``prometheus_client``, summed over every ``--workers`` process.

* ``textclf_requests_total{route,method,status}`` (counter)
* ``textclf_request_duration_seconds{route}`` (histogram: latency of every request)
* ``textclf_request_texts`` (histogram: texts per ``POST /predict``)
* ``textclf_batch_size`` (histogram: texts per model call; above the request sizes when the
  micro-batcher merges concurrent requests)
* ``textclf_model_ready``, ``textclf_queue_depth``, ``textclf_model_info{backend,kind}`` and
  ``textclf_process_start_time_seconds`` (gauges)

Why ``prometheus_client``: besides the exposition format, its *multiprocess mode* is what lets a
scrape of one ``--workers`` process report the whole server. Each worker writes its values to
memory-mapped files in ``$PROMETHEUS_MULTIPROC_DIR`` and ``/metrics`` on any worker sums the files
of all of them (``MultiProcessCollector``); numbers kept in each process's memory cannot do that.

* One process (``--workers 1``, tests, an embedding program): each app has its own
  ``CollectorRegistry``, not the library's global ``REGISTRY``, so several apps in one process
  keep separate numbers and the output holds only the series above (no ``_created`` series).
* ``--workers N``: ``textclf serve`` sets ``$PROMETHEUS_MULTIPROC_DIR`` to a fresh private
  directory (:func:`multiprocess_directory`) before uvicorn starts the workers, which turns the
  mode on in each of them (the library chooses when it is imported). Counters and histograms sum
  over every worker that ever ran, a dead or restarted one included (totals never go back);
  gauges: ``textclf_model_ready`` is the minimum over the live workers (1 once every worker has
  its model), ``textclf_queue_depth`` their sum, ``textclf_model_info`` their maximum and
  ``textclf_process_start_time_seconds`` the start of the oldest live worker. The supervisor
  calls :func:`mark_worker_dead` when a worker goes, which drops that worker's gauges. Every
  answer then carries ``X-Textclf-Worker: <pid>`` (which worker served it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: the text exposition format 0.0.4 (what ``generate_latest`` writes)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: where ``prometheus_client`` keeps the values of every process in multiprocess mode
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
WORKER_HEADER = "X-Textclf-Worker"


def multiprocess_mode() -> bool:
    """Whether ``prometheus_client`` runs in multiprocess mode in this process (``$PROMETHEUS_MULTIPROC_DIR`` set when it was imported)."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


@contextlib.contextmanager
def multiprocess_directory() -> Iterator[str]:
    """A fresh private directory (mode 0700) in ``$PROMETHEUS_MULTIPROC_DIR`` for the worker processes started inside.

    At exit the directory is removed and the variable restored.
    """
    previous = os.environ.get(MULTIPROC_ENV)
    path = tempfile.mkdtemp(prefix="textclf-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(path, ignore_errors=True)


def mark_worker_dead(pid: int, path: str | None = None) -> None:
    """Drop the gauges of the worker ``pid`` that has exited (its counters and histograms stay in the totals)."""
    path = path or os.environ.get(MULTIPROC_ENV)
    if path and os.path.isdir(path):
        mark_process_dead(pid, path)


class _WithoutCreated:
    """A collector view without the ``*_created`` series (one process only writes them; the output is the same in both modes)."""

    def __init__(self, source):
        self.source = source

    def collect(self):
        for family in self.source.collect():
            family.samples = [s for s in family.samples if s.name != family.name + "_created"]
            yield family


class Metrics:
    """The server's counters, histograms and gauges (thread-safe); :meth:`render` gives the exposition text."""

    def __init__(self):
        self.multiprocess = multiprocess_mode()
        self.registry = CollectorRegistry()
        # multiprocess: the values live in the shared files and the registry only reads them back
        own = None if self.multiprocess else self.registry
        if self.multiprocess:
            MultiProcessCollector(self.registry)
        self._exposed = _WithoutCreated(self.registry)
        self.requests = Counter("textclf_requests_total", "HTTP requests by route, method and status.",
                                ("route", "method", "status"), registry=own)
        self.latency = Histogram("textclf_request_duration_seconds", "Request latency in seconds.", ("route",),
                                 buckets=LATENCY_BUCKETS, registry=own)
        self.request_texts = Histogram("textclf_request_texts", "Texts per POST /predict request.", buckets=SIZE_BUCKETS,
                                       registry=own)
        self.batch_sizes = Histogram("textclf_batch_size", "Texts per model call (micro-batches merge concurrent requests).",
                                     buckets=SIZE_BUCKETS, registry=own)
        self.model_ready = Gauge("textclf_model_ready", "1 once the model is loaded (with --workers: in every worker).",
                                 registry=own, multiprocess_mode="livemin")
        self.queue_depth = Gauge("textclf_queue_depth", "Requests waiting for a micro-batch (all workers).", registry=own,
                                 multiprocess_mode="livesum")
        self.model_info = Gauge("textclf_model_info", "The model being served.", ("backend", "kind"), registry=own,
                                multiprocess_mode="livemax")
        self.start_time = Gauge("textclf_process_start_time_seconds", "Start of the server process (of the oldest worker).",
                                registry=own, multiprocess_mode="livemin")
        self.start_time.set(time.time())

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency."""
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_texts(self, n: int) -> None:
        """Texts in one accepted ``POST /predict``."""
        self.request_texts.observe(n)

    def observe_batch(self, n: int) -> None:
        """Texts in one model call."""
        self.batch_sizes.observe(n)

    def set_queue_depth(self, n: int) -> None:
        """Requests now waiting for a micro-batch in this process."""
        self.queue_depth.set(n)

    def set_model(self, kind: str, backend: str) -> None:
        """The model is loaded: ``textclf_model_ready`` 1 and ``textclf_model_info{backend,kind}`` 1."""
        self.model_info.labels(backend=backend, kind=kind).set(1)
        self.model_ready.set(1)

    def render(self) -> bytes:
        """The exposition text (format 0.0.4, :data:`CONTENT_TYPE`): this process's numbers, or every worker's summed."""
        return generate_latest(self._exposed)


class MetricsMiddleware:
    """Pure ASGI middleware: counts every HTTP request and its latency (unknown paths grouped as ``other``).

    In multiprocess mode it also names the worker in an ``X-Textclf-Worker`` header.
    """

    def __init__(self, app, metrics: Metrics, routes: Callable[[], Iterable[str]]):
        self.app = app
        self.metrics = metrics
        self._routes = routes
        self._known: frozenset[str] | None = None
        self._worker = (WORKER_HEADER.lower().encode(), str(os.getpid()).encode()) if metrics.multiprocess else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]
        done = [False]

        def observe() -> None:
            if done[0]:
                return
            done[0] = True
            if self._known is None:
                self._known = frozenset(self._routes())
            path = scope.get("path", "")
            self.metrics.observe_request(path if path in self._known else "other", scope.get("method", ""), status[0],
                                         time.perf_counter() - start)

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if self._worker is not None:
                    message = {**message, "headers": [*message.get("headers", ()), self._worker]}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                observe()  # before the last byte leaves: a scrape that follows the answer counts it
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            observe()

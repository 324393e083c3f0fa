"""``textclf serve``: the HTTP JSON API (:mod:`textclf.services.serving.app`) on uvicorn.

With ``--workers N`` (N > 1) uvicorn's supervisor starts N worker processes; before it does,
``$PROMETHEUS_MULTIPROC_DIR`` is set to a fresh private directory (removed at exit), so that
``/metrics`` on any worker reports the sum over all of them (:mod:`textclf.services.serving.metrics`).

Connections run on uvicorn's h11 protocol with header and body timeouts
(:mod:`textclf.services.serving.protocol`), at most ``--max_connections`` per process, and SIGTERM
drains before the process exits 0 (:mod:`textclf.services.serving.drain`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
from pathlib import Path

import click

from textclf.core.errors import ConfigError
from textclf.core.options import trust_code_option

#: where a container's HEALTHCHECK finds the port (docker/Dockerfile sets it; unset: nothing is written)
HEALTH_FILE_ENV = "TEXTCLF_HEALTH_FILE"


def _load_code(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> tuple[str, ...]:
    from textclf.core.registry import load_code

    for path in value or ():
        load_code(path)
    return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (or ``localhost``)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one); a port in use is a one-line error."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--host {host!r}: {exc.strerror}") from None
    family, kind, proto, _, address = infos[0]
    # proto IPPROTO_TCP (from getaddrinfo) matters: asyncio sets TCP_NODELAY only on such sockets, and without
    # it a response written in two parts waits for the client's delayed ACK (~40 ms a request)
    sock = socket.socket(family, kind, proto or socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _write_health_file(host: str, port: int) -> None:
    path = os.environ.get(HEALTH_FILE_ENV)
    if path:
        from textclf.core.atomic import atomic_write_json

        atomic_write_json(path, {"host": host, "port": port, "pid": os.getpid()})


@click.command()
@click.option("--code", "code", multiple=True, type=click.Path(dir_okay=False), callback=_load_code, is_eager=True,
              help="Python file registering your own families, formats or readers (imported first, in every worker). Repeatable.")
@trust_code_option
@click.option("--model_path", required=True, type=click.Path(), help="Model directory (any family, an ensemble, a plug-in's).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind (loopback by default; another address serves the network: set TEXTCLF_API_KEY).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="TCP port (0: any free one).")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Worker processes (each loads the model and batches on its own; /metrics sums them all).")
@click.option("--backend", type=click.Choice(["torch", "onnx"]), default=None,
              help="Model backend (default: onnx when the directory holds an export from `textclf export`, else torch).")
@click.option("--thresholds/--no-thresholds", default=True, help="Apply tuned decision thresholds (default) or plain argmax.")
@click.option("--batching", type=click.Choice(["auto", "on", "off"]), default="auto", show_default=True,
              help="Micro-batch concurrent requests (auto: every family but fastText-like linear ones).")
@click.option("--max_batch_size", type=click.IntRange(1, 4096), default=64, show_default=True,
              help="Most texts in one micro-batch.")
@click.option("--max_wait_ms", type=click.FloatRange(0, 1000), default=2.0, show_default=True,
              help="How long a micro-batch waits for more requests (under load batches fill while the model runs).")
@click.option("--max_texts", type=click.IntRange(1), default=256, show_default=True, help="Most texts per request (413 above).")
@click.option("--max_text_bytes", type=click.IntRange(1), default=65536, show_default=True,
              help="Most UTF-8 bytes per text (413 above).")
@click.option("--max_body_bytes", type=click.IntRange(1), default=8 * 1024 * 1024, show_default=True,
              help="Most bytes per request body (413 above).")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Intra-op threads of the model (torch and ONNX Runtime; default: all usable cores).")
@click.option("--header_timeout", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True,
              help="Seconds a client has to send its request headers (from connecting, or a kept-alive request's "
              "first byte); then the connection is closed.")
@click.option("--body_timeout", type=click.FloatRange(0.1, 3600), default=30.0, show_default=True,
              help="Seconds a client has to send a request body after its headers (400 after that).")
@click.option("--keep_alive_timeout", type=click.IntRange(1, 3600), default=5, show_default=True,
              help="Seconds an idle kept-alive connection stays open.")
@click.option("--max_connections", type=click.IntRange(1), default=1000, show_default=True,
              help="Open connections per worker process beyond which requests get 503 (uvicorn's limit_concurrency).")
@click.option("--graceful_timeout", type=click.FloatRange(0, 3600), default=10.0, show_default=True,
              help="On SIGTERM, seconds the requests in flight get to finish (/ready answers 503 meanwhile); then exit 0.")
@click.option("--log_level", type=click.Choice(["critical", "error", "warning", "info", "debug"]), default="warning",
              show_default=True, help="uvicorn's log level (info: one line per request).")
def serve(code, model_path, host, port, workers, backend, thresholds, batching, max_batch_size, max_wait_ms, max_texts,
          max_text_bytes, max_body_bytes, threads, header_timeout, body_timeout, keep_alive_timeout, max_connections,
          graceful_timeout, log_level):
    """Serve a model over HTTP: POST /predict, GET /health /ready /metadata /card /metrics, docs at /docs (offline)."""
    import uvicorn

    from textclf.core.integrity import check_meta
    from textclf.core.loading import load_predictor
    from textclf.core.meta import read_meta
    from textclf.core.trust import trust_env
    from textclf.services.serving.app import API_KEY_ENV, SETTINGS_ENV, ServeSettings, create_app
    from textclf.services.serving.limits import Limits
    from textclf.services.serving.protocol import ConnectionLimits, protocol_factory

    if threads:
        from textclf.core.onnx_runtime import THREADS_ENV

        os.environ[THREADS_ENV] = str(threads)  # read by ONNX Runtime sessions and, for torch, when the model is attached
    connection = ConnectionLimits(header_timeout, body_timeout, keep_alive_timeout, max_connections, graceful_timeout)
    settings = ServeSettings(model_path=str(model_path), backend=backend, thresholds=thresholds, batching=batching,
                             max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
                             limits=Limits(max_texts, max_text_bytes, max_body_bytes), connection=connection,
                             code=[str(Path(c).resolve()) for c in code])
    if not is_loopback(host) and not os.environ.get(API_KEY_ENV):
        click.echo(f"warning: serving on {host} (not loopback) without an API key; set {API_KEY_ENV} to require one",
                   err=True)
    if workers == 1:
        predictor = load_predictor(model_path, thresholds=thresholds, backend=backend)  # errors: one line
        app = create_app(settings, predictor)
        what = f"{predictor.kind} model, backend {getattr(predictor, 'backend', 'torch')}"
    else:
        model_dir = Path(model_path) if not Path(model_path).is_file() else Path(model_path).parent
        meta = read_meta(model_dir)
        check_meta(model_dir, meta)
        os.environ[SETTINGS_ENV] = settings.to_json()
        os.environ.update(trust_env())  # the workers load the model: they inherit --trust-code
        app = "textclf.services.serving.app:app_from_env"
        what = f"{meta['kind']} model, {workers} workers"
    sock = bind(host, port)
    bound_port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"textclf serve: {model_path} ({what}) on http://{shown}:{bound_port} (docs: /docs)", err=True)
    _write_health_file(host, bound_port)
    config = uvicorn.Config(app, factory=workers > 1, workers=workers, log_level=log_level, access_log=log_level in ("info", "debug"),
                            http=protocol_factory(connection), limit_concurrency=max_connections,
                            timeout_keep_alive=keep_alive_timeout, timeout_graceful_shutdown=max(graceful_timeout, 0.1),
                            server_header=False)
    try:
        if workers > 1:
            from textclf.services.serving.metrics import multiprocess_directory

            with multiprocess_directory() as directory:  # set before the workers start: they read it at import
                supervisor(config, sock, directory).run()
        else:
            with _drained_sigterm_exits_0():
                uvicorn.Server(config).run(sockets=[sock])
    finally:
        sock.close()
        _remove_health_file()


@contextlib.contextmanager
def _drained_sigterm_exits_0():
    """While uvicorn serves, the SIGTERM handler it replaces (and calls again once it has drained) does nothing.

    uvicorn re-raises the signals it handled after its shutdown, with the handler it found; the CLI's
    own one (SIGTERM -> exit 143, for temporaries) would turn a completed drain into a failure.
    """
    previous = signal.signal(signal.SIGTERM, _ignore)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _ignore(signum, frame) -> None:
    """A SIGTERM after the drain: already handled."""


def supervisor(config, sock: socket.socket, metrics_dir: str):
    """uvicorn's ``Multiprocess`` supervisor that also drops the metric gauges of every worker that goes.

    A worker leaves the supervisor's list when it dies (then it is replaced), on ``SIGHUP``
    (restart) and ``SIGTTOU`` (one fewer); its counters stay in the totals, its gauges go
    (``prometheus_client``'s ``mark_process_dead``).
    """
    from uvicorn.supervisors import Multiprocess

    from textclf.services.serving.metrics import mark_worker_dead

    class Supervisor(Multiprocess):
        def _pids(self) -> set[int]:
            return {p.pid for p in self.processes if p.pid is not None}

        def _reap(self, before: set[int]) -> None:
            for pid in before - self._pids():
                mark_worker_dead(pid, metrics_dir)

        def keep_subprocess_alive(self) -> None:
            before = self._pids()
            super().keep_subprocess_alive()
            self._reap(before)

        def handle_signals(self) -> None:
            before = self._pids()
            super().handle_signals()
            self._reap(before)

    return Supervisor(config, sockets=[sock])


def _remove_health_file() -> None:
    path = os.environ.get(HEALTH_FILE_ENV)
    if not path:
        return
    try:
        if json.loads(Path(path).read_text()).get("pid") == os.getpid():
            Path(path).unlink()
    except (OSError, ValueError):
        pass

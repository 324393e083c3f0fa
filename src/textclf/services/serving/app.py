"""The HTTP JSON API of ``textclf serve``: FastAPI routes around any Predictor.

=====================  ===================================================================
route                  answer
=====================  ===================================================================
``POST /predict``      ``{"texts": [...], "probabilities": true}`` -> ``{"predictions":
                       [{"label": ..., "probabilities": {label: p, ...}}, ...]}`` in input
                       order (labels as ``Predictor.predict`` gives them, tuned thresholds
                       included; ``"probabilities": false`` leaves the probabilities out).
                       A multi-label model answers ``{"labels": [...], "probabilities":
                       {label: p, ...}}`` a text: the sorted label set (maybe empty) and the
                       independent per-label probabilities
``POST /explain``      ``{"texts": [...], "label": null}`` -> ``{"explanations": [{"tokens":
                       [...], "attributions": [...], "label": ..., ...}, ...]}``: token
                       attributions toward the predicted label (or ``label``), as
                       ``textclf explain`` gives them (:mod:`textclf.services.explain`)
``GET /health``        200 while the process runs (liveness)
``GET /ready``         200 once the model is loaded, else 503 (readiness; 503 too while draining)
``GET /metadata``      kind, task, backend, labels, metrics, config and versions from meta.json
``GET /metrics``       Prometheus text format (:mod:`textclf.services.serving.metrics`;
                       with ``--workers`` the sum over every worker)
``GET /card``          the model's ``MODEL_CARD.md`` (``text/markdown``; rendered from meta.json
                       when the directory has none)
``GET /docs``          OpenAPI documentation (``/openapi.json``; Swagger UI served from the
                       ``fastapi-offline`` package: no CDN, so it works offline; no ``/redoc``,
                       whose bundle fetches its logo from a CDN)
=====================  ===================================================================

Bad requests are refused with a 4xx and a one-line ``{"detail": ...}`` (:mod:`.limits`); a
model failure is a 500 with the same shape; the server keeps running either way. Slow and idle
clients are cut off by the timeouts of :mod:`.protocol`; SIGTERM drains (:mod:`.drain`). With
``TEXTCLF_API_KEY`` set, ``/predict``, ``/explain``, ``/metadata``, ``/card`` and ``/metrics`` need the key
(``Authorization: Bearer KEY`` or ``X-API-Key: KEY``), else 401; ``/health``, ``/ready``
and the docs stay open for probes.

Neural models (every family but the ``linear`` ones such as fastText) go through the
micro-batcher (:mod:`.batcher`); fastText answers in the event loop directly (a few
microseconds a text, less than a thread hand-off).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from textclf.services.serving.batcher import MicroBatcher
from textclf.services.serving.drain import Drain, DrainMiddleware
from textclf.services.serving.limits import Limits, RequestError, check_content_type, parse_explain_body, parse_predict_body
from textclf.services.serving.metrics import CONTENT_TYPE, Metrics, MetricsMiddleware
from textclf.services.serving.protocol import ConnectionLimits

log = logging.getLogger("textclf.serve")

API_KEY_ENV = "TEXTCLF_API_KEY"
SETTINGS_ENV = "TEXTCLF_SERVE_SETTINGS"
BATCHING = ("auto", "on", "off")
META_FIELDS = ("kind", "task", "labels", "metrics", "config", "created", "versions", "git_commit", "data_sha256", "thresholds")


@dataclass
class ServeSettings:
    """Everything ``textclf serve`` configures (passed to ``--workers`` processes as JSON in ``$TEXTCLF_SERVE_SETTINGS``)."""

    model_path: str = ""
    backend: str | None = None
    thresholds: bool = True
    batching: str = "auto"
    max_batch_size: int = 64
    max_wait_ms: float = 2.0
    limits: Limits = field(default_factory=Limits)
    connection: ConnectionLimits = field(default_factory=ConnectionLimits)
    code: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        """The settings as JSON (for the environment of worker processes)."""
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        """Settings written by :meth:`to_json`."""
        raw = json.loads(text)
        raw["limits"] = Limits(**raw.get("limits", {}))
        raw["connection"] = ConnectionLimits(**raw.get("connection", {}))
        return cls(**raw)


# --------------------------------------------------------------------------- documentation models (OpenAPI only)
class PredictBody(BaseModel):
    """The ``POST /predict`` request."""

    texts: list[str] = Field(description="Texts to classify (at most --max_texts, each at most --max_text_bytes of UTF-8).",
                             examples=[["I love this", "this is awful"]])
    probabilities: bool = Field(True, description="Include every class's probability.")


class Prediction(BaseModel):
    """One text's result."""

    label: str | None = Field(None, description="The predicted label (multi-class models).")
    labels: list[str] | None = Field(None, description="The predicted label set, sorted, maybe empty (multi-label models).")
    probabilities: dict[str, float] | None = None


class PredictAnswer(BaseModel):
    """The ``POST /predict`` answer: one prediction per text, in input order."""

    predictions: list[Prediction]


class ErrorAnswer(BaseModel):
    """Every error answer: one line."""

    detail: str


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "body is not UTF-8 or not JSON, repeats a key, holds a huge number, "
                                               "or did not arrive within --body_timeout"},
    401: {"model": ErrorAnswer, "description": "missing or wrong API key (TEXTCLF_API_KEY is set)"},
    413: {"model": ErrorAnswer, "description": "too many texts, a text too long, or the body too large"},
    415: {"model": ErrorAnswer, "description": "Content-Type is not application/json"},
    422: {"model": ErrorAnswer, "description": "wrong JSON shape or types"},
    500: {"model": ErrorAnswer, "description": "the model failed on these texts"},
    503: {"model": ErrorAnswer, "description": "the model is not loaded yet, or too many connections (--max_connections)"},
}


# --------------------------------------------------------------------------- the model side
def predict_function(predictor) -> Any:
    """``fn(texts, probabilities=True) -> (labels, proba or None)`` with the labels ``predictor.predict`` gives.

    A Predictor using the base ``predict`` decides from the probabilities (one model call); one
    with its own ``predict`` (fastText's top-1 fast path) is asked for both. A multi-label model
    always decides from its probabilities (one model call): its labels are sorted tuples.
    """
    from textclf.core.predictor import Predictor

    own_predict = type(predictor).predict is not Predictor.predict and not getattr(predictor, "multilabel", False)
    decide = getattr(predictor, "decide", None)

    def fn(texts: list[str], probabilities: bool = True) -> tuple[list[str], np.ndarray | None]:
        if not texts:
            return [], (np.zeros((0, len(predictor.labels))) if probabilities else None)
        if not probabilities and own_predict:
            return list(predictor.predict(texts)), None
        proba = np.asarray(predictor.predict_proba(texts))
        if own_predict:
            labels = list(predictor.predict(texts))
        else:
            index = decide(proba) if decide else proba.argmax(axis=1)
            labels = predictor.labels_of(index) if hasattr(predictor, "labels_of") else \
                [predictor.labels[int(i)] for i in index]
        return labels, proba if probabilities else None

    return fn


def wants_batching(predictor, batching: str) -> bool:
    """``on``/``off``, or ``auto``: micro-batch every model whose family is not ``linear`` (fastText)."""
    if batching not in BATCHING:
        raise ValueError(f"batching {batching!r}: choose {', '.join(BATCHING)}")
    if batching != "auto":
        return batching == "on"
    from textclf.core.registry import all_families

    family = all_families().get(getattr(predictor, "kind", ""))
    return not (family is not None and family.kind == "linear" and getattr(predictor, "backend", "") != "onnx")


def apply_thread_limit() -> int | None:
    """``$TEXTCLF_THREADS`` (``serve --threads``) as torch's intra-op threads too, when torch is loaded; returns it.

    ONNX Runtime sessions read the variable themselves. On a CPU shared with other work, fewer
    threads than cores can be much faster: OpenMP threads that wait for a busy core spin.
    """
    import sys

    from textclf.core.onnx_runtime import threads_from_env

    threads = threads_from_env()
    if threads is not None and "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)
    return threads


class ModelState:
    """The loaded Predictor (or why it is not loaded), its predict function and the batcher."""

    def __init__(self, settings: ServeSettings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.predictor = None
        self.error: str | None = None
        self.fn = None
        self.batcher: MicroBatcher | None = None
        #: call the model in the event loop (fastText: microseconds) instead of a worker thread
        self.inline = False

    @property
    def ready(self) -> bool:
        """Whether predictions can be served."""
        return self.predictor is not None

    def attach(self, predictor) -> None:
        """Serve ``predictor`` (starts the batcher when it wants one; call inside the event loop)."""
        apply_thread_limit()
        self.fn = predict_function(predictor)
        self.inline = not wants_batching(predictor, "auto")
        if wants_batching(predictor, self.settings.batching):
            self.batcher = MicroBatcher(self.fn, self.settings.max_batch_size, self.settings.max_wait_ms,
                                        on_batch=self.metrics.observe_batch, on_depth=self.metrics.set_queue_depth)
            self.batcher.start()
        self.predictor = predictor
        self.metrics.set_model(predictor.kind, getattr(predictor, "backend", "torch"))
        log.info("serving %s model %s (backend %s, micro-batching %s)", predictor.kind, self.settings.model_path,
                 getattr(predictor, "backend", "torch"), "on" if self.batcher else "off")

    async def load(self) -> None:
        """Load the model named by the settings in a thread (``/ready`` answers 503 meanwhile)."""
        from textclf.core.loading import load_predictor
        from textclf.core.registry import load_code

        try:
            for path in self.settings.code:
                load_code(path)
            predictor = await asyncio.to_thread(load_predictor, self.settings.model_path, self.settings.thresholds,
                                                self.settings.backend)
        except Exception as exc:  # noqa: BLE001 - reported by /ready and the log, the process stays up
            self.error = f"{type(exc).__name__}: {exc}" if not hasattr(exc, "format_message") else exc.format_message()
            log.error("cannot load the model: %s", self.error)
            return
        self.attach(predictor)

    async def predict(self, texts: Sequence[str], probabilities: bool) -> tuple[list[str], np.ndarray | None]:
        """Labels (and probabilities) of ``texts`` through the batcher or directly."""
        self.metrics.observe_texts(len(texts))
        if self.batcher is not None and texts:
            return await self.batcher.submit(texts)
        self.metrics.observe_batch(len(texts))
        if self.inline or not texts:
            return self.fn(list(texts), probabilities)
        return await asyncio.to_thread(self.fn, list(texts), probabilities)


def _answer(labels: list, proba: np.ndarray | None, label_names: list[str], probabilities: bool,
            multilabel: bool = False) -> bytes:
    """The ``/predict`` JSON: ``{"label": ...}`` a text, or ``{"labels": [...]}`` for a multi-label model (plus probabilities)."""
    key = "labels" if multilabel else "label"
    shown = [list(label) for label in labels] if multilabel else labels
    if not probabilities or proba is None:
        predictions = [{key: label} for label in shown]
    else:
        predictions = [{key: label, "probabilities": dict(zip(label_names, row, strict=True))}
                       for label, row in zip(shown, proba.tolist(), strict=True)]
    return json.dumps({"predictions": predictions}, ensure_ascii=False).encode("utf-8")


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status, headers=headers)


class BodyUnread(RequestError):
    """A refusal sent before the whole body was read: the answer closes the connection (the rest is not read)."""


class ClientGone(Exception):
    """The client closed its connection before sending the whole body (nobody to answer)."""


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes, with 400 when not complete within ``timeout`` s.

    A client that disconnects first raises :class:`ClientGone` (one log line, no traceback).
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise BodyUnread(413, f"request body is over {limit} bytes (--max_body_bytes)")
    chunks, size = [], 0
    expected = f" of {declared}" if declared and declared.isdigit() else ""
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyUnread(413, f"request body is over {limit} bytes (--max_body_bytes)")
                chunks.append(chunk)
    except TimeoutError:
        message = f"request body incomplete after {timeout:g}s (--body_timeout): {size}{expected} bytes"
        log.warning("%s: %s", _peer(request), message)
        raise BodyUnread(400, message) from None
    except ClientDisconnect:
        log.warning("%s: client disconnected after %d%s bytes of the request body", _peer(request), size, expected)
        raise ClientGone from None
    return b"".join(chunks)


def _peer(request: Request) -> str:
    return f"{request.client.host}:{request.client.port}" if request.client else "a client"


def create_app(settings: ServeSettings | None = None, predictor=None, api_key: str | None = None) -> FastAPI:
    """The FastAPI app serving ``predictor`` (already loaded), or the model of ``settings.model_path`` (loaded at start).

    ``api_key`` defaults to ``$TEXTCLF_API_KEY`` (empty: no key needed).
    """
    settings = settings or ServeSettings()
    key = (api_key if api_key is not None else os.environ.get(API_KEY_ENV, "")).encode()
    metrics = Metrics()
    state = ModelState(settings, metrics)
    drain = Drain(settings.connection.graceful_timeout)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        drain.install()
        loading = None
        if predictor is not None:
            state.attach(predictor)
        else:
            loading = asyncio.create_task(state.load())
        try:
            yield
        finally:
            if loading is not None and not loading.done():
                loading.cancel()
            if state.batcher is not None:
                await state.batcher.stop()

    # FastAPI's own /docs loads Swagger UI from a CDN (a blank page offline); fastapi-offline serves the
    # same Swagger UI assets from its package (/static-offline-docs) through FastAPI's self-hosting hooks.
    # No /redoc: ReDoc's bundle still fetches its logo from cdn.redoc.ly (a request leaving the machine)
    app = FastAPIOffline(redoc_url=None, title="textclf", version=_version(), lifespan=lifespan,
                         description="Text classification with a textclf model. Errors answer `{\"detail\": \"one line\"}`.")
    app.state.model = state
    app.state.metrics = metrics
    app.state.drain = drain

    def authorized(request: Request) -> bool:
        if not key:
            return True
        given = request.headers.get("x-api-key", "")
        auth = request.headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            given = auth[7:].strip()
        return hmac.compare_digest(given.encode("utf-8", "replace"), key)

    unauthorized = {"WWW-Authenticate": 'Bearer realm="textclf"'}

    @app.post("/predict", response_model=PredictAnswer, responses=ERROR_RESPONSES, summary="Classify texts",
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": PredictBody.model_json_schema()}}}})
    async def predict(request: Request) -> Response:
        """Labels (and per-class probabilities) of every text, in input order."""
        if not authorized(request):
            return _error(401, f"missing or wrong API key (send 'Authorization: Bearer KEY'; {API_KEY_ENV} is set)",
                          {**unauthorized, "Connection": "close"})
        try:
            check_content_type(request.headers.get("content-type"))
        except RequestError as exc:
            return _error(exc.status, exc.message, {"Connection": "close"})
        try:
            raw = await read_body(request, settings.limits.max_body_bytes, settings.connection.body_timeout)
            body = parse_predict_body(raw, settings.limits)
        except ClientGone:
            return Response(status_code=400)  # nobody reads it; the metrics count a 400
        except BodyUnread as exc:
            return _error(exc.status, exc.message, {"Connection": "close"})
        except RequestError as exc:
            return _error(exc.status, exc.message)
        if not state.ready:
            return _error(503, "model not loaded yet" if state.error is None else f"model failed to load: {state.error}")
        try:
            labels, proba = await state.predict(body.texts, body.probabilities)
        except Exception as exc:  # noqa: BLE001 - one line to the client, the traceback to the log
            log.exception("prediction failed")
            return _error(500, f"prediction failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return Response(_answer(labels, proba, state.predictor.labels, body.probabilities,
                                getattr(state.predictor, "multilabel", False)), media_type="application/json")

    @app.post("/explain", responses=ERROR_RESPONSES, summary="Token attributions")
    async def explain(request: Request) -> Response:
        """Token attributions of every text toward its predicted label (or ``label``), in input order."""
        if not authorized(request):
            return _error(401, f"missing or wrong API key (send 'Authorization: Bearer KEY'; {API_KEY_ENV} is set)",
                          {**unauthorized, "Connection": "close"})
        try:
            check_content_type(request.headers.get("content-type"))
            texts, label = parse_explain_body(await read_body(request, settings.limits.max_body_bytes,
                                                              settings.connection.body_timeout), settings.limits)
        except ClientGone:
            return Response(status_code=400)
        except RequestError as exc:
            return _error(exc.status, exc.message, {"Connection": "close"} if isinstance(exc, BodyUnread) else None)
        if not state.ready:
            return _error(503, "model not loaded yet" if state.error is None else f"model failed to load: {state.error}")
        from textclf.core.errors import ConfigError
        from textclf.services.explain import explain_texts

        try:
            explanations = await asyncio.to_thread(explain_texts, state.predictor, texts, label)
        except ConfigError as exc:  # a label the model does not have
            return _error(422, str(exc).replace("--label", "label"))
        except Exception as exc:  # noqa: BLE001 - one line to the client, the traceback to the log
            log.exception("explanation failed")
            return _error(500, f"explanation failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        return Response(json.dumps({"explanations": [e.to_json() for e in explanations]}, ensure_ascii=False),
                        media_type="application/json")

    @app.get("/health", summary="Liveness")
    async def health() -> dict:
        """200 while the process is up."""
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness", responses={503: {"model": ErrorAnswer}})
    async def ready() -> Response:
        """200 once the model is loaded, 503 before (or when loading failed) and while draining for shutdown."""
        if drain.draining:
            return _error(503, "shutting down: finishing the requests in flight")
        if state.ready:
            return JSONResponse({"ready": True, "kind": state.predictor.kind})
        return _error(503, "model not loaded yet" if state.error is None else f"model failed to load: {state.error}")

    @app.get("/metadata", summary="Model metadata", responses={401: {"model": ErrorAnswer}, 503: {"model": ErrorAnswer}})
    async def metadata(request: Request) -> Response:
        """Kind, backend, labels, metrics, config and versions from meta.json, and the serving settings."""
        if not authorized(request):
            return _error(401, "missing or wrong API key", unauthorized)
        if not state.ready:
            return _error(503, "model not loaded yet" if state.error is None else f"model failed to load: {state.error}")
        p = state.predictor
        meta = {k: p.meta[k] for k in META_FIELDS if k in p.meta}
        meta.update(kind=p.kind, task=getattr(p, "task", "multiclass"), labels=list(p.labels), backend=getattr(p, "backend", "torch"),
                    serving={"micro_batching": state.batcher is not None, "max_batch_size": settings.max_batch_size,
                             "max_wait_ms": settings.max_wait_ms, "thresholds": settings.thresholds,
                             "limits": asdict(settings.limits), "connection": asdict(settings.connection)})
        if p.kind == "cascade":  # the share of texts sent to the teacher: chosen on valid, and since this worker loaded
            meta["cascade"] = {"tau": p.tau, "share_to_teacher_valid": p.meta.get("share_to_teacher"),
                               "share_to_teacher_served": p.share_to_teacher, "texts_served": p.routed["texts"]}
        return Response(json.dumps(meta, ensure_ascii=False, default=str), media_type="application/json")

    @app.get("/card", summary="Model card", response_class=Response,
             responses={200: {"content": {"text/markdown": {}}}, 401: {"model": ErrorAnswer}, 503: {"model": ErrorAnswer}})
    async def model_card(request: Request) -> Response:
        """The model directory's MODEL_CARD.md (Markdown), or one rendered from its meta.json when it has none."""
        if not authorized(request):
            return _error(401, "missing or wrong API key", unauthorized)
        if not state.ready:
            return _error(503, "model not loaded yet" if state.error is None else f"model failed to load: {state.error}")
        return Response(card_text(state.predictor), media_type="text/markdown; charset=utf-8")

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE: {}}}, 401: {"model": ErrorAnswer}})
    async def prometheus(request: Request) -> Response:
        """Request counts, latency and batch-size histograms in the Prometheus text format (summed over ``--workers``)."""
        if not authorized(request):
            return _error(401, "missing or wrong API key", unauthorized)
        if state.batcher is not None:
            metrics.set_queue_depth(state.batcher.depth)
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=lambda: [r.path for r in app.routes])
    app.add_middleware(DrainMiddleware, drain=drain)  # outermost: counts every request until its answer is sent
    return app


def card_text(predictor) -> str:
    """``MODEL_CARD.md`` of the predictor's model directory; without one (an older model), rendered from its meta."""
    from textclf.core.card import CARD_FILE, render_card

    model_dir = getattr(predictor, "model_dir", None)
    path = None if model_dir is None else model_dir / CARD_FILE
    if path is not None and path.is_file():
        return path.read_text(encoding="utf-8", errors="replace")
    return render_card(predictor.meta, model_dir or ".")


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("textclf")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def app_from_env() -> FastAPI:
    """The app of a ``--workers`` process: settings from ``$TEXTCLF_SERVE_SETTINGS``, the model loaded at start."""
    from textclf.core.progress import setup_logging

    setup_logging()
    return create_app(ServeSettings.from_json(os.environ[SETTINGS_ENV]))

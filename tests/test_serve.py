"""`textclf serve`: predictions equal Predictor.predict, every 4xx, API key, probes, metrics, micro-batching.

The server runs for real on a free loopback port: `textclf serve --port 0` in a subprocess (the
CLI path), or uvicorn in a thread for the in-process fakes. Property tests of the payloads run
against the same app through Starlette's TestClient.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import textclf
from textclf.cli import cli
from textclf.core.data import read_labelled
from textclf.core.predictor import Predictor
from textclf.services.serving.app import ServeSettings, create_app
from textclf.services.serving.limits import Limits

REPO = Path(__file__).resolve().parents[1]
TEXTCLF = Path(sys.executable).parent / "textclf"  # the console script of this environment


@pytest.fixture(scope="module")
def ft_model(tmp_path_factory, tweets) -> Path:
    """A small fastText model (fixed params, no search: ~2 s)."""
    out = tmp_path_factory.mktemp("serve_ft") / "model"
    result = CliRunner().invoke(cli, ["train", "fasttext", "--train_path", str(tweets["train"]), "--valid_path",
                                      str(tweets["valid"]), "--output_dir", str(out), "--n_trials", "0",
                                      "--set", "model.dim=20", "--set", "model.bucket=100000"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out


def start_server(model: Path, *args: str, env: dict | None = None, timeout: float = 90.0):
    """``textclf serve --port 0`` in a subprocess; returns (process, base URL) once /ready answers 200."""
    proc = subprocess.Popen([str(TEXTCLF), "serve", "--model_path", str(model), "--port", "0", *args],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})})
    deadline = time.monotonic() + timeout
    url = None
    while url is None:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode}")
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        if m:
            url = m.group(1)
        assert time.monotonic() < deadline, "server did not start"
    threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining the log
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return proc, url
        time.sleep(0.2)
    proc.kill()
    raise AssertionError("server never became ready")


def stop(proc: subprocess.Popen) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@pytest.fixture(scope="module")
def server(ft_model):
    proc, url = start_server(ft_model, "--max_texts", "64", "--max_text_bytes", "1000", "--max_body_bytes", "200000")
    yield url
    stop(proc)


@contextlib.contextmanager
def serve_in_thread(app):
    """Run ``app`` on uvicorn in a thread on a free loopback port; yields the base URL."""
    import uvicorn

    from textclf.cli.serve_cmd import bind

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


# --------------------------------------------------------------------------- predictions


def test_predictions_equal_in_process_predictor(server, ft_model, tweets):
    texts = read_labelled(tweets["test"]).texts[:150] + ["", "   ", "ünïcödé 🎉", "multi\nline\ttext", "a" * 900]
    predictor = textclf.load_predictor(ft_model)
    labels, probas = [], []
    with httpx.Client(base_url=server, timeout=30) as client:
        for start in range(0, len(texts), 64):
            r = client.post("/predict", json={"texts": texts[start:start + 64]})
            assert r.status_code == 200, r.text
            for p in r.json()["predictions"]:
                labels.append(p["label"])
                probas.append([p["probabilities"][label] for label in predictor.labels])
        short = client.post("/predict", json={"texts": texts[:5], "probabilities": False}).json()["predictions"]
    assert labels == predictor.predict(texts)
    np.testing.assert_allclose(np.array(probas), predictor.predict_proba(texts), rtol=0, atol=1e-12)
    assert [p["label"] for p in short] == labels[:5] and "probabilities" not in short[0]


def test_request_fields_never_reach_the_filesystem(server, tmp_path):
    with httpx.Client(base_url=server, timeout=30) as client:
        r = client.post("/predict", json={"texts": ["../../../etc/passwd", "/dev/zero", str(tmp_path / "x")]})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 3
        r = client.post("/predict", json={"texts": ["a"], "model_path": "/etc"})
        assert r.status_code == 422 and "unknown field 'model_path'" in r.json()["detail"]
    assert not (tmp_path / "x").exists()


BAD_REQUESTS = [
    # (body bytes, status, message part)
    (json.dumps({"texts": ["x"] * 65}).encode(), 413, "65 texts; at most 64"),
    (json.dumps({"texts": ["ok", "é" * 600]}).encode(), 413, "texts[1] is 1200 bytes"),
    (b"x" * 200001, 413, "request body is over 200000 bytes"),
    (b'{"texts": ["\xff\xfe bad"]}', 400, "not valid UTF-8"),
    (b'{"texts": [', 400, "not valid JSON"),
    (b"", 400, "not valid JSON"),
    (b'["a", "b"]', 422, "expected a JSON object"),
    (b'{"text": ["a"]}', 422, "unknown field 'text'"),
    (b"{}", 422, "missing field 'texts'"),
    (b'{"texts": "a"}', 422, "'texts' must be an array"),
    (b'{"texts": [1, "a"]}', 422, "texts[0] must be a string, got number"),
    (b'{"texts": [null]}', 422, "got null"),
    (b'{"texts": [["nested"]]}', 422, "got array"),
    (b'{"texts": ["\\ud800"]}', 422, "lone surrogate"),
    (b'{"texts": ["a"], "probabilities": "yes"}', 422, "'probabilities' must be true or false"),
    (b"[" * 100000 + b"]" * 100000, 400, "not valid JSON"),
]


@pytest.mark.parametrize("body,status,message", BAD_REQUESTS, ids=[f"{s}-{m[:20]}" for _, s, m in BAD_REQUESTS])
def test_bad_requests_get_a_clear_4xx_and_the_server_stays_up(server, body, status, message):
    with httpx.Client(base_url=server, timeout=30) as client:
        r = client.post("/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        detail = r.json()["detail"]
        assert message in detail and "\n" not in detail
        assert client.get("/health").status_code == 200
        assert client.post("/predict", json={"texts": ["still fine"]}).status_code == 200


def test_health_ready_metadata_metrics_docs(server, ft_model):
    meta = json.loads((ft_model / "meta.json").read_text())
    with httpx.Client(base_url=server, timeout=30) as client:
        assert client.get("/health").json() == {"status": "ok"}
        assert client.get("/ready").json() == {"ready": True, "kind": "fasttext"}
        md = client.get("/metadata").json()
        assert md["kind"] == "fasttext" and md["labels"] == meta["labels"] and md["backend"] == "torch"
        assert md["metrics"]["valid"]["macro_f1"] == meta["metrics"]["valid"]["macro_f1"]
        assert md["config"] == meta["config"] and md["serving"]["micro_batching"] is False
        assert md["serving"]["limits"] == {"max_texts": 64, "max_text_bytes": 1000, "max_body_bytes": 200000}
        client.post("/predict", json={"texts": ["a", "b", "c"]})
        text = client.get("/metrics").text
        assert client.get("/docs").status_code == 200
        schema = client.get("/openapi.json").json()
    assert re.search(r'^textclf_requests_total\{route="/predict",method="POST",status="200"\} \d+$', text, re.M)
    assert 'textclf_request_duration_seconds_bucket{route="/predict",le="+Inf"}' in text
    assert re.search(r"^textclf_request_texts_count \d+$", text, re.M)
    assert re.search(r'^textclf_batch_size_bucket\{le="4.0"\} \d+$', text, re.M)
    assert 'textclf_model_info{backend="torch",kind="fasttext"} 1' in text
    assert "textclf_model_ready 1.0" in text
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "texts" in body["properties"] and {"413", "422", "400"} <= set(schema["paths"]["/predict"]["post"]["responses"])


def test_api_key_is_required_when_set(ft_model):
    proc, url = start_server(ft_model, env={"TEXTCLF_API_KEY": "s3cret"})
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            body = {"texts": ["hello"]}
            r = client.post("/predict", json=body)
            assert r.status_code == 401 and "API key" in r.json()["detail"]
            assert client.post("/predict", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert client.post("/predict", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
            assert client.post("/predict", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
            assert client.get("/metadata").status_code == 401
            assert client.get("/metrics").status_code == 401
            assert client.get("/metrics", headers={"X-API-Key": "s3cret"}).status_code == 200
            assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 200
    finally:
        assert stop(proc) in (0, -15, 143)


def test_serve_errors_are_one_line(ft_model, tmp_path):
    result = CliRunner().invoke(cli, ["serve", "--model_path", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "model directory not found" in result.output and "Traceback" not in result.output
    from textclf.cli.serve_cmd import bind

    sock = bind("127.0.0.1", 0)
    try:
        result = CliRunner().invoke(cli, ["serve", "--model_path", str(ft_model), "--port", str(sock.getsockname()[1])])
        assert result.exit_code == 2 and "cannot listen on 127.0.0.1" in result.output
    finally:
        sock.close()


# --------------------------------------------------------------------------- micro-batching


class SlowPredictor(Predictor):
    """A fake neural model: each call costs 40 ms whatever the batch size; label = first letter of the text."""

    kind = "slow_fake"

    def __init__(self):
        super().__init__("", {"labels": ["a", "b"], "kind": "slow_fake"})
        self.calls: list[int] = []

    @classmethod
    def load(cls, model_dir, meta=None, model_file=None):
        return cls()

    def predict_proba(self, texts):
        self.calls.append(len(texts))
        time.sleep(0.04)
        return np.array([[0.9, 0.1] if t.startswith("a") else [0.2, 0.8] for t in texts])


async def _fire(url: str, texts: list[str], concurrency: int) -> list[str]:
    async with httpx.AsyncClient(base_url=url, timeout=60,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        answers = await asyncio.gather(*[client.post("/predict", json={"texts": [t]}) for t in texts])
    assert all(a.status_code == 200 for a in answers)
    return [a.json()["predictions"][0]["label"] for a in answers]


def test_micro_batching_merges_concurrent_requests():
    texts = [("a" if i % 3 else "b") + f" text {i}" for i in range(48)]
    fake = SlowPredictor()
    app = create_app(ServeSettings(max_batch_size=16, max_wait_ms=5), predictor=fake)
    with serve_in_thread(app) as url:
        labels = asyncio.run(_fire(url, texts, 48))
        text = httpx.get(f"{url}/metrics").text
    assert labels == ["a" if t.startswith("a") else "b" for t in texts]  # each request got its own rows back
    assert max(fake.calls) > 1 and sum(fake.calls) == 48 and max(fake.calls) <= 16
    assert len(fake.calls) <= 12  # 48 one-text requests in a few model calls, not 48
    count = int(re.search(r"^textclf_batch_size_count (\d+)$", text, re.M).group(1))
    assert count == len(fake.calls)

    unbatched = SlowPredictor()
    with serve_in_thread(create_app(ServeSettings(batching="off"), predictor=unbatched)) as url:
        asyncio.run(_fire(url, texts[:16], 16))
    assert unbatched.calls == [1] * 16  # batching off: one model call per request (throughput: make bench_serve)


def test_a_failing_request_does_not_fail_its_batch_neighbours():
    class Picky(SlowPredictor):
        def predict_proba(self, texts):
            if any("boom" in t for t in texts):
                raise ValueError("boom text")
            return super().predict_proba(texts)

    with serve_in_thread(create_app(ServeSettings(max_wait_ms=20), predictor=Picky())) as url:
        async def go():
            async with httpx.AsyncClient(base_url=url, timeout=60) as client:
                return await asyncio.gather(*[client.post("/predict", json={"texts": [t]})
                                              for t in ["a1", "boom", "b2", "a3"]])

        answers = asyncio.run(go())
    assert [a.status_code for a in answers] == [200, 500, 200, 200]
    assert answers[1].json()["detail"] == "prediction failed: ValueError: boom text"


# --------------------------------------------------------------------------- property tests of the payloads

TEXT = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "\t\n", "\x00", "\x00a\x00", "\r\n\r", "\ufeffbom",
                                                         "a,b \"c\" 'd'", "x" * 3000, "é" * 600]))


@pytest.fixture(scope="module")
def client(ft_model):
    from starlette.testclient import TestClient

    predictor = textclf.load_predictor(ft_model)
    app = create_app(ServeSettings(limits=Limits(max_texts=8, max_text_bytes=1024, max_body_bytes=64 * 1024)),
                     predictor=predictor)
    with TestClient(app, raise_server_exceptions=False) as c:
        c.predictor = predictor
        yield c


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(texts=st.lists(TEXT, max_size=10))
def test_any_text_list_is_answered_or_refused_cleanly(client, texts):
    r = client.post("/predict", json={"texts": texts})
    sizes = [len(t.encode("utf-8", "surrogatepass")) for t in texts]
    if len(texts) > 8 or any(s > 1024 for s in sizes):
        assert r.status_code == 413
    elif any(0xD800 <= ord(c) <= 0xDFFF for t in texts for c in t):
        assert r.status_code == 422 and "lone surrogate" in r.json()["detail"]
    else:
        assert r.status_code == 200, r.text
        assert [p["label"] for p in r.json()["predictions"]] == client.predictor.predict(texts)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(st.binary(max_size=200), st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["texts", "probabilities", "x"]), inner,
                                                                 max_size=3), max_leaves=12).map(
    lambda v: json.dumps(v).encode())))
def test_arbitrary_bodies_never_crash_the_server(client, body):
    r = client.post("/predict", content=body)
    assert r.status_code in (200, 400, 413, 422), r.text
    assert "\n" not in r.json().get("detail", "")
    assert client.get("/health").status_code == 200


def test_one_megabyte_text_and_nul_bytes(client, ft_model):
    r = client.post("/predict", json={"texts": ["a" * (1 << 20)]})
    assert r.status_code == 413
    r = client.post("/predict", json={"texts": ["nul\x00inside", "bom\ufeff", "mixed\r\nline\rends\n"]})
    assert r.status_code == 200
    assert len(r.json()["predictions"]) == 3


# --------------------------------------------------------------------------- other kinds


def test_serves_a_plugin_family_and_an_ensemble(tmp_path, tweets, ft_model):
    from starlette.testclient import TestClient

    plugin = REPO / "examples" / "plugins" / "tfidf_logreg.py"
    out = tmp_path / "tfidf"
    runner = CliRunner()
    result = runner.invoke(cli, ["--code", str(plugin), "train", "tfidf_logreg", "--train_path", str(tweets["train"]),
                                 "--valid_path", str(tweets["valid"]), "--output_dir", str(out)])
    assert result.exit_code == 0, result.output
    ens = tmp_path / "ens"
    # a stacking ensemble (what auto picks for these two; auto's 5-fold comparison is test_compare's business)
    result = runner.invoke(cli, ["ensemble", "--model_path", str(ft_model), "--model_path", str(out), "--valid_path",
                                 str(tweets["valid"]), "--output_dir", str(ens), "--method", "stacking"])
    assert result.exit_code == 0, result.output
    texts = read_labelled(tweets["test"]).texts[:40]
    for model in (out, ens):
        predictor = textclf.load_predictor(model)
        with TestClient(create_app(ServeSettings(model_path=str(model)))) as c:
            deadline = time.monotonic() + 60
            while c.get("/ready").status_code != 200:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            answer = c.post("/predict", json={"texts": texts}).json()["predictions"]
            assert c.get("/metadata").json()["kind"] == predictor.kind
        assert [p["label"] for p in answer] == predictor.predict(texts)


def test_model_that_fails_to_load_is_not_ready(tmp_path):
    from starlette.testclient import TestClient

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "meta.json").write_text('{"kind": "fasttext", "labels": ["a", "b"]}')
    with TestClient(create_app(ServeSettings(model_path=str(bad)))) as c:
        deadline = time.monotonic() + 30
        while True:
            r = c.get("/ready")
            if "failed" in r.json().get("detail", "") or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert r.status_code == 503 and "model.bin" in r.json()["detail"]
        assert c.post("/predict", json={"texts": ["a"]}).status_code == 503
        assert c.get("/health").status_code == 200


@pytest.mark.slow
def test_two_workers(ft_model):
    proc, url = start_server(ft_model, "--workers", "2", timeout=180)
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            labels = {client.post("/predict", json={"texts": ["I love it"]}).json()["predictions"][0]["label"]
                      for _ in range(20)}
        assert labels == {textclf.load_predictor(ft_model).predict(["I love it"])[0]}
    finally:
        stop(proc)


def test_container_healthcheck(tmp_path, monkeypatch):
    from textclf.cli.serve_cmd import bind
    from textclf.services.serving import healthcheck

    health = tmp_path / "health.json"
    monkeypatch.setenv("TEXTCLF_HEALTH_FILE", str(health))
    assert healthcheck.main() == 0  # not a server (train, tune): nothing to check
    with serve_in_thread(create_app(ServeSettings(), predictor=SlowPredictor())) as url:
        health.write_text(json.dumps({"port": int(url.rsplit(":", 1)[1])}))
        assert healthcheck.main() == 0
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    health.write_text(json.dumps({"port": port}))
    assert healthcheck.main() == 1

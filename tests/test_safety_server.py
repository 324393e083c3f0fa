"""`textclf serve` under hostile clients (issue 23): a real server process, raw sockets.

Slow and idle clients are cut off by the header and body timeouts, a short body is answered 400
(or logged in one line when the client left), huge numbers and repeated keys are 400, a body that
is not JSON by its Content-Type is 415, the connection cap answers 503, and SIGTERM drains:
``/ready`` turns 503, the request in flight completes, the process exits 0. A hypothesis harness
throws raw HTTP requests at the server: never a 500, never a traceback in its log, always alive.

Timing: the only time bounds asserted are generous upper bounds on the timeouts under test (the
server must close a connection within its timeout plus slack); everything else is ordered by
events (a request in flight is one whose body has not been sent yet), not by the clock.
"""

from __future__ import annotations

import json
import select
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).parent))
from conftest import ServeProcess  # noqa: E402

#: slack over a timeout before "the server never closed it" fails (a busy 2-core machine; the point is
#: closed after seconds, not held for minutes as before)
SLACK_S = 20.0
HEADER_TIMEOUT, BODY_TIMEOUT = 1.0, 2.0
JSON_HEADERS = b"Content-Type: application/json\r\n"



@pytest.fixture(scope="module")
def server(ft_model):
    srv = ServeProcess(ft_model, "--header_timeout", str(HEADER_TIMEOUT), "--body_timeout", str(BODY_TIMEOUT),
                       "--max_body_bytes", "200000")
    yield srv
    assert srv.stop() == 0
    assert "Traceback" not in srv.log() and "Exception in ASGI" not in srv.log(), srv.log()


def connect(srv: ServeProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    sock.settimeout(HEADER_TIMEOUT + BODY_TIMEOUT + SLACK_S)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (socket.timeout: it never did)."""
    out = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return out
        if not chunk:
            return out
        out += chunk


def request(srv: ServeProcess, body: bytes, headers: bytes = JSON_HEADERS, path: bytes = b"/predict") -> tuple[int, bytes]:
    """One ``POST`` on a new connection (Connection: close): status and body of the answer."""
    with connect(srv) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: t\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (path, headers, len(body), body))
        answer = read_until_closed(sock)
    head, _, payload = answer.partition(b"\r\n\r\n")
    return int(head[9:12]), payload


def detail(payload: bytes) -> str:
    return json.loads(payload)["detail"]


def alive(srv: ServeProcess) -> bool:
    return request(srv, b'{"texts": ["still here"]}')[0] == 200


# --------------------------------------------------------------------------- slow and idle clients


def test_idle_and_slowloris_connections_are_closed_and_others_are_served(server):
    idle = [connect(server) for _ in range(10)]
    partial = [connect(server) for _ in range(10)]
    for sock in partial:  # headers that never end
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nX-Slow: 1\r\n")
    assert alive(server)  # 20 held connections do not block another client
    start = time.monotonic()
    answers = [read_until_closed(sock) for sock in idle + partial]
    # bound: the behaviour under test is "closed after --header_timeout", not held for 40 s and more as before
    assert time.monotonic() - start < HEADER_TIMEOUT + SLACK_S
    assert answers[:10] == [b""] * 10  # nothing sent: closed without a word
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers[10:])
    for sock in idle + partial:
        sock.close()
    assert "request headers not complete within 1s (--header_timeout)" in server.log()
    assert alive(server)


@pytest.mark.slow  # a slow client over seconds (quick: test_a_body_shorter_than_its_content_length)
def test_a_body_sent_one_byte_at_a_time_is_cut_off(server):
    body = b'{"texts": ["' + b"a" * 200 + b'"]}'  # 215 bytes at 20 a second: 10 s, over --body_timeout 2
    with connect(server) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\n%sContent-Length: %d\r\n\r\n" % (JSON_HEADERS, len(body)))
        start, sent = time.monotonic(), 0
        while sent < len(body) and not select.select([sock], [], [], 0.05)[0]:  # until the server answers
            # bound: the behaviour under test is the --body_timeout cut-off (held for 40 s and more before)
            assert time.monotonic() - start < BODY_TIMEOUT + SLACK_S, "the slow body was never cut off"
            sock.sendall(body[sent:sent + 1])
            sent += 1
        answer = read_until_closed(sock)
    assert sent < len(body)
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert b"request body incomplete after 2s (--body_timeout)" in answer and b"of %d bytes" % len(body) in answer
    assert alive(server)


def test_a_slow_body_to_a_route_that_does_not_read_it_is_cut_off(server):
    with connect(server) as sock:
        sock.sendall(b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\n")
        head = sock.recv(65536)
        assert head.startswith(b"HTTP/1.1 405 ")  # answered at once; the body never comes
        start = time.monotonic()
        assert b"HTTP/1.1" not in read_until_closed(sock)
        assert time.monotonic() - start < BODY_TIMEOUT + SLACK_S  # bound: the protocol's body cut-off under test
    assert "request body not complete within 2s (--body_timeout)" in server.log()


def test_a_body_shorter_than_its_content_length(server):
    head = b"POST /predict HTTP/1.1\r\nHost: t\r\n%sContent-Length: 100\r\n\r\n{\"texts\"" % JSON_HEADERS
    with connect(server) as sock:  # the client waits for an answer: 400 at the body timeout
        sock.sendall(head)
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"connection: close" in answer.lower()
    assert detail(answer.partition(b"\r\n\r\n")[2]) == "request body incomplete after 2s (--body_timeout): 8 of 100 bytes"

    with connect(server) as sock:  # the client leaves: one log line, no traceback
        sock.sendall(head)
        time.sleep(0.2)
    deadline = time.monotonic() + SLACK_S
    while "client disconnected after 8 of 100 bytes of the request body" not in server.log():
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.05)
    assert "Traceback" not in server.log() and "ClientDisconnect" not in server.log()
    assert alive(server)


def test_the_connection_cap_answers_503(ft_model):
    srv = ServeProcess(ft_model, "--max_connections", "4")
    try:
        held = [connect(srv) for _ in range(4)]
        time.sleep(0.2)  # let the server accept them
        status, payload = request(srv, b'{"texts": ["a"]}')
        assert status == 503 and payload == b"Service Unavailable"
        for sock in held:
            sock.close()
        deadline = time.monotonic() + SLACK_S
        while not alive(srv):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        assert srv.stop() == 0


# --------------------------------------------------------------------------- lenient input, now refused


@pytest.mark.parametrize("body,message", [
    (b'{"texts": [' + b"1" * 100000 + b"]}", "request body holds a number of 100000 characters; at most 100"),
    (b'{"texts": ["a"], "probabilities": 0.' + b"5" * 5000 + b"}", "a number of 5002 characters"),
    (b'{"texts": [' + b"9" * 5000 + b"]}", "a number of 5000 characters"),  # over int's 4300 digits
    (b'{"texts": ["a"], "texts": ["b"]}', "request body repeats the key 'texts' in one object"),
    (b'{"texts": ["a"], "probabilities": true, "probabilities": false}', "repeats the key 'probabilities'"),
    (b'{"texts": [{"x": 1, "x": 2}]}', "repeats the key 'x'"),
])
def test_huge_numbers_and_repeated_keys_are_400(server, body, message):
    status, payload = request(server, body)
    assert status == 400 and message in detail(payload)


@pytest.mark.parametrize("content_type,status,message", [
    (b"text/plain", 415, "Content-Type must be application/json, got text/plain"),
    (b"application/x-www-form-urlencoded", 415, "got application/x-www-form-urlencoded"),
    (None, 415, "Content-Type must be application/json, none given"),
    (b"application/json; charset=latin-1", 415, "charset must be utf-8, got latin-1"),
    (b"application/json; charset=UTF-8", 200, None),
    (b"Application/JSON", 200, None),
])
def test_content_type_must_be_json(server, content_type, status, message):
    headers = b"" if content_type is None else b"Content-Type: %s\r\n" % content_type
    got, payload = request(server, b'{"texts": ["a"]}', headers)
    assert got == status, payload
    if message:
        assert message in detail(payload)


def test_a_bad_chunk_after_an_early_refusal_is_no_traceback(server):
    """Found by the fuzz harness: 415 answered before the body, then h11 fails on the chunk: uvicorn's 400, one answer."""
    with connect(server) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                     b"Connection: close\r\n\r\n\x00garbage\r\n\r\n")
        answer = read_until_closed(sock)
    assert answer.count(b"HTTP/1.1 ") == 1 and answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 415 "))
    time.sleep(0.2)
    assert "Traceback" not in server.log()


# --------------------------------------------------------------------------- shutdown


def _sigterm_drain(srv: ServeProcess) -> None:
    """A request in flight at SIGTERM completes; /ready answers 503 meanwhile; then the process exits 0."""
    body = b'{"texts": ["I love it"]}'
    with connect(srv) as inflight:
        inflight.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\n%sContent-Length: %d\r\n\r\n%s"
                         % (JSON_HEADERS, len(body), body[:5]))
        time.sleep(0.3)  # the request is in the server (headers read, body awaited)
        srv.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + SLACK_S
        while True:  # draining: /ready 503 (a worker: every one drains, each gets the signal)
            r = httpx.get(f"{srv.url}/ready", timeout=5)
            if r.status_code == 503:
                break
            assert time.monotonic() < deadline, "/ready never turned 503"
            time.sleep(0.05)
        assert r.json() == {"detail": "shutting down: finishing the requests in flight"}
        assert r.headers["connection"] == "close"
        assert srv.proc.poll() is None
        inflight.sendall(body[5:])
        answer = read_until_closed(inflight)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["predictions"][0]["label"] in ("positive", "negative")
    assert srv.proc.wait(timeout=SLACK_S + 10) == 0
    srv._reader.join(timeout=5)
    assert "SIGTERM: draining" in srv.log() and "Traceback" not in srv.log()


def test_sigterm_drains_then_exits_0(ft_model):
    _sigterm_drain(ServeProcess(ft_model, "--graceful_timeout", "30", "--body_timeout", "60"))


@pytest.mark.slow  # waits out a graceful timeout (quick: test_sigterm_drains_then_exits_0)
def test_sigterm_drain_is_bounded_by_graceful_timeout(ft_model):
    srv = ServeProcess(ft_model, "--graceful_timeout", "1", "--body_timeout", "600")
    with connect(srv) as stuck:  # a request whose body never comes
        stuck.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\n%sContent-Length: 50\r\n\r\n{" % JSON_HEADERS)
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        # bound: --graceful_timeout 1 in the drain and 1 in uvicorn's shutdown, not --body_timeout's 600 s
        assert srv.proc.wait(timeout=2 + SLACK_S) == 0
    srv._reader.join(timeout=5)
    assert "1 request(s) still running after 1s" in srv.log()


def test_ctrl_c_stops_the_server_with_one_line_and_exit_130(ft_model):
    # a child of a background job inherits SIGINT ignored: give the server the default handler, as a terminal does
    srv = ServeProcess(ft_model, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert httpx.post(f"{srv.url}/predict", json={"texts": ["good day"]}, timeout=30).status_code == 200
    srv.proc.send_signal(signal.SIGINT)
    assert srv.proc.wait(timeout=SLACK_S) == 130
    srv._reader.join(timeout=5)
    log = srv.log()
    assert log.rstrip().splitlines()[-1] == "Interrupted: textclf serve stopped (Ctrl-C)", log
    assert "Traceback" not in log and "Aborted!" not in log, log


@pytest.mark.slow
def test_sigterm_drains_every_worker(ft_model):
    _sigterm_drain(ServeProcess(ft_model, "--workers", "2", "--graceful_timeout", "30", "--body_timeout", "60",
                                timeout=180, ready_runs=10))


# --------------------------------------------------------------------------- fuzzing raw HTTP


JSON_VALUE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10)
    | st.integers(min_value=10**150, max_value=10**200),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(["texts", "probabilities", "x"]),
                                                                inner, max_size=3), max_leaves=12)


def _with_repeated_key(value) -> bytes:
    text = json.dumps(value)
    return (text[:-1] + ', "texts": ["dup"]}').encode() if isinstance(value, dict) and value else text.encode()


BODY = st.one_of(
    st.binary(max_size=300),
    JSON_VALUE.map(lambda v: json.dumps(v).encode()),
    JSON_VALUE.map(_with_repeated_key),
    st.builds(lambda n, d: b'{"texts": [' + d * n + b"]}", st.integers(1, 20000), st.sampled_from([b"7", b"1.", b"["])),
)
CONTENT_TYPE = st.sampled_from([b"application/json", b"application/json; charset=utf-8", b"text/plain", b"",
                                b"application/json; charset=latin-1", b"multipart/form-data; boundary=x"])
EXTRA_HEADER = st.sampled_from([b"", b"Transfer-Encoding: chunked\r\n", b"Expect: 100-continue\r\n",
                                b"X-Api-Key: nope\r\n", b"Content-Length: 3\r\n", b"Host: second\r\n"])


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=BODY, content_type=CONTENT_TYPE, extra=EXTRA_HEADER,
       path=st.sampled_from([b"/predict", b"/predict", b"/health", b"/ready", b"/nope", b"/metrics"]),
       method=st.sampled_from([b"POST", b"POST", b"GET", b"PUT"]), extra_bytes=st.sampled_from([b"", b"garbage\r\n\r\n"]))
@pytest.mark.slow  # hypothesis fuzzing of raw HTTP
def test_raw_http_fuzz_never_500_never_a_traceback(server, body, content_type, extra, path, method, extra_bytes):
    head = b"%s %s HTTP/1.1\r\nHost: t\r\n" % (method, path)
    if content_type:
        head += b"Content-Type: %s\r\n" % content_type
    with connect(server) as sock:
        sock.sendall(head + extra + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body + extra_bytes)
        answer = read_until_closed(sock)
    while answer.startswith(b"HTTP/1.1 100 "):  # Expect: 100-continue: the answer follows
        answer = answer.partition(b"\r\n\r\n")[2]
    if answer:  # a request h11 refuses outright may be closed unanswered
        assert int(answer[9:12]) < 500, answer[:300]
        payload = answer.partition(b"\r\n\r\n")[2]
        if payload.startswith(b'{"detail"'):
            assert "\n" not in detail(payload)
    assert "Traceback" not in server.log() and "Exception in ASGI" not in server.log(), server.log()[-3000:]
    assert alive(server)

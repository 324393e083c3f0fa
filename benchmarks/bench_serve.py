"""Bounded load test of `textclf serve` on loopback: throughput, p50/p99 latency and errors at concurrency 1, 8, 64.

Models (built in a work folder unless ``--keep`` already holds them):

  fasttext        fastText on tweets_sentiment, fixed parameters (no search)
  minilm_torch    the shipped all-MiniLM-L6-v2 fine-tuned with config/bert_smoke.json (bench_export.prepare_minilm),
                  served by PyTorch (``--backend torch``)
  minilm_onnx     the same model exported with ``textclf export --quantize int8`` (``--backend onnx``, int8)
  ensemble        ``textclf ensemble`` of the fastText model and a second fastText model (char n-grams)

Each model is served by ``textclf serve --port 0`` in its own process (one uvicorn worker; neural
models micro-batch: ``--max_batch_size 64 --max_wait_ms 2``). The load comes from this process:
``concurrency`` keep-alive connections, each sending ``POST /predict`` with one test tweet at a time
and waiting for the answer. Two async clients (``--clients``):

  raw    asyncio streams speaking HTTP/1.1 (about 70 us of CPU a request here): measures the server
  httpx  ``httpx.AsyncClient`` (about 1.5-1.9 ms of CPU a request on this machine, so one client
         process tops out near 550 requests/s whatever the server does): the usual Python client

Every loop is bounded: at most ``--max_requests`` requests and ``--seconds`` seconds per level,
after ``--warmup`` requests; nothing leaves 127.0.0.1. Errors count non-200 answers, exceptions,
and labels that differ from ``Predictor.predict`` in this process on the same text. The same run
also times ``Predictor.predict`` in-process: one text per call (what a request does) and 64 texts
per call (what a full micro-batch does).

Slow clients (issue 23): for the ``--slow_client_models`` (fastText), the raw load at concurrency
``--slow_client_concurrency`` (8) runs twice on the same server, alone and with ``--slow_clients``
(200) idle connections held open (each sends part of a request head, then nothing; one the server
closes at its ``--header_timeout`` is opened again), alternated ``--slow_client_repeats`` (3) times;
the medians of the p99s are compared.

Targets (issue 15, this 2-core machine): fastText at concurrency 8 >= 1,000 requests/s with p99 < 50 ms;
MiniLM at concurrency 64 >= 3x its concurrency-1 throughput; (issue 23) p99 with the slow clients
within 2x of the p99 without them. Writes ``benchmarks/results/serve.json``::

    python benchmarks/bench_serve.py
    python benchmarks/bench_serve.py --keep /tmp/serve_models --models fasttext,minilm_onnx --seconds 5
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import click
from bench_common import REPO, machine_info, make_echo, utc_now
from bench_export import DATA, TEXTCLF, prepare_minilm, run_cli

RESULTS = REPO / "benchmarks" / "results" / "serve.json"
PACKAGES = ("textclf", "fastapi", "uvicorn", "httpx", "onnxruntime", "torch", "fasttext-community")
MODELS = ("fasttext", "minilm_torch", "minilm_onnx", "ensemble")
HOST = "127.0.0.1"


def prepare(work: Path, names: list[str], echo) -> dict[str, tuple[Path, str | None]]:
    """The model directory and backend of every benchmarked model (trained here when missing)."""
    out: dict[str, tuple[Path, str | None]] = {}
    ft = work / "fasttext"
    if any(n in names for n in ("fasttext", "ensemble")) and not (ft / "meta.json").exists():
        echo("training fastText")
        run_cli("train", "fasttext", "--train_path", str(DATA / "train.csv"), "--valid_path", str(DATA / "valid.csv"),
                "--output_dir", str(ft), "--n_trials", "0", "--set", "model.bucket=200000")
    if "fasttext" in names:
        out["fasttext"] = (ft, None)
    if "ensemble" in names:
        ens, ft2 = work / "ensemble", work / "fasttext_char"
        if not (ft2 / "meta.json").exists():
            run_cli("train", "fasttext", "--train_path", str(DATA / "train.csv"), "--valid_path", str(DATA / "valid.csv"),
                    "--output_dir", str(ft2), "--n_trials", "0", "--set", "model.minn=2", "--set", "model.maxn=5",
                    "--set", "model.bucket=200000", "--set", "model.wordNgrams=1")
        if not (ens / "meta.json").exists():
            echo("building the ensemble")
            run_cli("ensemble", "--model_path", str(ft), "--model_path", str(ft2), "--valid_path", str(DATA / "valid.csv"),
                    "--output_dir", str(ens))
        out["ensemble"] = (ens, None)
    if any(n.startswith("minilm") for n in names):
        minilm = prepare_minilm(work, echo=echo)
        if "minilm_torch" in names:
            out["minilm_torch"] = (minilm, "torch")
        if "minilm_onnx" in names:
            out["minilm_onnx"] = (minilm, "onnx")
    return out


class Server:
    """``textclf serve --port 0`` in a subprocess, stopped on exit."""

    def __init__(self, model: Path, backend: str | None, extra: list[str]):
        cmd = [str(TEXTCLF), "serve", "--model_path", str(model), "--host", HOST, "--port", "0", *extra]
        if backend:
            cmd += ["--backend", backend]
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        env.pop("TEXTCLF_API_KEY", None)
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.url = None

    def __enter__(self) -> Server:
        import httpx

        deadline = time.monotonic() + 300
        while self.url is None:
            line = self.proc.stderr.readline()
            if not line and self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}")
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
            if m:
                self.url = m.group(1)
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()
        ready = 0
        while time.monotonic() < deadline:
            try:  # with --workers N each worker loads on its own: wait for a run of ready answers
                ready = ready + 1 if httpx.get(f"{self.url}/ready", timeout=5).status_code == 200 else 0
            except httpx.HTTPError:
                ready = 0
            if ready >= 20:
                return self
            time.sleep(0.05 if ready else 0.3)
        raise RuntimeError("server never became ready")

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values (nearest rank)."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


class RawConnection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: ``POST path`` with a JSON body, read the answer."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                          % (path.encode(), self.host.encode(), len(body), body))
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


async def load(url: str, texts: list[str], expected: list[str], concurrency: int, seconds: float, max_requests: int,
               warmup: int, client_kind: str = "raw") -> dict:
    """``concurrency`` connections sending one text per request until ``seconds`` or ``max_requests`` (after a warm-up)."""
    import httpx

    host, port = url.rsplit("//", 1)[1].split(":")
    bodies = [json.dumps({"texts": [t]}).encode() for t in texts]
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        pool = [RawConnection(host, int(port)) for _ in range(concurrency)]

        async def one(i: int, slot: int) -> tuple[float, bool, bool]:
            start = time.perf_counter()
            try:
                if client_kind == "raw":
                    status, payload = await asyncio.wait_for(pool[slot].post("/predict", bodies[i % len(texts)]), 30)
                else:
                    r = await client.post("/predict", content=bodies[i % len(texts)],
                                          headers={"content-type": "application/json"})
                    status, payload = r.status_code, r.content
                ok = status == 200
                same = ok and json.loads(payload)["predictions"][0]["label"] == expected[i % len(texts)]
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, TimeoutError, ValueError):
                ok = same = False
            return time.perf_counter() - start, ok, same

        counter = iter(range(10**9))
        for start in range(0, min(warmup, max_requests), concurrency):
            await asyncio.gather(*[one(next(counter), k) for k in range(min(concurrency, warmup - start))])
        latencies: list[float] = []
        errors = mismatches = 0
        stop_at = time.perf_counter() + seconds
        issued = 0

        async def worker(slot: int) -> None:
            nonlocal errors, mismatches, issued
            while issued < max_requests and time.perf_counter() < stop_at:
                issued += 1
                took, ok, same = await one(next(counter), slot)
                latencies.append(took)
                errors += not ok
                mismatches += ok and not same

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*[worker(k) for k in range(concurrency)]), timeout=seconds + 120)
        elapsed = time.perf_counter() - start
        for conn in pool:
            await conn.close()
    latencies.sort()
    return {"client": client_kind, "concurrency": concurrency, "requests": len(latencies), "seconds": round(elapsed, 2),
            "requests_per_s": round(len(latencies) / elapsed, 1), "p50_ms": round(1000 * percentile(latencies, 0.5), 2),
            "p99_ms": round(1000 * percentile(latencies, 0.99), 2), "errors": errors + mismatches,
            "label_mismatches": mismatches}


async def hold_idle(host: str, port: int, n: int, stop: asyncio.Event, stats: dict) -> None:
    """``n`` connections sending part of a request head and then nothing until ``stop``; re-opened when the server closes one."""
    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                stats["refused"] += 1
                await asyncio.sleep(0.2)
                continue
            stats["opened"] += 1
            writer.write(b"POST /predict HTTP/1.1\r\nHost: slow\r\n")
            read = asyncio.ensure_future(reader.read())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({read, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if read.done():
                stats["closed_by_server"] += 1
            for task in (read, stopped):
                task.cancel()
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    await asyncio.gather(*[one() for _ in range(n)])


async def with_slow_clients(url: str, texts: list[str], expected: list[str], concurrency: int, seconds: float,
                            max_requests: int, warmup: int, idle: int, repeats: int) -> dict:
    """The raw load alone and with ``idle`` slow connections held open, alternated ``repeats`` times; median p99s and ratio.

    Alternating (and new load connections each run) spreads the machine's other load and the
    workers' share of the load connections over both sides.
    """
    host, port = url.rsplit("//", 1)[1].split(":")
    runs: dict[str, list[dict]] = {"without": [], "with": []}
    stats = {"opened": 0, "closed_by_server": 0, "refused": 0}
    held = 0
    for _ in range(repeats):
        runs["without"].append(await load(url, texts, expected, concurrency, seconds, max_requests, warmup, "raw"))
        stop = asyncio.Event()
        before = stats["opened"]
        holder = asyncio.ensure_future(hold_idle(host, int(port), idle, stop, stats))
        deadline = time.perf_counter() + 30
        while stats["opened"] - before < idle and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        held = min(held or idle, stats["opened"] - before)
        try:
            runs["with"].append(await load(url, texts, expected, concurrency, seconds, max_requests, warmup, "raw"))
        finally:
            stop.set()
            await holder

    def summary(rows: list[dict]) -> dict:
        return {key: statistics.median(r[key] for r in rows) for key in ("requests_per_s", "p50_ms", "p99_ms")} | {
            "concurrency": concurrency, "requests": sum(r["requests"] for r in rows),
            "errors": sum(r["errors"] for r in rows), "runs": rows}

    without, loaded = summary(runs["without"]), summary(runs["with"])
    return {"idle_connections": idle, "held_at_start": held, "idle_stats": stats, "repeats": repeats,
            "without": without, "with": loaded, "p99_ratio": round(loaded["p99_ms"] / max(without["p99_ms"], 1e-9), 2)}


def in_process(model: Path, backend: str | None, texts: list[str], seconds: float,
               threads: int | None) -> tuple[dict, list[str]]:
    """``Predictor.predict`` in this process: one text per call and 64 per call; also the expected labels."""
    from textclf.core.loading import load_predictor
    from textclf.core.onnx_runtime import THREADS_ENV
    from textclf.services.serving.app import apply_thread_limit

    if threads:
        os.environ[THREADS_ENV] = str(threads)
    predictor = load_predictor(model, backend=backend)
    apply_thread_limit()
    expected = predictor.predict(texts)
    out = {"backend": getattr(predictor, "backend", "torch")}
    for size in (1, 64):
        predictor.predict(texts[:size])
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds and n < 20000:
            batch = [texts[(n + j) % len(texts)] for j in range(size)]
            predictor.predict(batch)
            n += size
        out[f"docs_per_s_batch_{size}"] = round(n / (time.perf_counter() - start), 1)
    return out, expected


def tables(results: dict) -> str:
    """Markdown: one row per model and concurrency."""
    rows = ["| model | client | concurrency | requests | req/s | p50 ms | p99 ms | errors | in-process predict docs/s "
            "(1 / 64 a call) |", "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in results.items():
        base = r["in_process"]
        for level in r["levels"]:
            rows.append(f"| {name} | {level['client']} | {level['concurrency']} | {level['requests']} | "
                        f"{level['requests_per_s']:.0f} | "
                        f"{level['p50_ms']:.1f} | {level['p99_ms']:.1f} | {level['errors']} | "
                        f"{base['docs_per_s_batch_1']:.0f} / {base['docs_per_s_batch_64']:.0f} |")
    return "\n".join(rows)


def check_targets(results: dict) -> dict:
    """The issue's two targets, measured."""
    out = {}
    for client in ("raw", "httpx"):
        ft = {lvl["concurrency"]: lvl for lvl in results.get("fasttext", {}).get("levels", []) if lvl["client"] == client}
        if 8 in ft:
            out[f"fasttext_c8_{client}"] = {"requests_per_s": ft[8]["requests_per_s"], "p99_ms": ft[8]["p99_ms"],
                                            "met": ft[8]["requests_per_s"] >= 1000 and ft[8]["p99_ms"] < 50}
    for name in ("minilm_torch", "minilm_onnx"):
        levels = {lvl["concurrency"]: lvl for lvl in results.get(name, {}).get("levels", []) if lvl["client"] == "raw"}
        if 1 in levels and 64 in levels:
            ratio = levels[64]["requests_per_s"] / max(levels[1]["requests_per_s"], 1e-9)
            out[f"{name}_c64_over_c1"] = {"ratio": round(ratio, 2), "met": ratio >= 3}
    for name, r in results.items():
        if "slow_clients" in r:
            sc = r["slow_clients"]
            out[f"{name}_slow_clients_p99_ratio"] = {"ratio": sc["p99_ratio"], "met": sc["p99_ratio"] <= 2}
    out["zero_errors"] = all(lvl["errors"] == 0 for r in results.values()
                             for lvl in [*r["levels"], *([r["slow_clients"]["without"], r["slow_clients"]["with"]]
                                                         if "slow_clients" in r else [])])
    return out


def slow_client_table(results: dict) -> str:
    """Markdown: the p99 of the normal load without and with the idle connections."""
    rows = ["| model | concurrency | idle connections | runs | req/s without / with | p50 ms without / with | "
            "p99 ms without / with | p99 ratio | errors |", "|---|---:|---:|---:|---|---|---|---:|---:|"]
    for name, r in results.items():
        if "slow_clients" not in r:
            continue
        sc = r["slow_clients"]
        a, b = sc["without"], sc["with"]
        rows.append(f"| {name} | {a['concurrency']} | {sc['held_at_start']} | {sc['repeats']} x 2 | {a['requests_per_s']:.0f} / "
                    f"{b['requests_per_s']:.0f} | {a['p50_ms']:.1f} / {b['p50_ms']:.1f} | {a['p99_ms']:.1f} / "
                    f"{b['p99_ms']:.1f} | {sc['p99_ratio']:.2f} | {a['errors'] + b['errors']} |")
    return "\n".join(rows)


@click.command()
@click.option("--models", default=",".join(MODELS), show_default=True, help="Comma-separated subset of the models.")
@click.option("--concurrency", default="1,8,64", show_default=True, help="Comma-separated concurrency levels.")
@click.option("--seconds", type=float, default=8.0, show_default=True, help="Time cap of each level.")
@click.option("--max_requests", type=int, default=20000, show_default=True, help="Request cap of each level.")
@click.option("--warmup", type=int, default=50, show_default=True, help="Requests before each level's clock starts.")
@click.option("--clients", default="raw,httpx", show_default=True,
              help="Load clients: raw (asyncio HTTP/1.1, measures the server) and/or httpx (every level of fastText, "
              "the concurrency-8 level of the others).")
@click.option("--keep", type=click.Path(file_okay=False), default=None, help="Work folder for the models (kept; reused).")
@click.option("--workers", type=int, default=1, show_default=True, help="serve --workers for every model.")
@click.option("--threads", type=int, default=None,
              help="serve --threads for every model (default: all usable cores; 1 is faster on a busy machine).")
@click.option("--slow_clients", type=int, default=200, show_default=True,
              help="Idle connections held open during the slow-client run (0: no such run).")
@click.option("--slow_client_models", default="fasttext", show_default=True,
              help="Comma-separated models that get the slow-client run.")
@click.option("--slow_client_concurrency", type=int, default=8, show_default=True,
              help="Concurrency of the normal load in the slow-client run.")
@click.option("--slow_client_repeats", type=int, default=3, show_default=True,
              help="Alternations of the slow-client run (without, with); medians are reported.")
@click.option("--output", type=click.Path(dir_okay=False), default=str(RESULTS), show_default=True)
def main(models, concurrency, seconds, max_requests, warmup, clients, keep, workers, threads, slow_clients,
         slow_client_models, slow_client_concurrency, slow_client_repeats, output):
    """Load-test textclf serve on loopback."""
    from textclf.core.atomic import atomic_write_json
    from textclf.core.data import read_labelled

    echo = make_echo(show_elapsed=True)
    names = [m for m in models.split(",") if m]
    unknown = set(names) - set(MODELS)
    if unknown:
        raise click.BadParameter(f"unknown model(s) {sorted(unknown)}; choose from {', '.join(MODELS)}")
    levels = [int(c) for c in concurrency.split(",")]
    work = Path(keep or tempfile.mkdtemp(prefix="bench_serve-"))
    work.mkdir(parents=True, exist_ok=True)
    texts = read_labelled(DATA / "test.csv").texts
    results: dict = {}
    try:
        for name, (model, backend) in prepare(work, names, echo).items():
            base, expected = in_process(model, backend, texts, min(seconds, 5.0), threads)
            echo(f"{name}: in-process {base}")
            extra = ["--max_batch_size", "64", "--max_wait_ms", "2", "--workers", str(workers),
                     *(["--threads", str(threads)] if threads else [])]
            with Server(model, backend, extra) as server:
                rows = []
                for client in clients.split(","):
                    for c in levels:
                        if client == "httpx" and name != "fasttext" and c != 8:
                            continue
                        row = asyncio.run(load(server.url, texts, expected, c, seconds, max_requests, warmup, client))
                        echo(f"{name} {client} c={c}: {row}")
                        rows.append(row)
                results[name] = {"model": str(model), "in_process": base, "levels": rows}
                if slow_clients and name in slow_client_models.split(","):
                    sc = asyncio.run(with_slow_clients(server.url, texts, expected, slow_client_concurrency, seconds,
                                                       max_requests, warmup, slow_clients, slow_client_repeats))
                    echo(f"{name} slow clients: p99 {sc['without']['p99_ms']} ms alone, {sc['with']['p99_ms']} ms "
                         f"with {sc['held_at_start']} idle connections (x{sc['p99_ratio']})")
                    results[name]["slow_clients"] = sc
        payload = {"created": utc_now(), "machine": machine_info(PACKAGES), "load_average_1m": os.getloadavg()[0],
                   "settings": {"seconds": seconds, "max_requests": max_requests, "warmup": warmup, "levels": levels,
                                "text": "one tweet of the tweets_sentiment test split per request",
                                "server": "textclf serve --max_batch_size 64 --max_wait_ms 2", "workers": workers,
                                "threads": threads or "all usable cores",
                                "clients": {"raw": "asyncio streams, HTTP/1.1 keep-alive, one process",
                                            "httpx": "httpx.AsyncClient, one process"},
                                "slow_clients": {"idle_connections": slow_clients, "models": slow_client_models,
                                                 "concurrency": slow_client_concurrency, "repeats": slow_client_repeats,
                                                 "client": "each sends part of a request head, then nothing; "
                                                           "re-opened when the server closes it"}},
                   "results": results, "targets": check_targets(results)}
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(output, payload)
        click.echo(tables(results))
        if any("slow_clients" in r for r in results.values()):
            click.echo(slow_client_table(results))
        click.echo(f"targets: {payload['targets']}")
        echo(f"wrote {output}")
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

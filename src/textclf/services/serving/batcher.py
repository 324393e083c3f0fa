"""An asyncio micro-batcher: the texts of concurrent requests go to the model in one call.

A neural model costs about as much for 32 texts in one batch as for a few texts one at a time,
so merging concurrent requests raises throughput with concurrency. One worker task takes the
first waiting request, adds every request already queued (and, for up to ``max_wait_ms``, the
ones that arrive) until ``max_batch_size`` texts, runs the model on them in one background
thread (the event loop keeps accepting requests meanwhile) and hands each request its rows.
While a batch runs, new requests queue up, so under load batches form without waiting; a lone
request waits at most ``max_wait_ms`` (default 2 ms).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: ``fn(texts) -> (labels, probabilities)``; probabilities an array with one row per text
PredictFn = Callable[[list[str]], tuple[list[str], np.ndarray | None]]


@dataclass
class _Item:
    texts: list[str]
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    """Queue requests' texts, call ``fn`` once per micro-batch in a worker thread, split the results back."""

    def __init__(self, fn: PredictFn, max_batch_size: int = 64, max_wait_ms: float = 2.0,
                 on_batch: Callable[[int], Any] | None = None, on_depth: Callable[[int], Any] | None = None):
        self.fn = fn
        self.max_batch_size = max(1, int(max_batch_size))
        self.max_wait = max(0.0, float(max_wait_ms)) / 1000.0
        self.on_batch = on_batch
        #: told :attr:`depth` whenever requests join or leave the queue (the ``textclf_queue_depth`` gauge)
        self.on_depth = on_depth
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._carry: _Item | None = None

    @property
    def depth(self) -> int:
        """Requests waiting for a batch."""
        return (self._queue.qsize() if self._queue else 0) + (1 if self._carry else 0)

    def start(self) -> None:
        """Start the worker task (inside the running event loop)."""
        self._queue = asyncio.Queue()
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="textclf-batch")
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; requests still queued get a RuntimeError."""
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        while self._queue and not self._queue.empty():
            item = self._queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(RuntimeError("server shutting down"))
        if self._executor:
            self._executor.shutdown(wait=False)
        self._depth_changed()

    def _depth_changed(self) -> None:
        if self.on_depth is not None:
            self.on_depth(self.depth)

    async def submit(self, texts: Sequence[str]) -> tuple[list[str], np.ndarray | None]:
        """The labels and probabilities of ``texts``, computed in a micro-batch with other requests' texts."""
        if self._queue is None:
            raise RuntimeError("the batcher is not running")
        future = asyncio.get_running_loop().create_future()
        await self._queue.put(_Item(list(texts), future))
        self._depth_changed()
        return await future

    async def _next_batch(self) -> list[_Item]:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        first = self._carry or await self._queue.get()
        self._carry = None
        items, n = [first], len(first.texts)
        deadline = loop.time() + self.max_wait
        while n < self.max_batch_size:
            try:
                item = self._queue.get_nowait()
            except asyncio.QueueEmpty:
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), left)
                except TimeoutError:
                    break
            if n + len(item.texts) > self.max_batch_size:
                self._carry = item  # first in the next batch
                break
            items.append(item)
            n += len(item.texts)
        return items

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._next_batch()
            self._depth_changed()
            items = [it for it in items if not it.future.done()]  # the client went away
            if not items:
                continue
            texts = [t for it in items for t in it.texts]
            if self.on_batch:
                self.on_batch(len(texts))
            try:
                labels, proba = await loop.run_in_executor(self._executor, self.fn, texts)
            except Exception as exc:  # noqa: BLE001 - handed to the requests below
                if len(items) == 1:
                    if not items[0].future.done():
                        items[0].future.set_exception(exc)
                    continue
                for it in items:  # one bad request must not fail the others: run each on its own
                    await self._run_alone(it)
                continue
            start = 0
            for it in items:
                end = start + len(it.texts)
                if not it.future.done():
                    it.future.set_result((labels[start:end], None if proba is None else proba[start:end]))
                start = end

    async def _run_alone(self, item: _Item) -> None:
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self.fn, item.texts)
        except Exception as exc:  # noqa: BLE001 - the request's own error
            if not item.future.done():
                item.future.set_exception(exc)
            return
        if not item.future.done():
            item.future.set_result(result)

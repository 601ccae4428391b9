"""Dynamic micro-batching of encoder calls for asyncio code (the worker's agents).

Concurrent ``await batcher.encode(texts)`` calls are merged into one encoder call of at most
``max_batch`` texts. The first request opens a batch; the batch closes when it is full or
``max_wait_s`` after it opened, whichever comes first. Under load GPU batches stay full; when
the stream is quiet a lone request waits at most ``max_wait_s``. The encoder runs in a worker
thread so the event loop keeps consuming while the model computes.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from engines.errors import EngineError

log = logging.getLogger(__name__)


@dataclass
class BatcherStats:
    requests: int = 0
    texts: int = 0
    batches: int = 0
    sizes: deque = field(default_factory=lambda: deque(maxlen=1000))  # texts per call, latest

    @property
    def mean_batch(self) -> float:
        return self.texts / self.batches if self.batches else 0.0


class MicroBatcher:
    def __init__(self, encode: Callable[[list[str]], np.ndarray], *, max_batch: int = 256,
                 max_wait_s: float = 0.002, dim: int = 0) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")
        self._encode = encode
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.dim = dim
        self.stats = BatcherStats()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> "MicroBatcher":
        if self._task is None:
            self._queue = asyncio.Queue()
            self._task = asyncio.create_task(self._run(), name="encoder-micro-batcher")
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while self._queue is not None and not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(EngineError("micro-batcher stopped before this request ran"))

    async def __aenter__(self) -> "MicroBatcher":
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Rows for ``texts``, computed in a shared encoder call."""
        if self._task is None or self._queue is None:
            raise RuntimeError("call start() (or use `async with`) before encode()")
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        fut = asyncio.get_running_loop().create_future()
        await self._queue.put((texts, fut))
        return await fut

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        pending: list[tuple[list[str], asyncio.Future]] = []
        while True:
            if not pending:
                pending.append(await self._queue.get())
            size = sum(len(t) for t, _ in pending)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch:
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                pending.append(item)
                size += len(item[0])
            # take whole requests up to max_batch (a single larger request goes alone)
            take, n = [], 0
            while pending and (not take or n + len(pending[0][0]) <= self.max_batch):
                req = pending.pop(0)
                take.append(req)
                n += len(req[0])
            await self._call(take, n)

    async def _call(self, take, n: int) -> None:
        texts = [t for req, _ in take for t in req]
        t0 = time.perf_counter()
        try:
            rows = await asyncio.to_thread(self._encode, texts)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
            for _, fut in take:
                if not fut.done():
                    fut.set_exception(exc)
            return
        self.stats.requests += len(take)
        self.stats.texts += n
        self.stats.batches += 1
        self.stats.sizes.append(n)
        log.debug("encoded %d texts from %d requests in %.1f ms", n, len(take), 1e3 * (time.perf_counter() - t0))
        start = 0
        for req, fut in take:
            if not fut.done():
                fut.set_result(rows[start:start + len(req)])
            start += len(req)

"""Concurrent encode requests become few, full encoder calls; each caller gets its own rows."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from engines import MicroBatcher


def test_concurrent_requests_share_encoder_calls(text_encoder, titles):
    calls: list[int] = []

    def encode(texts):
        calls.append(len(texts))
        return text_encoder.encode(texts)

    requests = [titles[i:i + 3] for i in range(0, 60, 3)]     # 20 requests of 3 titles

    async def main():
        async with MicroBatcher(encode, max_batch=16, max_wait_s=0.05, dim=384) as batcher:
            return await asyncio.gather(*(batcher.encode(r) for r in requests)), batcher.stats

    results, stats = asyncio.run(main())
    assert sum(calls) == 60 and max(calls) <= 16
    assert len(calls) <= 5                        # 60 texts in calls of up to 15 (whole requests)
    assert stats.requests == 20 and stats.batches == len(calls)
    for req, rows in zip(requests, results):
        np.testing.assert_allclose(rows, text_encoder.encode(req), atol=1e-5)


def test_a_lone_request_waits_at_most_max_wait(text_encoder, titles):
    async def main():
        async with MicroBatcher(text_encoder.encode, max_batch=256, max_wait_s=0.02) as batcher:
            await batcher.encode(titles[:1])                     # warm the model
            t0 = time.perf_counter()
            rows = await batcher.encode(titles[:2])
            return rows, time.perf_counter() - t0

    rows, elapsed = asyncio.run(main())
    assert rows.shape == (2, 384)
    assert elapsed < 0.02 + 1.0                    # the wait, plus one small call on a busy CPU


def test_encoder_errors_reach_every_waiting_caller():
    def broken(texts):
        raise RuntimeError("model exploded")

    async def main():
        async with MicroBatcher(broken, max_batch=8, max_wait_s=0.01) as batcher:
            return await asyncio.gather(batcher.encode(["a"]), batcher.encode(["b"]), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)


def test_encode_before_start_is_an_error():
    with pytest.raises(RuntimeError, match="start"):
        asyncio.run(MicroBatcher(lambda t: None).encode(["x"]))

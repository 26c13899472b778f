"""The micro-batcher: shared model calls, a bounded wait queue, 503 + Retry-After past it."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from service.batcher import MicroBatcher, Overloaded
from service.metrics import Metrics


class GatedModel:
    """Embeds each image as [its first pixel]; every call waits for the test to open the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.calls: list[int] = []

    def __call__(self, pixels: list[np.ndarray]) -> np.ndarray:
        self.calls.append(len(pixels))
        self.gate.wait(10)
        return np.array([[float(p.flat[0])] for p in pixels], dtype=np.float32)


def image(value: int) -> np.ndarray:
    return np.full((2, 2, 1), value, dtype=np.uint8)


def run_batcher(scenario, *, max_batch: int = 4, max_queued: int = 4) -> None:
    model = GatedModel()

    async def main() -> None:
        batcher = MicroBatcher(
            model,
            max_batch=max_batch,
            max_wait_s=0,
            max_queued=max_queued,
            enabled=True,
            metrics=Metrics(),
        )
        batcher.start()
        try:
            await scenario(batcher, model)
        finally:
            model.gate.set()
            await batcher.stop()

    asyncio.run(main())


async def until(predicate) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


def test_images_in_the_model_do_not_count_against_the_queue_and_the_overflow_gets_503() -> None:
    async def scenario(batcher: MicroBatcher, model: GatedModel) -> None:
        first = asyncio.create_task(batcher.embed([image(i) for i in range(4)]))
        await until(lambda: model.calls == [4])  # in the model, held at the gate
        waiting = asyncio.create_task(batcher.embed([image(10 + i) for i in range(4)]))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # queued: four images wait, four are in the model
        with pytest.raises(Overloaded) as refused:
            await batcher.embed([image(99)])
        assert refused.value.retry_after_s >= 1
        model.gate.set()
        assert (await first)[:, 0].tolist() == [0, 1, 2, 3]
        assert (await waiting)[:, 0].tolist() == [10, 11, 12, 13]
        assert model.calls == [4, 4]  # the waiting requests shared one call

    run_batcher(scenario)


def test_requests_that_queue_while_the_model_runs_share_the_next_call_in_order() -> None:
    async def scenario(batcher: MicroBatcher, model: GatedModel) -> None:
        first = asyncio.create_task(batcher.embed([image(1)]))
        await until(lambda: model.calls == [1])
        rest = [asyncio.create_task(batcher.embed([image(v)])) for v in (2, 3, 4)]
        await asyncio.sleep(0.05)
        model.gate.set()
        results = [await task for task in (first, *rest)]
        assert [r[0, 0] for r in results] == [1, 2, 3, 4]
        assert model.calls == [1, 3]

    run_batcher(scenario, max_queued=8)

"""Micro-batching: concurrent requests share model calls.

Requests queue their (already decoded) images; one worker takes up to `max_batch` images,
waiting at most `max_wait_s` for batch-mates, and runs the model in a thread, off the event
loop. The queue is bounded: past `max_queued` images a request is refused at once with
`Overloaded` (503 + Retry-After) instead of timing out. Decoding happens before an image joins
the queue, so a bad image fails only its own request.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from service.metrics import Metrics

EncodeFn = Callable[[list[np.ndarray]], np.ndarray]


class Overloaded(Exception):
    def __init__(self, retry_after_s: int) -> None:
        super().__init__("the model queue is full; retry shortly")
        self.retry_after_s = retry_after_s


@dataclass
class _Job:
    pixels: list[np.ndarray]
    future: asyncio.Future


class MicroBatcher:
    def __init__(
        self,
        encode: EncodeFn,
        *,
        max_batch: int,
        max_wait_s: float,
        max_queued: int,
        enabled: bool,
        metrics: Metrics,
    ) -> None:
        self._encode = encode
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._max_queued = max_queued
        self._enabled = enabled
        self._metrics = metrics
        self._jobs: deque[_Job] = deque()
        self._queued = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None
        self._seconds_per_image = 0.001  # running estimate, for Retry-After

    def start(self) -> None:
        """On the event loop that will use it."""
        self._task = asyncio.create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    def ensure_room(self, images: int = 1) -> None:
        """Raise Overloaded unless `images` more may queue. Checked once before a request's body
        is read (so refusing costs little under overload) and again as its images queue."""
        if self._queued + images > self._max_queued:
            wait = self._queued * self._seconds_per_image
            raise Overloaded(retry_after_s=max(1, int(wait + 0.999)))

    async def embed(self, pixels: list[np.ndarray]) -> np.ndarray:
        """Unit vectors (N, D) for decoded images, in order."""
        self.ensure_room(len(pixels))
        loop = asyncio.get_running_loop()
        if not self._enabled:
            self._queued += len(pixels)
            try:
                return await loop.run_in_executor(None, self._timed_encode, pixels)
            finally:
                self._queued -= len(pixels)
        job = _Job(pixels, loop.create_future())
        self._jobs.append(job)
        self._queued += len(pixels)
        self._metrics.queue_depth.set(self._queued)
        self._wakeup.set()
        return await job.future

    def _timed_encode(self, pixels: list[np.ndarray]) -> np.ndarray:
        start = time.perf_counter()
        out = self._encode(pixels)
        elapsed = time.perf_counter() - start
        self._seconds_per_image = 0.9 * self._seconds_per_image + 0.1 * elapsed / len(pixels)
        self._metrics.batch_size.observe(len(pixels))
        return out

    def _take_batch(self) -> list[_Job]:
        batch: list[_Job] = []
        count = 0
        while self._jobs and (not batch or count + len(self._jobs[0].pixels) <= self._max_batch):
            job = self._jobs.popleft()
            batch.append(job)
            count += len(job.pixels)
        # Taken images no longer wait: while the model runs, a full next batch may queue.
        self._queued -= count
        self._metrics.queue_depth.set(self._queued)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._jobs:
                if self._queued < self._max_batch and self._max_wait_s > 0:
                    await asyncio.sleep(self._max_wait_s)  # let batch-mates arrive
                batch = self._take_batch()
                pixels = [p for job in batch for p in job.pixels]
                try:
                    vectors = await loop.run_in_executor(self._executor, self._run_model, pixels)
                except Exception as exc:  # a model failure fails this batch's requests only
                    for job in batch:
                        if not job.future.done():
                            job.future.set_exception(exc)
                else:
                    start = 0
                    for job in batch:
                        if not job.future.done():  # the client may have gone away
                            job.future.set_result(vectors[start : start + len(job.pixels)])
                        start += len(job.pixels)

    def _run_model(self, pixels: list[np.ndarray]) -> np.ndarray:
        # One oversized request still runs, in chunks of max_batch.
        chunks = [pixels[i : i + self._max_batch] for i in range(0, len(pixels), self._max_batch)]
        return np.concatenate([self._timed_encode(chunk) for chunk in chunks])

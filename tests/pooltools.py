"""Test helpers shared by the pooling suites of both engines: a gathering gate and a peak sampler."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Callable, Optional

# How long a gate waits for the stragglers: reached only when a test is about to fail anyway.
GATE_TIMEOUT = 20.0


class Gate:
    """Lets `parties` tasks wait until all of them arrived (asyncio.Barrier needs Python 3.11)."""

    def __init__(self, parties: int) -> None:
        self.parties = parties
        self.arrived = 0
        self.open = asyncio.Event()

    async def wait(self) -> None:
        self.arrived += 1
        if self.arrived >= self.parties:
            self.open.set()
        await asyncio.wait_for(self.open.wait(), GATE_TIMEOUT)


class PeakSampler:
    """Samples a number every few milliseconds in the background and keeps the largest value."""

    def __init__(self, sample: Callable[[], Awaitable[float]], interval: float = 0.003) -> None:
        self._sample = sample
        self._interval = interval
        self.peak = float("-inf")
        self.samples = 0
        self._task: Optional[asyncio.Task] = None

    async def _run(self) -> None:
        while True:
            value = await self._sample()
            self.peak = max(self.peak, value)
            self.samples += 1
            await asyncio.sleep(self._interval)

    def __enter__(self) -> PeakSampler:
        self._task = asyncio.ensure_future(self._run())
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._task is not None
        if self._task.done() and self._task.exception() is not None:
            raise self._task.exception()  # type: ignore[misc]
        self._task.cancel()

"""Test helpers shared by the suites of both engines: a gathering gate, a peak sampler, a bystander client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, Callable, Optional

# How long a gate waits for the stragglers: reached only when a test is about to fail anyway.
GATE_TIMEOUT = 20.0


POLL_TIMEOUT = 20.0


async def poll(
    condition: Callable[[], Any], what: str, *, want: Any = True, timeout: float = POLL_TIMEOUT, interval: float = 0.02
) -> None:
    """Wait until condition() (sync or async) is true, or equals `want` when one is given."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = condition()
        if isinstance(outcome, Awaitable):
            outcome = await outcome
        if bool(outcome) if want is True else outcome == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what} (last: {outcome!r})")
        await asyncio.sleep(interval)


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


class BystanderLoop:
    """A well-behaved client running short transactions until stopped, recording every error.

    Subclasses say what one transaction is; the tests use it to prove other clients are unaffected.
    """

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.completed = 0
        self.errors: list[BaseException] = []
        self.stopping = False
        self._task: Optional[asyncio.Task] = None

    async def transaction(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    async def _run(self) -> None:
        while not self.stopping:
            try:
                await self.transaction()
                self.completed += 1
            except Exception as exc:  # noqa: BLE001 - every failure is a finding
                self.errors.append(exc)
                return
            await asyncio.sleep(0.005)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def progress(self, transactions: int = 5, timeout: float = GATE_TIMEOUT) -> None:
        """Wait until this loop has completed `transactions` more transactions (or failed)."""
        target = self.completed + transactions
        deadline = asyncio.get_running_loop().time() + timeout
        while self.completed < target and not self.errors:
            assert asyncio.get_running_loop().time() < deadline, "the bystander's transactions stopped progressing"
            await asyncio.sleep(0.01)
        assert not self.errors, f"a bystander client failed: {self.errors!r}"

    async def stop(self, timeout: float = GATE_TIMEOUT) -> None:
        self.stopping = True
        if self._task is not None:
            await asyncio.wait_for(self._task, timeout)
        assert not self.errors, f"a bystander client failed: {self.errors!r}"

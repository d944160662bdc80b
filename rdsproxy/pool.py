"""Backend connection pools: one budget per target shared by (user, database) pools, FIFO waiters, LIFO reuse."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, Callable, Optional

from ._codec import PoolLane, Waiter
from .backend import IDLE
from .errors import RdsProxyError

if TYPE_CHECKING:
    from .metrics import TargetStats

log = logging.getLogger("rdsproxy.pool")

PoolKey = tuple[str, str]  # (user, database)

# SQLSTATE too_many_connections: the server is full, which is not the waiting client's fault.
SERVER_FULL = "53300"


class BorrowTimeout(RdsProxyError):
    """No backend connection became available within connection_borrow_timeout."""


class BackendUnavailable(RdsProxyError):
    """A new backend connection could not be opened (server down, auth refused, ...)."""

    def __init__(
        self, message: str, *, sqlstate: str = "08006", fatal_fields: Optional[dict] = None, server_full: bool = False
    ):
        super().__init__(message)
        self.sqlstate = sqlstate
        # the server refused because it has no connection slots left (PostgreSQL 53300, MySQL 1040)
        self.server_full = server_full or sqlstate == SERVER_FULL
        # ErrorResponse fields from the server when it refused us (e.g. unknown database): shown to the client
        self.fatal_fields = fatal_fields


Deliver = Callable[[Any, Optional[BaseException]], bool]
Connector = Callable[[PoolKey], Awaitable[Any]]


class TargetPool(PoolLane):
    """All backend connections to one target, under that target's connection budget.

    Borrowing is synchronous when an idle backend of the right (user, database) exists (the common case), so the
    data path only awaits when it must open a connection or queue. That case, queueing a client, and giving a
    backend back (kept idle, or handed straight to the first queued client) are PoolLane's (compiled); the rest
    of the queue (other borrowers, expiry, opening and evicting connections) is here.
    """

    def __init__(
        self,
        address: str,
        connector: Connector,
        stats: TargetStats,
        *,
        limit: int,
        max_idle_percent: int,
        idle_backend_timeout: float,
    ) -> None:
        super().__init__()
        self.address = address
        self._connector = connector
        self.stats = stats
        self.limit = limit
        self.max_idle_percent = max_idle_percent
        self.idle_backend_timeout = idle_backend_timeout
        self._idle: dict[PoolKey, list[Any]] = {}
        self._idle_count = 0
        self._opening = 0
        self._total = 0  # open + opening backends: what counts against the budget
        self._borrowed = 0
        self._waiters: deque[Waiter] = deque()
        self._expiry: Optional[asyncio.TimerHandle] = None
        self._expiry_at = 0.0
        self._open_backends: set = set()  # every open backend of this pool, idle or borrowed
        self._closed = False
        self.params_cache: dict[PoolKey, dict[str, str]] = {}  # the engine's: server settings per key
        self.welcome_cache: dict[Any, bytes] = {}  # the engine's: encoded greetings per kind of session
        stats.MaxDatabaseConnectionsAllowed = limit

    # ------------------------------------------------------------------ borrowing (try_borrow: PoolLane)
    def borrow_later(self, key: PoolKey, deliver: Deliver, timeout: float) -> Waiter:
        """Queue (FIFO) for a backend for `key`; `deliver` hears the backend or the error, synchronously.

        No Task or future per waiting request: a backend given back is handed straight to the next borrower,
        which forwards its request in the same callback (the saturated pool's hot path).
        """
        waiter = Waiter(key, deliver, time.monotonic(), timeout, self)
        if self._closed:
            deliver(None, BackendUnavailable("the proxy is shutting down", sqlstate="57P01"))
            return waiter
        self.queue(waiter)
        return waiter

    async def borrow(self, key: PoolKey, timeout: float) -> Any:
        """Wait (FIFO) for a backend for `key`; raises BorrowTimeout or BackendUnavailable."""
        if self._closed:
            raise BackendUnavailable("the proxy is shutting down", sqlstate="57P01")
        backend = self.try_borrow(key)
        if backend is not None:
            return backend
        future = asyncio.get_running_loop().create_future()

        def deliver(backend: Any, exc: Optional[BaseException]) -> bool:
            if future.done():  # cancelled: the awaiting task is on its way out
                return False
            if exc is not None:
                future.set_exception(exc)
            else:
                future.set_result(backend)
            return True

        waiter = self.borrow_later(key, deliver, timeout)
        try:
            return await future
        except asyncio.CancelledError:
            waiter.cancel()
            if future.done() and not future.cancelled() and future.exception() is None:
                self.give_back(future.result())  # handed over in the same instant as the cancellation
            raise

    # One timer per pool, armed for the earliest deadline, rather than one per waiting request.
    def _arm_expiry(self, deadline: float) -> None:
        if self._expiry is not None and self._expiry_at <= deadline:
            return
        if self._expiry is not None:
            self._expiry.cancel()
        loop = asyncio.get_running_loop()
        self._expiry_at = deadline
        self._expiry = loop.call_at(loop.time() + max(deadline - time.monotonic(), 0.0), self._expire_due)

    def _expire_due(self) -> None:
        self._expiry = None
        now = time.monotonic()
        due = [waiter for waiter in self._waiters if waiter.deadline <= now]
        for waiter in due:
            self._drop_waiter(waiter)
            self.stats.DatabaseConnectionBorrowTimeouts += 1
            waiter.deliver(
                None, BorrowTimeout(f"timed out after {waiter.timeout:g} s waiting for a database connection")
            )
        if self._waiters:
            self._arm_expiry(min(waiter.deadline for waiter in self._waiters))

    def _take_waiter_for(self, key: PoolKey) -> Optional[Waiter]:
        """The first waiter for `key`, out of the queue; usually the head (one key per pool is the common case)."""
        waiters = self._waiters
        if waiters[0].key == key:
            return waiters.popleft()
        for waiter in waiters:
            if waiter.key == key:
                waiters.remove(waiter)
                return waiter
        return None

    def _mark_borrowed(self, waited: float) -> None:
        self._borrowed += 1
        self.stats.DatabaseConnectionsCurrentlyBorrowed = self._borrowed
        self.stats.DatabaseConnectionsBorrowLatency.observe(int(waited * 1_000_000))

    def _drop_waiter(self, waiter: Waiter) -> None:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            pass

    def _make_room_for(self, waiter: Waiter) -> None:
        """Open a connection for the head waiter if the budget allows, evicting an idle one of another key."""
        if self._closed:
            return
        wanted = len(self._waiters)  # answered waiters leave the queue at once, so every one here still waits
        while self._opening < wanted:
            if self._total < self.limit:
                self._open_for(waiter.key)
            elif self._evict_idle_other_than(waiter.key):
                self._open_for(waiter.key)
            else:
                return

    def _evict_idle_other_than(self, key: PoolKey) -> bool:
        for other_key, idle in self._idle.items():
            if other_key != key and idle:
                backend = idle.pop(0)  # the coldest
                self._idle_count -= 1
                # not _discard: its _make_room_for would open a connection too, on top of the caller's
                self._close(backend)
                return True
        return False

    def _open_for(self, key: PoolKey) -> None:
        self._opening += 1
        self._total += 1
        asyncio.ensure_future(self._open(key))

    async def _open(self, key: PoolKey) -> None:
        try:
            backend = await self._connector(key)
        except BaseException as exc:  # noqa: B036 - the waiter must hear about every failure
            self._opening -= 1
            self._total -= 1
            self.stats.DatabaseConnectionsSetupFailed += 1
            if getattr(exc, "server_full", False) and self._total > 0:
                # Someone else holds server slots our budget counted on: shrink to what we have and let the
                # waiter queue for a backend that comes back, within its borrow timeout, instead of failing it.
                log.warning(
                    "%s refused a connection (too many connections): pool limited to %d", self.address, self._total
                )
                self.limit = self._total
                self.stats.MaxDatabaseConnectionsAllowed = self.limit
            else:
                self._fail_one_waiter(key, exc)
            if isinstance(exc, (asyncio.CancelledError, KeyboardInterrupt, SystemExit)):
                raise
            return
        self._opening -= 1
        self.stats.DatabaseConnectionsSetupSucceeded += 1
        self.stats.DatabaseConnections += 1
        if self._closed:
            self._total -= 1
            self.stats.DatabaseConnections -= 1
            backend.close()
            return
        backend.key = key
        backend.pool = self
        self._open_backends.add(backend)
        self._place(backend)

    def _fail_one_waiter(self, key: PoolKey, exc: BaseException) -> None:
        if not isinstance(exc, RdsProxyError):
            exc = BackendUnavailable(f"could not connect to the database: {exc}")
        for waiter in self._waiters:
            if waiter.key == key:
                self._drop_waiter(waiter)
                waiter.deliver(None, exc)
                return

    # ------------------------------------------------------------------ returning (give_back: PoolLane)
    def _borrower_failed(self, backend: Any, exc: Exception) -> None:
        """Handing `backend` over raised (a proxy bug): close it, and the client it got attached to, if any.

        Detached first, so that its closing does not come back through that client as a second discard.
        """
        log.error("a borrower failed to take a backend of %s; closing that backend", self.address, exc_info=exc)
        client = backend.client
        if client is not None:
            backend.client = None
            client.backend = None
            client.close()
        self.discard_borrowed(backend)

    def discard_borrowed(self, backend: Any) -> None:
        """A borrowed backend cannot be reused (dirty, broken): close it and free its budget slot."""
        self._borrowed -= 1
        self.stats.DatabaseConnectionsCurrentlyBorrowed = self._borrowed
        self._discard(backend)

    def _place(self, backend: Any) -> None:
        waiters = self._waiters
        while waiters:
            waiter = self._take_waiter_for(backend.key)
            if waiter is None:
                break
            self._mark_borrowed(time.monotonic() - waiter.enqueued)
            try:
                taken = waiter.deliver(backend, None)
            except Exception as exc:  # noqa: BLE001 - a borrower's bug must not lose the backend or the queue
                self._borrower_failed(backend, exc)
                return
            if taken:
                return
            self._borrowed -= 1  # its borrower went away meanwhile: offer it to the next one
            self.stats.DatabaseConnectionsCurrentlyBorrowed = self._borrowed
        backend.idle_since = time.monotonic()
        idle = self._idle.get(backend.key)
        if idle is None:
            idle = self._idle[backend.key] = []
        idle.append(backend)
        self._idle_count += 1
        backend.state = IDLE
        if self._waiters:
            # someone is waiting for another (user, database): this idle one may make room for them
            self._make_room_for(self._waiters[0])

    def _close(self, backend: Any) -> None:
        if backend in self._open_backends:  # once only, even if a closed pool hears about it again
            self._open_backends.discard(backend)
            self._total -= 1
            self.stats.DatabaseConnections -= 1
        backend.close()

    def _discard(self, backend: Any) -> None:
        self._close(backend)
        if self._waiters:
            self._make_room_for(self._waiters[0])

    def idle_backend_lost(self, backend: Any) -> None:
        """An idle backend's connection died (server restart, pg_terminate_backend): forget it."""
        idle = self._idle.get(backend.key)
        if idle and backend in idle:
            idle.remove(backend)
            self._idle_count -= 1
            self._discard(backend)

    # ------------------------------------------------------------------ housekeeping
    @property
    def idle_count(self) -> int:
        return self._idle_count

    @property
    def total(self) -> int:
        return self._total

    @property
    def borrowed(self) -> int:
        return self._borrowed

    @property
    def max_idle(self) -> int:
        return (self.limit * self.max_idle_percent) // 100

    def set_limit(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.stats.MaxDatabaseConnectionsAllowed = self.limit

    def reap_idle(self, now: Optional[float] = None) -> int:
        """Close idle backends above max_idle that have been idle longer than idle_backend_timeout."""
        now = time.monotonic() if now is None else now
        excess = self._idle_count - self.max_idle
        closed = 0
        if excess <= 0:
            return 0
        candidates = sorted(
            ((b.idle_since, key, b) for key, idle in self._idle.items() for b in idle), key=lambda t: t[0]
        )
        for idle_since, key, backend in candidates:
            if closed >= excess or now - idle_since < self.idle_backend_timeout:
                break
            self._idle[key].remove(backend)
            self._idle_count -= 1
            self._discard(backend)
            closed += 1
        return closed

    def close(self) -> None:
        self._closed = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        waiters = list(self._waiters)
        self._waiters.clear()
        for waiter in waiters:
            waiter.deliver(None, BackendUnavailable("the proxy is shutting down", sqlstate="57P01"))
        for idle in self._idle.values():
            idle.clear()
        self._idle_count = 0
        # borrowed ones too: a backend still being reset for a departed client must not outlive the proxy
        for backend in list(self._open_backends):
            self._close(backend)

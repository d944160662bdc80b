"""Sans-IO bookkeeping of one PostgreSQL client session: requests in flight, pinning, tracked parameters."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from sys import intern
from typing import Optional

from ..._codec import PgRequestState, classify_pg
from ..._codec.flags import PIN_MASK, PIN_REASON_CODES, PIN_SET
from ...errors import ProtocolViolation
from . import messages

# Statements longer than this pin the session (RDS Proxy's rule: the proxy will not inspect them).
MAX_INSPECTED_STATEMENT = 16 * 1024

# Parameters PostgreSQL reports through ParameterStatus: a SET of one is seen and replayed, never pinned.
TRACKED_REPORTED = frozenset({"application_name", "client_encoding", "datestyle", "intervalstyle", "timezone"})

# Startup parameters that are not session settings.
NON_GUC_STARTUP_KEYS = frozenset({"user", "database", "options", "replication"})

# Canonical spellings for ParameterStatus messages sent to clients.
CANONICAL_NAMES = {"datestyle": "DateStyle", "intervalstyle": "IntervalStyle", "timezone": "TimeZone"}

READY_IDLE = ord("I")
_Q, _P, _B, _D, _E, _C, _H, _S, _F, _X = (ord(c) for c in "QPBDECHSFX")
_COPY_DATA, _COPY_DONE, _COPY_FAIL = ord("d"), ord("c"), ord("f")
_EXTENDED = frozenset((_P, _B, _D, _E, _C, _H))
_COPY = frozenset((_COPY_DATA, _COPY_DONE, _COPY_FAIL))
_RFQ, _ERROR, _PARAMETER_STATUS, _COPY_IN, _COPY_BOTH = (ord(c) for c in "ZESGW")

REASON_NAMED_STATEMENT = "named_prepared_statement"
REASON_TOO_LONG = "statement_too_long"


def statement_digest(sql: bytes) -> str:
    """A short stable name for a statement in logs and metrics, without its text."""
    return hashlib.sha1(sql).hexdigest()[:12]


_SETTING_NAME = re.compile(r"[\w.]+")
# Names already found valid, so a connection storm with the same startup settings skips the pattern.
_VALID_NAMES: set[str] = set()
_MAX_VALID_NAMES = 1024


def valid_setting_name(name: str) -> bool:
    if name in _VALID_NAMES:
        return True
    if _SETTING_NAME.fullmatch(name) is None:
        return False
    if len(_VALID_NAMES) < _MAX_VALID_NAMES:
        _VALID_NAMES.add(name)
    return True


class ClientBatch:
    """What the adapter must do with one chunk of client messages."""

    __slots__ = ("forward", "reply", "terminate", "new_pins", "requests")

    def __init__(self) -> None:
        self.forward: Optional[bytes] = None  # bytes for the backend (None: nothing)
        self.reply: bytes = b""  # bytes the proxy answers itself, to the client
        self.terminate = False  # the client sent Terminate
        self.new_pins: list[tuple[str, str]] = []  # (reason code, statement digest)
        self.requests = 0  # Query/Execute messages seen (QueryRequests)


class PgSession(PgRequestState):
    """Request accounting and session-state decisions for one client, fed with framed messages.

    The adapter offers each client chunk to the compiled fast path first (`take_plain`, inherited with the
    counters from PgRequestState), feeds the rest as framed messages (from ClientFramer) to `client_messages`,
    feeds the backend events (from ServerScanner) to `server_events`, and asks `releasable` whether the backend
    can go back to the pool.
    """

    __slots__ = ("pin_reasons", "wanted")

    def __init__(self, *, exclude_variable_sets: bool = False) -> None:
        super().__init__()
        self.pin_reasons: Sequence[str] = ()  # a list once pinned: most sessions never are, and stay smaller
        self.wanted: dict[str, str] = {}  # tracked session parameters, lower-case name -> value
        self.pin_mask = PIN_MASK & ~PIN_SET if exclude_variable_sets else PIN_MASK
        self.inspect_limit = MAX_INSPECTED_STATEMENT

    # ------------------------------------------------------------------ startup
    def set_startup_params(self, params: dict[str, str]) -> None:
        """Record the session settings of a StartupMessage (options already merged in)."""
        for key, value in params.items():
            lower = key.lower()
            if lower in NON_GUC_STARTUP_KEYS or lower.startswith("_pq_."):
                continue
            if not valid_setting_name(lower):
                raise ProtocolViolation(f"invalid startup parameter name {key!r}")
            # interned: clients that ask for the same settings then hold the same strings, and the comparison of
            # a client's settings with a backend's (ClientLane, on every borrow) is a few pointer compares
            self.wanted[intern(lower)] = intern(value)

    # ------------------------------------------------------------------ client -> backend
    def client_messages(self, buf: bytes, msgs: list) -> ClientBatch:
        batch = ClientBatch()
        forward_all = True
        pieces: list[bytes] = []
        fwd_from = 0
        for mtype, start, end in msgs:
            head = start - 5
            if (self.failing is not None or self.discarding) and mtype != _X:
                # the backend of this transaction is gone: answer the next request with the error
                forward_all = False
                if head > fwd_from:
                    pieces.append(buf[fwd_from:head])
                fwd_from = end
                if self.discarding:
                    # like a server after an error in an extended batch: skip to Sync, then ReadyForQuery
                    if mtype == _S:
                        self.discarding = False
                        self.batch_open = False
                        batch.reply += messages.ready_for_query(b"I")
                    continue
                if mtype == _Q or mtype == _S or mtype == _F:
                    sqlstate, message = self.failing  # type: ignore[misc]
                    self.failing = None
                    self.batch_open = False
                    batch.reply += messages.error_response("ERROR", sqlstate, message) + messages.ready_for_query(b"I")
                elif mtype in _EXTENDED:
                    self.batch_open = True
                    if mtype == _H:
                        # a Flush asks for the replies now (asyncpg's prepare): the error cannot wait for Sync
                        sqlstate, message = self.failing  # type: ignore[misc]
                        self.failing = None
                        self.discarding = True
                        batch.reply += messages.error_response("ERROR", sqlstate, message)
                continue
            if mtype == _Q:
                self.outstanding += 1
                self.syncs_since_execute = 0
                batch.requests += 1
                self._inspect(buf[start : end - 1], batch)
            elif mtype in _EXTENDED:
                self.batch_open = True
                if mtype == _H:
                    self.flush_pending = True
                elif mtype == _P:
                    name_end = buf.find(b"\x00", start, end)
                    query_end = buf.find(b"\x00", name_end + 1, end)
                    if name_end < 0 or query_end < 0:
                        raise ProtocolViolation("malformed Parse message: missing string terminator")
                    if name_end > start:
                        self._pin(REASON_NAMED_STATEMENT, buf[name_end + 1 : query_end], batch)
                    self._inspect(buf[name_end + 1 : query_end], batch)
                elif mtype == _E:
                    batch.requests += 1
                    self.syncs_since_execute = 0
            elif mtype == _S:
                self.batch_open = False
                self.flush_pending = False
                if not self.copy_in:
                    self.outstanding += 1
                    self.syncs_since_execute += 1
            elif mtype in _COPY:
                if mtype != _COPY_DATA:
                    self.copy_in = False
            elif mtype == _F:
                self.outstanding += 1
                batch.requests += 1
            elif mtype == _X:
                batch.terminate = True
                forward_all = False
                if head > fwd_from:
                    pieces.append(buf[fwd_from:head])
                fwd_from = len(buf)
                break
            else:
                raise ProtocolViolation(f"unexpected message type {chr(mtype)!r} from the client")
        if forward_all:
            batch.forward = buf if msgs else None
        else:
            if fwd_from < len(buf):
                pieces.append(buf[fwd_from:])
            joined = b"".join(pieces)
            batch.forward = joined or None
        return batch

    def _inspect(self, sql: bytes, batch: ClientBatch) -> None:
        if len(sql) > self.inspect_limit:
            self._pin(REASON_TOO_LONG, sql, batch)
            return
        flags = classify_pg(sql) & self.pin_mask  # the same test as the fast path's (take_plain)
        if not flags:
            return
        for bit, reason in PIN_REASON_CODES.items():
            if flags & bit:
                self._pin(reason, sql, batch)

    def _pin(self, reason: str, sql: bytes, batch: ClientBatch) -> None:
        if reason in self.pin_reasons:
            return
        self.pinned = True
        self.pin_reasons = [*self.pin_reasons, reason]
        batch.new_pins.append((reason, statement_digest(sql)))

    # ------------------------------------------------------------------ backend -> client
    def server_events(self, events: list, applied: dict[str, str]) -> dict[str, str]:
        """Account for the state-changing backend messages of one forwarded chunk.

        `applied` is the backend's record of the tracked parameters in force on it; a ParameterStatus for one of
        them (the client ran SET, or a transaction rolled one back) updates it and the client's wanted values.
        Both are replaced, never changed in place (dicts of settings are shared, see Engine.shared_state): the
        backend's record comes back, as it is or replaced.
        """
        for mtype, payload, _end in events:
            if mtype == _RFQ:
                self.outstanding -= 1
                self.status = payload[0]
            elif mtype == _PARAMETER_STATUS:
                name, value = messages.parse_parameter_status(payload)
                lower = name.lower()
                if lower in TRACKED_REPORTED:
                    lower, value = intern(lower), intern(value)
                    if self.wanted.get(lower) is not value:
                        self.wanted = {**self.wanted, lower: value}
                    if applied.get(lower) is not value:
                        applied = {**applied, lower: value}
            elif mtype == _COPY_IN or mtype == _COPY_BOTH:
                # Syncs sent after the Execute that started COPY are ignored by the server while it copies
                self.outstanding -= self.syncs_since_execute
                self.syncs_since_execute = 0
                self.copy_in = True
            elif mtype == _ERROR:
                self.copy_in = False
        return applied

    # ------------------------------------------------------------------ failures
    def fail_outstanding(self, sqlstate: str, message: str) -> bytes:
        """Answer every request in flight with an error (their backend is gone or never came).

        Returns the bytes for the client. An open extended batch that ends in a Flush gets its error now and
        its Sync only a ReadyForQuery; any other open batch, or an interrupted transaction, owes its error to
        the client's next request instead.
        """
        error = messages.error_response("ERROR", sqlstate, message)
        reply = (error + messages.ready_for_query(b"I")) * max(self.outstanding, 0)
        batch_open = self.batch_open
        owes_next = batch_open or (self.outstanding == 0 and self.status != READY_IDLE)
        self.outstanding = 0
        self.syncs_since_execute = 0
        self.copy_in = False
        self.status = READY_IDLE
        if batch_open and self.flush_pending:
            reply += error
            self.discarding = True
        elif owes_next:
            self.failing = (sqlstate, message)
        # an owed batch stays open until its Sync, so that a later Flush can still collect the error
        self.batch_open = batch_open and not self.discarding
        self.flush_pending = False
        return reply

    def sync_statements(self, applied: dict[str, str]) -> Optional[bytes]:
        """SQL that makes a backend's tracked parameters equal to this client's, or None when they already are."""
        return sync_sql(self.wanted, applied)


def sync_sql(wanted: dict[str, str], applied: dict[str, str]) -> Optional[bytes]:
    """SQL that turns the tracked parameters `applied` on a backend into `wanted`; None when equal."""
    sets = [(k, v) for k, v in wanted.items() if applied.get(k) != v]
    resets = [k for k in applied if k not in wanted]
    if not sets and not resets:
        return None
    parts = []
    if "datestyle" in applied and any(k == "datestyle" for k, _ in sets):
        # DateStyle merges with the value in force ('SQL' keeps the order part): start from the default,
        # as a new connection would, or the previous client's date order leaks into this session
        parts.append('RESET "datestyle"')
    if sets:
        parts.append(
            "SELECT " + ", ".join(f"pg_catalog.set_config({sql_literal(k)}, {sql_literal(v)}, false)" for k, v in sets)
        )
    parts.extend(f'RESET "{k}"' for k in resets)
    return "; ".join(parts).encode()


def sql_literal(value: str) -> str:
    """A standard-conforming SQL string literal."""
    return "'" + value.replace("'", "''") + "'"

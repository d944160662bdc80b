"""Sans-IO bookkeeping of one MySQL client session: commands in flight, pinning, tracked session state."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Optional

from ..._codec import MyRequestState, classify_mysql, mysql_session_function_items, parse_kill, tokenize
from ..._codec.classify_py import IDENT, LPAREN, MYSQL_LEX_OPTIONS, RPAREN
from ..._codec.flags import (
    MY_KILL,
    MY_PIN_MASK,
    MY_PIN_REASON_CODES,
    MY_PIN_SET,
    MY_READS_LAST_INSERT_ID,
    MY_READS_ROW_COUNT,
    MY_SET_TRACKED,
    MY_SETS_LAST_INSERT_ID,
    MY_USE,
)
from ..._codec.myframe_py import MAX_INSPECTED_STATEMENT
from . import packets as p

# Session variables rdsproxy tracks and replays instead of pinning (RDS Proxy's list), read back from the server
# after any statement that may change them. "database" is the current schema (USE / COM_INIT_DB / handshake).
TRACKED_VARIABLES = (
    "autocommit",
    "sql_mode",
    "time_zone",
    "character_set_client",
    "character_set_connection",
    "character_set_results",
    "collation_connection",
    "tx_isolation",
    "tx_read_only",
    "auto_increment_increment",
    "wait_timeout",
    "interactive_timeout",
    "net_write_timeout",
    "session_track_schema",
    "query_cache_type",
)
READ_STATE_SQL = ("SELECT DATABASE(), " + ", ".join(f"@@session.{name}" for name in TRACKED_VARIABLES)).encode()
# ... and the value LAST_INSERT_ID(expr) left, after such a statement
READ_STATE_AND_LAST_INSERT_ID_SQL = READ_STATE_SQL + b", LAST_INSERT_ID()"

# Commands whose response the server does not send.
NO_RESPONSE = frozenset((p.COM_STMT_CLOSE, p.COM_STMT_SEND_LONG_DATA))
# Commands forwarded as they are (a response is expected).
FORWARDED = frozenset(
    (
        p.COM_QUERY,
        p.COM_INIT_DB,
        p.COM_FIELD_LIST,
        p.COM_STATISTICS,
        p.COM_STMT_PREPARE,
        p.COM_STMT_EXECUTE,
        p.COM_STMT_RESET,
        p.COM_STMT_FETCH,
        p.COM_SET_OPTION,
        p.COM_DEBUG,
    )
)
# Commands whose use ties the client to its backend.
PINNING_COMMANDS = {
    p.COM_STMT_PREPARE: "prepared_statement",
    p.COM_SET_OPTION: "set_option",
}

# Action kinds returned by MySession.command
FORWARD, REPLY, QUIT, KILL, CHANGE_USER, RESET_CONNECTION, REJECT = range(7)

REASON_TOO_LONG = "statement_too_long"

SERVER_STATUS_IN_TRANS = 0x0001
SERVER_STATUS_AUTOCOMMIT = 0x0002
SERVER_MORE_RESULTS_EXISTS = 0x0008
SERVER_STATUS_CURSOR_EXISTS = 0x0040
_MAX_ROW_COUNT = (1 << 63) - 1
_HOLDING_STATUS = SERVER_STATUS_IN_TRANS | SERVER_MORE_RESULTS_EXISTS | SERVER_STATUS_CURSOR_EXISTS


def statement_digest(sql: bytes) -> str:
    """A short stable name for a statement in logs and metrics, without its text."""
    return hashlib.sha1(sql).hexdigest()[:12]


def sql_value(value: Optional[str]) -> str:
    """A value for SET: numbers bare (integer variables refuse quoted ones), NULL, else a quoted string."""
    if value is None:
        return "NULL"
    if value.isdigit():
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def sync_sql(wanted: dict[str, Optional[str]], applied: dict[str, Optional[str]]) -> Optional[bytes]:
    """One SET that turns a backend's tracked variables `applied` into `wanted`; None when they agree.

    The current database is not a variable: it is replayed with COM_INIT_DB.
    """
    sets = [
        f"@@session.{name} = {sql_value(wanted[name])}"
        for name in TRACKED_VARIABLES
        if name in wanted and wanted[name] != applied.get(name)
    ]
    return ("SET " + ", ".join(sets)).encode() if sets else None


def replace_connection_id(sql: bytes, connection_id: int) -> bytes:
    """`sql` with each CONNECTION_ID() call replaced by the proxy's id for the client (what KILL expects)."""
    tokens = tokenize(sql, MYSQL_LEX_OPTIONS)
    pieces = []
    copied = 0
    for i, (kind, start, end) in enumerate(tokens[:-2]):
        if (
            kind == IDENT
            and sql[start:end].lower() == b"connection_id"
            and tokens[i + 1][0] == LPAREN
            and tokens[i + 2][0] == RPAREN
        ):
            pieces.append(sql[copied:start])
            pieces.append(b"%d" % connection_id)
            copied = tokens[i + 2][2]
    if not pieces:
        return sql
    pieces.append(sql[copied:])
    return b"".join(pieces)


class Action:
    """What the adapter must do with one client command."""

    __slots__ = ("kind", "data", "expect", "cursor", "new_pins", "argument")

    def __init__(self, kind: int, data: bytes = b"", expect: int = -1) -> None:
        self.kind = kind
        self.cursor = False  # COM_STMT_EXECUTE that opens a cursor: its response ends after the metadata
        self.data = data  # bytes to forward (FORWARD) or to send to the client (REPLY)
        self.expect = expect  # command whose response the backend will send (-1: none)
        self.new_pins: list[tuple[str, str]] = []
        self.argument: object = None  # KILL: (scope, id); CHANGE_USER: the parsed packet


class MySessionRules:
    """Command accounting and session-state decisions for one MySQL client, fed with framed packets.

    The adapter offers each client chunk to the compiled fast path first (MyClientFramer.take_command): a lone
    plain COM_QUERY or COM_STMT_EXECUTE is accounted there exactly as `command` would, and only the rest comes here.
    The counters and flags that path touches are MyRequestState's (C fields in the compiled twin), as are
    `releasable`, `quiet` and `in_transaction`. MySession puts these rules on the active twin's MyRequestState; a
    test can put them on either twin's.
    """

    __slots__ = ()

    def __init__(self, *, exclude_variable_sets: bool = False, deprecate_eof: bool = False) -> None:
        super().__init__()
        self.pin_reasons: Sequence[str] = ()  # a list once pinned: most sessions never are, and stay smaller
        self.last_insert_id = 0  # LAST_INSERT_ID() as this client's own statements left it
        self.exclude_variable_sets = exclude_variable_sets
        self.deprecate_eof = deprecate_eof
        self.connection_id = 0  # the proxy-issued id of this client (CONNECTION_ID() answers with it)

    # ------------------------------------------------------------------ state
    @property
    def autocommit(self) -> bool:
        return self.wanted.get("autocommit", "1") != "0"

    def ok_status(self) -> int:
        """Status flags for an answer the proxy gives itself (no backend involved: never in a transaction)."""
        return SERVER_STATUS_AUTOCOMMIT if self.autocommit else 0

    # ------------------------------------------------------------------ client -> backend
    def command(self, raw: bytes, payload: bytes, *, attached: bool) -> Action:
        """Decide what to do with one complete client command (raw: its framed bytes; payload: reassembled)."""
        if self.infile:
            # LOCAL INFILE data: forwarded until the empty packet that ends the file
            if not payload:
                self.infile = False
            return Action(FORWARD, raw)
        if not payload:
            return Action(REJECT, b"empty command packet")
        command = payload[0]
        if self.failing is not None and command != p.COM_QUIT:
            code, sqlstate, message = self.failing
            self.failing = None
            return Action(REPLY, p.packet(1, p.err_packet(code, sqlstate, message)))
        if command == p.COM_QUERY:
            return self._query(raw, payload[1:], attached=attached)
        if command == p.COM_QUIT:
            return Action(QUIT)
        if command == p.COM_PING and not attached:
            return Action(REPLY, p.packet(1, p.ok_packet(status=self.ok_status())))
        if command == p.COM_PING:
            self.outstanding += 1
            return Action(FORWARD, raw, command)
        if command == p.COM_RESET_CONNECTION:
            return Action(RESET_CONNECTION)
        if command == p.COM_CHANGE_USER:
            return Action(CHANGE_USER)
        if command == p.COM_PROCESS_KILL:
            if len(payload) < 5:
                return Action(REJECT, b"malformed COM_PROCESS_KILL")
            action = Action(KILL)
            action.argument = ("CONNECTION", int.from_bytes(payload[1:5], "little"))
            return action
        if command in NO_RESPONSE:
            if not self.pinned:
                # no prepared statement can exist outside a pinned session: nothing to act on
                return Action(REPLY, b"")
            return Action(FORWARD, raw)
        if command in FORWARDED:
            action = Action(FORWARD, raw, command)
            reason = PINNING_COMMANDS.get(command)
            if reason is not None:
                self._pin(reason, payload[1:], action)
            if command == p.COM_INIT_DB:
                self.refresh_needed = True
            elif command == p.COM_STMT_EXECUTE:
                action.cursor = len(payload) > 5 and payload[5] != 0
            self.outstanding += 1
            return action
        return Action(REPLY, p.packet(1, p.err_packet(1047, "08S01", f"Unknown command 0x{command:02x}")))

    def _query(self, raw: bytes, sql: bytes, *, attached: bool) -> Action:
        if b"connection_id" in sql.lower():
            # the backend's own thread id means nothing to the client: it is multiplexed, and KILL takes proxy ids
            rewritten = replace_connection_id(sql, self.connection_id)
            if rewritten is not sql:
                sql = rewritten
                raw = p.packet(0, bytes([p.COM_QUERY]) + sql)
        action = Action(FORWARD, raw, p.COM_QUERY)
        if len(sql) > MAX_INSPECTED_STATEMENT:
            self._pin(REASON_TOO_LONG, sql, action)
            self.outstanding += 1
            return action
        flags = classify_mysql(sql)
        if flags & MY_KILL:
            target = parse_kill(sql)
            if target is not None:
                kill = Action(KILL)
                kill.argument = target
                return kill
        if flags & (MY_READS_LAST_INSERT_ID | MY_READS_ROW_COUNT) and not attached:
            answer = self._answer_session_functions(sql)
            if answer is not None:
                return Action(REPLY, answer)
        if flags & MY_PIN_MASK:
            if self.exclude_variable_sets:
                flags &= ~MY_PIN_SET
            for bit, reason in MY_PIN_REASON_CODES.items():
                if flags & bit:
                    self._pin(reason, sql, action)
        if flags & (MY_SET_TRACKED | MY_USE):
            self.refresh_needed = True
        if flags & MY_SETS_LAST_INSERT_ID:
            # no response need report the value (a SELECT answers with rows, an UPDATE matching nothing with 0),
            # and the client's next statement may run on another backend: the proxy asks this one afterwards
            self.refresh_needed = True
            self.refresh_last_insert_id = True
        # LAST_INSERT_ID(expr) may not run (an UPDATE matching no row) and leave the value as it was: the backend
        # must hold the client's own value first, as for a read
        self.reads_last_insert_id = bool(flags & (MY_READS_LAST_INSERT_ID | MY_SETS_LAST_INSERT_ID))
        self.outstanding += 1
        return action

    def _answer_session_functions(self, sql: bytes) -> Optional[bytes]:
        """`SELECT LAST_INSERT_ID()` / `SELECT ROW_COUNT()` answered from this client's own history.

        Its last statement may have run on a backend another client has used since, so asking any backend would
        answer for someone else's write.
        """
        items = mysql_session_function_items(sql)
        if not items:
            return None
        columns = [name.decode("utf-8", "replace") for _, name in items]
        values = [str(self.last_insert_id if flag == MY_READS_LAST_INSERT_ID else self.row_count) for flag, _ in items]
        return p.text_resultset(columns, [values], deprecate_eof=self.deprecate_eof, status=self.ok_status())

    def _pin(self, reason: str, sql: bytes, action: Action) -> None:
        if reason in self.pin_reasons:
            return
        self.pinned = True
        self.pin_reasons = [*self.pin_reasons, reason]
        action.new_pins.append((reason, statement_digest(sql)))

    # ------------------------------------------------------------------ backend -> client
    def response_done(self, status: int, error: bool) -> None:
        self.outstanding -= 1
        if status >= 0:
            self.status = status

    def record_ok(self, affected_rows: int, last_insert_id: int) -> None:
        """Values from the final OK packet of a complete response (for LAST_INSERT_ID() / ROW_COUNT())."""
        if last_insert_id:
            self.last_insert_id = last_insert_id
        # ROW_COUNT() is a signed BIGINT, and row_count a C long long in the compiled state: an OK packet's 64-bit
        # count beyond that (no server reaches it) must not fail the response
        self.row_count = min(affected_rows, _MAX_ROW_COUNT)

    def reset(self, database: Optional[str]) -> None:
        """COM_RESET_CONNECTION / COM_CHANGE_USER: a fresh session (keeping the given current database)."""
        self.pinned = False
        self.pin_reasons = ()
        self.wanted = {"database": database} if database is not None else {}
        self.status = SERVER_STATUS_AUTOCOMMIT
        self.last_insert_id = 0
        self.row_count = -1
        self.refresh_needed = False
        self.refresh_last_insert_id = False

    def fail_outstanding(self, code: int, sqlstate: str, message: str) -> bytes:
        """An ERR for the command in flight (its backend is gone or never came); the client stays connected."""
        reply = p.packet(1, p.err_packet(code, sqlstate, message)) if self.outstanding > 0 else b""
        if self.outstanding == 0 and self.status & SERVER_STATUS_IN_TRANS:
            self.failing = (code, sqlstate, message)  # the open transaction is gone: its next command hears it
        self.outstanding = 0
        self.infile = False
        self.refresh_needed = False
        self.refresh_last_insert_id = False
        self.status &= ~_HOLDING_STATUS
        return reply


# MySessionRules' own fields, beyond MyRequestState's
MY_SESSION_SLOTS = ("pin_reasons", "last_insert_id", "exclude_variable_sets", "deprecate_eof", "connection_id")


class MySession(MySessionRules, MyRequestState):
    """One MySQL client's session: MySessionRules on the active codecs' MyRequestState."""

    __slots__ = MY_SESSION_SLOTS

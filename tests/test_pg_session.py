"""PgSession, the sans-IO request accounting and pinning of a client session, driven with bytes alone."""

from __future__ import annotations

import struct

import pytest

from rdsproxy._codec import ClientFramer, ServerScanner
from rdsproxy.errors import ProtocolViolation
from rdsproxy.protocol.pg import messages
from rdsproxy.protocol.pg.session import MAX_INSPECTED_STATEMENT, PgSession, sync_sql


def msg(mtype: bytes, body: bytes = b"") -> bytes:
    return mtype + struct.pack("!i", len(body) + 4) + body


def parse(name: bytes, sql: bytes) -> bytes:
    return msg(b"P", name + b"\x00" + sql + b"\x00" + b"\x00\x00")


def bind(portal: bytes = b"", stmt: bytes = b"") -> bytes:
    return msg(b"B", portal + b"\x00" + stmt + b"\x00" + b"\x00\x00" + b"\x00\x00" + b"\x00\x00")


def execute() -> bytes:
    return msg(b"E", b"\x00" + b"\x00\x00\x00\x00")


SYNC = msg(b"S")
FLUSH = msg(b"H")


def rfq(status: bytes = b"I") -> bytes:
    return msg(b"Z", status)


def feed_client(session: PgSession, data: bytes):
    framer = ClientFramer()
    framer.in_startup = False
    buf, msgs = framer.feed(data)
    return session.client_messages(buf, msgs)


def feed_server(session: PgSession, data: bytes, applied=None) -> dict:
    """Feed backend bytes; returns the backend's record of its settings as server_events leaves it."""
    scanner = ServerScanner(b"ZSEGW")
    return session.server_events(scanner.feed(data), {} if applied is None else applied)


def test_simple_query_is_one_request_until_ready_for_query():
    session = PgSession()
    batch = feed_client(session, messages.query("SELECT 1"))
    assert batch.forward == messages.query("SELECT 1") and batch.requests == 1
    assert session.outstanding == 1 and not session.releasable
    feed_server(session, msg(b"C", b"SELECT 1\x00") + rfq())
    assert session.outstanding == 0 and session.releasable


def test_transaction_status_holds_the_backend():
    session = PgSession()
    feed_client(session, messages.query("BEGIN"))
    feed_server(session, msg(b"C", b"BEGIN\x00") + rfq(b"T"))
    assert not session.releasable
    feed_client(session, messages.query("SELEC oops"))
    feed_server(session, msg(b"E", b"SERROR\x00C42601\x00Msyntax\x00\x00") + rfq(b"E"))
    assert not session.releasable
    feed_client(session, messages.query("ROLLBACK"))
    feed_server(session, msg(b"C", b"ROLLBACK\x00") + rfq(b"I"))
    assert session.releasable


def test_extended_batch_is_open_until_sync():
    session = PgSession()
    feed_client(session, parse(b"", b"SELECT $1") + bind() + msg(b"D", b"P\x00") + execute() + FLUSH)
    assert session.batch_open and session.outstanding == 0 and not session.releasable
    feed_client(session, SYNC)
    assert not session.batch_open and session.outstanding == 1
    feed_server(session, msg(b"1") + msg(b"2") + msg(b"C", b"SELECT 1\x00") + rfq())
    assert session.releasable


def test_pipelined_syncs_each_expect_a_ready_for_query():
    session = PgSession()
    batch = feed_client(session, (parse(b"", b"SELECT 1") + bind() + execute() + SYNC) * 3)
    assert batch.requests == 3 and session.outstanding == 3
    feed_server(session, rfq() + rfq())
    assert session.outstanding == 1 and not session.releasable
    feed_server(session, rfq())
    assert session.releasable


def test_copy_in_through_the_extended_protocol_ignores_the_early_sync():
    # libpq sends Parse/Bind/Execute/Sync, then the data and a second Sync; the server ignores the first Sync
    session = PgSession()
    feed_client(session, parse(b"", b"COPY t FROM STDIN") + bind() + execute() + SYNC)
    feed_server(session, msg(b"G", b"\x00\x00\x01\x00\x00"))
    assert session.copy_in and session.outstanding == 0
    feed_client(session, msg(b"d", b"1\n") + msg(b"c") + SYNC)
    assert session.outstanding == 1
    feed_server(session, msg(b"C", b"COPY 1\x00") + rfq())
    assert session.releasable


def test_copy_in_through_a_simple_query():
    session = PgSession()
    feed_client(session, messages.query("COPY t FROM STDIN"))
    feed_server(session, msg(b"G", b"\x00\x00\x01\x00\x00"))
    feed_client(session, msg(b"d", b"1\n") + msg(b"c"))
    assert session.outstanding == 1 and not session.copy_in
    feed_server(session, msg(b"C", b"COPY 1\x00") + rfq())
    assert session.releasable


def test_terminate_is_not_forwarded():
    session = PgSession()
    batch = feed_client(session, messages.query("SELECT 1") + messages.terminate())
    assert batch.terminate and batch.forward == messages.query("SELECT 1")
    batch = feed_client(PgSession(), messages.terminate())
    assert batch.terminate and batch.forward is None


@pytest.mark.parametrize("mtype", [b"p", b"!", b"Z"])
def test_unexpected_message_types_are_protocol_violations(mtype):
    with pytest.raises(ProtocolViolation):
        feed_client(PgSession(), msg(mtype, b"x"))


def test_parse_without_terminators_is_a_protocol_violation():
    with pytest.raises(ProtocolViolation):
        feed_client(PgSession(), msg(b"P", b"name-without-end"))


@pytest.mark.parametrize(
    "sql, reason",
    [
        (b"SET work_mem = '8MB'", "set"),
        (b"PREPARE p AS SELECT 1", "prepare"),
        (b"CREATE TEMP TABLE t (x int)", "temp_object"),
        (b"DECLARE c CURSOR WITH HOLD FOR SELECT 1", "cursor"),
        (b"LISTEN chan", "listen"),
        (b"LOAD 'auto_explain'", "load"),
        (b"SELECT pg_advisory_lock(1)", "advisory_lock"),
        (b"DISCARD ALL", "discard"),
    ],
)
def test_pinning_statements_pin_once_with_their_reason(sql, reason):
    session = PgSession()
    batch = feed_client(session, messages.query(sql))
    assert session.pinned and session.pin_reasons == [reason]
    assert [r for r, _digest in batch.new_pins] == [reason]
    feed_server(session, rfq())
    assert not session.releasable
    assert feed_client(session, messages.query(sql)).new_pins == []


@pytest.mark.parametrize(
    "sql",
    [
        b"SET LOCAL work_mem = '8MB'",
        b"SELECT pg_advisory_xact_lock(1)",
        b"SET application_name = 'x'",
        b"SELECT 'SET work_mem = 1' -- DISCARD ALL",
        b"CREATE TEMP TABLE t (x int) ON COMMIT DROP",
    ],
)
def test_transaction_scoped_and_tracked_statements_do_not_pin(sql):
    session = PgSession()
    feed_client(session, messages.query(sql))
    assert not session.pinned


def test_named_statement_pins_and_unnamed_does_not():
    session = PgSession()
    feed_client(session, parse(b"", b"SELECT 1") + SYNC)
    assert not session.pinned
    batch = feed_client(session, parse(b"s1", b"SELECT 1") + SYNC)
    assert [r for r, _ in batch.new_pins] == ["named_prepared_statement"]


def test_long_statement_pins():
    session = PgSession()
    feed_client(session, messages.query(b"SELECT '" + b"x" * MAX_INSPECTED_STATEMENT + b"'"))
    assert session.pin_reasons == ["statement_too_long"]


def test_exclude_variable_sets_filter():
    session = PgSession(exclude_variable_sets=True)
    feed_client(session, messages.query("SET work_mem = '8MB'"))
    assert not session.pinned
    feed_client(session, messages.query("LISTEN x"))
    assert session.pin_reasons == ["listen"]


def test_parameter_status_updates_tracked_settings_on_both_sides_by_replacing_them():
    session = PgSession()
    applied: dict = {}
    wanted = session.wanted
    feed_client(session, messages.query("SET application_name = 'app1'"))
    new_applied = feed_server(session, messages.parameter_status("application_name", "app1") + rfq(), applied)
    assert session.wanted == {"application_name": "app1"} == new_applied
    # settings dicts are shared between clients and backends: never changed in place
    assert wanted == {} and applied == {}
    assert feed_server(session, messages.parameter_status("server_version", "15.0"), new_applied) is new_applied
    assert "server_version" not in session.wanted
    # a report of the value already in force replaces nothing
    same = session.wanted
    assert feed_server(session, messages.parameter_status("application_name", "app1"), new_applied) is new_applied
    assert session.wanted is same


def test_sync_sql_sets_resets_and_restarts_datestyle():
    assert sync_sql({"a": "1"}, {"a": "1"}) is None
    sql = sync_sql({"application_name": "it's"}, {"timezone": "UTC"}).decode()
    assert "set_config('application_name', 'it''s', false)" in sql and 'RESET "timezone"' in sql
    sql = sync_sql({"datestyle": "SQL"}, {"datestyle": "German"}).decode()
    assert sql.index('RESET "datestyle"') < sql.index("set_config('datestyle'")


def test_startup_settings_exclude_connection_keys():
    session = PgSession()
    session.set_startup_params({"user": "u", "database": "d", "TimeZone": "UTC", "_pq_.x": "1"})
    assert session.wanted == {"timezone": "UTC"}
    with pytest.raises(ProtocolViolation):
        session.set_startup_params({"bad name;": "x"})


def test_lost_backend_fails_outstanding_requests_and_owes_an_open_batch():
    session = PgSession()
    feed_client(session, messages.query("SELECT pg_sleep(10)"))
    reply = session.fail_outstanding("08006", "lost")
    assert reply.count(b"C08006") == 1 and reply.endswith(rfq())
    assert session.outstanding == 0 and session.failing is None

    feed_client(session, parse(b"", b"SELECT 1") + bind())
    assert session.fail_outstanding("08006", "lost") == b""
    batch = feed_client(session, execute() + SYNC + messages.query("SELECT 2"))
    assert b"C08006" in batch.reply and batch.reply.endswith(rfq())
    assert batch.forward == messages.query("SELECT 2") and session.outstanding == 1


def test_interrupted_transaction_fails_the_next_request():
    session = PgSession()
    feed_client(session, messages.query("BEGIN"))
    feed_server(session, rfq(b"T"))
    session.fail_outstanding("08006", "lost")
    batch = feed_client(session, messages.query("COMMIT"))
    assert batch.forward is None and b"C08006" in batch.reply
    assert feed_client(session, messages.query("SELECT 1")).forward == messages.query("SELECT 1")


def test_lost_backend_answers_a_flushed_batch_at_once_then_skips_to_sync():
    # asyncpg prepares with Parse/Describe/Flush and waits without a Sync: the error cannot wait for one
    session = PgSession()
    feed_client(session, parse(b"", b"SELECT 1") + msg(b"D", b"S\x00") + FLUSH)
    reply = session.fail_outstanding("08006", "lost")
    assert b"C08006" in reply and not reply.endswith(rfq())
    batch = feed_client(session, bind() + execute() + SYNC)
    assert batch.forward is None and batch.reply == rfq()
    assert session.releasable and not session.discarding
    assert feed_client(session, messages.query("SELECT 2")).forward == messages.query("SELECT 2")


def test_owed_error_is_delivered_by_a_later_flush():
    session = PgSession()
    feed_client(session, messages.query("BEGIN"))
    feed_server(session, rfq(b"T"))
    session.fail_outstanding("08006", "lost")
    batch = feed_client(session, parse(b"", b"COMMIT") + FLUSH)
    assert b"C08006" in batch.reply and batch.forward is None
    batch = feed_client(session, SYNC)
    assert batch.reply == rfq() and session.releasable

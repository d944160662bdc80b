"""MySession, the sans-IO command accounting and pinning of a MySQL client session, driven with bytes alone."""

from __future__ import annotations

import pytest

from rdsproxy.protocol.mysql import packets as p
from rdsproxy.protocol.mysql.session import (
    CHANGE_USER,
    FORWARD,
    KILL,
    MAX_INSPECTED_STATEMENT,
    QUIT,
    REPLY,
    RESET_CONNECTION,
    SERVER_STATUS_AUTOCOMMIT,
    SERVER_STATUS_IN_TRANS,
    MySession,
    sync_sql,
)


def query(session: MySession, sql: bytes, *, attached: bool = False):
    payload = bytes([p.COM_QUERY]) + sql
    return session.command(p.packet(0, payload), payload, attached=attached)


def test_query_is_forwarded_and_outstanding_until_its_response():
    session = MySession()
    action = query(session, b"SELECT 1")
    assert action.kind == FORWARD and action.expect == p.COM_QUERY and session.outstanding == 1
    assert not session.releasable
    session.response_done(SERVER_STATUS_AUTOCOMMIT, False)
    assert session.releasable


def test_transaction_status_holds_the_backend_and_an_error_keeps_the_last_status():
    session = MySession()
    query(session, b"BEGIN")
    session.response_done(SERVER_STATUS_AUTOCOMMIT | SERVER_STATUS_IN_TRANS, False)
    assert session.in_transaction and not session.releasable
    query(session, b"SELEC oops", attached=True)
    session.response_done(-1, True)
    assert session.in_transaction
    query(session, b"COMMIT", attached=True)
    session.response_done(SERVER_STATUS_AUTOCOMMIT, False)
    assert session.releasable


@pytest.mark.parametrize(
    "sql, reason",
    [
        (b"LOCK TABLES t WRITE", "lock_tables"),
        (b"SELECT GET_LOCK('a', 1)", "get_lock"),
        (b"SET @x = 1", "user_variable"),
        (b"SET SESSION sort_buffer_size = 1048576", "set"),
        (b"CREATE TEMPORARY TABLE t (x int)", "temp_table"),
        (b"PREPARE s FROM 'SELECT 1'", "prepare"),
        (b"SELECT /*!40001 SQL_NO_CACHE */ 1", "executable_comment"),
        (b"SELECT SQL_CALC_FOUND_ROWS * FROM t", "sql_calc_found_rows"),
    ],
)
def test_pinning_statements_pin_once_with_their_reason(sql, reason):
    session = MySession()
    action = query(session, sql)
    assert session.pinned and reason in session.pin_reasons
    assert reason in [r for r, _ in action.new_pins]
    session.response_done(SERVER_STATUS_AUTOCOMMIT, False)
    assert session.quiet and not session.releasable


def test_tracked_set_and_use_ask_for_a_read_back_instead_of_pinning():
    for sql in (b"SET sql_mode = 'ANSI'", b"SET NAMES utf8mb4", b"USE other", b"SET autocommit = 0"):
        session = MySession()
        query(session, sql)
        assert not session.pinned and session.refresh_needed, sql
        session.response_done(SERVER_STATUS_AUTOCOMMIT, False)
        assert not session.releasable  # until the proxy has read the new values back


def test_exclude_variable_sets_filter():
    session = MySession(exclude_variable_sets=True)
    query(session, b"SET SESSION sort_buffer_size = 1048576")
    assert not session.pinned
    query(session, b"SET @x = 1")
    assert session.pin_reasons == ["user_variable"]


def test_long_statement_pins():
    session = MySession()
    query(session, b"SELECT '" + b"x" * MAX_INSPECTED_STATEMENT + b"'")
    assert session.pin_reasons == ["statement_too_long"]


def test_last_insert_id_and_row_count_are_answered_from_the_clients_own_history():
    session = MySession()
    query(session, b"INSERT INTO t VALUES ()")
    session.response_done(SERVER_STATUS_AUTOCOMMIT, False)
    session.record_ok(affected_rows=1, last_insert_id=42)
    action = query(session, b"SELECT LAST_INSERT_ID() AS id, ROW_COUNT()")
    assert action.kind == REPLY and session.outstanding == 0
    assert b"\x0242" in action.data and b"id" in action.data
    # while it holds a backend (inside a transaction) the server answers: it ran this client's statements
    assert query(session, b"SELECT LAST_INSERT_ID()", attached=True).kind == FORWARD


def test_an_affected_row_count_beyond_a_signed_bigint_is_clamped():
    session = MySession()
    query(session, b"DELETE FROM t")
    session.response_done(SERVER_STATUS_AUTOCOMMIT, False)
    session.record_ok(affected_rows=(1 << 64) - 1, last_insert_id=0)
    assert session.row_count == (1 << 63) - 1


def test_a_statement_using_last_insert_id_is_marked_for_replay():
    session = MySession()
    query(session, b"INSERT INTO child (parent) VALUES (LAST_INSERT_ID())")
    assert session.reads_last_insert_id


def test_last_insert_id_with_an_argument_is_synced_before_and_read_back_after_without_pinning():
    for sql in (b"SELECT LAST_INSERT_ID(42)", b"UPDATE seq SET id = LAST_INSERT_ID(id + 1) WHERE false"):
        session = MySession()
        action = query(session, sql)
        assert action.kind == FORWARD and not session.pinned, sql
        # the backend gets the client's value first (the expression may not run), and is asked afterwards
        assert session.reads_last_insert_id and session.refresh_needed and session.refresh_last_insert_id, sql
        session.response_done(SERVER_STATUS_AUTOCOMMIT, False)
        assert not session.releasable  # until the proxy has read the value back
    query(session, b"SELECT 1")
    assert not session.reads_last_insert_id


def test_session_commands():
    session = MySession()
    assert session.command(p.packet(0, b"\x01"), b"\x01", attached=False).kind == QUIT
    assert session.command(p.packet(0, b"\x1f"), b"\x1f", attached=False).kind == RESET_CONNECTION
    assert session.command(p.packet(0, b"\x11x"), b"\x11x", attached=False).kind == CHANGE_USER
    ping = session.command(p.packet(0, b"\x0e"), b"\x0e", attached=False)
    assert ping.kind == REPLY and ping.data[4] == 0x00  # an OK packet, no backend needed
    kill = query(session, b"KILL QUERY 17")
    assert kill.kind == KILL and kill.argument == ("QUERY", 17)


def test_unknown_command_is_answered_with_1047_and_the_session_goes_on():
    session = MySession()
    action = session.command(p.packet(0, b"\x99"), b"\x99", attached=False)
    assert action.kind == REPLY and p.parse_err(action.data[4:]).code == 1047
    assert query(session, b"SELECT 1").kind == FORWARD


def test_local_infile_data_is_forwarded_until_the_empty_packet():
    session = MySession()
    query(session, b"LOAD DATA LOCAL INFILE 'x' INTO TABLE t")
    session.infile = True  # the scanner saw the server's LOCAL INFILE request
    assert session.command(p.packet(2, b"1\n2\n"), b"1\n2\n", attached=True).kind == FORWARD
    assert session.infile
    assert session.command(p.packet(3, b""), b"", attached=True).kind == FORWARD
    assert not session.infile and session.outstanding == 1


def test_statement_close_without_a_pinned_session_is_dropped():
    session = MySession()
    action = session.command(p.packet(0, b"\x19\x01\x00\x00\x00"), b"\x19\x01\x00\x00\x00", attached=False)
    assert action.kind == REPLY and action.data == b""


def test_lost_backend_fails_the_command_or_the_next_one():
    session = MySession()
    query(session, b"SELECT SLEEP(10)")
    reply = session.fail_outstanding(1053, "08S01", "lost")
    assert p.parse_err(reply[4:]).code == 1053 and session.outstanding == 0
    query(session, b"BEGIN")
    session.response_done(SERVER_STATUS_IN_TRANS, False)
    assert session.fail_outstanding(1053, "08S01", "lost") == b""
    action = query(session, b"COMMIT")
    assert action.kind == REPLY and p.parse_err(action.data[4:]).code == 1053
    assert query(session, b"SELECT 1").kind == FORWARD


def test_sync_sql_replays_only_differences():
    assert sync_sql({"sql_mode": "ANSI", "wait_timeout": "60"}, {"sql_mode": "ANSI", "wait_timeout": "60"}) is None
    sql = sync_sql({"sql_mode": "it's", "wait_timeout": "60", "database": "d"}, {}).decode()
    assert sql.startswith("SET ") and "database" not in sql
    assert "@@session.sql_mode = 'it''s'" in sql and "@@session.wait_timeout = 60" in sql


def test_connection_id_calls_answer_with_the_proxy_id():
    session = MySession()
    session.connection_id = 7
    action = query(session, b"SELECT CONNECTION_ID(), 'CONNECTION_ID()' /* CONNECTION_ID() */, connection_id ( )")
    payload = action.data[4:]
    assert payload[1:] == b"SELECT 7, 'CONNECTION_ID()' /* CONNECTION_ID() */, 7"

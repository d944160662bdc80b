"""SQL statement classifier (PostgreSQL dialect): every pinning rule and lexing trap, compiled and pure."""

from __future__ import annotations

import pytest
from codec_impls import IMPLEMENTATION_NAMES, load_implementation

from rdsproxy._codec import flags
from rdsproxy._codec.flags import (
    PIN_ADVISORY_LOCK,
    PIN_CURSOR,
    PIN_DISCARD,
    PIN_LISTEN,
    PIN_LOAD,
    PIN_MASK,
    PIN_PREPARE,
    PIN_REASON_CODES,
    PIN_SET,
    PIN_TEMP,
    SET_TRACKED,
    pin_reasons,
)


@pytest.fixture(scope="module", params=IMPLEMENTATION_NAMES)
def impl(request):
    return load_implementation(request.param)


def check(impl, sql: str, expected: int) -> None:
    got = impl.classify_pg(sql.encode())
    assert got == expected, f"{sql!r}: got {got:#x}, expected {expected:#x}"
    lexed = impl.classify.classify_pg_lexed(sql.encode())
    assert lexed == expected, f"{sql!r} lexed in full: got {lexed:#x}, expected {expected:#x}"


SET_CASES = [
    ("SET search_path TO app, public", PIN_SET),
    ("set statement_timeout = 0", PIN_SET),
    ("SET SESSION statement_timeout = 0", PIN_SET),
    ("SET SESSION AUTHORIZATION bob", PIN_SET),
    ("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", PIN_SET),
    ("SET ROLE bob", PIN_SET),
    ("SET myapp.user_id = '42'", PIN_SET),
    ("SET timezone.extra = 1", PIN_SET),
    ('SET "myapp.user_id" = 1', PIN_SET),
    ("SET application_name = 'worker'", SET_TRACKED),
    ("SET TIME ZONE 'UTC'", SET_TRACKED),
    ("SET SESSION TIME ZONE LOCAL", SET_TRACKED),
    ("SET NAMES 'UTF8'", SET_TRACKED),
    ("SET DateStyle TO ISO, DMY", SET_TRACKED),
    ("SET IntervalStyle = postgres", SET_TRACKED),
    ("SET client_encoding = 'UTF8'", SET_TRACKED),
    ("SET \"TimeZone\" = 'UTC'", SET_TRACKED),
    ("SET SESSION timezone TO 'UTC'", SET_TRACKED),
    ("SET LOCAL search_path = app", 0),
    ("set local statement_timeout = 0", 0),
    ("SET LOCAL timezone = 'UTC'", 0),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", 0),
    ("SET CONSTRAINTS ALL DEFERRED", 0),
    ("RESET ALL", PIN_SET),
    ("RESET ROLE", PIN_SET),
    ("RESET SESSION AUTHORIZATION", PIN_SET),
    ("RESET search_path", PIN_SET),
    ("RESET timezone", SET_TRACKED),
    ("RESET TIME ZONE", SET_TRACKED),
    ("reset application_name", SET_TRACKED),
    ("UPDATE t SET a = 1", 0),
    ("ALTER TABLE t ALTER COLUMN a SET DEFAULT 1", 0),
    ("SELECT set_config('search_path', 'app', false)", PIN_SET),
    ("SELECT set_config('application_name', 'x', false)", PIN_SET),
    ("SELECT pg_catalog.set_config('a.b', 'c', true)", 0),
    ("SELECT set_config('a.b', 'c', TRUE)", 0),
    ("SELECT set_config('a.b', lower('C'), true)", 0),
    ("SELECT set_config('a.b', 'c', $1)", PIN_SET),
    ("SELECT set_config('a.b', 'c', 'true')", PIN_SET),
    ("SELECT set_config('a.b', 'c', true), set_config('d.e', 'f', false)", PIN_SET),
    ("SELECT set_config('a.b', set_config('x.y', 'z', false), true)", PIN_SET),
    ("SELECT set_config('a.b', 'c'", PIN_SET),
    ("SELECT set_config /* why */ ('a.b', 'c', false)", PIN_SET),
    ("SELECT \"set_config\"('a.b', 'c', false)", PIN_SET),
    ("SELECT \"SET_CONFIG\"('a.b', 'c', false)", 0),
    ("SELECT set_config FROM settings", 0),
    ("SELECT current_setting('a.b')", 0),
]

OTHER_RULE_CASES = [
    ("PREPARE q (int) AS SELECT $1", PIN_PREPARE),
    ("EXECUTE q(1)", PIN_PREPARE),
    ("DEALLOCATE ALL", PIN_PREPARE),
    ("deallocate prepare q", PIN_PREPARE),
    ("PREPARE TRANSACTION 'gid1'", 0),
    ("COMMIT PREPARED 'gid1'", 0),
    ("CREATE TEMP TABLE t (a int)", PIN_TEMP),
    ("CREATE TEMPORARY TABLE IF NOT EXISTS t (a int)", PIN_TEMP),
    ("create global temporary table t (a int)", PIN_TEMP),
    ("CREATE LOCAL TEMP SEQUENCE s", PIN_TEMP),
    ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", PIN_TEMP),
    ("CREATE TEMP RECURSIVE VIEW v (n) AS SELECT 1", PIN_TEMP),
    ("CREATE TEMP UNLOGGED TABLE t (a int)", PIN_TEMP),
    ("CREATE TEMP TABLE t (a int) ON COMMIT DELETE ROWS", PIN_TEMP),
    ("CREATE TEMP TABLE t (a int) ON COMMIT PRESERVE ROWS", PIN_TEMP),
    ("CREATE TEMP TABLE t (a int) ON COMMIT DROP", 0),
    ("CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1", 0),
    ("CREATE TABLE pg_temp.t (a int)", PIN_TEMP),
    ('CREATE TABLE "pg_temp".t (a int)', PIN_TEMP),
    ("CREATE FUNCTION pg_temp.f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql", PIN_TEMP),
    ("CREATE TABLE t (a int)", 0),
    ("CREATE UNLOGGED TABLE t (a int)", 0),
    ("CREATE TABLE temp (a int)", 0),
    ("CREATE TEMP FUNCTION f", 0),
    ("SELECT * FROM pg_temp.t", 0),
    ("SELECT * INTO TEMP t FROM src", PIN_TEMP),
    ("SELECT 1 AS a INTO TEMPORARY TABLE t", PIN_TEMP),
    ("SELECT 1 INTO LOCAL TEMP t", PIN_TEMP),
    ("WITH a AS (SELECT 1) SELECT * INTO TEMP t FROM a", PIN_TEMP),
    ("SELECT * INTO t FROM src", 0),
    ("INSERT INTO temp VALUES (1)", 0),
    ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", PIN_CURSOR),
    ("LISTEN channel", PIN_LISTEN),
    ("UNLISTEN *", 0),
    ("NOTIFY channel", 0),
    ("LOAD 'auto_explain'", PIN_LOAD),
    ("DISCARD ALL", PIN_DISCARD),
    ("discard temp", PIN_DISCARD),
    ("SELECT pg_advisory_lock(1)", PIN_ADVISORY_LOCK),
    ("SELECT pg_advisory_lock_shared(1, 2)", PIN_ADVISORY_LOCK),
    ("SELECT pg_try_advisory_lock(1)", PIN_ADVISORY_LOCK),
    ("SELECT PG_TRY_ADVISORY_LOCK_SHARED(1)", PIN_ADVISORY_LOCK),
    ("SELECT pg_catalog.pg_advisory_lock(hashtext('job'))", PIN_ADVISORY_LOCK),
    ("SELECT pg_advisory_lock /* id */ (1)", PIN_ADVISORY_LOCK),
    ("SELECT pg_advisory_xact_lock(1)", 0),
    ("SELECT pg_try_advisory_xact_lock_shared(1)", 0),
    ("SELECT pg_advisory_unlock(1)", 0),
    ("SELECT pg_advisory_unlock_all()", 0),
    ("SELECT pg_advisory_lock FROM t", 0),
    ("SELECT 1", 0),
    ("BEGIN; INSERT INTO t VALUES (1); COMMIT", 0),
]

LEXING_CASES = [
    ("SELECT 1 -- ; SET x = 1", 0),
    ("SELECT 1; -- comment\nSET x = 1", PIN_SET),
    ("-- comment\rLISTEN a", PIN_LISTEN),
    ("/* SET x = 1 */ SELECT 1", 0),
    ("/* c */ SET x = 1", PIN_SET),
    ("/* outer /* inner */ SET x = 1; */ SELECT 1", 0),
    ("/* a /* b /* c */ */ LISTEN x */ SELECT 1", 0),
    ("/*/ LISTEN x */ SELECT 1", 0),
    ("SELECT 'a; SET x = 1'", 0),
    ("SELECT 'it''s; SET x = 1'", 0),
    ("SELECT 'back\\'; SET x = 1", PIN_SET),
    ("SELECT E'it\\'s; SET x = 1'", 0),
    ("SELECT e'\\\\'; SET x = 1", PIN_SET),
    ("SELECT E'a''b; SET x = 1'", 0),
    ("SELECT typE'\\'; SET x = 1", PIN_SET),
    ("SELECT $$; SET x = 1$$", 0),
    ("SELECT $tag$ $$ ; SET x = 1 $tag$", 0),
    ("SELECT $tag$ x $tag$; SET x = 1", PIN_SET),
    ("SELECT $a$ $ab$ ; LISTEN x $a$", 0),
    ("SELECT $1; SET x = 1", PIN_SET),
    ("SELECT $1, $2 FROM t WHERE a = $3", 0),
    ("SELECT a$b$ FROM t; SET x = 1", PIN_SET),
    ("DO $$BEGIN EXECUTE 'LISTEN x'; PERFORM pg_advisory_lock(1); END$$", 0),
    ("DO $body$ BEGIN SET search_path = x; END $body$", 0),
    ('SELECT "; SET x = 1"', 0),
    ('SELECT "a""; SET x = 1"', 0),
    ('SELECT "set"', 0),
    ('"LISTEN" x', 0),
    ("SELECT 1; LISTEN a; SELECT pg_advisory_lock(1)", PIN_LISTEN | PIN_ADVISORY_LOCK),
    ("SET LOCAL a = 1; SET b = 2", PIN_SET),
    ("SET x = 1; SET application_name = 'a'", PIN_SET | SET_TRACKED),
    ("sEt LoCaL x = 1", 0),
    ("Listen x", PIN_LISTEN),
    ("SELECT café FROM t; LISTEN x", PIN_LISTEN),
    ("", 0),
    (";;;", 0),
    ("-- only a comment", 0),
    ("SELECT 'unterminated", 0),
    ("SELECT /* unterminated", 0),
    ("SELECT $$ unterminated", 0),
    ('SELECT "unterminated', 0),
    ("SELECT E'unterminated\\", 0),
    ("SET x = 'unterminated", PIN_SET),
]


@pytest.mark.parametrize(("sql", "expected"), SET_CASES)
def test_set_rules(impl, sql, expected):
    check(impl, sql, expected)


@pytest.mark.parametrize(("sql", "expected"), OTHER_RULE_CASES)
def test_other_rules(impl, sql, expected):
    check(impl, sql, expected)


@pytest.mark.parametrize(("sql", "expected"), LEXING_CASES)
def test_lexing_traps(impl, sql, expected):
    check(impl, sql, expected)


@pytest.mark.parametrize("sql", [sql for sql, expected in SET_CASES + OTHER_RULE_CASES + LEXING_CASES if expected])
def test_every_flagged_statement_holds_a_trigger_word(impl, sql):
    assert impl.classify.pg_has_trigger_word(sql.encode())


@pytest.mark.parametrize(
    ("sql", "found"),
    [
        (b"", False),
        (b"s", False),
        (b"SELECT 1", False),
        (b"SELECT abalance FROM pgbench_accounts WHERE aid = 42;", False),
        (b"INSERT INTO t VALUES (1) RETURNING id", False),
        (b"UPDATE t SET a = 1", True),
        (b"SELECT * FROM t OFFSET 5", True),  # inside a longer word: lexed, and found harmless
        (b"sEt", True),
        (b"x set", True),
        (b"x se", False),
        (b"xxTeMp", True),
        (b"te", False),
        (b"advisor", False),
        (b"SELECT PG_ADVISORY_LOCK(1)", True),
        (b"\xffdeclare", True),
        (b"DECLAR", False),
        (b"-- load\nSELECT 1", True),  # comments and literals are searched too: lexing then rules them out
    ],
)
def test_trigger_word_search(impl, sql, found):
    assert impl.classify.pg_has_trigger_word(sql) is found
    if not found:
        assert impl.classify_pg(sql) == 0


def test_trigger_words_are_found_at_every_offset_and_in_any_case(impl):
    # the compiled search reads four bytes per round: a word must be found wherever it starts and ends
    for word in impl.classify.PG_TRIGGER_WORDS:
        for before in range(9):
            for after in range(5):
                for spelling in (word, word.upper(), word.capitalize()):
                    assert impl.classify.pg_has_trigger_word(b"x" * before + spelling + b"y" * after), spelling
            assert not impl.classify.pg_has_trigger_word(b"x" * before + word[:-1]), word[:-1]
            assert not impl.classify.pg_has_trigger_word(b"x" * before + word[:-1] + b"_" + word[-1:]), word


def test_trigger_words_are_lowercase_and_shared(impl):
    words = impl.classify.PG_TRIGGER_WORDS
    assert words == load_implementation("pure").classify.PG_TRIGGER_WORDS
    assert all(word == word.lower() and len(word) >= 3 for word in words)


def test_accepts_bytes_like_only(impl):
    assert impl.classify_pg(bytearray(b"LISTEN x")) == PIN_LISTEN
    assert impl.classify_pg(memoryview(b"LOAD 'x'")) == PIN_LOAD
    with pytest.raises(TypeError):
        impl.classify_pg("LISTEN x")
    with pytest.raises(TypeError):
        impl.classify_pg(5)


def test_latin1_bytes_are_identifier_characters(impl):
    assert impl.classify_pg(b"SELECT \xe9t\xe9; DISCARD ALL") == PIN_DISCARD
    assert impl.classify_pg(b"SELECT \xffE'\\'; DISCARD ALL") == PIN_DISCARD  # \xffE is one identifier


def test_compiled_flags_equal_flags_module(impl):
    expected = {name: getattr(flags, name) for name in impl.classify.FLAGS}
    assert impl.classify.FLAGS == expected
    assert set(impl.classify.FLAGS) == {
        "SET_TRACKED",
        *(name for name in dir(flags) if name.startswith("PIN_") and name not in ("PIN_MASK", "PIN_REASON_CODES")),
    }


def test_reason_codes():
    assert PIN_REASON_CODES == {
        PIN_SET: "set",
        PIN_PREPARE: "prepare",
        PIN_TEMP: "temp_object",
        PIN_CURSOR: "cursor",
        PIN_LISTEN: "listen",
        PIN_LOAD: "load",
        PIN_ADVISORY_LOCK: "advisory_lock",
        PIN_DISCARD: "discard",
    }
    assert PIN_MASK == 0b111111101
    assert not PIN_MASK & SET_TRACKED
    assert pin_reasons(PIN_LISTEN | PIN_SET | SET_TRACKED) == ["set", "listen"]


def test_tokenize_marks_kinds_and_quoted_identifier_text(impl):
    c = impl.classify
    sql = b'SELECT "a""b".x, $1 FROM t; (E\'\\\'\')'
    assert c.tokenize(sql) == [
        (c.IDENT, 0, 6),
        (c.QIDENT, 8, 12),
        (c.DOT, 13, 14),
        (c.IDENT, 14, 15),
        (c.OTHER, 15, 16),
        (c.OTHER, 17, 19),
        (c.IDENT, 20, 24),
        (c.IDENT, 25, 26),
        (c.SEMI, 26, 27),
        (c.LPAREN, 28, 29),
        (c.OTHER, 29, 34),
        (c.RPAREN, 34, 35),
    ]


def test_tokenize_mysql_options(impl):
    c = impl.classify
    sql = b"SELECT `a``b`, \"x\\\"y\", 'it\\'s' # c\n-- c\n--x"
    kinds = [kind for kind, _, _ in c.tokenize(sql, c.MYSQL_LEX_OPTIONS)]
    assert kinds == [c.IDENT, c.QIDENT, c.OTHER, c.OTHER, c.OTHER, c.OTHER, c.OTHER, c.OTHER, c.IDENT]
    assert c.tokenize(b"/* a /* b */ LISTEN */", c.MYSQL_LEX_OPTIONS) == [
        (c.IDENT, 13, 19),
        (c.OTHER, 20, 21),
        (c.OTHER, 21, 22),
    ]

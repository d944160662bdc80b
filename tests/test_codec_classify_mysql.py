"""SQL statement classifier (MySQL / MariaDB dialect): every pinning rule and lexing trap, compiled and pure."""

from __future__ import annotations

import pytest
from codec_impls import IMPLEMENTATION_NAMES, load_implementation

from rdsproxy._codec import flags
from rdsproxy._codec.flags import (
    MY_KILL,
    MY_PIN_CALC_FOUND_ROWS,
    MY_PIN_EXECUTABLE_COMMENT,
    MY_PIN_GET_LOCK,
    MY_PIN_LOCK_TABLES,
    MY_PIN_MASK,
    MY_PIN_PREPARE,
    MY_PIN_READ_LOCK,
    MY_PIN_REASON_CODES,
    MY_PIN_SET,
    MY_PIN_TEMP,
    MY_PIN_USER_VARIABLE,
    MY_READS_LAST_INSERT_ID,
    MY_READS_ROW_COUNT,
    MY_SET_TRACKED,
    MY_SETS_LAST_INSERT_ID,
    MY_USE,
    PIN_MASK,
    my_pin_reasons,
)

EXEC = MY_PIN_EXECUTABLE_COMMENT
USER = MY_PIN_USER_VARIABLE
TRACKED = MY_SET_TRACKED


@pytest.fixture(scope="module", params=IMPLEMENTATION_NAMES)
def impl(request):
    return load_implementation(request.param)


def check(impl, sql: str, expected: int, **kwargs) -> None:
    got = impl.classify_mysql(sql.encode(), **kwargs)
    assert got == expected, f"{sql!r}: got {got:#x}, expected {expected:#x}"
    lexed = impl.classify.classify_mysql_lexed(sql.encode(), **kwargs)
    assert lexed == expected, f"{sql!r} lexed in full: got {lexed:#x}, expected {expected:#x}"


SET_CASES = [
    ("SET autocommit = 0", TRACKED),
    ("set AUTOCOMMIT=1", TRACKED),
    ("SET SESSION sql_mode = 'ANSI'", TRACKED),
    ("SET LOCAL time_zone = '+00:00'", TRACKED),
    ("SET @@session.sql_mode = ''", TRACKED),
    ("SET @@SESSION.time_zone = 'UTC'", TRACKED),
    ("SET @@local.wait_timeout = 10", TRACKED),
    ("SET @@autocommit := 1", TRACKED),
    ("SET `autocommit` = 1", TRACKED),
    ("SET @@session.`sql_mode` = ''", TRACKED),
    ("SET NAMES utf8mb4", TRACKED),
    ("SET NAMES 'utf8mb4' COLLATE 'utf8mb4_bin'", TRACKED),
    ("SET NAMES DEFAULT", TRACKED),
    ("SET CHARACTER SET utf8", TRACKED),
    ("SET CHARSET latin1", TRACKED),
    ("SET character_set_client = utf8, character_set_results = NULL, collation_connection = utf8_bin", TRACKED),
    ("SET character_set_connection = utf8mb4", TRACKED),
    ("SET auto_increment_increment = 2, interactive_timeout = 5, net_write_timeout = 60", TRACKED),
    ("SET session_track_schema = OFF, query_cache_type = 0", TRACKED),
    ("SET transaction_isolation = 'READ-COMMITTED'", TRACKED),
    ("SET SESSION tx_isolation = 'SERIALIZABLE'", TRACKED),
    ("SET @@session.transaction_read_only = 1", TRACKED),
    ("SET tx_read_only = 0", TRACKED),
    ("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED", TRACKED),
    ("SET SESSION TRANSACTION READ ONLY", TRACKED),
    ("SET LOCAL TRANSACTION READ WRITE", TRACKED),
    ("SET sql_mode = CONCAT(@@sql_mode, ',ANSI_QUOTES'), @@session.time_zone = '+02:00'", TRACKED),
    ("SET sql_mode = (SELECT 'a,b'), autocommit = IF(1, 0, 1)", TRACKED),
    # untracked session state pins
    ("SET sql_select_limit = 10", MY_PIN_SET),
    ("SET SESSION max_execution_time = 100", MY_PIN_SET),
    ("SET @@session.optimizer_switch = 'index_merge=off'", MY_PIN_SET),
    ("SET @@foreign_key_checks = 0", MY_PIN_SET),
    ("SET `unique_checks` = 0", MY_PIN_SET),
    ("SET sql_mode = '', foreign_key_checks = 0", TRACKED | MY_PIN_SET),
    ("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", MY_PIN_SET),  # the next transaction, on whichever backend
    ("SET TRANSACTION READ ONLY", MY_PIN_SET),
    ("SET @@transaction_isolation = 'READ-COMMITTED'", MY_PIN_SET),  # MySQL: next transaction only
    ("SET @@tx_read_only = 1", MY_PIN_SET),
    ("SET ROLE admin", MY_PIN_SET),
    ("SET ROLE NONE", MY_PIN_SET),
    ("SET my_cache.key_buffer_size = 1024", MY_PIN_SET),
    ("SET @@session", MY_PIN_SET),
    ("SET character = 1", MY_PIN_SET),
    ("SET foo", MY_PIN_SET),
    # not session state
    ("SET GLOBAL max_connections = 100", 0),
    ("SET @@global.max_connections = 100", 0),
    ("SET @@GLOBAL.sql_mode = ''", 0),
    ("SET PERSIST max_connections = 100", 0),
    ("SET PERSIST_ONLY back_log = 100", 0),
    ("SET @@persist.max_connections = 100", 0),
    ("SET GLOBAL TRANSACTION ISOLATION LEVEL READ COMMITTED", 0),
    ("SET GLOBAL a = 1, b = 2", 0),  # later assignments inherit the latest scope keyword
    ("SET GLOBAL a = 1, SESSION b = 2", MY_PIN_SET),
    ("SET GLOBAL a = 1, SESSION autocommit = 0, c = 3", TRACKED | MY_PIN_SET),
    ("SET SESSION a = 1, GLOBAL b = 2, c = 3", MY_PIN_SET),
    ("SET GLOBAL a = 1, @@session.autocommit = 0, c = 1", TRACKED),
    ("SET GLOBAL a = 1, @@autocommit = 0", TRACKED),
    ("SET PASSWORD = PASSWORD('secret')", 0),
    ("SET PASSWORD FOR bob = 'x'", 0),
    ("SET DEFAULT ROLE admin FOR bob", 0),
    ("SET STATEMENT max_statement_time = 10 FOR SELECT * FROM t", 0),
    ("SET STATEMENT sql_mode = '', foreign_key_checks = 0 FOR INSERT INTO t VALUES (1)", 0),
    ("SET STATEMENT max_statement_time = 1 FOR CREATE TEMPORARY TABLE t (a int)", MY_PIN_TEMP),
    ("SET STATEMENT a = (SELECT 1 FOR UPDATE) FOR SELECT GET_LOCK('x', 1)", MY_PIN_GET_LOCK),
    ("SET STATEMENT a = 1 FOR SET b = 2", MY_PIN_SET),
    # user variables
    ("SET @x = 1", USER),
    ("SET @x := 1", USER),
    ("set @`quoted name` = 1", USER),
    ("SET @'x' = 1, @\"y\" = 2", USER),
    ("SET @a.b = 1", USER),
    ("SET @x = 1, sql_mode = ''", USER | TRACKED),
    ("SET @x = 1, foreign_key_checks = 0", USER | MY_PIN_SET),
    ("SET sql_mode = @saved_mode", TRACKED),
    ("SET @", USER),
]

USER_VARIABLE_CASES = [
    ("SELECT @x := 5", USER),
    ("SELECT @x:=5", USER),
    ("SELECT @a.b := 1", USER),
    ("SELECT @`x` := id FROM t", USER),
    ("UPDATE t SET a = (@old := a) + 1", USER),
    ("SELECT a, b INTO @a, @b FROM t LIMIT 1", USER),
    ("SELECT a INTO @a FROM t", USER),
    ("SELECT a FROM t INTO @a", USER),
    ("SELECT @x", 0),
    ("SELECT @x, @@sql_mode, @@session.time_zone", 0),
    ("SELECT @x = 1", 0),  # a comparison
    ("SELECT * FROM t WHERE a = @x", 0),
    ("SELECT a INTO OUTFILE '/tmp/x' FROM t", 0),
    ("INSERT INTO t VALUES (@x)", 0),
    ("SELECT @@x := 1", 0),
    ("SELECT a: = 1", 0),
    ("SELECT 'x' := 1", 0),
]

OTHER_RULE_CASES = [
    ("LOCK TABLES t READ", MY_PIN_LOCK_TABLES),
    ("lock table t1 write, t2 read local", MY_PIN_LOCK_TABLES),
    ("LOCK INSTANCE FOR BACKUP", MY_PIN_LOCK_TABLES),
    ("UNLOCK TABLES", 0),
    ("BACKUP STAGE START", MY_PIN_LOCK_TABLES),
    ("BACKUP LOCK t", MY_PIN_LOCK_TABLES),
    ("BACKUP UNLOCK", 0),
    ("FLUSH TABLES WITH READ LOCK", MY_PIN_READ_LOCK),
    ("flush tables t1, t2 with read lock", MY_PIN_READ_LOCK),
    ("FLUSH LOCAL TABLES t FOR EXPORT", MY_PIN_READ_LOCK),
    ("FLUSH TABLES", 0),
    ("FLUSH PRIVILEGES", 0),
    ("SELECT * FROM t LOCK IN SHARE MODE", 0),
    ("SELECT * FROM t FOR UPDATE", 0),
    ("SELECT GET_LOCK('job', 10)", MY_PIN_GET_LOCK),
    ("select get_lock /* name */ ('job', 10)", MY_PIN_GET_LOCK),
    ("DO GET_LOCK('a', 0)", MY_PIN_GET_LOCK),
    ("SELECT RELEASE_LOCK('job')", 0),
    ("SELECT IS_FREE_LOCK('job'), IS_USED_LOCK('job'), RELEASE_ALL_LOCKS()", 0),
    ("SELECT get_lock FROM t", 0),
    ("SELECT `GET_LOCK`('a', 1)", 0),  # a stored function, not the builtin
    ("CREATE TEMPORARY TABLE t (a int)", MY_PIN_TEMP),
    ("create temporary table if not exists t select 1", MY_PIN_TEMP),
    ("CREATE OR REPLACE TEMPORARY TABLE t (a int)", MY_PIN_TEMP),
    ("CREATE TEMPORARY SEQUENCE s", MY_PIN_TEMP),
    ("CREATE TABLE t (a int)", 0),
    ("CREATE TABLE temporary (a int)", 0),
    ("DROP TEMPORARY TABLE t", 0),
    ("PREPARE s FROM 'SELECT 1'", MY_PIN_PREPARE),
    ("EXECUTE s USING @a", MY_PIN_PREPARE),
    ("EXECUTE IMMEDIATE 'SELECT 1'", MY_PIN_PREPARE),
    ("DEALLOCATE PREPARE s", MY_PIN_PREPARE),
    ("DROP PREPARE s", MY_PIN_PREPARE),
    ("DROP TABLE prepare", 0),
    ("XA PREPARE 'x'", 0),
    ("SELECT SQL_CALC_FOUND_ROWS * FROM t LIMIT 10", MY_PIN_CALC_FOUND_ROWS),
    ("SELECT sql_calc_found_rows a FROM t", MY_PIN_CALC_FOUND_ROWS),
    ("SELECT FOUND_ROWS()", MY_READS_ROW_COUNT),
    ("SELECT ROW_COUNT()", MY_READS_ROW_COUNT),
    ("SELECT row_count( )", MY_READS_ROW_COUNT),
    ("SELECT LAST_INSERT_ID()", MY_READS_LAST_INSERT_ID),
    ("INSERT INTO t2 VALUES (LAST_INSERT_ID())", MY_READS_LAST_INSERT_ID),
    ("SELECT last_insert_id(/* none */)", MY_READS_LAST_INSERT_ID),
    ("SELECT LAST_INSERT_ID(42)", MY_SETS_LAST_INSERT_ID),
    ("UPDATE t SET id = LAST_INSERT_ID(id + 1)", MY_SETS_LAST_INSERT_ID),
    ("DO last_insert_id ( 0 )", MY_SETS_LAST_INSERT_ID),
    ("SELECT LAST_INSERT_ID((SELECT 1))", MY_SETS_LAST_INSERT_ID),
    ("SELECT LAST_INSERT_ID(LAST_INSERT_ID() + 1)", MY_SETS_LAST_INSERT_ID | MY_READS_LAST_INSERT_ID),
    ("SELECT last_insert_id FROM t", 0),
    ("SELECT LAST_INSERT_ID(), ROW_COUNT()", MY_READS_LAST_INSERT_ID | MY_READS_ROW_COUNT),
    ("USE app", MY_USE),
    ("use `my db`", MY_USE),
    ("SELECT * FROM used", 0),
    ("KILL 5", MY_KILL),
    ("KILL QUERY 5", MY_KILL),
    ("SELECT kill FROM t", 0),
    ("SELECT 1", 0),
    ("BEGIN; INSERT INTO t VALUES (1); COMMIT", 0),
    ("START TRANSACTION READ ONLY", 0),
    ("UPDATE t SET a = 1", 0),
    ("INSERT INTO t SET a = 1, b = @x", 0),
]

EXECUTABLE_COMMENT_CASES = [
    ("/*!40101 SET NAMES utf8mb4 */", EXEC | TRACKED),
    ("/*!40101 SET @OLD_SQL_MODE=@@SQL_MODE, SQL_MODE='NO_AUTO_VALUE_ON_ZERO' */;", EXEC | USER | TRACKED),
    ("/*!40014 SET @OLD_UNIQUE_CHECKS=@@UNIQUE_CHECKS, UNIQUE_CHECKS=0 */", EXEC | USER | MY_PIN_SET),
    ("SELECT /*! SQL_CALC_FOUND_ROWS */ * FROM t", EXEC | MY_PIN_CALC_FOUND_ROWS),
    ("SELECT 1 /*!50001 , GET_LOCK('x', 1) */", EXEC | MY_PIN_GET_LOCK),
    ("/*M! LOCK TABLES t READ */", EXEC | MY_PIN_LOCK_TABLES),
    ("/*M!100301 SET STATEMENT max_statement_time = 1 FOR */ SELECT 1", EXEC),
    ("SELECT 1 /*!*/", EXEC),
    ("/*!50003 CREATE*/ /*!50020 DEFINER=`root`@`localhost`*/ /*!50003 TRIGGER t BEFORE INSERT ON x */", EXEC),
    ("SELECT 1 /*!50001 ; SET @x = 1 */; SELECT 2", EXEC | USER),
    ("SELECT '/*! SET @x = 1 */'", 0),
    ("/*! SELECT '*/' */ SELECT 1", EXEC),
    ("SELECT 1 /* ! LOCK TABLES t READ */", 0),
    ("SELECT 1 /*+ MAX_EXECUTION_TIME(1000) */", 0),
    ("SELECT 1 /*m! LOCK TABLES t READ */", 0),  # MariaDB only knows the upper-case M
    ("/*!40101 SET @x = 1", EXEC | USER),  # unterminated: still code
    ("/*! SELECT 1 */ */ LOCK TABLES t READ", EXEC),
]

LEXING_CASES = [
    ("SELECT 1 -- ; SET @x = 1", 0),
    ("SELECT 1 --\tcomment\n; SET @x = 1", USER),
    ("SELECT 1 --; SET @x = 1", USER),  # '--' without a space is two minus signs
    ("SELECT 5--1; SET @x = 1", USER),
    ("SELECT 1 # ; SET @x = 1", 0),
    ("SELECT 1 # comment\n; SET @x = 1", USER),
    ("SELECT 1 # comment\nSET @x = 1", 0),  # one statement: SET is not its first keyword
    ("SELECT 1; # c\r LOCK TABLES t READ", MY_PIN_LOCK_TABLES),
    ("/* SET @x = 1 */ SELECT 1", 0),
    ("/* a /* b */ SET @x = 1", USER),  # comments do not nest
    ("SELECT 'a; SET @x = 1'", 0),
    ("SELECT 'it''s; SET @x = 1'", 0),
    ("SELECT 'it\\'s; SET @x = 1'", 0),
    ("SELECT '\\\\'; SET @x = 1", USER),
    ('SELECT "a; SET @x = 1"', 0),
    ('SELECT "a\\"; SET @x = 1"', 0),
    ('SELECT "a""; SET @x = 1"', 0),
    ("SELECT `a; SET @x = 1`", 0),
    ("SELECT `a``; SET @x = 1`", 0),
    ("SELECT `a\\`; SET @x = 1", USER),  # no escapes in backticks
    ("SELECT `LOCK` FROM t", 0),
    ("`LOCK` TABLES t", 0),
    ('SELECT "GET_LOCK"(1)', 0),
    ("SELECT $$; SET @x = 1$$", USER),  # no dollar quotes in MySQL
    ("SELECT x'41'; SET @x = 1", USER),
    ("SELECT _utf8mb4'a' COLLATE utf8mb4_bin; LOCK TABLES t READ", MY_PIN_LOCK_TABLES),
    ("SELECT 1; LOCK TABLES t READ; SELECT GET_LOCK('a', 1)", MY_PIN_LOCK_TABLES | MY_PIN_GET_LOCK),
    ("sEt @X = 1", USER),
    ("SELECT café FROM t; SET @x = 1", USER),
    ("", 0),
    (";;;", 0),
    ("# only a comment", 0),
    ("SELECT 'unterminated", 0),
    ("SELECT /* unterminated", 0),
    ("SELECT `unterminated", 0),
    ('SELECT "unterminated\\', 0),
    ("SET @x = 'unterminated", USER),
]


@pytest.mark.parametrize(("sql", "expected"), SET_CASES)
def test_set_rules(impl, sql, expected):
    check(impl, sql, expected)


@pytest.mark.parametrize(("sql", "expected"), USER_VARIABLE_CASES)
def test_user_variable_rules(impl, sql, expected):
    check(impl, sql, expected)


@pytest.mark.parametrize(("sql", "expected"), OTHER_RULE_CASES)
def test_other_rules(impl, sql, expected):
    check(impl, sql, expected)


@pytest.mark.parametrize(("sql", "expected"), EXECUTABLE_COMMENT_CASES)
def test_executable_comments_are_code(impl, sql, expected):
    check(impl, sql, expected)


@pytest.mark.parametrize(("sql", "expected"), LEXING_CASES)
def test_lexing_traps(impl, sql, expected):
    check(impl, sql, expected)


ALL_CASES = SET_CASES + USER_VARIABLE_CASES + OTHER_RULE_CASES + EXECUTABLE_COMMENT_CASES + LEXING_CASES


@pytest.mark.parametrize("sql", [sql for sql, expected in ALL_CASES if expected])
def test_every_flagged_statement_holds_a_trigger_word(impl, sql):
    assert impl.classify.mysql_has_trigger_word(sql.encode())


@pytest.mark.parametrize(
    ("sql", "found"),
    [
        (b"", False),
        (b"SELECT c FROM sbtest1 WHERE id=4242", False),
        (b"INSERT INTO t (a) VALUES (1)", False),
        (b"UPDATE t SET a = 1", True),
        (b"SELECT @x", True),
        (b"SELECT 1 /* why */", True),  # any comment: lexing then tells an executable one apart
        (b"SELECT * FROM users", True),  # "use" inside a word: lexed, and found harmless
        (b"select Last_Insert_Id()", True),
        (b"SELECT row_coun", False),
        (b"/", False),
    ],
)
def test_trigger_word_search(impl, sql, found):
    assert impl.classify.mysql_has_trigger_word(sql) is found
    if not found:
        assert impl.classify_mysql(sql) == 0


def test_trigger_words_are_found_at_every_offset_and_in_any_case(impl):
    for word in impl.classify.MYSQL_TRIGGER_WORDS:
        assert word == word.lower()
        for before in range(9):
            for after in range(5):
                for spelling in (word, word.upper()):
                    assert impl.classify.mysql_has_trigger_word(b"x" * before + spelling + b"y" * after), spelling
            assert not impl.classify.mysql_has_trigger_word(b"x" * before + word[:-1]), word[:-1]


def test_sql_mode_changes_the_lexing(impl):
    c = impl.classify
    trap = "SELECT '\\'; SET @x = 1; -- '"
    check(impl, trap, 0)  # default: \' is an escaped quote, everything is one string
    no_backslash = c.mysql_lex_options("STRICT_TRANS_TABLES,NO_BACKSLASH_ESCAPES")
    assert no_backslash == c.MYSQL_LEX_OPTIONS & ~c.LEX_BACKSLASH_STRINGS
    check(impl, trap, USER, options=no_backslash)
    ansi = c.mysql_lex_options(b"ANSI")
    assert ansi == c.MYSQL_LEX_OPTIONS & ~c.LEX_DQUOTE_STRINGS
    check(impl, 'SELECT "a"; SET @x = 1', USER, options=ansi)  # "a" is an identifier either way
    check(impl, 'SET "autocommit" = 1', 0)  # a string where a name belongs: a syntax error
    check(impl, 'SET "autocommit" = 1', TRACKED, options=c.mysql_lex_options("ANSI_QUOTES"))
    assert c.mysql_lex_options("") == c.MYSQL_LEX_OPTIONS


def test_accepts_bytes_like_only(impl):
    assert impl.classify_mysql(bytearray(b"LOCK TABLES t READ")) == MY_PIN_LOCK_TABLES
    assert impl.classify_mysql(memoryview(b"USE x")) == MY_USE
    with pytest.raises(TypeError):
        impl.classify_mysql("USE x")


def test_tokenize_executable_comments(impl):
    c = impl.classify
    sql = b"/*!40101 SET */ x /*M!100301 y*/ /* z */"
    assert c.tokenize(sql, c.MYSQL_LEX_OPTIONS) == [
        (c.EXEC_COMMENT, 0, 8),
        (c.IDENT, 9, 12),
        (c.IDENT, 16, 17),
        (c.EXEC_COMMENT, 18, 28),
        (c.IDENT, 29, 30),
    ]
    without = c.MYSQL_LEX_OPTIONS & ~c.LEX_EXECUTABLE_COMMENTS
    assert c.tokenize(sql, without) == [(c.IDENT, 16, 17)]
    assert c.tokenize(b"a */ b", c.MYSQL_LEX_OPTIONS) == [
        (c.IDENT, 0, 1),
        (c.OTHER, 2, 3),
        (c.OTHER, 3, 4),
        (c.IDENT, 5, 6),
    ]


def test_mysql_flags_equal_flags_module(impl):
    assert impl.classify.MY_FLAGS == {name: getattr(flags, name) for name in impl.classify.MY_FLAGS}
    assert set(impl.classify.MY_FLAGS) == {name for name in dir(flags) if name.startswith("MY_") and name.isupper()} - {
        "MY_PIN_MASK",
        "MY_PIN_REASON_CODES",
    }


def test_mysql_reason_codes():
    assert MY_PIN_REASON_CODES == {
        MY_PIN_LOCK_TABLES: "lock_tables",
        MY_PIN_READ_LOCK: "flush_tables_with_read_lock",
        MY_PIN_GET_LOCK: "get_lock",
        MY_PIN_USER_VARIABLE: "user_variable",
        MY_PIN_SET: "set",
        MY_PIN_TEMP: "temp_table",
        MY_PIN_PREPARE: "prepare",
        MY_PIN_EXECUTABLE_COMMENT: "executable_comment",
        MY_PIN_CALC_FOUND_ROWS: "sql_calc_found_rows",
    }
    assert MY_PIN_MASK == 0b111111111 << 16
    assert not MY_PIN_MASK & (TRACKED | MY_USE | MY_READS_LAST_INSERT_ID | MY_READS_ROW_COUNT | MY_KILL)
    assert not MY_PIN_MASK & PIN_MASK  # the PostgreSQL bits stay apart
    assert max(MY_PIN_REASON_CODES) < MY_KILL < 1 << 31  # every flag fits a C int
    assert my_pin_reasons(MY_PIN_SET | USER | TRACKED | EXEC) == ["user_variable", "set", "executable_comment"]


@pytest.mark.parametrize(
    ("sql", "items"),
    [
        ("SELECT LAST_INSERT_ID()", [(MY_READS_LAST_INSERT_ID, b"LAST_INSERT_ID()")]),
        ("select last_insert_id( ) ;", [(MY_READS_LAST_INSERT_ID, b"last_insert_id( )")]),
        ("SELECT ROW_COUNT() AS n", [(MY_READS_ROW_COUNT, b"n")]),
        (
            "/* orm */ SELECT LAST_INSERT_ID() AS `id``x`, row_count() 'rows', LAST_INSERT_ID() \"again\"",
            [(MY_READS_LAST_INSERT_ID, b"id`x"), (MY_READS_ROW_COUNT, b"rows"), (MY_READS_LAST_INSERT_ID, b"again")],
        ),
        ("SELECT LAST_INSERT_ID() id", [(MY_READS_LAST_INSERT_ID, b"id")]),
        ("SELECT LAST_INSERT_ID() FROM dual", None),
        ("SELECT LAST_INSERT_ID() from", None),
        ("SELECT LAST_INSERT_ID(5)", None),
        ("SELECT LAST_INSERT_ID(), 1", None),
        ("SELECT FOUND_ROWS()", None),
        ("SELECT LAST_INSERT_ID() AS", None),
        ("SELECT LAST_INSERT_ID() AS 'a\\'b'", None),
        ("SELECT LAST_INSERT_ID(),", None),
        ("SELECT LAST_INSERT_ID(); SELECT 1", None),
        ("SELECT LAST_INSERT_ID();;", None),
        ("SELECT /*! LAST_INSERT_ID() */", None),
        ("SELECT", None),
        ("", None),
    ],
)
def test_session_function_selects(impl, sql, items):
    c = impl.classify
    assert c.mysql_session_function_items(sql.encode()) == items
    expected = 0
    for flag, _ in items or ():
        expected |= flag
    assert c.mysql_select_of_session_functions(sql.encode()) == expected


@pytest.mark.parametrize(
    ("sql", "target"),
    [
        ("KILL 5", ("CONNECTION", 5)),
        ("kill connection 12345678901", ("CONNECTION", 12345678901)),
        ("KILL QUERY 7;", ("QUERY", 7)),
        ("/* admin */ KILL HARD QUERY 3", ("QUERY", 3)),
        ("KILL SOFT 9", ("CONNECTION", 9)),
        ("KILL QUERY ID 5", None),
        ("KILL USER bob", None),
        ("KILL CONNECTION_ID()", None),
        ("KILL 5; KILL 6", None),
        ("KILL", None),
        ("KILL '5'", None),
        ("SELECT 5", None),
        ("KILL -5", None),
    ],
)
def test_parse_kill(impl, sql, target):
    assert impl.classify.parse_kill(sql.encode()) == target

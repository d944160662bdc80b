"""The compiled codecs and their pure-Python twins agree on arbitrary input; the selector picks the right ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from codec_impls import (
    chunks,
    column_definition,
    eof_packet,
    err_packet,
    lenenc_int,
    load_implementation,
    my_packet,
    ok_packet,
    pg_message,
    response_scripts,
    startup_packet,
    text_row,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rdsproxy._codec as codec
from rdsproxy.errors import ProtocolViolation

PARITY = settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SQL_WORDS = """
    SET RESET LOCAL SESSION AUTHORIZATION CHARACTERISTICS TRANSACTION CONSTRAINTS ROLE TIME ZONE NAMES ALL
    timezone TimeZone "TimeZone" DateStyle application_name search_path a.b set_config "set_config" pg_catalog.
    true TRUE false PREPARE EXECUTE DEALLOCATE CREATE OR REPLACE GLOBAL TEMP TEMPORARY UNLOGGED TABLE SEQUENCE
    VIEW RECURSIVE pg_temp "pg_temp" ON COMMIT DROP SELECT WITH INTO DECLARE LISTEN UNLISTEN LOAD DISCARD
    pg_advisory_lock pg_try_advisory_lock_shared pg_advisory_xact_lock x E é \xff
""".split()
SQL_PUNCTUATION = [
    "\n",
    "\r",
    *"""( ) ; . , = ' '' 'x' E' e'\\'' \\ " "" $ $$ $1 $tag$ $a -- - /* */ / * # ` 1""".split(),
]

fragment_sql = st.lists(st.one_of(st.sampled_from(SQL_WORDS), st.sampled_from(SQL_PUNCTUATION)), max_size=40).flatmap(
    lambda parts: st.lists(st.sampled_from(["", " "]), min_size=len(parts), max_size=len(parts)).map(
        lambda seps: "".join(part + sep for part, sep in zip(parts, seps)).encode("latin-1")
    )
)
# Dense mixes of the characters that open and close literals and comments, to reach the lexer's corners.
lexer_soup = st.lists(
    st.sampled_from("""/* */ * / ' E' \\ " ` $ $$ $a$ $ab$ -- - # a 1 ; ( ) .""".split() + ["\n", " "]),
    max_size=30,
).map(lambda parts: "".join(parts).encode())
sql_inputs = st.one_of(st.binary(max_size=300), fragment_sql, lexer_soup)


@pytest.fixture(scope="module")
def twins():
    return load_implementation("compiled"), load_implementation("pure")


@PARITY
@given(sql=sql_inputs)
def test_classify_pg_parity(twins, sql):
    compiled, pure = twins
    assert compiled.classify_pg(sql) == pure.classify_pg(sql)


@PARITY
@given(sql=sql_inputs)
def test_trigger_word_search_is_sound(twins, sql):
    """Where the trigger-word search finds nothing, lexing every statement finds no flags either."""
    compiled, pure = twins
    found = compiled.classify.pg_has_trigger_word(sql)
    assert found == pure.classify.pg_has_trigger_word(sql)
    lexed = compiled.classify.classify_pg_lexed(sql)
    assert lexed == pure.classify.classify_pg_lexed(sql)
    assert found or lexed == 0


@PARITY
@given(sql=sql_inputs, options=st.integers(min_value=0, max_value=255))
def test_tokenize_parity(twins, sql, options):
    compiled, pure = twins
    assert compiled.classify.tokenize(sql, options) == pure.classify.tokenize(sql, options)


def test_public_api_is_the_same(twins):
    compiled, pure = twins
    for module in ("pgframe", "classify", "myframe"):
        compiled_module, pure_module = getattr(compiled, module), getattr(pure, module)
        assert compiled_module.__all__ == pure_module.__all__
        for name in compiled_module.__all__:
            compiled_value, pure_value = getattr(compiled_module, name), getattr(pure_module, name)
            if not callable(compiled_value):
                assert compiled_value == pure_value, name


def outcome(call):
    """What a codec call returned, or the error it raised, in a comparable form."""
    try:
        return ("ok", call())
    except ProtocolViolation as exc:
        return ("error", str(exc))


def wire_messages():
    typed = st.builds(
        pg_message, st.sampled_from([b"Q", b"P", b"B", b"D", b"Z", b"E", b"S", b"c"]), st.binary(max_size=40)
    )
    startup = st.builds(startup_packet, st.sampled_from([196608, 80877103, 80877104, 80877102]), st.binary(max_size=20))
    return st.lists(st.one_of(typed, startup, st.binary(max_size=12)), max_size=12).map(b"".join)


@PARITY
@given(
    stream=wire_messages(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
    start_typed=st.booleans(),
    limit=st.sampled_from([16, 64, 256 * 1024 * 1024]),
)
def test_client_framer_parity(twins, stream, cuts, start_typed, limit):
    compiled, pure = twins
    framers = [compiled.ClientFramer(limit), pure.ClientFramer(limit)]
    for framer in framers:
        framer.in_startup = not start_typed
    points = sorted({cut for cut in cuts if 0 < cut < len(stream)})
    bounds = [0, *points, len(stream)]
    for start, end in zip(bounds, bounds[1:]):
        piece = stream[start:end]
        results = [outcome(lambda framer=framer, piece=piece: framer.feed(piece)) for framer in framers]
        assert results[0] == results[1]
        assert framers[0].pending == framers[1].pending
        assert framers[0].in_startup == framers[1].in_startup
        if results[0][0] == "error":
            break


@PARITY
@given(
    stream=wire_messages(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
    interesting=st.binary(max_size=6),
)
def test_server_scanner_parity(twins, stream, cuts, interesting):
    compiled, pure = twins
    scanners = [compiled.ServerScanner(interesting), pure.ServerScanner(interesting)]
    points = sorted({cut for cut in cuts if 0 < cut < len(stream)})
    bounds = [0, *points, len(stream)]
    for start, end in zip(bounds, bounds[1:]):
        piece = stream[start:end]
        results = [outcome(lambda scanner=scanner, piece=piece: scanner.feed(piece)) for scanner in scanners]
        assert results[0] == results[1]
        assert scanners[0].at_boundary == scanners[1].at_boundary
        if results[0][0] == "error":
            break


# ---------------------------------------------------------------------------------------------- selector
def test_selector_uses_compiled_codecs_in_a_normal_build():
    if codec.extensions_disabled():
        assert not codec.COMPILED
        assert codec.ClientFramer is codec.IMPLEMENTATIONS["pure"].ClientFramer
        assert "compiled" not in codec.IMPLEMENTATIONS
    else:
        assert codec.COMPILED, "the compiled codecs did not load: run setup.py build_ext --inplace"
        compiled = codec.IMPLEMENTATIONS["compiled"]
        assert codec.ClientFramer is compiled.ClientFramer
        assert codec.ServerScanner is compiled.ServerScanner
        assert codec.classify_pg is compiled.classify_pg
        assert compiled.pgframe.__file__.endswith((".so", ".pyd"))
    assert codec.IMPLEMENTATIONS["pure"].pgframe.__file__.endswith(".py")


@pytest.mark.parametrize(("value", "compiled"), [("1", False), ("yes", False), ("0", True), ("", True)])
def test_selector_honours_environment_variable(value, compiled):
    if compiled:
        load_implementation("compiled")  # fails in a normal build without them; skips only when they are disabled
    env = {**os.environ, "RDSPROXY_NO_EXTENSIONS": value}
    probe = "import rdsproxy._codec as c; print(c.COMPILED, c.ClientFramer.__module__, c.classify_pg.__module__)"
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    suffix = "_c" if compiled else "_py"
    assert result.stdout.split() == [
        str(compiled),
        f"rdsproxy._codec.pgframe{suffix}",
        f"rdsproxy._codec.classify{suffix}",
    ]


# ---------------------------------------------------------------------------------------------- MySQL
MYSQL_WORDS = """
    SET SESSION LOCAL GLOBAL PERSIST @@global. @@session. @@ @ @@local. NAMES CHARACTER CHARSET TRANSACTION ROLE
    PASSWORD DEFAULT STATEMENT FOR LOCK UNLOCK TABLES TABLE INSTANCE BACKUP STAGE FLUSH WITH READ EXPORT INTO
    CREATE OR REPLACE TEMPORARY SEQUENCE PREPARE EXECUTE DEALLOCATE DROP USE KILL QUERY SQL_CALC_FOUND_ROWS
    GET_LOCK RELEASE_LOCK LAST_INSERT_ID ROW_COUNT FOUND_ROWS SELECT autocommit sql_mode time_zone tx_isolation
    transaction_read_only foreign_key_checks `autocommit` `x` a.b x é CONNECTION_ID connection_id
""".split()
MYSQL_PUNCTUATION = [
    "\n",
    "\r",
    *"""( ) ; . , = := : @ ' '' 'x' \\' \\ " "" `` ` -- - # /* */ /*! /*!40101 /*M! /*M!100301 */ 1 $""".split(),
    "-- ",
]
mysql_fragments = st.lists(
    st.one_of(st.sampled_from(MYSQL_WORDS), st.sampled_from(MYSQL_PUNCTUATION)), max_size=40
).flatmap(
    lambda parts: st.lists(st.sampled_from(["", " "]), min_size=len(parts), max_size=len(parts)).map(
        lambda seps: "".join(part + sep for part, sep in zip(parts, seps)).encode("utf-8")
    )
)
mysql_inputs = st.one_of(st.binary(max_size=300), mysql_fragments, lexer_soup)


@PARITY
@given(sql=mysql_inputs, options=st.sampled_from([0x1F8, 0x1E8, 0x1D8, 0x1C8, 0xF8]))
def test_classify_mysql_parity(twins, sql, options):
    compiled, pure = twins
    assert compiled.classify_mysql(sql, options) == pure.classify_mysql(sql, options)


@PARITY
@given(sql=mysql_inputs, options=st.sampled_from([0x1F8, 0x1E8, 0x1D8, 0x1C8, 0xF8]))
def test_mysql_trigger_word_search_is_sound(twins, sql, options):
    """Where the trigger-word search finds nothing, lexing every statement finds no flags either."""
    compiled, pure = twins
    found = compiled.classify.mysql_has_trigger_word(sql)
    assert found == pure.classify.mysql_has_trigger_word(sql)
    lexed = compiled.classify.classify_mysql_lexed(sql, options)
    assert lexed == pure.classify.classify_mysql_lexed(sql, options)
    assert found or lexed == 0


@PARITY
@given(sql=mysql_inputs, options=st.integers(min_value=0, max_value=511))
def test_tokenize_parity_with_executable_comments(twins, sql, options):
    compiled, pure = twins
    assert compiled.classify.tokenize(sql, options) == pure.classify.tokenize(sql, options)


def mysql_client_stream():
    packets = st.builds(my_packet, st.binary(max_size=40), st.integers(min_value=0, max_value=255))
    # a physical header announcing a continued packet, with a few payload bytes after it
    continued = st.builds(
        lambda seq, tail: b"\xff\xff\xff" + bytes([seq]) + tail, st.integers(0, 255), st.binary(max_size=8)
    )
    return st.lists(st.one_of(packets, packets, continued, st.binary(max_size=12)), max_size=12).map(b"".join)


@PARITY
@given(
    stream=mysql_client_stream(),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
    limit=st.sampled_from([0, 16, 64, 64 * 1024 * 1024]),
)
def test_my_client_framer_parity(twins, stream, cuts, limit):
    compiled, pure = twins
    framers = [compiled.MyClientFramer(limit), pure.MyClientFramer(limit)]
    for piece in chunks(stream, cuts):
        results = [outcome(lambda framer=framer, piece=piece: framer.feed(piece)) for framer in framers]
        assert results[0] == results[1]
        assert framers[0].pending == framers[1].pending
        if results[0][0] == "error":
            break


@PARITY
@given(data=st.binary(max_size=60), start=st.integers(-2, 62), end=st.integers(-2, 62))
def test_packet_payload_parity(twins, data, start, end):
    compiled, pure = twins
    results = []
    for codec_set in twins:
        try:
            results.append(("ok", codec_set.myframe.packet_payload(data, start, end)))
        except ValueError as exc:
            results.append(("error", str(exc)))
    assert results[0] == results[1]


@PARITY
@given(script=response_scripts(st), cuts=st.lists(st.integers(min_value=1, max_value=3000), max_size=12))
def test_my_response_scanner_parity_on_valid_streams(twins, script, cuts):
    scanners, stream = expecting_scanners(twins, script)
    for piece in chunks(stream, cuts):
        assert scanners[0].feed(piece) == scanners[1].feed(piece)
        assert_same_scanner_state(scanners)


def expecting_scanners(twins, script) -> tuple[list, bytes]:
    """A compiled and a pure MyResponseScanner told the script's commands, and the script's server stream."""
    deprecate, commands, stream, _ = script
    scanners = [twin.MyResponseScanner(deprecate) for twin in twins]
    for scanner in scanners:
        for command, cursor in commands:
            scanner.expect(command, cursor=cursor)
    return scanners, stream


def assert_same_scanner_state(scanners) -> None:
    for name in ("at_boundary", "idle", "outstanding", "last_status", "last_affected_rows", "last_insert_id"):
        assert getattr(scanners[0], name) == getattr(scanners[1], name), name


server_payloads = st.one_of(
    st.builds(ok_packet, st.integers(0, 0xFFFF), st.integers(0, (1 << 64) - 1), st.integers(0, 1 << 30)),
    st.builds(eof_packet, st.integers(0, 0xFFFF)),
    st.builds(err_packet),
    st.builds(lenenc_int, st.integers(1, 70000)),
    st.builds(column_definition, st.binary(max_size=5)),
    st.builds(text_row, st.binary(max_size=20), st.none()),
    st.sampled_from(
        [
            b"\x02\x00",
            b"\x01\x01",
            b"\xfbfile",
            b"\xfe",
            b"\xff\xff\xff\x01",
            b"\x00\x01\x00\x00\x00\x01\x00\x02\x00\x00\x00\x00",
        ]
    ),
    st.binary(max_size=30),
)


@PARITY
@given(
    deprecate=st.booleans(),
    cache=st.booleans(),
    commands=st.lists(st.sampled_from([0x03, 0x04, 0x09, 0x0E, 0x16, 0x17, 0x1C, 0x17]), min_size=1, max_size=4),
    cursor=st.booleans(),
    payloads=st.lists(server_payloads, max_size=14),
    cuts=st.lists(st.integers(min_value=1, max_value=600), max_size=8),
)
def test_my_response_scanner_parity_on_arbitrary_packets(twins, deprecate, cache, commands, cursor, payloads, cuts):
    compiled, pure = twins
    scanners = [compiled.MyResponseScanner(deprecate, cache), pure.MyResponseScanner(deprecate, cache)]
    for scanner in scanners:
        for command in commands:
            scanner.expect(command, cursor=cursor and command == 0x17)
    stream = b"".join(my_packet(payload, seq) for seq, payload in enumerate(payloads))
    for piece in chunks(stream, cuts):
        results = [outcome(lambda scanner=scanner, piece=piece: scanner.feed(piece)) for scanner in scanners]
        assert results[0] == results[1]
        if results[0][0] == "error":
            break
        assert_same_scanner_state(scanners)


def client_commands():
    """Single command packets as clients send them: queries over MySQL SQL, executes, and anything else."""
    query = mysql_inputs.map(lambda sql: b"\x03" + sql)
    execute = st.binary(max_size=12).map(lambda tail: b"\x17" + tail)
    payloads = st.one_of(query, query, execute, st.binary(max_size=20))
    return st.one_of(
        st.builds(my_packet, payloads, st.sampled_from([0, 0, 0, 1, 255])),
        st.lists(st.builds(my_packet, payloads), min_size=2, max_size=3).map(b"".join),
        st.builds(lambda data, cut: data[:cut], st.builds(my_packet, payloads), st.integers(0, 30)),
    )


@PARITY
@given(data=client_commands(), held=st.binary(max_size=3), limit=st.sampled_from([0, 16, 64 * 1024 * 1024]))
def test_my_take_command_parity(twins, data, held, limit):
    compiled, pure = twins
    framers = [compiled.MyClientFramer(limit), pure.MyClientFramer(limit)]
    for framer in framers:
        framer.feed(held)
    taken = [framer.take_command(data) for framer in framers]
    assert taken[0] == taken[1]
    # nothing changed: what feed() cuts afterwards is what it would have cut anyway
    results = [outcome(lambda framer=framer: framer.feed(data)) for framer in framers]
    assert results[0] == results[1]
    if taken[0] >= 0:
        assert not held
        assert results[0] == ("ok", (data, [(0, 0, len(data), len(data) - 4)]))


@PARITY
@given(script=response_scripts(st), cuts=st.lists(st.integers(min_value=1, max_value=3000), max_size=12))
def test_my_feed_done_parity(twins, script, cuts):
    scanners, stream = expecting_scanners(twins, script)
    for piece in chunks(stream, cuts):
        assert scanners[0].feed_done(piece) == scanners[1].feed_done(piece)
        assert scanners[0].take_events() == scanners[1].take_events()
        assert_same_scanner_state(scanners)


@PARITY
@given(
    deprecate=st.booleans(),
    commands=st.lists(st.sampled_from([0x03, 0x09, 0x0E, 0x16, 0x17, 0x1C]), min_size=1, max_size=4),
    payloads=st.lists(server_payloads, max_size=10),
    cuts=st.lists(st.integers(min_value=1, max_value=600), max_size=8),
)
def test_my_feed_done_parity_on_arbitrary_packets(twins, deprecate, commands, payloads, cuts):
    compiled, pure = twins
    scanners = [compiled.MyResponseScanner(deprecate), pure.MyResponseScanner(deprecate)]
    for scanner in scanners:
        for command in commands:
            scanner.expect(command)
    stream = b"".join(my_packet(payload, seq) for seq, payload in enumerate(payloads))
    for piece in chunks(stream, cuts):
        results = [outcome(lambda scanner=scanner, piece=piece: scanner.feed_done(piece)) for scanner in scanners]
        assert results[0] == results[1]
        if results[0][0] == "error":
            break
        assert scanners[0].take_events() == scanners[1].take_events()
        assert_same_scanner_state(scanners)


def test_selector_exports_the_mysql_codecs():
    active = codec.IMPLEMENTATIONS["pure" if codec.extensions_disabled() else "compiled"]
    assert codec.MyClientFramer is active.MyClientFramer is active.myframe.MyClientFramer
    assert codec.MyResponseScanner is active.MyResponseScanner
    assert codec.classify_mysql is active.classify_mysql
    assert codec.packet_payload is active.myframe.packet_payload
    assert codec.parse_kill(b"KILL 1") == ("CONNECTION", 1)
    if not codec.extensions_disabled():
        assert active.myframe.__file__.endswith((".so", ".pyd"))


startup_pieces = st.lists(
    st.one_of(
        st.sampled_from([b"user", b"database", b"alice", b"options", b"\0", b"\0\0", b"\xff", "é".encode()]),
        st.binary(max_size=12),
    ),
    max_size=12,
).map(b"".join)
startup_codes = st.sampled_from([196608, 196610, 80877103, 80877104, 80877102, 80877105, 131072, 0xFFFFFFFF])


@PARITY
@given(code=startup_codes, body=startup_pieces)
def test_parse_startup_twins_agree(twins, code, body):
    outcomes = []
    for impl in twins:
        try:
            outcomes.append(("ok", impl.pgframe.parse_startup(code.to_bytes(4, "big") + body)))
        except ProtocolViolation as exc:
            outcomes.append(("error", str(exc)))
    assert outcomes[0] == outcomes[1]


@PARITY
@given(payload=st.binary(max_size=40))
def test_parse_startup_twins_agree_on_arbitrary_bytes(twins, payload):
    outcomes = []
    for impl in twins:
        try:
            outcomes.append(("ok", impl.pgframe.parse_startup(payload)))
        except ProtocolViolation as exc:
            outcomes.append(("error", str(exc)))
    assert outcomes[0] == outcomes[1]

"""The compiled codecs and their pure-Python twins agree on arbitrary input; the selector picks the right ones."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from codec_impls import load_implementation, pg_message, startup_packet
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
@given(sql=sql_inputs, options=st.integers(min_value=0, max_value=255))
def test_tokenize_parity(twins, sql, options):
    compiled, pure = twins
    assert compiled.classify.tokenize(sql, options) == pure.classify.tokenize(sql, options)


def test_public_api_is_the_same(twins):
    compiled, pure = twins
    for module in ("pgframe", "classify"):
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

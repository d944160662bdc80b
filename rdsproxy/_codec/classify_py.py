"""SQL statement classifier in pure Python: the twin of classify_c with the same API and behaviour.

The lexer is shared by every dialect and configured with LEX_* option bits; each dialect then has its own
classifier that walks the token stream statement by statement (classify_pg now, classify_mysql later).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Union

from .flags import (
    PIN_ADVISORY_LOCK,
    PIN_CURSOR,
    PIN_DISCARD,
    PIN_LISTEN,
    PIN_LOAD,
    PIN_PREPARE,
    PIN_SET,
    PIN_TEMP,
    SET_TRACKED,
)

__all__ = [
    "DOT",
    "FLAGS",
    "IDENT",
    "LEX_BACKSLASH_STRINGS",
    "LEX_BACKTICK_IDENTS",
    "LEX_DASH_COMMENT_NEEDS_SPACE",
    "LEX_DOLLAR_QUOTES",
    "LEX_DQUOTE_STRINGS",
    "LEX_E_STRINGS",
    "LEX_HASH_COMMENTS",
    "LEX_NESTED_COMMENTS",
    "LPAREN",
    "MYSQL_LEX_OPTIONS",
    "OTHER",
    "PG_LEX_OPTIONS",
    "PG_TRACKED_PARAMETERS",
    "QIDENT",
    "RPAREN",
    "SEMI",
    "classify_pg",
    "tokenize",
]

FLAGS = {
    "PIN_SET": PIN_SET,
    "SET_TRACKED": SET_TRACKED,
    "PIN_PREPARE": PIN_PREPARE,
    "PIN_TEMP": PIN_TEMP,
    "PIN_CURSOR": PIN_CURSOR,
    "PIN_LISTEN": PIN_LISTEN,
    "PIN_LOAD": PIN_LOAD,
    "PIN_ADVISORY_LOCK": PIN_ADVISORY_LOCK,
    "PIN_DISCARD": PIN_DISCARD,
}

# ---------------------------------------------------------------------------------------------- lexer
# Token kinds. For QIDENT the token span is the text between the quotes (doubled quotes left as they are).
IDENT, QIDENT, LPAREN, RPAREN, SEMI, DOT, OTHER = range(1, 8)

# Lexer options: the dialect differences the lexer knows about.
LEX_NESTED_COMMENTS = 1 << 0  # /* /* */ */ nests (PostgreSQL)
LEX_DOLLAR_QUOTES = 1 << 1  # $tag$ ... $tag$ (PostgreSQL)
LEX_E_STRINGS = 1 << 2  # E'...' with backslash escapes (PostgreSQL)
LEX_HASH_COMMENTS = 1 << 3  # '#' comment to end of line (MySQL)
LEX_BACKSLASH_STRINGS = 1 << 4  # backslash escapes in every quoted string (MySQL default sql_mode)
LEX_DQUOTE_STRINGS = 1 << 5  # "..." is a string, not an identifier (MySQL without ANSI_QUOTES)
LEX_BACKTICK_IDENTS = 1 << 6  # `...` quoted identifiers (MySQL)
LEX_DASH_COMMENT_NEEDS_SPACE = 1 << 7  # '--' starts a comment only before a space or control char (MySQL)

PG_LEX_OPTIONS = LEX_NESTED_COMMENTS | LEX_DOLLAR_QUOTES | LEX_E_STRINGS
MYSQL_LEX_OPTIONS = (
    LEX_HASH_COMMENTS | LEX_BACKSLASH_STRINGS | LEX_DQUOTE_STRINGS | LEX_BACKTICK_IDENTS | LEX_DASH_COMMENT_NEEDS_SPACE
)

_WHITESPACE = frozenset(b" \t\n\r\f\v")
_IDENT_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_" + bytes(range(0x80, 0x100)))
_DIGITS = frozenset(b"0123456789")
_PUNCTUATION = {ord("("): LPAREN, ord(")"): RPAREN, ord(";"): SEMI, ord("."): DOT}

_IDENT_REST = re.compile(rb"[A-Za-z0-9_$\x80-\xff]*")
_DIGIT_RUN = re.compile(rb"[0-9]*")
_LINE_END = re.compile(rb"[\r\n]")
_COMMENT_DELIMITER = re.compile(rb"/\*|\*/")
_DOLLAR_TAG = re.compile(rb"\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")


def _quoted_pattern(quote: bytes, backslash: bool) -> re.Pattern[bytes]:
    q = re.escape(quote)
    if backslash:
        body = rb"(?:[^" + q + rb"\\]+|\\[\s\S]|" + q + q + rb"|\\\Z)*"
    else:
        body = rb"(?:[^" + q + rb"]+|" + q + q + rb")*"
    # group 1: the quoted text; group 2: the closing quote, empty when the input ends first
    return re.compile(q + rb"(" + body + rb")(" + q + rb"?)")


_QUOTED = {
    (quote, backslash): _quoted_pattern(bytes([quote]), backslash) for quote in b"'\"`" for backslash in (False, True)
}

BytesLike = Union[bytes, bytearray, memoryview]


def _as_bytes(sql: BytesLike) -> bytes:
    if type(sql) is bytes:
        return sql
    if isinstance(sql, (bytes, bytearray, memoryview)):
        return bytes(sql)
    raise TypeError(f"expected bytes, not {type(sql).__name__}")


def _lex(sql: bytes, options: int) -> Iterator[tuple[int, int, int]]:
    """Yields (kind, start, end) for each token; whitespace and comments are skipped, literals are OTHER."""
    n = len(sql)
    i = 0
    while i < n:
        c = sql[i]
        if c in _WHITESPACE:
            i += 1
            continue
        following = sql[i + 1] if i + 1 < n else -1
        if (c == 0x2D and following == 0x2D) or (c == 0x23 and options & LEX_HASH_COMMENTS):  # -- or #
            if c == 0x2D and options & LEX_DASH_COMMENT_NEEDS_SPACE and not (i + 2 < n and sql[i + 2] <= 0x20):
                yield OTHER, i, i + 1
                i += 1
                continue
            line_end = _LINE_END.search(sql, i + 1)
            i = line_end.start() if line_end else n
            continue
        if c == 0x2F and following == 0x2A:  # /*
            i = _skip_block_comment(sql, i + 2, options)
            continue
        if c == 0x27 or (c == 0x22 and options & LEX_DQUOTE_STRINGS):  # a string literal
            match = _QUOTED[c, bool(options & LEX_BACKSLASH_STRINGS)].match(sql, i)
            yield OTHER, i, match.end()
            i = match.end()
            continue
        if c == 0x22 or (c == 0x60 and options & LEX_BACKTICK_IDENTS):  # a quoted identifier
            match = _QUOTED[c, False].match(sql, i)
            yield QIDENT, match.start(1), match.end(1)
            i = match.end()
            continue
        if c == 0x24:  # $
            if following in _DIGITS:  # $1: a parameter
                end = _DIGIT_RUN.match(sql, i + 1).end()
                yield OTHER, i, end
                i = end
                continue
            if options & LEX_DOLLAR_QUOTES:
                tag = _DOLLAR_TAG.match(sql, i)
                if tag:
                    close = sql.find(tag.group(), tag.end())
                    end = n if close < 0 else close + len(tag.group())
                    yield OTHER, i, end
                    i = end
                    continue
            yield OTHER, i, i + 1
            i += 1
            continue
        if c in _IDENT_START:
            if following == 0x27 and (c == 0x45 or c == 0x65) and options & LEX_E_STRINGS:  # E'...'
                match = _QUOTED[0x27, True].match(sql, i + 1)
                yield OTHER, i, match.end()
                i = match.end()
                continue
            end = _IDENT_REST.match(sql, i + 1).end()
            yield IDENT, i, end
            i = end
            continue
        if c in _DIGITS:
            end = _DIGIT_RUN.match(sql, i + 1).end()
            yield OTHER, i, end
            i = end
            continue
        yield _PUNCTUATION.get(c, OTHER), i, i + 1
        i += 1


def _skip_block_comment(sql: bytes, pos: int, options: int) -> int:
    """Returns the offset just past the comment whose opening '/*' ends at pos (end of input if unterminated)."""
    if not options & LEX_NESTED_COMMENTS:
        close = sql.find(b"*/", pos)
        return len(sql) if close < 0 else close + 2
    depth = 1
    for delimiter in _COMMENT_DELIMITER.finditer(sql, pos):
        depth += 1 if delimiter.group() == b"/*" else -1
        if depth == 0:
            return delimiter.end()
    return len(sql)


def tokenize(sql: BytesLike, options: int = PG_LEX_OPTIONS) -> list[tuple[int, int, int]]:
    """The token stream of sql as (kind, start, end) offsets: for inspecting and testing the lexer."""
    return list(_lex(_as_bytes(sql), options))


# ---------------------------------------------------------------------------------------------- words
# Keywords match unquoted identifiers case-insensitively. Names (functions, the pg_temp schema) also match
# quoted identifiers spelled exactly; tracked parameter names match quoted ones case-insensitively, as
# PostgreSQL looks parameters up.
(
    W_OTHER,
    W_SET,
    W_RESET,
    W_LOCAL,
    W_SESSION,
    W_AUTHORIZATION,
    W_CHARACTERISTICS,
    W_TRANSACTION,
    W_CONSTRAINTS,
    W_ROLE,
    W_TIME,
    W_ZONE,
    W_NAMES,
    W_ALL,
    W_PREPARE,
    W_EXECUTE,
    W_DEALLOCATE,
    W_CREATE,
    W_OR,
    W_REPLACE,
    W_GLOBAL,
    W_TEMP,
    W_UNLOGGED,
    W_TABLE_OR_SEQUENCE,
    W_VIEW,
    W_RECURSIVE,
    W_SELECT,
    W_WITH,
    W_INTO,
    W_ON,
    W_COMMIT,
    W_DROP,
    W_DECLARE,
    W_LISTEN,
    W_LOAD,
    W_DISCARD,
    W_TRUE,
    W_SET_CONFIG,
    W_ADVISORY_LOCK,
    W_PG_TEMP,
    W_TRACKED_PARAM,
) = range(41)

_PG_KEYWORDS = {
    b"set": W_SET,
    b"reset": W_RESET,
    b"local": W_LOCAL,
    b"session": W_SESSION,
    b"authorization": W_AUTHORIZATION,
    b"characteristics": W_CHARACTERISTICS,
    b"transaction": W_TRANSACTION,
    b"constraints": W_CONSTRAINTS,
    b"role": W_ROLE,
    b"time": W_TIME,
    b"zone": W_ZONE,
    b"names": W_NAMES,
    b"all": W_ALL,
    b"prepare": W_PREPARE,
    b"execute": W_EXECUTE,
    b"deallocate": W_DEALLOCATE,
    b"create": W_CREATE,
    b"or": W_OR,
    b"replace": W_REPLACE,
    b"global": W_GLOBAL,
    b"temp": W_TEMP,
    b"temporary": W_TEMP,
    b"unlogged": W_UNLOGGED,
    b"table": W_TABLE_OR_SEQUENCE,
    b"sequence": W_TABLE_OR_SEQUENCE,
    b"view": W_VIEW,
    b"recursive": W_RECURSIVE,
    b"select": W_SELECT,
    b"with": W_WITH,
    b"into": W_INTO,
    b"on": W_ON,
    b"commit": W_COMMIT,
    b"drop": W_DROP,
    b"declare": W_DECLARE,
    b"listen": W_LISTEN,
    b"load": W_LOAD,
    b"discard": W_DISCARD,
    b"true": W_TRUE,
}
_PG_NAMES = {
    b"set_config": W_SET_CONFIG,
    b"pg_advisory_lock": W_ADVISORY_LOCK,
    b"pg_advisory_lock_shared": W_ADVISORY_LOCK,
    b"pg_try_advisory_lock": W_ADVISORY_LOCK,
    b"pg_try_advisory_lock_shared": W_ADVISORY_LOCK,
    b"pg_temp": W_PG_TEMP,
}
# Parameters PostgreSQL reports in ParameterStatus and the proxy therefore tracks and replays.
PG_TRACKED_PARAMETERS = frozenset(
    [b"application_name", b"client_encoding", b"datestyle", b"intervalstyle", b"timezone"]
)
_PG_IDENT_WORDS = {**_PG_KEYWORDS, **_PG_NAMES, **dict.fromkeys(PG_TRACKED_PARAMETERS, W_TRACKED_PARAM)}


def _pg_word(sql: bytes, kind: int, start: int, end: int) -> int:
    if kind == IDENT:
        return _PG_IDENT_WORDS.get(sql[start:end].lower(), W_OTHER)
    if kind == QIDENT:
        text = sql[start:end]
        word = _PG_NAMES.get(text, W_OTHER)
        if word == W_OTHER and text.lower() in PG_TRACKED_PARAMETERS:
            word = W_TRACKED_PARAM
        return word
    return W_OTHER


# ---------------------------------------------------------------------------------------------- PostgreSQL
# Where the leading keywords of SET / RESET / PREPARE / CREATE have brought a statement.
(
    S_NONE,
    S_SET,
    S_SET_SESSION,
    S_SET_TIME,
    S_SET_NAME,
    S_RESET,
    S_PREPARE,
    S_CREATE,
    S_CREATE_OR,
    S_CREATE_REPLACE,
    S_CREATE_SCOPE,
    S_CREATE_TEMP,
    S_CREATE_UNLOGGED,
    S_CREATE_RECURSIVE,
) = range(14)

_FIRST_KEYWORD_STATES = {W_SET: S_SET, W_RESET: S_RESET, W_PREPARE: S_PREPARE, W_CREATE: S_CREATE}
_FIRST_KEYWORD_FLAGS = {
    W_EXECUTE: PIN_PREPARE,
    W_DEALLOCATE: PIN_PREPARE,
    W_DECLARE: PIN_CURSOR,
    W_LISTEN: PIN_LISTEN,
    W_LOAD: PIN_LOAD,
    W_DISCARD: PIN_DISCARD,
}


class _PgStatement:
    """Classification state of one statement, advanced token by token."""

    __slots__ = (
        "first",
        "state",
        "name_tracked",
        "previous",
        "depth",
        "set_config_depths",
        "on_commit",
        "on_commit_drop",
        "into",
        "into_temp",
        "temp_object",
        "pg_temp_qualified",
    )

    def __init__(self) -> None:
        self.first = -1  # word of the statement's first identifier, -1 before it
        self.state = S_NONE
        self.name_tracked = False  # S_SET_NAME: whether the parameter name is a tracked one
        self.previous = W_OTHER  # word of the previous token
        self.depth = 0  # parenthesis depth
        self.set_config_depths: list[int] = []  # depth outside each open set_config( call
        self.on_commit = 0  # how much of ON COMMIT DROP has just been seen
        self.on_commit_drop = False
        self.into = 0  # 1 after INTO, 2 after INTO LOCAL/GLOBAL
        self.into_temp = False
        self.temp_object = False  # CREATE ... TEMP TABLE/SEQUENCE/VIEW
        self.pg_temp_qualified = False  # pg_temp.<name>

    def token(self, kind: int, word: int) -> int:
        flags = 0
        previous = self.previous
        if kind == LPAREN:
            if previous == W_SET_CONFIG:
                self.set_config_depths.append(self.depth)
            elif previous == W_ADVISORY_LOCK:
                flags |= PIN_ADVISORY_LOCK
            self.depth += 1
        elif kind == RPAREN:
            if self.depth > 0:
                self.depth -= 1
                depths = self.set_config_depths
                if depths and depths[-1] == self.depth:
                    depths.pop()
                    if previous != W_TRUE:  # set_config(name, value, true) is transaction-local
                        flags |= PIN_SET
        elif kind == DOT and previous == W_PG_TEMP:
            self.pg_temp_qualified = True

        if word == W_ON:
            self.on_commit = 1
        elif self.on_commit == 1 and word == W_COMMIT:
            self.on_commit = 2
        elif self.on_commit == 2 and word == W_DROP:
            self.on_commit_drop = True
            self.on_commit = 0
        else:
            self.on_commit = 0

        if word == W_INTO:
            self.into = 1
        elif self.into == 1 and (word == W_LOCAL or word == W_GLOBAL):
            self.into = 2
        elif self.into and word == W_TEMP:
            self.into_temp = True
            self.into = 0
        else:
            self.into = 0

        if self.first < 0:
            if kind == IDENT or kind == QIDENT:
                self.first = word
                self.state = _FIRST_KEYWORD_STATES.get(word, S_NONE)
                flags |= _FIRST_KEYWORD_FLAGS.get(word, 0)
        elif self.state != S_NONE:
            flags |= self._advance(kind, word)
        self.previous = word
        return flags

    def _advance(self, kind: int, word: int) -> int:
        """Feeds the token after the statement's leading keywords; returns the flags it settles."""
        state = self.state
        self.state = S_NONE
        is_name = kind == IDENT or kind == QIDENT
        if state == S_SET or state == S_SET_SESSION:
            if not is_name:
                return 0
            if state == S_SET and word == W_LOCAL:
                return 0
            if word == W_SESSION:
                self.state = S_SET_SESSION
                return 0
            if state == S_SET_SESSION and (word == W_AUTHORIZATION or word == W_CHARACTERISTICS):
                return PIN_SET
            if word == W_TRANSACTION or word == W_CONSTRAINTS:
                return 0
            if word == W_ROLE:
                return PIN_SET
            if word == W_NAMES:
                return SET_TRACKED
            if word == W_TIME:
                self.state = S_SET_TIME
                return 0
            self.state = S_SET_NAME
            self.name_tracked = word == W_TRACKED_PARAM
            return 0
        if state == S_RESET:
            if not is_name:
                return 0
            if word == W_ALL or word == W_ROLE or word == W_SESSION:
                return PIN_SET
            if word == W_TRANSACTION:
                return 0
            if word == W_TIME:
                self.state = S_SET_TIME
                return 0
            self.state = S_SET_NAME
            self.name_tracked = word == W_TRACKED_PARAM
            return 0
        if state == S_SET_TIME:
            return SET_TRACKED if word == W_ZONE else PIN_SET
        if state == S_SET_NAME:
            if kind == DOT or not self.name_tracked:  # a dotted name is a custom, untracked parameter
                return PIN_SET
            return SET_TRACKED
        if state == S_PREPARE:
            return 0 if word == W_TRANSACTION else PIN_PREPARE  # PREPARE TRANSACTION is two-phase commit
        if state == S_CREATE:
            if word == W_OR:
                self.state = S_CREATE_OR
            elif word == W_GLOBAL or word == W_LOCAL:
                self.state = S_CREATE_SCOPE
            elif word == W_TEMP:
                self.state = S_CREATE_TEMP
        elif state == S_CREATE_OR:
            if word == W_REPLACE:
                self.state = S_CREATE_REPLACE
        elif state == S_CREATE_REPLACE:
            if word == W_GLOBAL or word == W_LOCAL:
                self.state = S_CREATE_SCOPE
            elif word == W_TEMP:
                self.state = S_CREATE_TEMP
        elif state == S_CREATE_SCOPE:
            if word == W_TEMP:
                self.state = S_CREATE_TEMP
        elif state == S_CREATE_TEMP or state == S_CREATE_UNLOGGED:
            if word == W_TABLE_OR_SEQUENCE or word == W_VIEW:
                self.temp_object = True
            elif word == W_UNLOGGED and state == S_CREATE_TEMP:
                self.state = S_CREATE_UNLOGGED
            elif word == W_RECURSIVE:
                self.state = S_CREATE_RECURSIVE
        elif state == S_CREATE_RECURSIVE:
            if word == W_VIEW:
                self.temp_object = True
        return 0

    def finish(self) -> int:
        """Flags settled by the end of the statement."""
        flags = 0
        state = self.state
        if state == S_SET_TIME:
            flags |= PIN_SET
        elif state == S_SET_NAME:
            flags |= SET_TRACKED if self.name_tracked else PIN_SET
        elif state == S_PREPARE:
            flags |= PIN_PREPARE
        if self.set_config_depths:  # set_config( never closed: assume the worst
            flags |= PIN_SET
        if self.first == W_CREATE and (self.temp_object or self.pg_temp_qualified) and not self.on_commit_drop:
            flags |= PIN_TEMP
        if (self.first == W_SELECT or self.first == W_WITH) and self.into_temp:
            flags |= PIN_TEMP
        return flags


def classify_pg(sql: BytesLike) -> int:
    """OR of the flags (see flags.py) of every statement in a PostgreSQL query text."""
    sql = _as_bytes(sql)
    flags = 0
    statement = _PgStatement()
    for kind, start, end in _lex(sql, PG_LEX_OPTIONS):
        if kind == SEMI:
            flags |= statement.finish()
            statement = _PgStatement()
        else:
            flags |= statement.token(kind, _pg_word(sql, kind, start, end))
    return flags | statement.finish()

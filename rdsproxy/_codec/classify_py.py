"""SQL statement classifier in pure Python: the twin of classify_c with the same API and behaviour.

The lexer is shared by every dialect and configured with LEX_* option bits; each dialect then has its own
classifier that walks the token stream statement by statement (classify_pg, classify_mysql).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Union

from .flags import (
    MY_KILL,
    MY_PIN_CALC_FOUND_ROWS,
    MY_PIN_EXECUTABLE_COMMENT,
    MY_PIN_GET_LOCK,
    MY_PIN_LOCK_TABLES,
    MY_PIN_PREPARE,
    MY_PIN_READ_LOCK,
    MY_PIN_SET,
    MY_PIN_TEMP,
    MY_PIN_USER_VARIABLE,
    MY_READS_LAST_INSERT_ID,
    MY_READS_ROW_COUNT,
    MY_SET_TRACKED,
    MY_SETS_LAST_INSERT_ID,
    MY_USE,
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
    "EXEC_COMMENT",
    "FLAGS",
    "IDENT",
    "LEX_BACKSLASH_STRINGS",
    "LEX_BACKTICK_IDENTS",
    "LEX_DASH_COMMENT_NEEDS_SPACE",
    "LEX_DOLLAR_QUOTES",
    "LEX_DQUOTE_STRINGS",
    "LEX_EXECUTABLE_COMMENTS",
    "LEX_E_STRINGS",
    "LEX_HASH_COMMENTS",
    "LEX_NESTED_COMMENTS",
    "LPAREN",
    "MYSQL_LEX_OPTIONS",
    "MYSQL_TRACKED_VARIABLES",
    "MYSQL_TRIGGER_WORDS",
    "MY_FLAGS",
    "OTHER",
    "PG_LEX_OPTIONS",
    "PG_TRACKED_PARAMETERS",
    "PG_TRIGGER_WORDS",
    "QIDENT",
    "RPAREN",
    "SEMI",
    "classify_mysql",
    "classify_mysql_lexed",
    "classify_pg",
    "classify_pg_lexed",
    "mysql_has_trigger_word",
    "mysql_lex_options",
    "mysql_select_of_session_functions",
    "mysql_session_function_items",
    "parse_kill",
    "pg_has_trigger_word",
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
MY_FLAGS = {
    "MY_PIN_LOCK_TABLES": MY_PIN_LOCK_TABLES,
    "MY_PIN_READ_LOCK": MY_PIN_READ_LOCK,
    "MY_PIN_GET_LOCK": MY_PIN_GET_LOCK,
    "MY_PIN_USER_VARIABLE": MY_PIN_USER_VARIABLE,
    "MY_PIN_SET": MY_PIN_SET,
    "MY_PIN_TEMP": MY_PIN_TEMP,
    "MY_PIN_PREPARE": MY_PIN_PREPARE,
    "MY_PIN_EXECUTABLE_COMMENT": MY_PIN_EXECUTABLE_COMMENT,
    "MY_PIN_CALC_FOUND_ROWS": MY_PIN_CALC_FOUND_ROWS,
    "MY_SET_TRACKED": MY_SET_TRACKED,
    "MY_USE": MY_USE,
    "MY_READS_LAST_INSERT_ID": MY_READS_LAST_INSERT_ID,
    "MY_READS_ROW_COUNT": MY_READS_ROW_COUNT,
    "MY_KILL": MY_KILL,
    "MY_SETS_LAST_INSERT_ID": MY_SETS_LAST_INSERT_ID,
}

# ---------------------------------------------------------------------------------------------- lexer
# Token kinds. For QIDENT the token span is the text between the quotes (doubled quotes left as they are).
# EXEC_COMMENT is the opener of a MySQL executable comment (/*!, /*!50001, /*M!, /*M!100301): the comment's
# content follows as ordinary tokens and its closing */ is skipped.
IDENT, QIDENT, LPAREN, RPAREN, SEMI, DOT, OTHER, EXEC_COMMENT = range(1, 9)

# Lexer options: the dialect differences the lexer knows about.
LEX_NESTED_COMMENTS = 1 << 0  # /* /* */ */ nests (PostgreSQL)
LEX_DOLLAR_QUOTES = 1 << 1  # $tag$ ... $tag$ (PostgreSQL)
LEX_E_STRINGS = 1 << 2  # E'...' with backslash escapes (PostgreSQL)
LEX_HASH_COMMENTS = 1 << 3  # '#' comment to end of line (MySQL)
LEX_BACKSLASH_STRINGS = 1 << 4  # backslash escapes in every quoted string (MySQL default sql_mode)
LEX_DQUOTE_STRINGS = 1 << 5  # "..." is a string, not an identifier (MySQL without ANSI_QUOTES)
LEX_BACKTICK_IDENTS = 1 << 6  # `...` quoted identifiers (MySQL)
LEX_DASH_COMMENT_NEEDS_SPACE = 1 << 7  # '--' starts a comment only before a space or control char (MySQL)
LEX_EXECUTABLE_COMMENTS = 1 << 8  # /*! ... */ and /*M! ... */ hold code, not a comment (MySQL, MariaDB)

PG_LEX_OPTIONS = LEX_NESTED_COMMENTS | LEX_DOLLAR_QUOTES | LEX_E_STRINGS
MYSQL_LEX_OPTIONS = (
    LEX_HASH_COMMENTS
    | LEX_BACKSLASH_STRINGS
    | LEX_DQUOTE_STRINGS
    | LEX_BACKTICK_IDENTS
    | LEX_DASH_COMMENT_NEEDS_SPACE
    | LEX_EXECUTABLE_COMMENTS
)

_WHITESPACE = frozenset(b" \t\n\r\f\v")
_IDENT_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_" + bytes(range(0x80, 0x100)))
_DIGITS = frozenset(b"0123456789")
_PUNCTUATION = {ord("("): LPAREN, ord(")"): RPAREN, ord(";"): SEMI, ord("."): DOT}

_IDENT_REST = re.compile(rb"[A-Za-z0-9_$\x80-\xff]*")
_DIGIT_RUN = re.compile(rb"[0-9]*")
_LINE_END = re.compile(rb"[\r\n]")
_COMMENT_DELIMITER = re.compile(rb"/\*|\*/")
_EXECUTABLE_COMMENT_OPENER = re.compile(rb"/\*M?![0-9]*")
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
    in_executable_comment = False
    while i < n:
        c = sql[i]
        if c in _WHITESPACE:
            i += 1
            continue
        following = sql[i + 1] if i + 1 < n else -1
        if in_executable_comment and c == 0x2A and following == 0x2F:  # */ closing /*! ... */
            in_executable_comment = False
            i += 2
            continue
        if (c == 0x2D and following == 0x2D) or (c == 0x23 and options & LEX_HASH_COMMENTS):  # -- or #
            if c == 0x2D and options & LEX_DASH_COMMENT_NEEDS_SPACE and not (i + 2 < n and sql[i + 2] <= 0x20):
                yield OTHER, i, i + 1
                i += 1
                continue
            line_end = _LINE_END.search(sql, i + 1)
            i = line_end.start() if line_end else n
            continue
        if c == 0x2F and following == 0x2A:  # /*
            if options & LEX_EXECUTABLE_COMMENTS:
                opener = _EXECUTABLE_COMMENT_OPENER.match(sql, i)
                if opener:
                    in_executable_comment = True
                    yield EXEC_COMMENT, i, opener.end()
                    i = opener.end()
                    continue
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


# Every flag classify_pg can give needs one of these words, or a longer word containing one (reset, set_config,
# pg_advisory_lock, temporary), as an identifier; identifiers are spelled in the text as they are matched (the
# lexer decodes no escapes), so a text that contains none of them, in any case, has no flags. Most queries of a
# busy pool are such, and a substring search is far cheaper than lexing them.
PG_TRIGGER_WORDS = (
    b"set",
    b"prepare",
    b"create",
    b"execute",
    b"deallocate",
    b"declare",
    b"listen",
    b"load",
    b"discard",
    b"advisory",
    b"temp",
)
_PG_TRIGGER = re.compile(b"|".join(PG_TRIGGER_WORDS), re.IGNORECASE)


def pg_has_trigger_word(sql: BytesLike) -> bool:
    """Whether sql contains a word that could give it flags (PG_TRIGGER_WORDS); False proves classify_pg is 0."""
    return _PG_TRIGGER.search(_as_bytes(sql)) is not None


def classify_pg(sql: BytesLike) -> int:
    """OR of the flags (see flags.py) of every statement in a PostgreSQL query text."""
    sql = _as_bytes(sql)
    if _PG_TRIGGER.search(sql) is None:
        return 0
    return classify_pg_lexed(sql)


def classify_pg_lexed(sql: BytesLike) -> int:
    """classify_pg without the trigger-word search: every statement is lexed (the tests check the search with it)."""
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


# ---------------------------------------------------------------------------------------------- MySQL
# Keywords match unquoted identifiers case-insensitively; variable names also match quoted ones, as MySQL looks
# variables up case-insensitively.
(
    M_OTHER,
    M_SET,
    M_SESSION,  # SESSION, LOCAL
    M_GLOBAL,  # GLOBAL, PERSIST, PERSIST_ONLY: not session state
    M_NAMES,
    M_CHARACTER,
    M_CHARSET,
    M_TRANSACTION,
    M_ROLE,
    M_PASSWORD,
    M_DEFAULT,
    M_STATEMENT,
    M_FOR,
    M_LOCK,
    M_BACKUP,
    M_STAGE,
    M_FLUSH,
    M_READ,
    M_EXPORT,
    M_INTO,
    M_CREATE,
    M_OR,
    M_REPLACE,
    M_TEMPORARY,
    M_TABLE_OR_SEQUENCE,
    M_PREPARE,
    M_EXECUTE,
    M_DEALLOCATE,
    M_DROP,
    M_USE,
    M_KILL,
    M_SQL_CALC_FOUND_ROWS,
    M_GET_LOCK,
    M_LAST_INSERT_ID,
    M_ROW_COUNT,  # ROW_COUNT, FOUND_ROWS
    M_TRACKED_VARIABLE,
    M_TRANSACTION_VARIABLE,  # tracked, but @@name without a scope sets only the next transaction (MySQL)
) = range(37)

_MY_KEYWORDS = {
    b"set": M_SET,
    b"session": M_SESSION,
    b"local": M_SESSION,
    b"global": M_GLOBAL,
    b"persist": M_GLOBAL,
    b"persist_only": M_GLOBAL,
    b"names": M_NAMES,
    b"character": M_CHARACTER,
    b"charset": M_CHARSET,
    b"transaction": M_TRANSACTION,
    b"role": M_ROLE,
    b"password": M_PASSWORD,
    b"default": M_DEFAULT,
    b"statement": M_STATEMENT,
    b"for": M_FOR,
    b"lock": M_LOCK,
    b"backup": M_BACKUP,
    b"stage": M_STAGE,
    b"flush": M_FLUSH,
    b"read": M_READ,
    b"export": M_EXPORT,
    b"into": M_INTO,
    b"create": M_CREATE,
    b"or": M_OR,
    b"replace": M_REPLACE,
    b"temporary": M_TEMPORARY,
    b"table": M_TABLE_OR_SEQUENCE,
    b"sequence": M_TABLE_OR_SEQUENCE,
    b"prepare": M_PREPARE,
    b"execute": M_EXECUTE,
    b"deallocate": M_DEALLOCATE,
    b"drop": M_DROP,
    b"use": M_USE,
    b"kill": M_KILL,
    b"sql_calc_found_rows": M_SQL_CALC_FOUND_ROWS,
    b"get_lock": M_GET_LOCK,
    b"last_insert_id": M_LAST_INSERT_ID,
    b"row_count": M_ROW_COUNT,
    b"found_rows": M_ROW_COUNT,
}
# Session variables the proxy tracks and replays instead of pinning (SET NAMES / CHARACTER SET are tracked too).
MYSQL_TRACKED_VARIABLES = frozenset(
    [
        b"autocommit",
        b"sql_mode",
        b"time_zone",
        b"character_set_client",
        b"character_set_connection",
        b"character_set_results",
        b"collation_connection",
        b"transaction_isolation",
        b"tx_isolation",
        b"transaction_read_only",
        b"tx_read_only",
        b"auto_increment_increment",
        b"wait_timeout",
        b"interactive_timeout",
        b"net_write_timeout",
        b"session_track_schema",
        b"query_cache_type",
    ]
)
_MY_TRANSACTION_VARIABLES = frozenset(
    [b"transaction_isolation", b"tx_isolation", b"transaction_read_only", b"tx_read_only"]
)
_MY_VARIABLE_WORDS = {
    name: M_TRANSACTION_VARIABLE if name in _MY_TRANSACTION_VARIABLES else M_TRACKED_VARIABLE
    for name in MYSQL_TRACKED_VARIABLES
}
_MY_IDENT_WORDS = {**_MY_KEYWORDS, **_MY_VARIABLE_WORDS}

# Single-character symbols the MySQL classifier looks at.
_AT, _COLON, _EQUALS, _COMMA = ord("@"), ord(":"), ord("="), ord(",")


def _my_word(sql: bytes, kind: int, start: int, end: int) -> int:
    if kind == IDENT:
        return _MY_IDENT_WORDS.get(sql[start:end].lower(), M_OTHER)
    if kind == QIDENT:
        return _MY_VARIABLE_WORDS.get(sql[start:end].lower(), M_OTHER)
    return M_OTHER


# Where the leading keywords of a statement have brought it.
(
    T_NONE,
    T_CREATE,
    T_CREATE_OR,
    T_CREATE_REPLACE,
    T_CREATE_TEMPORARY,
    T_DROP,
    T_BACKUP,
) = range(7)

# Where a SET statement stands within its current assignment.
(
    A_NONE,  # not in a SET assignment list (or past the part that matters)
    A_START,  # the start of an assignment
    A_SCOPE,  # after GLOBAL / SESSION / LOCAL
    A_AT,  # after @ (a user variable follows)
    A_ATAT,  # after @@
    A_ATAT_SCOPE,  # after @@global / @@session / @@local: a '.' follows
    A_ATAT_DOT,  # after @@scope.
    A_NAME,  # after a variable name: a '.' would make it a structured name
    A_CHARACTER,  # after CHARACTER: SET follows
    A_VALUE,  # in the assigned value, until a ',' at depth 0
    A_STATEMENT,  # SET STATEMENT ... until FOR at depth 0
) = range(11)

# How much of a user variable assignment @name[.part] := has just been seen.
UV_NONE, UV_NAME, UV_DOT, UV_COLON = range(4)

# Scope of the variable being assigned.
SCOPE_DEFAULT, SCOPE_SESSION, SCOPE_GLOBAL, SCOPE_ATAT = range(4)

_MY_FIRST_KEYWORD_FLAGS = {
    M_LOCK: MY_PIN_LOCK_TABLES,
    M_PREPARE: MY_PIN_PREPARE,
    M_EXECUTE: MY_PIN_PREPARE,
    M_DEALLOCATE: MY_PIN_PREPARE,
    M_USE: MY_USE,
    M_KILL: MY_KILL,
}
_MY_FIRST_KEYWORD_STATES = {M_CREATE: T_CREATE, M_DROP: T_DROP, M_BACKUP: T_BACKUP}


class _MyStatement:
    """Classification state of one MySQL statement, advanced token by token."""

    __slots__ = (
        "first",
        "state",
        "assignment",
        "first_assignment",
        "global_by_default",
        "scope",
        "pending_scope",
        "name",
        "depth",
        "previous",
        "at",
        "user_variable",
        "call",
        "restart",
    )

    def __init__(self) -> None:
        self.first = -1  # word of the statement's first identifier, -1 before it
        self.state = T_NONE
        self.assignment = A_NONE
        self.first_assignment = True
        self.global_by_default = False  # the latest GLOBAL / SESSION keyword of a SET, which later items inherit
        self.scope = SCOPE_DEFAULT
        self.pending_scope = SCOPE_DEFAULT  # @@global / @@session before its '.'
        self.name = M_OTHER  # word of the variable name in A_NAME
        self.depth = 0  # parenthesis depth
        self.previous = M_OTHER  # word of the previous token
        self.at = 0  # 1 after a lone @, 2 after @@
        self.user_variable = UV_NONE  # how much of @name := has just been seen
        self.call = M_OTHER  # function word when the previous token opened its argument list
        self.restart = False  # SET STATEMENT ... FOR: the statement proper starts after this token

    def token(self, kind: int, word: int, symbol: int) -> int:
        flags = 0
        previous = self.previous
        call = self.call
        self.call = M_OTHER
        if call == M_LAST_INSERT_ID and kind != RPAREN:
            flags |= MY_SETS_LAST_INSERT_ID  # LAST_INSERT_ID(expr)
        if kind == LPAREN:
            if previous == M_GET_LOCK:
                flags |= MY_PIN_GET_LOCK
            elif previous == M_LAST_INSERT_ID or previous == M_ROW_COUNT:
                self.call = previous
            self.depth += 1
        elif kind == RPAREN:
            if call == M_LAST_INSERT_ID:
                flags |= MY_READS_LAST_INSERT_ID
            elif call == M_ROW_COUNT:
                flags |= MY_READS_ROW_COUNT
            if self.depth > 0:
                self.depth -= 1
        if word == M_SQL_CALC_FOUND_ROWS:
            flags |= MY_PIN_CALC_FOUND_ROWS

        # user variables: @name := ..., INTO @name
        at = self.at
        if symbol == _AT:
            self.at = 2 if at == 1 else 1
            if at == 0 and previous == M_INTO:
                flags |= MY_PIN_USER_VARIABLE
        else:
            self.at = 0
        user_variable = self.user_variable
        if at == 1 and symbol != _AT:
            self.user_variable = UV_NAME
        elif user_variable == UV_NAME and kind == DOT:
            self.user_variable = UV_DOT
        elif user_variable == UV_DOT and kind != OTHER:
            self.user_variable = UV_NAME
        elif user_variable == UV_NAME and symbol == _COLON:
            self.user_variable = UV_COLON
        else:
            if user_variable == UV_COLON and symbol == _EQUALS:
                flags |= MY_PIN_USER_VARIABLE
            self.user_variable = UV_NONE

        if self.first < 0:
            if kind == IDENT or kind == QIDENT:
                self.first = word
                flags |= _MY_FIRST_KEYWORD_FLAGS.get(word, 0)
                self.state = _MY_FIRST_KEYWORD_STATES.get(word, T_NONE)
                if word == M_SET:
                    self.assignment = A_START
        elif self.assignment != A_NONE:
            flags |= self._assign(kind, word, symbol)
        elif self.state != T_NONE:
            flags |= self._advance(word)
        elif self.first == M_FLUSH and (
            (word == M_LOCK and previous == M_READ) or (word == M_EXPORT and previous == M_FOR)
        ):
            flags |= MY_PIN_READ_LOCK
        self.previous = word
        return flags

    def _advance(self, word: int) -> int:
        """Feeds the word after the statement's leading keywords; returns the flags it settles."""
        state = self.state
        self.state = T_NONE
        if state == T_CREATE:
            if word == M_OR:
                self.state = T_CREATE_OR
            elif word == M_TEMPORARY:
                self.state = T_CREATE_TEMPORARY
        elif state == T_CREATE_OR:
            if word == M_REPLACE:
                self.state = T_CREATE_REPLACE
        elif state == T_CREATE_REPLACE:
            if word == M_TEMPORARY:
                self.state = T_CREATE_TEMPORARY
        elif state == T_CREATE_TEMPORARY:
            if word == M_TABLE_OR_SEQUENCE:
                return MY_PIN_TEMP
        elif state == T_DROP:
            if word == M_PREPARE:
                return MY_PIN_PREPARE
        elif state == T_BACKUP:
            if word == M_LOCK or word == M_STAGE:
                return MY_PIN_LOCK_TABLES
        return 0

    def _assign(self, kind: int, word: int, symbol: int) -> int:
        """Feeds a token of a SET statement's assignment list; returns the flags it settles."""
        state = self.assignment
        is_name = kind == IDENT or kind == QIDENT
        if state == A_START or state == A_SCOPE:
            if kind == IDENT:
                if word == M_GLOBAL or word == M_SESSION:
                    if state == A_START:
                        self.scope = SCOPE_GLOBAL if word == M_GLOBAL else SCOPE_SESSION
                        self.global_by_default = word == M_GLOBAL
                        self.assignment = A_SCOPE
                        return 0
                elif word == M_TRANSACTION and self.first_assignment:
                    self.assignment = A_NONE
                    if self.scope == SCOPE_DEFAULT:
                        return MY_PIN_SET  # SET TRANSACTION: only the next transaction, on whatever backend
                    return MY_SET_TRACKED if self.scope == SCOPE_SESSION else 0
                elif state == A_START and self.first_assignment:
                    if word == M_ROLE:
                        self.assignment = A_NONE
                        return MY_PIN_SET
                    if word == M_PASSWORD or word == M_DEFAULT:  # SET PASSWORD, SET DEFAULT ROLE: no session state
                        self.assignment = A_NONE
                        return 0
                    if word == M_STATEMENT:  # SET STATEMENT ... FOR: statement-scoped
                        self.assignment = A_STATEMENT
                        return 0
                if word == M_NAMES or word == M_CHARSET:
                    self.assignment = A_VALUE
                    return MY_SET_TRACKED
                if word == M_CHARACTER:
                    self.assignment = A_CHARACTER
                    return 0
            if is_name:
                self.name = word
                self.assignment = A_NAME
                return 0
            if symbol == _AT and state == A_START:
                self.assignment = A_AT
                return 0
            self.assignment = A_VALUE
            return self._value(symbol)
        if state == A_AT:
            if symbol == _AT:
                self.assignment = A_ATAT
                return 0
            self.assignment = A_VALUE
            return MY_PIN_USER_VARIABLE
        if state == A_ATAT:
            if kind == IDENT and (word == M_GLOBAL or word == M_SESSION):
                self.pending_scope = SCOPE_GLOBAL if word == M_GLOBAL else SCOPE_SESSION
                self.assignment = A_ATAT_SCOPE
                return 0
            if is_name:
                self.scope = SCOPE_ATAT
                self.name = word
                self.assignment = A_NAME
                return 0
            self.assignment = A_VALUE
            return self._value(symbol)
        if state == A_ATAT_SCOPE:
            if kind == DOT:
                self.scope = self.pending_scope
                self.assignment = A_ATAT_DOT
                return 0
            self.scope = SCOPE_ATAT  # @@session alone: a variable named like the scope
            self.name = M_OTHER
            return self._settle_name(False) | self._value(symbol)
        if state == A_ATAT_DOT:
            if is_name:
                self.name = word
                self.assignment = A_NAME
                return 0
            self.assignment = A_VALUE
            return self._value(symbol)
        if state == A_NAME:
            if kind == DOT:
                self.assignment = A_VALUE
                return self._settle_name(True)
            return self._settle_name(False) | self._value(symbol)
        if state == A_CHARACTER:
            if word == M_SET:
                self.assignment = A_VALUE
                return MY_SET_TRACKED
            self.name = M_OTHER
            return self._settle_name(False) | self._value(symbol)
        if state == A_STATEMENT:
            if word == M_FOR and self.depth == 0:
                self.restart = True
            return 0
        return self._value(symbol)  # A_VALUE

    def _value(self, symbol: int) -> int:
        """A token of an assigned value: a ',' at depth 0 starts the next assignment."""
        self.assignment = A_VALUE
        if symbol == _COMMA and self.depth == 0:
            self.assignment = A_START
            self.first_assignment = False
            self.scope = SCOPE_DEFAULT
        return 0

    def _settle_name(self, structured: bool) -> int:
        """The flags of assigning the variable just named (structured: a dotted name such as cache.key_buffer_size)."""
        self.assignment = A_VALUE
        scope = self.scope
        if scope == SCOPE_DEFAULT:
            scope = SCOPE_GLOBAL if self.global_by_default else SCOPE_SESSION
        if scope == SCOPE_GLOBAL:
            return 0
        if structured:
            return MY_PIN_SET
        if self.name == M_TRACKED_VARIABLE:
            return MY_SET_TRACKED
        if self.name == M_TRANSACTION_VARIABLE:
            return MY_PIN_SET if scope == SCOPE_ATAT else MY_SET_TRACKED
        return MY_PIN_SET

    def finish(self) -> int:
        """Flags settled by the end of the statement."""
        assignment = self.assignment
        if assignment == A_NAME or assignment == A_CHARACTER or assignment == A_ATAT_SCOPE:
            if assignment != A_NAME:
                self.name = M_OTHER
            if assignment == A_ATAT_SCOPE:
                self.scope = SCOPE_ATAT
            return self._settle_name(False)
        if assignment == A_AT:
            return MY_PIN_USER_VARIABLE
        return 0


# As PG_TRIGGER_WORDS, for MySQL: every flag classify_mysql can give needs one of these in the text, in any case
# (charset, get_lock, sql_calc_found_rows contain one); '@' starts every user variable, '/*' every executable
# comment.
MYSQL_TRIGGER_WORDS = (
    b"set",
    b"lock",
    b"prepare",
    b"execute",
    b"deallocate",
    b"use",
    b"kill",
    b"temporary",
    b"stage",
    b"export",
    b"last_insert_id",
    b"row_count",
    b"found_rows",
    b"@",
    b"/*",
)
_MYSQL_TRIGGER = re.compile(b"|".join(re.escape(word) for word in MYSQL_TRIGGER_WORDS), re.IGNORECASE)


def mysql_has_trigger_word(sql: BytesLike) -> bool:
    """Whether sql contains a word that could give it flags (MYSQL_TRIGGER_WORDS); False proves classify_mysql is 0."""
    return _MYSQL_TRIGGER.search(_as_bytes(sql)) is not None


def classify_mysql(sql: BytesLike, options: int = MYSQL_LEX_OPTIONS) -> int:
    """OR of the MY_* flags (see flags.py) of every statement in a MySQL / MariaDB query text.

    `options` are the lexer options: clear LEX_BACKSLASH_STRINGS when sql_mode has NO_BACKSLASH_ESCAPES and
    LEX_DQUOTE_STRINGS when it has ANSI_QUOTES (see mysql_lex_options)."""
    sql = _as_bytes(sql)
    if _MYSQL_TRIGGER.search(sql) is None:
        return 0
    return classify_mysql_lexed(sql, options)


def classify_mysql_lexed(sql: BytesLike, options: int = MYSQL_LEX_OPTIONS) -> int:
    """classify_mysql without the trigger-word search: every statement is lexed (the tests check the search)."""
    sql = _as_bytes(sql)
    flags = 0
    statement = _MyStatement()
    for kind, start, end in _lex(sql, options):
        if kind == SEMI:
            flags |= statement.finish()
            statement = _MyStatement()
        elif kind == EXEC_COMMENT:
            flags |= MY_PIN_EXECUTABLE_COMMENT
        else:
            symbol = sql[start] if kind == OTHER and end - start == 1 else 0
            flags |= statement.token(kind, _my_word(sql, kind, start, end), symbol)
            if statement.restart:
                statement = _MyStatement()
    return flags | statement.finish()


def mysql_lex_options(sql_mode: Union[str, bytes]) -> int:
    """The lexer options matching a session's sql_mode (ANSI_QUOTES, NO_BACKSLASH_ESCAPES change the lexing)."""
    if isinstance(sql_mode, bytes):
        sql_mode = sql_mode.decode("ascii", "replace")
    modes = {mode.strip().upper() for mode in sql_mode.split(",")}
    options = MYSQL_LEX_OPTIONS
    if "ANSI_QUOTES" in modes or "ANSI" in modes:
        options &= ~LEX_DQUOTE_STRINGS
    if "NO_BACKSLASH_ESCAPES" in modes:
        options &= ~LEX_BACKSLASH_STRINGS
    return options


# Words that cannot be a column alias written without AS (what may follow a select list).
_NOT_ALIASES = frozenset(
    b"from where into limit for lock union except intersect group having order window procedure".split()
)
_SESSION_FUNCTIONS = {b"last_insert_id": MY_READS_LAST_INSERT_ID, b"row_count": MY_READS_ROW_COUNT}


def _statement_tokens(sql: BytesLike) -> list[tuple[int, int, int]] | None:
    """Tokens of a text holding one statement (an optional trailing ';'), None for anything else."""
    tokens = list(_lex(_as_bytes(sql), MYSQL_LEX_OPTIONS))
    if tokens and tokens[-1][0] == SEMI:
        tokens.pop()
    if any(kind == SEMI or kind == EXEC_COMMENT for kind, _, _ in tokens):
        return None
    return tokens


def _alias_text(sql: bytes, kind: int, start: int, end: int) -> bytes | None:
    if kind == IDENT:
        text = sql[start:end]
        return None if text.lower() in _NOT_ALIASES or text.lower() == b"as" else text
    if kind == QIDENT:
        return sql[start:end].replace(b"``", b"`")
    if kind == OTHER and end - start >= 2 and sql[start] in b"'\"" and sql[end - 1] == sql[start]:
        body = sql[start + 1 : end - 1]
        if b"\\" in body:
            return None  # escapes in an alias: rare; let the server answer
        quote = sql[start : start + 1]
        return body.replace(quote + quote, quote)
    return None


def mysql_session_function_items(sql: BytesLike) -> list[tuple[int, bytes]] | None:
    """When the text is exactly one SELECT of LAST_INSERT_ID() / ROW_COUNT() items (each optionally aliased),
    its items in order as (MY_READS_LAST_INSERT_ID or MY_READS_ROW_COUNT, column name as the server would name it);
    None otherwise. The proxy answers such a SELECT itself."""
    sql = _as_bytes(sql)
    tokens = _statement_tokens(sql)
    if not tokens or tokens[0][0] != IDENT or sql[tokens[0][1] : tokens[0][2]].lower() != b"select":
        return None
    items: list[tuple[int, bytes]] = []
    pos = 1
    while True:
        if len(tokens) - pos < 3:
            return None
        (kind, start, end), (open_kind, _, _), (close_kind, _, close_end) = tokens[pos : pos + 3]
        flag = _SESSION_FUNCTIONS.get(sql[start:end].lower()) if kind == IDENT else None
        if flag is None or open_kind != LPAREN or close_kind != RPAREN:
            return None
        name = sql[start:close_end]
        pos += 3
        if pos < len(tokens) and tokens[pos][0] == IDENT and sql[tokens[pos][1] : tokens[pos][2]].lower() == b"as":
            pos += 1
            if pos == len(tokens):
                return None
        if pos < len(tokens) and not (tokens[pos][0] == OTHER and sql[tokens[pos][1] : tokens[pos][2]] == b","):
            name = _alias_text(sql, *tokens[pos])
            if name is None:
                return None
            pos += 1
        items.append((flag, name))
        if pos == len(tokens):
            return items
        if not (tokens[pos][0] == OTHER and sql[tokens[pos][1] : tokens[pos][2]] == b","):
            return None
        pos += 1


def mysql_select_of_session_functions(sql: BytesLike) -> int:
    """MY_READS_LAST_INSERT_ID | MY_READS_ROW_COUNT for the functions of a text that is exactly one SELECT of
    LAST_INSERT_ID() and/or ROW_COUNT() items (see mysql_session_function_items); 0 otherwise."""
    flags = 0
    for flag, _ in mysql_session_function_items(sql) or ():
        flags |= flag
    return flags


def parse_kill(sql: BytesLike) -> tuple[str, int] | None:
    """("QUERY" or "CONNECTION", id) of `KILL [HARD | SOFT] [QUERY | CONNECTION] <id>`; None for anything else."""
    sql = _as_bytes(sql)
    tokens = _statement_tokens(sql)
    if not tokens:
        return None
    words = [sql[start:end].upper() if kind == IDENT else None for kind, start, end in tokens]
    if words[0] != b"KILL":
        return None
    pos = 1
    if pos < len(words) and words[pos] in (b"HARD", b"SOFT"):
        pos += 1
    target = "CONNECTION"
    if pos < len(words) and words[pos] in (b"QUERY", b"CONNECTION"):
        target = words[pos].decode()
        pos += 1
    if pos != len(tokens) - 1:
        return None
    kind, start, end = tokens[pos]
    number = sql[start:end]
    if kind != OTHER or not number.isdigit():
        return None
    return target, int(number)

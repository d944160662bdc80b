# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""SQL statement classifier compiled with Cython: the fast twin of classify_py with the same API and behaviour.

The lexer is shared by every dialect and configured with LEX_* option bits; each dialect then has its own
classifier that walks the token stream statement by statement (classify_pg, classify_mysql).
Tokens are C structs and words small ints: nothing is allocated per token.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memchr, memcmp


cdef extern from *:
    int __builtin_ctzll(unsigned long long) nogil

# Rare statement-level helpers, and the trigger words: plain Python shared with the pure twin.
from .classify_py import (
    MYSQL_TRIGGER_WORDS,
    PG_TRIGGER_WORDS,
    mysql_lex_options,
    mysql_select_of_session_functions,
    mysql_session_function_items,
    parse_kill,
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

# Flags: the cdef copies of flags.py (a test checks that they agree).
cdef enum:
    F_PIN_SET = 1 << 0
    F_SET_TRACKED = 1 << 1
    F_PIN_PREPARE = 1 << 2
    F_PIN_TEMP = 1 << 3
    F_PIN_CURSOR = 1 << 4
    F_PIN_LISTEN = 1 << 5
    F_PIN_LOAD = 1 << 6
    F_PIN_ADVISORY_LOCK = 1 << 7
    F_PIN_DISCARD = 1 << 8
    F_MY_PIN_LOCK_TABLES = 1 << 16
    F_MY_PIN_READ_LOCK = 1 << 17
    F_MY_PIN_GET_LOCK = 1 << 18
    F_MY_PIN_USER_VARIABLE = 1 << 19
    F_MY_PIN_SET = 1 << 20
    F_MY_PIN_TEMP = 1 << 21
    F_MY_PIN_PREPARE = 1 << 22
    F_MY_PIN_EXECUTABLE_COMMENT = 1 << 23
    F_MY_PIN_CALC_FOUND_ROWS = 1 << 24
    F_MY_SET_TRACKED = 1 << 25
    F_MY_USE = 1 << 26
    F_MY_READS_LAST_INSERT_ID = 1 << 27
    F_MY_READS_ROW_COUNT = 1 << 28
    F_MY_KILL = 1 << 29
    F_MY_SETS_LAST_INSERT_ID = 1 << 30

FLAGS = {
    "PIN_SET": F_PIN_SET,
    "SET_TRACKED": F_SET_TRACKED,
    "PIN_PREPARE": F_PIN_PREPARE,
    "PIN_TEMP": F_PIN_TEMP,
    "PIN_CURSOR": F_PIN_CURSOR,
    "PIN_LISTEN": F_PIN_LISTEN,
    "PIN_LOAD": F_PIN_LOAD,
    "PIN_ADVISORY_LOCK": F_PIN_ADVISORY_LOCK,
    "PIN_DISCARD": F_PIN_DISCARD,
}
MY_FLAGS = {
    "MY_PIN_LOCK_TABLES": F_MY_PIN_LOCK_TABLES,
    "MY_PIN_READ_LOCK": F_MY_PIN_READ_LOCK,
    "MY_PIN_GET_LOCK": F_MY_PIN_GET_LOCK,
    "MY_PIN_USER_VARIABLE": F_MY_PIN_USER_VARIABLE,
    "MY_PIN_SET": F_MY_PIN_SET,
    "MY_PIN_TEMP": F_MY_PIN_TEMP,
    "MY_PIN_PREPARE": F_MY_PIN_PREPARE,
    "MY_PIN_EXECUTABLE_COMMENT": F_MY_PIN_EXECUTABLE_COMMENT,
    "MY_PIN_CALC_FOUND_ROWS": F_MY_PIN_CALC_FOUND_ROWS,
    "MY_SET_TRACKED": F_MY_SET_TRACKED,
    "MY_USE": F_MY_USE,
    "MY_READS_LAST_INSERT_ID": F_MY_READS_LAST_INSERT_ID,
    "MY_READS_ROW_COUNT": F_MY_READS_ROW_COUNT,
    "MY_KILL": F_MY_KILL,
    "MY_SETS_LAST_INSERT_ID": F_MY_SETS_LAST_INSERT_ID,
}

# ---------------------------------------------------------------------------------------------- lexer
# Token kinds. For QIDENT the token span is the text between the quotes (doubled quotes left as they are).
# EXEC_COMMENT is the opener of a MySQL executable comment (/*!, /*!50001, /*M!, /*M!100301): the comment's
# content follows as ordinary tokens and its closing */ is skipped.
cdef enum:
    TK_EOF = 0
    TK_IDENT = 1
    TK_QIDENT = 2
    TK_LPAREN = 3
    TK_RPAREN = 4
    TK_SEMI = 5
    TK_DOT = 6
    TK_OTHER = 7
    TK_EXEC_COMMENT = 8

IDENT = TK_IDENT
QIDENT = TK_QIDENT
LPAREN = TK_LPAREN
RPAREN = TK_RPAREN
SEMI = TK_SEMI
DOT = TK_DOT
OTHER = TK_OTHER
EXEC_COMMENT = TK_EXEC_COMMENT

# Lexer options: the dialect differences the lexer knows about.
cdef enum:
    OPT_NESTED_COMMENTS = 1 << 0  # /* /* */ */ nests (PostgreSQL)
    OPT_DOLLAR_QUOTES = 1 << 1  # $tag$ ... $tag$ (PostgreSQL)
    OPT_E_STRINGS = 1 << 2  # E'...' with backslash escapes (PostgreSQL)
    OPT_HASH_COMMENTS = 1 << 3  # '#' comment to end of line (MySQL)
    OPT_BACKSLASH_STRINGS = 1 << 4  # backslash escapes in every quoted string (MySQL default sql_mode)
    OPT_DQUOTE_STRINGS = 1 << 5  # "..." is a string, not an identifier (MySQL without ANSI_QUOTES)
    OPT_BACKTICK_IDENTS = 1 << 6  # `...` quoted identifiers (MySQL)
    OPT_DASH_COMMENT_NEEDS_SPACE = 1 << 7  # '--' starts a comment only before a space or control char (MySQL)
    OPT_EXECUTABLE_COMMENTS = 1 << 8  # /*! ... */ and /*M! ... */ hold code, not a comment (MySQL, MariaDB)
    OPT_PG = OPT_NESTED_COMMENTS | OPT_DOLLAR_QUOTES | OPT_E_STRINGS
    OPT_MYSQL = (OPT_HASH_COMMENTS | OPT_BACKSLASH_STRINGS | OPT_DQUOTE_STRINGS | OPT_BACKTICK_IDENTS
                 | OPT_DASH_COMMENT_NEEDS_SPACE | OPT_EXECUTABLE_COMMENTS)

LEX_NESTED_COMMENTS = OPT_NESTED_COMMENTS
LEX_DOLLAR_QUOTES = OPT_DOLLAR_QUOTES
LEX_E_STRINGS = OPT_E_STRINGS
LEX_HASH_COMMENTS = OPT_HASH_COMMENTS
LEX_BACKSLASH_STRINGS = OPT_BACKSLASH_STRINGS
LEX_DQUOTE_STRINGS = OPT_DQUOTE_STRINGS
LEX_BACKTICK_IDENTS = OPT_BACKTICK_IDENTS
LEX_DASH_COMMENT_NEEDS_SPACE = OPT_DASH_COMMENT_NEEDS_SPACE
LEX_EXECUTABLE_COMMENTS = OPT_EXECUTABLE_COMMENTS
PG_LEX_OPTIONS = OPT_PG
MYSQL_LEX_OPTIONS = OPT_MYSQL

cdef enum:
    CC_SPACE = 1
    CC_IDENT_START = 2
    CC_IDENT_CONT = 4  # identifier characters, including '$'
    CC_TAG_CONT = 8  # dollar-quote tag characters: identifier characters without '$'
    CC_DIGIT = 16

cdef unsigned char CHAR_CLASS[256]


cdef void init_char_classes():
    cdef int c
    for c in range(256):
        CHAR_CLASS[c] = 0
        if c in b" \t\n\r\f\v":
            CHAR_CLASS[c] |= CC_SPACE
        if (ord("a") <= c <= ord("z")) or (ord("A") <= c <= ord("Z")) or c == ord("_") or c >= 0x80:
            CHAR_CLASS[c] |= CC_IDENT_START | CC_IDENT_CONT | CC_TAG_CONT
        if ord("0") <= c <= ord("9"):
            CHAR_CLASS[c] |= CC_DIGIT | CC_IDENT_CONT | CC_TAG_CONT
    CHAR_CLASS[ord("$")] |= CC_IDENT_CONT


init_char_classes()


cdef struct Lexer:
    const unsigned char* s
    Py_ssize_t n
    Py_ssize_t pos
    int options
    bint in_executable_comment


cdef inline void lexer_start(Lexer* lx, bytes data, int options) noexcept:
    lx.s = <const unsigned char*>PyBytes_AS_STRING(data)
    lx.n = PyBytes_GET_SIZE(data)
    lx.pos = 0
    lx.options = options
    lx.in_executable_comment = False


cdef struct Token:
    int kind
    Py_ssize_t start
    Py_ssize_t end


cdef inline Py_ssize_t skip_quoted(const unsigned char* s, Py_ssize_t n, Py_ssize_t pos, unsigned char quote,
                                   bint backslash, Py_ssize_t* text_end) noexcept nogil:
    """pos is just past the opening quote. Returns the end of the literal and sets text_end to the end of its text
    (both the end of input when it is unterminated)."""
    cdef unsigned char c
    while pos < n:
        c = s[pos]
        if c == quote:
            if pos + 1 < n and s[pos + 1] == quote:
                pos += 2
                continue
            text_end[0] = pos
            return pos + 1
        if backslash and c == b"\\":
            pos += 2
            continue
        pos += 1
    text_end[0] = n
    return n


cdef inline Py_ssize_t skip_block_comment(const unsigned char* s, Py_ssize_t n, Py_ssize_t pos,
                                          bint nested) noexcept nogil:
    """pos is just past the opening '/*'. Returns the offset just past the comment (end of input if unterminated)."""
    cdef int depth = 1
    while pos + 1 < n:
        if nested and s[pos] == b"/" and s[pos + 1] == b"*":
            depth += 1
            pos += 2
        elif s[pos] == b"*" and s[pos + 1] == b"/":
            depth -= 1
            pos += 2
            if depth == 0:
                return pos
        else:
            pos += 1
    return n


cdef inline Py_ssize_t skip_dollar_quoted(const unsigned char* s, Py_ssize_t n, Py_ssize_t start,
                                          Py_ssize_t tag_len) noexcept nogil:
    """The tag s[start:start + tag_len] opened a dollar quote: returns the offset past its closing tag."""
    cdef Py_ssize_t pos = start + tag_len
    cdef const unsigned char* hit
    while n - pos >= tag_len:
        hit = <const unsigned char*>memchr(s + pos, b"$", n - pos - tag_len + 1)
        if hit == NULL:
            return n
        pos = hit - s
        if memcmp(s + pos, s + start, tag_len) == 0:
            return pos + tag_len
        pos += 1
    return n


cdef bint lex_next(Lexer* lx, Token* tok) noexcept nogil:
    """Reads the next token into tok; returns False at the end of input. Whitespace and comments are skipped."""
    cdef const unsigned char* s = lx.s
    cdef Py_ssize_t n = lx.n
    cdef Py_ssize_t i = lx.pos
    cdef Py_ssize_t j, text_end
    cdef int options = lx.options
    cdef unsigned char c
    cdef int following
    while i < n:
        c = s[i]
        if CHAR_CLASS[c] & CC_SPACE:
            i += 1
            continue
        following = s[i + 1] if i + 1 < n else -1
        if lx.in_executable_comment and c == b"*" and following == b"/":  # */ closing /*! ... */
            lx.in_executable_comment = False
            i += 2
            continue
        if (c == b"-" and following == b"-") or (c == b"#" and options & OPT_HASH_COMMENTS):
            if c == b"-" and options & OPT_DASH_COMMENT_NEEDS_SPACE and not (i + 2 < n and s[i + 2] <= 0x20):
                tok.kind = TK_OTHER
                tok.start = i
                tok.end = i + 1
                lx.pos = i + 1
                return True
            i += 1
            while i < n and s[i] != b"\n" and s[i] != b"\r":
                i += 1
            continue
        if c == b"/" and following == b"*":
            if options & OPT_EXECUTABLE_COMMENTS:
                j = i + 2
                if j < n and s[j] == b"M":
                    j += 1
                if j < n and s[j] == b"!":
                    j += 1
                    while j < n and CHAR_CLASS[s[j]] & CC_DIGIT:
                        j += 1
                    lx.in_executable_comment = True
                    tok.kind = TK_EXEC_COMMENT
                    tok.start = i
                    tok.end = j
                    lx.pos = j
                    return True
            i = skip_block_comment(s, n, i + 2, options & OPT_NESTED_COMMENTS)
            continue
        tok.start = i
        if c == b"'" or (c == b'"' and options & OPT_DQUOTE_STRINGS):
            tok.kind = TK_OTHER
            tok.end = skip_quoted(s, n, i + 1, c, options & OPT_BACKSLASH_STRINGS, &text_end)
        elif c == b'"' or (c == b"`" and options & OPT_BACKTICK_IDENTS):
            tok.kind = TK_QIDENT
            tok.start = i + 1
            lx.pos = skip_quoted(s, n, i + 1, c, False, &text_end)
            tok.end = text_end
            return True
        elif c == b"$":
            tok.kind = TK_OTHER
            tok.end = i + 1
            if following >= 0 and CHAR_CLASS[following] & CC_DIGIT:  # $1: a parameter
                j = i + 1
                while j < n and CHAR_CLASS[s[j]] & CC_DIGIT:
                    j += 1
                tok.end = j
            elif options & OPT_DOLLAR_QUOTES:
                j = i + 1
                if j < n and CHAR_CLASS[s[j]] & CC_IDENT_START:
                    j += 1
                    while j < n and CHAR_CLASS[s[j]] & CC_TAG_CONT:
                        j += 1
                if j < n and s[j] == b"$":
                    tok.end = skip_dollar_quoted(s, n, i, j + 1 - i)
        elif CHAR_CLASS[c] & CC_IDENT_START:
            if following == b"'" and (c == b"E" or c == b"e") and options & OPT_E_STRINGS:
                tok.kind = TK_OTHER
                tok.end = skip_quoted(s, n, i + 2, b"'", True, &text_end)
            else:
                tok.kind = TK_IDENT
                j = i + 1
                while j < n and CHAR_CLASS[s[j]] & CC_IDENT_CONT:
                    j += 1
                tok.end = j
        elif CHAR_CLASS[c] & CC_DIGIT:
            tok.kind = TK_OTHER
            j = i + 1
            while j < n and CHAR_CLASS[s[j]] & CC_DIGIT:
                j += 1
            tok.end = j
        else:
            if c == b"(":
                tok.kind = TK_LPAREN
            elif c == b")":
                tok.kind = TK_RPAREN
            elif c == b";":
                tok.kind = TK_SEMI
            elif c == b".":
                tok.kind = TK_DOT
            else:
                tok.kind = TK_OTHER
            tok.end = i + 1
        lx.pos = tok.end
        return True
    lx.pos = n
    return False


cdef bytes as_bytes(object sql):
    if type(sql) is bytes:
        return <bytes>sql
    if isinstance(sql, (bytes, bytearray, memoryview)):
        return bytes(sql)
    raise TypeError(f"expected bytes, not {type(sql).__name__}")


def tokenize(sql, int options=OPT_PG) -> list:
    """The token stream of sql as (kind, start, end) offsets: for inspecting and testing the lexer."""
    cdef bytes data = as_bytes(sql)
    cdef Lexer lx
    cdef Token tok
    lexer_start(&lx, data, options)
    cdef list tokens = []
    while lex_next(&lx, &tok):
        tokens.append((tok.kind, tok.start, tok.end))
    return tokens


# ---------------------------------------------------------------------------------------------- words
# Keywords match unquoted identifiers case-insensitively. Names (functions, the pg_temp schema) also match
# quoted identifiers spelled exactly; tracked parameter names match quoted ones case-insensitively, as
# PostgreSQL looks parameters up.
cdef enum:
    W_OTHER = 0
    W_SET
    W_RESET
    W_LOCAL
    W_SESSION
    W_AUTHORIZATION
    W_CHARACTERISTICS
    W_TRANSACTION
    W_CONSTRAINTS
    W_ROLE
    W_TIME
    W_ZONE
    W_NAMES
    W_ALL
    W_PREPARE
    W_EXECUTE
    W_DEALLOCATE
    W_CREATE
    W_OR
    W_REPLACE
    W_GLOBAL
    W_TEMP
    W_UNLOGGED
    W_TABLE_OR_SEQUENCE
    W_VIEW
    W_RECURSIVE
    W_SELECT
    W_WITH
    W_INTO
    W_ON
    W_COMMIT
    W_DROP
    W_DECLARE
    W_LISTEN
    W_LOAD
    W_DISCARD
    W_TRUE
    W_SET_CONFIG  # first of the names that quoted identifiers may match
    W_ADVISORY_LOCK
    W_PG_TEMP
    W_TRACKED_PARAM
    LONGEST_WORD = 27  # pg_try_advisory_lock_shared

# Parameters PostgreSQL reports in ParameterStatus and the proxy therefore tracks and replays.
PG_TRACKED_PARAMETERS = frozenset(
    [b"application_name", b"client_encoding", b"datestyle", b"intervalstyle", b"timezone"]
)


cdef int lookup_pg_word(const char* low, Py_ssize_t n) noexcept nogil:
    """The word id of a lowercased identifier."""
    if n == 2:
        if memcmp(low, b"or", 2) == 0:
            return W_OR
        if memcmp(low, b"on", 2) == 0:
            return W_ON
    elif n == 3:
        if memcmp(low, b"set", 3) == 0:
            return W_SET
        if memcmp(low, b"all", 3) == 0:
            return W_ALL
    elif n == 4:
        if memcmp(low, b"role", 4) == 0:
            return W_ROLE
        if memcmp(low, b"time", 4) == 0:
            return W_TIME
        if memcmp(low, b"zone", 4) == 0:
            return W_ZONE
        if memcmp(low, b"temp", 4) == 0:
            return W_TEMP
        if memcmp(low, b"view", 4) == 0:
            return W_VIEW
        if memcmp(low, b"with", 4) == 0:
            return W_WITH
        if memcmp(low, b"into", 4) == 0:
            return W_INTO
        if memcmp(low, b"drop", 4) == 0:
            return W_DROP
        if memcmp(low, b"load", 4) == 0:
            return W_LOAD
        if memcmp(low, b"true", 4) == 0:
            return W_TRUE
    elif n == 5:
        if memcmp(low, b"reset", 5) == 0:
            return W_RESET
        if memcmp(low, b"local", 5) == 0:
            return W_LOCAL
        if memcmp(low, b"names", 5) == 0:
            return W_NAMES
        if memcmp(low, b"table", 5) == 0:
            return W_TABLE_OR_SEQUENCE
    elif n == 6:
        if memcmp(low, b"create", 6) == 0:
            return W_CREATE
        if memcmp(low, b"global", 6) == 0:
            return W_GLOBAL
        if memcmp(low, b"select", 6) == 0:
            return W_SELECT
        if memcmp(low, b"commit", 6) == 0:
            return W_COMMIT
        if memcmp(low, b"listen", 6) == 0:
            return W_LISTEN
    elif n == 7:
        if memcmp(low, b"session", 7) == 0:
            return W_SESSION
        if memcmp(low, b"prepare", 7) == 0:
            return W_PREPARE
        if memcmp(low, b"execute", 7) == 0:
            return W_EXECUTE
        if memcmp(low, b"replace", 7) == 0:
            return W_REPLACE
        if memcmp(low, b"declare", 7) == 0:
            return W_DECLARE
        if memcmp(low, b"discard", 7) == 0:
            return W_DISCARD
        if memcmp(low, b"pg_temp", 7) == 0:
            return W_PG_TEMP
    elif n == 8:
        if memcmp(low, b"unlogged", 8) == 0:
            return W_UNLOGGED
        if memcmp(low, b"sequence", 8) == 0:
            return W_TABLE_OR_SEQUENCE
        if memcmp(low, b"timezone", 8) == 0:
            return W_TRACKED_PARAM
    elif n == 9:
        if memcmp(low, b"temporary", 9) == 0:
            return W_TEMP
        if memcmp(low, b"recursive", 9) == 0:
            return W_RECURSIVE
        if memcmp(low, b"datestyle", 9) == 0:
            return W_TRACKED_PARAM
    elif n == 10:
        if memcmp(low, b"deallocate", 10) == 0:
            return W_DEALLOCATE
        if memcmp(low, b"set_config", 10) == 0:
            return W_SET_CONFIG
    elif n == 11:
        if memcmp(low, b"transaction", 11) == 0:
            return W_TRANSACTION
        if memcmp(low, b"constraints", 11) == 0:
            return W_CONSTRAINTS
    elif n == 13:
        if memcmp(low, b"authorization", 13) == 0:
            return W_AUTHORIZATION
        if memcmp(low, b"intervalstyle", 13) == 0:
            return W_TRACKED_PARAM
    elif n == 15:
        if memcmp(low, b"characteristics", 15) == 0:
            return W_CHARACTERISTICS
        if memcmp(low, b"client_encoding", 15) == 0:
            return W_TRACKED_PARAM
    elif n == 16:
        if memcmp(low, b"pg_advisory_lock", 16) == 0:
            return W_ADVISORY_LOCK
        if memcmp(low, b"application_name", 16) == 0:
            return W_TRACKED_PARAM
    elif n == 20:
        if memcmp(low, b"pg_try_advisory_lock", 20) == 0:
            return W_ADVISORY_LOCK
    elif n == 23:
        if memcmp(low, b"pg_advisory_lock_shared", 23) == 0:
            return W_ADVISORY_LOCK
    elif n == 27:
        if memcmp(low, b"pg_try_advisory_lock_shared", 27) == 0:
            return W_ADVISORY_LOCK
    return W_OTHER


cdef inline int pg_word(const unsigned char* s, Token* tok) noexcept nogil:
    cdef Py_ssize_t n = tok.end - tok.start
    cdef char low[LONGEST_WORD]
    cdef Py_ssize_t k
    cdef unsigned char c
    cdef bint has_upper = False
    cdef int word
    if (tok.kind != TK_IDENT and tok.kind != TK_QIDENT) or n < 2 or n > LONGEST_WORD:
        return W_OTHER
    for k in range(n):
        c = s[tok.start + k]
        if ord("A") <= c <= ord("Z"):
            c += 32
            has_upper = True
        low[k] = <char>c
    word = lookup_pg_word(low, n)
    if tok.kind == TK_IDENT or word == W_TRACKED_PARAM:
        return word
    if word >= W_SET_CONFIG and not has_upper:  # quoted names must be spelled exactly
        return word
    return W_OTHER


# ---------------------------------------------------------------------------------------------- PostgreSQL
# Where the leading keywords of SET / RESET / PREPARE / CREATE have brought a statement.
cdef enum:
    S_NONE = 0
    S_SET
    S_SET_SESSION
    S_SET_TIME
    S_SET_NAME
    S_RESET
    S_PREPARE
    S_CREATE
    S_CREATE_OR
    S_CREATE_REPLACE
    S_CREATE_SCOPE
    S_CREATE_TEMP
    S_CREATE_UNLOGGED
    S_CREATE_RECURSIVE
    MAX_OPEN_SET_CONFIG = 64


cdef struct PgStatement:
    int first  # word of the statement's first identifier, -1 before it
    int state
    bint name_tracked  # S_SET_NAME: whether the parameter name is a tracked one
    int previous  # word of the previous token
    Py_ssize_t depth  # parenthesis depth
    int open_set_config
    Py_ssize_t set_config_depths[MAX_OPEN_SET_CONFIG]  # depth outside each open set_config( call
    int on_commit  # how much of ON COMMIT DROP has just been seen
    bint on_commit_drop
    int into  # 1 after INTO, 2 after INTO LOCAL/GLOBAL
    bint into_temp
    bint temp_object  # CREATE ... TEMP TABLE/SEQUENCE/VIEW
    bint pg_temp_qualified  # pg_temp.<name>


cdef inline void pg_statement_start(PgStatement* st) noexcept nogil:
    st.first = -1
    st.state = S_NONE
    st.name_tracked = False
    st.previous = W_OTHER
    st.depth = 0
    st.open_set_config = 0
    st.on_commit = 0
    st.on_commit_drop = False
    st.into = 0
    st.into_temp = False
    st.temp_object = False
    st.pg_temp_qualified = False


cdef int pg_statement_token(PgStatement* st, int kind, int word) noexcept nogil:
    cdef int flags = 0
    cdef int previous = st.previous
    if kind == TK_LPAREN:
        if previous == W_SET_CONFIG:
            if st.open_set_config < MAX_OPEN_SET_CONFIG:
                st.set_config_depths[st.open_set_config] = st.depth
                st.open_set_config += 1
            else:  # too deep to follow: assume the worst
                flags |= F_PIN_SET
        elif previous == W_ADVISORY_LOCK:
            flags |= F_PIN_ADVISORY_LOCK
        st.depth += 1
    elif kind == TK_RPAREN:
        if st.depth > 0:
            st.depth -= 1
            if st.open_set_config and st.set_config_depths[st.open_set_config - 1] == st.depth:
                st.open_set_config -= 1
                if previous != W_TRUE:  # set_config(name, value, true) is transaction-local
                    flags |= F_PIN_SET
    elif kind == TK_DOT and previous == W_PG_TEMP:
        st.pg_temp_qualified = True

    if word == W_ON:
        st.on_commit = 1
    elif st.on_commit == 1 and word == W_COMMIT:
        st.on_commit = 2
    elif st.on_commit == 2 and word == W_DROP:
        st.on_commit_drop = True
        st.on_commit = 0
    else:
        st.on_commit = 0

    if word == W_INTO:
        st.into = 1
    elif st.into == 1 and (word == W_LOCAL or word == W_GLOBAL):
        st.into = 2
    elif st.into and word == W_TEMP:
        st.into_temp = True
        st.into = 0
    else:
        st.into = 0

    if st.first < 0:
        if kind == TK_IDENT or kind == TK_QIDENT:
            st.first = word
            if word == W_SET:
                st.state = S_SET
            elif word == W_RESET:
                st.state = S_RESET
            elif word == W_PREPARE:
                st.state = S_PREPARE
            elif word == W_CREATE:
                st.state = S_CREATE
            elif word == W_EXECUTE or word == W_DEALLOCATE:
                flags |= F_PIN_PREPARE
            elif word == W_DECLARE:
                flags |= F_PIN_CURSOR
            elif word == W_LISTEN:
                flags |= F_PIN_LISTEN
            elif word == W_LOAD:
                flags |= F_PIN_LOAD
            elif word == W_DISCARD:
                flags |= F_PIN_DISCARD
    elif st.state != S_NONE:
        flags |= pg_statement_advance(st, kind, word)
    st.previous = word
    return flags


cdef int pg_statement_advance(PgStatement* st, int kind, int word) noexcept nogil:
    """Feeds the token after the statement's leading keywords; returns the flags it settles."""
    cdef int state = st.state
    cdef bint is_name = kind == TK_IDENT or kind == TK_QIDENT
    st.state = S_NONE
    if state == S_SET or state == S_SET_SESSION:
        if not is_name:
            return 0
        if state == S_SET and word == W_LOCAL:
            return 0
        if word == W_SESSION:
            st.state = S_SET_SESSION
            return 0
        if state == S_SET_SESSION and (word == W_AUTHORIZATION or word == W_CHARACTERISTICS):
            return F_PIN_SET
        if word == W_TRANSACTION or word == W_CONSTRAINTS:
            return 0
        if word == W_ROLE:
            return F_PIN_SET
        if word == W_NAMES:
            return F_SET_TRACKED
        if word == W_TIME:
            st.state = S_SET_TIME
            return 0
        st.state = S_SET_NAME
        st.name_tracked = word == W_TRACKED_PARAM
        return 0
    if state == S_RESET:
        if not is_name:
            return 0
        if word == W_ALL or word == W_ROLE or word == W_SESSION:
            return F_PIN_SET
        if word == W_TRANSACTION:
            return 0
        if word == W_TIME:
            st.state = S_SET_TIME
            return 0
        st.state = S_SET_NAME
        st.name_tracked = word == W_TRACKED_PARAM
        return 0
    if state == S_SET_TIME:
        return F_SET_TRACKED if word == W_ZONE else F_PIN_SET
    if state == S_SET_NAME:
        if kind == TK_DOT or not st.name_tracked:  # a dotted name is a custom, untracked parameter
            return F_PIN_SET
        return F_SET_TRACKED
    if state == S_PREPARE:
        return 0 if word == W_TRANSACTION else F_PIN_PREPARE  # PREPARE TRANSACTION is two-phase commit
    if state == S_CREATE:
        if word == W_OR:
            st.state = S_CREATE_OR
        elif word == W_GLOBAL or word == W_LOCAL:
            st.state = S_CREATE_SCOPE
        elif word == W_TEMP:
            st.state = S_CREATE_TEMP
    elif state == S_CREATE_OR:
        if word == W_REPLACE:
            st.state = S_CREATE_REPLACE
    elif state == S_CREATE_REPLACE:
        if word == W_GLOBAL or word == W_LOCAL:
            st.state = S_CREATE_SCOPE
        elif word == W_TEMP:
            st.state = S_CREATE_TEMP
    elif state == S_CREATE_SCOPE:
        if word == W_TEMP:
            st.state = S_CREATE_TEMP
    elif state == S_CREATE_TEMP or state == S_CREATE_UNLOGGED:
        if word == W_TABLE_OR_SEQUENCE or word == W_VIEW:
            st.temp_object = True
        elif word == W_UNLOGGED and state == S_CREATE_TEMP:
            st.state = S_CREATE_UNLOGGED
        elif word == W_RECURSIVE:
            st.state = S_CREATE_RECURSIVE
    elif state == S_CREATE_RECURSIVE:
        if word == W_VIEW:
            st.temp_object = True
    return 0


cdef int pg_statement_finish(PgStatement* st) noexcept nogil:
    """Flags settled by the end of the statement."""
    cdef int flags = 0
    if st.state == S_SET_TIME:
        flags |= F_PIN_SET
    elif st.state == S_SET_NAME:
        flags |= F_SET_TRACKED if st.name_tracked else F_PIN_SET
    elif st.state == S_PREPARE:
        flags |= F_PIN_PREPARE
    if st.open_set_config:  # set_config( never closed: assume the worst
        flags |= F_PIN_SET
    if st.first == W_CREATE and (st.temp_object or st.pg_temp_qualified) and not st.on_commit_drop:
        flags |= F_PIN_TEMP
    if (st.first == W_SELECT or st.first == W_WITH) and st.into_temp:
        flags |= F_PIN_TEMP
    return flags


# ---------------------------------------------------------------------------------------------- trigger words
# classify_py.PG_TRIGGER_WORDS says why a text without any of them has no flags (and MYSQL_TRIGGER_WORDS for
# MySQL). The search is shift-and (bitap) over the words' first TRIGGER_PREFIX bytes, packed side by side into one
# 64-bit state: per byte a table load, a shift, an OR and an AND. Only where a whole prefix matched is the rest of
# its word compared.
cdef enum:
    TRIGGER_PREFIX = 4  # bytes per word in the state: a dialect's words fit in 64 bits, and few texts match 4

cdef struct TriggerSet:
    unsigned long long masks[256]  # bit of (word, position): the word's prefix has this byte there, in any case
    unsigned long long starts  # the bit of each word's first byte
    unsigned long long ends  # the bit of each word's last prefix byte
    const unsigned char* text[64]  # by end bit: the word
    Py_ssize_t length[64]  # by end bit: its length
    Py_ssize_t prefix_length[64]  # by end bit: its prefix's length

cdef unsigned char LOWER[256]
cdef TriggerSet PG_TRIGGERS
cdef TriggerSet MYSQL_TRIGGERS
cdef TriggerSet MYSQL_PLAIN_TRIGGERS  # MYSQL_TRIGGER_WORDS and connection_id: what mysql_plain_query looks for
cdef TriggerSet CONNECTION_ID_TRIGGERS
_CONNECTION_ID = (b"connection_id",)
_MYSQL_PLAIN_TRIGGER_WORDS = MYSQL_TRIGGER_WORDS + _CONNECTION_ID


cdef void init_trigger_set(TriggerSet* triggers, tuple words) except *:
    cdef int c, bit = 0, end, j
    cdef bytes word, prefix
    for c in range(256):
        triggers.masks[c] = 0
    triggers.starts = 0
    triggers.ends = 0
    for word in words:  # module-level tuples keep the words alive
        assert word and word == word.lower()
        prefix = word[:TRIGGER_PREFIX]
        assert bit + len(prefix) <= 64
        triggers.starts |= 1ULL << bit
        for j in range(len(prefix)):
            c = prefix[j]
            triggers.masks[c] |= 1ULL << (bit + j)
            if ord("a") <= c <= ord("z"):
                triggers.masks[c - 32] |= 1ULL << (bit + j)  # the uppercase letter
        end = bit + len(prefix) - 1
        triggers.ends |= 1ULL << end
        triggers.text[end] = <const unsigned char*>PyBytes_AS_STRING(word)
        triggers.length[end] = len(word)
        triggers.prefix_length[end] = len(prefix)
        bit += len(prefix)


cdef void init_trigger_words() except *:
    cdef int c
    for c in range(256):
        LOWER[c] = c + 32 if ord("A") <= c <= ord("Z") else c
    init_trigger_set(&PG_TRIGGERS, PG_TRIGGER_WORDS)
    init_trigger_set(&MYSQL_TRIGGERS, MYSQL_TRIGGER_WORDS)
    init_trigger_set(&MYSQL_PLAIN_TRIGGERS, _MYSQL_PLAIN_TRIGGER_WORDS)
    init_trigger_set(&CONNECTION_ID_TRIGGERS, _CONNECTION_ID)


init_trigger_words()


cdef inline bint trigger_word_ends(const TriggerSet* triggers, const unsigned char* s, Py_ssize_t n, Py_ssize_t i,
                                   unsigned long long ends) noexcept nogil:
    """Whether one of the words whose prefix ends at s[i] (the end bits in `ends`) is there whole."""
    cdef Py_ssize_t j, start, length
    cdef int end
    cdef const unsigned char* word
    while ends:
        end = __builtin_ctzll(ends)
        ends &= ends - 1
        word = triggers.text[end]
        length = triggers.length[end]
        start = i + 1 - triggers.prefix_length[end]
        if start + length > n:
            continue
        j = triggers.prefix_length[end]
        while j < length and LOWER[s[start + j]] == word[j]:
            j += 1
        if j == length:
            return True
    return False


cdef bint trigger_in(const TriggerSet* triggers, const unsigned char* s, Py_ssize_t n) noexcept nogil:
    """Whether one of the set's words, in any case, occurs in the n bytes at s."""
    cdef Py_ssize_t i = 0, k
    cdef unsigned long long state = 0, before, seen, ends
    cdef unsigned long long starts = triggers.starts, end_bits = triggers.ends
    cdef const unsigned long long* masks = triggers.masks
    # Four bytes per round, testing for a whole prefix once per round (an end bit lasts one step, so each step's
    # state is ORed into `seen`); a round that had one is replayed byte by byte.
    while i + 4 <= n:
        before = state
        state = ((state << 1) | starts) & masks[s[i]]
        seen = state
        state = ((state << 1) | starts) & masks[s[i + 1]]
        seen |= state
        state = ((state << 1) | starts) & masks[s[i + 2]]
        seen |= state
        state = ((state << 1) | starts) & masks[s[i + 3]]
        seen |= state
        if seen & end_bits:
            state = before
            for k in range(i, i + 4):
                state = ((state << 1) | starts) & masks[s[k]]
                ends = state & end_bits
                if ends and trigger_word_ends(triggers, s, n, k, ends):
                    return True
        i += 4
    while i < n:
        state = ((state << 1) | starts) & masks[s[i]]
        ends = state & end_bits
        if ends and trigger_word_ends(triggers, s, n, i, ends):
            return True
        i += 1
    return False


def pg_has_trigger_word(sql) -> bool:
    """Whether sql contains a word that could give it flags (PG_TRIGGER_WORDS); False proves classify_pg is 0."""
    cdef bytes data = as_bytes(sql)
    return trigger_in(&PG_TRIGGERS, <const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


def classify_pg(sql) -> int:
    """OR of the flags (see flags.py) of every statement in a PostgreSQL query text."""
    cdef bytes data = as_bytes(sql)
    return classify_pg_span(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


def classify_pg_lexed(sql) -> int:
    """classify_pg without the trigger-word search: every statement is lexed (the tests check the search with it)."""
    cdef bytes data = as_bytes(sql)
    return classify_pg_tokens(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


cdef int classify_pg_span(const unsigned char* s, Py_ssize_t n) noexcept:
    """classify_pg of the n bytes at s (a query inside a message, without copying it out)."""
    if not trigger_in(&PG_TRIGGERS, s, n):
        return 0
    return classify_pg_tokens(s, n)


cdef int classify_pg_tokens(const unsigned char* s, Py_ssize_t n) noexcept:
    cdef Lexer lx
    cdef Token tok
    cdef PgStatement st
    cdef int flags = 0
    lx.s = s
    lx.n = n
    lx.pos = 0
    lx.options = OPT_PG
    lx.in_executable_comment = False
    pg_statement_start(&st)
    while lex_next(&lx, &tok):
        if tok.kind == TK_SEMI:
            flags |= pg_statement_finish(&st)
            pg_statement_start(&st)
        else:
            flags |= pg_statement_token(&st, tok.kind, pg_word(lx.s, &tok))
    return flags | pg_statement_finish(&st)


# ---------------------------------------------------------------------------------------------- MySQL
# Keywords match unquoted identifiers case-insensitively; variable names also match quoted ones, as MySQL looks
# variables up case-insensitively.
cdef enum:
    M_OTHER = 0
    M_SET
    M_SESSION  # SESSION, LOCAL
    M_GLOBAL  # GLOBAL, PERSIST, PERSIST_ONLY: not session state
    M_NAMES
    M_CHARACTER
    M_CHARSET
    M_TRANSACTION
    M_ROLE
    M_PASSWORD
    M_DEFAULT
    M_STATEMENT
    M_FOR
    M_LOCK
    M_BACKUP
    M_STAGE
    M_FLUSH
    M_READ
    M_EXPORT
    M_INTO
    M_CREATE
    M_OR
    M_REPLACE
    M_TEMPORARY
    M_TABLE_OR_SEQUENCE
    M_PREPARE
    M_EXECUTE
    M_DEALLOCATE
    M_DROP
    M_USE
    M_KILL
    M_SQL_CALC_FOUND_ROWS
    M_GET_LOCK
    M_LAST_INSERT_ID
    M_ROW_COUNT  # ROW_COUNT, FOUND_ROWS
    M_TRACKED_VARIABLE
    M_TRANSACTION_VARIABLE  # tracked, but @@name without a scope sets only the next transaction (MySQL)
    LONGEST_MY_WORD = 24  # auto_increment_increment, character_set_connection

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


cdef int lookup_my_word(const char* low, Py_ssize_t n) noexcept nogil:
    """The word id of a lowercased identifier."""
    if n == 2:
        if memcmp(low, b"or", 2) == 0:
            return M_OR
    elif n == 3:
        if memcmp(low, b"for", 3) == 0:
            return M_FOR
        if memcmp(low, b"set", 3) == 0:
            return M_SET
        if memcmp(low, b"use", 3) == 0:
            return M_USE
    elif n == 4:
        if memcmp(low, b"drop", 4) == 0:
            return M_DROP
        if memcmp(low, b"into", 4) == 0:
            return M_INTO
        if memcmp(low, b"kill", 4) == 0:
            return M_KILL
        if memcmp(low, b"lock", 4) == 0:
            return M_LOCK
        if memcmp(low, b"read", 4) == 0:
            return M_READ
        if memcmp(low, b"role", 4) == 0:
            return M_ROLE
    elif n == 5:
        if memcmp(low, b"flush", 5) == 0:
            return M_FLUSH
        if memcmp(low, b"local", 5) == 0:
            return M_SESSION
        if memcmp(low, b"names", 5) == 0:
            return M_NAMES
        if memcmp(low, b"stage", 5) == 0:
            return M_STAGE
        if memcmp(low, b"table", 5) == 0:
            return M_TABLE_OR_SEQUENCE
    elif n == 6:
        if memcmp(low, b"backup", 6) == 0:
            return M_BACKUP
        if memcmp(low, b"create", 6) == 0:
            return M_CREATE
        if memcmp(low, b"export", 6) == 0:
            return M_EXPORT
        if memcmp(low, b"global", 6) == 0:
            return M_GLOBAL
    elif n == 7:
        if memcmp(low, b"charset", 7) == 0:
            return M_CHARSET
        if memcmp(low, b"default", 7) == 0:
            return M_DEFAULT
        if memcmp(low, b"execute", 7) == 0:
            return M_EXECUTE
        if memcmp(low, b"persist", 7) == 0:
            return M_GLOBAL
        if memcmp(low, b"prepare", 7) == 0:
            return M_PREPARE
        if memcmp(low, b"replace", 7) == 0:
            return M_REPLACE
        if memcmp(low, b"session", 7) == 0:
            return M_SESSION
    elif n == 8:
        if memcmp(low, b"get_lock", 8) == 0:
            return M_GET_LOCK
        if memcmp(low, b"password", 8) == 0:
            return M_PASSWORD
        if memcmp(low, b"sequence", 8) == 0:
            return M_TABLE_OR_SEQUENCE
        if memcmp(low, b"sql_mode", 8) == 0:
            return M_TRACKED_VARIABLE
    elif n == 9:
        if memcmp(low, b"character", 9) == 0:
            return M_CHARACTER
        if memcmp(low, b"row_count", 9) == 0:
            return M_ROW_COUNT
        if memcmp(low, b"statement", 9) == 0:
            return M_STATEMENT
        if memcmp(low, b"temporary", 9) == 0:
            return M_TEMPORARY
        if memcmp(low, b"time_zone", 9) == 0:
            return M_TRACKED_VARIABLE
    elif n == 10:
        if memcmp(low, b"autocommit", 10) == 0:
            return M_TRACKED_VARIABLE
        if memcmp(low, b"deallocate", 10) == 0:
            return M_DEALLOCATE
        if memcmp(low, b"found_rows", 10) == 0:
            return M_ROW_COUNT
    elif n == 11:
        if memcmp(low, b"transaction", 11) == 0:
            return M_TRANSACTION
    elif n == 12:
        if memcmp(low, b"persist_only", 12) == 0:
            return M_GLOBAL
        if memcmp(low, b"tx_isolation", 12) == 0:
            return M_TRANSACTION_VARIABLE
        if memcmp(low, b"tx_read_only", 12) == 0:
            return M_TRANSACTION_VARIABLE
        if memcmp(low, b"wait_timeout", 12) == 0:
            return M_TRACKED_VARIABLE
    elif n == 14:
        if memcmp(low, b"last_insert_id", 14) == 0:
            return M_LAST_INSERT_ID
    elif n == 16:
        if memcmp(low, b"query_cache_type", 16) == 0:
            return M_TRACKED_VARIABLE
    elif n == 17:
        if memcmp(low, b"net_write_timeout", 17) == 0:
            return M_TRACKED_VARIABLE
    elif n == 19:
        if memcmp(low, b"interactive_timeout", 19) == 0:
            return M_TRACKED_VARIABLE
        if memcmp(low, b"sql_calc_found_rows", 19) == 0:
            return M_SQL_CALC_FOUND_ROWS
    elif n == 20:
        if memcmp(low, b"character_set_client", 20) == 0:
            return M_TRACKED_VARIABLE
        if memcmp(low, b"collation_connection", 20) == 0:
            return M_TRACKED_VARIABLE
        if memcmp(low, b"session_track_schema", 20) == 0:
            return M_TRACKED_VARIABLE
    elif n == 21:
        if memcmp(low, b"character_set_results", 21) == 0:
            return M_TRACKED_VARIABLE
        if memcmp(low, b"transaction_isolation", 21) == 0:
            return M_TRANSACTION_VARIABLE
        if memcmp(low, b"transaction_read_only", 21) == 0:
            return M_TRANSACTION_VARIABLE
    elif n == 24:
        if memcmp(low, b"auto_increment_increment", 24) == 0:
            return M_TRACKED_VARIABLE
        if memcmp(low, b"character_set_connection", 24) == 0:
            return M_TRACKED_VARIABLE
    return M_OTHER


cdef inline int my_word(const unsigned char* s, Token* tok) noexcept nogil:
    cdef Py_ssize_t n = tok.end - tok.start
    cdef char low[LONGEST_MY_WORD]
    cdef Py_ssize_t k
    cdef unsigned char c
    cdef int word
    if (tok.kind != TK_IDENT and tok.kind != TK_QIDENT) or n < 2 or n > LONGEST_MY_WORD:
        return M_OTHER
    for k in range(n):
        c = s[tok.start + k]
        if ord("A") <= c <= ord("Z"):
            c += 32
        low[k] = <char>c
    word = lookup_my_word(low, n)
    if tok.kind == TK_IDENT or word == M_TRACKED_VARIABLE or word == M_TRANSACTION_VARIABLE:
        return word
    return M_OTHER


# Where the leading keywords of a statement have brought it.
cdef enum:
    T_NONE = 0
    T_CREATE
    T_CREATE_OR
    T_CREATE_REPLACE
    T_CREATE_TEMPORARY
    T_DROP
    T_BACKUP

# Where a SET statement stands within its current assignment.
cdef enum:
    A_NONE = 0  # not in a SET assignment list (or past the part that matters)
    A_START  # the start of an assignment
    A_SCOPE  # after GLOBAL / SESSION / LOCAL
    A_AT  # after @ (a user variable follows)
    A_ATAT  # after @@
    A_ATAT_SCOPE  # after @@global / @@session / @@local: a '.' follows
    A_ATAT_DOT  # after @@scope.
    A_NAME  # after a variable name: a '.' would make it a structured name
    A_CHARACTER  # after CHARACTER: SET follows
    A_VALUE  # in the assigned value, until a ',' at depth 0
    A_STATEMENT  # SET STATEMENT ... until FOR at depth 0

# How much of a user variable assignment @name[.part] := has just been seen.
cdef enum:
    UV_NONE = 0
    UV_NAME
    UV_DOT
    UV_COLON

# Scope of the variable being assigned.
cdef enum:
    SCOPE_DEFAULT = 0
    SCOPE_SESSION
    SCOPE_GLOBAL
    SCOPE_ATAT


cdef struct MyStatement:
    int first  # word of the statement's first identifier, -1 before it
    int state
    int assignment
    bint first_assignment
    bint global_by_default  # the latest GLOBAL / SESSION keyword of a SET, which later items inherit
    int scope
    int pending_scope  # @@global / @@session before its '.'
    int name  # word of the variable name in A_NAME
    Py_ssize_t depth  # parenthesis depth
    int previous  # word of the previous token
    int at  # 1 after a lone @, 2 after @@
    int user_variable  # how much of @name := has just been seen
    int call  # function word when the previous token opened its argument list
    bint restart  # SET STATEMENT ... FOR: the statement proper starts after this token


cdef inline void my_statement_start(MyStatement* st) noexcept nogil:
    st.first = -1
    st.state = T_NONE
    st.assignment = A_NONE
    st.first_assignment = True
    st.global_by_default = False
    st.scope = SCOPE_DEFAULT
    st.pending_scope = SCOPE_DEFAULT
    st.name = M_OTHER
    st.depth = 0
    st.previous = M_OTHER
    st.at = 0
    st.user_variable = UV_NONE
    st.call = M_OTHER
    st.restart = False


cdef int my_statement_token(MyStatement* st, int kind, int word, int symbol) noexcept nogil:
    cdef int flags = 0
    cdef int previous = st.previous
    cdef int call = st.call
    cdef int at = st.at
    cdef int user_variable = st.user_variable
    st.call = M_OTHER
    if call == M_LAST_INSERT_ID and kind != TK_RPAREN:
        flags |= F_MY_SETS_LAST_INSERT_ID  # LAST_INSERT_ID(expr)
    if kind == TK_LPAREN:
        if previous == M_GET_LOCK:
            flags |= F_MY_PIN_GET_LOCK
        elif previous == M_LAST_INSERT_ID or previous == M_ROW_COUNT:
            st.call = previous
        st.depth += 1
    elif kind == TK_RPAREN:
        if call == M_LAST_INSERT_ID:
            flags |= F_MY_READS_LAST_INSERT_ID
        elif call == M_ROW_COUNT:
            flags |= F_MY_READS_ROW_COUNT
        if st.depth > 0:
            st.depth -= 1
    if word == M_SQL_CALC_FOUND_ROWS:
        flags |= F_MY_PIN_CALC_FOUND_ROWS

    # user variables: @name := ..., INTO @name
    if symbol == b"@":
        st.at = 2 if at == 1 else 1
        if at == 0 and previous == M_INTO:
            flags |= F_MY_PIN_USER_VARIABLE
    else:
        st.at = 0
    if at == 1 and symbol != b"@":
        st.user_variable = UV_NAME
    elif user_variable == UV_NAME and kind == TK_DOT:
        st.user_variable = UV_DOT
    elif user_variable == UV_DOT and kind != TK_OTHER:
        st.user_variable = UV_NAME
    elif user_variable == UV_NAME and symbol == b":":
        st.user_variable = UV_COLON
    else:
        if user_variable == UV_COLON and symbol == b"=":
            flags |= F_MY_PIN_USER_VARIABLE
        st.user_variable = UV_NONE

    if st.first < 0:
        if kind == TK_IDENT or kind == TK_QIDENT:
            st.first = word
            if word == M_LOCK:
                flags |= F_MY_PIN_LOCK_TABLES
            elif word == M_PREPARE or word == M_EXECUTE or word == M_DEALLOCATE:
                flags |= F_MY_PIN_PREPARE
            elif word == M_USE:
                flags |= F_MY_USE
            elif word == M_KILL:
                flags |= F_MY_KILL
            elif word == M_CREATE:
                st.state = T_CREATE
            elif word == M_DROP:
                st.state = T_DROP
            elif word == M_BACKUP:
                st.state = T_BACKUP
            elif word == M_SET:
                st.assignment = A_START
    elif st.assignment != A_NONE:
        flags |= my_assign(st, kind, word, symbol)
    elif st.state != T_NONE:
        flags |= my_statement_advance(st, word)
    elif st.first == M_FLUSH and ((word == M_LOCK and previous == M_READ) or (word == M_EXPORT and previous == M_FOR)):
        flags |= F_MY_PIN_READ_LOCK
    st.previous = word
    return flags


cdef int my_statement_advance(MyStatement* st, int word) noexcept nogil:
    """Feeds the word after the statement's leading keywords; returns the flags it settles."""
    cdef int state = st.state
    st.state = T_NONE
    if state == T_CREATE:
        if word == M_OR:
            st.state = T_CREATE_OR
        elif word == M_TEMPORARY:
            st.state = T_CREATE_TEMPORARY
    elif state == T_CREATE_OR:
        if word == M_REPLACE:
            st.state = T_CREATE_REPLACE
    elif state == T_CREATE_REPLACE:
        if word == M_TEMPORARY:
            st.state = T_CREATE_TEMPORARY
    elif state == T_CREATE_TEMPORARY:
        if word == M_TABLE_OR_SEQUENCE:
            return F_MY_PIN_TEMP
    elif state == T_DROP:
        if word == M_PREPARE:
            return F_MY_PIN_PREPARE
    elif state == T_BACKUP:
        if word == M_LOCK or word == M_STAGE:
            return F_MY_PIN_LOCK_TABLES
    return 0


cdef int my_assign(MyStatement* st, int kind, int word, int symbol) noexcept nogil:
    """Feeds a token of a SET statement's assignment list; returns the flags it settles."""
    cdef int state = st.assignment
    cdef bint is_name = kind == TK_IDENT or kind == TK_QIDENT
    if state == A_START or state == A_SCOPE:
        if kind == TK_IDENT:
            if word == M_GLOBAL or word == M_SESSION:
                if state == A_START:
                    st.scope = SCOPE_GLOBAL if word == M_GLOBAL else SCOPE_SESSION
                    st.global_by_default = word == M_GLOBAL
                    st.assignment = A_SCOPE
                    return 0
            elif word == M_TRANSACTION and st.first_assignment:
                st.assignment = A_NONE
                if st.scope == SCOPE_DEFAULT:
                    return F_MY_PIN_SET  # SET TRANSACTION: only the next transaction, on whatever backend
                return F_MY_SET_TRACKED if st.scope == SCOPE_SESSION else 0
            elif state == A_START and st.first_assignment:
                if word == M_ROLE:
                    st.assignment = A_NONE
                    return F_MY_PIN_SET
                if word == M_PASSWORD or word == M_DEFAULT:  # SET PASSWORD, SET DEFAULT ROLE: no session state
                    st.assignment = A_NONE
                    return 0
                if word == M_STATEMENT:  # SET STATEMENT ... FOR: statement-scoped
                    st.assignment = A_STATEMENT
                    return 0
            if word == M_NAMES or word == M_CHARSET:
                st.assignment = A_VALUE
                return F_MY_SET_TRACKED
            if word == M_CHARACTER:
                st.assignment = A_CHARACTER
                return 0
        if is_name:
            st.name = word
            st.assignment = A_NAME
            return 0
        if symbol == b"@" and state == A_START:
            st.assignment = A_AT
            return 0
        return my_value(st, symbol)
    if state == A_AT:
        if symbol == b"@":
            st.assignment = A_ATAT
            return 0
        st.assignment = A_VALUE
        return F_MY_PIN_USER_VARIABLE
    if state == A_ATAT:
        if kind == TK_IDENT and (word == M_GLOBAL or word == M_SESSION):
            st.pending_scope = SCOPE_GLOBAL if word == M_GLOBAL else SCOPE_SESSION
            st.assignment = A_ATAT_SCOPE
            return 0
        if is_name:
            st.scope = SCOPE_ATAT
            st.name = word
            st.assignment = A_NAME
            return 0
        return my_value(st, symbol)
    if state == A_ATAT_SCOPE:
        if kind == TK_DOT:
            st.scope = st.pending_scope
            st.assignment = A_ATAT_DOT
            return 0
        st.scope = SCOPE_ATAT  # @@session alone: a variable named like the scope
        st.name = M_OTHER
        return my_settle_name(st, False) | my_value(st, symbol)
    if state == A_ATAT_DOT:
        if is_name:
            st.name = word
            st.assignment = A_NAME
            return 0
        return my_value(st, symbol)
    if state == A_NAME:
        if kind == TK_DOT:
            return my_settle_name(st, True)
        return my_settle_name(st, False) | my_value(st, symbol)
    if state == A_CHARACTER:
        if word == M_SET:
            st.assignment = A_VALUE
            return F_MY_SET_TRACKED
        st.name = M_OTHER
        return my_settle_name(st, False) | my_value(st, symbol)
    if state == A_STATEMENT:
        if word == M_FOR and st.depth == 0:
            st.restart = True
        return 0
    return my_value(st, symbol)  # A_VALUE


cdef inline int my_value(MyStatement* st, int symbol) noexcept nogil:
    """A token of an assigned value: a ',' at depth 0 starts the next assignment."""
    st.assignment = A_VALUE
    if symbol == b"," and st.depth == 0:
        st.assignment = A_START
        st.first_assignment = False
        st.scope = SCOPE_DEFAULT
    return 0


cdef int my_settle_name(MyStatement* st, bint structured) noexcept nogil:
    """The flags of assigning the variable just named (structured: a dotted name such as cache.key_buffer_size)."""
    cdef int scope = st.scope
    st.assignment = A_VALUE
    if scope == SCOPE_DEFAULT:
        scope = SCOPE_GLOBAL if st.global_by_default else SCOPE_SESSION
    if scope == SCOPE_GLOBAL:
        return 0
    if structured:
        return F_MY_PIN_SET
    if st.name == M_TRACKED_VARIABLE:
        return F_MY_SET_TRACKED
    if st.name == M_TRANSACTION_VARIABLE:
        return F_MY_PIN_SET if scope == SCOPE_ATAT else F_MY_SET_TRACKED
    return F_MY_PIN_SET


cdef int my_statement_finish(MyStatement* st) noexcept nogil:
    """Flags settled by the end of the statement."""
    cdef int assignment = st.assignment
    if assignment == A_NAME or assignment == A_CHARACTER or assignment == A_ATAT_SCOPE:
        if assignment != A_NAME:
            st.name = M_OTHER
        if assignment == A_ATAT_SCOPE:
            st.scope = SCOPE_ATAT
        return my_settle_name(st, False)
    if assignment == A_AT:
        return F_MY_PIN_USER_VARIABLE
    return 0


def mysql_has_trigger_word(sql) -> bool:
    """Whether sql contains a word that could give it flags (MYSQL_TRIGGER_WORDS); False proves classify_mysql is 0."""
    cdef bytes data = as_bytes(sql)
    return trigger_in(&MYSQL_TRIGGERS, <const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


def classify_mysql(sql, int options=OPT_MYSQL) -> int:
    """OR of the MY_* flags (see flags.py) of every statement in a MySQL / MariaDB query text.

    `options` are the lexer options: clear LEX_BACKSLASH_STRINGS when sql_mode has NO_BACKSLASH_ESCAPES and
    LEX_DQUOTE_STRINGS when it has ANSI_QUOTES (see mysql_lex_options)."""
    cdef bytes data = as_bytes(sql)
    return classify_mysql_span(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), options)


def classify_mysql_lexed(sql, int options=OPT_MYSQL) -> int:
    """classify_mysql without the trigger-word search: every statement is lexed (the tests check the search)."""
    cdef bytes data = as_bytes(sql)
    return classify_mysql_tokens(<const unsigned char*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), options)


cdef int classify_mysql_span(const unsigned char* s, Py_ssize_t n, int options) noexcept:
    """classify_mysql of the n bytes at s (a query inside a packet, without copying it out)."""
    if not trigger_in(&MYSQL_TRIGGERS, s, n):
        return 0
    return classify_mysql_tokens(s, n, options)


cdef bint mysql_plain_query(const unsigned char* s, Py_ssize_t n) noexcept:
    """Whether the n bytes at s are query text with no flags (default lexer options) that does not mention
    CONNECTION_ID: what myframe's take_command forwards as it is. One search for both in the common case."""
    if not trigger_in(&MYSQL_PLAIN_TRIGGERS, s, n):
        return True
    return not trigger_in(&CONNECTION_ID_TRIGGERS, s, n) and classify_mysql_span(s, n, OPT_MYSQL) == 0


cdef int classify_mysql_tokens(const unsigned char* s, Py_ssize_t n, int options) noexcept:
    cdef Lexer lx
    cdef Token tok
    cdef MyStatement st
    cdef int flags = 0
    cdef int symbol
    lx.s = s
    lx.n = n
    lx.pos = 0
    lx.options = options
    lx.in_executable_comment = False
    my_statement_start(&st)
    while lex_next(&lx, &tok):
        if tok.kind == TK_SEMI:
            flags |= my_statement_finish(&st)
            my_statement_start(&st)
        elif tok.kind == TK_EXEC_COMMENT:
            flags |= F_MY_PIN_EXECUTABLE_COMMENT
        else:
            symbol = lx.s[tok.start] if tok.kind == TK_OTHER and tok.end - tok.start == 1 else 0
            flags |= my_statement_token(&st, tok.kind, my_word(lx.s, &tok), symbol)
            if st.restart:
                my_statement_start(&st)
    return flags | my_statement_finish(&st)

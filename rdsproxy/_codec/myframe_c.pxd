# Declarations of myframe_c's classes, so that the compiled data path (lane_c) reaches their state and fast
# methods without a Python call.

cimport cython

cdef enum:
    # The most a decision reads of a packet's payload: an OK header with two 9-byte lenenc ints and the status.
    HEAD_SIZE = 24


@cython.final
cdef class MyClientFramer:
    cdef long long _max_packet_size
    cdef bytearray _held
    # Held bytes needed before a scan can make progress: lets a large packet arriving in many chunks be
    # accumulated without rescanning it.
    cdef Py_ssize_t _need
    cdef bint _broken

    cdef Py_ssize_t _scan(self, const unsigned char* src, Py_ssize_t total, list packets) except -1
    cdef Py_ssize_t _held_need(self)
    cdef int _take_command(self, data) except -2


@cython.final
cdef class MyResponseScanner:
    cdef bint _deprecate_eof
    cdef bint _cache_metadata
    cdef object _queue  # deque of (grammar state, cursor) for the commands after the current one
    cdef int _state
    cdef bint _cursor
    cdef long long _count  # definitions still to come in G_COLUMNS / G_PREPARE_DEFINITIONS
    cdef long long _prepare_columns  # column definitions following the parameter definitions of a prepare
    cdef long _last_status
    # Counters of the last OK packet read (an EOF packet has none: affected rows unknown, shown as -1)
    cdef bint _affected_known
    cdef unsigned long long _affected_rows
    cdef unsigned long long _insert_id
    cdef bint _last_affected_known
    cdef unsigned long long _last_affected_rows
    cdef unsigned long long _last_insert_id
    cdef unsigned char _header[4]  # the first bytes of a physical header split across chunks
    cdef int _header_len
    cdef Py_ssize_t _remaining  # payload bytes of the current physical packet still to come
    cdef Py_ssize_t _physical_length
    cdef bint _continued  # the next physical packet continues the current logical packet
    cdef unsigned char _head[HEAD_SIZE]  # the first payload bytes of the current logical packet
    cdef Py_ssize_t _head_len
    cdef Py_ssize_t _head_missing
    cdef Py_ssize_t _first_length  # payload length of the first physical packet of the current logical packet
    cdef bint _broken
    cdef list _events  # of the last feed_done() that returned -1
    # feed_done's scan keeps one plain response end in C fields, and builds _pending only for anything more
    cdef list _pending
    cdef bint _done
    cdef long _done_status
    cdef Py_ssize_t _done_end

    cdef int _expect(self, int command, bint cursor) except -1
    cdef list _feed(self, data)
    cdef int _scan_chunk(self, data, list events) except -1
    cdef long long _feed_done(self, data) except? -2
    cdef int _scan(self, const unsigned char* src, Py_ssize_t total, list events) except -1
    cdef int _packet(self, const unsigned char* p, Py_ssize_t length, Py_ssize_t end, list events) except -1
    cdef int _expect_eof(self, unsigned char first, str after) except -1
    cdef long _read_status(self, const unsigned char* p, Py_ssize_t length) except -1
    cdef int _start_result_set(self, const unsigned char* p, Py_ssize_t length) except -1
    cdef int _result_end(self, long status, Py_ssize_t end, list events) except -1
    cdef int _next_prepare_block(self, Py_ssize_t end, list events) except -1
    cdef int _finish(self, long status, int failed, Py_ssize_t end, list events) except -1
    cdef int _emit(self, list events, int kind, long status, Py_ssize_t end, unsigned long long extra) except -1
    cdef bint _is_terminator(self, Py_ssize_t length) noexcept
    cdef void _no_counters(self) noexcept
    cdef void _zero_counters(self) noexcept


cdef class MyRequestState:
    cdef public long long outstanding  # commands sent whose response is not complete yet
    cdef public int status  # server status flags of the last complete response
    cdef public bint infile  # the client is streaming a LOCAL INFILE file
    cdef public bint pinned
    cdef public bint refresh_needed  # a statement in flight may change tracked state: read it back afterwards
    cdef public bint refresh_last_insert_id  # ... and it sets LAST_INSERT_ID(expr): read that back too
    cdef public bint reads_last_insert_id  # the command being forwarded calls LAST_INSERT_ID(), with or without expr
    cdef public long long row_count  # ROW_COUNT() after this client's last statement
    cdef public object failing  # an ERR (code, sqlstate, message) owed to the next command (lost transaction)
    cdef public object wanted  # tracked variables (+ "database") this client expects: a shared dict

    cdef bint _releasable(self) noexcept

# Declarations of pgframe_c's classes, so that the compiled data path (lane_c) reaches their state and fast
# methods without a Python call.

cdef class ClientFramer:
    cdef bint _in_startup
    cdef long long _max_message_size
    cdef bytearray _held
    # Total size of the held incomplete message once its header is known: lets a large message
    # arriving in many chunks be accumulated without rescanning (0 = unknown).
    cdef Py_ssize_t _need
    cdef bint _broken

    cdef Py_ssize_t _scan(self, const unsigned char* src, Py_ssize_t total, list messages) except -1
    cdef Py_ssize_t _held_message_size(self)


cdef class ServerScanner:
    cdef bytes _interesting
    cdef unsigned char _wanted[256]
    cdef unsigned char _header[5]  # the first bytes of a header split across chunks
    cdef int _header_len
    cdef Py_ssize_t _remaining  # body bytes of the current message still to come
    cdef bint _collecting
    cdef int _body_type
    cdef bytearray _body
    cdef bint _broken
    cdef list _events  # the last feed_ready() chunk's events, when they were more than ReadyForQuery

    cdef list _feed(self, data)
    cdef long long _feed_ready(self, data) except? -2
    cdef long long _feed_ready_events(self, data) except? -2


cdef class PgRequestState:
    cdef public long long outstanding  # requests sent whose ReadyForQuery has not come back yet
    cdef public bint batch_open  # extended-protocol messages sent since the last Sync
    cdef public bint copy_in  # backend is in COPY FROM STDIN: the client's Syncs are ignored by it
    cdef public long long syncs_since_execute
    cdef public int status  # last ReadyForQuery transaction status
    cdef public bint pinned
    cdef public object failing  # (sqlstate, message) owed for the next request
    cdef public bint flush_pending  # the open batch holds a Flush: its sender may be waiting for replies now
    cdef public bint discarding  # this batch's error was sent: drop messages up to Sync, answer it with Z
    cdef public long long pin_mask  # classify flags that pin (the full path records which and why)
    cdef public Py_ssize_t inspect_limit  # longer statements pin

    cdef long long _take_plain(self, ClientFramer framer, data) except? -2
    cdef bytes _last_parse  # the last Parse's statement text that take_plain classified, and its flags
    cdef int _last_parse_flags

    cdef bint _plain_sql(self, bytes chunk, Py_ssize_t start, Py_ssize_t end, bint remember) except -1

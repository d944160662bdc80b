# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Socket transports over one epoll set serviced from the event loop (compiled twin of relay_py)."""

import socket

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.errno cimport ECONNABORTED, EAGAIN, EINTR, errno  # EWOULDBLOCK is EAGAIN on Linux
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memset

from .lane_c cimport ENTRY_NONE, Port, deliver, entry_of

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        unsigned int u32
        unsigned long long u64
    struct epoll_event:
        unsigned int events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event *event)
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_recv "recv"(int fd, void *buf, size_t n, int flags)
    ssize_t c_send "send"(int fd, const void *buf, size_t n, int flags)
    int c_shutdown "shutdown"(int fd, int how)
    int c_accept4 "accept4"(int fd, void *addr, void *addrlen, int flags)
    int c_setsockopt "setsockopt"(int fd, int level, int name, const void *value, unsigned int length)
    enum:
        MSG_NOSIGNAL
        SHUT_WR
        SOCK_NONBLOCK
        SOCK_CLOEXEC

cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP

cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY

cdef extern from "<unistd.h>" nogil:
    int c_close "close"(int fd)

READ_SIZE = 256 * 1024
DEFAULT_HIGH_WATER = 64 * 1024
DEF C_READ_SIZE = 262144
DEF C_MAX_EVENTS = 256

cdef unsigned int _OUT_OR_FAILED = EPOLLOUT | EPOLLERR | EPOLLHUP
cdef unsigned int _IN_OR_FAILED = EPOLLIN | EPOLLERR | EPOLLHUP

# One receive buffer for the whole process: the loop thread holds the GIL while it reads, so reads never overlap.
cdef char *_read_buffer = <char *>malloc(C_READ_SIZE)


cdef object _os_error(int code):
    import os
    return OSError(code, os.strerror(code))


cdef object _address_of(int fd, bint peer):
    """The socket module's peer or local address of a socket we own, or None once it is closed or unconnected."""
    if fd < 0:
        return None
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        return sock.getpeername() if peer else sock.getsockname()
    except OSError:
        return None
    finally:
        sock.detach()


cdef class Relay:
    """An epoll set of nonblocking sockets, each with an asyncio-compatible transport, driven by one loop reader.

    One reader callback per wake-up serves every ready socket, instead of one loop callback per socket event.
    """

    cdef readonly object loop
    cdef int _epfd
    cdef dict _transports  # fd -> transport: the references that keep them alive
    cdef void **_by_fd  # the same, borrowed, as an array indexed by fd: _ready looks each event up without hashing
    cdef Py_ssize_t _by_fd_size
    cdef epoll_event *_events

    def __cinit__(self):
        self._epfd = -1
        self._events = NULL
        self._by_fd = NULL
        self._by_fd_size = 0

    def __init__(self, loop):
        self.loop = loop
        self._transports = {}
        self._epfd = epoll_create1(EPOLL_CLOEXEC)
        if self._epfd < 0:
            raise _os_error(errno)
        self._events = <epoll_event *>malloc(sizeof(epoll_event) * C_MAX_EVENTS)
        loop.add_reader(self._epfd, self._ready)

    def __dealloc__(self):
        if self._events != NULL:
            free(self._events)
        if self._by_fd != NULL:
            free(self._by_fd)
        if self._epfd >= 0:
            c_close(self._epfd)

    @property
    def connections(self):
        return len(self._transports)

    @property
    def closed(self):
        return self._epfd < 0

    def adopt(self, sock, protocol):
        """Take over a connected stream socket (its fd; `sock` is detached) and serve it with `protocol`."""
        if self._epfd < 0:
            raise RuntimeError("the relay is closed")
        sock.setblocking(False)
        if sock.family == socket.AF_INET or sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self._serve(sock.detach(), protocol)

    def accept(self, listening, protocol_factory, int limit, bint tcp):
        """Accept up to `limit` connections waiting on the nonblocking listening socket `listening`, each served
        with a new protocol from `protocol_factory()`; TCP ones get TCP_NODELAY. Returns how many were accepted,
        fewer than `limit` once none is waiting.

        A failure of the factory or of connection_made closes that connection and propagates; an accept error
        other than "none waiting" or "aborted by the peer" (out of descriptors, say) raises OSError.
        """
        cdef int listen_fd = listening.fileno()
        cdef int fd, code
        cdef int accepted = 0
        cdef int one = 1
        if self._epfd < 0:
            raise RuntimeError("the relay is closed")
        while accepted < limit:
            fd = c_accept4(listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)
            if fd < 0:
                code = errno
                if code == EAGAIN:
                    break
                if code == EINTR or code == ECONNABORTED:
                    continue
                raise _os_error(code)
            accepted += 1
            if tcp:
                c_setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one))
            try:
                protocol = protocol_factory()
            except BaseException:
                c_close(fd)
                raise
            self._serve(fd, protocol)
        return accepted

    cdef RelayTransport _serve(self, int fd, object protocol):
        cdef RelayTransport transport = RelayTransport.__new__(RelayTransport)
        transport._setup(self, fd, protocol)
        try:
            self._watch(fd, 0, EPOLLIN)
        except OSError:
            c_close(fd)
            raise
        try:
            self._remember(fd, transport)
        except MemoryError:
            c_close(fd)
            raise
        transport._events = EPOLLIN
        try:
            protocol.connection_made(transport)
        except BaseException:
            transport.abort()  # a protocol that failed to start must not keep its socket in the set
            raise
        return transport

    def close(self):
        """Abort every transport and stop serving; idempotent."""
        if self._epfd < 0:
            return
        for transport in list(self._transports.values()):
            transport.abort()
        self.loop.remove_reader(self._epfd)
        c_close(self._epfd)
        self._epfd = -1

    # ------------------------------------------------------------------ internals for the transports
    cdef int _watch(self, int fd, unsigned int old, unsigned int new) except -1:
        # A socket with nothing to watch leaves the set: epoll reports hang-ups even for an empty event mask,
        # and a paused socket whose peer hung up would wake the loop on every iteration.
        cdef epoll_event event
        cdef int op
        if self._epfd < 0:
            return 0
        event.events = new
        event.data.u64 = 0
        event.data.fd = fd
        if not new:
            op = EPOLL_CTL_DEL
        elif not old:
            op = EPOLL_CTL_ADD
        else:
            op = EPOLL_CTL_MOD
        if epoll_ctl(self._epfd, op, fd, &event) < 0:
            raise _os_error(errno)
        return 0

    cdef int _remember(self, int fd, RelayTransport transport) except -1:
        cdef Py_ssize_t size
        cdef void **grown
        if fd >= self._by_fd_size:
            size = max(64, self._by_fd_size * 2, fd + 1)
            grown = <void **>realloc(self._by_fd, size * sizeof(void *))
            if grown == NULL:
                raise MemoryError()
            memset(grown + self._by_fd_size, 0, (size - self._by_fd_size) * sizeof(void *))
            self._by_fd = grown
            self._by_fd_size = size
        self._transports[fd] = transport
        self._by_fd[fd] = <void *>transport
        return 0

    cdef void _forget(self, int fd):
        # No EPOLL_CTL_DEL: the caller closes fd next, its only descriptor, which takes it out of the epoll set
        # (one syscall less per connection).
        self._by_fd[fd] = NULL
        del self._transports[fd]

    def _ready(self):
        cdef int count, i, fd
        cdef unsigned int events
        cdef RelayTransport transport
        if self._epfd < 0:
            return
        count = epoll_wait(self._epfd, self._events, C_MAX_EVENTS, 0)
        for i in range(count):
            events = self._events[i].events
            fd = self._events[i].data.fd
            # NULL: closed by an earlier event of this batch (the local reference below keeps the found one alive
            # while it is served, and _forget clears the slot before the dict lets go of it)
            if fd >= self._by_fd_size or self._by_fd[fd] == NULL:
                continue
            transport = <RelayTransport>self._by_fd[fd]
            if events & _OUT_OR_FAILED and transport._buffered:
                transport._flush()
            if events & _IN_OR_FAILED and transport._reading:
                transport._read()


cdef class RelayTransport(Port):
    """asyncio.Transport for one socket of a Relay.

    A Port of the compiled lane: the lane writes with a C call, and received bytes go to a lane entry point with
    a C call too (see lane_c.entry_of); any other protocol is served through its Python methods.
    """

    cdef Relay _relay
    cdef int _fd
    cdef object _protocol
    cdef object _data_received  # the protocol's bound method, looked up once rather than on every read
    cdef int _entry  # the lane entry point that data_received is (lane_c.ENTRY_*), or ENTRY_NONE
    cdef object _peername
    cdef object _sockname
    cdef list _buffer
    cdef Py_ssize_t _buffered
    cdef bint _reading
    cdef bint _closing
    cdef bint _eof_pending
    cdef bint _eof_sent
    cdef bint _writing_paused
    cdef bint _lost
    cdef Py_ssize_t _high
    cdef Py_ssize_t _low
    cdef unsigned int _events

    def __init__(self):
        raise TypeError("RelayTransport objects are made by Relay.adopt()")

    cdef void _setup(self, Relay relay, int fd, object protocol):
        self._relay = relay
        self._fd = fd
        self._protocol = protocol
        self._data_received = protocol.data_received
        self._entry = entry_of(protocol)
        self._peername = None  # read from the socket when first asked: most connections never are
        self._sockname = None
        self._buffer = None  # allocated when a write has to wait: most connections never need one
        self._buffered = 0
        self._reading = True
        self._closing = False
        self._eof_pending = False
        self._eof_sent = False
        self._writing_paused = False
        self._lost = False
        self._high = DEFAULT_HIGH_WATER
        self._low = DEFAULT_HIGH_WATER // 4
        self._events = 0

    # ------------------------------------------------------------------ asyncio.Transport
    def write(self, data):
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(f"data argument must be a bytes-like object, not {type(data).__name__!r}")
            data = bytes(data)
        self._send(<bytes>data)

    cdef int _send(self, bytes data) except -1:
        cdef Py_ssize_t size, sent
        if self._closing or self._eof_pending or self._fd < 0:
            return 0
        size = PyBytes_GET_SIZE(data)
        if not size:
            return 0
        if not self._buffered:
            sent = c_send(self._fd, PyBytes_AS_STRING(data), size, MSG_NOSIGNAL)
            if sent == size:
                return 0
            if sent < 0:
                if errno == EAGAIN or errno == EINTR:
                    sent = 0
                else:
                    self._fatal(_os_error(errno))
                    return 0
            if sent:
                data = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + sent, size - sent)
            self._buffer = [data]
            self._buffered = size - sent
            self._update_events()
        else:
            self._buffer.append(data)
            self._buffered += size
        if self._buffered > self._high and not self._writing_paused:
            self._writing_paused = True
            self._call_protocol("pause_writing")
        return 0

    def writelines(self, list_of_data):
        self.write(b"".join(list_of_data))

    def close(self):
        if self._closing or self._fd < 0:
            return
        self._closing = True
        self._reading = False
        if self._buffered:
            self._update_events()
        else:
            self._finish(None)

    def abort(self):
        if self._fd < 0:
            return
        self._closing = True
        self._buffer = None
        self._buffered = 0
        self._finish(None)

    def is_closing(self):
        return self._closing or self._fd < 0

    def pause_reading(self):
        if self._reading and not self._closing and self._fd >= 0:
            self._reading = False
            self._update_events()

    def resume_reading(self):
        if not self._reading and not self._closing and self._fd >= 0:
            self._reading = True
            self._update_events()

    def is_reading(self):
        return self._reading and not self._closing and self._fd >= 0

    def get_extra_info(self, name, default=None):
        if name == "peername":
            if self._peername is None:
                self._peername = _address_of(self._fd, True)
            return self._peername if self._peername is not None else default
        if name == "sockname":
            if self._sockname is None:
                self._sockname = _address_of(self._fd, False)
            return self._sockname if self._sockname is not None else default
        return default

    def get_write_buffer_size(self):
        return self._buffered

    def set_write_buffer_limits(self, high=None, low=None):
        if high is None:
            high = DEFAULT_HIGH_WATER if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high = high
        self._low = low

    def get_write_buffer_limits(self):
        return (self._low, self._high)

    def get_protocol(self):
        return self._protocol

    def set_protocol(self, protocol):
        self._protocol = protocol
        self._data_received = protocol.data_received
        self._entry = entry_of(protocol)

    def can_write_eof(self):
        return True

    def write_eof(self):
        if self._closing or self._eof_pending or self._fd < 0:
            return
        self._eof_pending = True
        if not self._buffered:
            self._shutdown_write()

    # ------------------------------------------------------------------ events from the relay
    cdef int _read(self) except -1:
        cdef ssize_t got = c_recv(self._fd, _read_buffer, C_READ_SIZE, 0)
        if got > 0:
            data = PyBytes_FromStringAndSize(_read_buffer, got)
            try:
                if self._entry != ENTRY_NONE:
                    deliver(self._protocol, self._entry, data)
                else:
                    self._data_received(data)
            except Exception as exc:  # a protocol bug ends this connection only
                self._report(exc, "data_received")
            return 0
        if got < 0:
            if errno == EAGAIN or errno == EINTR:
                return 0
            self._fatal(_os_error(errno))
            return 0
        # the peer shut down its side: asyncio's contract is eof_received, and a falsy answer closes
        self._reading = False
        self._update_events()
        try:
            keep_open = self._protocol.eof_received()
        except Exception as exc:  # a protocol bug ends this connection only
            self._report(exc, "eof_received")
            return 0
        if not keep_open:
            self.close()
        return 0

    cdef int _flush(self) except -1:
        cdef Py_ssize_t size, sent
        if self._fd < 0:
            return 0
        if len(self._buffer) == 1:
            data = self._buffer[0]
        else:
            data = b"".join(self._buffer)
        self._buffer = None
        size = PyBytes_GET_SIZE(data)
        sent = c_send(self._fd, PyBytes_AS_STRING(data), size, MSG_NOSIGNAL) if size else 0
        if sent < 0:
            if errno == EAGAIN or errno == EINTR:
                sent = 0
            else:
                self._buffered = 0
                self._fatal(_os_error(errno))
                return 0
        if sent < size:
            self._buffer = [PyBytes_FromStringAndSize(PyBytes_AS_STRING(data) + sent, size - sent)]
        self._buffered = size - sent
        if self._writing_paused and self._buffered <= self._low:
            self._writing_paused = False
            self._call_protocol("resume_writing")
            if self._fd < 0:
                return 0
        if not self._buffered:
            if self._closing:
                self._finish(None)
                return 0
            if self._eof_pending:
                self._shutdown_write()
        self._update_events()
        return 0

    # ------------------------------------------------------------------ internals
    cdef int _update_events(self) except -1:
        cdef unsigned int events
        if self._fd < 0:
            return 0
        events = (EPOLLIN if self._reading else 0) | (EPOLLOUT if self._buffered else 0)
        if events != self._events:
            self._relay._watch(self._fd, self._events, events)
            self._events = events
        return 0

    cdef void _shutdown_write(self):
        if self._eof_sent:
            return
        self._eof_sent = True
        c_shutdown(self._fd, SHUT_WR)

    cdef int _call_protocol(self, str method) except -1:
        try:
            getattr(self._protocol, method)()
        except Exception as exc:  # a protocol bug ends this connection only
            self._report(exc, method)
        return 0

    cdef int _report(self, exc, str method) except -1:
        self._relay.loop.call_exception_handler(
            {
                "message": f"Fatal error: protocol.{method}() call failed.",
                "exception": exc,
                "transport": self,
                "protocol": self._protocol,
            }
        )
        self.abort()
        return 0

    cdef int _fatal(self, exc) except -1:
        self._closing = True
        self._buffer = None
        self._buffered = 0
        self._finish(exc)
        return 0

    cdef int _finish(self, exc) except -1:
        cdef int fd = self._fd
        if fd < 0:
            return 0
        self._fd = -1
        self._reading = False
        self._relay._forget(fd)
        self._events = 0
        c_close(fd)
        if not self._lost:
            self._lost = True
            self._relay.loop.call_soon(self._protocol.connection_lost, exc)
        return 0

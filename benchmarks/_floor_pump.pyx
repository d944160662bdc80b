# cython: language_level=3, boundscheck=False, wraparound=False
"""The floor for any proxy on this machine: a byte pump in C over epoll, one server connection per client."""

import os

from libc.errno cimport EAGAIN, EINTR, errno

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
        EPOLL_CTL_ADD
        EPOLL_CTL_DEL

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int fd, void *buf, size_t n, int flags)
    ssize_t send(int fd, const void *buf, size_t n, int flags)
    enum:
        MSG_NOSIGNAL

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd *fds, unsigned long nfds, int timeout)
    enum:
        POLLOUT

DEF MAX_FD = 65536
DEF BUFFER_SIZE = 262144
DEF MAX_EVENTS = 256

cdef int peer[MAX_FD]
cdef char buffer[BUFFER_SIZE]


cdef int send_all(int fd, char *data, ssize_t size) nogil:
    # pgbench and sysbench messages are small: waiting for room here is simpler than a write buffer, and rare
    cdef ssize_t sent
    cdef pollfd room
    while size > 0:
        sent = send(fd, data, size, MSG_NOSIGNAL)
        if sent < 0:
            if errno == EAGAIN or errno == EINTR:
                room.fd = fd
                room.events = POLLOUT
                poll(&room, 1, 1000)
                continue
            return -1
        data += sent
        size -= sent
    return 0


cdef class Pump:
    """Socket pairs forwarded both ways in C; the listening socket's readiness is reported to the caller."""

    cdef int epfd
    cdef int listen_fd

    def __init__(self, int listen_fd):
        cdef epoll_event event
        self.epfd = epoll_create1(0)
        self.listen_fd = listen_fd
        event.events = EPOLLIN
        event.data.fd = listen_fd
        epoll_ctl(self.epfd, EPOLL_CTL_ADD, listen_fd, &event)

    def fileno(self):
        return self.epfd

    def add_pair(self, int client_fd, int server_fd):
        cdef epoll_event event
        peer[client_fd] = server_fd
        peer[server_fd] = client_fd
        event.events = EPOLLIN
        for fd in (client_fd, server_fd):
            event.data.fd = fd
            epoll_ctl(self.epfd, EPOLL_CTL_ADD, fd, &event)

    cdef void _close_pair(self, int fd):
        cdef int other = peer[fd]
        epoll_ctl(self.epfd, EPOLL_CTL_DEL, fd, NULL)
        epoll_ctl(self.epfd, EPOLL_CTL_DEL, other, NULL)
        peer[fd] = -1
        peer[other] = -1
        os.close(fd)
        os.close(other)

    def serve(self, int timeout):
        """Forward whatever is ready (waiting up to `timeout` ms); True when a client waits to be accepted."""
        cdef epoll_event events[MAX_EVENTS]
        cdef int count, i, fd
        cdef ssize_t got
        cdef bint accept = False
        with nogil:
            count = epoll_wait(self.epfd, events, MAX_EVENTS, timeout)
        for i in range(count):
            fd = events[i].data.fd
            if fd == self.listen_fd:
                accept = True
            elif peer[fd] >= 0:
                got = recv(fd, buffer, BUFFER_SIZE, 0)
                if got < 0 and (errno == EAGAIN or errno == EINTR):
                    continue
                if got <= 0 or send_all(peer[fd], buffer, got) < 0:
                    self._close_pair(fd)
        return accept

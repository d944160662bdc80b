# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Latency histogram compiled with Cython: the fast twin of latency_py with the same API and behaviour."""

from cpython.long cimport PyLong_AsLongLongAndOverflow
from cpython.number cimport PyNumber_Index
from libc.limits cimport LLONG_MAX, LLONG_MIN
from libc.string cimport memset

# The bounds, labels and cumulative pairing live once, in the pure twin, so the two cannot drift apart.
from .latency_py import BUCKET_LABELS, LATENCY_BUCKET_BOUNDS_US, cumulative_pairs

__all__ = ["BUCKET_LABELS", "LATENCY_BUCKET_BOUNDS_US", "Latency", "cumulative_pairs"]

cdef long long _BOUNDS[MAX_BOUNDS]
cdef Py_ssize_t _NBOUNDS = 0


cdef void _load_bounds(tuple bounds) except *:
    global _NBOUNDS
    cdef Py_ssize_t i
    if not 0 < len(bounds) <= MAX_BOUNDS:
        raise ValueError(f"latency_c holds 1 to {MAX_BOUNDS} bucket bounds, got {len(bounds)}")
    for i in range(len(bounds)):
        _BOUNDS[i] = bounds[i]  # OverflowError for a bound past int64: loud, never silently clamped
        # The C search is bisect_left's: it is only the same function on strictly ascending bounds.
        if i and _BOUNDS[i] <= _BOUNDS[i - 1]:
            raise ValueError("LATENCY_BUCKET_BOUNDS_US must be strictly ascending")
    _NBOUNDS = len(bounds)


_load_bounds(LATENCY_BUCKET_BOUNDS_US)


cdef class Latency:
    """Microsecond latencies in fixed buckets: `buckets[i]` counts values in (bound[i-1], bound[i]]."""

    def __cinit__(self):
        self.count = 0
        self._sum = 0
        self._sum_spill = 0
        memset(self._counts, 0, sizeof(self._counts))

    def observe(self, us):
        cdef int overflow = 0
        # Converted before anything is counted, so a non-integer raises TypeError and leaves no trace.
        cdef long long value = PyLong_AsLongLongAndOverflow(us, &overflow)
        if overflow:
            # Beyond int64: above every bound (or, negative, below the first, where bisect_left puts it too).
            self._counts[_NBOUNDS if overflow > 0 else 0] += 1
            self.count += 1
            self._sum_spill = self._sum_spill + PyNumber_Index(us)
            return
        self._observe(value)

    cdef void _observe(self, long long value) noexcept:
        cdef Py_ssize_t base = 0, n = _NBOUNDS, half
        # bisect_left (the first bound >= value) without data-dependent branches: the loop runs a fixed number of
        # times for the fixed bounds and each step is a conditional move, so scattered latencies cost no
        # mispredicted jumps.
        while n > 1:
            half = n >> 1
            base = base + half if _BOUNDS[base + half] < value else base
            n -= half
        base += _BOUNDS[base] < value
        self._counts[base] += 1
        self.count += 1
        if (value > 0 and self._sum > LLONG_MAX - value) or (value < 0 and self._sum < LLONG_MIN - value):
            self._sum_spill = self._sum_spill + self._sum
            self._sum = value
        else:
            self._sum += value

    def observe_zero(self):
        """observe(0) without the search: a borrow served from the idle list (the common case) waited 0 us."""
        self._observe_zero()

    cdef void _observe_zero(self) noexcept:
        self._counts[0] += 1
        self.count += 1

    @property
    def sum_us(self):
        if self._sum_spill:
            return self._sum_spill + self._sum
        return self._sum

    @property
    def buckets(self):
        """A fresh list of the bucket counts (mutating it does not touch the histogram)."""
        cdef Py_ssize_t i
        return [self._counts[i] for i in range(_NBOUNDS + 1)]

    def average(self):
        # Python int / int (exactly rounded), like the pure twin, rather than a C double division.
        return self.sum_us / self.count if self.count else 0.0

    def cumulative_buckets(self):
        """(le label, cumulative count) pairs ending with +Inf, as Prometheus histograms want them."""
        return cumulative_pairs(self.buckets)

    def __reduce__(self):
        # copy and pickle work on the pure twin (plain __slots__); the C array needs saying how.
        return (_rebuild, (self.count, self.sum_us, self.buckets))


def _rebuild(count, sum_us, buckets):
    """A Latency holding the given state: what copy and pickle call to recreate one."""
    cdef Latency latency = Latency()
    cdef Py_ssize_t i
    if len(buckets) != _NBOUNDS + 1:
        raise ValueError(f"expected {_NBOUNDS + 1} bucket counts, got {len(buckets)}")
    latency.count = count
    latency._sum_spill = PyNumber_Index(sum_us)
    for i in range(_NBOUNDS + 1):
        latency._counts[i] = buckets[i]
    return latency

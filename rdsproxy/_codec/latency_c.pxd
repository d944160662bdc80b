# Declarations of latency_c's histogram, so that the compiled data path (lane_c) records without a Python call.

cimport cython

cdef enum:
    # Capacity of the C arrays; the import fails loudly if LATENCY_BUCKET_BOUNDS_US ever outgrows it.
    MAX_BOUNDS = 63


@cython.final
cdef class Latency:
    cdef readonly long long count
    # sum_us is _sum_spill + _sum: the C accumulator takes every value that fits in int64 and the Python int
    # takes what would overflow it, so the sum stays exact (as in the pure twin) at no cost on the hot path.
    cdef long long _sum
    cdef object _sum_spill
    # One more slot than bounds: the overflow bucket (+Inf).
    cdef long long _counts[MAX_BOUNDS + 1]

    cdef void _observe(self, long long value) noexcept
    cdef void _observe_zero(self) noexcept

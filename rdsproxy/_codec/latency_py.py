"""Latency histogram in pure Python: the twin of latency_c with the same API and behaviour."""

from __future__ import annotations

from bisect import bisect_left
from operator import index

from prometheus_client.utils import floatToGoString

__all__ = ["BUCKET_LABELS", "LATENCY_BUCKET_BOUNDS_US", "Latency", "cumulative_pairs"]

# Roughly 1-2.5-5 steps: fine enough to tell a loopback round trip from a cross-zone one, coarse enough that
# every latency costs one short search. The single definition: latency_c builds its C array from this tuple
# at import, and metrics re-exports it, so the twins and the exposition cannot drift apart.
LATENCY_BUCKET_BOUNDS_US: tuple[int, ...] = (
    50,
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
)

# Prometheus `le` labels in Go float form ("50.0", "1e+06"), as prometheus_client writes its own histograms.
BUCKET_LABELS: tuple[str, ...] = (*(floatToGoString(bound) for bound in LATENCY_BUCKET_BOUNDS_US), "+Inf")


def cumulative_pairs(buckets: list[int]) -> list[tuple[str, int]]:
    """(le label, cumulative count) pairs ending with +Inf; shared by both twins' cumulative_buckets()."""
    running = 0
    pairs = []
    for label, bucket_count in zip(BUCKET_LABELS, buckets):
        running += bucket_count
        pairs.append((label, running))
    return pairs


class Latency:
    """Microsecond latencies in fixed buckets: `buckets[i]` counts values in (bound[i-1], bound[i]]."""

    __slots__ = ("count", "sum_us", "buckets")

    def __init__(self) -> None:
        self.count = 0
        self.sum_us = 0
        # One more slot than bounds: the overflow bucket (+Inf).
        self.buckets: list[int] = [0] * (len(LATENCY_BUCKET_BOUNDS_US) + 1)

    def observe(self, us: int) -> None:
        us = index(us)  # like the compiled twin: a non-integer raises TypeError before anything is counted
        self.count += 1
        self.sum_us += us
        self.buckets[bisect_left(LATENCY_BUCKET_BOUNDS_US, us)] += 1

    def observe_zero(self) -> None:
        """observe(0) without the search: a borrow served from the idle list (the common case) waited 0 us."""
        self.count += 1
        self.buckets[0] += 1

    def average(self) -> float:
        return self.sum_us / self.count if self.count else 0.0

    def cumulative_buckets(self) -> list[tuple[str, int]]:
        """(le label, cumulative count) pairs ending with +Inf, as Prometheus histograms want them."""
        return cumulative_pairs(self.buckets)

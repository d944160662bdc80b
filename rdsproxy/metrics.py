"""Proxy metrics: plain integers bumped on hot paths, read into snapshots and Prometheus at scrape time."""

# Prometheus exposition (DESIGN section 5), every family labelled `proxy`:
#
#   client side, labels proxy + endpoint
#     gauges      rdsproxy_client_connections, rdsproxy_client_connections_tls,
#                 rdsproxy_client_connections_no_tls
#     counters    rdsproxy_client_connections_received_total,
#                 rdsproxy_client_connections_setup_succeeded_total,
#                 rdsproxy_client_connections_setup_failed_auth_total,
#                 rdsproxy_client_connections_closed_total, rdsproxy_query_requests_total,
#                 rdsproxy_query_requests_tls_total, rdsproxy_query_requests_no_tls_total
#     histogram   rdsproxy_query_response_latency_microseconds
#
#   database side, labels proxy + target + role
#     gauges      rdsproxy_database_connections, rdsproxy_database_connections_currently_borrowed,
#                 rdsproxy_database_connections_currently_in_transaction,
#                 rdsproxy_database_connections_currently_session_pinned,
#                 rdsproxy_database_connections_with_tls, rdsproxy_max_database_connections_allowed
#     counters    rdsproxy_database_connection_requests_total,
#                 rdsproxy_database_connections_setup_succeeded_total,
#                 rdsproxy_database_connections_setup_failed_total,
#                 rdsproxy_database_connection_borrow_timeouts_total, rdsproxy_session_pinning_events_total,
#                 rdsproxy_failover_events_total
#     counter     rdsproxy_session_pinning_events_by_reason_total (extra label `reason`); kept as its own
#                 family so that summing rdsproxy_session_pinning_events_total never double-counts
#     histograms  rdsproxy_database_connections_borrow_latency_microseconds,
#                 rdsproxy_query_database_response_latency_microseconds
#
# Histogram buckets are the fixed bounds in LATENCY_BUCKET_BOUNDS_US (microseconds; `le` labels in Go float
# form, e.g. "50.0", "1e+06").

from __future__ import annotations

import re
from collections.abc import Iterator

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Latency is a codec: compiled (latency_c) unless RDSPROXY_NO_EXTENSIONS=1 picks the pure twin, because observe()
# runs several times per proxied transaction. Its bucket bounds are defined once, in latency_py.
from ._codec import EndpointCounters, Latency, TargetCounters
from ._codec.latency_py import LATENCY_BUCKET_BOUNDS_US

__all__ = [
    "ENDPOINT_COUNTERS",
    "ENDPOINT_GAUGES",
    "ENDPOINT_LATENCIES",
    "LATENCY_BUCKET_BOUNDS_US",
    "METRIC_NAMES",
    "PROMETHEUS_PREFIX",
    "TARGET_COUNTERS",
    "TARGET_GAUGES",
    "TARGET_LATENCIES",
    "EndpointStats",
    "Latency",
    "Metrics",
    "MetricsCollector",
    "TargetStats",
    "prometheus_name",
]

PROMETHEUS_PREFIX = "rdsproxy_"

ENDPOINT_GAUGES: tuple[str, ...] = ("ClientConnections", "ClientConnectionsTLS", "ClientConnectionsNoTLS")
ENDPOINT_COUNTERS: tuple[str, ...] = (
    "ClientConnectionsReceived",
    "ClientConnectionsSetupSucceeded",
    "ClientConnectionsSetupFailedAuth",
    "ClientConnectionsClosed",
    "QueryRequests",
    "QueryRequestsTLS",
    "QueryRequestsNoTLS",
)
ENDPOINT_LATENCIES: tuple[str, ...] = ("QueryResponseLatency",)

TARGET_GAUGES: tuple[str, ...] = (
    "DatabaseConnections",
    "DatabaseConnectionsCurrentlyBorrowed",
    "DatabaseConnectionsCurrentlyInTransaction",
    "DatabaseConnectionsCurrentlySessionPinned",
    "DatabaseConnectionsWithTLS",
    "MaxDatabaseConnectionsAllowed",
)
TARGET_COUNTERS: tuple[str, ...] = (
    "DatabaseConnectionRequests",
    "DatabaseConnectionsSetupSucceeded",
    "DatabaseConnectionsSetupFailed",
    "DatabaseConnectionBorrowTimeouts",
    "SessionPinningEvents",
    "FailoverEvents",
)
TARGET_LATENCIES: tuple[str, ...] = ("DatabaseConnectionsBorrowLatency", "QueryDatabaseResponseLatency")

METRIC_NAMES: tuple[str, ...] = (
    ENDPOINT_GAUGES + TARGET_GAUGES + ENDPOINT_COUNTERS + TARGET_COUNTERS + ENDPOINT_LATENCIES + TARGET_LATENCIES
)

_DESCRIPTIONS: dict[str, str] = {
    "ClientConnections": "Client connections currently open.",
    "ClientConnectionsTLS": "Client connections currently open over TLS.",
    "ClientConnectionsNoTLS": "Client connections currently open without TLS.",
    "ClientConnectionsReceived": "Client connection attempts received.",
    "ClientConnectionsSetupSucceeded": "Client connections that completed startup and authentication.",
    "ClientConnectionsSetupFailedAuth": "Client connections that failed authentication.",
    "ClientConnectionsClosed": "Client connections closed.",
    "QueryRequests": "Queries received from clients.",
    "QueryRequestsTLS": "Queries received from clients connected over TLS.",
    "QueryRequestsNoTLS": "Queries received from clients connected without TLS.",
    "QueryResponseLatency": "Time from a client's query to the proxy's first response byte, in microseconds.",
    "DatabaseConnections": "Backend database connections currently open.",
    "DatabaseConnectionsCurrentlyBorrowed": "Backend connections currently lent to a client.",
    "DatabaseConnectionsCurrentlyInTransaction": "Backend connections currently inside a transaction.",
    "DatabaseConnectionsCurrentlySessionPinned": "Backend connections pinned to one client session.",
    "DatabaseConnectionsWithTLS": "Backend connections currently open over TLS.",
    "MaxDatabaseConnectionsAllowed": "Backend connections the proxy may open to this target.",
    "DatabaseConnectionRequests": "Requests for a backend connection.",
    "DatabaseConnectionsSetupSucceeded": "Backend connections opened and initialised successfully.",
    "DatabaseConnectionsSetupFailed": "Backend connection attempts that failed.",
    "DatabaseConnectionBorrowTimeouts": "Borrows that gave up after connection_borrow_timeout.",
    "SessionPinningEvents": "Client sessions pinned to a backend connection.",
    "FailoverEvents": "Times this target took the writer role over from another target that lost it.",
    "DatabaseConnectionsBorrowLatency": "Time to borrow a backend connection, in microseconds.",
    "QueryDatabaseResponseLatency": "Time from forwarding a query to the backend's first response byte, "
    "in microseconds.",
}

_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _snake_case(camel_name: str) -> str:
    return _CAMEL_BOUNDARY.sub("_", camel_name).lower()


def prometheus_name(metric_name: str) -> str:
    """Prometheus family name of a DESIGN section 5 name (counters: without the `_total` sample suffix)."""
    name = PROMETHEUS_PREFIX + _snake_case(metric_name)
    if metric_name in ENDPOINT_LATENCIES or metric_name in TARGET_LATENCIES:
        name += "_microseconds"
    return name


class EndpointStats(EndpointCounters):
    """Client-side numbers of one endpoint; the proxy bumps the attributes directly.

    The ones every transaction bumps are EndpointCounters' (typed fields in the compiled twin).
    """

    __slots__ = tuple(
        name
        for name in ("name",) + ENDPOINT_GAUGES + ENDPOINT_COUNTERS + ENDPOINT_LATENCIES
        if not hasattr(EndpointCounters, name)
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.ClientConnections = 0
        self.ClientConnectionsTLS = 0
        self.ClientConnectionsNoTLS = 0
        self.ClientConnectionsReceived = 0
        self.ClientConnectionsSetupSucceeded = 0
        self.ClientConnectionsSetupFailedAuth = 0
        self.ClientConnectionsClosed = 0
        self.QueryRequests = 0
        self.QueryRequestsTLS = 0
        self.QueryRequestsNoTLS = 0
        self.QueryResponseLatency = Latency()


class TargetStats(TargetCounters):
    """Database-side numbers of one backend target; the proxy bumps the attributes directly.

    The ones every transaction bumps are TargetCounters' (typed fields in the compiled twin).
    """

    __slots__ = tuple(
        name
        for name in ("role", "address", "pinning_reasons") + TARGET_GAUGES + TARGET_COUNTERS + TARGET_LATENCIES
        if not hasattr(TargetCounters, name)
    )

    def __init__(self, address: str, role: str = "UNKNOWN") -> None:
        self.address = address
        self.role = role  # "WRITER" | "READER" | "UNKNOWN"; updated by health checks and failover
        self.DatabaseConnections = 0
        self.DatabaseConnectionsCurrentlyBorrowed = 0
        self.DatabaseConnectionsCurrentlyInTransaction = 0
        self.DatabaseConnectionsCurrentlySessionPinned = 0
        self.DatabaseConnectionsWithTLS = 0
        self.MaxDatabaseConnectionsAllowed = 0
        self.DatabaseConnectionRequests = 0
        self.DatabaseConnectionsSetupSucceeded = 0
        self.DatabaseConnectionsSetupFailed = 0
        self.DatabaseConnectionBorrowTimeouts = 0
        self.SessionPinningEvents = 0
        self.FailoverEvents = 0
        self.pinning_reasons: dict[str, int] = {}
        self.DatabaseConnectionsBorrowLatency = Latency()
        self.QueryDatabaseResponseLatency = Latency()

    def record_pin(self, reason: str) -> None:
        self.SessionPinningEvents += 1
        reasons = self.pinning_reasons
        reasons[reason] = reasons.get(reason, 0) + 1


class Metrics:
    """All numbers of one proxy, keyed by endpoint name and target address."""

    def __init__(self, proxy_name: str) -> None:
        self.proxy_name = proxy_name
        self.endpoints: dict[str, EndpointStats] = {}
        self.targets: dict[str, TargetStats] = {}
        self._collector: MetricsCollector | None = None

    def endpoint(self, name: str) -> EndpointStats:
        stats = self.endpoints.get(name)
        if stats is None:
            stats = self.endpoints[name] = EndpointStats(name)
        return stats

    def target(self, address: str) -> TargetStats:
        stats = self.targets.get(address)
        if stats is None:
            stats = self.targets[address] = TargetStats(address)
        return stats

    def snapshot(self) -> dict[str, float]:
        """Every section 5 name summed over endpoints and targets, latencies as average microseconds,
        plus `SessionPinningEvents.<reason>` per pinning reason seen."""
        # list() copies first, so a scrape from another thread never iterates a dict that is growing.
        endpoints = list(self.endpoints.values())
        targets = list(self.targets.values())
        result: dict[str, float] = {}
        for name in ENDPOINT_GAUGES + ENDPOINT_COUNTERS:
            result[name] = sum(getattr(stats, name) for stats in endpoints)
        for name in TARGET_GAUGES + TARGET_COUNTERS:
            result[name] = sum(getattr(stats, name) for stats in targets)
        for names, owners in ((ENDPOINT_LATENCIES, endpoints), (TARGET_LATENCIES, targets)):
            for name in names:
                latencies = [getattr(stats, name) for stats in owners]
                count = sum(latency.count for latency in latencies)
                total = sum(latency.sum_us for latency in latencies)
                result[name] = total / count if count else 0.0
        by_reason: dict[str, int] = {}
        for stats in targets:
            for reason, count in list(stats.pinning_reasons.items()):
                by_reason[reason] = by_reason.get(reason, 0) + count
        for reason in sorted(by_reason):
            result["SessionPinningEvents." + reason] = by_reason[reason]
        return result

    def collector(self) -> MetricsCollector:
        """The prometheus_client collector reading this object at scrape time (one per Metrics)."""
        if self._collector is None:
            self._collector = MetricsCollector(self)
        return self._collector


class MetricsCollector(Collector):
    """Turns a Metrics object into Prometheus metric families each time it is scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        proxy = metrics.proxy_name
        endpoints = list(metrics.endpoints.values())
        targets = list(metrics.targets.values())
        endpoint_labels = ["proxy", "endpoint"]
        target_labels = ["proxy", "target", "role"]

        for name in ENDPOINT_GAUGES + ENDPOINT_COUNTERS:
            family_type = GaugeMetricFamily if name in ENDPOINT_GAUGES else CounterMetricFamily
            family = family_type(prometheus_name(name), _DESCRIPTIONS[name], labels=endpoint_labels)
            for endpoint in endpoints:
                family.add_metric([proxy, endpoint.name], getattr(endpoint, name))
            yield family

        for name in TARGET_GAUGES + TARGET_COUNTERS:
            family_type = GaugeMetricFamily if name in TARGET_GAUGES else CounterMetricFamily
            family = family_type(prometheus_name(name), _DESCRIPTIONS[name], labels=target_labels)
            for target in targets:
                family.add_metric([proxy, target.address, target.role], getattr(target, name))
            yield family

        by_reason = CounterMetricFamily(
            PROMETHEUS_PREFIX + "session_pinning_events_by_reason",
            "Client sessions pinned to a backend connection, by pinning reason code.",
            labels=target_labels + ["reason"],
        )
        for target in targets:
            for reason, count in sorted(target.pinning_reasons.items()):
                by_reason.add_metric([proxy, target.address, target.role, reason], count)
        yield by_reason

        for name in ENDPOINT_LATENCIES:
            family = HistogramMetricFamily(prometheus_name(name), _DESCRIPTIONS[name], labels=endpoint_labels)
            for endpoint in endpoints:
                latency: Latency = getattr(endpoint, name)
                family.add_metric([proxy, endpoint.name], latency.cumulative_buckets(), latency.sum_us)
            yield family

        for name in TARGET_LATENCIES:
            family = HistogramMetricFamily(prometheus_name(name), _DESCRIPTIONS[name], labels=target_labels)
            for target in targets:
                latency = getattr(target, name)
                family.add_metric([proxy, target.address, target.role], latency.cumulative_buckets(), latency.sum_us)
            yield family

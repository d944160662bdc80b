"""Tests of the metrics model, its Prometheus collector and the admin HTTP listener."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from rdsproxy import admin
from rdsproxy.admin import AdminServer
from rdsproxy.metrics import LATENCY_BUCKET_BOUNDS_US, METRIC_NAMES, Latency, Metrics, prometheus_name

# DESIGN section 5, written out again on purpose: these names are a contract with users.
DESIGN_GAUGES = {
    "ClientConnections",
    "ClientConnectionsTLS",
    "ClientConnectionsNoTLS",
    "DatabaseConnections",
    "DatabaseConnectionsCurrentlyBorrowed",
    "DatabaseConnectionsCurrentlyInTransaction",
    "DatabaseConnectionsCurrentlySessionPinned",
    "DatabaseConnectionsWithTLS",
    "MaxDatabaseConnectionsAllowed",
}
DESIGN_COUNTERS = {
    "ClientConnectionsReceived",
    "ClientConnectionsSetupSucceeded",
    "ClientConnectionsSetupFailedAuth",
    "ClientConnectionsClosed",
    "DatabaseConnectionRequests",
    "DatabaseConnectionsSetupSucceeded",
    "DatabaseConnectionsSetupFailed",
    "DatabaseConnectionBorrowTimeouts",
    "QueryRequests",
    "QueryRequestsTLS",
    "QueryRequestsNoTLS",
    "SessionPinningEvents",
    "FailoverEvents",
}
DESIGN_LATENCIES = {
    "DatabaseConnectionsBorrowLatency",
    "QueryDatabaseResponseLatency",
    "QueryResponseLatency",
}
DESIGN_NAMES = DESIGN_GAUGES | DESIGN_COUNTERS | DESIGN_LATENCIES


def populated_metrics() -> Metrics:
    """Two endpoints and two targets with distinct numbers, so sums and label splits are visible."""
    metrics = Metrics("app-proxy")
    default = metrics.endpoint("default")
    default.ClientConnections = 3
    default.ClientConnectionsTLS = 1
    default.ClientConnectionsNoTLS = 2
    default.ClientConnectionsReceived = 10
    default.ClientConnectionsSetupSucceeded = 8
    default.ClientConnectionsSetupFailedAuth = 2
    default.ClientConnectionsClosed = 7
    default.QueryRequests = 100
    default.QueryRequestsTLS = 40
    default.QueryRequestsNoTLS = 60
    default.QueryResponseLatency.observe(100)
    default.QueryResponseLatency.observe(300)

    reader = metrics.endpoint("reader")
    reader.ClientConnections = 5
    reader.ClientConnectionsNoTLS = 5
    reader.ClientConnectionsReceived = 6
    reader.QueryRequests = 11
    reader.QueryRequestsNoTLS = 11
    reader.QueryResponseLatency.observe(1_000)

    writer = metrics.target("127.0.0.1:5432")
    writer.role = "WRITER"
    writer.DatabaseConnections = 4
    writer.DatabaseConnectionsCurrentlyBorrowed = 2
    writer.DatabaseConnectionsCurrentlyInTransaction = 1
    writer.DatabaseConnectionsCurrentlySessionPinned = 1
    writer.DatabaseConnectionsWithTLS = 4
    writer.MaxDatabaseConnectionsAllowed = 90
    writer.DatabaseConnectionRequests = 50
    writer.DatabaseConnectionsSetupSucceeded = 4
    writer.DatabaseConnectionsSetupFailed = 1
    writer.DatabaseConnectionBorrowTimeouts = 3
    writer.FailoverEvents = 1
    writer.record_pin("SET")
    writer.record_pin("SET")
    writer.record_pin("TEMP_TABLE")
    writer.DatabaseConnectionsBorrowLatency.observe(20)
    writer.DatabaseConnectionsBorrowLatency.observe(80)
    writer.QueryDatabaseResponseLatency.observe(70_000_000)

    replica = metrics.target("127.0.0.1:5433")
    replica.role = "READER"
    replica.DatabaseConnections = 2
    replica.MaxDatabaseConnectionsAllowed = 90
    replica.DatabaseConnectionRequests = 7
    replica.record_pin("SET")
    replica.QueryDatabaseResponseLatency.observe(500)
    return metrics


# --- the model ---------------------------------------------------------------------------------------------


def test_metric_names_are_exactly_the_design_contract() -> None:
    assert set(METRIC_NAMES) == DESIGN_NAMES
    assert len(METRIC_NAMES) == len(DESIGN_NAMES)


def test_latency_puts_values_in_buckets_by_upper_bound() -> None:
    latency = Latency()
    assert latency.average() == 0.0
    latency.observe(0)
    latency.observe(LATENCY_BUCKET_BOUNDS_US[0])  # a bound belongs to its own bucket (le = less or equal)
    latency.observe(LATENCY_BUCKET_BOUNDS_US[0] + 1)
    latency.observe(LATENCY_BUCKET_BOUNDS_US[-1] + 1)
    assert latency.count == 4
    assert latency.sum_us == 0 + 50 + 51 + LATENCY_BUCKET_BOUNDS_US[-1] + 1
    assert latency.buckets[0] == 2
    assert latency.buckets[1] == 1
    assert latency.buckets[-1] == 1
    assert len(latency.buckets) == len(LATENCY_BUCKET_BOUNDS_US) + 1
    assert latency.average() == latency.sum_us / 4


def test_bucket_bounds_span_fifty_microseconds_to_a_minute_in_ascending_order() -> None:
    assert LATENCY_BUCKET_BOUNDS_US[0] == 50
    assert LATENCY_BUCKET_BOUNDS_US[-1] == 60_000_000
    assert list(LATENCY_BUCKET_BOUNDS_US) == sorted(set(LATENCY_BUCKET_BOUNDS_US))


def test_endpoint_and_target_stats_are_created_once() -> None:
    metrics = Metrics("p")
    assert metrics.endpoint("default") is metrics.endpoint("default")
    assert metrics.endpoint("default") is not metrics.endpoint("other")
    target = metrics.target("10.0.0.1:5432")
    assert target is metrics.target("10.0.0.1:5432")
    assert target.role == "UNKNOWN"
    assert target.address == "10.0.0.1:5432"


def test_stats_objects_reject_misspelled_attributes() -> None:
    metrics = Metrics("p")
    with pytest.raises(AttributeError):
        metrics.endpoint("default").ClientConnection = 1  # type: ignore[attr-defined]
    with pytest.raises(AttributeError):
        metrics.target("t").DatabaseConnection = 1  # type: ignore[attr-defined]


def test_empty_snapshot_has_every_name_at_zero() -> None:
    snapshot = Metrics("p").snapshot()
    assert set(snapshot) == DESIGN_NAMES
    assert all(value == 0 for value in snapshot.values())


def test_snapshot_sums_over_endpoints_and_targets() -> None:
    snapshot = populated_metrics().snapshot()
    assert DESIGN_NAMES <= set(snapshot)
    assert snapshot["ClientConnections"] == 8
    assert snapshot["ClientConnectionsTLS"] == 1
    assert snapshot["ClientConnectionsNoTLS"] == 7
    assert snapshot["ClientConnectionsReceived"] == 16
    assert snapshot["ClientConnectionsSetupSucceeded"] == 8
    assert snapshot["ClientConnectionsSetupFailedAuth"] == 2
    assert snapshot["ClientConnectionsClosed"] == 7
    assert snapshot["QueryRequests"] == 111
    assert snapshot["QueryRequestsTLS"] == 40
    assert snapshot["QueryRequestsNoTLS"] == 71
    assert snapshot["DatabaseConnections"] == 6
    assert snapshot["DatabaseConnectionsCurrentlyBorrowed"] == 2
    assert snapshot["DatabaseConnectionsCurrentlyInTransaction"] == 1
    assert snapshot["DatabaseConnectionsCurrentlySessionPinned"] == 1
    assert snapshot["DatabaseConnectionsWithTLS"] == 4
    assert snapshot["MaxDatabaseConnectionsAllowed"] == 180
    assert snapshot["DatabaseConnectionRequests"] == 57
    assert snapshot["DatabaseConnectionsSetupSucceeded"] == 4
    assert snapshot["DatabaseConnectionsSetupFailed"] == 1
    assert snapshot["DatabaseConnectionBorrowTimeouts"] == 3
    assert snapshot["FailoverEvents"] == 1
    assert snapshot["SessionPinningEvents"] == 4
    assert snapshot["SessionPinningEvents.SET"] == 3
    assert snapshot["SessionPinningEvents.TEMP_TABLE"] == 1


def test_snapshot_latencies_average_over_all_observations_not_over_averages() -> None:
    snapshot = populated_metrics().snapshot()
    assert snapshot["QueryResponseLatency"] == pytest.approx((100 + 300 + 1_000) / 3)
    assert snapshot["DatabaseConnectionsBorrowLatency"] == pytest.approx(50.0)
    assert snapshot["QueryDatabaseResponseLatency"] == pytest.approx((70_000_000 + 500) / 2)


def test_prometheus_names_are_prefixed_snake_case() -> None:
    assert prometheus_name("ClientConnectionsTLS") == "rdsproxy_client_connections_tls"
    assert prometheus_name("DatabaseConnectionsWithTLS") == "rdsproxy_database_connections_with_tls"
    assert prometheus_name("QueryRequestsNoTLS") == "rdsproxy_query_requests_no_tls"
    assert prometheus_name("MaxDatabaseConnectionsAllowed") == "rdsproxy_max_database_connections_allowed"
    assert prometheus_name("QueryResponseLatency") == "rdsproxy_query_response_latency_microseconds"


# --- the Prometheus collector ------------------------------------------------------------------------------


def scrape(metrics: Metrics) -> dict:
    registry = CollectorRegistry()
    registry.register(metrics.collector())
    text = generate_latest(registry).decode()
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_values(family, sample_name: str) -> dict[tuple, float]:
    return {
        tuple(sorted(sample.labels.items())): sample.value for sample in family.samples if sample.name == sample_name
    }


def test_collector_exposes_every_design_name_with_the_right_type() -> None:
    families = scrape(Metrics("p"))
    for name in DESIGN_GAUGES:
        assert families[prometheus_name(name)].type == "gauge", name
    for name in DESIGN_COUNTERS:
        assert families[prometheus_name(name)].type == "counter", name
    for name in DESIGN_LATENCIES:
        assert families[prometheus_name(name)].type == "histogram", name
    assert families["rdsproxy_session_pinning_events_by_reason"].type == "counter"
    assert all(family_name.startswith("rdsproxy_") for family_name in families)


def test_collector_labels_client_side_by_endpoint() -> None:
    families = scrape(populated_metrics())
    gauge = families["rdsproxy_client_connections_no_tls"]
    assert sample_values(gauge, "rdsproxy_client_connections_no_tls") == {
        (("endpoint", "default"), ("proxy", "app-proxy")): 2.0,
        (("endpoint", "reader"), ("proxy", "app-proxy")): 5.0,
    }
    counter = families["rdsproxy_query_requests"]
    assert sample_values(counter, "rdsproxy_query_requests_total") == {
        (("endpoint", "default"), ("proxy", "app-proxy")): 100.0,
        (("endpoint", "reader"), ("proxy", "app-proxy")): 11.0,
    }


def test_collector_labels_database_side_by_target_and_role() -> None:
    families = scrape(populated_metrics())
    writer_labels = (("proxy", "app-proxy"), ("role", "WRITER"), ("target", "127.0.0.1:5432"))
    reader_labels = (("proxy", "app-proxy"), ("role", "READER"), ("target", "127.0.0.1:5433"))
    assert sample_values(families["rdsproxy_database_connections"], "rdsproxy_database_connections") == {
        writer_labels: 4.0,
        reader_labels: 2.0,
    }
    assert sample_values(
        families["rdsproxy_database_connection_borrow_timeouts"],
        "rdsproxy_database_connection_borrow_timeouts_total",
    ) == {writer_labels: 3.0, reader_labels: 0.0}
    assert sample_values(families["rdsproxy_session_pinning_events"], "rdsproxy_session_pinning_events_total") == {
        writer_labels: 3.0,
        reader_labels: 1.0,
    }
    assert sample_values(
        families["rdsproxy_session_pinning_events_by_reason"],
        "rdsproxy_session_pinning_events_by_reason_total",
    ) == {
        tuple(sorted(writer_labels + (("reason", "SET"),))): 2.0,
        tuple(sorted(writer_labels + (("reason", "TEMP_TABLE"),))): 1.0,
        tuple(sorted(reader_labels + (("reason", "SET"),))): 1.0,
    }


def test_collector_histograms_have_cumulative_buckets_sum_and_count() -> None:
    families = scrape(populated_metrics())
    family = families["rdsproxy_query_response_latency_microseconds"]
    default_buckets = {
        sample.labels["le"]: sample.value
        for sample in family.samples
        if sample.name.endswith("_bucket") and sample.labels["endpoint"] == "default"
    }
    assert [float(le) for le in default_buckets] == [*LATENCY_BUCKET_BOUNDS_US, float("inf")]
    assert default_buckets["50.0"] == 0
    assert default_buckets["100.0"] == 1
    assert default_buckets["250.0"] == 1
    assert default_buckets["500.0"] == 2
    assert default_buckets["+Inf"] == 2
    values = list(default_buckets.values())
    assert values == sorted(values)
    default_labels = (("endpoint", "default"), ("proxy", "app-proxy"))
    assert sample_values(family, "rdsproxy_query_response_latency_microseconds_sum")[default_labels] == 400
    assert sample_values(family, "rdsproxy_query_response_latency_microseconds_count")[default_labels] == 2

    database = families["rdsproxy_query_database_response_latency_microseconds"]
    writer_overflow = [
        sample.value
        for sample in database.samples
        if sample.name.endswith("_bucket") and sample.labels["role"] == "WRITER"
    ]
    assert writer_overflow[-2:] == [0, 1]  # 70 s is beyond the last bound: only +Inf holds it


def test_collector_reads_live_values_at_each_scrape() -> None:
    metrics = Metrics("p")
    stats = metrics.endpoint("default")
    stats.QueryRequests += 1
    first = scrape(metrics)["rdsproxy_query_requests"].samples[0].value
    stats.QueryRequests += 41
    second = scrape(metrics)["rdsproxy_query_requests"].samples[0].value
    assert (first, second) == (1, 42)
    assert metrics.collector() is metrics.collector()


# --- the admin HTTP listener -------------------------------------------------------------------------------


class HealthState:
    def __init__(self) -> None:
        self.healthy = True
        self.fail = False
        self.extra: dict = {}

    def __call__(self) -> tuple[bool, dict]:
        if self.fail:
            raise RuntimeError("health probe exploded with secret details")
        return self.healthy, {"writer": "127.0.0.1:5432" if self.healthy else None, **self.extra}


@pytest.fixture
def health() -> HealthState:
    return HealthState()


@pytest.fixture
async def server(health: HealthState):
    admin_server = AdminServer(
        populated_metrics(), health=health, stats=lambda: {"proxy": "app-proxy", "pools": [{"size": 4}]}
    )
    await admin_server.start("127.0.0.1", 0)
    yield admin_server
    await admin_server.close()


async def exchange(
    address: tuple[str, int], request: bytes, *, head_request: bool = False
) -> tuple[int, dict[str, str], bytes]:
    """Sends raw bytes, reads until the server closes, returns (status, lower-cased headers, body)."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(request)
        await writer.drain()
        response = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = response.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, status, _reason = status_line.split(" ", 2)
    assert version == "HTTP/1.1"
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if not head_request:  # HEAD announces the length a GET would send, and sends nothing
        assert int(headers["content-length"]) == len(body)
    assert headers["connection"] == "close"
    return int(status), headers, body


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n".encode()


async def test_admin_address_is_the_bound_ephemeral_port(server: AdminServer) -> None:
    host, port = server.address
    assert host == "127.0.0.1"
    assert port > 0


async def test_admin_metrics_serves_prometheus_text(server: AdminServer) -> None:
    status, headers, body = await exchange(server.address, get("/metrics"))
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE_LATEST
    families = {family.name: family for family in text_string_to_metric_families(body.decode())}
    assert sample_values(families["rdsproxy_client_connections"], "rdsproxy_client_connections") == {
        (("endpoint", "default"), ("proxy", "app-proxy")): 3.0,
        (("endpoint", "reader"), ("proxy", "app-proxy")): 5.0,
    }
    # A private registry: no process-wide default collectors leak into the proxy's page.
    assert all(name.startswith("rdsproxy_") for name in families)


async def test_admin_ignores_query_strings(server: AdminServer) -> None:
    status, _headers, body = await exchange(server.address, get("/metrics?name[]=x"))
    assert status == 200
    assert b"rdsproxy_query_requests_total" in body


async def test_admin_head_sends_headers_only(server: AdminServer) -> None:
    request = b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    status, headers, body = await exchange(server.address, request, head_request=True)
    assert status == 200
    assert body == b""
    assert int(headers["content-length"]) > 0
    assert headers["content-type"] == "application/json"


async def test_admin_healthz_ok(server: AdminServer) -> None:
    status, headers, body = await exchange(server.address, get("/healthz"))
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"status": "ok", "writer": "127.0.0.1:5432"}


async def test_admin_healthz_unhealthy(server: AdminServer, health: HealthState) -> None:
    health.healthy = False
    health.extra = {"status": "ok"}  # the verdict comes from the boolean, never from the details
    status, _headers, body = await exchange(server.address, get("/healthz"))
    assert status == 503
    assert json.loads(body) == {"status": "unhealthy", "writer": None}


async def test_admin_stats_merges_provider_and_snapshot(server: AdminServer) -> None:
    status, headers, body = await exchange(server.address, get("/stats"))
    assert status == 200
    assert headers["content-type"] == "application/json"
    document = json.loads(body)
    assert document["proxy"] == "app-proxy"
    assert document["pools"] == [{"size": 4}]
    assert DESIGN_NAMES <= set(document["metrics"])
    assert document["metrics"]["QueryRequests"] == 111
    assert document["metrics"]["SessionPinningEvents.SET"] == 3


async def test_admin_unknown_path_is_404(server: AdminServer) -> None:
    status, _headers, _body = await exchange(server.address, get("/nope"))
    assert status == 404


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        b"DELETE /stats HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
)
async def test_admin_other_methods_are_405(server: AdminServer, request_bytes: bytes) -> None:
    status, headers, _body = await exchange(server.address, request_bytes)
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"garbage\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",  # a TLS hello sent to the plain port
        b"GET /metrics\r\n\r\n",
        b"GET /metrics HTTP/2.0\r\n\r\n",
        b"GET metrics HTTP/1.1\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost : x\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nHost: x\r\n folded continuation\r\n\r\n",
    ],
)
async def test_admin_malformed_requests_are_400(server: AdminServer, request_bytes: bytes) -> None:
    status, _headers, body = await exchange(server.address, request_bytes)
    assert status == 400
    assert b"Traceback" not in body


async def test_admin_truncated_request_is_400(server: AdminServer) -> None:
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"GET /metr")
    writer.write_eof()
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert response.startswith(b"HTTP/1.1 400 ")


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 500) for i in range(20)) + b"\r\n",
    ],
    ids=["one-huge-header", "many-headers"],
)
async def test_admin_oversized_headers_are_431(server: AdminServer, request_bytes: bytes) -> None:
    status, _headers, _body = await exchange(server.address, request_bytes)
    assert status == 431


async def test_admin_oversized_request_line_is_414(server: AdminServer) -> None:
    status, _headers, _body = await exchange(server.address, get("/" + "m" * 9_000))
    assert status == 414


async def test_admin_slow_request_gets_408(monkeypatch: pytest.MonkeyPatch, server: AdminServer) -> None:
    monkeypatch.setattr(admin, "READ_TIMEOUT_SECONDS", 0.2)
    reader, writer = await asyncio.open_connection(*server.address)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # never finishes the header block
    response = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert response.startswith(b"HTTP/1.1 408 ")


async def test_admin_provider_failure_is_500_without_traceback(
    server: AdminServer, health: HealthState, caplog: pytest.LogCaptureFixture
) -> None:
    health.fail = True
    with caplog.at_level(logging.ERROR, logger="rdsproxy.admin"):
        status, _headers, body = await exchange(server.address, get("/healthz"))
    assert status == 500
    assert json.loads(body) == {"error": "internal error"}
    assert b"secret" not in body
    assert any(record.exc_info for record in caplog.records)


async def test_admin_serves_requests_one_after_another(server: AdminServer) -> None:
    statuses = [(await exchange(server.address, get(path)))[0] for path in ("/healthz", "/stats", "/metrics")]
    assert statuses == [200, 200, 200]


async def test_admin_close_stops_listening_and_drops_idle_connections(health: HealthState) -> None:
    admin_server = AdminServer(Metrics("p"), health=health, stats=dict)
    await admin_server.start("127.0.0.1", 0)
    address = admin_server.address
    reader, writer = await asyncio.open_connection(*address)
    writer.write(b"GET /metr")  # an unfinished request must not hold close() up
    await writer.drain()
    await asyncio.wait_for(admin_server.close(), 10)
    # Whether the server had read our bytes yet decides between a clean close and a reset; both end it.
    try:
        leftover = await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        leftover = b""
    assert leftover == b""
    writer.close()
    with pytest.raises(OSError):
        await asyncio.open_connection(*address)


def test_admin_address_before_start_is_an_error() -> None:
    with pytest.raises(RuntimeError):
        _ = AdminServer(Metrics("p"), health=lambda: (True, {}), stats=dict).address

"""Selects the compiled codecs (Cython) or their pure-Python twins; RDSPROXY_NO_EXTENSIONS=1 forces the twins."""

from __future__ import annotations

import os
from types import ModuleType
from typing import Callable, NamedTuple


class CodecSet(NamedTuple):
    """One implementation of every codec: the compiled twins or the pure-Python ones."""

    name: str
    pgframe: ModuleType
    classify: ModuleType
    myframe: ModuleType
    latency: ModuleType
    relay: ModuleType
    lane: ModuleType
    scram: ModuleType

    @property
    def ClientFramer(self) -> type:
        return self.pgframe.ClientFramer

    @property
    def ServerScanner(self) -> type:
        return self.pgframe.ServerScanner

    @property
    def PgRequestState(self) -> type:
        return self.pgframe.PgRequestState

    @property
    def classify_pg(self) -> Callable[[bytes], int]:
        return self.classify.classify_pg

    @property
    def MyClientFramer(self) -> type:
        return self.myframe.MyClientFramer

    @property
    def MyResponseScanner(self) -> type:
        return self.myframe.MyResponseScanner

    @property
    def MyRequestState(self) -> type:
        return self.myframe.MyRequestState

    @property
    def classify_mysql(self) -> Callable[..., int]:
        return self.classify.classify_mysql

    @property
    def Latency(self) -> type:
        return self.latency.Latency

    @property
    def Relay(self) -> type:
        return self.relay.Relay

    @property
    def ScramServer(self) -> type:
        return self.scram.ScramServer

    @property
    def ScramSecret(self) -> type:
        return self.scram.ScramSecret


def extensions_disabled() -> bool:
    """True when RDSPROXY_NO_EXTENSIONS asks for the pure-Python twins (set, non-empty and not "0")."""
    value = os.environ.get("RDSPROXY_NO_EXTENSIONS", "")
    return value not in ("", "0")


def _load_compiled() -> CodecSet | None:
    try:
        from . import classify_c, lane_c, latency_c, myframe_c, pgframe_c, scram_c
    except ImportError:
        return None
    try:
        from . import relay_c as relay
    except ImportError:  # built only on Linux (epoll); the twin stands in, and sockets.py won't use either
        from . import relay_py as relay
    return CodecSet("compiled", pgframe_c, classify_c, myframe_c, latency_c, relay, lane_c, scram_c)


def _load_pure() -> CodecSet:
    from . import classify_py, lane_py, latency_py, myframe_py, pgframe_py, relay_py, scram_py

    return CodecSet("pure", pgframe_py, classify_py, myframe_py, latency_py, relay_py, lane_py, scram_py)


IMPLEMENTATIONS: dict[str, CodecSet] = {"pure": _load_pure()}
_compiled = None if extensions_disabled() else _load_compiled()
if _compiled is not None:
    IMPLEMENTATIONS["compiled"] = _compiled

COMPILED: bool = _compiled is not None
ACTIVE: CodecSet = _compiled if _compiled is not None else IMPLEMENTATIONS["pure"]
del _compiled

ClientFramer = ACTIVE.pgframe.ClientFramer
ServerScanner = ACTIVE.pgframe.ServerScanner
PgRequestState = ACTIVE.pgframe.PgRequestState
parse_startup = ACTIVE.pgframe.parse_startup
classify_pg = ACTIVE.classify.classify_pg
MyClientFramer = ACTIVE.myframe.MyClientFramer
MyResponseScanner = ACTIVE.myframe.MyResponseScanner
MyRequestState = ACTIVE.myframe.MyRequestState
packet_payload = ACTIVE.myframe.packet_payload
classify_mysql = ACTIVE.classify.classify_mysql
mysql_session_function_items = ACTIVE.classify.mysql_session_function_items
mysql_select_of_session_functions = ACTIVE.classify.mysql_select_of_session_functions
parse_kill = ACTIVE.classify.parse_kill
tokenize = ACTIVE.classify.tokenize
Latency = ACTIVE.latency.Latency
Relay = ACTIVE.relay.Relay
ClientLane = ACTIVE.lane.ClientLane
BackendLane = ACTIVE.lane.BackendLane
PoolLane = ACTIVE.lane.PoolLane
Route = ACTIVE.lane.Route
Waiter = ACTIVE.lane.Waiter
EndpointCounters = ACTIVE.lane.EndpointCounters
TargetCounters = ACTIVE.lane.TargetCounters
ScramServer = ACTIVE.scram.ScramServer
ScramSecret = ACTIVE.scram.ScramSecret

__all__ = [
    "ACTIVE",
    "COMPILED",
    "BackendLane",
    "ClientLane",
    "IMPLEMENTATIONS",
    "ClientFramer",
    "CodecSet",
    "EndpointCounters",
    "Latency",
    "MyClientFramer",
    "MyRequestState",
    "MyResponseScanner",
    "PgRequestState",
    "PoolLane",
    "Route",
    "ScramSecret",
    "ScramServer",
    "TargetCounters",
    "Waiter",
    "ServerScanner",
    "classify_mysql",
    "classify_pg",
    "mysql_select_of_session_functions",
    "mysql_session_function_items",
    "packet_payload",
    "parse_startup",
    "parse_kill",
    "tokenize",
]

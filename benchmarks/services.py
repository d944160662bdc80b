"""Benchmark services: PgBouncer and an rdsproxy subprocess in front of rdsproxy.testing servers, /proc readings."""

from __future__ import annotations

import json
import os
import pwd
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from typing import Any, Optional, Union

from rdsproxy.targets import connection_budget
from rdsproxy.testing import MariaDBServer, PostgresServer

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


def raise_open_file_limit() -> int:
    """Lift this process's soft RLIMIT_NOFILE to the hard limit (children inherit it); returns the new limit.

    Servers and proxies started afterwards inherit the raised limit, PgBouncer too: it is started by Popen with
    user="postgres", which switches user without PAM, so no limits.conf applies and `ulimit -n` stays ours.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def client_environment(**extra: str) -> dict[str, str]:
    """Our environment without libpq/MySQL variables that would redirect client tools, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PG", "MYSQL"))}
    env.update(extra)
    return env


def free_port() -> int:
    """A loopback port that was free a moment ago (callers retry if another process takes it first)."""
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


def wait_for_port(host: str, port: int, process: subprocess.Popen[bytes], *, what: str, log_path: str) -> None:
    """Block until `host:port` accepts a TCP connection; raise with the log tail if `process` exits first."""
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {process.returncode}; end of {log_path}:\n{_tail(log_path)}")
        try:
            with socket.create_connection((host, port), timeout=1):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not accept connections on {host}:{port} within {START_TIMEOUT:g} s")
        time.sleep(0.05)


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, errors="replace") as file:
            return "".join(file.readlines()[-lines:]).rstrip()
    except OSError:
        return "(no log)"


def _stop_process(process: Optional[subprocess.Popen[bytes]], stop_signal: int) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(stop_signal)
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


# ----------------------------------------------------------------------------------------------------------
# /proc readings


def _status_field(pid: int, name: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/{pid}/status has no {name}")


def vm_rss_kib(pid: int) -> int:
    """Resident memory of `pid` in KiB (VmRSS)."""
    return _status_field(pid, "VmRSS")


def open_fd_count(pid: int) -> int:
    """How many file descriptors `pid` holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def open_file_limit(pid: int) -> int:
    """The soft "Max open files" limit `pid` runs with, as the kernel applies it."""
    with open(f"/proc/{pid}/limits") as limits:
        for line in limits:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise RuntimeError(f"/proc/{pid}/limits has no Max open files line")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time `pid` has used so far."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def has_mapped(pid: int, fragment: str) -> bool:
    """True if a file whose path contains `fragment` is mapped into `pid` (e.g. a loaded extension module)."""
    with open(f"/proc/{pid}/maps") as maps:
        return any(fragment in line for line in maps)


# ----------------------------------------------------------------------------------------------------------
# Pool sizing


def pool_percent(server: Union[PostgresServer, MariaDBServer], pool_size: int) -> int:
    """The max_connections_percent that gives rdsproxy exactly `pool_size` backends on `server`."""
    if isinstance(server, PostgresServer):
        reserved = int(server.sql("SHOW superuser_reserved_connections"))
    else:
        reserved = 0  # MariaDB keeps its extra SUPER connection beyond max_connections
    for percent in range(1, 101):
        if connection_budget(server.max_connections, reserved, percent) == pool_size:
            return percent
    raise ValueError(
        f"no max_connections_percent gives a pool of {pool_size} on a server with max_connections="
        f"{server.max_connections} ({reserved} reserved); pick max_connections = 100 * k + {reserved + 1}"
    )


# ----------------------------------------------------------------------------------------------------------
# PgBouncer


def _pgbouncer_os_user() -> Optional[str]:
    # pgbouncer refuses to run as root.
    if os.geteuid() != 0:
        return None
    pwd.getpwnam("postgres")
    return "postgres"


class PgBouncer:
    """PgBouncer in transaction mode in front of a PostgresServer, SCRAM-SHA-256 for clients and the server.

    The auth file holds the app user's SCRAM verifier copied from pg_authid, the way production setups give
    PgBouncer a secret: clients log in with SCRAM against it, and PgBouncer logs in to the server by SCRAM
    pass-through with the keys the client proved, so neither side runs PBKDF2 per connection.
    Runs in the foreground under the `postgres` OS user when we are root (pgbouncer refuses root).
    """

    def __init__(
        self, server: PostgresServer, *, pool_size: int, max_client_conn: int = 1000, command_prefix: Sequence[str] = ()
    ) -> None:
        self.server = server
        self.command_prefix = list(command_prefix)  # e.g. valgrind's argv, to run PgBouncer under a tool
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.host = LOOPBACK
        self.port = 0
        self.os_user = _pgbouncer_os_user()
        self.directory = tempfile.mkdtemp(prefix="pgbouncer.", dir="/tmp")
        self.log_path = os.path.join(self.directory, "pgbouncer.log")
        self._process: Optional[subprocess.Popen[bytes]] = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "PgBouncer is not running"
        return self._process.pid

    def dsn(self) -> str:
        server = self.server
        return f"postgresql://{server.app_user}:{server.app_password}@{self.host}:{self.port}/{server.app_database}"

    def _write_files(self) -> str:
        server = self.server
        verifier = server.sql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{server.app_user}'")
        if not verifier.startswith("SCRAM-SHA-256$"):
            raise RuntimeError(f"user {server.app_user} has no SCRAM verifier on the server")
        userlist = os.path.join(self.directory, "userlist.txt")
        with open(userlist, "w") as file:
            file.write(f'"{server.app_user}" "{verifier}"\n')
        config = os.path.join(self.directory, "pgbouncer.ini")
        with open(config, "w") as file:
            file.write(
                "[databases]\n"
                f"{server.app_database} = host={server.host} port={server.port} dbname={server.app_database}\n"
                "[pgbouncer]\n"
                f"listen_addr = {self.host}\n"
                f"listen_port = {self.port}\n"
                "unix_socket_dir =\n"
                "auth_type = scram-sha-256\n"
                f"auth_file = {userlist}\n"
                "pool_mode = transaction\n"
                f"default_pool_size = {self.pool_size}\n"
                f"max_db_connections = {self.pool_size}\n"
                "min_pool_size = 0\n"
                "reserve_pool_size = 0\n"
                f"max_client_conn = {self.max_client_conn}\n"
                "listen_backlog = 4096\n"
                "server_idle_timeout = 3600\n"
                "ignore_startup_parameters = extra_float_digits\n"
                "log_connections = 0\n"
                "log_disconnections = 0\n"
                "stats_period = 3600\n"
            )
        for path in (self.directory, userlist, config):
            if self.os_user:
                shutil.chown(path, self.os_user, self.os_user)
        os.chmod(userlist, 0o600)
        return config

    def start(self) -> PgBouncer:
        for _ in range(5):
            self.port = free_port()
            config = self._write_files()
            with open(self.log_path, "ab") as log:
                user_arguments: dict[str, Any] = {}
                if self.os_user:
                    user_arguments = {"user": self.os_user, "group": self.os_user, "extra_groups": []}
                self._process = subprocess.Popen(
                    [*self.command_prefix, "pgbouncer", config],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    cwd=self.directory,
                    env=client_environment(),
                    start_new_session=True,
                    **user_arguments,
                )
            try:
                wait_for_port(self.host, self.port, self._process, what="pgbouncer", log_path=self.log_path)
                return self
            except RuntimeError:
                if "Address already in use" not in _tail(self.log_path):
                    raise
        raise RuntimeError("pgbouncer could not bind a loopback port after 5 attempts")

    def stop(self) -> None:
        _stop_process(self._process, signal.SIGTERM)  # SIGTERM: immediate shutdown (SIGINT waits for clients)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# ----------------------------------------------------------------------------------------------------------
# rdsproxy as a subprocess


class RdsProxyProcess:
    """`python -m rdsproxy --config <file>` in front of one server, with a pool of exactly `pool_size` backends.

    A subprocess, like PgBouncer: its own interpreter, event loop (uvloop, as the CLI installs it when
    available) and GIL, so clients in the benchmark process neither slow the proxy down nor get slowed by it.
    """

    def __init__(
        self,
        server: Union[PostgresServer, MariaDBServer],
        *,
        pool_size: int,
        log_level: str = "WARNING",
        extra_env: Optional[dict[str, str]] = None,
        command_prefix: Sequence[str] = (),
    ) -> None:
        self.server = server
        self.command_prefix = list(command_prefix)  # e.g. valgrind's argv, to run the proxy under a tool
        self.pool_size = pool_size
        self.log_level = log_level
        self.extra_env = dict(extra_env or {})
        self.engine_family = "MYSQL" if isinstance(server, MariaDBServer) else "POSTGRESQL"
        self.host = LOOPBACK
        self.port = 0
        self.admin_port = 0
        self.directory = tempfile.mkdtemp(prefix="rdsproxy.", dir="/tmp")
        self.config_path = os.path.join(self.directory, "proxy.toml")
        self.log_path = os.path.join(self.directory, "rdsproxy.log")
        self._process: Optional[subprocess.Popen[bytes]] = None

    @property
    def pid(self) -> int:
        assert self._process is not None, "rdsproxy is not running"
        return self._process.pid

    @property
    def exit_status(self) -> Optional[int]:
        """None while the proxy runs; its exit status once it has ended."""
        return None if self._process is None else self._process.poll()

    def dsn(self) -> str:
        server = self.server
        return f"postgresql://{server.app_user}:{server.app_password}@{self.host}:{self.port}/{server.app_database}"

    def _write_config(self) -> None:
        server = self.server
        percent = pool_percent(server, self.pool_size)
        auth_type = "MYSQL_NATIVE_PASSWORD" if self.engine_family == "MYSQL" else "POSTGRES_SCRAM_SHA_256"
        with open(self.config_path, "w") as file:
            file.write(
                "[proxy]\n"
                'name = "bench"\n'
                f'engine_family = "{self.engine_family}"\n'
                "idle_client_timeout = 28800\n"
                f'admin_listen = "{LOOPBACK}:{self.admin_port}"\n'
                "[[endpoints]]\n"
                'name = "default"\n'
                f'listen = "{LOOPBACK}:0"\n'
                "[target_group]\n"
                f'targets = ["{server.address()}"]\n'
                f'database = "{server.app_database}"\n'
                f"max_connections_percent = {percent}\n"
                # as many idle backends as the pool holds: like PgBouncer, no reaping between runs
                f"max_idle_connections_percent = {percent}\n"
                "connection_borrow_timeout = 120\n"
                "[[auth]]\n"
                f'username = "{server.app_user}"\n'
                f'password = "{server.app_password}"\n'
                f'client_password_auth_type = "{auth_type}"\n'
            )

    def start(self) -> RdsProxyProcess:
        for _ in range(5):
            self.admin_port = free_port()
            self._write_config()
            with open(self.log_path, "ab") as log:
                self._process = subprocess.Popen(
                    [
                        *self.command_prefix,
                        sys.executable,
                        "-m",
                        "rdsproxy",
                        "--config",
                        self.config_path,
                        "--log-level",
                        self.log_level,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=client_environment(**self.extra_env),
                    start_new_session=True,
                )
            try:
                self._wait_ready()
                return self
            except RuntimeError:
                if "address already in use" not in _tail(self.log_path).lower():
                    raise
        raise RuntimeError("rdsproxy could not bind its admin port after 5 attempts")

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"rdsproxy exited with status {self._process.returncode}; end of {self.log_path}:\n"
                    f"{_tail(self.log_path)}"
                )
            if not self.port:
                with open(self.log_path, errors="replace") as log:
                    for line in log:
                        if "endpoint default on " in line:
                            self.port = int(line.rsplit(":", 1)[1])
            # Ready once the health check has read the server's max_connections and sized the pool.
            if self.port and self.metrics().get("MaxDatabaseConnectionsAllowed") == self.pool_size:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"rdsproxy not ready within {START_TIMEOUT:g} s (endpoint port {self.port or 'unknown'}, "
                    f"metrics {self.metrics()}); end of {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.05)

    def stats(self) -> dict[str, Any]:
        """The admin listener's /stats document (empty while it is not up yet)."""
        try:
            with urllib.request.urlopen(f"http://{LOOPBACK}:{self.admin_port}/stats", timeout=5) as response:
                return json.loads(response.read())
        except OSError:
            return {}

    def metrics(self) -> dict[str, Any]:
        return self.stats().get("metrics", {})

    def uses_uvloop(self) -> bool:
        return has_mapped(self.pid, "uvloop")

    def uses_relay(self) -> bool:
        """The data path runs on the relay's epoll set: a second eventpoll fd beside the event loop's own."""
        polls = 0
        for name in os.listdir(f"/proc/{self.pid}/fd"):
            try:
                polls += os.readlink(f"/proc/{self.pid}/fd/{name}") == "anon_inode:[eventpoll]"
            except OSError:
                continue
        return polls >= 2

    def uses_compiled_codecs(self) -> bool:
        return has_mapped(self.pid, "pgframe_c") or has_mapped(self.pid, "myframe_c")

    def log_tail(self, lines: int = 20) -> str:
        return _tail(self.log_path, lines)

    def stop(self) -> None:
        _stop_process(self._process, signal.SIGTERM)  # SIGTERM drains, as in production
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RdsProxyProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

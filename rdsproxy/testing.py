"""Test helpers for rdsproxy's suite and users' own: throwaway PostgreSQL and MariaDB servers, an in-process proxy."""

from __future__ import annotations

import atexit
import glob
import itertools
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Callable, Optional, Union
from urllib.parse import quote

from rdsproxy.config import AuthConfig, EndpointConfig, ProxyConfig, ProxySettings, TargetGroupConfig

if TYPE_CHECKING:
    from rdsproxy import Proxy

__all__ = [
    "MARIADB_BINDIR_ENV",
    "PG_BINDIR_ENV",
    "MariaDBServer",
    "PostgresServer",
    "find_mariadb_tools",
    "find_postgres_bindir",
    "proxy_config_for",
    "running_proxy",
    "start_mariadb",
    "start_postgres",
]

LOOPBACK = "127.0.0.1"
PG_BINDIR_ENV = "RDSPROXY_PG_BINDIR"
PG_AUTH_METHODS = ("scram-sha-256", "md5", "password", "trust")
START_TIMEOUT = 60.0  # generous: two shared cores, crash recovery after kill9
STOP_TIMEOUT = 30.0
CLIENT_TIMEOUT = 120.0  # pg_promote(wait => true) alone may take up to 60 s


# ----------------------------------------------------------------------------------------------------------
# Pieces every throwaway server shares, PostgreSQL and MariaDB alike.

_port_lock = threading.Lock()
_claimed_ports: set[int] = set()
_live_servers: set[_ServerProcess] = set()  # strong refs: an unreferenced server still needs stopping


def _claim_free_port() -> int:
    """A loopback port that was free a moment ago and that no other server of this process holds.

    Another process may still take it before the server binds; starting retries on a new port then.
    """
    with _port_lock:
        while True:
            with socket.socket() as probe:
                probe.bind((LOOPBACK, 0))
                port = probe.getsockname()[1]
            if port not in _claimed_ports:
                _claimed_ports.add(port)
                return port


def _release_port(port: int) -> None:
    with _port_lock:
        _claimed_ports.discard(port)


def _wait_until(condition: Callable[[], bool], *, timeout: float, what: str, step: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


def _client_environment(**extra: str) -> dict[str, str]:
    """The caller's environment without libpq/MySQL variables that would redirect our client tools."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PG", "MYSQL"))}
    env.update(extra)
    return env


def _signal_quietly(pid: int, signal_number: int) -> None:
    try:
        os.kill(pid, signal_number)
    except ProcessLookupError:
        pass


def _child_pids(parent: int) -> list[int]:
    """Direct children of `parent`, from /proc (empty where there is no /proc)."""
    children = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == parent:  # fields: state, ppid, ...
            children.append(int(entry))
    return children


def _process_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie has released its memory)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class _ServerProcess:
    """A server living in its own short temp dir on a loopback port, run by Popen so we can kill and reap it.

    Servers are started directly (not via pg_ctl or a daemonizing wrapper) in a new session: the test
    process stays the parent, so kill9 can take the server and its children down and wait() reaps it.
    """

    host = LOOPBACK
    engine_name = "server"  # for messages

    def __init__(self, *, prefix: str, os_user: Optional[str]) -> None:
        self.os_user = os_user
        # Under /tmp, not pytest's tmp_path: unix socket paths must stay below 108 bytes.
        self.socket_dir = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
        if os_user:
            shutil.chown(self.socket_dir, os_user, os_user)
        self.port = 0
        self.log_path = os.path.join(self.socket_dir, "server.log")
        self._process: Optional[subprocess.Popen[bytes]] = None
        _live_servers.add(self)

    def address(self) -> str:
        """The server's TCP listener as "host:port", the form proxy targets take."""
        return f"{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _os_user_arguments(self) -> dict[str, Any]:
        if not self.os_user:
            return {}
        return {"user": self.os_user, "group": self.os_user, "extra_groups": []}

    def _run_as_os_user(self, argv: list[str], *, what: str, env: Optional[dict[str, str]] = None) -> str:
        result = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            cwd=self.socket_dir,  # the OS user may not be allowed into our cwd
            env=env or _client_environment(HOME=self.socket_dir),
            timeout=CLIENT_TIMEOUT,
            **self._os_user_arguments(),
        )
        if result.returncode != 0:
            raise RuntimeError(f"{what} failed (exit {result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def _spawn(self, argv: list[str]) -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                cwd=self.socket_dir,
                env=_client_environment(HOME=self.socket_dir),
                start_new_session=True,
                **self._os_user_arguments(),
            )

    def _log_tail(self, lines: int = 15) -> str:
        try:
            with open(self.log_path, errors="replace") as log:
                return "".join(log.readlines()[-lines:]).strip()
        except OSError:
            return "(no server log)"

    def kill9(self) -> None:
        """Crash the server: SIGKILL to it and all its children at once, as if the machine had died."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            # PostgreSQL's children call setsid(), so killing the process group misses them. Freeze the
            # server first so it can neither fork nor react to its children dying, then kill them all.
            _signal_quietly(process.pid, signal.SIGSTOP)
            children = _child_pids(process.pid)
            for pid in (process.pid, *children):
                _signal_quietly(pid, signal.SIGKILL)
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            # Until the children are gone they still hold the shared memory a restart needs.
            _wait_until(lambda: not any(_process_alive(pid) for pid in children), timeout=10, what="server exit")
        process.wait()

    def _shut_down(self, stop_signal: int) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(stop_signal)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill9()

    def _graceful_stop_signal(self) -> int:
        return signal.SIGTERM

    # Each engine says how to run its server, how to tell it is ready, and how a lost port race looks.

    def _server_argv(self) -> list[str]:
        raise NotImplementedError

    def _wait_ready(self, log_start: int) -> bool:
        """True once the server accepts connections; False if the process exited first."""
        raise NotImplementedError

    def _lost_port_race(self, log_text: str) -> bool:
        raise NotImplementedError

    def _start(self, *, keep_port: bool = False) -> None:
        """Start the server, on a fresh port unless keep_port; retries when another process took the port."""
        attempts = 20 if keep_port else 5
        for _ in range(attempts):
            if not keep_port or not self.port:
                if self.port:
                    _release_port(self.port)
                self.port = _claim_free_port()
            log_start = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            self._spawn(self._server_argv())
            if self._wait_ready(log_start):
                return
            if not self._lost_port_race(self._log_since(log_start)):
                raise RuntimeError(f"{self.engine_name} failed to start; end of {self.log_path}:\n{self._log_tail()}")
            if keep_port:
                time.sleep(0.25)  # the port's other holder may be about to let go
        raise RuntimeError(f"{self.engine_name} could not bind a loopback port after {attempts} attempts")

    def _log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def restart(self) -> None:
        """Stop (gracefully, if still running) and start again on the same port with the same data."""
        self._shut_down(self._graceful_stop_signal())
        self._start(keep_port=True)

    def stop(self, *, keep_data: bool = False) -> None:
        """Shut the server down and, unless keep_data (for a later restart()), delete its directory."""
        self._shut_down(self._graceful_stop_signal())
        if not keep_data:
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            _release_port(self.port)
            _live_servers.discard(self)

    def __enter__(self) -> _ServerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@atexit.register
def _stop_leftover_servers() -> None:
    # A crashed test run must not leave servers holding ports and /tmp space behind.
    for server in list(_live_servers):
        server.kill9()
        shutil.rmtree(server.socket_dir, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------
# PostgreSQL


def find_postgres_bindir(bindir: Optional[str] = None) -> str:
    """The directory holding initdb and postgres.

    Looks in `bindir` if given, else in $RDSPROXY_PG_BINDIR if set, else in the highest
    /usr/lib/postgresql/<version>/bin, else next to `postgres` on PATH.
    """
    if bindir is None:
        bindir = os.environ.get(PG_BINDIR_ENV) or None
    if bindir is not None:
        candidates = [bindir]
    else:
        versioned = glob.glob("/usr/lib/postgresql/*/bin")
        candidates = sorted(versioned, key=_version_key, reverse=True)
        on_path = shutil.which("postgres")
        if on_path:
            candidates.append(os.path.dirname(os.path.realpath(on_path)))
    for candidate in candidates:
        if all(os.access(os.path.join(candidate, tool), os.X_OK) for tool in ("initdb", "postgres")):
            return candidate
    searched = ", ".join(candidates) or "/usr/lib/postgresql/*/bin and PATH"
    raise RuntimeError(
        f"PostgreSQL server binaries (initdb, postgres) not found (searched {searched}): install them with "
        f"`apt-get install postgresql-15` (Debian/Ubuntu) or your system's PostgreSQL server package, "
        f"or set {PG_BINDIR_ENV} to the directory that holds them"
    )


def _version_key(bindir: str) -> tuple[int, ...]:
    version = os.path.basename(os.path.dirname(bindir))
    return tuple(int(part) for part in re.findall(r"\d+", version))


def _postgres_os_user() -> Optional[str]:
    """initdb and postgres refuse to run as root; as root they run as the `postgres` account."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError(
            "running as root, PostgreSQL needs the `postgres` OS user, which does not exist: install the "
            "postgresql package (it creates the user) or run `useradd --system postgres`"
        ) from None
    return "postgres"


_template_lock = threading.Lock()
_cluster_templates: dict[tuple[str, Optional[str]], str] = {}


def _cluster_template(bindir: str, os_user: Optional[str]) -> str:
    """A data directory made by initdb once per process; each server starts from a copy (much faster)."""
    key = (bindir, os_user)
    with _template_lock:
        if key not in _cluster_templates:
            template_dir = tempfile.mkdtemp(prefix="pgtemplate.", dir="/tmp")
            atexit.register(shutil.rmtree, template_dir, True)
            if os_user:
                shutil.chown(template_dir, os_user, os_user)
            password_file = os.path.join(template_dir, "superuser-password")
            with open(password_file, "w") as file:
                file.write(PostgresServer.superuser_password + "\n")
            if os_user:
                shutil.chown(password_file, os_user, os_user)
            data_dir = os.path.join(template_dir, "data")
            result = subprocess.run(
                [
                    os.path.join(bindir, "initdb"),
                    "--pgdata",
                    data_dir,
                    "--username",
                    PostgresServer.superuser,
                    f"--pwfile={password_file}",
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                cwd=template_dir,
                env=_client_environment(HOME=template_dir),
                timeout=CLIENT_TIMEOUT,
                **({"user": os_user, "group": os_user, "extra_groups": []} if os_user else {}),
            )
            if result.returncode != 0:
                raise RuntimeError(f"initdb failed (exit {result.returncode}): {result.stderr.strip()}")
            _cluster_templates[key] = data_dir
        return _cluster_templates[key]


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


_RESERVED_SETTINGS = ("port", "listen_addresses", "unix_socket_directories", "max_connections")


class PostgresServer(_ServerProcess):
    """A private PostgreSQL instance in /tmp/pg.XXXX, listening on 127.0.0.1:<port> and a unix socket there.

    Made by start_postgres() or make_replica(). Comes with an app user (`app_user` / `app_password`,
    scram-sha-256) that owns `app_database`.
    """

    engine_name = "PostgreSQL"
    superuser = "postgres"
    superuser_password = "postgres"
    app_user = "app"
    app_password = "app-secret"
    app_database = "app"

    def __init__(
        self,
        *,
        max_connections: int = 100,
        settings: Optional[Mapping[str, str]] = None,
        bindir: Optional[str] = None,
    ) -> None:
        reserved = sorted(set(settings or {}) & set(_RESERVED_SETTINGS))
        if reserved:
            raise ValueError(f"settings may not override {', '.join(reserved)}: rdsproxy.testing manages them")
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.bindir = find_postgres_bindir(bindir)
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        super().__init__(prefix="pg.", os_user=_postgres_os_user())
        self.data_dir = os.path.join(self.socket_dir, "data")
        self.replicas: list[PostgresServer] = []
        # user name -> pg_hba method; pg_hba.conf is rewritten from this whenever it changes.
        self._hba_methods: dict[str, str] = {}

    def __enter__(self) -> PostgresServer:
        return self

    # -- lifecycle ------------------------------------------------------------------------------------------

    def _tool(self, name: str) -> str:
        path = os.path.join(self.bindir, name)
        if os.access(path, os.X_OK):
            return path
        found = shutil.which(name)
        if found is None:
            raise RuntimeError(f"PostgreSQL client program {name} not found in {self.bindir} or on PATH")
        return found

    def _create_cluster(self) -> None:
        template = _cluster_template(self.bindir, self.os_user)
        # cp -a keeps the owner and the 0700 mode postgres insists on.
        subprocess.run(["cp", "-a", template, self.data_dir], check=True, capture_output=True)
        self._write_hba()

    def _server_settings(self) -> dict[str, str]:
        settings = {
            # fsync only matters if the OS crashes; synchronous_commit stays on, because a kill9 would
            # lose commits still in WAL buffers and failover tests rely on committed data surviving.
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "32MB",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "hot_standby": "on",
            # The default 5 s retry makes a promote that races a standby's WAL retry take 5 s.
            "wal_retrieve_retry_interval": "100ms",
            "password_encryption": "scram-sha-256",
            "logging_collector": "off",
        }
        settings.update(self.settings)
        settings.update(
            {
                "port": str(self.port),
                "listen_addresses": LOOPBACK,
                "unix_socket_directories": self.socket_dir,
                "max_connections": str(self.max_connections),
                # must stay below max_connections or the server refuses to start
                "superuser_reserved_connections": str(min(3, self.max_connections - 1)),
            }
        )
        return settings

    def _server_argv(self) -> list[str]:
        # Every setting on the command line: a replica's copied postgresql.conf must not matter.
        argv = [self._tool("postgres"), "-D", self.data_dir]
        for name, value in self._server_settings().items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def _lost_port_race(self, log_text: str) -> bool:
        return "could not bind" in log_text

    def _wait_ready(self, log_start: int) -> bool:
        """True once postmaster.pid says this process accepts connections; False if the process exited."""
        assert self._process is not None
        pid_file = os.path.join(self.data_dir, "postmaster.pid")
        deadline = time.monotonic() + START_TIMEOUT
        while self._process.poll() is None:
            try:
                with open(pid_file) as file:
                    lines = file.read().splitlines()
            except OSError:
                lines = []
            # Line 1 is the postmaster's pid (a stale file survives kill9), line 8 its status.
            if len(lines) >= 8 and lines[0].strip() == str(self._process.pid):
                if lines[7].strip() in ("ready", "standby"):
                    return True
            if time.monotonic() > deadline:
                self.kill9()
                raise TimeoutError(f"PostgreSQL on port {self.port} not ready after {START_TIMEOUT:g} s")
            time.sleep(0.02)
        return False

    def _graceful_stop_signal(self) -> int:
        return signal.SIGINT  # "fast" shutdown: ends sessions, checkpoints, exits

    # -- SQL and users --------------------------------------------------------------------------------------

    def sql(self, query: str, *, database: str = "postgres") -> str:
        """Run `query` with psql as the superuser over the unix socket; returns the unaligned, tuples-only
        output (`psql -At`) without its final newline. Raises RuntimeError with psql's error text."""
        argv = [
            self._tool("psql"),
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.socket_dir,
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            database,
            "-c",
            query,
        ]
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=_client_environment(PGCONNECT_TIMEOUT="10"),
                timeout=CLIENT_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"psql timed out after {CLIENT_TIMEOUT:g} s on port {self.port}") from None
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip() or f"psql failed with exit code {result.returncode}")
        return result.stdout.rstrip("\n")

    def create_user(
        self,
        name: str,
        password: Optional[str],
        *,
        auth: str = "scram-sha-256",
        superuser: bool = False,
        databases: Iterable[str] = (),
    ) -> None:
        """Create a login role whose password is stored for, and whose TCP logins must use, method `auth`.

        auth: "scram-sha-256", "md5" (password stored as MD5), "password" (cleartext exchange) or "trust"
        (no password needed; `password` may be None). `databases` get full rights for this user
        (CONNECT, CREATE, and the public schema). Replicas made from this server get the pg_hba line too.
        """
        if auth not in PG_AUTH_METHODS:
            raise ValueError(f"auth must be one of {', '.join(PG_AUTH_METHODS)}, got {auth!r}")
        if password is None and auth != "trust":
            raise ValueError(f"auth {auth!r} needs a password")
        if '"' in name or not name:
            raise ValueError("user names for rdsproxy.testing must be non-empty and without double quotes")
        storage = "md5" if auth == "md5" else "scram-sha-256"
        statement = f"SET password_encryption = '{storage}'; CREATE ROLE {_quote_ident(name)} LOGIN"
        if superuser:
            statement += " SUPERUSER"
        if password is not None:
            statement += f" PASSWORD {_quote_literal(password)}"
        self.sql(statement)
        for database in databases:
            self.sql(f"GRANT ALL ON DATABASE {_quote_ident(database)} TO {_quote_ident(name)}")
            self.sql(f"GRANT ALL ON SCHEMA public TO {_quote_ident(name)}", database=database)
        for server in (self, *self.replicas):
            server._hba_methods[name] = auth
            if os.path.isdir(server.data_dir):
                server._write_hba()
            if server.running:
                server._reload_hba()

    def create_database(self, name: str, owner: str) -> None:
        self.sql(f"CREATE DATABASE {_quote_ident(name)} OWNER {_quote_ident(owner)}")

    def _write_hba(self) -> None:
        # First matching line wins: per-user lines sit above the catch-all scram-sha-256 lines.
        lines = [
            "# written by rdsproxy.testing; rewritten whenever a user is created",
            "local all all trust",
            "local replication all trust",
            *(f'host all "{user}" {LOOPBACK}/32 {method}' for user, method in self._hba_methods.items()),
            f"host all all {LOOPBACK}/32 scram-sha-256",
            f"host replication all {LOOPBACK}/32 scram-sha-256",
        ]
        # Writing into the existing file keeps its owner (the postgres OS user).
        with open(os.path.join(self.data_dir, "pg_hba.conf"), "w") as hba:
            hba.write("\n".join(lines) + "\n")

    def _reload_hba(self) -> None:
        problems = self.sql("SELECT line_number || ': ' || error FROM pg_hba_file_rules WHERE error IS NOT NULL")
        if problems:
            raise RuntimeError(f"pg_hba.conf written by rdsproxy.testing is invalid: {problems}")
        self.sql("SELECT pg_reload_conf()")

    def terminate_backends(self, usename: Optional[str] = None) -> int:
        """pg_terminate_backend() every client backend (of `usename` only, if given); returns how many."""
        condition = "backend_type = 'client backend' AND pid <> pg_backend_pid()"
        if usename is not None:
            condition += f" AND usename = {_quote_literal(usename)}"
        # The MATERIALIZED CTE fences the planner: pg_terminate_backend must only ever see the chosen pids
        # (in a plain WHERE it may be evaluated before the filters, on this very session too).
        return int(
            self.sql(
                f"WITH victims AS MATERIALIZED (SELECT pid FROM pg_stat_activity WHERE {condition}) "
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM victims"
            )
        )

    def dsn(self, *, user: Optional[str] = None, password: Optional[str] = None, database: Optional[str] = None) -> str:
        """A postgresql:// URL for this server over TCP; by default the app user's, with its password."""
        if user is None:
            user, password = self.app_user, self.app_password
        credentials = quote(user, safe="")
        if password is not None:
            credentials += ":" + quote(password, safe="")
        return f"postgresql://{credentials}@{self.host}:{self.port}/{quote(database or self.app_database)}"

    # -- replication ----------------------------------------------------------------------------------------

    def make_replica(self) -> PostgresServer:
        """A started hot standby streaming from this server (pg_basebackup -R), with the same settings."""
        replica = PostgresServer(max_connections=self.max_connections, settings=self.settings, bindir=self.bindir)
        try:
            replica._run_as_os_user(
                [
                    self._tool("pg_basebackup"),
                    "--host",
                    self.socket_dir,
                    "--port",
                    str(self.port),
                    "--username",
                    self.superuser,
                    "--pgdata",
                    replica.data_dir,
                    "--write-recovery-conf",
                    "--wal-method=stream",
                    "--checkpoint=fast",
                    "--no-sync",
                ],
                what="pg_basebackup",
            )
            replica._hba_methods = dict(self._hba_methods)
            replica._write_hba()
            replica._start()
        except BaseException:
            replica.stop()
            raise
        self.replicas.append(replica)
        return replica

    def wait_caught_up(self, replica: PostgresServer, *, timeout: float = 30.0) -> None:
        """Block until `replica` has replayed everything this server has written so far."""
        lsn = self.sql("SELECT pg_current_wal_lsn()")
        _wait_until(
            lambda: replica.sql(f"SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn") == "t",
            timeout=timeout,
            what=f"replica on port {replica.port} to replay up to {lsn}",
        )

    def promote(self) -> None:
        """Turn this standby into a writable primary; returns once promotion has finished."""
        if self.sql("SELECT pg_promote(wait => true, wait_seconds => 60)") != "t":
            raise RuntimeError(f"promotion of the replica on port {self.port} did not finish within 60 s")

    def is_replica(self) -> bool:
        return self.sql("SELECT pg_is_in_recovery()") == "t"


def start_postgres(
    *,
    max_connections: int = 100,
    settings: Optional[Mapping[str, str]] = None,
    bindir: Optional[str] = None,
) -> PostgresServer:
    """Start a throwaway PostgreSQL on 127.0.0.1 with the app user and database; stop() deletes it.

    `settings` are extra server settings (name -> value, e.g. {"log_statement": "all"}); `bindir`
    overrides the binary search (see find_postgres_bindir).
    """
    server = PostgresServer(max_connections=max_connections, settings=settings, bindir=bindir)
    try:
        server._create_cluster()
        server._start()
        server.create_user(server.app_user, server.app_password)
        server.create_database(server.app_database, owner=server.app_user)
    except BaseException:
        server.stop()
        raise
    return server


# ----------------------------------------------------------------------------------------------------------
# MariaDB

MARIADB_BINDIR_ENV = "RDSPROXY_MARIADB_BINDIR"
MARIADB_AUTH_PLUGINS = ("mysql_native_password", "ed25519")
MARIADB_MIN_CONNECTIONS = 10  # mariadbd silently raises anything lower to 10
_MARIADB_TOOLS = ("mariadbd", "mariadb-install-db", "mariadb")
_MARIADB_RESERVED_SETTINGS = (
    "port",
    "socket",
    "bind-address",
    "datadir",
    "max-connections",
    "server-id",
    "log-bin",
    "user",
    "pid-file",
    "read-only",
)
# Replica threads, the binlog sender and killed sessions are not client connections to kill.
_MARIADB_NON_CLIENT_COMMANDS = ("Daemon", "Binlog Dump", "Slave_IO", "Slave_SQL", "Slave_worker", "Killed")


def find_mariadb_tools(bindir: Optional[str] = None) -> dict[str, str]:
    """Paths of mariadbd, mariadb-install-db and the mariadb client, by program name.

    Looks in `bindir` if given, else in $RDSPROXY_MARIADB_BINDIR if set, else on PATH and in /usr/sbin and
    /usr/bin (mariadbd lives in /usr/sbin, which is not on every user's PATH).
    """
    if bindir is None:
        bindir = os.environ.get(MARIADB_BINDIR_ENV) or None
    if bindir is not None:
        search_path = bindir
    else:
        search_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
    tools = {name: shutil.which(name, path=search_path) for name in _MARIADB_TOOLS}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        searched = bindir if bindir is not None else "PATH, /usr/sbin and /usr/bin"
        raise RuntimeError(
            f"MariaDB programs not found: {', '.join(missing)} (searched {searched}): install them with "
            f"`apt-get install mariadb-server` (Debian/Ubuntu; it brings the mariadb client too) or your system's "
            f"MariaDB server package, or set {MARIADB_BINDIR_ENV} to the directory that holds them"
        )
    return {name: path for name, path in tools.items() if path is not None}


def _quote_mariadb_literal(text: str) -> str:
    # Backslash escapes are on by default (no NO_BACKSLASH_ESCAPES in sql_mode), so double them too.
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _quote_mariadb_ident(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def _mariadb_account(name: str) -> str:
    return f"{_quote_mariadb_literal(name)}@'%'"


_mariadb_template_lock = threading.Lock()
_mariadb_templates: dict[tuple[str, str], str] = {}
_mariadb_server_ids = itertools.count(1)  # unique within this process, where every replication pair lives

# Sizes shared by mariadb-install-db and mariadbd: the redo log made for the template must fit the server.
_MARIADB_INNODB_SIZES = ("--innodb-buffer-pool-size=32M", "--innodb-log-file-size=16M")


def _mariadb_template(tools: Mapping[str, str]) -> str:
    """A data directory made by mariadb-install-db once per process; each server starts from a copy.

    It holds the system tables, root@localhost without a password, and the replication account. Replicas
    start from the same copy, so everything a primary does after its start reaches them through the binlog.
    """
    key = (tools["mariadb-install-db"], tools["mariadbd"])
    with _mariadb_template_lock:
        if key not in _mariadb_templates:
            template_dir = tempfile.mkdtemp(prefix="mytemplate.", dir="/tmp")
            atexit.register(shutil.rmtree, template_dir, True)
            setup_file = os.path.join(template_dir, "setup.sql")
            with open(setup_file, "w") as file:
                # Bootstrap runs without grant tables: FLUSH PRIVILEGES loads them so CREATE USER works.
                # The root@<hostname> rows only produce warnings under --skip-name-resolve.
                file.write(
                    "DELETE FROM mysql.global_priv WHERE Host NOT IN ('localhost', '127.0.0.1', '::1');\n"
                    "DELETE FROM mysql.proxies_priv WHERE Host NOT IN ('localhost', '127.0.0.1', '::1');\n"
                    "FLUSH PRIVILEGES;\n"
                    f"CREATE USER {_mariadb_account(MariaDBServer.replication_user)} IDENTIFIED VIA "
                    "mysql_native_password USING PASSWORD("
                    f"{_quote_mariadb_literal(MariaDBServer.replication_password)});\n"
                    "GRANT REPLICATION SLAVE, REPLICATION CLIENT ON *.* TO "
                    f"{_mariadb_account(MariaDBServer.replication_user)};\n"
                )
            data_dir = os.path.join(template_dir, "data")
            argv = [
                tools["mariadb-install-db"],
                "--no-defaults",
                f"--datadir={data_dir}",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--skip-name-resolve",
                f"--extra-file={setup_file}",
                *_MARIADB_INNODB_SIZES,
            ]
            if os.geteuid() == 0:
                argv.append("--user=root")
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                cwd=template_dir,
                env=_client_environment(HOME=template_dir),
                timeout=CLIENT_TIMEOUT,
            )
            if result.returncode != 0:
                output = (result.stdout + result.stderr).strip()
                raise RuntimeError(f"mariadb-install-db failed (exit {result.returncode}): {output}")
            _mariadb_templates[key] = data_dir
        return _mariadb_templates[key]


class MariaDBServer(_ServerProcess):
    """A private MariaDB instance in /tmp/my.XXXX, listening on 127.0.0.1:<port> and a unix socket there.

    Made by start_mariadb() or make_replica(). Comes with an app user (`app_user` / `app_password`,
    mysql_native_password) with all rights on `app_database`. The superuser is root without a password,
    reachable over the unix socket (sql()). Every server writes a binlog, so any of them can feed a replica.

    MariaDB admits max_connections + 1 sessions: the extra one is kept for a user with SUPER (as root is),
    so sql() still works when ordinary users have used up max_connections.
    """

    engine_name = "MariaDB"
    superuser = "root"
    app_user = "app"
    app_password = "app-secret"
    app_database = "app"
    replication_user = "replicator"
    replication_password = "replicator-secret"

    def __init__(
        self,
        *,
        max_connections: int = 200,
        settings: Optional[Mapping[str, str]] = None,
        bindir: Optional[str] = None,
    ) -> None:
        reserved = sorted({name.replace("_", "-") for name in settings or {}} & set(_MARIADB_RESERVED_SETTINGS))
        if reserved:
            raise ValueError(f"settings may not override {', '.join(reserved)}: rdsproxy.testing manages them")
        if max_connections < MARIADB_MIN_CONNECTIONS:
            raise ValueError(
                f"max_connections must be at least {MARIADB_MIN_CONNECTIONS} (MariaDB's minimum), got {max_connections}"
            )
        self.tools = find_mariadb_tools(bindir)
        self.max_connections = max_connections
        self.settings = dict(settings or {})
        self._bindir = bindir
        # mariadbd runs as whoever starts it (with --user=root when that is root): no OS user switch.
        super().__init__(prefix="my.", os_user=None)
        self.data_dir = os.path.join(self.socket_dir, "data")
        self.socket_path = os.path.join(self.socket_dir, "mariadb.sock")
        self.server_id = next(_mariadb_server_ids)
        self.replicas: list[MariaDBServer] = []
        self._read_only = False  # replicas start read-only; promote() clears it for later restarts too

    def __enter__(self) -> MariaDBServer:
        return self

    # -- lifecycle ------------------------------------------------------------------------------------------

    def _create_data_dir(self) -> None:
        subprocess.run(["cp", "-a", _mariadb_template(self.tools), self.data_dir], check=True, capture_output=True)

    def _server_argv(self) -> list[str]:
        argv = [
            self.tools["mariadbd"],
            "--no-defaults",
            # Speed over durability against an OS crash; committed data still survives kill9 of the server
            # (flush-log-at-trx-commit=2 hands the redo log to the OS at every commit).
            "--innodb-flush-log-at-trx-commit=2",
            "--sync-binlog=0",
            "--innodb-doublewrite=0",
            *_MARIADB_INNODB_SIZES,
            "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",  # the default writes 12 MB at every start
            "--innodb-use-native-aio=0",  # many servers at once would exhaust the machine's aio contexts
            "--aria-pagecache-buffer-size=8M",
            "--key-buffer-size=1M",
            "--skip-name-resolve",
            "--plugin-load-add=auth_ed25519",  # on every server: a replica must apply ed25519 users too
            "--log-slave-updates",
            "--binlog-format=ROW",
            "--relay-log=relay-bin",  # the default name follows the host name
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_general_ci",
        ]
        argv += [f"--{name}={value}" for name, value in self.settings.items()]
        argv += [
            f"--datadir={self.data_dir}",
            f"--socket={self.socket_path}",
            f"--port={self.port}",
            f"--bind-address={LOOPBACK}",
            f"--pid-file={os.path.join(self.socket_dir, 'mariadbd.pid')}",
            f"--server-id={self.server_id}",
            "--log-bin=binlog",
            f"--max-connections={self.max_connections}",
            f"--read-only={int(self._read_only)}",
        ]
        if os.geteuid() == 0:
            argv.append("--user=root")  # mariadbd refuses to run as root without it
        return argv

    def _wait_ready(self, log_start: int) -> bool:
        # Without --log-error mariadbd logs to stderr, which _spawn sends to our log file.
        assert self._process is not None
        deadline = time.monotonic() + START_TIMEOUT
        while self._process.poll() is None:
            if "ready for connections" in self._log_since(log_start):
                return True
            if time.monotonic() > deadline:
                self.kill9()
                raise TimeoutError(f"MariaDB on port {self.port} not ready after {START_TIMEOUT:g} s")
            time.sleep(0.02)
        return False

    def _lost_port_race(self, log_text: str) -> bool:
        return "Address already in use" in log_text

    # -- SQL and users --------------------------------------------------------------------------------------

    def sql(self, query: str, *, database: Optional[str] = None) -> str:
        """Run `query` (one or more statements) with the mariadb client as root over the unix socket.

        Returns the batch output without column names (`mariadb -N -B`: tab-separated, one row a line)
        and without its final newline. Raises RuntimeError with the client's error text.
        """
        return self._client(query, "--batch", "--skip-column-names", database=database)

    def _client(self, query: str, *output_options: str, database: Optional[str] = None) -> str:
        argv = [
            self.tools["mariadb"],
            "--no-defaults",
            "--protocol=socket",
            f"--socket={self.socket_path}",
            f"--user={self.superuser}",
            "--connect-timeout=10",
            *output_options,
            f"--execute={query}",
        ]
        if database is not None:
            argv.append(f"--database={database}")
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                env=_client_environment(),
                timeout=CLIENT_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"mariadb timed out after {CLIENT_TIMEOUT:g} s on port {self.port}") from None
        if result.returncode != 0:
            raise RuntimeError(result.stderr.strip() or f"mariadb failed with exit code {result.returncode}")
        return result.stdout.rstrip("\n")

    def create_user(
        self,
        name: str,
        password: Optional[str],
        *,
        plugin: str = "mysql_native_password",
        databases: Iterable[str] = (),
    ) -> None:
        """Create `name`@'%' authenticated by `plugin`, with all rights on each of `databases`.

        plugin: "mysql_native_password" or "ed25519" (MariaDB 10.11 has no caching_sha2_password server
        plugin). A password of None means none at all (mysql_native_password only). Replicas get the user
        through replication.
        """
        if plugin not in MARIADB_AUTH_PLUGINS:
            hint = " (MariaDB has no caching_sha2_password server plugin)" if plugin == "caching_sha2_password" else ""
            raise ValueError(f"plugin must be one of {', '.join(MARIADB_AUTH_PLUGINS)}{hint}, got {plugin!r}")
        if password is None and plugin != "mysql_native_password":
            raise ValueError(f"plugin {plugin!r} needs a password")
        if not name:
            raise ValueError("user names for rdsproxy.testing must be non-empty")
        statements = [f"CREATE USER {_mariadb_account(name)} IDENTIFIED VIA {plugin}"]
        if password is not None:
            statements[0] += f" USING PASSWORD({_quote_mariadb_literal(password)})"
        statements += [f"GRANT ALL ON {_quote_mariadb_ident(db)}.* TO {_mariadb_account(name)}" for db in databases]
        self.sql(";\n".join(statements))

    def create_database(self, name: str, owner: Optional[str] = None) -> None:
        """Create database `name`; `owner`, if given, gets all rights on it."""
        statement = f"CREATE DATABASE {_quote_mariadb_ident(name)}"
        if owner is not None:
            statement += f";\nGRANT ALL ON {_quote_mariadb_ident(name)}.* TO {_mariadb_account(owner)}"
        self.sql(statement)

    def kill_connections(self, user: Optional[str] = None) -> int:
        """KILL CONNECTION every client session (of `user` only, if given); returns how many were killed.

        Replication threads and the session running this are left alone.
        """
        excluded = ", ".join(_quote_mariadb_literal(command) for command in _MARIADB_NON_CLIENT_COMMANDS)
        condition = f"ID <> CONNECTION_ID() AND USER <> 'system user' AND COMMAND NOT IN ({excluded})"
        if user is not None:
            condition += f" AND USER = {_quote_mariadb_literal(user)}"
        killed = 0
        for session_id in self.sql(f"SELECT ID FROM information_schema.PROCESSLIST WHERE {condition}").split():
            try:
                self.sql(f"KILL CONNECTION {int(session_id)}")
            except RuntimeError as exc:
                if "Unknown thread id" not in str(exc):  # it ended on its own meanwhile
                    raise
            else:
                killed += 1
        return killed

    # -- replication ----------------------------------------------------------------------------------------

    def make_replica(self) -> MariaDBServer:
        """A started, read-only replica of this server (GTID replication from the start of its binlog),
        with the same settings, caught up before it is returned."""
        replica = MariaDBServer(max_connections=self.max_connections, settings=self.settings, bindir=self._bindir)
        replica._read_only = True
        try:
            replica._create_data_dir()
            replica._start()
            replica.sql(
                f"CHANGE MASTER TO MASTER_HOST='{LOOPBACK}', MASTER_PORT={self.port}, "
                f"MASTER_USER={_quote_mariadb_literal(self.replication_user)}, "
                f"MASTER_PASSWORD={_quote_mariadb_literal(self.replication_password)}, "
                "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1;\nSTART SLAVE"
            )
            self.wait_caught_up(replica)
        except BaseException:
            replica.stop()
            raise
        self.replicas.append(replica)
        return replica

    def wait_caught_up(self, replica: MariaDBServer, *, timeout: float = 30.0) -> None:
        """Block until `replica` has applied everything this server has written to its binlog so far."""
        position = self.sql("SELECT @@global.gtid_binlog_pos")
        # MASTER_GTID_WAIT returns 0 once the replica got there, -1 on timeout.
        reached = replica.sql(f"SELECT MASTER_GTID_WAIT({_quote_mariadb_literal(position)}, {timeout:g})")
        if reached != "0":
            status = replica._client("SHOW SLAVE STATUS", "--vertical").splitlines()
            wanted = ("Slave_IO_Running:", "Slave_SQL_Running:", "Last_IO_Error:", "Last_SQL_Error:")
            details = "; ".join(line.strip() for line in status if line.strip().startswith(wanted))
            details = details or "replication is not configured"
            raise TimeoutError(
                f"replica on port {replica.port} did not reach GTID {position!r} within {timeout:g} s: {details}"
            )

    def promote(self) -> None:
        """Turn this replica into a writable primary: stop and forget replication, clear read_only."""
        self.sql("STOP SLAVE;\nRESET SLAVE ALL;\nSET GLOBAL read_only = 0")
        self._read_only = False

    def is_replica(self) -> bool:
        # read_only on its own: combined with a table read in one SELECT it was seen to report 0 (10.11).
        return self.sql("SELECT @@global.read_only") == "1" or self.sql("SHOW SLAVE STATUS") != ""


def start_mariadb(
    *,
    max_connections: int = 200,
    settings: Optional[Mapping[str, str]] = None,
    bindir: Optional[str] = None,
) -> MariaDBServer:
    """Start a throwaway MariaDB on 127.0.0.1 with the app user and database; stop() deletes it.

    `settings` are extra server options (name -> value, e.g. {"wait_timeout": "60"}, passed as
    --name=value); `bindir` overrides the binary search (see find_mariadb_tools).
    """
    server = MariaDBServer(max_connections=max_connections, settings=settings, bindir=bindir)
    try:
        server._create_data_dir()
        server._start()
        server.create_database(server.app_database)
        server.create_user(server.app_user, server.app_password, databases=[server.app_database])
    except BaseException:
        server.stop()
        raise
    return server


# ----------------------------------------------------------------------------------------------------------
# In-process proxy


def proxy_config_for(server: Union[PostgresServer, MariaDBServer], **target_group_overrides: Any) -> ProxyConfig:
    """A proxy configuration in front of `server`: one endpoint on 127.0.0.1:<ephemeral>, the app user.

    The engine family follows the server (POSTGRESQL or MYSQL), and with it the app user's default
    client_password_auth_type (POSTGRES_SCRAM_SHA_256 or MYSQL_NATIVE_PASSWORD). Keyword arguments override
    TargetGroupConfig fields, e.g. targets=[primary.address(), replica.address()] or connection_borrow_timeout=1.
    """
    engine_family = "MYSQL" if isinstance(server, MariaDBServer) else "POSTGRESQL"
    target_group = {"targets": [server.address()], "database": server.app_database, **target_group_overrides}
    return ProxyConfig(
        proxy=ProxySettings(name="rdsproxy-test", engine_family=engine_family),
        endpoints=[EndpointConfig(listen=f"{LOOPBACK}:0")],
        target_group=TargetGroupConfig(**target_group),
        auth=[AuthConfig(username=server.app_user, password=server.app_password)],
        source=f"proxy_config_for({server.address()})",
    )


@asynccontextmanager
async def running_proxy(config: ProxyConfig) -> AsyncIterator[Proxy]:
    """`async with running_proxy(config) as proxy:` a started rdsproxy.Proxy, closed (drained) on exit."""
    from rdsproxy import Proxy  # imported late: rdsproxy.testing must not need the whole proxy to load

    async with Proxy(config) as proxy:
        yield proxy

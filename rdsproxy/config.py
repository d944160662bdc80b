"""The TOML configuration: dataclasses named after RDS Proxy's parameters, validated at load time."""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import json
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, Optional

from rdsproxy.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python < 3.11 only
    import tomli as tomllib

ENGINE_FAMILIES = ("POSTGRESQL", "MYSQL")
TARGET_ROLES = ("READ_WRITE", "READ_ONLY")
IAM_AUTH_MODES = ("DISABLED", "REQUIRED")
BACKEND_TLS_MODES = ("disable", "require", "verify-full")
SESSION_PINNING_FILTERS = ("EXCLUDE_VARIABLE_SETS",)
CLIENT_PASSWORD_AUTH_TYPES = {
    "POSTGRESQL": ("POSTGRES_SCRAM_SHA_256", "POSTGRES_MD5"),
    "MYSQL": ("MYSQL_NATIVE_PASSWORD", "MYSQL_CACHING_SHA2_PASSWORD"),
}
SECRET_SCHEMES = ("file", "env", "aws-secretsmanager")
MAX_IDLE_CLIENT_TIMEOUT = 28800.0  # RDS Proxy's own ceiling (8 hours)
MAX_CONNECTION_BORROW_TIMEOUT = 3600.0


@dataclass
class ProxySettings:
    """The `[proxy]` table: proxy-wide settings."""

    name: str = "rdsproxy"
    engine_family: str = "POSTGRESQL"
    require_tls: bool = False
    idle_client_timeout: float = 1800.0
    debug_logging: bool = False
    tls_certificate: Optional[str] = None
    tls_private_key: Optional[str] = None
    admin_listen: Optional[str] = None


@dataclass
class EndpointConfig:
    """One `[[endpoints]]` entry: a listening address and the role of the targets it reaches."""

    name: str = "default"
    listen: str = "127.0.0.1:6432"
    target_role: str = "READ_WRITE"


@dataclass
class TargetGroupConfig:
    """The `[target_group]` table: the database servers and how the pool uses them."""

    targets: list[str]
    database: str = "postgres"
    max_connections_percent: int = 100
    # None: RDS Proxy's default of 50, capped at max_connections_percent.
    max_idle_connections_percent: Optional[int] = None
    connection_borrow_timeout: float = 120.0
    init_query: str = ""
    session_pinning_filters: list[str] = field(default_factory=list)
    backend_tls: str = "disable"
    health_check_interval: float = 1.0
    # rdsproxy extension: how long an idle backend above the idle limit lingers before it is closed.
    idle_backend_timeout: float = 60.0


@dataclass
class AuthConfig:
    """One `[[auth]]` entry: a database user the proxy accepts, with where its password comes from.

    `client_password_auth_type` left as None becomes the engine family's default
    (POSTGRES_SCRAM_SHA_256 or MYSQL_NATIVE_PASSWORD) when the ProxyConfig is validated.
    """

    username: str
    password: Optional[str] = field(default=None, repr=False)
    secret: Optional[str] = None
    iam_auth: str = "DISABLED"
    client_password_auth_type: Optional[str] = None

    def __post_init__(self) -> None:
        self._bind(source="<dict>", key="auth", base_dir=None)

    def _bind(self, *, source: str, key: str, base_dir: Optional[str]) -> None:
        # Where this entry came from, so secret errors can name it and relative secret files resolve
        # against the config file's directory. Plain attributes: not part of equality or repr.
        self._source = source
        self._key = key
        self._base_dir = base_dir

    def resolve_password(self) -> str:
        """The password: the literal one, or the secret read now (so a rotated secret is picked up).

        Raises ConfigError naming this entry and the problem, never the password or secret contents.
        """
        if self.password is not None:
            return self.password
        if not isinstance(self.secret, str):
            self._secret_error("auth", "has neither password nor secret")
        scheme, _, reference = self.secret.partition(":")
        if scheme == "file":
            path = os.path.join(self._base_dir, reference) if self._base_dir else reference
            origin = f"secret file {path!r}"
            try:
                with open(path, "rb") as secret_file:
                    raw = secret_file.read()
            except OSError as exc:
                self._secret_error("secret", f"cannot read {origin}: {exc.strerror or type(exc).__name__}")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                self._secret_error("secret", f"{origin} is not UTF-8 text")
        elif scheme == "env":
            origin = f"environment variable {reference}"
            env_value = os.environ.get(reference)
            if env_value is None:
                self._secret_error("secret", f"{origin} is not set")
            text = env_value
        elif scheme == "aws-secretsmanager":
            self._secret_error(
                "secret", "aws-secretsmanager secrets are not supported in this build (use file: or env:)"
            )
        else:
            self._secret_error("secret", f"must start with one of {_quoted(s + ':' for s in SECRET_SCHEMES)}")
        return self._password_from_secret_json(text, origin)

    def _password_from_secret_json(self, text: str, origin: str) -> str:
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            # exc.msg can quote characters of the document, so only the position is reported.
            self._secret_error("secret", f"{origin} is not valid JSON (line {exc.lineno}, column {exc.colno})")
        if not isinstance(document, dict):
            self._secret_error("secret", f"{origin} must hold a JSON object with username and password")
        password = document.get("password")
        if not isinstance(password, str) or not password:
            self._secret_error("secret", f'{origin} has no non-empty string "password"')
        secret_username = document.get("username")
        if secret_username is not None and secret_username != self.username:
            self._secret_error("secret", f"{origin} holds credentials for another username")
        return password

    def _secret_error(self, key: str, reason: str) -> NoReturn:
        where = self._key if key == "auth" else f"{self._key}.{key}"
        raise ConfigError(f"{self._source}: {where} (user {self.username!r}): {reason}")


@dataclass
class ProxyConfig:
    """The whole configuration; validated on construction, whether loaded from TOML or built in Python.

    `base_dir` is the directory relative secret files and TLS files are resolved against (the config
    file's directory when loaded with from_toml).
    """

    target_group: TargetGroupConfig
    auth: list[AuthConfig]
    proxy: ProxySettings = field(default_factory=ProxySettings)
    endpoints: list[EndpointConfig] = field(default_factory=lambda: [EndpointConfig()])
    source: str = field(default="<dict>", compare=False)
    base_dir: Optional[str] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_toml(cls, path: str | os.PathLike[str]) -> ProxyConfig:
        """Load and validate a TOML file; every problem raises ConfigError naming the file."""
        source = os.fspath(path)
        try:
            with open(source, "rb") as config_file:
                raw = config_file.read()
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read the configuration file: {exc.strerror}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(f"{source}: the configuration file is not UTF-8 text") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: invalid TOML: {exc}") from None
        return cls.from_dict(data, source=source, base_dir=os.path.dirname(os.path.abspath(source)))

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], *, source: str = "<dict>", base_dir: Optional[str] = None
    ) -> ProxyConfig:
        """Build and validate a configuration from a dict shaped like the TOML file."""
        check = _Checker(source)
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: the configuration must be a table, got {_type_name(data)}")
        check.known_keys(data, _SECTIONS, prefix="")
        proxy = _build(ProxySettings, data.get("proxy", {}), "proxy", check)
        if "endpoints" in data:
            endpoint_tables = check.array_of_tables(data["endpoints"], "endpoints")
            endpoints = [
                _build(EndpointConfig, table, f"endpoints[{index}]", check)
                for index, table in enumerate(endpoint_tables)
            ]
        else:
            endpoints = [EndpointConfig()]
        if "target_group" not in data:
            check.fail("target_group", "missing: a [target_group] table with its targets is required")
        target_group = _build(TargetGroupConfig, data["target_group"], "target_group", check)
        if "auth" not in data:
            check.fail("auth", "missing: at least one [[auth]] entry is required")
        auth = [
            _build(AuthConfig, table, f"auth[{index}]", check)
            for index, table in enumerate(check.array_of_tables(data["auth"], "auth"))
        ]
        return cls(
            target_group=target_group,
            auth=auth,
            proxy=proxy,
            endpoints=endpoints,
            source=source,
            base_dir=base_dir,
        )

    def user(self, name: str) -> Optional[AuthConfig]:
        """The auth entry for `name`, or None if the proxy does not know that user."""
        for entry in self.auth:
            if entry.username == name:
                return entry
        return None

    def validate(self) -> None:
        """Check every value and cross-reference; raises ConfigError naming source, key and reason.

        Also normalises in place: integer seconds become floats, relative TLS file paths become absolute
        (against base_dir), and an unset client_password_auth_type becomes the engine family's default.
        """
        check = _Checker(self.source)
        _validate_proxy(self.proxy, self.base_dir, check)
        _validate_endpoints(self.endpoints, self.proxy, check)
        _validate_target_group(self.target_group, check)
        _validate_auth(self.auth, self.proxy, check)
        for index, entry in enumerate(self.auth):
            entry._bind(source=self.source, key=f"auth[{index}]", base_dir=self.base_dir)


_SECTIONS = {
    "proxy": ProxySettings,
    "endpoints": EndpointConfig,
    "target_group": TargetGroupConfig,
    "auth": AuthConfig,
}
_HOSTNAME = re.compile(r"[A-Za-z0-9_.-]+\Z")
_PORT = re.compile(r"[0-9]{1,5}\Z")


def parse_host_port(text: str, *, what: str, allow_zero: bool = False) -> tuple[str, int]:
    """Split "host:port" or "[ipv6]:port" into (host, port); port 0 only with allow_zero (ephemeral listen).

    Raises ConfigError("<what>: <reason>"), so `what` should name the setting, e.g. "admin_listen".
    """
    try:
        return _split_host_port(text, allow_zero=allow_zero)
    except ValueError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _split_host_port(text: object, *, allow_zero: bool) -> tuple[str, int]:
    lowest = 0 if allow_zero else 1
    expected = f"must be 'host:port' (IPv6 as '[::1]:port') with a port from {lowest} to 65535"
    if not isinstance(text, str):
        raise ValueError(f"{expected}, got {_describe(text)}")
    if text.startswith("["):
        host, bracket_colon, port_text = text[1:].partition("]:")
        try:
            valid_host = bool(bracket_colon) and ipaddress.ip_address(host.split("%", 1)[0]).version == 6
        except ValueError:
            valid_host = False
    else:
        host, colon, port_text = text.rpartition(":")
        valid_host = bool(colon) and _HOSTNAME.match(host) is not None
    if not valid_host or not _PORT.match(port_text) or not lowest <= int(port_text) <= 65535:
        raise ValueError(f"{expected}, got {_describe(text)}")
    return host, int(port_text)


def _build(cls: type, table: object, path: str, check: _Checker) -> Any:
    if not isinstance(table, Mapping):
        check.fail(path, f"must be a table, got {_describe(table)}")
    init_fields = [f for f in dataclasses.fields(cls) if f.init]
    check.known_keys(table, {f.name: cls for f in init_fields}, prefix=f"{path}.")
    for f in init_fields:
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if required and f.name not in table:
            check.fail(f"{path}.{f.name}", "missing required key")
    # Copy arrays so the config never aliases the caller's data.
    return cls(**{key: list(value) if isinstance(value, list) else value for key, value in table.items()})


def _validate_proxy(settings: ProxySettings, base_dir: Optional[str], check: _Checker) -> None:
    if not isinstance(settings, ProxySettings):
        check.fail("proxy", f"must be a ProxySettings, got {type(settings).__name__}")
    check.string(settings.name, "proxy.name")
    check.choice(settings.engine_family, "proxy.engine_family", ENGINE_FAMILIES)
    check.boolean(settings.require_tls, "proxy.require_tls")
    settings.idle_client_timeout = check.number(
        settings.idle_client_timeout, "proxy.idle_client_timeout", at_most=MAX_IDLE_CLIENT_TIMEOUT
    )
    check.boolean(settings.debug_logging, "proxy.debug_logging")
    for key in ("tls_certificate", "tls_private_key"):
        path = getattr(settings, key)
        check.string(path, f"proxy.{key}", optional=True)
        if path is None:
            continue
        if base_dir is not None and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
            setattr(settings, key, path)
        if not os.path.isfile(path):
            check.fail(f"proxy.{key}", f"no such file: {path}")
    if settings.tls_certificate is not None and settings.tls_private_key is None:
        check.fail("proxy.tls_private_key", "missing: tls_certificate is set, so tls_private_key is needed too")
    if settings.tls_private_key is not None and settings.tls_certificate is None:
        check.fail("proxy.tls_certificate", "missing: tls_private_key is set, so tls_certificate is needed too")
    if settings.require_tls and settings.tls_certificate is None:
        check.fail("proxy.require_tls", "true needs client-facing TLS: set tls_certificate and tls_private_key")
    if settings.admin_listen is not None:
        check.host_port(settings.admin_listen, "proxy.admin_listen", allow_zero=True)


def _validate_endpoints(endpoints: list[EndpointConfig], settings: ProxySettings, check: _Checker) -> None:
    if not isinstance(endpoints, list) or not endpoints:
        check.fail("endpoints", "must be a non-empty list of endpoints")
    names: dict[str, int] = {}
    # Port 0 binds a fresh ephemeral port each time, so only fixed ports can collide.
    bound: dict[tuple[str, int], str] = {}
    if settings.admin_listen is not None:
        host, port = _split_host_port(settings.admin_listen, allow_zero=True)
        if port:
            bound[(host, port)] = "proxy.admin_listen"
    for index, endpoint in enumerate(endpoints):
        path = f"endpoints[{index}]"
        if not isinstance(endpoint, EndpointConfig):
            check.fail(path, f"must be an EndpointConfig, got {type(endpoint).__name__}")
        check.string(endpoint.name, f"{path}.name")
        if endpoint.name in names:
            check.fail(f"{path}.name", f"{endpoint.name!r} is already used by endpoints[{names[endpoint.name]}]")
        names[endpoint.name] = index
        host, port = check.host_port(endpoint.listen, f"{path}.listen", allow_zero=True)
        for (other_host, other_port), other_path in bound.items():
            if port and port == other_port and (host == other_host or _WILDCARD_HOSTS & {host, other_host}):
                check.fail(f"{path}.listen", f"{endpoint.listen!r} collides with {other_path}")
        if port:
            bound[(host, port)] = f"{path}.listen"
        check.choice(endpoint.target_role, f"{path}.target_role", TARGET_ROLES)


_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})


def _validate_target_group(group: TargetGroupConfig, check: _Checker) -> None:
    if not isinstance(group, TargetGroupConfig):
        check.fail("target_group", f"must be a TargetGroupConfig, got {type(group).__name__}")
    if not isinstance(group.targets, list) or not group.targets:
        check.fail(
            "target_group.targets",
            f"must be a non-empty array of 'host:port', got {_describe(group.targets)}",
        )
    seen: dict[tuple[str, int], int] = {}
    for index, target in enumerate(group.targets):
        address = check.host_port(target, f"target_group.targets[{index}]", allow_zero=False)
        if address in seen:
            check.fail(f"target_group.targets[{index}]", f"{target!r} is already listed as targets[{seen[address]}]")
        seen[address] = index
    check.string(group.database, "target_group.database")
    check.integer(group.max_connections_percent, "target_group.max_connections_percent", 1, 100)
    if group.max_idle_connections_percent is None and isinstance(group.max_connections_percent, int):
        group.max_idle_connections_percent = min(50, group.max_connections_percent)
    check.integer(
        group.max_idle_connections_percent,
        "target_group.max_idle_connections_percent",
        0,
        group.max_connections_percent,
        upper_name="max_connections_percent",
    )
    group.connection_borrow_timeout = check.number(
        group.connection_borrow_timeout,
        "target_group.connection_borrow_timeout",
        at_most=MAX_CONNECTION_BORROW_TIMEOUT,
    )
    check.string(group.init_query, "target_group.init_query", non_empty=False)
    if not isinstance(group.session_pinning_filters, list):
        check.fail(
            "target_group.session_pinning_filters",
            f"must be an array, got {_describe(group.session_pinning_filters)}",
        )
    for index, pinning_filter in enumerate(group.session_pinning_filters):
        check.choice(pinning_filter, f"target_group.session_pinning_filters[{index}]", SESSION_PINNING_FILTERS)
    check.choice(group.backend_tls, "target_group.backend_tls", BACKEND_TLS_MODES)
    group.health_check_interval = check.number(group.health_check_interval, "target_group.health_check_interval")
    group.idle_backend_timeout = check.number(group.idle_backend_timeout, "target_group.idle_backend_timeout")


def _validate_auth(entries: list[AuthConfig], settings: ProxySettings, check: _Checker) -> None:
    if not isinstance(entries, list) or not entries:
        check.fail("auth", "at least one [[auth]] entry is required")
    usernames: dict[str, int] = {}
    allowed_auth_types = CLIENT_PASSWORD_AUTH_TYPES[settings.engine_family]
    for index, entry in enumerate(entries):
        path = f"auth[{index}]"
        if not isinstance(entry, AuthConfig):
            check.fail(path, f"must be an AuthConfig, got {type(entry).__name__}")
        check.string(entry.username, f"{path}.username")
        if entry.username in usernames:
            check.fail(
                f"{path}.username",
                f"{entry.username!r} is already configured in auth[{usernames[entry.username]}]",
            )
        usernames[entry.username] = index
        check.string(entry.password, f"{path}.password", optional=True, sensitive=True)
        check.string(entry.secret, f"{path}.secret", optional=True, sensitive=True)
        if (entry.password is None) == (entry.secret is None):
            check.fail(path, "set exactly one of password or secret")
        if entry.secret is not None:
            scheme, colon, reference = entry.secret.partition(":")
            # The value is not echoed: a password pasted here by mistake must not reach the logs.
            if not colon or scheme not in SECRET_SCHEMES or not reference:
                check.fail(
                    f"{path}.secret",
                    f"must be one of {_quoted(s + ':<reference>' for s in SECRET_SCHEMES)}",
                )
        check.choice(entry.iam_auth, f"{path}.iam_auth", IAM_AUTH_MODES)
        if entry.iam_auth == "REQUIRED" and settings.tls_certificate is None:
            check.fail(
                f"{path}.iam_auth",
                "REQUIRED needs client-facing TLS: set proxy.tls_certificate and proxy.tls_private_key",
            )
        if entry.client_password_auth_type is None:
            entry.client_password_auth_type = allowed_auth_types[0]
        every_auth_type = [name for names in CLIENT_PASSWORD_AUTH_TYPES.values() for name in names]
        check.choice(entry.client_password_auth_type, f"{path}.client_password_auth_type", every_auth_type)
        if entry.client_password_auth_type not in allowed_auth_types:
            check.fail(
                f"{path}.client_password_auth_type",
                f"{entry.client_password_auth_type!r} does not match proxy.engine_family "
                f"{settings.engine_family!r} (use one of {_quoted(allowed_auth_types)})",
            )


class _Checker:
    """Type and range checks that raise ConfigError("<source>: <key path>: <reason>")."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, path: str, reason: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {path}: {reason}")

    def known_keys(self, table: Mapping[str, Any], known: Mapping[str, type], *, prefix: str) -> None:
        for key in table:
            if key in known:
                continue
            reason = "unknown key"
            close = difflib.get_close_matches(str(key), list(known), n=1)
            homes = [name for name, cls in _SECTIONS.items() if key in {f.name for f in dataclasses.fields(cls)}]
            if close:
                reason += f" (did you mean {close[0]!r}?)"
            elif homes:
                reason += f" here (it belongs in {homes[0]})"
            self.fail(f"{prefix}{key}", reason)

    def array_of_tables(self, value: object, path: str) -> list[Any]:
        if not isinstance(value, list) or not all(isinstance(item, Mapping) for item in value):
            self.fail(path, f"must be an array of tables ([[{path}]]), got {_describe(value)}")
        return value

    def string(
        self,
        value: object,
        path: str,
        *,
        optional: bool = False,
        non_empty: bool = True,
        sensitive: bool = False,
    ) -> None:
        if value is None and optional:
            return
        if not isinstance(value, str) or (non_empty and not value):
            if sensitive:
                got = "an empty string" if isinstance(value, str) else _type_name(value)
            else:
                got = _describe(value)
            self.fail(path, f"must be a {'non-empty ' if non_empty else ''}string, got {got}")

    def boolean(self, value: object, path: str) -> None:
        if not isinstance(value, bool):
            self.fail(path, f"must be true or false, got {_describe(value)}")

    def integer(self, value: object, path: str, lowest: int, highest: int, *, upper_name: str = "") -> None:
        # bool is an int subclass in Python, but `true` is never a sensible percentage.
        if isinstance(value, bool) or not isinstance(value, int) or not lowest <= value <= highest:
            bound = f"{upper_name} ({highest})" if upper_name else str(highest)
            self.fail(path, f"must be an integer between {lowest} and {bound}, got {_describe(value)}")

    def number(self, value: object, path: str, *, at_most: float = math.inf) -> float:
        in_range = (
            not isinstance(value, bool)
            and isinstance(value, (int, float))
            and 0 < value <= at_most
            and math.isfinite(value)
        )
        if not in_range:
            limit = f" and at most {at_most:g}" if math.isfinite(at_most) else ""
            self.fail(path, f"must be a number of seconds greater than 0{limit}, got {_describe(value)}")
        return float(value)  # type: ignore[arg-type]

    def choice(self, value: object, path: str, choices: Any) -> None:
        if not isinstance(value, str) or value not in choices:
            self.fail(path, f"must be one of {_quoted(choices)}, got {_describe(value)}")

    def host_port(self, value: object, path: str, *, allow_zero: bool) -> tuple[str, int]:
        try:
            return _split_host_port(value, allow_zero=allow_zero)
        except ValueError as exc:
            self.fail(path, str(exc))


def _quoted(names: Any) -> str:
    return ", ".join(repr(name) for name in names)


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array" if value else "an empty array"
    if isinstance(value, Mapping):
        return "a table"
    if value is None:
        return "nothing"
    return f"a {type(value).__name__}"


def _describe(value: object) -> str:
    """A value as it would be written in TOML, for messages (never used for passwords or secrets)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 80 else value[:77] + "...")
    return _type_name(value)

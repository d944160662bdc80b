"""Tests of rdsproxy.config: loading the TOML file, validation messages, secrets and direct construction."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from rdsproxy.config import (
    AuthConfig,
    EndpointConfig,
    ProxyConfig,
    ProxySettings,
    TargetGroupConfig,
    parse_host_port,
)
from rdsproxy.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

FULL_CONFIG = """
[proxy]
name = "app-proxy"
engine_family = "POSTGRESQL"
require_tls = true
idle_client_timeout = 900
debug_logging = true
tls_certificate = "tls/server.pem"
tls_private_key = "tls/server.key"
admin_listen = "127.0.0.1:9187"

[[endpoints]]
name = "default"
listen = "127.0.0.1:6432"
target_role = "READ_WRITE"

[[endpoints]]
name = "reader"
listen = "[::1]:6433"
target_role = "READ_ONLY"

[target_group]
targets = ["127.0.0.1:5432", "db-2.internal:5433"]
database = "appdb"
max_connections_percent = 80
max_idle_connections_percent = 20
connection_borrow_timeout = 30.5
init_query = "SET application_name = 'via-proxy'"
session_pinning_filters = ["EXCLUDE_VARIABLE_SETS"]
backend_tls = "verify-full"
health_check_interval = 2
idle_backend_timeout = 15.0

[[auth]]
username = "app"
secret = "file:secrets/app.json"
iam_auth = "REQUIRED"
client_password_auth_type = "POSTGRES_MD5"

[[auth]]
username = "reporting"
password = "report-pw"
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A directory holding the files FULL_CONFIG refers to."""
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "server.pem").write_text("certificate placeholder")
    (tmp_path / "tls" / "server.key").write_text("key placeholder")
    (tmp_path / "secrets").mkdir()
    write_secret(tmp_path / "secrets" / "app.json", {"username": "app", "password": "app-pw", "engine": "postgres"})
    return tmp_path


def write_secret(path: Path, document: object) -> None:
    path.write_text(json.dumps(document))


def write_config(directory: Path, text: str) -> Path:
    path = directory / "proxy.toml"
    path.write_text(text)
    return path


def test_full_file_loads_every_value(
    config_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(config_dir, FULL_CONFIG)
    config = ProxyConfig.from_toml(path)

    assert config.source == str(path)
    assert config.proxy == ProxySettings(
        name="app-proxy",
        engine_family="POSTGRESQL",
        require_tls=True,
        idle_client_timeout=900.0,
        debug_logging=True,
        tls_certificate=str(config_dir / "tls" / "server.pem"),  # relative to the file, not the cwd
        tls_private_key=str(config_dir / "tls" / "server.key"),
        admin_listen="127.0.0.1:9187",
    )
    assert config.endpoints == [
        EndpointConfig(name="default", listen="127.0.0.1:6432", target_role="READ_WRITE"),
        EndpointConfig(name="reader", listen="[::1]:6433", target_role="READ_ONLY"),
    ]
    assert config.target_group == TargetGroupConfig(
        targets=["127.0.0.1:5432", "db-2.internal:5433"],
        database="appdb",
        max_connections_percent=80,
        max_idle_connections_percent=20,
        connection_borrow_timeout=30.5,
        init_query="SET application_name = 'via-proxy'",
        session_pinning_filters=["EXCLUDE_VARIABLE_SETS"],
        backend_tls="verify-full",
        health_check_interval=2.0,
        idle_backend_timeout=15.0,
    )
    assert isinstance(config.proxy.idle_client_timeout, float)
    assert isinstance(config.target_group.health_check_interval, float)
    app, reporting = config.auth
    assert (app.username, app.password, app.secret, app.iam_auth, app.client_password_auth_type) == (
        "app",
        None,
        "file:secrets/app.json",
        "REQUIRED",
        "POSTGRES_MD5",
    )
    assert reporting.client_password_auth_type == "POSTGRES_SCRAM_SHA_256"
    assert config.user("reporting") is reporting
    assert config.user("nobody") is None

    # The secret file is found relative to the config file even when the cwd is elsewhere.
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert app.resolve_password() == "app-pw"
    assert reporting.resolve_password() == "report-pw"

    # The same data through from_dict gives an equal configuration.
    same = ProxyConfig.from_dict(tomllib.loads(FULL_CONFIG), source="again", base_dir=str(config_dir))
    assert same == config


def test_minimal_file_gets_the_documented_defaults(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        '[target_group]\ntargets = ["127.0.0.1:5432"]\n\n[[auth]]\nusername = "app"\npassword = "pw"\n',
    )
    config = ProxyConfig.from_toml(path)

    assert config.proxy == ProxySettings()
    assert (config.proxy.name, config.proxy.engine_family, config.proxy.idle_client_timeout) == (
        "rdsproxy",
        "POSTGRESQL",
        1800.0,
    )
    assert config.endpoints == [EndpointConfig(name="default", listen="127.0.0.1:6432", target_role="READ_WRITE")]
    group = config.target_group
    assert (group.database, group.max_connections_percent, group.max_idle_connections_percent) == (
        "postgres",
        100,
        50,
    )
    assert (group.connection_borrow_timeout, group.init_query, group.session_pinning_filters) == (
        120.0,
        "",
        [],
    )
    assert (group.backend_tls, group.health_check_interval, group.idle_backend_timeout) == (
        "disable",
        1.0,
        60.0,
    )
    assert config.auth[0].client_password_auth_type == "POSTGRES_SCRAM_SHA_256"


def config_text(
    proxy: str = "",
    target_group: str = 'targets = ["127.0.0.1:5432"]',
    auth: str = 'username = "app"\npassword = "pw"',
    extra: str = "",
) -> str:
    return f"[proxy]\n{proxy}\n\n[target_group]\n{target_group}\n\n[[auth]]\n{auth}\n\n{extra}\n"


TLS = 'tls_certificate = "server.pem"\ntls_private_key = "server.key"'
TARGET = 'targets = ["127.0.0.1:5432"]'
BAD_CONFIGS = {
    # unknown keys, at every level
    "unknown section": (config_text(extra="[metrics]\nport = 1"), "metrics", "unknown key"),
    "unknown proxy key": (
        config_text(proxy='nmae = "x"'),
        "proxy.nmae",
        "unknown key (did you mean 'name'?)",
    ),
    "key in the wrong table": (
        config_text(proxy='database = "x"'),
        "proxy.database",
        "it belongs in target_group",
    ),
    "unknown target_group key": (
        config_text(target_group=TARGET + "\nmax_conections_percent = 5"),
        "target_group.max_conections_percent",
        "unknown key",
    ),
    "unknown endpoint key": (
        config_text(extra="[[endpoints]]\nport = 6432"),
        "endpoints[0].port",
        "unknown key",
    ),
    "unknown auth key": (
        config_text(auth='username = "app"\npasswd = "pw"'),
        "auth[0].passwd",
        "unknown key",
    ),
    # wrong types
    "bool is not an int": (
        config_text(target_group=TARGET + "\nmax_connections_percent = true"),
        "target_group.max_connections_percent",
        "must be an integer between 1 and 100, got true",
    ),
    "float is not an int": (
        config_text(target_group=TARGET + "\nmax_idle_connections_percent = 10.5"),
        "target_group.max_idle_connections_percent",
        "got 10.5",
    ),
    "string is not a bool": (
        config_text(proxy='require_tls = "no"'),
        "proxy.require_tls",
        "must be true or false, got 'no'",
    ),
    "bool is not a number": (
        config_text(proxy="idle_client_timeout = false"),
        "proxy.idle_client_timeout",
        "must be a number of seconds greater than 0 and at most 28800, got false",
    ),
    "string is not a number": (
        config_text(target_group=TARGET + '\nconnection_borrow_timeout = "120"'),
        "target_group.connection_borrow_timeout",
        "got '120'",
    ),
    "array is not a string": (config_text(proxy="name = ['a']"), "proxy.name", "must be a non-empty string"),
    "targets is not an array": (
        config_text(target_group='targets = "127.0.0.1:5432"'),
        "target_group.targets",
        "must be a non-empty array",
    ),
    "endpoints is a table": (config_text(extra="[endpoints]\nname = 'x'"), "endpoints", "array of tables"),
    # out of range
    "percent above 100": (
        config_text(target_group=TARGET + "\nmax_connections_percent = 150"),
        "target_group.max_connections_percent",
        "must be an integer between 1 and 100, got 150",
    ),
    "percent zero": (
        config_text(target_group=TARGET + "\nmax_connections_percent = 0"),
        "target_group.max_connections_percent",
        "got 0",
    ),
    "idle above max": (
        config_text(target_group=TARGET + "\nmax_connections_percent = 40\nmax_idle_connections_percent = 50"),
        "target_group.max_idle_connections_percent",
        "between 0 and max_connections_percent (40), got 50",
    ),
    "borrow timeout zero": (
        config_text(target_group=TARGET + "\nconnection_borrow_timeout = 0"),
        "target_group.connection_borrow_timeout",
        "greater than 0 and at most 3600, got 0",
    ),
    "borrow timeout above 3600": (
        config_text(target_group=TARGET + "\nconnection_borrow_timeout = 3600.5"),
        "target_group.connection_borrow_timeout",
        "got 3600.5",
    ),
    "borrow timeout infinite": (
        config_text(target_group=TARGET + "\nconnection_borrow_timeout = inf"),
        "target_group.connection_borrow_timeout",
        "got inf",
    ),
    "negative health check": (
        config_text(target_group=TARGET + "\nhealth_check_interval = -1"),
        "target_group.health_check_interval",
        "got -1",
    ),
    "idle backend timeout zero": (
        config_text(target_group=TARGET + "\nidle_backend_timeout = 0.0"),
        "target_group.idle_backend_timeout",
        "got 0.0",
    ),
    "idle client timeout above 8 hours": (
        config_text(proxy="idle_client_timeout = 28801"),
        "proxy.idle_client_timeout",
        "got 28801",
    ),
    # bad enum values
    "engine family": (
        config_text(proxy='engine_family = "ORACLE"'),
        "proxy.engine_family",
        "must be one of 'POSTGRESQL', 'MYSQL', got 'ORACLE'",
    ),
    "target role": (
        config_text(extra='[[endpoints]]\ntarget_role = "WRITER"'),
        "endpoints[0].target_role",
        "got 'WRITER'",
    ),
    "backend tls": (
        config_text(target_group=TARGET + '\nbackend_tls = "prefer"'),
        "target_group.backend_tls",
        "must be one of 'disable', 'require', 'verify-full', got 'prefer'",
    ),
    "pinning filter": (
        config_text(target_group=TARGET + '\nsession_pinning_filters = ["EXCLUDE_NOTHING"]'),
        "target_group.session_pinning_filters[0]",
        "must be one of 'EXCLUDE_VARIABLE_SETS'",
    ),
    "iam auth": (
        config_text(auth='username = "a"\npassword = "p"\niam_auth = "yes"'),
        "auth[0].iam_auth",
        "'yes'",
    ),
    "password auth type": (
        config_text(auth='username = "a"\npassword = "p"\nclient_password_auth_type = "PLAIN"'),
        "auth[0].client_password_auth_type",
        "got 'PLAIN'",
    ),
    # malformed host:port
    "target without port": (
        config_text(target_group='targets = ["localhost"]'),
        "target_group.targets[0]",
        "must be 'host:port'",
    ),
    "target port too big": (
        config_text(target_group='targets = ["127.0.0.1:5432", "db:99999"]'),
        "target_group.targets[1]",
        "got 'db:99999'",
    ),
    "target port zero": (
        config_text(target_group='targets = ["db:0"]'),
        "target_group.targets[0]",
        "from 1 to 65535",
    ),
    "unbracketed ipv6": (
        config_text(target_group='targets = ["::1:5432"]'),
        "target_group.targets[0]",
        "'[::1]:port'",
    ),
    "bracketed non-ipv6": (
        config_text(target_group='targets = ["[db]:5432"]'),
        "target_group.targets[0]",
        "[db]",
    ),
    "no targets": (config_text(target_group="targets = []"), "target_group.targets", "got an empty array"),
    "listen without port": (
        config_text(extra='[[endpoints]]\nlisten = "127.0.0.1"'),
        "endpoints[0].listen",
        "got '127.0.0.1'",
    ),
    "admin listen": (config_text(proxy='admin_listen = "127.0.0.1:http"'), "proxy.admin_listen", "host:port"),
    # duplicates
    "duplicate target": (
        config_text(target_group='targets = ["db:5432", "db:5432"]'),
        "target_group.targets[1]",
        "already listed as targets[0]",
    ),
    "duplicate endpoint name": (
        config_text(extra='[[endpoints]]\nlisten = "127.0.0.1:7001"\n[[endpoints]]\nlisten = "127.0.0.1:7002"'),
        "endpoints[1].name",
        "'default' is already used by endpoints[0]",
    ),
    "duplicate listen": (
        config_text(extra='[[endpoints]]\nname = "a"\n[[endpoints]]\nname = "b"'),
        "endpoints[1].listen",
        "'127.0.0.1:6432' collides with endpoints[0].listen",
    ),
    "listen on a wildcard collides": (
        config_text(
            extra='[[endpoints]]\nname = "a"\nlisten = "0.0.0.0:7000"\n[[endpoints]]\nlisten = "10.0.0.1:7000"'
        ),
        "endpoints[1].listen",
        "collides with endpoints[0].listen",
    ),
    "listen collides with admin": (
        config_text(proxy='admin_listen = "127.0.0.1:6432"'),
        "endpoints[0].listen",
        "collides with proxy.admin_listen",
    ),
    "duplicate username": (
        config_text(extra='[[auth]]\nusername = "app"\npassword = "other"'),
        "auth[1].username",
        "'app' is already configured in auth[0]",
    ),
    # TLS requirements
    "require_tls without certificate": (
        config_text(proxy="require_tls = true"),
        "proxy.require_tls",
        "tls_certificate",
    ),
    "certificate file missing": (
        config_text(proxy='tls_certificate = "absent.pem"\ntls_private_key = "server.key"'),
        "proxy.tls_certificate",
        "no such file: ",
    ),
    "certificate without key": (
        config_text(proxy='tls_certificate = "server.pem"'),
        "proxy.tls_private_key",
        "missing",
    ),
    "iam without certificate": (
        config_text(auth='username = "app"\npassword = "pw"\niam_auth = "REQUIRED"'),
        "auth[0].iam_auth",
        "REQUIRED needs client-facing TLS",
    ),
    # auth type vs engine family
    "mysql auth type on postgres": (
        config_text(auth='username = "a"\npassword = "p"\nclient_password_auth_type = "MYSQL_NATIVE_PASSWORD"'),
        "auth[0].client_password_auth_type",
        "does not match proxy.engine_family 'POSTGRESQL'",
    ),
    "postgres auth type on mysql": (
        config_text(
            proxy='engine_family = "MYSQL"',
            auth='username = "a"\npassword = "p"\nclient_password_auth_type = "POSTGRES_MD5"',
        ),
        "auth[0].client_password_auth_type",
        "(use one of 'MYSQL_NATIVE_PASSWORD', 'MYSQL_CACHING_SHA2_PASSWORD')",
    ),
    # password / secret
    "password and secret": (
        config_text(auth='username = "a"\npassword = "p"\nsecret = "env:X"'),
        "auth[0]",
        "set exactly one of password or secret",
    ),
    "neither password nor secret": (config_text(auth='username = "a"'), "auth[0]", "exactly one of password"),
    "secret scheme": (
        config_text(auth='username = "a"\nsecret = "vault:x"'),
        "auth[0].secret",
        "'file:<reference>'",
    ),
    "secret without reference": (
        config_text(auth='username = "a"\nsecret = "file:"'),
        "auth[0].secret",
        "must be",
    ),
    "empty password": (
        config_text(auth='username = "a"\npassword = ""'),
        "auth[0].password",
        "non-empty string",
    ),
    # missing pieces
    "no target_group": ('[[auth]]\nusername = "a"\npassword = "p"\n', "target_group", "missing"),
    "no auth": ('[target_group]\ntargets = ["db:5432"]\n', "auth", "at least one [[auth]] entry"),
    "no username": (config_text(auth='password = "p"'), "auth[0].username", "missing required key"),
    "no targets key": (
        config_text(target_group='database = "x"'),
        "target_group.targets",
        "missing required key",
    ),
}


@pytest.mark.parametrize(("text", "key", "reason"), list(BAD_CONFIGS.values()), ids=list(BAD_CONFIGS))
def test_invalid_file_names_file_key_and_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    (tmp_path / "server.pem").write_text("certificate placeholder")
    (tmp_path / "server.key").write_text("key placeholder")
    path = write_config(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        ProxyConfig.from_toml(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: "), message
    assert reason in message, message


def test_message_matches_the_documented_form(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # relative source, as a user typing `rdsproxy --config proxy.toml` would give
    write_config(tmp_path, config_text(target_group=TARGET + "\nmax_connections_percent = 150"))
    with pytest.raises(ConfigError) as caught:
        ProxyConfig.from_toml("proxy.toml")
    assert str(caught.value) == (
        "proxy.toml: target_group.max_connections_percent: must be an integer between 1 and 100, got 150"
    )


def test_settings_that_must_work(tmp_path: Path) -> None:
    # Port 0 listeners never collide; TLS with certificate satisfies require_tls and IAM; MySQL defaults.
    (tmp_path / "server.pem").write_text("certificate placeholder")
    (tmp_path / "server.key").write_text("key placeholder")
    text = config_text(
        proxy=f'engine_family = "MYSQL"\nrequire_tls = true\n{TLS}\nadmin_listen = "127.0.0.1:0"',
        auth='username = "app"\npassword = "pw"\niam_auth = "REQUIRED"',
        extra='[[endpoints]]\nname = "a"\nlisten = "127.0.0.1:0"\n[[endpoints]]\nname = "b"\nlisten = "127.0.0.1:0"',
    )
    config = ProxyConfig.from_toml(write_config(tmp_path, text))
    assert [endpoint.listen for endpoint in config.endpoints] == ["127.0.0.1:0", "127.0.0.1:0"]
    assert config.auth[0].client_password_auth_type == "MYSQL_NATIVE_PASSWORD"
    assert config.proxy.tls_certificate == str(tmp_path / "server.pem")


def test_toml_syntax_error_names_the_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, '[proxy]\nname = "unterminated\n')
    with pytest.raises(ConfigError, match=r"proxy\.toml: invalid TOML: .*line 2"):
        ProxyConfig.from_toml(path)


def test_duplicate_toml_key_is_a_config_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, config_text(proxy='name = "a"\nname = "b"'))
    with pytest.raises(ConfigError, match=r"proxy\.toml: invalid TOML"):
        ProxyConfig.from_toml(path)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read the configuration file"):
        ProxyConfig.from_toml(path)


def test_validation_messages_never_echo_passwords(tmp_path: Path) -> None:
    for auth in ('username = "a"\npassword = 918273645', 'username = "a"\nsecret = "hunter2-pasted-here"'):
        with pytest.raises(ConfigError) as caught:
            ProxyConfig.from_toml(write_config(tmp_path, config_text(auth=auth)))
        assert "918273645" not in str(caught.value)
        assert "hunter2" not in str(caught.value)
        assert str(caught.value).startswith(f"{tmp_path / 'proxy.toml'}: auth[0]")
    entry = AuthConfig(username="a", password="do-not-print")
    assert "do-not-print" not in repr(entry)


# -- secrets ---------------------------------------------------------------------------------------------


def secret_config(tmp_path: Path, secret: str) -> AuthConfig:
    path = write_config(tmp_path, config_text(auth=f'username = "app"\nsecret = "{secret}"'))
    return ProxyConfig.from_toml(path).auth[0]


def test_file_secret_is_read_again_on_every_resolve(tmp_path: Path) -> None:
    write_secret(tmp_path / "app.json", {"username": "app", "password": "first", "host": "ignored"})
    entry = secret_config(tmp_path, "file:app.json")
    assert entry.resolve_password() == "first"
    write_secret(tmp_path / "app.json", {"username": "app", "password": "rotated"})
    assert entry.resolve_password() == "rotated"


def test_env_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_DB_SECRET", json.dumps({"username": "app", "password": "from-env"}))
    entry = secret_config(tmp_path, "env:APP_DB_SECRET")
    assert entry.resolve_password() == "from-env"
    monkeypatch.delenv("APP_DB_SECRET")
    with pytest.raises(ConfigError) as caught:
        entry.resolve_password()
    where = f"{tmp_path / 'proxy.toml'}: auth[0].secret (user 'app')"
    assert str(caught.value) == f"{where}: environment variable APP_DB_SECRET is not set"


BROKEN_SECRETS = {
    "truncated json": (b'{"username": "app", "password": "s3cr3t-value', "is not valid JSON (line 1, column"),
    "bad escape": (b'{"username": "app", "password": "s3cr3t-\\q-value"}', "is not valid JSON"),
    "not an object": (b'["s3cr3t-value"]', "must hold a JSON object"),
    "no password": (b'{"username": "app", "pass": "s3cr3t-value"}', 'has no non-empty string "password"'),
    "password not a string": (
        b'{"username": "app", "password": ["s3cr3t-value"]}',
        'non-empty string "password"',
    ),
    "other user": (b'{"username": "admin", "password": "s3cr3t-value"}', "credentials for another username"),
    "not utf-8": (b'{"password": "s3cr3t-value\xff"}', "is not UTF-8 text"),
}


@pytest.mark.parametrize(("content", "reason"), list(BROKEN_SECRETS.values()), ids=list(BROKEN_SECRETS))
def test_broken_secret_file_message_hides_its_contents(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "app.json").write_bytes(content)
    entry = secret_config(tmp_path, "file:app.json")
    with pytest.raises(ConfigError) as caught:
        entry.resolve_password()
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'proxy.toml'}: auth[0].secret (user 'app'): secret file "), message
    assert str(tmp_path / "app.json") in message
    assert reason in message, message
    assert "s3cr3t" not in message and "\\q" not in message


def test_unreadable_and_unsupported_secrets(tmp_path: Path) -> None:
    missing = secret_config(tmp_path, "file:missing.json")
    with pytest.raises(ConfigError, match=r"auth\[0\]\.secret \(user 'app'\): cannot read secret file .*missing"):
        missing.resolve_password()
    aws = secret_config(tmp_path, "aws-secretsmanager:arn:aws:secretsmanager:eu-west-1:1:secret:app")
    with pytest.raises(ConfigError, match="aws-secretsmanager secrets are not supported in this build"):
        aws.resolve_password()


# -- direct construction ----------------------------------------------------------------------------------


def test_direct_construction() -> None:
    config = ProxyConfig(
        proxy=ProxySettings(name="api", idle_client_timeout=5),
        target_group=TargetGroupConfig(targets=["127.0.0.1:5432"], connection_borrow_timeout=1),
        auth=[AuthConfig(username="app", password="pw")],
    )
    assert config.endpoints == [EndpointConfig()]
    assert config.proxy.idle_client_timeout == 5.0 and isinstance(config.proxy.idle_client_timeout, float)
    assert config.target_group.connection_borrow_timeout == 1.0
    assert config.auth[0].client_password_auth_type == "POSTGRES_SCRAM_SHA_256"
    assert config.user("app").resolve_password() == "pw"  # type: ignore[union-attr]

    mysql = ProxyConfig(
        proxy=ProxySettings(engine_family="MYSQL"),
        target_group=TargetGroupConfig(targets=["127.0.0.1:3306"]),
        auth=[AuthConfig(username="app", password="pw")],
    )
    assert mysql.auth[0].client_password_auth_type == "MYSQL_NATIVE_PASSWORD"


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError) as caught:
        ProxyConfig(
            target_group=TargetGroupConfig(targets=["nowhere"]),
            auth=[AuthConfig(username="app", password="pw")],
        )
    assert str(caught.value).startswith("<dict>: target_group.targets[0]: must be 'host:port'")

    with pytest.raises(ConfigError, match=r"^<dict>: auth: at least one \[\[auth\]\] entry is required$"):
        ProxyConfig(target_group=TargetGroupConfig(targets=["db:5432"]), auth=[])

    config = ProxyConfig(target_group=TargetGroupConfig(targets=["db:5432"]), auth=[AuthConfig("app", password="p")])
    config.target_group.max_connections_percent = 101
    with pytest.raises(ConfigError, match=r"target_group\.max_connections_percent: .* got 101"):
        config.validate()


def test_direct_secret_resolves_against_base_dir(tmp_path: Path) -> None:
    write_secret(tmp_path / "s.json", {"password": "pw-from-file"})
    config = ProxyConfig(
        target_group=TargetGroupConfig(targets=["db:5432"]),
        auth=[AuthConfig(username="app", secret="file:s.json")],
        source="api",
        base_dir=str(tmp_path),
    )
    assert config.auth[0].resolve_password() == "pw-from-file"


# -- parse_host_port --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:5432", ("127.0.0.1", 5432)),
        ("db-1.internal:6432", ("db-1.internal", 6432)),
        ("[::1]:6432", ("::1", 6432)),
        ("[fe80::1%eth0]:1", ("fe80::1%eth0", 1)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text, what="target") == expected


def test_parse_host_port_port_zero_only_when_allowed() -> None:
    assert parse_host_port("127.0.0.1:0", what="listen", allow_zero=True) == ("127.0.0.1", 0)
    with pytest.raises(ConfigError, match=r"^target: must be 'host:port' .* from 1 to 65535, got '127.0.0.1:0'$"):
        parse_host_port("127.0.0.1:0", what="target")


@pytest.mark.parametrize("text", ["", "5432", ":5432", "db:", "db:-1", "db:65536", "db:5432x", "::1:5432", "[::1]5432"])
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^admin_listen: must be 'host:port'"):
        parse_host_port(text, what="admin_listen", allow_zero=True)

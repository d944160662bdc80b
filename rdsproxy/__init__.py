"""rdsproxy: an embeddable transaction-pooling database proxy with RDS Proxy semantics."""

from .config import AuthConfig, EndpointConfig, ProxyConfig, ProxySettings, TargetGroupConfig
from .errors import AuthenticationFailed, ConfigError, ProtocolViolation, RdsProxyError
from .proxy import Proxy

__version__ = "0.1.0"

__all__ = [
    "AuthConfig",
    "AuthenticationFailed",
    "ConfigError",
    "EndpointConfig",
    "Proxy",
    "ProxyConfig",
    "ProxySettings",
    "ProtocolViolation",
    "RdsProxyError",
    "TargetGroupConfig",
    "__version__",
]

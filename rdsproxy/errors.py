"""Exception types shared by the codecs, the protocol machines and the adapters."""


class RdsProxyError(Exception):
    """Base class of every error rdsproxy raises on purpose."""


class ConfigError(RdsProxyError):
    """A configuration file or value is invalid; the message names file, key and reason."""


class ProtocolViolation(RdsProxyError):
    """A peer sent bytes that break the wire protocol; ends only that peer's connection."""


class AuthenticationFailed(RdsProxyError):
    """A client or backend failed authentication (message never contains a secret)."""

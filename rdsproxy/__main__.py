"""Command line: `rdsproxy --config proxy.toml` runs a proxy; `rdsproxy demo` runs the serverless-storm demo."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from typing import Optional

from .config import ProxyConfig
from .errors import ConfigError


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _run(config_path: str) -> int:
    from .proxy import Proxy

    config = ProxyConfig.from_toml(config_path)
    proxy = Proxy(config)
    await proxy.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def reload() -> None:
        try:
            proxy.reload(ProxyConfig.from_toml(config_path))
        except ConfigError as exc:
            logging.getLogger("rdsproxy").error("reload refused, keeping the running configuration: %s", exc)

    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload)
    for name in proxy.config.endpoints:
        host, port = proxy.address(name.name)
        print(f"rdsproxy {config.proxy.name}: endpoint {name.name} on {host}:{port}", flush=True)
    await stop.wait()
    logging.getLogger("rdsproxy").info("draining")
    await proxy.close()
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        from .demo import main as demo_main

        return demo_main(argv[1:])
    parser = argparse.ArgumentParser(prog="rdsproxy", description="Transaction-pooling database proxy.")
    parser.add_argument("--config", required=True, help="path to the proxy's TOML configuration file")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _install_uvloop()
    try:
        return asyncio.run(_run(args.config))
    except ConfigError as exc:
        print(f"rdsproxy: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"rdsproxy: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

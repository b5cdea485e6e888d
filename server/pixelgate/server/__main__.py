"""`pixelgate-server`: run the service until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from pathlib import Path

from pixelgate.server.app import start_server
from pixelgate.server.core.config import ConfigError, Settings, load_settings
from pixelgate.server.logs.setup import configure_logging
from pixelgate.server.models.library_logs import route_library_logs
from pixelgate.server.models.registry import engine_devices
from pixelgate.server.models.runtime import load_model
from pixelgate.server.security.tls import TlsConfigError


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="pixelgate-server", description="Serve pixelgate over mutual TLS."
    )
    parser.add_argument(
        "--config",
        type=Path,
        help="TOML settings file (default: embedded dev setup); PIXELGATE_* variables"
        " override it, and the flags below override both",
    )
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, help="port to listen on; 0 picks a free one (default 50051)"
    )
    parser.add_argument(
        "--prepare-model",
        action="store_true",
        help="load (building if needed) the model, then exit",
    )
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"]
    )
    return parser.parse_args(argv)


async def serve(settings: Settings) -> None:
    """Serves until a stop signal, then shuts down gracefully."""
    running = await start_server(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if running.certificates is not None:  # SIGHUP: re-read the TLS files now
        loop.add_signal_handler(signal.SIGHUP, running.certificates.reload)
    print(f"pixelgate: serving on port {running.port}", flush=True)
    await stop.wait()
    logging.getLogger("pixelgate.server").info(
        "stopping: in-flight calls have %.0f s", settings.shutdown_grace_seconds
    )
    await running.stop(settings.shutdown_grace_seconds)


def main(argv: list[str] | None = None) -> int:
    """Entry point of `pixelgate-server`."""
    args = _parse(argv)
    interval = os.environ.get("PIXELGATE_SWITCH_INTERVAL")
    if interval:
        sys.setswitchinterval(float(interval))
    configure_logging(args.log_level)
    route_library_logs()
    try:
        settings = load_settings(args.config, environ=os.environ, host=args.host, port=args.port)
        if args.prepare_model:
            device = engine_devices(settings.engine)[0]
            for model in settings.models:
                load_model(model, device, settings.cache_dir)
            return 0
        asyncio.run(serve(settings))
    except (ConfigError, TlsConfigError) as error:
        print(f"pixelgate-server: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The dashboard on the command line: `live ... --dashboard [HOST:PORT]` and `backtest-kit dashboard --from-nats`.

Why a separate command for NATS: a dashboard beside a trading process shares its loop and engine, but a
team watching several workers wants one page that runs anywhere, without an engine, fed by the events
the workers' `bk.NatsBridge`s publish. The token is read from the `BK_DASHBOARD_TOKEN` environment
variable, never from an option (a command line is visible to every user of the machine in `ps`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from typing import Any

from ..engine.errors import ConfigError
from .loader import CliError
from .outcome import write_line

__all__ = ["DEFAULT_LISTEN", "TOKEN_ENV", "add_dashboard_parser", "cmd_dashboard", "host_port", "start_dashboard"]

DEFAULT_LISTEN = "127.0.0.1:8765"
TOKEN_ENV = "BK_DASHBOARD_TOKEN"


def host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[v6]:PORT`, `:PORT` or `PORT` (host 127.0.0.1), or `HOST` (port 8765); port 0 = any."""
    value = text.strip()
    host, port_text = "127.0.0.1", ""
    if value.startswith("["):
        inner, _, rest = value[1:].partition("]")
        host, port_text = inner, rest.removeprefix(":")
    elif value.count(":") == 1:
        head, _, port_text = value.partition(":")
        host = head or host
    elif value.isdigit():
        port_text = value
    elif value and ":" not in value:
        host = value
    else:
        host, port_text = value, ""  # a bare IPv6 address
    try:
        port = int(port_text) if port_text else 8765
    except ValueError:
        port = -1
    if not 0 <= port <= 65535 or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT such as 127.0.0.1:8765 (port 0: any free one), "
                                         f"got {text!r}")
    return host, port


async def start_dashboard(listen: tuple[str, int], **options: Any) -> Any:
    """Serve a dashboard (`serve_dashboard` options) with the token of `BK_DASHBOARD_TOKEN`; a refusal
    (a non-loopback bind without a token) and a port in use become CLI errors that say what to do."""
    from ..web import serve_dashboard

    host, port = listen
    try:
        return await serve_dashboard(host=host, port=port, token=os.environ.get(TOKEN_ENV) or None, **options)
    except ConfigError as exc:
        raise CliError(str(exc).replace("token=... / ", "")) from None
    except OSError as exc:
        raise CliError(f"dashboard: cannot listen on {host}:{port}: {exc.strerror or exc}") from None


async def cmd_dashboard(args: argparse.Namespace) -> int:
    """`backtest-kit dashboard --from-nats URL`: serve until Ctrl-C (exit 0)."""
    from ..adapters.nats_remote import RemoteEvents

    remote = RemoteEvents(args.from_nats, stream=args.stream, prefix=args.prefix)
    options: dict[str, Any] = {"deliver": args.deliver}
    if args.durable:
        options["durable"] = args.durable
    try:
        try:
            await remote.connect()
        except Exception as exc:
            raise CliError(f"dashboard: NATS at {remote.server} does not answer ({type(exc).__name__})") from None
        handle = await start_dashboard(args.listen, remote=remote, remote_options=options)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        installed = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
        write_line(f"dashboard at {handle.url} (events from NATS at {remote.server}, stream {args.stream}); "
                   "Ctrl-C stops")
        try:
            await stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            await handle.aclose()
    finally:
        await remote.aclose()
    return 0


def add_dashboard_parser(sub: Any) -> None:
    d = sub.add_parser(
        "dashboard", help="serve the live dashboard of engines publishing to NATS (bk.NatsBridge)",
        description="Serve the live dashboard (page, JSON API under /api/, /metrics) for the events that "
                    f"bk.NatsBridge publishes, in a process without an engine. A non-loopback --listen needs "
                    f"a token in the {TOKEN_ENV} environment variable.")
    d.add_argument("--from-nats", required=True, metavar="URL", help="NATS server, e.g. nats://127.0.0.1:4222")
    d.add_argument("--stream", default="BK_EVENTS", help="the bridge's JetStream stream (default BK_EVENTS)")
    d.add_argument("--prefix", default="bk", help="the bridge's subject prefix (default bk)")
    d.add_argument("--deliver", choices=("new", "all", "last"), default="all",
                   help="where to start: the stream's whole history (all, default: rebuilds the state), "
                        "new events only, or the last one")
    d.add_argument("--durable", metavar="NAME", help="a durable consumer: a restart resumes where it stopped")
    d.add_argument("--listen", type=host_port, default=host_port(DEFAULT_LISTEN), metavar="HOST:PORT",
                   help=f"where to serve (default {DEFAULT_LISTEN}; port 0: any free one)")
    d.add_argument("--verbose", "-v", action="store_true", help="show the log on stderr")
    d.add_argument("--debug", action="store_true", help="show the full traceback on failure")
    d.set_defaults(handler=cmd_dashboard)

"""`portico run`, `portico check-config` and `portico demo`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import sys

from proxy.cli_common import CliError
from proxy.config import describe, load_config
from proxy.logs import configure_logging
from proxy.schema import ConfigError

log = logging.getLogger("portico.cli")


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the gateway's subcommands."""
    run = subparsers.add_parser("run", help="run the gateway with a configuration file")
    run.add_argument("--config", "-c", required=True, metavar="FILE", help="Portico YAML configuration")
    _log_args(run)
    run.set_defaults(func=cmd_run)

    check = subparsers.add_parser("check-config", help="validate a configuration file without starting")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_check_config)

    demo = subparsers.add_parser("demo", help="run the gateway in front of a built-in demo module")
    demo.add_argument("--port", type=int, default=8080, help="gateway port (default 8080)")
    demo.add_argument("--grpc-port", type=int, default=50051, help="analytics API port (default 50051)")
    demo.add_argument("--data", default="./demo-data", help="where the demo keeps its events and users")
    _log_args(demo)
    demo.set_defaults(func=cmd_demo)


def _log_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-format", choices=("text", "json"), default=None,
                        help="log line format on stderr (default: the config's logging.format, else text)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=None)


def _load(path: str):  # noqa: ANN202 - PorticoConfig
    try:
        return load_config(path)
    except ConfigError as e:
        raise CliError(str(e), exit_code=2) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    config = _load(args.file)
    print(f"{args.file}: ok")
    print(json.dumps(describe(config), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    configure_logging(args.log_format or config.logging.format, args.log_level or config.logging.level)
    return _run(config)


GC_GEN0 = 20_000   # allocations between young collections (CPython's default: 700)


def settle_gc() -> None:
    """Garbage-collector settings for a long-running gateway process, once started.

    Why: everything imported and built at start-up (mitmproxy, grpc, the addons: ~500k
    objects) would otherwise be re-scanned by every full collection for the life of the
    process; `gc.freeze()` moves it to a permanent generation. Each proxied request
    allocates a few thousand short-lived containers, so the default young-generation
    threshold (700) runs a collection several times per request; a larger one runs it every
    few requests. Memory cost: at most a few MB more garbage waiting.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_GEN0, *gc.get_threshold()[1:])


def _run(config, on_started=None) -> int:  # noqa: ANN001
    from proxy.server import Gateway, StartupError

    async def main() -> int:
        gateway = Gateway(config)
        try:
            await gateway.start()
        except StartupError as e:
            raise CliError(f"cannot start: {e}", exit_code=1) from None
        if on_started is not None:
            on_started(gateway)
        settle_gc()
        await gateway.serve_forever()
        return 0

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy import demo

    configure_logging(args.log_format or "text", args.log_level or "info")
    config, module = demo.prepare(port=args.port, data_dir=args.data, grpc_port=args.grpc_port)

    def started(gateway) -> None:  # noqa: ANN001
        demo.print_welcome(gateway, module, sys.stdout)

    try:
        return _run(config, on_started=started)
    finally:
        module.stop()

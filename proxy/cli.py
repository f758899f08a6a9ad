"""The `portico` console script.

Each group of subcommands lives in its own module with a `register(subparsers)` function;
this file only assembles them, parses, and turns errors into exit codes:
0 ok, 1 runtime/server error, 2 usage or configuration error. No tracebacks for
expected failures: a one-line `portico: ...` message on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from proxy import cli_access, cli_analytics, cli_auth, cli_cache, cli_gateway, cli_guard, cli_outreach, cli_store
from proxy.cli_common import CliError

SUBCOMMAND_MODULES = (cli_gateway, cli_store, cli_analytics, cli_auth, cli_cache, cli_guard, cli_outreach, cli_access)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"portico: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every registered subcommand group."""
    parser = _Parser(prog="portico", description="Portico: analytics-aware caching gateway")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subparsers.required = True
    for module in SUBCOMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as e:
        print(f"portico: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

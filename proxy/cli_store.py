"""`portico store stats`, `portico backup DIR` and `portico restore DIR`.

All three work on the telemetry directory given by `--data DIR` or by the `telemetry.path`
of `--config FILE`. Stats and backup open the store read-only, so they are safe while a
gateway is running (LMDB readers never block its writer); restore needs an empty target.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from proxy.cli_common import CliError


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add the telemetry store's subcommands."""
    store = subparsers.add_parser("store", help="inspect the telemetry store")
    store_sub = store.add_subparsers(dest="store_command", metavar="COMMAND")
    store_sub.required = True
    stats = store_sub.add_parser("stats", help="events, bytes, partitions, oldest/newest event")
    _where(stats)
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")
    stats.set_defaults(func=cmd_stats)

    backup = subparsers.add_parser("backup", help="online, consistent copy of the telemetry store into DIR")
    backup.add_argument("dest", metavar="DIR", help="a new (or empty) directory")
    _where(backup)
    backup.set_defaults(func=cmd_backup)

    restore = subparsers.add_parser("restore", help="restore a backup DIR into the (empty) data directory")
    restore.add_argument("src", metavar="DIR", help="a directory made by `portico backup`")
    _where(restore)
    restore.set_defaults(func=cmd_restore)


def _where(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--data", metavar="DIR", help="the telemetry directory (telemetry.path)")
    g.add_argument("--config", "-c", metavar="FILE", help="take telemetry.path from this configuration")


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data:
        return Path(args.data)
    from proxy.config import load_config
    from proxy.schema import ConfigError

    try:
        return Path(load_config(args.config).telemetry.path)
    except ConfigError as e:
        raise CliError(str(e), exit_code=2) from None


def _open_readonly(path: Path):  # noqa: ANN202 - telemetry.store.Store
    from telemetry.errors import TelemetryError
    from telemetry.store import Store, StoreSettings

    if not (path / "dict.lmdb").exists():
        raise CliError(f"{path}: no telemetry store here (expected dict.lmdb and p/); check --data or "
                       "telemetry.path", exit_code=2)
    try:
        return Store.open(StoreSettings(path), readonly=True)
    except TelemetryError as e:
        raise CliError(f"cannot open the telemetry store: {e}") from None


def cmd_stats(args: argparse.Namespace) -> int:
    path = _data_dir(args)
    store = _open_readonly(path)
    try:
        st = store.stats()
    finally:
        store.close()
    if args.json:
        print(json.dumps({"path": str(path), "events": st.events, "bytes": st.bytes, "partitions": st.partitions,
                          "oldest": st.oldest.isoformat() if st.oldest else None,
                          "newest": st.newest.isoformat() if st.newest else None, "files": st.files}, indent=2))
        return 0
    print(f"store:      {path}")
    print(f"events:     {st.events}")
    print(f"bytes:      {st.bytes} ({st.bytes / 2**20:.1f} MiB)")
    print(f"partitions: {st.partitions}")
    print(f"oldest:     {st.oldest.isoformat() if st.oldest else '-'}")
    print(f"newest:     {st.newest.isoformat() if st.newest else '-'}")
    return 0


def cmd_backup(args: argparse.Namespace) -> int:
    from telemetry.errors import TelemetryError

    store = _open_readonly(_data_dir(args))
    try:
        store.backup(Path(args.dest))
    except TelemetryError as e:
        raise CliError(f"backup failed: {e}") from None
    finally:
        store.close()
    print(f"backup written to {args.dest}")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from telemetry.errors import TelemetryError
    from telemetry.store import Store

    dest = _data_dir(args)
    try:
        Store.restore(Path(args.src), dest)
    except TelemetryError as e:
        raise CliError(f"restore failed: {e}") from None
    print(f"restored {args.src} into {dest}")
    return 0

"""`portico events|query|funnel|export|stats`: the analytics CLI, a client of the gRPC API.

Everything here goes through `proto.client` to a running gateway (`--server`, or
PORTICO_SERVER, default 127.0.0.1:50051; `--token` or PORTICO_TOKEN), so anything the CLI
shows a program can get from the same API. Times are RFC 3339 (`2026-11-01T10:00:00Z`,
`2026-11-01`) or relative to now (`now`, `-7d`, `-12h`, `-30m`, `-2w`). Exit codes:
0 ok, 1 server/runtime error, 2 usage error (bad flag value, or the server said
INVALID_ARGUMENT).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import grpc

from proto.client import DEFAULT_SERVER, AnalyticsClient, ApiError, ClientSettings
from proto.convert import set_timestamp, set_timestamp_us, set_value, value_to_py
from proto.packed import PackError, join_packed, pack_event, pack_events, time_us_of
from proto.portico.v1 import analytics_pb2 as pb
from proxy.cli_common import CliError
from telemetry import params
from telemetry.params import INTERVALS, parse_duration, parse_time

RECORD_BATCH = 1000
# argparse treats "-7d" or "--bbox -10,-20,30,40" as unknown options; let relative times and
# coordinate lists that start with a minus sign through as values
_NEGATIVE_VALUE = re.compile(r"^-\d+(\.\d+)?[smhdw]?$|^-\d*\.\d+$|^-\d*\.?\d+(,-?\d*\.?\d+)+$")


# ---- parsing helpers (pure) ------------------------------------------------------------------
# parse_time and parse_duration come from telemetry.params (the dashboard and the gRPC API
# parse the same forms with them); tests and callers may keep using them from here


def _flagged(flag: str, parse: Callable[[str], Any], text: str) -> Any:
    """`parse(text)`, with the flag in front of a ValueError's message."""
    try:
        return parse(text)
    except ValueError as e:
        raise ValueError(f"{flag} {e}") from None


def geo_from_args(near: str | None, bbox: str | None) -> pb.GeoFilter | None:
    if near:
        lat, lon, km = _flagged("--near", params.parse_near, near)
        return pb.GeoFilter(near=pb.Near(lat=lat, lon=lon, km=km))
    if bbox:
        s, w, n, e = _flagged("--bbox", params.parse_bbox, bbox)
        return pb.GeoFilter(bbox=pb.BoundingBox(south=s, west=w, north=n, east=e))
    return None


def parse_step(text: str) -> pb.FunnelStep:
    """`TYPE` or `TYPE,FILTER` (the filter may itself contain commas, e.g. org=a,b)."""
    type_, expr = _flagged("--step", params.split_step, text)
    step = pb.FunnelStep(type=type_)
    if expr:
        step.filters.add(expr=expr)
    return step


def wire_event_from_json_line(line: str) -> dict[str, Any]:
    """The wire map {"type", "attrs", "id", "time_us"} (proto/packed.py) of one JSON line
    {"id","time","type","attrs"}; the server validates the values themselves.

    Raises:
        ValueError: the line is not a JSON object of that shape (message names the field).
    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg} at column {e.colno})") from None
    if type(obj) is not dict:
        raise ValueError("expected a JSON object {\"id\", \"time\", \"type\", \"attrs\"}")
    if not obj.keys() <= _JSON_FIELDS:
        unknown = sorted(obj.keys() - _JSON_FIELDS)
        raise ValueError(f"unknown field(s) {', '.join(unknown)}; allowed: id, time, type, attrs")
    etype = obj.get("type")
    if type(etype) is not str:
        raise ValueError("type: required, a string like \"user.joined\"")
    out: dict[str, Any] = {"type": etype}
    eid = obj.get("id")
    if eid is not None:
        if type(eid) is not str:
            raise ValueError("id: expected a string")
        if eid:  # "" means "let the server generate one", as in the typed form
            out["id"] = eid
    t = obj.get("time")
    if t is not None:
        if isinstance(t, bool) or not isinstance(t, (str, int, float)):
            raise ValueError("time: expected RFC 3339 text or epoch seconds")
        if isinstance(t, str):
            try:
                dt = _rfc3339(t)
            except ValueError as e:
                raise ValueError(f"time: {e}") from None
        else:
            try:
                dt = datetime.fromtimestamp(t, tz=timezone.utc)
            except (OverflowError, OSError, ValueError):
                raise ValueError(f"time: {t} is not epoch seconds within 1970..9999") from None
        out["time_us"] = time_us_of(dt)
    attrs = obj.get("attrs")
    if attrs:
        if type(attrs) is not dict:
            raise ValueError("attrs: expected a JSON object")
        out["attrs"] = attrs
    elif attrs is not None and attrs != {}:
        raise ValueError("attrs: expected a JSON object")
    return out


_JSON_FIELDS = frozenset(("id", "time", "type", "attrs"))


def _rfc3339(text: str) -> datetime:
    """`parse_time` with a fast path for the common case, full RFC 3339 text ("...T...Z")."""
    if len(text) >= 20 and text[10:11] == "T":
        try:
            dt = datetime.fromisoformat(text)   # Python 3.11 reads "Z" and offsets
            return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return parse_time(text)


def event_from_json_line(line: str) -> pb.Event:
    """A typed `pb.Event` from one JSON line {"id","time","type","attrs"} (the typed form of
    `wire_event_from_json_line`, for programs that build `RecordRequest.events`).

    Raises:
        ValueError: the line is not a JSON object of that shape (message names the field).
    """
    wire = wire_event_from_json_line(line)
    ev = pb.Event(type=wire["type"], id=wire.get("id", ""))
    if "time_us" in wire:
        set_timestamp_us(ev.time, wire["time_us"])
    for k, v in wire.get("attrs", {}).items():
        try:
            set_value(ev.attrs[k], v)
        except TypeError as e:
            raise ValueError(f"attrs.{k}: {e}") from None
    return ev


# ---- rendering helpers ---------------------------------------------------------------------

def format_bucket(ts: Any, tz: str) -> str:
    """RFC 3339 in the query's zone (`Z` for UTC)."""
    dt = datetime.fromtimestamp(ts.seconds, tz=timezone.utc) + timedelta(microseconds=ts.nanos // 1000)
    if tz and tz != "UTC":
        try:
            dt = dt.astimezone(ZoneInfo(tz))
        except (ZoneInfoNotFoundError, ValueError):
            pass
    text = dt.isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


def row_value(row: pb.Row) -> int | float:
    return row.int_value if row.WhichOneof("value") == "int_value" else row.double_value


def cell(value: Any) -> str:
    """A table cell: compact JSON for lists and maps, `-` for missing, floats trimmed."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}" if not value.is_integer() or abs(value) >= 1e15 else str(int(value))
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return str(value)


def print_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], out: TextIO,
                numeric: Sequence[bool] | None = None) -> None:
    """Aligned columns; numbers right-aligned."""
    cells = [[cell(v) for v in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = numeric or [False] * len(headers)

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w)
                         for v, w, n in zip(values, widths, numeric)).rstrip()

    out.write(line(headers) + "\n")
    for r in cells:
        out.write(line(r) + "\n")


def query_json(pages: list[pb.QueryResponse]) -> dict[str, Any]:
    last = pages[-1]
    rows = []
    for page in pages:
        for row in page.rows:
            rows.append({
                "bucket": format_bucket(row.bucket, last.tz) if row.HasField("bucket") else None,
                "keys": {k: value_to_py(v) for k, v in row.keys.items()},
                "value": row_value(row),
            })
    return {"rows": rows, "next_page_token": last.next_page_token or None, "total_rows": last.total_rows}


def print_query_table(pages: list[pb.QueryResponse], out: TextIO) -> None:
    last = pages[-1]
    has_bucket = any(r.HasField("bucket") for p in pages for r in p.rows) or bool(last.interval)
    keys = list(last.group_by) or sorted({k for p in pages for r in p.rows for k in r.keys})
    # group-by "geo_cell" comes back as lat/lon keys
    keys = [k for k in keys if k != "geo_cell"] + (
        ["lat", "lon"] if "geo_cell" in keys else [])
    headers = (["bucket"] if has_bucket else []) + keys + [last.metric or "value"]
    rows = []
    for page in pages:
        for r in page.rows:
            values = [format_bucket(r.bucket, last.tz) if r.HasField("bucket") else None] if has_bucket else []
            values += [value_to_py(r.keys[k]) if k in r.keys else None for k in keys]
            rows.append(values + [row_value(r)])
    print_table(headers, rows, out, numeric=[False] * (len(headers) - 1) + [True])
    shown = sum(len(p.rows) for p in pages)
    out.write(f"\n{shown} of {last.total_rows} rows")
    out.write(f"; interval {last.interval}" if last.interval else "")
    out.write(" (approximate)\n" if last.approximate else "\n")
    if last.next_page_token:
        out.write(f"next page: --page-token {last.next_page_token}\n")


# ---- argument plumbing ---------------------------------------------------------------------

def _env_default(name: str, default: str | None) -> str | None:
    return os.environ.get(name) or default


def _connection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("connection")
    g.add_argument("--server", default=None, metavar="HOST:PORT",
                   help=f"gRPC API address (env PORTICO_SERVER; default {DEFAULT_SERVER})")
    g.add_argument("--token", default=None, help="bearer token (env PORTICO_TOKEN)")
    g.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS", help="per call (default 30)")
    g.add_argument("--tls", action="store_true", help="use TLS with the system's trusted CAs")
    g.add_argument("--tls-ca", type=Path, metavar="FILE", help="use TLS, trusting this CA (PEM)")
    g.add_argument("--tls-cert", type=Path, metavar="FILE", help="client certificate (PEM) for mutual TLS")
    g.add_argument("--tls-key", type=Path, metavar="FILE", help="client key (PEM) for mutual TLS")
    g.add_argument("--json", action="store_true", help="print JSON instead of a table")


def _selection_args(p: argparse.ArgumentParser, *, require_range: bool = True) -> None:
    g = p.add_argument_group("selection")
    g.add_argument("--from", dest="start", default="-7d", metavar="T",
                   help="start (RFC 3339, 2026-11-01, now, -7d; default -7d)")
    g.add_argument("--to", dest="end", default="now", metavar="T", help="end, exclusive (default now)")
    g.add_argument("--type", dest="types", action="append", default=[], metavar="TYPE",
                   help="event type (repeatable; default all)")
    g.add_argument("--filter", dest="filters", action="append", default=[], metavar="EXPR",
                   help="org=acme, org!=acme, status>=500, path~^/api/, supplies.Childcare>0 (repeatable)")
    geo = g.add_mutually_exclusive_group()
    geo.add_argument("--near", metavar="LAT,LON,KM", help="events within KM kilometres of a point")
    geo.add_argument("--bbox", metavar="S,W,N,E", help="events inside a bounding box")


def _query_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("aggregation")
    g.add_argument("--metric", default=None, help="count | users | sum:ATTR | avg:ATTR | p95:ATTR ...")
    g.add_argument("--interval", default="auto", choices=INTERVALS, help="time bucket (none: totals)")
    g.add_argument("--tz", default="UTC", metavar="ZONE", help="IANA zone for buckets (default UTC)")
    g.add_argument("--by", dest="group_by", action="append", default=[], metavar="ATTR",
                   help="group by attribute (repeatable; geo_cell groups by location)")
    g.add_argument("--order", default=None, choices=("time", "value_desc", "value_asc"))
    pre = p.add_argument_group("preset filters (exact matches; same as --filter)")
    pre.add_argument("--org", help="attr org equals this")
    pre.add_argument("--project", help="attr project equals this")
    pre.add_argument("--supply", help="the map attr supplies has this key (enrolments)")
    pre.add_argument("--need", help="the list attr needs contains this (enrolments)")


def _paging_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("paging")
    g.add_argument("--limit", type=int, default=None, metavar="N", help="rows per page (1..10000)")
    pages = g.add_mutually_exclusive_group()
    pages.add_argument("--page-token", default=None, metavar="T", help="continue from a previous page")
    pages.add_argument("--all", action="store_true", help="follow every page")


def _allow_relative_values(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p._negative_number_matcher = _NEGATIVE_VALUE  # type: ignore[attr-defined]  # lets "--from -7d" parse
    return p


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    """Add `events`, `query`, `funnel`, `export` and `stats` to the `portico` parser."""
    events = subparsers.add_parser("events", help="record or list raw analytics events")
    events_sub = events.add_subparsers(dest="events_command", metavar="{record,list}")
    events_sub.required = True

    rec = _allow_relative_values(events_sub.add_parser(
        "record", help="send JSON-lines events: {\"id\", \"time\", \"type\", \"attrs\"} per line"))
    rec.add_argument("file", metavar="FILE|-", help="JSON lines file, or - for stdin")
    rec.add_argument("--batch-size", type=int, default=RECORD_BATCH, metavar="N", help="events per call")
    _connection_args(rec)
    rec.set_defaults(func=cmd_events_record)

    lst = _allow_relative_values(events_sub.add_parser("list", help="raw events, newest last"))
    _selection_args(lst)
    lst.add_argument("--desc", action="store_true", help="newest first")
    _paging_args(lst)
    _connection_args(lst)
    lst.set_defaults(func=cmd_events_list)

    q = _allow_relative_values(subparsers.add_parser(
        "query", help="counts / users / sums over time, grouped (presets: users, enrolments)"))
    q.add_argument("preset", nargs="?", choices=("users", "enrolments"),
                   help="users: joined/left/role-changed by org and project; "
                        "enrolments: enrolled/unenrolled by org, project, supply, need")
    _selection_args(q)
    _query_args(q)
    _paging_args(q)
    _connection_args(q)
    q.set_defaults(func=cmd_query)

    f = _allow_relative_values(subparsers.add_parser("funnel", help="conversion through ordered steps"))
    f.add_argument("--step", dest="steps", action="append", default=[], metavar="TYPE[,FILTER]",
                   required=True, help="a step (repeat in order)")
    f.add_argument("--within", required=True, metavar="DURATION", help="e.g. 30m, 1d, 7d")
    f.add_argument("--by", default="user", metavar="ATTR", help="attribute identifying the actor")
    f.add_argument("--from", dest="start", default="-7d", metavar="T", help="start (default -7d)")
    f.add_argument("--to", dest="end", default="now", metavar="T", help="end, exclusive (default now)")
    _connection_args(f)
    f.set_defaults(func=cmd_funnel)

    e = _allow_relative_values(subparsers.add_parser(
        "export", help="download a query (or --events / --funnel) as CSV"))
    e.add_argument("preset", nargs="?", choices=("users", "enrolments"), help="as for `portico query`")
    e.add_argument("--output", "-o", required=True, metavar="FILE.csv", help="file to write, or - for stdout")
    kind = e.add_mutually_exclusive_group()
    kind.add_argument("--events", action="store_true", help="raw events instead of a query")
    kind.add_argument("--funnel", action="store_true", help="a funnel (with --step and --within)")
    e.add_argument("--step", dest="steps", action="append", default=[], metavar="TYPE[,FILTER]")
    e.add_argument("--within", default=None, metavar="DURATION")
    e.add_argument("--funnel-by", default="user", metavar="ATTR")
    e.add_argument("--limit", type=int, default=None, metavar="N", help="rows per page fetched")
    e.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                   help="progress bar on stderr (auto: only on a terminal)")
    _selection_args(e)
    _query_args(e)
    _connection_args(e)
    e.set_defaults(func=cmd_export)

    s = subparsers.add_parser("stats", help="telemetry store statistics")
    _connection_args(s)
    s.set_defaults(func=cmd_stats)


# ---- building requests ---------------------------------------------------------------------

def _usage(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except ValueError as e:
        raise CliError(str(e), 2) from None


def _time_range(args: argparse.Namespace) -> tuple[datetime, datetime]:
    now = datetime.now(timezone.utc)
    start = _usage(lambda: parse_time(args.start, now))
    end = _usage(lambda: parse_time(args.end, now))
    if start >= end:
        raise CliError(f"--from {args.start} ({start.isoformat()}) is not before --to {args.end} "
                       f"({end.isoformat()})", 2)
    return start, end


def _fill_selection(msg: Any, args: argparse.Namespace) -> None:
    start, end = _time_range(args)
    set_timestamp(msg.start, start)
    set_timestamp(msg.end, end)
    msg.types.extend(getattr(args, "types", []))
    for expr in args.filters:
        msg.filters.add(expr=expr)
    geo = _usage(lambda: geo_from_args(args.near, args.bbox))
    if geo is not None:
        msg.geo.CopyFrom(geo)


def _page_size(args: argparse.Namespace) -> int:
    if args.limit is None:
        return 0
    if not 1 <= args.limit <= 10_000:
        raise CliError(f"--limit {args.limit}: expected 1..10000", 2)
    return args.limit


def build_query(args: argparse.Namespace) -> pb.QueryRequest:
    """The QueryRequest for `portico query` / `portico export` flags."""
    msg = pb.QueryRequest()
    _fill_selection(msg, args)
    if args.preset and args.types:
        raise CliError(f"--type: the {args.preset!r} preset chooses the event types itself", 2)
    if args.metric is not None:
        _usage(lambda: _flagged("--metric", params.check_metric, args.metric))
    if args.tz != "UTC":
        _usage(lambda: _flagged("--tz", params.check_tz, args.tz))
    # exact conditions, not expressions: values may contain commas or operators
    for attr, op, value in (("org", "eq", args.org), ("project", "eq", args.project),
                            ("needs", "eq", args.need)):
        if value:
            msg.filters.add(condition=pb.Condition(attr=attr, op=op, value=pb.Value(string_value=value)))
    if args.supply:
        msg.filters.add(condition=pb.Condition(attr=f"supplies.{args.supply}", op="exists"))
    msg.preset = args.preset or ""
    msg.metric = args.metric or ""
    msg.interval = args.interval
    msg.tz = args.tz
    msg.group_by.extend(args.group_by)
    msg.order = args.order or ""
    msg.page_size = _page_size(args)
    msg.page_token = getattr(args, "page_token", None) or ""
    return msg


def build_list(args: argparse.Namespace) -> pb.ListEventsRequest:
    msg = pb.ListEventsRequest()
    _fill_selection(msg, args)
    msg.page_size = _page_size(args)
    msg.page_token = getattr(args, "page_token", None) or ""
    msg.descending = bool(getattr(args, "desc", False))
    return msg


def build_funnel(args: argparse.Namespace, by: str) -> pb.FunnelRequest:
    if not args.steps:
        raise CliError("--step: give at least one step (repeat --step TYPE[,FILTER] in order)", 2)
    if not args.within:
        raise CliError("--within: required for a funnel (e.g. 1d)", 2)
    if getattr(args, "types", None):
        raise CliError("--type: not used by funnels; use --step TYPE", 2)
    if getattr(args, "filters", None) or getattr(args, "near", None) or getattr(args, "bbox", None):
        raise CliError("--filter/--near/--bbox: put funnel filters on each step: --step TYPE,FILTER", 2)
    msg = pb.FunnelRequest(by=by)
    start, end = _time_range(args)
    set_timestamp(msg.start, start)
    set_timestamp(msg.end, end)
    msg.steps.extend(_usage(lambda: [parse_step(s) for s in args.steps]))
    msg.within.FromTimedelta(_usage(lambda: parse_duration(args.within)))
    return msg


def _client(args: argparse.Namespace) -> AnalyticsClient:
    settings = ClientSettings(
        server=args.server or _env_default("PORTICO_SERVER", DEFAULT_SERVER) or DEFAULT_SERVER,
        token=args.token or _env_default("PORTICO_TOKEN", None),
        timeout=args.timeout,
        tls=args.tls, tls_ca_file=args.tls_ca, tls_cert_file=args.tls_cert, tls_key_file=args.tls_key,
    )
    try:
        return AnalyticsClient(settings)
    except ApiError as e:
        raise CliError(str(e), 2) from None


def _api(fn: Callable[[], Any]) -> Any:
    """Run an API call, turning ApiError into a one-line CliError (2 for INVALID_ARGUMENT)."""
    try:
        return fn()
    except ApiError as e:
        raise CliError(str(e), 2 if e.code == grpc.StatusCode.INVALID_ARGUMENT else 1) from None


def _dump(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


# ---- commands ------------------------------------------------------------------------------

def _read_lines(path: str) -> Iterator[tuple[int, str]]:
    if path == "-":
        stream: TextIO = sys.stdin
        yield from ((i, line) for i, line in enumerate(stream, 1))
        return
    try:
        with open(path, encoding="utf-8") as f:
            yield from ((i, line) for i, line in enumerate(f, 1))
    except FileNotFoundError:
        raise CliError(f"{path}: no such file", 2) from None
    except (OSError, UnicodeDecodeError) as e:
        raise CliError(f"{path}: cannot read: {getattr(e, 'strerror', None) or e}", 2) from None


RECORD_IN_FLIGHT = 2   # batches sent but not yet answered: the CLI parses the next while the server stores


def cmd_events_record(args: argparse.Namespace) -> int:
    """Send a JSON-lines file in batches; exit 1 when any line was rejected."""
    if not 1 <= args.batch_size <= 10_000:
        raise CliError(f"--batch-size {args.batch_size}: expected 1..10000", 2)
    accepted = duplicates = 0
    rejected: list[tuple[int, str]] = []
    in_flight: deque[tuple[Callable[[], pb.RecordResponse], list[int]]] = deque()

    def collect() -> None:
        nonlocal accepted, duplicates
        wait, lines = in_flight.popleft()
        resp = _api(wait)
        accepted += resp.accepted
        duplicates += resp.duplicates
        rejected.extend((lines[e.index], e.message) for e in resp.errors)

    with _client(args) as client:
        batch: list[dict[str, Any]] = []
        lines: list[int] = []

        def send() -> None:
            nonlocal batch, lines
            if not batch:
                return
            blob, sent_lines = _pack_batch(batch, lines, rejected)
            batch, lines = [], []
            if not sent_lines:
                return
            if len(in_flight) >= RECORD_IN_FLIGHT:
                collect()
            in_flight.append((_api(lambda: client.record_packed_async(blob)), sent_lines))

        for lineno, line in _read_lines(args.file):
            if not line.strip():
                continue
            try:
                batch.append(wire_event_from_json_line(line))
                lines.append(lineno)
            except ValueError as e:
                rejected.append((lineno, str(e)))
            if len(batch) >= args.batch_size:
                send()
        send()
        while in_flight:
            collect()
    rejected.sort()
    if args.json:
        _dump({"accepted": accepted, "duplicates": duplicates,
               "rejected": [{"line": n, "message": m} for n, m in rejected]})
    else:
        print(f"accepted {accepted}, duplicates {duplicates}, rejected {len(rejected)}")
        for n, m in rejected:
            print(f"  line {n}: {m}")
    return 1 if rejected else 0


def _pack_batch(batch: list[dict[str, Any]], lines: list[int],
                rejected: list[tuple[int, str]]) -> tuple[bytes, list[int]]:
    """The events_msgpack of a batch and the line of each packed event; a value msgpack can't
    carry (an integer over 64 bits) rejects its line only."""
    try:
        return pack_events(batch), lines
    except PackError:
        parts: list[bytes] = []
        kept: list[int] = []
        for event, lineno in zip(batch, lines):
            try:
                parts.append(pack_event(event))
                kept.append(lineno)
            except PackError as e:
                rejected.append((lineno, e.message))
        return join_packed(parts), kept


def cmd_query(args: argparse.Namespace) -> int:
    request = build_query(args)
    with _client(args) as client:
        if args.all:
            pages = _api(lambda: list(client.query_pages(request)))
        else:
            pages = [_api(lambda: client.query(request))]
    if args.json:
        _dump(query_json(pages))
    else:
        print_query_table(pages, sys.stdout)
    return 0


def _event_json(ev: pb.Event) -> dict[str, Any]:
    return {"id": ev.id, "time": format_bucket(ev.time, "UTC"), "type": ev.type,
            "attrs": {k: value_to_py(v) for k, v in ev.attrs.items()}}


def cmd_events_list(args: argparse.Namespace) -> int:
    request = build_list(args)
    with _client(args) as client:
        if args.all:
            pages = _api(lambda: list(client.event_pages(request)))
        else:
            pages = [_api(lambda: client.list_events(request))]
    events = [ev for p in pages for ev in p.events]
    token = pages[-1].next_page_token or None
    if args.json:
        _dump({"events": [_event_json(ev) for ev in events], "next_page_token": token})
        return 0
    rows = [(format_bucket(ev.time, "UTC"), ev.type, ev.id,
             json.dumps(_event_json(ev)["attrs"], ensure_ascii=False, separators=(",", ":"), sort_keys=True))
            for ev in events]
    print_table(("time", "type", "id", "attrs"), rows, sys.stdout)
    print(f"\n{len(events)} events")
    if token:
        print(f"next page: --page-token {token}")
    return 0


def cmd_funnel(args: argparse.Namespace) -> int:
    request = build_funnel(args, args.by)
    with _client(args) as client:
        resp = _api(lambda: client.funnel(request))
    steps = [{"step": s.step, "type": s.type, "entered": s.entered, "converted": s.converted,
              "drop_off": s.drop_off} for s in resp.steps]
    if args.json:
        _dump({"steps": steps})
    else:
        print_table(("step", "type", "entered", "converted", "drop_off"),
                    [tuple(s.values()) for s in steps], sys.stdout, numeric=(True, False, True, True, True))
    return 0


class _Progress:
    """A one-line progress bar on stderr, redrawn at most every ~0.1 s."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.last = 0.0

    def update(self, rows: int, total: int, done: bool = False) -> None:
        import time

        if not self.enabled:
            return
        now = time.monotonic()
        if not done and now - self.last < 0.1:
            return
        self.last = now
        if total > 0:
            frac = min(rows / total, 1.0)
            bar = "#" * int(frac * 30)
            line = f"\r[{bar:<30}] {rows:>10,} / {total:,} rows {frac:4.0%}"
        else:
            line = f"\r{rows:>10,} rows"
        sys.stderr.write(line + ("\n" if done else ""))
        sys.stderr.flush()


def cmd_export(args: argparse.Namespace) -> int:
    request = pb.ExportRequest()
    if args.funnel:
        request.funnel.CopyFrom(build_funnel(args, args.funnel_by))
    elif args.events:
        request.events.CopyFrom(build_list(args))
    else:
        request.query.CopyFrom(build_query(args))
    to_stdout = args.output == "-"
    show = {"always": True, "never": False}.get(args.progress, sys.stderr.isatty())
    progress = _Progress(show)
    target = Path(args.output)
    partial = target.with_name(target.name + ".part")
    rows = 0
    total = -1
    with _client(args) as client:
        try:
            out = sys.stdout.buffer if to_stdout else open(partial, "wb")
        except OSError as e:
            raise CliError(f"--output {args.output}: cannot write: {e.strerror or e}", 2) from None
        try:
            for chunk in _chunks(client, request):
                out.write(chunk.data)
                rows, total = chunk.rows, chunk.total_rows
                progress.update(rows, total)
            out.flush()
        except BaseException:
            if not to_stdout:
                out.close()
                partial.unlink(missing_ok=True)
            raise
        if not to_stdout:
            out.close()
            os.replace(partial, target)
    progress.update(rows, total, done=True)
    message = f"wrote {rows} rows to {'stdout' if to_stdout else target}"
    print(message, file=sys.stderr if to_stdout else sys.stdout)
    return 0


def _chunks(client: AnalyticsClient, request: pb.ExportRequest) -> Iterator[pb.ExportChunk]:
    iterator = client.export(request)
    while True:
        chunk = _api(lambda: next(iterator, None))
        if chunk is None:
            return
        yield chunk


def cmd_stats(args: argparse.Namespace) -> int:
    with _client(args) as client:
        resp = _api(client.stats)
    values = {k: value_to_py(v) for k, v in sorted(resp.values.items())}
    if args.json:
        _dump(values)
    else:
        print_table(("stat", "value"), list(values.items()), sys.stdout)
    return 0

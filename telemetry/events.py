"""The event model and its byte encoding (the only module that knows it).

An event is (id, time_us, type, attrs). Attributes are schemaless: strings, integers,
floats, booleans, lists of scalars and one level of maps of scalars. `make_event`
validates and normalises once, at the edge, so that the writer thread only packs bytes.

Stored form (LMDB):
    row key   = time_us (8 bytes, big-endian) + seq (8 bytes, big-endian): byte order is
                time order, and seq (a store-wide counter) makes keys unique.
    row value = one line of JSON {"i": id, "y": type, "a": attrs} (since 0.3; rows written
                as the msgpack array [id, type, attrs] before are still read).
JSON, not msgpack, because Arrow's C++ JSON reader turns a batch of such rows straight into
typed columns without building a Python object per value: the follower's column segments
cost ~1 us per event that way instead of ~9 (telemetry/arrowseg.py). msgspec encodes it
faster than msgpack's Packer did, and decodes it as fast.
"""

from __future__ import annotations

import itertools
import math
import os
import random
import re
import struct
import time as _time
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import msgpack
import msgspec

from telemetry.errors import EventError

MAX_ATTRS = 64
MAX_KEY_LEN = 64
MAX_STRING_LEN = 2048
MAX_ITEMS = 100            # list members / map keys
MAX_EVENT_BYTES = 16_384   # encoded attrs
MAX_ID_LEN = 128
MAX_TYPE_LEN = 64
RESERVED_ATTRS = frozenset({"type", "time", "id", "geo_cell"})
INT_MIN, INT_MAX = -(1 << 63), (1 << 63) - 1
TIME_US_MAX = 253402300799999999   # 9999-12-31T23:59:59.999999Z

KNOWN_TYPES = (
    "request", "pageview", "click", "outbound", "email_open", "link_click",
    "user.joined", "user.left", "user.role_changed", "enrolment.enrolled", "enrolment.unenrolled",
)

_TYPE_RE = re.compile(r"[a-z0-9_][a-z0-9_.\-]{0,63}\Z")
_ID_RE = re.compile(r"[\x21-\x7e]{1,128}\Z")
_valid_types: set[str] = set(KNOWN_TYPES)
_SCALARS = (str, int, float, bool)
_KEY = struct.Struct(">QQ")

KEY_LEN = 16


class Event(msgspec.Struct, gc=False):
    """One recorded event. Build with `make_event` (which validates); treat fields as final.

    A msgspec Struct, not a dataclass: its __init__ runs in C (35 ns against a slots
    dataclass's 112 ns, and a frozen one's 0.8 us), and gc=False keeps millions of events in
    flight out of the cyclic collector (they hold plain values, never cycles). What is stored
    is `packed_attrs`, fixed at validation, so mutating `attrs` afterwards never changes what
    is recorded. Equality and repr look at id, time_us, type and attrs only.
    """

    id: str
    time_us: int
    type: str
    attrs: Mapping[str, Any]
    # JSON of attrs, computed once by make_event so the writer only concatenates bytes.
    packed_attrs: bytes | None = None
    # The id was generated here (new_id) and the event never committed: the writer can skip
    # the duplicate lookup, since no stored event can hold an id this process just made.
    fresh: bool = False

    def __eq__(self, other: object) -> bool:
        if type(other) is not Event:
            return NotImplemented
        return (self.id == other.id and self.time_us == other.time_us and self.type == other.type
                and self.attrs == other.attrs)

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, time_us={self.time_us!r}, type={self.type!r}, attrs={self.attrs!r})"

    @property
    def time(self) -> datetime:
        """The timestamp as an aware UTC datetime."""
        return datetime.fromtimestamp(self.time_us // 1_000_000, timezone.utc).replace(
            microsecond=self.time_us % 1_000_000)


# ---- ids ------------------------------------------------------------------------------

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]   # 10 bits -> 2 symbols


def _crockford(value: int, symbols: int) -> str:
    """`value` as `symbols` Crockford base32 characters (most significant first)."""
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in reversed(range(symbols)))


class _IdState:
    """The per-process parts of generated ids (see new_id); replaced after a fork."""

    __slots__ = ("node", "counter")

    def __init__(self) -> None:
        r = random.SystemRandom()
        self.node = _crockford(r.getrandbits(40), 8)
        self.counter = itertools.count(r.getrandbits(39))


_ids = _IdState()
# caches: [ms >> 20, its 6 symbols, counter >> 10, its 6 symbols]
_id_cache: list[Any] = [-1, "", -1, ""]


def new_id(time_us: int | None = None) -> str:
    """A 26-character, time-ordered id, ULID-shaped: 48 bits of milliseconds, then 40 bits
    random per process and a 40-bit counter (starting at a random point).

    Crockford base32 keeps ASCII order, so ids sort by creation time and the id index stays
    append-mostly. The counter makes ids unique within a process without a random draw per
    id (a draw and its encoding cost 1.2 us, a quarter of the ingest budget); the random
    part keeps processes apart, like MongoDB's ObjectId. Encoding is table lookups: the
    high bits of the time and of the counter change rarely and are cached.
    """
    ms = (time_us // 1000) if time_us is not None else _time.time_ns() // 1_000_000
    cache = _id_cache
    p = _PAIRS
    if ms >> 20 != cache[0]:
        cache[0], cache[1] = ms >> 20, _crockford((ms >> 20) & ((1 << 28) - 1), 6)
    c = next(_ids.counter) & ((1 << 40) - 1)
    if c >> 10 != cache[2]:
        cache[2], cache[3] = c >> 10, _crockford(c >> 10, 6)
    return f"{cache[1]}{p[(ms >> 10) & 1023]}{p[ms & 1023]}{_ids.node}{cache[3]}{p[c & 1023]}"   # one BUILD_STRING


_CROCKFORD_VALUE = {c: i for i, c in enumerate(_CROCKFORD.encode())}


def generated_id_ms(idkey: bytes) -> int | None:
    """The millisecond a `new_id`-shaped id (26 Crockford symbols) names, else None.

    make_event draws ids from the event's own time, so a generated id says where its row
    is: the writer finds a stored generated id by scanning that millisecond's rows instead
    of keeping an id index entry for every event (only supplied ids are indexed).
    """
    if len(idkey) != 26:
        return None
    ms = 0
    value = _CROCKFORD_VALUE
    for c in idkey[:10]:
        v = value.get(c)
        if v is None:
            return None
        ms = (ms << 5) | v
    return ms if all(c in value for c in idkey[10:]) else None


def row_has_id(value: bytes, idkey: bytes) -> bool:
    """Whether the stored row `value` is the event with id `idkey` (ASCII), without decoding it."""
    if value[:1] == b"{":
        return value.startswith(b'{"i":"' + _id_json(idkey) + b'"')
    return decode_row(bytes(KEY_LEN), value).id.encode() == idkey    # rows before 0.3


def _reseed_ids() -> None:
    """After fork: new random parts, so parent and child never share a counter."""
    global _ids
    _ids = _IdState()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reseed_ids)


# ---- validation -----------------------------------------------------------------------

def _check_type(t: Any) -> str:
    if t in _valid_types:
        return t
    if not isinstance(t, str) or not _TYPE_RE.match(t):
        raise EventError("type", f"{t!r} is not an event type: use 1-{MAX_TYPE_LEN} characters of "
                                 "a-z 0-9 _ . - (e.g. 'pageview', 'user.joined')")
    if len(_valid_types) < 10_000:
        _valid_types.add(t)
    return t


def _check_scalar(path: str, v: Any) -> Any:
    t = type(v)
    if t is str:
        if len(v) > MAX_STRING_LEN:
            raise EventError(path, f"string of {len(v)} characters; at most {MAX_STRING_LEN}")
        return v
    if t is int:
        if not INT_MIN <= v <= INT_MAX:
            raise EventError(path, f"integer {v} does not fit in 64 bits")
        return v
    if t is float:
        if not math.isfinite(v):
            raise EventError(path, f"{v} is not a finite number")
        return v
    if t is bool:
        return v
    if isinstance(v, _SCALARS):   # subclasses (IntEnum, str subclasses): store the plain value
        return _check_scalar(path, (bool if isinstance(v, bool) else int if isinstance(v, int)
                                    else float if isinstance(v, float) else str)(v))
    if v is None:
        raise EventError(path, "null is not a value; leave the attribute out instead")
    raise EventError(path, f"unsupported value of type {type(v).__name__}: "
                           "use a string, number, boolean, list of those or a map of those")


def _check_key(path: str, k: Any) -> None:
    if type(k) is not str or not 0 < len(k) <= MAX_KEY_LEN:
        raise EventError(path, f"attribute names are strings of 1-{MAX_KEY_LEN} characters, got {k!r}")
    if "." in k:
        raise EventError(path, f"attribute name {k!r} contains '.', which is reserved for map members "
                               "(write {\"supplies\": {\"Childcare\": 5}}, queried as supplies.Childcare)")


_good_keys: set[str] = set()


def check_attrs(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """Validate attributes; returns a plain dict (the same values, normalised): `attrs`
    itself when it is already a clean dict.

    The common case (plain strings, in-range ints, finite floats, booleans under known-good
    names) costs one type test per value; anything else takes the careful path below.

    Raises:
        EventError: naming the attribute path (attrs.NAME, attrs.NAME[i], attrs.NAME.KEY).
    """
    if type(attrs) is dict and len(attrs) <= MAX_ATTRS:
        good = _good_keys
        for k, v in attrs.items():
            tv = type(v)
            if k not in good:
                break
            if tv is str:
                if len(v) > MAX_STRING_LEN:
                    break
            elif tv is int:
                if not INT_MIN <= v <= INT_MAX:
                    break
            elif tv is float:
                if v - v != 0.0:      # inf or nan
                    break
            elif tv is not bool:
                break
        else:
            return attrs   # already clean: no copy (the event keeps its packed bytes)
    return _check_attrs_slow(attrs)


def _check_attrs_slow(attrs: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(attrs, Mapping):
        raise EventError("attrs", f"expected a map of attribute names to values, got {type(attrs).__name__}")
    if len(attrs) > MAX_ATTRS:
        raise EventError("attrs", f"{len(attrs)} attributes; at most {MAX_ATTRS}")
    out: dict[str, Any] = {}
    for k, v in attrs.items():
        t = type(v)
        path = f"attrs.{k}"
        _check_key("attrs", k)
        if k in RESERVED_ATTRS:
            raise EventError(path, f"{k!r} is reserved (one of {', '.join(sorted(RESERVED_ATTRS))}); "
                                   "rename the attribute")
        if t is list or t is tuple:
            if len(v) > MAX_ITEMS:
                raise EventError(path, f"list of {len(v)} items; at most {MAX_ITEMS}")
            out[k] = [_check_scalar(f"{path}[{i}]", x) for i, x in enumerate(v)]
        elif isinstance(v, Mapping):
            if len(v) > MAX_ITEMS:
                raise EventError(path, f"map of {len(v)} keys; at most {MAX_ITEMS}")
            m: dict[str, Any] = {}
            for mk, mv in v.items():
                _check_key(path, mk)
                if isinstance(mv, (list, tuple, Mapping)):
                    raise EventError(f"{path}.{mk}", "maps hold scalars only (one level): "
                                                     "a string, number or boolean")
                m[mk] = _check_scalar(f"{path}.{mk}", mv)
            out[k] = m
        else:
            out[k] = _check_scalar(path, v)
        if len(_good_keys) < 10_000:
            _good_keys.add(k)
    return out


def to_time_us(value: datetime | int | float | str | None, field_name: str = "time") -> int:
    """Microseconds since the epoch (UTC) from a datetime, epoch seconds or RFC 3339 text.

    Raises:
        EventError: naive datetime, unparsable text, or out of range 1970..9999.
    """
    if value is None:
        return _time.time_ns() // 1000
    if isinstance(value, bool):
        raise EventError(field_name, f"expected a timestamp, got {value!r}")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise EventError(field_name, f"{value.isoformat()} has no time zone; pass an aware datetime "
                                         "(e.g. datetime.now(timezone.utc))")
        delta = value - datetime(1970, 1, 1, tzinfo=timezone.utc)
        us = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    elif isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise EventError(field_name, f"{value} is not a time")
        us = int(round(value * 1_000_000))
    elif isinstance(value, str):
        text = value.strip()
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise EventError(field_name, f"{value!r} is not an RFC 3339 time "
                                         "(e.g. 2026-03-01T12:00:00Z) nor epoch seconds") from None
        if dt.tzinfo is None:
            raise EventError(field_name, f"{value!r} has no offset; add 'Z' or '+HH:MM'")
        return to_time_us(dt, field_name)
    else:
        raise EventError(field_name, f"expected a datetime, epoch seconds or RFC 3339 text, "
                                     f"got {type(value).__name__}")
    if not 0 <= us <= TIME_US_MAX:
        raise EventError(field_name, f"{value!r} is outside 1970-01-01..9999-12-31")
    return us


def make_event(type: str, attrs: Mapping[str, Any] | None = None, *,  # noqa: A002 - API name
               id: str | None = None, time: datetime | int | float | str | None = None,  # noqa: A002
               time_us: int | None = None) -> Event:
    """Validate and normalise an event.

    Args:
        type: event type, e.g. "pageview" or "user.joined" ([a-z0-9_.-], <= 64 chars).
        attrs: schemaless attributes (see module docstring).
        id: idempotency key (1-128 printable ASCII characters); generated when None.
        time: datetime (aware), epoch seconds, or RFC 3339 text; now when None.
        time_us: microseconds since the epoch (instead of `time`).

    Raises:
        EventError: naming the field (type, id, time, attrs.NAME...).
    """
    t = type if type in _valid_types else _check_type(type)
    if time_us is not None:
        if type_of(time_us) is not int and (not isinstance(time_us, int) or isinstance(time_us, bool)) \
                or not 0 <= time_us <= TIME_US_MAX:
            raise EventError("time", f"time_us {time_us!r} is not microseconds within 1970..9999")
        us = time_us
    else:
        us = to_time_us(time)
    fresh = id is None
    if fresh:
        id = new_id(us)  # noqa: A001
    elif type_of(id) is not str or not _ID_RE.match(id):
        raise EventError("id", f"{id!r} is not an id: use 1-{MAX_ID_LEN} printable ASCII characters "
                               "without spaces")
    if not attrs:
        return Event(id, us, t, {}, b"{}", fresh)
    # Fast path (the hot one: plain scalars under known-good names): encode first, in C.
    # A JSON text of at most MAX_STRING_LEN bytes cannot hold a longer string, so strings
    # need no length test; what is left is one type test per value. Anything unusual
    # (lists, maps, new names, values msgspec can't or shouldn't encode) takes check_attrs.
    if type_of(attrs) is dict and len(attrs) <= MAX_ATTRS:
        try:
            packed = _json_encode(attrs)
        except (TypeError, ValueError, UnicodeError, OverflowError):
            packed = b""
        if 0 < len(packed) <= MAX_STRING_LEN:
            good = _good_keys
            for k, v in attrs.items():
                if k not in good:
                    break
                tv = type_of(v)
                if tv is str or tv is bool:
                    continue
                if tv is int:
                    if INT_MIN <= v <= INT_MAX:
                        continue
                    break
                if tv is not float or v - v != 0.0:     # v - v: nan for inf and nan
                    break
            else:
                return Event(id, us, t, attrs, packed, fresh)
            clean = _check_attrs_slow(attrs)    # check_attrs' own quick test just failed above
        else:
            clean = check_attrs(attrs)          # strings may be long: it tests their lengths
    else:
        clean = check_attrs(attrs)
    try:
        packed = _json_encode(clean)
    except (TypeError, ValueError, UnicodeError) as e:   # e.g. a lone surrogate in a string
        raise EventError("attrs", f"cannot be encoded: {e}") from None
    if len(packed) > MAX_EVENT_BYTES:
        biggest = max(clean, key=lambda k: len(_json_encode(clean[k])))
        raise EventError("attrs", f"event of {len(packed)} bytes encoded; at most {MAX_EVENT_BYTES} "
                                  f"(largest attribute: {biggest!r})")
    return Event(id, us, t, clean, packed, fresh)


_json_encode = msgspec.json.Encoder().encode   # thread-safe; 0.45 us for 14 attributes (msgpack: 0.57)

type_of = type  # `make_event` shadows the builtin with its argument name


def event_from_json(obj: Mapping[str, Any]) -> Event:
    """An event from its JSON form {"id", "time", "type", "attrs"} (time: RFC 3339 or epoch s).

    Raises:
        EventError: naming the field; unknown top-level keys are refused.
    """
    if not isinstance(obj, Mapping):
        raise EventError("event", f"expected an object with type, attrs, id, time; got {type(obj).__name__}")
    extra = set(obj) - {"id", "time", "type", "attrs"}
    if extra:
        raise EventError(sorted(extra)[0], "unknown field; an event has id, time, type and attrs "
                                           "(put custom data in attrs)")
    if "type" not in obj:
        raise EventError("type", "required (e.g. 'pageview')")
    return make_event(obj["type"], obj.get("attrs") or {}, id=obj.get("id"), time=obj.get("time"))


def event_to_json(ev: Event) -> dict[str, Any]:
    """The JSON form of an event; time as RFC 3339 with microseconds and 'Z'."""
    return {"id": ev.id, "time": format_time_us(ev.time_us), "type": ev.type, "attrs": dict(ev.attrs)}


def format_time_us(us: int) -> str:
    """RFC 3339 UTC text with microseconds, e.g. 2026-03-01T12:00:00.000000Z."""
    dt = datetime.fromtimestamp(us // 1_000_000, timezone.utc).replace(microsecond=us % 1_000_000)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def coerce_event(item: Event | Mapping[str, Any]) -> Event:
    """An Event as it is, or one built from its JSON-like mapping form."""
    if type(item) is Event:
        return item if item.packed_attrs is not None else make_event(
            item.type, item.attrs, id=item.id, time_us=item.time_us)
    if isinstance(item, Mapping):
        return event_from_json(item)
    raise EventError("event", f"expected an Event or a mapping, got {type(item).__name__}")


# ---- bytes ----------------------------------------------------------------------------

row_key = _KEY.pack   # row_key(time_us, seq) -> 16 bytes, big-endian: byte order == time order


def split_key(key: bytes) -> tuple[int, int]:
    """(time_us, seq) of a row key."""
    return _KEY.unpack(key)


_type_heads: dict[str, bytes] = {}
_ID_NEEDS_ESCAPE = re.compile(rb'["\\]')


def _id_json(ik: bytes) -> bytes:
    """The JSON string body of an ASCII id (ids are printable ASCII: only " and \\ need escaping)."""
    return ik if _ID_NEEDS_ESCAPE.search(ik) is None else _json_encode(ik.decode())[1:-1]


def encode_rows(events: list[Event], idkeys: list[bytes]) -> list[bytes]:
    """Stored row values, JSON {"i": id, "y": type, "a": attrs}, of events whose ids the
    caller has already encoded (`idkeys`, ASCII): one comprehension concatenating parts
    encoded earlier, so the writer never re-encodes attributes (its hot path). Generated ids
    (Crockford base32) need no escaping; types are [a-z0-9_.-] and never do."""
    heads = _type_heads
    for t in {e.type for e in events} - heads.keys():
        heads[t] = b'","y":"' + t.encode() + b'","a":'
    join = b"".join       # one join per row: 40 ns less than four concatenations
    return [join((b'{"i":"', ik if e.fresh else _id_json(ik), heads[e.type], e.packed_attrs, b"}"))  # type: ignore[arg-type]
            for e, ik in zip(events, idkeys)]


class _Row(msgspec.Struct):
    i: str
    y: str
    a: dict[str, Any]


_row_decoder = msgspec.json.Decoder(_Row)
_rows_decoder = msgspec.json.Decoder(list[_Row])


def decode_row(key: bytes, value: bytes) -> Event:
    """The Event stored under `key` with row `value`."""
    if value[:1] == b"{":
        r = _row_decoder.decode(value)
        return Event(r.i, _KEY.unpack(key)[0], r.y, r.a, None)
    eid, etype, attrs = msgpack.unpackb(value, raw=False, strict_map_key=False)   # rows before 0.3
    return Event(eid, _KEY.unpack(key)[0], etype, attrs, None)


def decode_row_batch(values: list[bytes]) -> list[tuple[str, str, dict[str, Any]]]:
    """(id, type, attrs) of many stored row values, decoded in one msgspec call (the loop
    over rows runs in C); rows in the older msgpack form are decoded one by one."""
    try:
        rows = _rows_decoder.decode(b"[" + b",".join(values) + b"]")
    except msgspec.DecodeError:
        return [(e.id, e.type, e.attrs) for e in (decode_row(b"\0" * KEY_LEN, v) for v in values)]
    return [(r.i, r.y, r.a) for r in rows]


def encode_value(v: Any) -> bytes:
    """Bytes of a scalar attribute value for the string dictionary (type-preserving)."""
    return msgpack.packb(v, use_bin_type=True)


def decode_value(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False)

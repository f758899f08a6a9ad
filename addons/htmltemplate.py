"""Page templates: a page that differs from the last one only in digits or in one token
is edited without running the editors again.

Not an addon: addons/htmledit.py keeps one template per page (host, path, editors, headers).

Why: a page whose body changes on every request (a counter, a timestamp, a CSRF token, a
nonce in a comment) misses HtmlEdit's memo every time, and editing it again costs a regex
pass over the whole page and a rebuild (~20 us for 2 KB in process, twice that in a busy
gateway). Such pages usually differ from the previous response in a few digits or in one
token.

How: when the editors run on a body P and produce E, they report their edits
(`HtmlPage.edits`, mapped here to P's coordinates by `merge_edits`, after `check_edits`
verified them against the bytes). For a new body N of the same length, the span from the
first to the last byte where N and P differ is found with two int conversions and an XOR.
If every difference in it is a digit replaced by a digit, or the span is one run of word
characters in a place no editor reads (`_quiet_word`), and the bytes of every edit are
unchanged, the editors would make the same edits at the same places with the same bytes
(their promise in `HtmlEditor.edit_html`) and copy everything else as it is: their result
for N is E with the text between edits taken from N. About 4 us for 2 KB when the span lies
between two edits. Anything else (another length, a change inside a link or a tag name,
several tokens at once) returns None and the editors run as before.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

Edit = tuple[int, int, int]  # (start, end, new length): [start, end) replaced by that many bytes

_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_WORD_BYTES = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
_WORDS = re.compile(rb"[0-9A-Za-z_]+")
_A_TAG = re.compile(rb"<[aA]")


@dataclass(slots=True)
class PageTemplate:
    """The last body edited for a page, its result, and where the edits are (see the module docstring)."""

    body: bytes                  # P: the body as sent by the upstream
    result: bytes                # E: the body after the editors
    csp: list[str] | None        # the Content-Security-Policy values the editors set, or None
    starts: tuple[int, ...]      # the edits' starts in P, in order
    ends: tuple[int, ...]        # their ends (in order too: edits don't overlap)
    shifts: tuple[int, ...]      # shifts[i]: how much longer the first i edits made the page
    misses: int = 0              # apply() failures in a row (HtmlEdit stops trying after a while)

    @classmethod
    def build(cls, body: bytes, result: bytes, csp: list[str] | None, edits: Sequence[Edit]) -> PageTemplate:
        shifts = [0]
        for start, end, length in edits:
            shifts.append(shifts[-1] + length - (end - start))
        return cls(body, result, csp, tuple(e[0] for e in edits), tuple(e[1] for e in edits), tuple(shifts))

    def apply(self, new: bytes) -> bytes | None:
        """The editors' result for `new`, or None when the template can't tell it; on success
        `new` becomes the template's body (the next page is compared with it)."""
        old = self.body
        if len(new) != len(old):
            return None
        if new == old:
            return self.result
        diff = int.from_bytes(new, "big") ^ int.from_bytes(old, "big")
        size = len(new)
        first = size - (diff.bit_length() + 7) // 8           # first byte that differs
        end = size - ((diff & -diff).bit_length() - 1) // 8   # one past the last
        if new[first:end].translate(_DIGITS_AS_ZERO) != old[first:end].translate(_DIGITS_AS_ZERO) \
                and not _quiet_word(old, new, first, end):
            return None  # something other than digits changed, where an editor may look
        i = bisect_right(self.ends, first)  # edits [:i] end at or before the span
        j = bisect_left(self.starts, end, i)  # edits [i:j] are in it (or cover part of it)
        shifts, out = self.shifts, self.result
        if i == j:  # the common case: one change, between two edits
            at = first + shifts[i]
            result = b"".join((out[:at], new[first:end], out[at + end - first:]))
        else:  # changes on both sides of edits: each edit's own bytes must be unchanged
            pieces = [out[:first + shifts[i]]]
            at = first
            for k in range(i, j):
                start, stop = self.starts[k], self.ends[k]
                if start < at or new[start:stop] != old[start:stop]:
                    return None
                pieces += (new[at:start], out[start + shifts[k]:stop + shifts[k + 1]])
                at = stop
            pieces += (new[at:end], out[max(at, end) + shifts[j]:])  # an edit may end past the span
            result = b"".join(pieces)
        self.body, self.result = new, result
        return result


def _quiet_word(old: bytes, new: bytes, first: int, end: int) -> bool:
    """True when [first, end) is word characters in both bodies (a token: letters, digits,
    `_`) and the run of word characters around it is one no editor reads: not after `<`
    (a tag name: `<a`), `/` (`</head`) or `-` and not before `-` (`data-portico`), and not
    inside an `<a` tag (where `href` is looked for): no `<a` since the last `>`."""
    if not (_WORDS.fullmatch(old, first, end) and _WORDS.fullmatch(new, first, end)):
        return False
    start = len(old[:first].rstrip(_WORD_BYTES))
    stop = len(old) - len(old[end:].lstrip(_WORD_BYTES))
    if old[start - 1:start] in (b"<", b"/", b"-") or old[stop:stop + 1] == b"-":
        return False
    return _A_TAG.search(old, old.rfind(b">", 0, start) + 1, start) is None


def check_edits(before: bytes, after: bytes, edits: Sequence[Edit]) -> bool:
    """True when `after` is `before` with exactly `edits` applied (in order, not overlapping)
    and nothing else changed: an editor's report is verified, not trusted."""
    was = now = 0
    for start, end, length in edits:
        if start < was or end < start or length < 0:
            return False
        gap = start - was
        if after[now:now + gap] != before[was:start]:
            return False
        now += gap + length
        was = end
    return len(after) - now == len(before) - was and after[now:] == before[was:]


def merge_edits(done: list[Edit], before: bytes, after: bytes, edits: Sequence[Edit]) -> list[Edit] | None:
    """`done` (edits in the original body's coordinates, which turned it into `before`) plus
    `edits` (which turned `before` into `after`, in `before`'s coordinates), all in the
    original's coordinates; None when the report is wrong or an edit falls inside an
    earlier edit's output (the page then gets no template)."""
    if not check_edits(before, after, edits):
        return None
    placed: list[tuple[int, int, int, int]] = []  # done edits: (start, end, length, start in `before`)
    shift = 0
    for start, end, length in done:
        placed.append((start, end, length, start + shift))
        shift += length - (end - start)
    merged = list(done)
    for start, end, length in edits:
        shift = 0
        for d_start, d_end, d_length, at in placed:
            if at + d_length <= start:  # that edit's output ends before this edit
                shift += d_length - (d_end - d_start)
            elif at >= end:             # ... or starts after it (an insertion here goes first)
                break
            else:
                return None             # this edit changes an earlier edit's output
        merged.append((start - shift, end - shift, length))
    merged.sort(key=lambda e: (e[0], e[1]))
    return merged

"""Page templates: a page that differs from the last one only in digits or in tokens is
edited without running the editors again.

Not an addon: addons/htmledit.py keeps one template per page (host, path, editors, headers).

Why: a page whose body changes on every request (a counter, a timestamp, a CSRF token, a
nonce in a comment) misses HtmlEdit's memo every time, and editing it again costs a regex
pass over the whole page and a rebuild (~20 us for 2 KB in process, twice that in a busy
gateway). Such pages usually differ from the previous response in a few digits or tokens.

How: when the editors run on a body P and produce E, they report their edits
(`HtmlPage.edits`, mapped here to P's coordinates by `merge_edits`, after `check_edits`
verified them against the bytes), each with the editor that made it. For a new body N of
the same length, the span from the first to the last byte where N and P differ is found
with two int conversions and an XOR. The template serves N when every difference in it is
a digit replaced by a digit, or the span is one run of word characters where no editor
reads it for its spelling (`_quiet_run`: not a tag name, `</head`, `data-portico`; inside
an `<a` tag only within one edit); failing that, when each of the separate spans where
N and P differ (up to MAX_SEGMENTS: a token in a meta tag, a form and a link) is such a
change on its own. The editors would then make the same edits at the same places (their
promise in `HtmlEditor.edit_html`) and copy everything else as it is: their result for N
is E with the text between edits taken from N, and any edit whose own bytes changed (a
link whose digits or token changed) replaced by what its editor's `redo_edit` says for
the new bytes (one link signed, not the page searched). About 4 us for 2 KB when the span
lies between two edits. A body of another length is served when it differs in one run
between two edits: digits for digits ("9" -> "10") or a quiet run of word characters
(`_resized`); the edits after it move. Anything else (a tag name, a change of length inside
an edit, an editor that can't redo its edit) returns None and the editors run as before.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Edit = tuple[int, int, int]  # (start, end, new length): [start, end) replaced by that many bytes
OwnedEdit = tuple[int, int, int, int]  # an Edit and the index of the editor that made it (NO_OWNER: none)
Redo = Callable[[int, bytes], "bytes | None"]  # (owner, an edit's new bytes) -> their replacement, or None
NO_OWNER = -1

_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")
_WORD_BYTES = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_"
_WORDS = re.compile(rb"[0-9A-Za-z_]+")
_A_TAG = re.compile(rb"<[aA]")
_DIFFERENT = re.compile(rb"[^\x00]+")  # over the XOR of two bodies: where they differ
MAX_SEGMENTS = 8  # a page changed in more places than this is edited in full


@dataclass(slots=True)
class PageTemplate:
    """The last body edited for a page, its result, and where the edits are (see the module docstring)."""

    body: bytes                  # P: the body as sent by the upstream
    result: bytes                # E: the body after the editors
    csp: list[str] | None        # the Content-Security-Policy values the editors set, or None
    starts: tuple[int, ...]      # the edits' starts in P, in order
    ends: tuple[int, ...]        # their ends (in order too: edits don't overlap)
    shifts: tuple[int, ...]      # shifts[i]: how much longer the first i edits made the page
    owners: tuple[int, ...]      # the editor that made each edit (for `redo`), or NO_OWNER
    csp_in: tuple[str, ...] = ()  # the Content-Security-Policy values the result was made under
    misses: int = 0              # apply() failures in a row (HtmlEdit stops trying after a while)

    @classmethod
    def build(cls, body: bytes, result: bytes, csp: list[str] | None,
              edits: Sequence[Edit | OwnedEdit], csp_in: Sequence[str] = ()) -> PageTemplate:
        shifts = [0]
        for start, end, length, *_ in edits:
            shifts.append(shifts[-1] + length - (end - start))
        return cls(body, result, csp, tuple(e[0] for e in edits), tuple(e[1] for e in edits), tuple(shifts),
                   tuple(e[3] if len(e) > 3 else NO_OWNER for e in edits), tuple(csp_in))

    def apply(self, new: bytes, redo: Redo | None = None, refresh: frozenset[int] = frozenset()) -> bytes | None:
        """The editors' result for `new`, or None when the template can't tell it; on success
        `new` becomes the template's body (the next page is compared with it). `redo(owner,
        span)` asks the editor that reported an edit what it now puts in place of that
        edit's changed bytes `span` (None: it can't tell); the edits of the editors in
        `refresh` are asked again even where their bytes are unchanged (what they insert
        depends on something else that changed: the page's Content-Security-Policy)."""
        old = self.body
        size = len(new)
        if size != len(old):
            return None if refresh else self._resized(new)
        if refresh and not refresh <= set(self.owners):
            return None  # such an editor made no edit here; under the new policy it might
        if new == old:
            if not refresh:
                return self.result
            first = end = 0
        else:
            diff = int.from_bytes(new, "big") ^ int.from_bytes(old, "big")
            first = size - (diff.bit_length() + 7) // 8           # first byte that differs
            end = size - ((diff & -diff).bit_length() - 1) // 8   # one past the last
        i = bisect_right(self.ends, first)  # edits [:i] end at or before the span
        j = bisect_left(self.starts, end, i)  # edits [i:j] are in it (or cover part of it)
        if new != old and not self._unread(old, new, first, end, i, j):
            # several changes (a token in a form and in a meta tag): each must be one
            segments = _changed_segments(diff, size, first, end, old)
            if not 1 < len(segments) <= MAX_SEGMENTS or not all(
                    self._unread(old, new, a, b, bisect_right(self.ends, a), bisect_left(self.starts, b))
                    for a, b in segments):
                return None  # something other than digits changed, where an editor may look
        if refresh:  # every edit is looked at: the whole page is rebuilt from the pieces
            i, j, first, end = 0, len(self.starts), 0, size
        shifts, out = self.shifts, self.result
        if i == j:  # the common case: one change, between two edits
            at = first + shifts[i]
            result = b"".join((out[:at], new[first:end], out[at + end - first:]))
        else:  # edits in the span: each is copied if its bytes are unchanged, else redone
            at = min(first, self.starts[i])  # edit i may start before the span
            pieces = [out[:at + shifts[i]]]
            redone: dict[int, int] = {}  # edit -> its new length, when that changed
            for k in range(i, j):
                start, stop = self.starts[k], self.ends[k]
                pieces.append(new[at:start])
                if new[start:stop] == old[start:stop] and self.owners[k] not in refresh:
                    pieces.append(out[start + shifts[k]:stop + shifts[k + 1]])
                else:
                    again = redo(self.owners[k], new[start:stop]) if redo is not None and self.owners[k] >= 0 \
                        else None
                    if again is None:
                        return None
                    pieces.append(again)
                    if len(again) != self._output_length(k):
                        redone[k] = len(again)  # a new length: the shifts after it move
                at = stop
            pieces += (new[at:end], out[max(at, end) + shifts[j]:])  # an edit may end past the span
            result = b"".join(pieces)
            if redone:
                self._relength(redone)
        self.body, self.result = new, result
        return result

    def _resized(self, new: bytes) -> bytes | None:
        """`apply` for a body of another length: one changed run of digits, or one quiet run
        of word characters, between two edits (a counter that grew a digit, "9 minutes ago"
        -> "10 minutes ago", a token of another length); the edits after it move."""
        old = self.body
        m = min(len(old), len(new))
        if not m:
            return None
        x = int.from_bytes(old[:m], "big") ^ int.from_bytes(new[:m], "big")
        first = m - (x.bit_length() + 7) // 8                 # bytes the two have in common first
        y = int.from_bytes(old[-m:], "big") ^ int.from_bytes(new[-m:], "big")
        tail = min(((y & -y).bit_length() - 1) // 8 if y else m, m - first)  # ... and last
        old_end, new_end = len(old) - tail, len(new) - tail
        if first == old_end or first == new_end:  # only added or taken away ("17" -> "170"):
            if not first:
                return None
            first -= 1                            # the byte before joins both ("7" -> "70")
        i = bisect_right(self.ends, first)
        if i != bisect_left(self.starts, old_end, i):
            return None  # an edit is in it
        was, now = old[first:old_end], new[first:new_end]
        if not (was.isdigit() and now.isdigit()):  # a longer or shorter number stays a number
            run = _quiet_run(old, old, first, old_end, now)
            if run < 0 or _in_a_tag(old, run):
                return None
        at = first + self.shifts[i]
        result = b"".join((self.result[:at], now, self.result[at + old_end - first:]))
        delta = len(new) - len(old)
        self.starts = (*self.starts[:i], *(s + delta for s in self.starts[i:]))
        self.ends = (*self.ends[:i], *(e + delta for e in self.ends[i:]))
        self.body, self.result = new, result
        return result

    def _unread(self, old: bytes, new: bytes, first: int, end: int, i: int, j: int) -> bool:
        """Whether the change of [first, end) (edits [i:j] in or around it) is one the editors
        don't read, except the editor whose edit holds it, which can redo that edit: digits
        for digits, or one run of word characters outside tag names and `data-` names; inside
        an `<a` tag, only within one edit."""
        if new[first:end].translate(_DIGITS_AS_ZERO) == old[first:end].translate(_DIGITS_AS_ZERO):
            return True
        run = _quiet_run(old, new, first, end)
        if run < 0:
            return False
        if not _in_a_tag(old, run):
            return True
        return j == i + 1 and self.starts[i] <= first and end <= self.ends[i]

    def _relength(self, lengths: dict[int, int]) -> None:
        """New output lengths for some edits (redone): the shifts after them move."""
        shifts = [0]
        for k, (start, stop) in enumerate(zip(self.starts, self.ends)):
            shifts.append(shifts[-1] + lengths.get(k, self._output_length(k)) - (stop - start))
        self.shifts = tuple(shifts)

    def _output_length(self, k: int) -> int:
        """How many bytes edit k puts in place of its [start, end)."""
        return self.ends[k] - self.starts[k] + self.shifts[k + 1] - self.shifts[k]


def _changed_segments(diff: int, size: int, first: int, end: int, old: bytes) -> list[tuple[int, int]]:
    """The spans in [first, end) where the bodies differ (`diff`: their XOR as an int), two
    spans joined when only word characters lie between them (one token whose letters happen
    to match in places)."""
    segments: list[tuple[int, int]] = []
    for m in _DIFFERENT.finditer(diff.to_bytes(size, "big"), first, end):
        a, b = m.span()
        if segments and _WORDS.fullmatch(old, segments[-1][1], a):
            segments[-1] = (segments[-1][0], b)
        else:
            segments.append((a, b))
            if len(segments) > MAX_SEGMENTS:
                break
    return segments


def _in_a_tag(body: bytes, at: int) -> bool:
    """Whether `at` is inside an `<a` tag (where Outbound looks for `href`): an `<a` since the last `>`."""
    return _A_TAG.search(body, body.rfind(b">", 0, at) + 1, at) is not None


def _quiet_run(old: bytes, new: bytes, first: int, end: int, replaced: bytes | None = None) -> int:
    """Where the run of word characters around [first, end) starts, when [first, end) is word
    characters in both bodies (a token: letters, digits, `_`) and the run is one no editor
    reads for its spelling: not after `<` (a tag name: `<a`), `</` (`</head`) or `-` and not
    before `-` (`data-portico`); else -1. (A run after a lone `/`, as in a URL's path, is
    not a tag name. Inside an `<a` tag, where `href` is looked for, `PageTemplate.apply`
    asks more.) With `replaced`, the new body has those bytes in place of [first, end)."""
    if not (_WORDS.fullmatch(old, first, end) and (_WORDS.fullmatch(new, first, end) if replaced is None
                                                   else _WORDS.fullmatch(replaced))):
        return -1
    start = len(old[:first].rstrip(_WORD_BYTES))
    stop = len(old) - len(old[end:].lstrip(_WORD_BYTES))
    if old[start - 1:start] in (b"<", b"-") or old[start - 2:start] == b"</" or old[stop:stop + 1] == b"-":
        return -1
    return start


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


def merge_edits(done: list[OwnedEdit], before: bytes, after: bytes, edits: Sequence[Edit],
                owner: int = NO_OWNER) -> list[OwnedEdit] | None:
    """`done` (edits in the original body's coordinates, which turned it into `before`) plus
    `edits` (which turned `before` into `after`, in `before`'s coordinates, made by editor
    `owner`), all in the original's coordinates; None when the report is wrong or an edit
    falls inside an earlier edit's output (the page then gets no template)."""
    if not check_edits(before, after, edits):
        return None
    placed: list[tuple[int, int, int, int]] = []  # done edits: (start, end, length, start in `before`)
    shift = 0
    for start, end, length, _ in done:
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
        merged.append((start - shift, end - shift, length, owner))
    merged.sort(key=lambda e: (e[0], e[1]))
    return merged

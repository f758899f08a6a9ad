"""The store-wide value dictionary: codes survive a reopen; bulk coding equals one by one."""

from __future__ import annotations

from telemetry.dictionary import Dictionary


def test_bulk_codes_equal_single_codes_and_keep_booleans_apart(tmp_path):
    d = Dictionary(tmp_path / "dict.lmdb", sync=False)
    known = ["org1", 7, "x"]
    first = d.codes_of(known)
    assert first == [d.code(v) for v in known]
    mixed = ["x", "new", 7, True, 1, False, 0, "org1", "new"]
    got = d.codes_of(mixed)
    assert got[:3] == [first[2], got[1], first[1]] and got[1] == got[8]
    assert len({got[3], got[4], got[5], got[6]}) == 4, "True, 1, False and 0 are four values"
    assert got == [d.code(v) for v in mixed]
    d.commit()
    d.close()
    again = Dictionary(tmp_path / "dict.lmdb", sync=False, readonly=True)
    assert [again.value(c) for c in got] == mixed

"""The dashboard's files: vendored libraries pinned by hash, nothing loaded from elsewhere."""

from __future__ import annotations

import hashlib
import re

import pytest

from addons.dashboard import STATIC_DIR

PINNED = {
    "vendor/chart.umd.min.js": "de315773454b6076b63990bfa05ce5155a37f71992c87d7bb5f9a2ea698697ef",
    "vendor/topojson-client.min.js": "25cd02ae486cc5063e0215a4e4cfb15de83700c87ac48bac4d57dc6aaf3ebb89",
    "vendor/land-110m.json": "ead5f68119c49a9250902e7da303bcb209341bbb8fefe7369a439b48b704658a",
}


@pytest.mark.parametrize(("name", "digest"), sorted(PINNED.items()))
def test_vendored_files_match_their_pinned_hash_and_are_documented(name, digest):
    assert hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest() == digest
    assert digest in (STATIC_DIR / "vendor" / "VENDOR.md").read_text()


def test_every_vendored_file_has_its_licence():
    names = {p.name for p in (STATIC_DIR / "vendor").iterdir()}
    assert {"LICENSE.chart.js.md", "LICENSE.topojson-client.txt", "LICENSE.world-atlas.txt"} <= names


@pytest.mark.parametrize("name", ["index.html", "dashboard.css", "dashboard.js"])
def test_own_files_load_nothing_from_outside(name):
    text = (STATIC_DIR / name).read_text()
    # the only absolute URL allowed is the SVG namespace name (an identifier, never fetched)
    urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s'\")]*", text)) - {"http://www.w3.org/2000/svg"}
    assert not urls, urls
    assert "@import" not in text and "<script>" not in text  # no inline scripts: the CSP forbids them

"""Country/city lookups in a MaxMind-format database file (GeoLite2/GeoIP2 City or Country).

Not an addon: a helper for `tracking.py`. Optional: used only when `tracking.geoip_db`
names a file. Lookups are memoised per truncated network, so the raw address is never
kept even in memory longer than the request.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any


class GeoIPError(Exception):
    """The database can't be opened; the message names the file."""


class GeoIP:
    def __init__(self, path: Path) -> None:
        try:
            import maxminddb
        except ImportError:  # pragma: no cover - maxminddb is a dependency
            raise GeoIPError("tracking.geoip_db needs the 'maxminddb' package: pip install maxminddb") from None
        try:
            self.reader = maxminddb.open_database(str(path))
        except (OSError, ValueError, maxminddb.InvalidDatabaseError) as e:   # the last is a RuntimeError
            raise GeoIPError(f"tracking.geoip_db: cannot open {str(path)!r} as a MaxMind database: {e}") from None
        self.lookup = lru_cache(maxsize=8192)(self._lookup)

    def _lookup(self, address: str) -> dict[str, Any]:
        """{"country": "DE", "city": "Berlin", "lat": 52.5, "lon": 13.4} (keys present when known)."""
        try:
            rec = self.reader.get(address)
        except ValueError:
            return {}
        if not isinstance(rec, dict):
            return {}
        out: dict[str, Any] = {}
        country = (rec.get("country") or rec.get("registered_country") or {}).get("iso_code")
        if country:
            out["country"] = str(country)
        city = ((rec.get("city") or {}).get("names") or {}).get("en")
        if city:
            out["city"] = str(city)
        loc = rec.get("location") or {}
        if isinstance(loc.get("latitude"), (int, float)) and isinstance(loc.get("longitude"), (int, float)):
            # rounded: a city-level position, never a street
            out["lat"], out["lon"] = round(float(loc["latitude"]), 2), round(float(loc["longitude"]), 2)
        return out

    def close(self) -> None:
        self.reader.close()

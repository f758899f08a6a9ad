"""GeoIP with a real MaxMind DB file, built in the test with `mmdb-writer` (the format
MaxMind's own readers read): the lookup helper, and country/city/location on a request
event recorded by a real gateway."""

from __future__ import annotations

import pytest
from mmdb_writer import MMDBWriter, MmdbF64
from netaddr import IPSet

from addons.geoip import GeoIP, GeoIPError
from proxy.schema import ConfigError
from tests.integration.harness import GatewayThread, request
from tests.tracking.gateway import HtmlUpstream, events, gateway_config, requires_store

BERLIN = {"country": {"iso_code": "DE", "names": {"en": "Germany"}}, "city": {"names": {"en": "Berlin"}},
          "location": {"latitude": MmdbF64(52.5244), "longitude": MmdbF64(13.4105)}}


def build_city_db(path, networks):
    """A GeoLite2-City-shaped database (IPv6 tree with IPv4 mapped, as MaxMind ships it)."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City", languages=["en"],
                        description={"en": "Portico test database"})
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    writer.to_db_file(str(path))
    return path


def test_lookup_reads_country_city_and_rounded_location(tmp_path):
    db = build_city_db(tmp_path / "city.mmdb", {
        "127.0.0.0/8": BERLIN,
        "203.0.113.0/24": {"registered_country": {"iso_code": "NZ"}},
        "2001:db8::/32": {"country": {"iso_code": "FR"}}})
    geo = GeoIP(db)
    try:
        assert geo.lookup("127.0.0.0") == {"country": "DE", "city": "Berlin", "lat": 52.52, "lon": 13.41}
        assert geo.lookup("203.0.113.0") == {"country": "NZ"}  # registered country when no country
        assert geo.lookup("2001:db8:1234::") == {"country": "FR"}
        assert geo.lookup("198.51.100.0") == {}  # not in the database
        assert geo.lookup("not an address") == {}
    finally:
        geo.close()


@requires_store
def test_a_file_that_is_not_a_maxmind_db_stops_startup_with_a_clear_error(tmp_path):
    bad = tmp_path / "bad.mmdb"
    bad.write_bytes(b"this is not a MaxMind database" * 10)
    with pytest.raises(ConfigError, match=r"tracking.geoip_db: cannot open .*bad.mmdb"):
        GatewayThread(gateway_config("http://127.0.0.1:9", str(tmp_path / "events"), f"  geoip_db: {bad}"))
    with pytest.raises(GeoIPError, match=r"tracking.geoip_db: cannot open .*missing.mmdb"):
        GeoIP(tmp_path / "missing.mmdb")


@requires_store
def test_request_event_carries_country_and_city_from_the_configured_database(tmp_path):
    db = build_city_db(tmp_path / "city.mmdb", {"127.0.0.0/8": BERLIN})
    upstream = HtmlUpstream()
    gw = GatewayThread(gateway_config(upstream.url, str(tmp_path / "events"), f"  geoip_db: {db}"))
    try:
        ua = "curl/8 geoip-test"
        assert request(gw.url, "/geo", headers={"User-Agent": ua})[0] == 200
        found = events(gw.gateway.store, "request", wait_for=1, where=lambda e: e.attrs.get("path") == "/geo")
        attrs = found[0].attrs
        assert (attrs["country"], attrs["city"], attrs["lat"], attrs["lon"]) == ("DE", "Berlin", 52.52, 13.41)
        assert attrs["net"] == "127.0.0.0/24"  # looked up by network; no raw address stored
    finally:
        gw.stop()
        upstream.close()

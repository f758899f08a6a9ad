#!/usr/bin/env bash
# Install the dashboard's front-end libraries from the npm registry, pinned and checked:
# Chart.js (charts), topojson-client (map shapes) and world-atlas (Natural Earth 1:110m land,
# public domain). Portico serves them itself; no page loads anything from a CDN.
# Each file is taken unchanged from `npm pack NAME@VERSION` and must match its SHA-256
# (the same sums are in addons/static/dashboard/vendor/VENDOR.md and the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
VENDOR=addons/static/dashboard/vendor
#        package@version        file in the package             served as                sha256
ASSETS=(
  "chart.js@4.4.9          package/dist/chart.umd.js           chart.umd.min.js         de315773454b6076b63990bfa05ce5155a37f71992c87d7bb5f9a2ea698697ef"
  "topojson-client@3.1.0   package/dist/topojson-client.min.js topojson-client.min.js   25cd02ae486cc5063e0215a4e4cfb15de83700c87ac48bac4d57dc6aaf3ebb89"
  "world-atlas@2.0.2       package/land-110m.json              land-110m.json           ead5f68119c49a9250902e7da303bcb209341bbb8fefe7369a439b48b704658a"
)
sha() { sha256sum "$1" | cut -d' ' -f1; }
missing=0
for line in "${ASSETS[@]}"; do
  read -r _ _ name sum <<<"$line"
  if [ ! -f "$VENDOR/$name" ] || [ "$(sha "$VENDOR/$name")" != "$sum" ]; then missing=1; fi
done
[ "$missing" -eq 0 ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "portico: npm is needed once to fetch the dashboard's pinned libraries (Debian: apt-get install npm)" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for line in "${ASSETS[@]}"; do
  read -r spec inner name sum <<<"$line"
  if [ -f "$VENDOR/$name" ] && [ "$(sha "$VENDOR/$name")" = "$sum" ]; then continue; fi
  echo "==> dashboard asset $name from npm $spec"
  (cd "$tmp" && npm pack --silent "$spec" >/dev/null)
  tgz=$(ls "$tmp"/*.tgz)
  mkdir -p "$tmp/x"
  tar -xzf "$tgz" -C "$tmp/x" "$inner"
  got=$(sha "$tmp/x/$inner")
  if [ "$got" != "$sum" ]; then
    echo "portico: $spec $inner has sha256 $got, expected $sum: refusing it" >&2
    exit 1
  fi
  cp "$tmp/x/$inner" "$VENDOR/$name"
  rm -rf "$tmp/x" "$tgz"
done

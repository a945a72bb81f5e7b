#!/usr/bin/env bash
# Vendors TradingView's Lightweight Charts (Apache-2.0) into the dashboard's static files: the
# standalone production build from npm, its LICENSE and the NOTICE its licence asks for. The
# files are committed (so `pip install` users and offline pages have them); `make setup` runs
# this only when they are missing, `make vendor-chart` to refresh. Needs npm.
set -euo pipefail

VERSION=5.2.1
DEST="$(cd "$(dirname "$0")/.." && pwd)/src/market_anomaly/dashboard/static/vendor"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

command -v npm >/dev/null || { echo "npm not found: install Node.js (npm) to vendor lightweight-charts" >&2; exit 1; }
(cd "$WORK" && npm pack --silent "lightweight-charts@$VERSION" >/dev/null)  # npm checks the registry's integrity hash
tar -xzf "$WORK/lightweight-charts-$VERSION.tgz" -C "$WORK"
mkdir -p "$DEST"
cp "$WORK/package/dist/lightweight-charts.standalone.production.js" "$DEST/lightweight-charts.standalone.production.js"
cp "$WORK/package/LICENSE" "$DEST/LICENSE"
cat > "$DEST/NOTICE" <<NOTICE
TradingView Lightweight Charts™ v$VERSION
Copyright (c) TradingView, Inc. https://www.tradingview.com/

This folder holds the unmodified standalone production build from the npm package
lightweight-charts@$VERSION, licensed under the Apache License 2.0 (LICENSE here).
NOTICE
echo "$DEST/lightweight-charts.standalone.production.js"

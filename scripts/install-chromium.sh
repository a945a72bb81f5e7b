#!/usr/bin/env bash
# Debian's headless-capable Chromium for the dashboard's browser test (Playwright drives the
# system browser; no browser download from the Playwright CDN), plus a font so screenshots are
# readable. Idempotent: exits at once when /usr/bin/chromium exists. Prints the browser's path.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ ! -x "$CHROMIUM" ]; then
    echo "installing Debian's chromium (one-time, takes about a minute)..." >&2
    "$(dirname "$0")/apt-install.sh" chromium fonts-liberation
fi
[ -x "$CHROMIUM" ] || { echo "chromium is still missing after the install" >&2; exit 1; }
echo "$CHROMIUM"

#!/usr/bin/env bash
# Debian's headless-capable Chromium for the dashboard's browser test (Playwright drives the
# system browser; no browser download from the Playwright CDN), plus a font so screenshots are
# readable. Idempotent: exits at once when /usr/bin/chromium exists. Prints the browser's path.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo -n); fi
    echo "installing Debian's chromium (one-time, takes about a minute)..." >&2
    export DEBIAN_FRONTEND=noninteractive
    # A stale package index makes apt fetch removed versions; refresh it when install fails.
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium fonts-liberation >&2 \
        || { "${SUDO[@]}" apt-get update -q >&2 && "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium fonts-liberation >&2; }
fi
[ -x "$CHROMIUM" ] || { echo "chromium is still missing after the install" >&2; exit 1; }
echo "$CHROMIUM"

#!/usr/bin/env bash
# Debian's docker-compose, for the test that validates docker-compose.yml (`docker-compose config`
# needs no Docker daemon). Idempotent: exits at once when docker-compose exists. Prints its path.
set -euo pipefail

if ! command -v docker-compose >/dev/null; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo -n); fi
    echo "installing Debian's docker-compose (one-time)..." >&2
    export DEBIAN_FRONTEND=noninteractive
    # A stale package index makes apt fetch removed versions; refresh it when install fails.
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends docker-compose >&2 \
        || { "${SUDO[@]}" apt-get update -q >&2 && "${SUDO[@]}" apt-get install -y -q --no-install-recommends docker-compose >&2; }
fi
command -v docker-compose >/dev/null || { echo "docker-compose is still missing after the install" >&2; exit 1; }
command -v docker-compose

#!/usr/bin/env bash
# Debian's docker-compose, for the test that validates docker-compose.yml (`docker-compose config`
# needs no Docker daemon). Idempotent: exits at once when docker-compose exists. Prints its path.
set -euo pipefail

if ! command -v docker-compose >/dev/null; then
    echo "installing Debian's docker-compose (one-time)..." >&2
    "$(dirname "$0")/apt-install.sh" docker-compose
fi
command -v docker-compose >/dev/null || { echo "docker-compose is still missing after the install" >&2; exit 1; }
command -v docker-compose

#!/usr/bin/env bash
# Install Debian packages for the tests: scripts/apt-install.sh PACKAGE...
#
# One install at a time on this machine (tests run side by side, and apt refuses a second
# process while the first holds its lock). A stale package index makes apt fetch removed
# versions, so the index is refreshed when the install fails. Progress goes to stderr.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 PACKAGE..." >&2; exit 2; }
if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo -n); fi
export DEBIAN_FRONTEND=noninteractive
install=("${sudo[@]}" apt-get install -y -q --no-install-recommends "$@")

exec 9>"${TMPDIR:-/tmp}/market-anomaly-apt.lock"
flock 9
"${install[@]}" >&2 || { "${sudo[@]}" apt-get update -q >&2 && "${install[@]}" >&2; }

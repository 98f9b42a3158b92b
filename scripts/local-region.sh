#!/usr/bin/env bash
# Starts a 3-node region on loopback by hand (no gossip yet): node1
# bootstraps, node2 and node3 join through node1's gRPC address.
#
#   scripts/local-region.sh up [DIR]    start (data, logs and pids under DIR, default ./local-region)
#   scripts/local-region.sh down [DIR]  stop them (SIGTERM)
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:-up}
dir=${2:-./local-region}
case "$cmd" in
up)
  mkdir -p "$dir"
  [ -f "$dir/keyring.json" ] || { bin/mysteryboxd keygen --key-id k1 > "$dir/keyring.json"; chmod 600 "$dir/keyring.json"; }
  for i in 1 2 3; do
    args=(--region local1 --node-id "node$i" --data-dir "$dir/node$i"
          --grpc-addr "127.0.0.1:$((7700 + 10*i))" --raft-addr "127.0.0.1:$((7701 + 10*i))"
          --master-key-file "$dir/keyring.json")
    if [ "$i" = 1 ]; then
      args+=(--bootstrap --bootstrap-admin-token-file "$dir/admin.token")
    else
      args+=(--join-raft 127.0.0.1:7710 --join-token-file "$dir/admin.token")
    fi
    bin/mysteryboxd "${args[@]}" > "$dir/node$i.log" 2>&1 &
    echo $! > "$dir/node$i.pid"
    if [ "$i" = 1 ]; then
      # node1 writes the admin token the others join with.
      for _ in $(seq 100); do [ -s "$dir/admin.token" ] && break; sleep 0.1; done
    fi
  done
  echo "region local1 starting: endpoints 127.0.0.1:7710,127.0.0.1:7720,127.0.0.1:7730 (logs in $dir)"
  echo "  export MYSTERYBOX_ENDPOINTS=127.0.0.1:7710,127.0.0.1:7720,127.0.0.1:7730"
  echo "  export MYSTERYBOX_TOKEN=\$(cat $dir/admin.token)"
  ;;
down)
  for f in "$dir"/node*.pid; do
    [ -f "$f" ] || continue
    kill -TERM "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  ;;
*) echo "usage: $0 up|down [DIR]" >&2; exit 2 ;;
esac

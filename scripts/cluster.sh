#!/usr/bin/env bash
# A multi-region MysteryBox deployment on loopback, formed through gossip
# and --bootstrap-expect: the base for chaos tests and local experiments.
#
#   scripts/cluster.sh up [--regions eu-north1,us-central1] [--nodes 3] [--dir DIR] [--base-port 17000] [--tls]
#   scripts/cluster.sh status|down [--dir DIR]
#   scripts/cluster.sh stop|start|kill NODE [--dir DIR]      NODE is <region>-n<i>, e.g. eu-north1-n2
#   scripts/cluster.sh env REGION [--dir DIR]                prints MYSTERYBOX_ENDPOINTS/TOKEN exports
#
# Everything lives under DIR (default ./cluster-run): per node its data,
# log, pid and command line; per region its keyring and admin token; one
# gossip key for all. Node i of region r listens on
# base + 100*r + 10*i (+0 gRPC, +1 Raft, +2 gossip). Binaries come from
# $MYSTERYBOX_BIN_DIR (default ./bin).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${MYSTERYBOX_BIN_DIR:-./bin}
cmd=${1:-}; shift || true
regions=eu-north1,us-central1; nodes=3; dir=./cluster-run; base=17000; target=""; tls=""
while [ $# -gt 0 ]; do
  case "$1" in
    --regions) regions=$2; shift 2 ;;
    --nodes) nodes=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --base-port) base=$2; shift 2 ;;
    --tls) tls=1; shift ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) target=$1; shift ;;
  esac
done

die() { echo "cluster.sh: $*" >&2; exit 1; }
# alive: the node's process exists and is not a zombie waiting to be reaped.
alive() {
  [ -f "$dir/$1/pid" ] || return 1
  local pid; pid=$(cat "$dir/$1/pid")
  kill -0 "$pid" 2>/dev/null || return 1
  [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ]
}

start_node() {
  local node=$1
  [ -f "$dir/$node/args" ] || die "no such node: $node"
  alive "$node" && { echo "$node is already running"; return; }
  # shellcheck disable=SC2046
  "$bin/mysteryboxd" $(cat "$dir/$node/args") >> "$dir/$node/log" 2>&1 &
  echo $! > "$dir/$node/pid"
}

case "$cmd" in
up)
  mkdir -p "$dir"
  [ -f "$dir/gossip.key" ] || { "$bin/mysteryboxd" keygen --gossip > "$dir/gossip.key"; chmod 600 "$dir/gossip.key"; }
  seed=""
  r=0
  for region in ${regions//,/ }; do
    r=$((r + 1))
    [ -f "$dir/$region.keyring" ] || { "$bin/mysteryboxd" keygen --key-id k1 > "$dir/$region.keyring"; chmod 600 "$dir/$region.keyring"; }
    if [ -n "$tls" ] && [ ! -f "$dir/tls-$region/ca.pem" ]; then
      ids=$(seq -s, -f 'n%g' 1 "$nodes")
      "$bin/mysteryboxd" tls init --out "$dir/tls-$region" --region "$region" --nodes "$ids" > /dev/null
    fi
    for i in $(seq 1 "$nodes"); do
      node="$region-n$i"
      p=$((base + 100 * r + 10 * i))
      mkdir -p "$dir/$node"
      [ -n "$seed" ] || seed="127.0.0.1:$((p + 2))"
      args="--region $region --node-id n$i --data-dir $dir/$node/data"
      args="$args --grpc-addr 127.0.0.1:$p --raft-addr 127.0.0.1:$((p + 1)) --gossip-addr 127.0.0.1:$((p + 2))"
      args="$args --join $seed --bootstrap-expect $nodes --gossip-key-file $dir/gossip.key"
      args="$args --master-key-file $dir/$region.keyring"
      [ "$i" = 1 ] && args="$args --bootstrap-admin-token-file $dir/$region.admin.token"
      if [ -n "$tls" ]; then
        t="$dir/tls-$region"
        args="$args --tls-cert-file $t/n$i.pem --tls-key-file $t/n$i-key.pem"
        args="$args --peer-ca-file $t/ca.pem --peer-cert-file $t/n$i.pem --peer-key-file $t/n$i-key.pem"
        echo "$t/ca.pem" > "$dir/$node/ca"
      fi
      echo "$args" > "$dir/$node/args"
      echo "127.0.0.1:$p" > "$dir/$node/grpc"
      start_node "$node"
    done
  done
  echo "started ${regions//,/ } with $nodes node(s) each under $dir"
  echo "use: eval \"\$(scripts/cluster.sh env REGION --dir $dir)\""
  ;;
env)
  [ -n "$target" ] || die "usage: env REGION"
  eps=$(cat "$dir/$target"-n*/grpc | paste -sd, -)
  echo "export MYSTERYBOX_ENDPOINTS=$eps"
  echo "export MYSTERYBOX_TOKEN=$(cat "$dir/$target.admin.token")"
  if [ -f "$dir/$target-n1/ca" ]; then echo "export MYSTERYBOX_CA_FILE=$(cat "$dir/$target-n1/ca")"; fi
  ;;
status)
  for d in "$dir"/*/; do
    node=$(basename "$d")
    [ -f "$d/args" ] || continue
    if alive "$node"; then state="running (pid $(cat "$d/pid"))"; else state=stopped; fi
    printf '%-24s %-22s %s\n' "$node" "$(cat "$d/grpc")" "$state"
  done
  ;;
start) [ -n "$target" ] || die "usage: start NODE"; start_node "$target" ;;
stop|kill)
  [ -n "$target" ] || die "usage: $cmd NODE"
  sig=TERM; [ "$cmd" = kill ] && sig=KILL
  alive "$target" || { echo "$target is not running"; exit 0; }
  pid=$(cat "$dir/$target/pid")
  kill -"$sig" "$pid"
  for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  ;;
down)
  for d in "$dir"/*/; do
    node=$(basename "$d")
    alive "$node" && kill -TERM "$(cat "$d/pid")" 2>/dev/null || true
  done
  for d in "$dir"/*/; do
    node=$(basename "$d")
    for _ in $(seq 300); do alive "$node" || break; sleep 0.1; done
    rm -f "$d/pid"
  done
  ;;
*) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# Network namespaces for chaos campaigns: one namespace per node, linked by
# veth pairs to a bridge in a hub namespace, and partitions between them.
# Needs root, Linux and iproute2 (ip, tc) only: no iptables, no netem. The
# host's own network is never touched: every interface lives in a namespace
# made here.
#
#   scripts/chaos/netns.sh up PREFIX N          PREFIX-hub (bridge br0, 10.77.0.1/24) and
#                                               PREFIX-n1..N (eth0 = 10.77.0.<10+i>, veth to br0)
#   scripts/chaos/netns.sh down PREFIX          delete every PREFIX-* namespace
#   scripts/chaos/netns.sh cut PREFIX "1>2 3>1" replace the cut links: packets from node i to
#                                               node j are dropped in i's egress, silently
#   scripts/chaos/netns.sh partition PREFIX "1,2|3"   cut every link between the groups, both ways
#   scripts/chaos/netns.sh isolate PREFIX I     cut node I off from every other node
#   scripts/chaos/netns.sh heal PREFIX          remove every cut
#   scripts/chaos/netns.sh status PREFIX        namespaces, addresses and cuts
#   scripts/chaos/netns.sh exec PREFIX I CMD... run CMD in node I's namespace (hub: I = hub)
#
# A cut is a tc u32 filter on eth0's egress (clsact) whose action redirects
# the packet to blk0, a veth left down, which drops it: the sender sees no
# error, as with a real lost packet. Links to and from the hub (where the
# chaos driver and its clients run) are never cut.
set -euo pipefail

subnet=10.77.0
die() { echo "netns.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"
command -v ip >/dev/null && command -v tc >/dev/null || die "needs ip and tc (iproute2)"

cmd=${1:-}; prefix=${2:-}
[ -n "$cmd" ] && [ -n "$prefix" ] || { sed -n '2,22p' "$0" >&2; exit 2; }
case "$prefix" in *[!A-Za-z0-9_-]*) die "bad prefix $prefix" ;; esac

nodes() { ip netns list | awk '{print $1}' | grep -E "^$prefix-n[0-9]+\$" | sed "s/^$prefix-n//" | sort -n; }

up() {
  local n=$1 i
  ip netns add "$prefix-hub"
  ip -n "$prefix-hub" link set lo up
  ip -n "$prefix-hub" link add br0 type bridge
  ip -n "$prefix-hub" addr add "$subnet.1/24" dev br0
  ip -n "$prefix-hub" link set br0 up
  for i in $(seq 1 "$n"); do
    ip netns add "$prefix-n$i"
    ip -n "$prefix-n$i" link set lo up
    ip -n "$prefix-hub" link add "v$i" type veth peer name eth0 netns "$prefix-n$i"
    ip -n "$prefix-hub" link set "v$i" master br0 up
    ip -n "$prefix-n$i" addr add "$subnet.$((10 + i))/24" dev eth0
    ip -n "$prefix-n$i" link set eth0 up
    # The sink of cut packets: a veth pair left down.
    ip -n "$prefix-n$i" link add blk0 type veth peer name blk1
    ip netns exec "$prefix-n$i" tc qdisc add dev eth0 clsact
  done
  echo "namespaces $prefix-hub and $prefix-n1..$n are up ($subnet.0/24)"
}

down() {
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep -E "^$prefix-(hub|n[0-9]+)\$" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null || true
    ip netns del "$ns"
  done
}

# cut "1>2 3>1": replace every node's egress filters with the given cuts.
cut() {
  local spec=$1 i l from to
  for i in $(nodes); do
    ip netns exec "$prefix-n$i" tc filter del dev eth0 egress 2>/dev/null || true
  done
  for l in $spec; do
    from=${l%>*}; to=${l#*>}
    [ -e "/var/run/netns/$prefix-n$from" ] || die "no node $from"
    ip netns exec "$prefix-n$from" tc filter add dev eth0 egress protocol ip u32 \
      match ip dst "$subnet.$((10 + to))/32" action mirred egress redirect dev blk0
  done
}

partition() {
  local spec=$1 links="" g h a b
  IFS='|' read -r -a groups <<< "$spec"
  for g in "${groups[@]}"; do
    for h in "${groups[@]}"; do
      [ "$g" = "$h" ] && continue
      for a in ${g//,/ }; do for b in ${h//,/ }; do links="$links $a>$b"; done; done
    done
  done
  cut "$links"
}

isolate() {
  local x=$1 links="" i
  for i in $(nodes); do [ "$i" = "$x" ] || links="$links $x>$i $i>$x"; done
  cut "$links"
}

status() {
  local i
  ip -n "$prefix-hub" -br addr show br0
  for i in $(nodes); do
    echo "node $i: $(ip -n "$prefix-n$i" -br addr show eth0 | awk '{print $3}')" \
      "cuts to: $(ip netns exec "$prefix-n$i" tc filter show dev eth0 egress | awk '/match/ {print $2}' |
        while read -r m; do printf '%d.%d.%d.%d ' "0x${m:0:2}" "0x${m:2:2}" "0x${m:4:2}" "0x${m:6:2}"; done)"
  done
}

case "$cmd" in
up) [ -n "${3:-}" ] || die "usage: up PREFIX N"; up "$3" ;;
down) down ;;
cut) cut "${3:-}" ;;
partition) partition "${3:?usage: partition PREFIX \"1,2|3\"}" ;;
isolate) isolate "${3:?usage: isolate PREFIX I}" ;;
heal) cut "" ;;
status) status ;;
exec)
  node=${3:?usage: exec PREFIX I CMD...}; shift 3
  if [ "$node" = hub ]; then exec ip netns exec "$prefix-hub" "$@"; fi
  exec ip netns exec "$prefix-n$node" "$@" ;;
*) sed -n '2,22p' "$0" >&2; exit 2 ;;
esac

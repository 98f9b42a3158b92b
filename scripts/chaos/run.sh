#!/usr/bin/env bash
# One chaos campaign against real mysteryboxd processes (what `make chaos`
# runs). As root on Linux with iproute2, the nodes run in network
# namespaces (scripts/chaos/netns.sh) and partitions are made by the kernel;
# otherwise everything runs on loopback and the fault-injecting proxies
# make the partitions.
#
#   scripts/chaos/run.sh [--duration 5m] [--nodes 3|5] [--seed N] [--net auto|netns|loopback]
#                        [--faults a,b,...|all] [--dir DIR] [-- more mbchaos flags]
#
# Binaries come from ./bin (make build); the driver is built into
# bin/mbchaos. The run folder (default $CHAOS_DIR/<time>-seed<N>, with
# CHAOS_DIR=/tmp/mysterybox-chaos) keeps the seed, schedule, history,
# results and node logs; the output ends with the summary line and table.
# Exit status 1 when a check failed.
set -euo pipefail
cd "$(dirname "$0")/../.."
duration=5m; nodes=3; seed=""; net=auto; faults=""; dir=""; extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --nodes) nodes=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --net) net=$2; shift 2 ;;
    --faults) faults=$2; shift 2 ;;
    --dir) dir=$2; shift 2 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "run.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -n "$seed" ] || seed=$(( $(od -An -N6 -tu8 /dev/urandom | tr -d ' ') % 9007199254740991 + 1 ))
[ -n "$dir" ] || dir="${CHAOS_DIR:-/tmp/mysterybox-chaos}/$(date +%Y%m%d-%H%M%S)-seed$seed"
if [ "$net" = auto ]; then
  net=loopback
  if [ "$(id -u)" = 0 ] && command -v ip >/dev/null && command -v tc >/dev/null && ip netns list >/dev/null 2>&1; then
    net=netns
  fi
fi
[ -x bin/mysteryboxd ] || { echo "run.sh: bin/mysteryboxd missing (make build)" >&2; exit 2; }
go build -o bin/mbchaos ./chaos/cmd/mbchaos
args=(--bin bin --scripts scripts/chaos --nodes "$nodes" --duration "$duration" --seed "$seed" --dir "$dir")
[ -n "$faults" ] && args+=(--faults "$faults")
args+=("${extra[@]}")
echo "chaos: net=$net nodes=$nodes duration=$duration seed=$seed dir=$dir" >&2
if [ "$net" = netns ]; then
  prefix="mbx$$"
  trap 'scripts/chaos/netns.sh down "$prefix"' EXIT
  scripts/chaos/netns.sh up "$prefix" "$nodes" >&2
  ip netns exec "$prefix-hub" bin/mbchaos --net netns --netns-prefix "$prefix" "${args[@]}"
else
  bin/mbchaos --net loopback "${args[@]}"
fi

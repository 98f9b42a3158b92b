#!/usr/bin/env bash
# Builds etcd (default v3.6.4) from the Go module proxy into a cache folder
# outside the repository, once, and prints the binary's path. The build
# happens in a scratch module there, so no go.mod of the repository changes.
# (v3.7.x does not install this way.)
#
#   scripts/bench/build-etcd.sh            # -> ~/.cache/mysterybox-bench/etcd-v3.6.4
#   MYSTERYBOX_BENCH_CACHE=DIR ETCD_VERSION=v3.6.4 scripts/bench/build-etcd.sh
set -euo pipefail
ver=${ETCD_VERSION:-v3.6.4}
cache=${MYSTERYBOX_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mysterybox-bench}
bin="$cache/etcd-$ver"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "^etcd Version: ${ver#v}\$"; then
  echo "$bin"
  exit 0
fi
src="$cache/etcd-$ver-src"
mkdir -p "$src"
cd "$src"
if [ ! -f go.mod ]; then
  printf 'module etcdbuild\n\ngo 1.24\n' > go.mod
fi
echo "build-etcd: building etcd $ver in $src" >&2
export GOWORK=off
go get "go.etcd.io/etcd/server/v3@$ver" >&2
go build -o "$bin.tmp" go.etcd.io/etcd/server/v3 >&2
mv "$bin.tmp" "$bin"
echo "$bin"

#!/usr/bin/env bash
# A Consul cluster on loopback for humans (the same harness the integration tests use):
#   scripts/cluster.sh up [-servers 3 -clients 2 -version 1.16.0 -block 20 -keep -dir DIR -extra-config FILE]
# Runs in the foreground until Ctrl-C, then tears everything down. Builds the consul test binary if missing
# (scripts/testbin.sh). Blocks 10-19 belong to the integration tests; the default block here is 20.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
	echo "usage: $0 up [-servers N] [-clients N] [-version V] [-block N] [-binary PATH] [-dir DIR] [-keep] [-extra-config FILE]"
	echo "       $0 up -h    (all flags)"
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
up)
	bin="${XDG_CACHE_HOME:-$HOME/.cache}/upgrader/bin/devcluster"
	mkdir -p "$(dirname "$bin")"
	(cd "$root" && go build -o "$bin" ./scripts/devcluster)
	cd "$root" # devcluster finds scripts/testbin.sh from here
	exec "$bin" "$@"
	;;
help | -h | --help)
	usage
	;;
*)
	usage >&2
	exit 2
	;;
esac

#!/usr/bin/env bash
# Builds the Consul test binaries (1.16.0 and 1.16.1, MPL-2.0) from the Go module proxy, each in a small
# Go module of its own, into a cache directory outside git:
#   ${UPGRADER_TESTBIN:-${XDG_CACHE_HOME:-$HOME/.cache}/upgrader/testbin}/consul/<version>/consul
# Versions already built are skipped. Later Consul versions are not open source: never add them here.
set -euo pipefail

root="${UPGRADER_TESTBIN:-${XDG_CACHE_HOME:-$HOME/.cache}/upgrader/testbin}"
versions=("$@")
[ ${#versions[@]} -gt 0 ] || versions=(1.16.0 1.16.1)

# One build at a time: internal/testbin (Go tests, devcluster) takes an flock on the same file and sets
# UPGRADER_TESTBIN_LOCKED=1 when it runs this script; a human or CI run takes the lock here.
if [ -z "${UPGRADER_TESTBIN_LOCKED:-}" ] && command -v flock >/dev/null 2>&1; then
	mkdir -p "$root"
	exec 9>"$root/.build.lock"
	if ! flock -n 9; then
		echo "testbin: another build holds $root/.build.lock; waiting ..."
		flock 9
	fi
fi

build_one() {
	local v="$1"
	local out="$root/consul/$v/consul"
	# Capture the whole output first: `consul version | grep -q` lets grep exit early, consul dies of
	# SIGPIPE, and pipefail then reports a cached binary as missing (and rebuilds it in place).
	local have=""
	[ -x "$out" ] && have=$("$out" version 2>/dev/null || true)
	if [ "${have%%$'\n'*}" = "Consul v$v" ]; then
		echo "testbin: consul $v already built at $out"
		return 0
	fi
	case "$v" in
	1.16.0 | 1.16.1) ;;
	*) echo "testbin: consul $v is not a supported test version (only 1.16.0 and 1.16.1 are open source here)" >&2; return 2 ;;
	esac
	local mod="$root/src/consul-$v"
	mkdir -p "$mod" "$(dirname "$out")"
	{
		echo "module upgrader.test/consulbuild"
		echo
		echo "go 1.20"
		echo
		echo "require github.com/hashicorp/consul v$v"
		if [ "$v" = 1.16.0 ]; then
			echo "require github.com/hashicorp/consul/envoyextensions v0.4.1"
			echo "require github.com/hashicorp/consul/troubleshoot v0.3.1"
			echo "replace github.com/hashicorp/consul/api => github.com/hashicorp/consul/api v1.22.0"
		fi
		echo "exclude github.com/hashicorp/go-msgpack v1.1.5"
		echo "exclude github.com/hashicorp/go-msgpack v1.1.6"
	} >"$mod/go.mod"
	cat >"$mod/tools.go" <<'GO'
//go:build tools

// Package consulbuild only pins the Consul main package so that `go mod tidy` resolves its dependencies.
package consulbuild

import _ "github.com/hashicorp/consul"
GO
	echo "testbin: building consul $v (cold: about 7 minutes on 2 cores; warm: 1-4) ..."
	local start=$SECONDS
	(
		cd "$mod"
		export CGO_ENABLED=0 GOFLAGS=-mod=mod GOTOOLCHAIN=local
		go mod tidy
		go build -trimpath -ldflags "-s -w" -o "$out.tmp" github.com/hashicorp/consul
	)
	mv -f "$out.tmp" "$out"
	echo "testbin: consul $v built in $((SECONDS - start))s: $("$out" version | head -1)"
}

for v in "${versions[@]}"; do
	build_one "$v"
done

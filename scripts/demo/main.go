// Command demo is `make demo`: it upgrades a real local Consul cluster (3 servers + 2 clients on
// 127.0.50.x) from 1.16.0 to 1.16.1 because a target was written into Consul KV. Each agent runs under
// its own `upgrader agent` (restart mode exec); releases come from a local signed mirror laid out like
// releases.hashicorp.com. It prints progress as it happens and ends with the final table and the
// rollout's total time. Ctrl-C tears everything down.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/fleet"
	"github.com/upgrader-dev/upgrader/internal/rollout"
	"github.com/upgrader-dev/upgrader/internal/testbin"
	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

func main() {
	os.Exit(run())
}

func run() int {
	block := flag.Int("block", 50, "use 127.0.<block>.x")
	from := flag.String("from", "1.16.0", "version the cluster starts on")
	to := flag.String("to", "1.16.1", "target version")
	clients := flag.Int("clients", 2, "client agents")
	keep := flag.Bool("keep", false, "keep the cluster running after the rollout until Ctrl-C")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := hclog.New(&hclog.LoggerOptions{Name: "demo", Level: hclog.Warn, Output: os.Stderr})
	say := func(format string, args ...any) {
		fmt.Printf("%s  %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, args...))
	}

	for _, v := range []string{*from, *to} {
		if _, err := testbin.Ensure(ctx, v, os.Stdout); err != nil {
			fmt.Fprintf(os.Stderr, "demo: consul %s: %v\n", v, err)
			return 1
		}
	}
	dir, err := os.MkdirTemp("", "upgrader-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	env := testcluster.NewEnv(dir, logger)
	defer os.RemoveAll(dir)
	defer env.Close()

	say("starting %d servers + %d clients on 127.0.%d.x running consul %s, each under an upgrader ...", 3, *clients, *block, *from)
	f, err := fleet.Start(ctx, env, fleet.Options{Block: *block, Servers: 3, Clients: *clients, From: *from,
		Publish: []string{*to}, Stabilization: "5s", Logger: logger})
	if err != nil {
		if ctx.Err() != nil {
			say("interrupted; tearing down ...")
			return 130
		}
		env.Fail()
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	say("release mirror (signed with a fresh test key): %s", f.Mirror.URL())
	for _, n := range f.Cluster.Nodes() {
		u := f.Upgrader(n.Name)
		say("  %-3s %-6s http://%s  upgrader log: %s", n.Name, n.Role, n.HTTPAddr, u.LogPath)
	}
	s1 := f.Cluster.Servers()[0]
	say("watch from another terminal: CONSUL_HTTP_ADDR=%s go run ./cmd/upgrader rollout status consul -watch", s1.HTTPAddr)
	if !*keep {
		say("(the cluster is torn down when the rollout ends; run `go run ./scripts/demo -keep` to keep it until Ctrl-C)")
	}

	store, err := f.Store(s1.Name)
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	say("writing the target: consul kv put upgrader/consul/target %s", *to)
	start := time.Now()
	if _, err := store.SetTarget(ctx, rollout.Target{Version: *to, ClientConcurrency: 1, SetBy: "make demo"}); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		return 1
	}
	werr := f.WaitRolledOut(ctx, store, *to, say)
	total := time.Since(start)
	if werr != nil && ctx.Err() != nil {
		say("interrupted; tearing down ...")
		return 130
	}

	tctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	statuses, _ := store.ListNodeStatus(tctx)
	ctl, _, _ := store.ReadControl(tctx)
	var tbl strings.Builder
	_ = rollout.FormatStatusTable(&tbl, statuses, ctl, rollout.Target{Version: *to}, time.Now())
	fmt.Printf("\n%s\n", tbl.String())
	if werr != nil {
		env.Fail()
		fmt.Fprintf(os.Stderr, "demo: rollout did not finish: %v\n", werr)
		return 1
	}
	fmt.Printf("rollout %s -> %s of %d nodes finished in %s\n", *from, *to, len(f.Managed()), total.Round(100*time.Millisecond))
	if *keep {
		say("cluster kept running; Ctrl-C tears it down")
		<-ctx.Done()
	}
	say("tearing down ...")
	return 0
}

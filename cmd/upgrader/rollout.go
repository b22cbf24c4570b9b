package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/hashicorp/consul/api"

	version "github.com/hashicorp/go-version"

	"github.com/upgrader-dev/upgrader/internal/consulconn"
	"github.com/upgrader-dev/upgrader/internal/rollout"
)

const rolloutUsage = `Usage: upgrader rollout <start|status|pause|resume|halt> [options] <product> [version]

  start  <product> <version>   write the target version (the agents do the rest)
  status <product>             one line per node: role, version, state, since when
  pause  <product>             no new node starts; one in flight finishes
  resume <product>             clear a pause or a halt
  halt   <product>             stop the rollout as a failed node would

Consul is reached like the consul CLI: CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, CONSUL_CACERT, ...; the flags
below override them. With ACLs the token needs jobs/acl/upgrader-operator.hcl.`

// consulFlags are the connection flags every operator command shares.
type consulFlags struct {
	addr     string
	prefix   string
	reason   string
	timeout  time.Duration
	watch    bool
	clients  int
	downgrad bool
	tls      consulconn.TLS
	tokenF   string
}

func runRollout(ctx context.Context, c *CLI, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(c.errw, rolloutUsage)
		return ExitUsage
	}
	verb := args[0]
	var f consulFlags
	fs := flag.NewFlagSet("rollout "+verb, flag.ContinueOnError)
	fs.SetOutput(c.errw)
	fs.Usage = func() { fmt.Fprintln(c.errw, rolloutUsage+"\n\nOptions:"); fs.PrintDefaults() }
	fs.StringVar(&f.addr, "http-addr", "", "Consul agent address (default: CONSUL_HTTP_ADDR or 127.0.0.1:8500)")
	fs.StringVar(&f.prefix, "kv-prefix", rollout.DefaultPrefix, "KV prefix of the upgrader's state")
	fs.StringVar(&f.reason, "reason", "", "why (recorded with the target or the control)")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "deadline for the command's Consul calls")
	fs.BoolVar(&f.watch, "watch", false, "status: print the table again whenever a node's record changes")
	fs.IntVar(&f.clients, "client-concurrency", 0, "start: how many clients may restart at once (default 1)")
	fs.BoolVar(&f.downgrad, "allow-downgrade", false, "start: allow a target older than what nodes run")
	fs.StringVar(&f.tokenF, "token-file", "", "file holding the ACL token (default: CONSUL_HTTP_TOKEN_FILE, CONSUL_HTTP_TOKEN)")
	fs.StringVar(&f.tls.CAFile, "ca-file", "", "CA bundle for HTTPS (default: CONSUL_CACERT)")
	fs.StringVar(&f.tls.CertFile, "client-cert", "", "client certificate for HTTPS (default: CONSUL_CLIENT_CERT)")
	fs.StringVar(&f.tls.KeyFile, "client-key", "", "client key for HTTPS (default: CONSUL_CLIENT_KEY)")
	fs.StringVar(&f.tls.ServerName, "tls-server-name", "", "name to verify the agent's certificate against (default: CONSUL_TLS_SERVER_NAME)")
	rest, err := parseArgs(fs, args[1:])
	if err != nil {
		return exitForParse(err)
	}
	want := 1
	if verb == "start" {
		want = 2
	}
	if len(rest) != want {
		what := "a product (consul)"
		if want == 2 {
			what = "a product and a version, e.g. consul 1.16.1"
		}
		fmt.Fprintf(c.errw, "upgrader rollout %s: want %s, got %d argument(s)\n\n", verb, what, len(rest))
		fs.Usage()
		return ExitUsage
	}
	product := rest[0]
	if product != "consul" {
		fmt.Fprintf(c.errw, "upgrader rollout: product %q is not supported yet: use consul\n", product)
		return ExitUsage
	}
	conn, err := consulconn.New(consulconn.Config{Address: f.addr, TokenFile: f.tokenF, TLS: f.tls})
	if err != nil {
		fmt.Fprintf(c.errw, "upgrader rollout: %v\n", err)
		return ExitError
	}
	defer conn.Close()
	store, err := rollout.NewStore(conn.API().KV(), product, rollout.WithPrefix(f.prefix))
	if err != nil {
		fmt.Fprintf(c.errw, "upgrader rollout: %v\n", err)
		return ExitUsage
	}
	if !f.watch {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
		defer cancel()
	}
	by := operatorName()
	switch verb {
	case "start":
		err = rolloutStart(ctx, c, store, rest[1], f, by)
	case "status":
		err = rolloutStatus(ctx, c, store, f.watch)
	case "pause":
		err = printControl(c)(store.Pause(ctx, by, f.reason))
	case "resume":
		err = printControl(c)(store.Resume(ctx, by, f.reason))
	case "halt":
		reason := f.reason
		if reason == "" {
			reason = "halted by " + by
		}
		err = printControl(c)(store.Halt(ctx, by, reason))
	default:
		fmt.Fprintf(c.errw, "upgrader rollout: unknown action %q\n\n%s\n", verb, rolloutUsage)
		return ExitUsage
	}
	if err != nil {
		if errors.Is(err, context.Canceled) && ctx.Err() != nil {
			return ExitInterrupted
		}
		fmt.Fprintf(c.errw, "upgrader rollout %s: %v\n", verb, err)
		var se api.StatusError
		if errors.As(err, &se) && se.Code == http.StatusForbidden {
			fmt.Fprintf(c.errw, "the token needs key_prefix %q { policy = \"write\" } (jobs/acl/upgrader-operator.hcl)\n", f.prefix)
		}
		return ExitError
	}
	return ExitOK
}

func rolloutStart(ctx context.Context, c *CLI, store *rollout.Store, version string, f consulFlags, by string) error {
	v, err := rollout.NormalizeVersion(version)
	if err != nil {
		return err
	}
	t := rollout.Target{Version: v, ClientConcurrency: f.clients, AllowDowngrade: f.downgrad, SetBy: by, Reason: f.reason, SetAt: time.Now().UTC()}
	if t.ClientConcurrency == 0 {
		t.ClientConcurrency = rollout.DefaultClientConcurrency
	}
	t, err = store.SetTarget(ctx, t)
	if err != nil {
		return err
	}
	fmt.Fprintf(c.out, "target set: %s (watch it with: upgrader rollout status consul -watch)\n", t)
	if !t.AllowDowngrade {
		if nodes, err := store.ListNodeStatus(ctx); err == nil {
			if newer := newerThan(nodes, t.Version); len(newer) > 0 {
				fmt.Fprintf(c.errw, "warning: %s run a newer version than %s and will refuse it; write the target again with -allow-downgrade if a downgrade is meant\n",
					strings.Join(newer, ", "), t.Version)
			}
		}
	}
	return nil
}

func rolloutStatus(ctx context.Context, c *CLI, store *rollout.Store, watch bool) error {
	var last string
	for {
		t, _, _, terr := store.ReadTarget(ctx)
		if terr != nil && !errors.Is(terr, rollout.ErrNoTarget) {
			var te *rollout.TargetError
			if !errors.As(terr, &te) {
				return terr
			}
		}
		ctl, _, err := store.ReadControl(ctx)
		if err != nil {
			return err
		}
		nodes, err := store.ListNodeStatus(ctx)
		if err != nil {
			return err
		}
		var b strings.Builder
		if err := rollout.FormatStatusTable(&b, nodes, ctl, t, time.Now()); err != nil {
			return err
		}
		if !watch {
			_, err := fmt.Fprint(c.out, b.String())
			return err
		}
		// Reprint when a record changes, not when the relative times in the table tick.
		if sig := statusSignature(nodes, ctl, t); sig != last {
			fmt.Fprintf(c.out, "--- %s\n%s", time.Now().Format(time.TimeOnly), b.String())
			last = sig
		}
		timer := time.NewTimer(time.Second)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil
		case <-timer.C:
		}
	}
}

// newerThan lists the nodes whose running version is newer than target.
func newerThan(nodes []rollout.NodeStatus, target string) []string {
	tv, err := version.NewVersion(target)
	if err != nil {
		return nil
	}
	var out []string
	for _, n := range nodes {
		if v, err := version.NewVersion(n.Version); err == nil && v.GreaterThan(tv) {
			out = append(out, n.Node)
		}
	}
	return out
}

// statusSignature is what a status table says apart from its relative times.
func statusSignature(nodes []rollout.NodeStatus, ctl rollout.Control, t rollout.Target) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s|%s|%s|%s\n", t.Version, ctl.State, ctl.Reason, ctl.By)
	for _, n := range nodes {
		fmt.Fprintf(&b, "%s|%s|%s|%s|%s|%s|%s|%d\n", n.Node, n.Role, n.Version, n.Target, n.State, n.Step, n.LastError, n.Since.UnixNano())
	}
	return b.String()
}

// printControl reports the outcome of a control change; curried so it takes a call's results directly.
func printControl(c *CLI) func(rollout.Control, bool, error) error {
	return func(ctl rollout.Control, changed bool, err error) error {
		if err != nil {
			return err
		}
		if !changed {
			fmt.Fprintf(c.out, "unchanged: %s\n", ctl)
			return nil
		}
		fmt.Fprintf(c.out, "rollout is now %s\n", ctl)
		return nil
	}
}

func operatorName() string {
	host, _ := os.Hostname()
	if u, err := user.Current(); err == nil {
		return u.Username + "@" + host
	}
	return host
}

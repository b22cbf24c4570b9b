// Command devcluster runs a Consul cluster on loopback for humans, with the same harness the integration
// tests use (internal/testcluster): it starts the agents, waits until the cluster is healthy, prints
// where everything is, and tears it all down on Ctrl-C. Use it through scripts/cluster.sh up.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/testbin"
	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// Exit codes.
const (
	exitOK     = 0
	exitFailed = 1
	exitUsage  = 2
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

type config struct {
	servers, clients, block int
	version, binary, dir    string
	extraConfig, logLevel   string
	keep                    bool
	timeout                 time.Duration
}

func parse(args []string, stderr io.Writer) (config, error) {
	var cfg config
	fs := flag.NewFlagSet("devcluster", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&cfg.servers, "servers", 3, "number of servers (127.0.<block>.1..)")
	fs.IntVar(&cfg.clients, "clients", 2, "number of clients (after the servers)")
	fs.IntVar(&cfg.block, "block", 20, "loopback block N: agents listen on 127.0.N.x (tests use 10-19)")
	fs.StringVar(&cfg.version, "version", testcluster.DefaultVersion, "Consul version from the testbin cache (built if missing)")
	fs.StringVar(&cfg.binary, "binary", "", "explicit consul binary (overrides -version)")
	fs.StringVar(&cfg.dir, "dir", "", "directory for data, configs and logs (default: a new temp dir, removed on exit)")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the temp dir on exit")
	fs.StringVar(&cfg.extraConfig, "extra-config", "", "HCL file appended to every agent's config")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "Consul log level")
	fs.DurationVar(&cfg.timeout, "timeout", 3*time.Minute, "how long to wait for the cluster to become healthy")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: devcluster [flags]\n\nRuns a Consul cluster on loopback until Ctrl-C.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("devcluster: unexpected arguments %v", fs.Args())
	}
	return cfg, nil
}

func run(args []string, stdout, stderr io.Writer) int {
	cfg, err := parse(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	logger := hclog.New(&hclog.LoggerOptions{Name: "devcluster", Output: stderr, Level: hclog.Info})
	if err := up(ctx, cfg, logger, stdout); err != nil {
		logger.Error("failed", "error", err)
		return exitFailed
	}
	return exitOK
}

// up runs the cluster until ctx ends.
func up(ctx context.Context, cfg config, logger hclog.Logger, stdout io.Writer) error {
	binary := cfg.binary
	if binary == "" {
		var err error
		if binary, err = testbin.Ensure(ctx, cfg.version, os.Stderr); err != nil {
			return fmt.Errorf("failed to get consul %s: %w", cfg.version, err)
		}
	}
	var extra string
	if cfg.extraConfig != "" {
		b, err := os.ReadFile(cfg.extraConfig)
		if err != nil {
			return fmt.Errorf("failed to read -extra-config: %w", err)
		}
		extra = string(b)
	}
	dir, removeDir := cfg.dir, false
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "upgrader-devcluster-"); err != nil {
			return fmt.Errorf("failed to create a temp dir: %w", err)
		}
		removeDir = !cfg.keep
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("failed to create %s: %w", dir, err)
	}
	env := testcluster.NewEnv(dir, logger)
	defer func() {
		env.Close()
		if removeDir {
			_ = os.RemoveAll(dir)
			logger.Info("removed", "dir", dir)
		} else {
			logger.Info("kept", "dir", dir)
		}
	}()

	c, err := testcluster.Create(env, testcluster.Options{
		Block: cfg.block, Servers: cfg.servers, Clients: cfg.clients,
		Binary: binary, ExtraConfig: extra, LogLevel: cfg.logLevel, Logger: logger,
	})
	if err != nil {
		return err
	}
	startCtx, cancel := context.WithTimeout(ctx, cfg.timeout)
	defer cancel()
	start := time.Now()
	if err := c.Start(startCtx); err != nil {
		env.Fail() // teardown dumps the agents' log tails
		return fmt.Errorf("failed to start the cluster: %w", err)
	}
	leader, err := c.Leader(startCtx)
	if err != nil {
		env.Fail()
		return err
	}
	printCluster(stdout, c, binary, leader, time.Since(start))
	exited := watchExits(ctx, c)
	for {
		select {
		case <-ctx.Done():
			logger.Info("tearing down")
			return nil
		case n := <-exited:
			logger.Warn("agent exited; the rest keeps running", "node", n.Name, "log", n.LogPath)
		}
	}
}

// watchExits reports each node whose agent exits before ctx ends. Its goroutines end with ctx.
func watchExits(ctx context.Context, c *testcluster.Cluster) <-chan *testcluster.Node {
	out := make(chan *testcluster.Node)
	for _, n := range c.Nodes() {
		done := n.Exited()
		go func() {
			select {
			case <-done:
				select {
				case out <- n:
				case <-ctx.Done():
				}
			case <-ctx.Done():
			}
		}()
	}
	return out
}

func printCluster(w io.Writer, c *testcluster.Cluster, binary string, leader *testcluster.Node, took time.Duration) {
	o := c.Options()
	fmt.Fprintf(w, "\nConsul cluster up in %s: %d servers + %d clients on 127.0.%d.x, leader %s\n",
		took.Round(time.Millisecond), o.Servers, o.Clients, o.Block, leader.Name)
	fmt.Fprintf(w, "binary: %s\n\n", binary)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tROLE\tHTTP\tPID\tLOG")
	for _, n := range c.Nodes() {
		fmt.Fprintf(tw, "%s\t%s\thttp://%s\t%d\t%s\n", n.Name, n.Role, n.HTTPAddr, n.Pid(), n.LogPath)
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\ntry:\n  export CONSUL_HTTP_ADDR=http://%s\n  %s members\n\nCtrl-C tears the cluster down.\n",
		c.Servers()[0].HTTPAddr, binary)
}

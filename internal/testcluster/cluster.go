// Package testcluster owns the real-Consul test bed: a cluster of Consul agents (servers and clients) on
// one loopback block 127.0.<Block>.x, one agent per IP on Consul's default ports, each with its own data
// dir, config dir and log, started in its own process group, and torn down however the test ends. It
// waits on the cluster's own answers (an agreed leader, autopilot health, members, a consistent write),
// never on sleeps. Integration tests and scripts/devcluster stand on it.
package testcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/testbin"
)

// Roles of a node.
const (
	RoleServer = "server"
	RoleClient = "client"
)

// Defaults for the zero values of Options.
const (
	// DefaultVersion is the Consul version nodes run when neither Version nor Binary is set.
	DefaultVersion = "1.16.0"
	// DefaultServers is used when Options.Servers is 0: three servers tolerate one failure.
	DefaultServers = 3
	// DefaultStopTimeout is how long Stop waits after SIGTERM before SIGKILL.
	DefaultStopTimeout = 10 * time.Second
	// DefaultWaitTimeout bounds a wait whose context has no deadline.
	DefaultWaitTimeout = 2 * time.Minute
	// LogTailLines is how many lines of each node's log are dumped when a test fails.
	LogTailLines = 200
)

// Sentinel errors.
var (
	ErrOptions    = errors.New("testcluster: invalid options")
	ErrPortInUse  = errors.New("testcluster: port already in use")
	ErrSupervised = errors.New("testcluster: cluster is supervised (the harness does not run agents)")
	ErrRunning    = errors.New("testcluster: agent already running")
	ErrExited     = errors.New("testcluster: agent exited")
	ErrNotLeader  = errors.New("testcluster: no agreed leader")
	ErrUnhealthy  = errors.New("testcluster: cluster unhealthy")
)

// TB is the part of testing.TB a cluster needs: *testing.T, *testing.B and *Env satisfy it.
type TB interface {
	Helper()
	Logf(format string, args ...any)
	Cleanup(func())
	TempDir() string
	Failed() bool
}

// Options describe a cluster.
type Options struct {
	// Block is N in 127.0.N.x: each test package uses its own block. Required, 1..254.
	Block int
	// Servers (default 3) get .1...S; Clients get .S+1... Node names are s1.., c1...
	Servers, Clients int
	// Version of Consul (default DefaultVersion), resolved through internal/testbin.
	Version string
	// Binary overrides the Version lookup with an explicit consul binary.
	Binary string
	// ExtraConfig is HCL appended to every node's agent.hcl (ACLs, TLS, ...).
	ExtraConfig string
	// NodeConfig, when set, returns more HCL for one node, appended after ExtraConfig.
	NodeConfig func(n *Node) string
	// ClientConfig, when set, adjusts each node's API client config (a token, TLS) before it is built.
	ClientConfig func(n *Node, cfg *api.Config)
	// Datacenter defaults to "dc1"; LogLevel to "info".
	Datacenter, LogLevel string
	// StopTimeout is the bound between SIGTERM and SIGKILL (default DefaultStopTimeout).
	StopTimeout time.Duration
	// Supervised: configs are written but the harness never starts agents; something else (the
	// upgrader's exec restarter) runs Node.Binary() with Node.AgentArgs(). Waits still work.
	Supervised bool
	// Harnessed names nodes the harness still runs itself in a supervised cluster (a node that is
	// never upgraded, e.g. the client a monitor writes through).
	Harnessed []string
	// Logger receives the harness's own messages (default: t.Logf). Agents log to their own files.
	Logger hclog.Logger
}

// Cluster is a set of Consul agents on one loopback block.
type Cluster struct {
	t      TB
	opts   Options
	logger hclog.Logger
	dir    string
	nodes  []*Node

	mu       sync.Mutex
	tornDown bool
}

// New builds the cluster for a test: resolves the binary (testbin.Require, which skips the test if the
// binary cannot be built), writes every node's config and registers the teardown with t.Cleanup. It does
// not start anything. Any other error fails the test.
func New(t TB, opts Options) *Cluster {
	t.Helper()
	if opts.Binary == "" {
		if tt, ok := t.(testing.TB); ok {
			opts.Binary = testbin.Require(tt, versionOr(opts.Version))
		}
	}
	c, err := Create(t, opts)
	if err != nil {
		if f, ok := t.(interface{ Fatalf(string, ...any) }); ok {
			f.Fatalf("testcluster: %v", err)
		}
		panic(err)
	}
	return c
}

// Create is New for programs: it returns errors instead of failing a test, and resolves a missing binary
// with testbin.Path (build it with scripts/testbin.sh first, or set Options.Binary).
func Create(t TB, opts Options) (*Cluster, error) {
	t.Helper()
	if err := opts.finalize(); err != nil {
		return nil, err
	}
	if opts.Binary == "" {
		p, err := testbin.Path(opts.Version)
		if err != nil {
			return nil, fmt.Errorf("failed to find consul %s: %w", opts.Version, err)
		}
		opts.Binary = p
	}
	if _, err := os.Stat(opts.Binary); err != nil {
		return nil, fmt.Errorf("failed to find the consul binary: %w", err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = hclog.New(&hclog.LoggerOptions{
			Name:   "testcluster",
			Level:  hclog.Debug,
			Output: &logfWriter{logf: t.Logf},
		})
	} else {
		logger = logger.Named("testcluster")
	}
	// TempDir first: its removal is registered before the teardown, so cleanups (LIFO) kill the agents
	// and dump their logs before the directories go away.
	dir := t.TempDir()
	if dir == "" {
		return nil, fmt.Errorf("failed to create a temporary directory for the cluster")
	}
	c := &Cluster{t: t, opts: opts, logger: logger, dir: dir}
	c.nodes = c.plan()
	for _, n := range c.nodes {
		if err := n.writeConfig(); err != nil {
			return nil, err
		}
	}
	t.Cleanup(c.teardown)
	logger.Debug("cluster configured", "block", opts.Block, "servers", opts.Servers, "clients", opts.Clients,
		"binary", opts.Binary, "dir", dir, "supervised", opts.Supervised)
	return c, nil
}

func versionOr(v string) string {
	if v == "" {
		return DefaultVersion
	}
	return v
}

func (o *Options) finalize() error {
	o.Version = versionOr(o.Version)
	if o.Servers == 0 {
		o.Servers = DefaultServers
	}
	if o.Datacenter == "" {
		o.Datacenter = "dc1"
	}
	if o.LogLevel == "" {
		o.LogLevel = "info"
	}
	if o.StopTimeout <= 0 {
		o.StopTimeout = DefaultStopTimeout
	}
	switch {
	case o.Block < 1 || o.Block > 254:
		return fmt.Errorf("%w: Block must be 1..254 (127.0.N.x), got %d", ErrOptions, o.Block)
	case o.Servers < 0 || o.Clients < 0:
		return fmt.Errorf("%w: negative node count (servers %d, clients %d)", ErrOptions, o.Servers, o.Clients)
	case o.Servers+o.Clients > 254:
		return fmt.Errorf("%w: %d nodes do not fit in one block", ErrOptions, o.Servers+o.Clients)
	}
	return nil
}

// plan lays out the nodes: servers first on .1..S, then clients.
func (c *Cluster) plan() []*Node {
	var nodes []*Node
	for i := 1; i <= c.opts.Servers+c.opts.Clients; i++ {
		role, name := RoleServer, "s"+strconv.Itoa(i)
		if i > c.opts.Servers {
			role, name = RoleClient, "c"+strconv.Itoa(i-c.opts.Servers)
		}
		ip := fmt.Sprintf("127.0.%d.%d", c.opts.Block, i)
		home := filepath.Join(c.dir, name)
		nodes = append(nodes, &Node{
			Name:      name,
			Role:      role,
			IP:        ip,
			HTTPAddr:  net.JoinHostPort(ip, strconv.Itoa(PortHTTP)),
			RPCAddr:   net.JoinHostPort(ip, strconv.Itoa(PortServer)),
			Dir:       home,
			DataDir:   filepath.Join(home, "data"),
			ConfigDir: filepath.Join(home, "config"),
			LogPath:   filepath.Join(home, "agent.log"),
			c:         c,
			binary:    c.opts.Binary,
		})
	}
	return nodes
}

func (c *Cluster) serverIPs() []string {
	var ips []string
	for _, n := range c.Servers() {
		ips = append(ips, n.IP)
	}
	return ips
}

// Dir is the cluster's root directory (one subdirectory per node).
func (c *Cluster) Dir() string { return c.dir }

// Binary is the consul binary nodes start with unless Node.SetBinary changed theirs.
func (c *Cluster) Binary() string { return c.opts.Binary }

// Options returns the finalized options.
func (c *Cluster) Options() Options { return c.opts }

// Logger is the harness's logger.
func (c *Cluster) Logger() hclog.Logger { return c.logger }

// Nodes returns every node, servers first.
func (c *Cluster) Nodes() []*Node { return append([]*Node(nil), c.nodes...) }

// Servers returns the server nodes in order s1, s2, ...
func (c *Cluster) Servers() []*Node { return c.byRole(RoleServer) }

// Clients returns the client nodes in order c1, c2, ...
func (c *Cluster) Clients() []*Node { return c.byRole(RoleClient) }

func (c *Cluster) byRole(role string) []*Node {
	var out []*Node
	for _, n := range c.nodes {
		if n.Role == role {
			out = append(out, n)
		}
	}
	return out
}

// Node returns the node with that name, or nil.
func (c *Cluster) Node(name string) *Node {
	for _, n := range c.nodes {
		if n.Name == name {
			return n
		}
	}
	return nil
}

// NodeByAddr returns the node whose IP is the host of addr ("127.0.N.x" or "127.0.N.x:port"), or nil.
func (c *Cluster) NodeByAddr(addr string) *Node {
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	for _, n := range c.nodes {
		if n.IP == host {
			return n
		}
	}
	return nil
}

// CheckPorts fails with ErrPortInUse, naming the address, when any node's HTTP, server RPC or Serf LAN
// port is already taken (another cluster on the same block, or a leaked agent).
func (c *Cluster) CheckPorts() error {
	var errs []error
	for _, n := range c.nodes {
		if err := n.CheckPorts(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Start starts every agent and waits (bounded by ctx, or DefaultWaitTimeout without a deadline) until the
// cluster is healthy: see WaitHealthy.
func (c *Cluster) Start(ctx context.Context) error {
	if c.opts.Supervised {
		return ErrSupervised
	}
	ctx, cancel := withDefaultDeadline(ctx)
	defer cancel()
	if err := c.CheckPorts(); err != nil {
		return err
	}
	start := time.Now()
	for _, n := range c.nodes {
		if err := n.spawn(); err != nil {
			return err
		}
	}
	for _, n := range c.nodes {
		if err := n.WaitReady(ctx); err != nil {
			return err
		}
	}
	up := time.Since(start)
	leader, err := c.WaitLeader(ctx)
	if err != nil {
		return err
	}
	elected := time.Since(start)
	if err := c.WaitHealthy(ctx); err != nil {
		return err
	}
	c.logger.Info("cluster started", "nodes", len(c.nodes), "leader", leader,
		"agents_up", up.Round(time.Millisecond), "leader_agreed", elected.Round(time.Millisecond),
		"healthy", time.Since(start).Round(time.Millisecond))
	return nil
}

// teardown kills every agent the harness started (process groups, SIGKILL: the data is thrown away) and,
// when the test failed, dumps the tail of every node's log.
func (c *Cluster) teardown() {
	c.mu.Lock()
	if c.tornDown {
		c.mu.Unlock()
		return
	}
	c.tornDown = true
	c.mu.Unlock()
	for _, n := range c.nodes {
		if err := n.Kill(); err != nil {
			c.logger.Error("teardown: failed to kill agent", "node", n.Name, "error", err)
		}
	}
	if c.t.Failed() {
		c.DumpLogs(LogTailLines)
	}
}

// Close tears the cluster down now instead of at cleanup (idempotent).
func (c *Cluster) Close() { c.teardown() }

// DumpLogs writes the last lines of every node's log to the test log.
func (c *Cluster) DumpLogs(lines int) {
	for _, n := range c.nodes {
		tail, err := n.LogTail(lines)
		if err != nil {
			c.t.Logf("testcluster: node %s: no log at %s: %v", n.Name, n.LogPath, err)
			continue
		}
		c.t.Logf("testcluster: ===== node %s (%s) log tail, last %d lines of %s =====\n%s", n.Name, n.IP, lines, n.LogPath, tail)
	}
}

package testcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/hashicorp/consul/api"
)

// Node is one Consul agent of the cluster.
type Node struct {
	Name      string // "s1".., "c1"..
	Role      string // RoleServer or RoleClient
	IP        string // 127.0.<Block>.<i>
	HTTPAddr  string // IP:8500
	RPCAddr   string // IP:8300 (what /v1/status/leader names)
	Dir       string // the node's home: data/, config/, agent.log
	DataDir   string
	ConfigDir string // holds agent.hcl
	LogPath   string // the agent's stdout+stderr when the harness runs it; a supervisor may write here too

	c *Cluster

	mu     sync.Mutex
	binary string
	proc   *proc
	client *api.Client
}

// proc is one run of the agent process.
type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed once the process has been reaped
	err  error         // cmd.Wait's result, set before done closes
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// IsServer reports whether the node is a server.
func (n *Node) IsServer() bool { return n.Role == RoleServer }

// ConfigFile is the node's agent.hcl.
func (n *Node) ConfigFile() string { return filepath.Join(n.ConfigDir, "agent.hcl") }

// String is the node name.
func (n *Node) String() string { return n.Name }

// Binary is the consul binary the next Start runs.
func (n *Node) Binary() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.binary
}

// SetBinary changes the binary the next Start (or Restart) runs; a running agent is not affected.
func (n *Node) SetBinary(path string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.binary = path
}

// AgentArgs are the arguments after the binary that run this node's agent.
func (n *Node) AgentArgs() []string {
	return []string{"agent", "-config-dir", n.ConfigDir}
}

// API returns the node's Consul API client (HTTP on HTTPAddr), built once. A CONSUL_HTTP_TOKEN in the
// environment still applies unless Options.ClientConfig sets a token.
func (n *Node) API() *api.Client {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.client != nil {
		return n.client
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.Proxy = nil
	tr.MaxIdleConnsPerHost = 8
	cfg := &api.Config{
		Address:    n.HTTPAddr,
		Scheme:     "http",
		Datacenter: n.c.opts.Datacenter,
		Transport:  tr,
		HttpClient: &http.Client{Transport: tr},
	}
	if n.c.opts.ClientConfig != nil {
		n.c.opts.ClientConfig(n, cfg)
	}
	client, err := api.NewClient(cfg)
	if err != nil {
		// Only a malformed config (from ClientConfig) gets here; fail loudly at the first call.
		panic(fmt.Sprintf("testcluster: failed to build the API client for %s: %v", n.Name, err))
	}
	n.client = client
	return client
}

func (n *Node) writeConfig() error {
	c := n.c
	ac := agentConfig{
		Name:       n.Name,
		Server:     n.IsServer(),
		IP:         n.IP,
		DataDir:    n.DataDir,
		Datacenter: c.opts.Datacenter,
		LogLevel:   c.opts.LogLevel,
		ServerIPs:  c.serverIPs(),
		Extra:      []string{c.opts.ExtraConfig},
	}
	if n.IsServer() {
		ac.BootstrapExpect = c.opts.Servers
	}
	if c.opts.NodeConfig != nil {
		ac.Extra = append(ac.Extra, c.opts.NodeConfig(n))
	}
	for _, d := range []string{n.DataDir, n.ConfigDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("failed to create %s: %w", d, err)
		}
	}
	if err := os.WriteFile(n.ConfigFile(), []byte(ac.render()), 0o644); err != nil {
		return fmt.Errorf("failed to write %s: %w", n.ConfigFile(), err)
	}
	return nil
}

// CheckPorts fails with ErrPortInUse when this node's HTTP port (or, for a server, its RPC port, or its
// Serf LAN port) cannot be bound: something else already listens there.
func (n *Node) CheckPorts() error {
	ports := []int{PortHTTP, PortSerfLAN}
	if n.IsServer() {
		ports = append(ports, PortServer)
	}
	for _, p := range ports {
		addr := net.JoinHostPort(n.IP, strconv.Itoa(p))
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("%w: %s (node %s): another cluster on block %d or a leaked agent? %w",
				ErrPortInUse, addr, n.Name, n.c.opts.Block, err)
		}
		_ = l.Close()
	}
	return nil
}

// Start runs the agent (its own process group, output appended to LogPath) and waits until its HTTP API
// answers. It fails with ErrRunning if the agent already runs, ErrPortInUse if its ports are taken, and
// ErrExited (with the log's tail) if the agent exits before it answers.
func (n *Node) Start(ctx context.Context) error {
	if err := n.CheckPorts(); err != nil {
		return err
	}
	if err := n.spawn(); err != nil {
		return err
	}
	return n.WaitReady(ctx)
}

// spawn starts the process and returns without waiting.
func (n *Node) spawn() error {
	if n.c.opts.Supervised && !slices.Contains(n.c.opts.Harnessed, n.Name) {
		return ErrSupervised
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.proc != nil && !n.proc.exited() {
		return fmt.Errorf("%w: %s (pid %d)", ErrRunning, n.Name, n.proc.cmd.Process.Pid)
	}
	logf, err := os.OpenFile(n.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("failed to open the log of %s: %w", n.Name, err)
	}
	fmt.Fprintf(logf, "==== testcluster: %s starting %s %v ====\n", time.Now().Format(time.RFC3339Nano), n.binary, n.AgentArgs())
	cmd := exec.Command(n.binary, n.AgentArgs()...)
	cmd.Dir = n.Dir
	cmd.Stdout = logf
	cmd.Stderr = logf
	cmd.SysProcAttr = sysProcAttr()
	if err := cmd.Start(); err != nil {
		_ = logf.Close()
		return fmt.Errorf("failed to start the agent of %s: %w", n.Name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	pid := cmd.Process.Pid
	go func() {
		p.err = cmd.Wait()
		// Anything the agent left in its group goes with it.
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		fmt.Fprintf(logf, "==== testcluster: %s agent pid %d exited: %v ====\n", time.Now().Format(time.RFC3339Nano), pid, exitText(p.err))
		_ = logf.Close()
		close(p.done)
	}()
	n.proc = p
	n.c.logger.Debug("agent started", "node", n.Name, "pid", pid, "binary", n.binary)
	return nil
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}

func (n *Node) current() *proc {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.proc
}

// Running reports whether the harness's process for this node is alive.
func (n *Node) Running() bool {
	p := n.current()
	return p != nil && !p.exited()
}

// Pid is the running agent's pid, or 0.
func (n *Node) Pid() int {
	p := n.current()
	if p == nil || p.exited() {
		return 0
	}
	return p.cmd.Process.Pid
}

// Exited returns a channel closed when the current run of the agent ends (nil if never started). Do not
// cache it across restarts: each Start makes a new one.
func (n *Node) Exited() <-chan struct{} {
	p := n.current()
	if p == nil {
		return nil
	}
	return p.done
}

// Stop sends SIGTERM to the agent's process group, waits up to StopTimeout (or until ctx ends), then
// sends SIGKILL. Stopping an agent that is not running is a no-op.
func (n *Node) Stop(ctx context.Context) error {
	p := n.current()
	if p == nil || p.exited() {
		return nil
	}
	start := time.Now()
	pid := p.cmd.Process.Pid
	if err := signalGroup(pid, syscall.SIGTERM); err != nil {
		return fmt.Errorf("failed to signal %s (pid %d): %w", n.Name, pid, err)
	}
	timer := time.NewTimer(n.c.opts.StopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		n.c.logger.Debug("agent stopped", "node", n.Name, "pid", pid, "took", time.Since(start).Round(time.Millisecond), "exit", exitText(p.err))
		return nil
	case <-timer.C:
		n.c.logger.Warn("agent ignored SIGTERM; killing", "node", n.Name, "pid", pid, "after", n.c.opts.StopTimeout)
	case <-ctx.Done():
		n.c.logger.Warn("stop cancelled; killing", "node", n.Name, "pid", pid)
	}
	return n.Kill()
}

// Kill sends SIGKILL to the agent's process group and waits (bounded) until it is reaped.
func (n *Node) Kill() error {
	p := n.current()
	if p == nil || p.exited() {
		return nil
	}
	pid := p.cmd.Process.Pid
	if err := signalGroup(pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("failed to kill %s (pid %d): %w", n.Name, pid, err)
	}
	timer := time.NewTimer(n.c.opts.StopTimeout)
	defer timer.Stop()
	select {
	case <-p.done:
		return nil
	case <-timer.C:
		return fmt.Errorf("failed to reap %s (pid %d) %s after SIGKILL", n.Name, pid, n.c.opts.StopTimeout)
	}
}

// Restart stops the agent (see Stop) and starts it again with the current Binary (see Start).
func (n *Node) Restart(ctx context.Context) error {
	if err := n.Stop(ctx); err != nil {
		return err
	}
	return n.Start(ctx)
}

func signalGroup(pid int, sig syscall.Signal) error {
	err := syscall.Kill(-pid, sig)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

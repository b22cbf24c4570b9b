// Package fleet runs a local fleet for the demo and the end-to-end tests: a testcluster in supervised
// mode whose every Consul agent is run (restart mode exec) by a real `upgrader agent` process, plus the
// signed release mirror those upgraders fetch from. Everything is real: processes, zips, signatures.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/mirror"
	"github.com/upgrader-dev/upgrader/internal/rollout"
	"github.com/upgrader-dev/upgrader/internal/testbin"
	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// Options describe a fleet. Zero values take the defaults noted per field.
type Options struct {
	Block            int      // 127.0.<Block>.x, required
	Servers, Clients int      // default 3 servers, 0 clients
	From             string   // version every node starts on (default 1.16.0)
	Publish          []string // versions published in the mirror (default 1.16.1)
	// Binaries overrides what the mirror publishes for a version (a broken release in F3 tests).
	Binaries map[string]string
	// UpgraderBin is the upgrader binary; empty: built once into the fleet's directory.
	UpgraderBin string
	// Stabilization, ConfirmTimeout, LockTTL, LockDelay go into every upgrader's config.
	Stabilization, ConfirmTimeout, LockTTL, LockDelay string
	// UpgraderConfig returns more HCL for one node's upgrader config (appended).
	UpgraderConfig func(n *testcluster.Node) string
	// Unmanaged names nodes that get no upgrader: the harness runs their agent directly and the rollout
	// never restarts them (the availability monitor writes through one).
	Unmanaged []string
	// ClusterExtraConfig is HCL appended to every Consul agent's config.
	ClusterExtraConfig string
	Logger             hclog.Logger

	// ACL runs the cluster with ACLs in default-deny mode (FAULTS F5). The harness and the agents use a
	// management token; every upgrader reads its own token file (SetUpgraderToken), which holds
	// AgentToken, a token of AgentPolicy created once the cluster is up: until then the upgraders'
	// permission checks meet "ACL not found" and wait.
	ACL bool
	// AgentPolicy is the rules of the upgraders' token; empty: jobs/acl/upgrader-agent.hcl.
	AgentPolicy string
	// SnapshotToken gives every upgrader consul { snapshot_token_file } holding the management token.
	SnapshotToken bool
	// TLS makes every agent serve HTTPS only (ports { http = -1, https = 8501 }, client certificates
	// required) with certificates from a test CA whose SANs are the nodes' IPs; the upgraders use
	// ca_file/cert_file/key_file and the harness its own client certificate.
	TLS bool
}

func (o *Options) finalize() {
	if o.Servers == 0 {
		o.Servers = 3
	}
	if o.From == "" {
		o.From = "1.16.0"
	}
	if len(o.Publish) == 0 {
		o.Publish = []string{"1.16.1"}
	}
	if o.Stabilization == "" {
		o.Stabilization = "3s"
	}
	if o.ConfirmTimeout == "" {
		o.ConfirmTimeout = "2m"
	}
	if o.LockTTL == "" {
		o.LockTTL = "10s"
	}
	if o.LockDelay == "" {
		o.LockDelay = "1s"
	}
}

// Fleet is a running local fleet.
type Fleet struct {
	Cluster    *testcluster.Cluster
	Mirror     *mirror.Server
	MirrorRoot string
	KeyFile    string // the test signing key's public half, pinned by every upgrader
	Signer     *openpgp.Entity

	// ManagementToken and AgentToken are set in an ACL fleet (secrets: tests must not log them).
	ManagementToken, AgentToken string
	// PKI is the test CA of a TLS fleet.
	PKI *PKI

	t   testcluster.TB
	o   Options
	dir string
	bin string
	log hclog.Logger

	mu  sync.Mutex
	ups map[string]*Upgrader
}

// Upgrader is one node's `upgrader agent` process.
type Upgrader struct {
	Node       *testcluster.Node
	ConfigPath string
	StateDir   string
	LogPath    string
	LivePath   string // the live consul binary the upgrader swaps

	cmd      *exec.Cmd
	done     chan struct{}
	exitCode int
}

// Exited is closed when the upgrader process of the last StartUpgrader ends (nil if never started).
func (u *Upgrader) Exited() <-chan struct{} { return u.done }

// ExitCode is the exit code of the ended process (-1 if killed by a signal); valid once Exited closed.
func (u *Upgrader) ExitCode() int { return u.exitCode }

// Start builds the mirror, writes every node's upgrader config, starts one upgrader per node (each
// starts its Consul agent) and waits until the cluster is healthy. Teardown is registered on t.
func Start(ctx context.Context, t testcluster.TB, o Options) (*Fleet, error) {
	o.finalize()
	log := o.Logger
	if log == nil {
		log = hclog.New(&hclog.LoggerOptions{Name: "fleet", Output: tbWriter{t}})
	}
	from, err := testbin.Path(o.From)
	if err != nil {
		return nil, err
	}
	f := &Fleet{t: t, o: o, log: log, ups: map[string]*Upgrader{}}
	extra := o.ClusterExtraConfig
	if o.ACL {
		if f.ManagementToken, err = newSecret(); err != nil {
			return nil, err
		}
		if f.AgentToken, err = newSecret(); err != nil {
			return nil, err
		}
		extra += "\n" + aclAgentConfig(f.ManagementToken)
	}
	c, err := testcluster.Create(t, testcluster.Options{Block: o.Block, Servers: o.Servers, Clients: o.Clients,
		Binary: from, Supervised: true, Harnessed: o.Unmanaged, ExtraConfig: extra, Logger: log,
		ClientConfig: f.clientConfig})
	if err != nil {
		return nil, err
	}
	f.Cluster, f.dir = c, c.Dir()
	t.Cleanup(f.teardown)
	if o.TLS {
		if f.PKI, err = NewPKI(filepath.Join(f.dir, "pki"), c.Options().Datacenter, c.Nodes(), time.Now()); err != nil {
			return nil, err
		}
		for _, n := range c.Nodes() {
			if err := os.WriteFile(filepath.Join(n.ConfigDir, "tls.hcl"), []byte(f.PKI.tlsAgentConfig(n.Name)), 0o644); err != nil {
				return nil, err
			}
		}
	}

	if f.bin = o.UpgraderBin; f.bin == "" {
		if f.bin, err = BuildUpgrader(ctx, filepath.Join(f.dir, "upgrader-bin")); err != nil {
			return nil, err
		}
	}
	if err := f.buildMirror(ctx); err != nil {
		return nil, err
	}
	for _, n := range c.Nodes() {
		if f.unmanaged(n.Name) {
			continue
		}
		u, err := f.prepare(n, from)
		if err != nil {
			return nil, err
		}
		f.ups[n.Name] = u
	}
	for _, n := range c.Nodes() {
		if f.unmanaged(n.Name) {
			if err := n.Start(ctx); err != nil {
				return nil, err
			}
			continue
		}
		if err := f.StartUpgrader(n.Name); err != nil {
			return nil, err
		}
	}
	hctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	if err := c.WaitHealthy(hctx); err != nil {
		c.DumpLogs(60)
		f.DumpUpgraderLogs(60)
		return nil, fmt.Errorf("fleet: cluster not healthy: %w", err)
	}
	if o.ACL {
		rules := o.AgentPolicy
		if rules == "" {
			if rules, err = ReadShippedPolicy(); err != nil {
				return nil, err
			}
		}
		if _, err := f.CreateToken(ctx, "upgrader-agent", rules, f.AgentToken); err != nil {
			return nil, err
		}
	}
	return f, nil
}

func (f *Fleet) buildMirror(ctx context.Context) error {
	f.MirrorRoot = filepath.Join(f.dir, "mirror")
	key, err := mirror.GenerateKey("upgrader test release key", time.Now(), 24*time.Hour)
	if err != nil {
		return err
	}
	f.Signer = key
	f.KeyFile = filepath.Join(f.dir, "release-key.asc")
	if err := mirror.WritePublicKey(f.KeyFile, key); err != nil {
		return err
	}
	srv, err := mirror.Serve(ctx, fmt.Sprintf("127.0.%d.254:0", f.o.Block), f.MirrorRoot)
	if err != nil {
		return err
	}
	f.Mirror = srv
	bins := map[string]string{}
	for _, v := range f.o.Publish {
		if p, ok := f.o.Binaries[v]; ok {
			bins[v] = p
			continue
		}
		p, err := testbin.Path(v)
		if err != nil {
			return err
		}
		bins[v] = p
	}
	start := time.Now()
	if err := mirror.Build(f.MirrorRoot, srv.URL(), "consul", bins, []*openpgp.Entity{key}); err != nil {
		return err
	}
	f.log.Info("mirror built", "url", srv.URL(), "versions", f.o.Publish, "took", time.Since(start).Round(time.Millisecond))
	return nil
}

// prepare gives a node its own live binary (a hard link of the cached one: the upgrader never writes
// into the live file, it renames a new one over it) and its upgrader config.
func (f *Fleet) prepare(n *testcluster.Node, from string) (*Upgrader, error) {
	u := &Upgrader{Node: n, StateDir: filepath.Join(n.Dir, "upgrader"), LogPath: filepath.Join(n.Dir, "upgrader.log"),
		LivePath: filepath.Join(n.Dir, "bin", "consul"), ConfigPath: filepath.Join(n.Dir, "upgrader.hcl")}
	if err := os.MkdirAll(filepath.Dir(u.LivePath), 0o755); err != nil {
		return nil, err
	}
	if err := linkOrCopy(from, u.LivePath); err != nil {
		return nil, err
	}
	n.SetBinary(u.LivePath)
	var b strings.Builder
	fmt.Fprintf(&b, "node_name = %q\nstate_dir = %q\nlog_level = \"debug\"\n", n.Name, u.StateDir)
	consul, err := f.consulBlock(u)
	if err != nil {
		return nil, err
	}
	b.WriteString(consul)
	fmt.Fprintf(&b, "binary {\n  path = %q\n}\n", u.LivePath)
	fmt.Fprintf(&b, "release {\n  url = %q\n  public_keys = [%q]\n  allow_insecure_http = true\n}\n", f.Mirror.URL(), f.KeyFile)
	fmt.Fprintf(&b, "restart {\n  mode = \"exec\"\n  args = [%s]\n  log_file = %q\n  kill_timeout = \"10s\"\n}\n", quoteList(n.AgentArgs()), n.LogPath)
	fmt.Fprintf(&b, "lock {\n  ttl = %q\n  lock_delay = %q\n}\n", f.o.LockTTL, f.o.LockDelay)
	fmt.Fprintf(&b, "gates {\n  stabilization = %q\n  confirm_timeout = %q\n  interval = \"250ms\"\n}\n", f.o.Stabilization, f.o.ConfirmTimeout)
	if f.o.UpgraderConfig != nil {
		b.WriteString(f.o.UpgraderConfig(n))
	}
	if err := os.WriteFile(u.ConfigPath, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	return u, nil
}

func (f *Fleet) unmanaged(name string) bool {
	for _, u := range f.o.Unmanaged {
		if u == name {
			return true
		}
	}
	return false
}

// Managed lists the nodes that run an upgrader.
func (f *Fleet) Managed() []*testcluster.Node {
	var out []*testcluster.Node
	for _, n := range f.Cluster.Nodes() {
		if !f.unmanaged(n.Name) {
			out = append(out, n)
		}
	}
	return out
}

// Upgrader returns a node's upgrader.
func (f *Fleet) Upgrader(name string) *Upgrader {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.ups[name]
}

// StartUpgrader starts a node's upgrader process (which starts or adopts its Consul agent).
func (f *Fleet) StartUpgrader(name string) error {
	u := f.Upgrader(name)
	if u == nil {
		return fmt.Errorf("fleet: no node %q", name)
	}
	logf, err := os.OpenFile(u.LogPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(f.bin, "agent", "-config", u.ConfigPath)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = cleanEnv()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("fleet: failed to start the upgrader of %s: %w", name, err)
	}
	done := make(chan struct{})
	f.mu.Lock()
	u.cmd, u.done = cmd, done
	f.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		logf.Close()
		u.exitCode = cmd.ProcessState.ExitCode()
		close(done)
	}()
	return nil
}

// StopUpgrader sends SIGTERM (the upgrader stops its agent too) and waits up to timeout, then SIGKILLs.
func (f *Fleet) StopUpgrader(name string, timeout time.Duration) {
	u := f.Upgrader(name)
	if u == nil || u.cmd == nil {
		return
	}
	_ = u.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-u.done:
	case <-t.C:
		_ = syscall.Kill(-u.cmd.Process.Pid, syscall.SIGKILL)
		<-u.done
	}
}

// KillUpgrader SIGKILLs a node's upgrader alone: its Consul agent keeps running (FAULTS F14).
func (f *Fleet) KillUpgrader(name string) {
	u := f.Upgrader(name)
	if u == nil || u.cmd == nil {
		return
	}
	_ = u.cmd.Process.Kill()
	<-u.done
}

// Store is a rollout store reached through node name's agent.
func (f *Fleet) Store(name string) (*rollout.Store, error) {
	n := f.Cluster.Node(name)
	if n == nil {
		return nil, fmt.Errorf("fleet: no node %q", name)
	}
	return rollout.NewStore(n.API().KV(), "consul")
}

// DumpUpgraderLogs writes the tail of every upgrader log to the test log.
func (f *Fleet) DumpUpgraderLogs(lines int) {
	for _, n := range f.Cluster.Nodes() {
		u := f.Upgrader(n.Name)
		if u == nil {
			continue
		}
		b, _ := os.ReadFile(u.LogPath)
		ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
		if len(ls) > lines {
			ls = ls[len(ls)-lines:]
		}
		f.t.Logf("---- upgrader %s (last %d lines of %s)\n%s", n.Name, len(ls), u.LogPath, strings.Join(ls, "\n"))
	}
}

// teardown stops every upgrader (which stops its agent), then kills whatever survived: agents are
// found through the pid files the upgraders keep.
func (f *Fleet) teardown() {
	if f.t.Failed() {
		f.DumpUpgraderLogs(80)
		f.Cluster.DumpLogs(40)
	}
	var wg sync.WaitGroup
	for name := range f.ups {
		wg.Add(1)
		go func() { defer wg.Done(); f.StopUpgrader(name, 15*time.Second) }()
	}
	wg.Wait()
	for _, u := range f.ups {
		if b, err := os.ReadFile(filepath.Join(u.StateDir, "agent.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(firstLine(string(b)))); err == nil && pid > 1 {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	if f.Mirror != nil {
		_ = f.Mirror.Close()
	}
	f.Cluster.Close()
}

// BuildUpgrader compiles cmd/upgrader into dir and returns the binary's path.
func BuildUpgrader(ctx context.Context, dir string) (string, error) {
	root, err := moduleRoot()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, "upgrader")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./cmd/upgrader")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("fleet: failed to build the upgrader: %w\n%s", err, b)
	}
	return out, nil
}

func moduleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("fleet: go.mod not found above the working directory")
		}
		dir = parent
	}
}

func linkOrCopy(src, dst string) error {
	_ = os.Remove(dst)
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// cleanEnv drops CONSUL_* variables so an operator's environment never points a test upgrader elsewhere.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "CONSUL_") {
			env = append(env, kv)
		}
	}
	return env
}

func quoteList(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = strconv.Quote(a)
	}
	return strings.Join(q, ", ")
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// tbWriter sends log lines to t.Logf.
type tbWriter struct{ t testcluster.TB }

func (w tbWriter) Write(p []byte) (int, error) {
	w.t.Logf("%s", strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/hashicorp/consul/api"
	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/agent"
	"github.com/upgrader-dev/upgrader/internal/config"
	"github.com/upgrader-dev/upgrader/internal/consulconn"
	"github.com/upgrader-dev/upgrader/internal/health"
	"github.com/upgrader-dev/upgrader/internal/install"
	"github.com/upgrader-dev/upgrader/internal/lock"
	"github.com/upgrader-dev/upgrader/internal/permission"
	"github.com/upgrader-dev/upgrader/internal/release"
	"github.com/upgrader-dev/upgrader/internal/restart"
	"github.com/upgrader-dev/upgrader/internal/rollout"
)

const agentUsage = `Usage: upgrader agent -config FILE [options]

Runs next to one Consul agent: watches <kv_prefix>consul/target and upgrades this node when it is its
turn. See README "Configuration" for the file format.`

func runAgent(ctx context.Context, c *CLI, args []string) int {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
	fs.SetOutput(c.errw)
	fs.Usage = func() { fmt.Fprintln(c.errw, agentUsage+"\n\nOptions:"); fs.PrintDefaults() }
	cfgPath := fs.String("config", "", "HCL configuration file (required)")
	nodeName := fs.String("node-name", "", "override node_name")
	logLevel := fs.String("log-level", "", "override log_level (trace, debug, info, warn, error)")
	httpAddr := fs.String("http-addr", "", "override consul.address (else CONSUL_HTTP_ADDR)")
	rest, err := parseArgs(fs, args)
	if err != nil {
		return exitForParse(err)
	}
	if len(rest) != 0 {
		fmt.Fprintf(c.errw, "upgrader agent: unexpected argument %q\n\n", rest[0])
		fs.Usage()
		return ExitUsage
	}
	if *cfgPath == "" {
		fmt.Fprintf(c.errw, "upgrader agent: -config is required: the agent's HCL configuration file\n\n")
		fs.Usage()
		return ExitUsage
	}
	cfg, err := config.ParseFile(*cfgPath)
	if err != nil {
		fmt.Fprintf(c.errw, "upgrader agent: %v\n", err)
		return ExitUsage
	}
	cfg.Merge(&config.Config{NodeName: *nodeName, LogLevel: *logLevel, Consul: &config.Consul{Address: *httpAddr}})
	if err := cfg.Finalize(); err != nil {
		fmt.Fprintf(c.errw, "upgrader agent: %v\n", err)
		return ExitUsage
	}
	logger := hclog.New(&hclog.LoggerOptions{Name: "upgrader", Level: hclog.LevelFromString(cfg.LogLevel), Output: c.errw})
	if err := runAgentWith(ctx, cfg, logger); err != nil {
		if ctx.Err() != nil {
			return ExitOK
		}
		logger.Error("agent stopped", "error", err)
		return ExitError
	}
	return ExitOK
}

// runAgentWith builds every component from the configuration and runs the agent until ctx ends.
func runAgentWith(ctx context.Context, cfg *config.Config, logger hclog.Logger) error {
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("failed to create state_dir: %w", err)
	}
	keyring, err := loadKeyring(cfg.Release.PublicKeys, "release.public_keys")
	if err != nil {
		return err
	}
	for _, k := range release.ExpiringKeys(keyring, time.Now(), 90*24*time.Hour) {
		logger.Warn("a pinned release key expires soon: add its refreshed copy to release.public_keys", "key", k.String())
	}

	if err := checkLiveBinary(cfg.Binary.Path); err != nil {
		return err
	}
	if cfg.Consul.SnapshotTokenFile != "" {
		if _, err := readTokenFile(cfg.Consul.SnapshotTokenFile); err != nil {
			return err
		}
	}
	// The local connection never fails over: the gates must see this node's own agent. Both carry the
	// same token and TLS settings (consulConfig), as do the gates' per-server clients.
	connCfg := consulConfig(cfg, logger)
	local, err := consulconn.New(connCfg)
	if err != nil {
		return err
	}
	defer local.Close()
	clusterCfg := connCfg
	clusterCfg.Fallbacks = cfg.Consul.FallbackAddrs
	cluster, err := consulconn.New(clusterCfg)
	if err != nil {
		return err
	}
	defer cluster.Close()

	restarter, stopAgent, detachAgent, err := buildRestarter(ctx, cfg, logger)
	if err != nil {
		return err
	}
	// An upgrader that refuses to start leaves the agent it runs alone (the next upgrader adopts it).
	keepAgent := false
	defer func() {
		if keepAgent {
			detachAgent()
			return
		}
		stopAgent()
	}()

	// In exec mode the agent this upgrader adopted may be one a killed predecessor was stopping: if it
	// is gone while we wait for it, start it again rather than wait forever with the node down.
	var ensureAgent func(context.Context) error
	if ex, ok := restarter.(*restart.Exec); ok {
		ensureAgent = func(ctx context.Context) error {
			if ex.Pid() != 0 {
				return nil
			}
			logger.Warn("the local agent is not running; starting it")
			return ex.Start(ctx)
		}
	}
	self, err := waitLocalAgent(ctx, local.API(), ensureAgent, logger)
	if err != nil {
		return err
	}
	node := self.node
	if cfg.NodeName != "" && cfg.NodeName != self.node {
		// The upgrader upgrades the agent it runs next to: a different name is a config mistake.
		return fmt.Errorf("%w: node_name %q is not the local agent's node name %q (at %s): remove node_name or fix consul.address",
			config.ErrConfig, cfg.NodeName, self.node, local.Address())
	}
	if err := checkPermissions(ctx, cfg, connCfg, local, node, self.server, logger); err != nil {
		keepAgent = errors.Is(err, permission.ErrDenied) || errors.Is(err, permission.ErrTokenUnknown)
		return err
	}
	if len(cfg.Consul.FallbackAddrs) == 0 {
		if addrs, err := cluster.DiscoverServers(ctx); err == nil {
			_ = cluster.SetFallbacks(addrs)
			logger.Info("lock fallbacks discovered", "servers", addrs)
		} else {
			logger.Warn("failed to discover fallback servers; the lock relies on the local agent", "error", err)
		}
	}

	store, err := rollout.NewStore(cluster.API().KV(), cfg.Product, rollout.WithPrefix(cfg.KVPrefix), rollout.WithLogger(logger))
	if err != nil {
		return err
	}
	base, err := connCfg.APIConfig()
	if err != nil {
		return err
	}
	dialer := health.NewDialer(base)
	defer dialer.Close()
	httpPort, _ := strconv.Atoi(portOf(local.Address()))
	probeKey := cfg.KVPrefix + cfg.Product + "/probe/" + node
	observer := func(probe string) agent.Observer {
		return func(ctx context.Context) (health.Observation, error) {
			// The other servers listen on the local agent's port (DebugConfig.HTTPPort is -1 on an
			// HTTPS-only agent).
			in := health.ObserveInput{Local: health.FromClient(local.API()), ProbeKey: probe, HTTPPort: httpPort}
			if self.server {
				in.Dial = dialer.Dial
			}
			return health.Observe(ctx, in)
		}
	}
	locks := func(prefix string, limit int, session string) (agent.Lock, error) {
		l, err := lock.New(cluster.API(), lock.Options{Prefix: prefix, Limit: limit, Holder: node,
			TTL: cfg.Lock.TTLDuration, LockDelay: cfg.Lock.LockDelayDuration, SessionID: session, Logger: logger})
		if err != nil {
			return nil, err
		}
		return notAcquiredLock{l}, nil
	}
	// Resolved before the options: it may raise confirm_timeout to stay longer than the window.
	stabilization := stabilizationWindow(cfg, local.API(), logger)
	a, err := agent.New(agent.Options{
		Product: cfg.Product, KVPrefix: cfg.KVPrefix, Node: node, Server: self.server, StateDir: cfg.StateDir,
		GOOS: cfg.Release.OS, GOARCH: cfg.Release.Arch,
		Fetcher: &release.Source{BaseURL: cfg.Release.URL, Keyring: keyring, AllowInsecureHTTP: cfg.Release.AllowInsecureHTTP,
			CacheDir: filepath.Join(cfg.StateDir, "releases"), Logger: logger},
		Installer:      install.Binary{LivePath: cfg.Binary.Path},
		Restarter:      restarter,
		Locks:          locks,
		Observe:        observer(""),
		ObserveConfirm: observer(probeKey),
		Cluster: clusterOps{local: local.API(), cluster: cluster.API(), snapshotTokenFile: cfg.Consul.SnapshotTokenFile,
			serverLock: rollout.ServerLockPrefix(cfg.KVPrefix, cfg.Product)},
		Store:             store,
		ClientLimit:       cfg.Lock.ClientLimit,
		Stabilization:     stabilization,
		ConfirmTimeout:    cfg.Gates.ConfirmTimeoutDuration,
		Interval:          cfg.Gates.IntervalDuration,
		AllowSingleServer: cfg.Gates.AllowSingleServer,
		Logger:            logger,
	})
	if err != nil {
		return err
	}
	logger.Info("upgrader agent running", "node", node, "server", self.server, "version", self.version,
		"target_key", cfg.KVPrefix+cfg.Product+"/target")
	if err := a.Run(ctx); err != nil {
		if ctx.Err() == nil {
			// An upgrader that fails (a revoked token, an unreadable journal) must not take its node
			// down with it: on every node at once that would be a cluster outage. The agent keeps
			// running and the next upgrader adopts it.
			keepAgent = true
		}
		return err
	}
	return nil
}

// notAcquiredLock maps the lock package's "not acquired" onto the agent's sentinel.
type notAcquiredLock struct{ *lock.Lock }

func (l notAcquiredLock) Acquire(ctx context.Context) (<-chan struct{}, error) {
	ch, err := l.Lock.Acquire(ctx)
	if errors.Is(err, lock.ErrLimitConflict) {
		return nil, err // a configuration error to show the operator, not "still waiting"
	}
	if errors.Is(err, lock.ErrNotAcquired) {
		return nil, fmt.Errorf("%w: %w", agent.ErrNotAcquired, err)
	}
	return ch, err
}

// loadKeyring reads the pinned keys; setting names the option the files came from, for errors.
func loadKeyring(files []string, setting string) (openpgp.EntityList, error) {
	if len(files) == 0 {
		return release.DefaultKeyring()
	}
	var all openpgp.EntityList
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("failed to read the %s file: %w", setting, err)
		}
		ks, err := release.ReadKeyring(b)
		if err != nil {
			return nil, fmt.Errorf("failed to read the release key %s (%s): %w", f, setting, err)
		}
		all = append(all, ks...)
	}
	return all, nil
}

// buildRestarter makes the configured restarter; in exec mode it also starts (or adopts) the agent and
// returns how to stop it when the upgrader shuts down, and how to leave it running for the next upgrader
// to adopt instead.
func buildRestarter(ctx context.Context, cfg *config.Config, logger hclog.Logger) (agent.Restarter, func(), func(), error) {
	noop := func() {}
	switch cfg.Restart.Mode {
	case config.RestartSystemd:
		return &restart.Systemd{Unit: cfg.Restart.Unit}, noop, noop, nil
	case config.RestartCommand:
		return &restart.Command{Argv: cfg.Restart.Command}, noop, noop, nil
	}
	var out io.Writer = os.Stderr
	if cfg.Restart.LogFile != "" {
		f, err := os.OpenFile(cfg.Restart.LogFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return nil, nil, nil, fmt.Errorf("failed to open restart.log_file: %w", err)
		}
		out = f
	}
	ex, err := restart.New(restart.ExecInput{
		Path: cfg.Binary.Path, Args: cfg.Restart.Args, Stdout: out, Stderr: out,
		KillTimeout: cfg.Restart.KillTimeoutDuration, PIDFile: filepath.Join(cfg.StateDir, "agent.pid"), Logger: logger,
	})
	if err != nil {
		return nil, nil, nil, err
	}
	if err := ex.Start(ctx); err != nil {
		return nil, nil, nil, fmt.Errorf("failed to start the agent: %w", err)
	}
	stop := func() {
		sctx, cancel := context.WithTimeout(context.Background(), cfg.Restart.KillTimeoutDuration+5*time.Second)
		defer cancel()
		if err := ex.Stop(sctx); err != nil {
			logger.Warn("failed to stop the agent", "error", err)
		}
	}
	detach := func() {
		logger.Warn("leaving the agent running for the next upgrader to adopt", "pid_file", filepath.Join(cfg.StateDir, "agent.pid"))
		ex.Close()
	}
	return ex, stop, detach, nil
}

type localSelf struct {
	node, version string
	server        bool
}

// waitLocalAgent waits until the local agent answers and says who it is.
// ensure, when set, is called while the agent does not answer (exec mode: start it if it is not running).
func waitLocalAgent(ctx context.Context, c *api.Client, ensure func(context.Context) error, logger hclog.Logger) (localSelf, error) {
	backoff := 200 * time.Millisecond
	start := time.Now()
	for {
		self, err := c.Agent().Self()
		if err == nil {
			cfg := self["Config"]
			s := localSelf{}
			s.node, _ = cfg["NodeName"].(string)
			s.version, _ = cfg["Version"].(string)
			s.server, _ = cfg["Server"].(bool)
			if s.node != "" {
				return s, nil
			}
		}
		if ensure != nil {
			if eerr := ensure(ctx); eerr != nil {
				logger.Warn("failed to start the local agent", "error", eerr)
			}
		}
		// Waits for as long as it takes (the agent may be down for maintenance, or starting under exec),
		// but says so louder once it has lasted.
		level := hclog.Info
		if waited := time.Since(start); waited > 30*time.Second {
			level = hclog.Warn
		}
		logger.Log(level, "waiting for the local agent to answer", "waited", time.Since(start).Round(time.Second), "error", err)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return localSelf{}, fmt.Errorf("failed to reach the local agent: %w", ctx.Err())
		case <-t.C:
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// stabilizationWindow is gates.stabilization when set, else the larger of config.DefaultStabilization and
// the cluster's autopilot ServerStabilizationTime.
func stabilizationWindow(cfg *config.Config, c *api.Client, logger hclog.Logger) time.Duration {
	if cfg.Gates.Stabilization != "" {
		return cfg.Gates.StabilizationDuration
	}
	ap, err := c.Operator().AutopilotGetConfiguration(nil)
	if err != nil {
		logger.Warn("failed to read autopilot's configuration; using the default stabilization window",
			"window", config.DefaultStabilization, "error", err)
		return config.DefaultStabilization
	}
	w := max(config.DefaultStabilization, ap.ServerStabilizationTime.Duration())
	logger.Info("stabilization window", "window", w, "autopilot_server_stabilization_time", ap.ServerStabilizationTime.Duration())
	if cfg.Gates.ConfirmTimeoutDuration <= w {
		logger.Warn("gates.confirm_timeout is not longer than the stabilization window; raising it", "confirm_timeout", cfg.Gates.ConfirmTimeoutDuration, "window", w)
		cfg.Gates.ConfirmTimeoutDuration = w + time.Minute
	}
	return w
}

// checkLiveBinary makes sure binary.path names an existing regular file in a directory the upgrader can
// write to (the staged binary and the rollback copy live next to it), before anything else happens.
func checkLiveBinary(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("%w: binary.path %s: %w: point it at the live consul binary", config.ErrConfig, path, err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0 {
		return fmt.Errorf("%w: binary.path %s is not an executable file", config.ErrConfig, path)
	}
	probe, err := os.CreateTemp(filepath.Dir(path), ".upgrader-write-check-*")
	if err != nil {
		return fmt.Errorf("%w: the directory of binary.path %s is not writable (the new binary is staged next to the live one): %w", config.ErrConfig, path, err)
	}
	probe.Close()
	return os.Remove(probe.Name())
}

// clusterOps are the cluster-wide operations the agent performs through Consul's API.
type clusterOps struct {
	local, cluster *api.Client
	// snapshotTokenFile holds the token /v1/snapshot is called with (empty: the agent's own).
	snapshotTokenFile string
	// serverLock is the server semaphore's prefix.
	serverLock string
}

// ServersUpgrading reports whether any server holds the server lock.
func (o clusterOps) ServersUpgrading(ctx context.Context) (bool, error) {
	holders, err := lock.Holders(ctx, o.cluster.KV(), o.serverLock)
	return len(holders) > 0, err
}

// TransferLeader asks the local server (the leader) to hand leadership to targetID ("": raft's choice).
func (o clusterOps) TransferLeader(ctx context.Context, targetID string) error {
	resp, err := o.local.Operator().RaftLeaderTransfer(targetID, (&api.QueryOptions{}).WithContext(ctx))
	if err != nil {
		return fmt.Errorf("failed to transfer leadership: %w", err)
	}
	if !resp.Success {
		return errors.New("failed to transfer leadership: consul reported no success")
	}
	return nil
}

// Snapshot saves a consistent snapshot of the cluster's state to path (atomically).
func (o clusterOps) Snapshot(ctx context.Context, path string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("failed to create the snapshot directory: %w", err)
	}
	q := (&api.QueryOptions{}).WithContext(ctx)
	if o.snapshotTokenFile != "" {
		token, err := readTokenFile(o.snapshotTokenFile)
		if err != nil {
			return err
		}
		q.Token = token
	}
	rc, _, err := o.cluster.Snapshot().Save(q)
	if err != nil {
		return fmt.Errorf("failed to save a snapshot: %w", permission.SnapshotError(err, o.snapshotTokenFile != ""))
	}
	defer rc.Close()
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return fmt.Errorf("failed to write the snapshot: %w", err)
	}
	if _, err := io.Copy(f, rc); err != nil {
		f.Close()
		return fmt.Errorf("failed to write the snapshot: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("failed to write the snapshot: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("failed to write the snapshot: %w", err)
	}
	return os.Rename(tmp, path)
}

// Package agent owns the per-node upgrade state machine: it watches the target in KV, decides (purely,
// in decide.go) what this node should do, and acts: stage the verified release, wait for the pre-flight
// gate, take the cluster-wide lock, swap the binary, restart the agent, confirm health for a
// stabilization window, and only then release the lock. A failure rolls back and halts the rollout.
// Every step is recorded in a local journal first, so a restarted upgrader ends in a safe state.
package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/hashicorp/go-hclog"

	"github.com/upgrader-dev/upgrader/internal/health"
	"github.com/upgrader-dev/upgrader/internal/release"
	"github.com/upgrader-dev/upgrader/internal/rollout"
)

// Fetcher downloads and verifies a release (release.Source).
type Fetcher interface {
	Fetch(ctx context.Context, product, version, goos, goarch string) (*release.Artifact, error)
}

// Installer places binaries next to the live one (install.Binary).
type Installer interface {
	Stage(src, version string) (string, error)
	Swap(staged, fromVersion string) (string, error)
	Rollback(rollback string) error
	// RollbackPath is where Swap keeps the previous binary when that binary is version: a resumed
	// upgrade whose journal lost the path (a crash between the rename and the journal write) finds it.
	RollbackPath(version string) string
}

// Restarter restarts the local agent on whatever binary is at the live path.
type Restarter interface {
	Restart(ctx context.Context) error
}

// Lock is one acquisition of the cluster-wide semaphore (lock.Lock).
type Lock interface {
	Acquire(ctx context.Context) (<-chan struct{}, error)
	Release(ctx context.Context) error
	StillHeld(ctx context.Context) (bool, error)
	SessionID() string
}

// ErrNotAcquired is what a Lock's Acquire returns (wrapped) when it gave up without the lock; the
// wiring maps the lock package's sentinel onto it.
var ErrNotAcquired = errors.New("agent: lock not acquired")

// LockFactory makes a Lock on prefix with limit; sessionID resumes a journaled session ("" for new).
type LockFactory func(prefix string, limit int, sessionID string) (Lock, error)

// Observer takes one health observation from this node's point of view.
type Observer func(ctx context.Context) (health.Observation, error)

// Cluster is the handful of cluster-wide operations the agent performs itself.
type Cluster interface {
	// TransferLeader moves raft leadership off this server to the voter with raft ID targetID ("": any
	// up-to-date voter, raft's choice).
	TransferLeader(ctx context.Context, targetID string) error
	// Snapshot saves a Consul snapshot to path.
	Snapshot(ctx context.Context, path string) error
	// ServersUpgrading reports whether a server holds the server lock (is mid-upgrade): clients wait
	// until the last server is confirmed, not merely restarted on the target.
	ServersUpgrading(ctx context.Context) (bool, error)
}

// Store is the KV state the agent reads and writes (rollout.Store).
type Store interface {
	ReadTarget(ctx context.Context) (rollout.Target, []byte, uint64, error)
	WatchTarget(ctx context.Context, waitIndex uint64) (rollout.Target, []byte, uint64, error)
	ReadControl(ctx context.Context) (rollout.Control, uint64, error)
	// WatchControl blocks until the control changes after waitIndex (0: read now).
	WatchControl(ctx context.Context, waitIndex uint64) (rollout.Control, uint64, error)
	Halt(ctx context.Context, node, reason string) (rollout.Control, bool, error)
	PutNodeStatus(ctx context.Context, s rollout.NodeStatus) error
	GetNodeStatus(ctx context.Context, node string) (rollout.NodeStatus, bool, error)
	StartRollout(ctx context.Context, t rollout.Target, targetIndex uint64) (rollout.Rollout, error)
	RecordSnapshot(ctx context.Context, id string, snap rollout.Snapshot) (rollout.Rollout, error)
	RecordOutcome(ctx context.Context, id, node string, o rollout.Outcome) (rollout.Rollout, error)
	ReadRollout(ctx context.Context) (rollout.Rollout, error)
	ListNodeStatus(ctx context.Context) ([]rollout.NodeStatus, error)
	FinishRollout(ctx context.Context, id string) (rollout.Rollout, error)
}

// Options is everything an Agent needs. Every field without a documented default is required.
type Options struct {
	Product  string
	KVPrefix string // e.g. "upgrader/"
	Node     string // this node's name as Consul knows it
	Server   bool   // this node's agent is a server
	StateDir string
	GOOS     string
	GOARCH   string

	Fetcher   Fetcher
	Installer Installer
	Restarter Restarter
	Locks     LockFactory
	Observe   Observer // for decisions and the pre-flight gate
	// ObserveConfirm adds the consistent write probe; used only by the confirm gate, so that waiting
	// nodes do not load the cluster with writes. Nil: Observe.
	ObserveConfirm Observer
	Cluster        Cluster
	Store          Store

	ClientLimit       int           // client semaphore limit when the target does not say
	Stabilization     time.Duration // how long the confirm gate must hold
	ConfirmTimeout    time.Duration // deadline for the confirm (and for the rollback's confirm)
	Interval          time.Duration // gate sampling interval
	AcquireTimeout    time.Duration // how long one attempt waits for the lock; default 30s
	Recheck           time.Duration // how often a waiting node re-evaluates; default 2s
	AllowSingleServer bool

	// TestHooks enables the test-only pause hook (hook.go). The environment variable
	// UPGRADER_TEST_HOOKS=1 enables it too; production configurations never set either.
	TestHooks bool

	Logger hclog.Logger
	Clock  health.Clock
}

// Agent is the per-node upgrader.
type Agent struct {
	o      Options
	log    hclog.Logger
	clock  health.Clock
	status rollout.NodeStatus
	// written is the last status record that reached KV; report skips writes that would not change it.
	written rollout.NodeStatus
	staged  map[string]string // version -> staged path
	hooks   bool              // test-only pause hook enabled (hook.go)

	transferWait time.Duration // transferAttemptWait; shorter in unit tests
}

// ErrOptions prefixes invalid Options.
var ErrOptions = errors.New("agent: invalid options")

// New checks the options and returns an Agent.
func New(o Options) (*Agent, error) {
	switch {
	case o.Node == "":
		return nil, fmt.Errorf("%w: node name is empty", ErrOptions)
	case o.StateDir == "":
		return nil, fmt.Errorf("%w: state dir is empty", ErrOptions)
	case o.Fetcher == nil || o.Installer == nil || o.Restarter == nil || o.Locks == nil || o.Observe == nil || o.Cluster == nil || o.Store == nil:
		return nil, fmt.Errorf("%w: a component is missing", ErrOptions)
	case o.Stabilization < 0 || o.ConfirmTimeout <= o.Stabilization:
		return nil, fmt.Errorf("%w: confirm timeout %s must exceed the stabilization window %s", ErrOptions, o.ConfirmTimeout, o.Stabilization)
	}
	if o.Product == "" {
		o.Product = "consul"
	}
	if o.ObserveConfirm == nil {
		o.ObserveConfirm = o.Observe
	}
	if o.KVPrefix == "" {
		o.KVPrefix = "upgrader/"
	}
	if o.ClientLimit < 1 {
		o.ClientLimit = 1
	}
	if o.Interval <= 0 {
		o.Interval = 250 * time.Millisecond
	}
	if o.AcquireTimeout <= 0 {
		o.AcquireTimeout = 30 * time.Second
	}
	if o.Recheck <= 0 {
		o.Recheck = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = hclog.NewNullLogger()
	}
	if o.Clock == nil {
		o.Clock = health.SystemClock{}
	}
	role := rollout.RoleClient
	if o.Server {
		role = rollout.RoleServer
	}
	return &Agent{o: o, log: o.Logger.Named("agent"), clock: o.Clock,
		status: rollout.NodeStatus{Node: o.Node, Role: role, State: rollout.StateIdle},
		staged: map[string]string{}, hooks: o.TestHooks || os.Getenv(TestHooksEnv) == "1",
		transferWait: transferAttemptWait}, nil
}

// sleep waits d or until ctx ends.
func (a *Agent) sleep(ctx context.Context, d time.Duration) error {
	t := a.clock.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C():
		return nil
	}
}

// report moves the node's status record and writes it; a failed write is logged, never fatal: the
// record is for operators, and the local agent may be restarting right now.
func (a *Agent) report(ctx context.Context, state rollout.NodeState, step string, err error) {
	a.status = a.status.Transition(state, step, a.clock.Now())
	switch {
	case err != nil:
		a.status.LastError = err.Error()
	case state == rollout.StateDone || state == rollout.StateUpToDate || state == rollout.StateIdle:
		// A success (or no target at all) ends the story of an earlier error.
		a.status.LastError = ""
	}
	if a.status.SameAs(a.written) {
		return // nothing an operator would see changed: no log line, no KV write
	}
	level := hclog.Info
	if err != nil {
		level = hclog.Warn
	}
	args := []any{"state", state, "step", step}
	if err != nil {
		args = append(args, "error", err)
	}
	a.log.Log(level, "status", args...)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if werr := a.o.Store.PutNodeStatus(wctx, a.status); werr != nil {
		a.log.Debug("failed to write the status record", "error", werr)
		return
	}
	a.written = a.status
}

package agent

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/upgrader-dev/upgrader/internal/health"
	"github.com/upgrader-dev/upgrader/internal/rollout"
)

// Timeouts of the steps that are not health gates.
const (
	// restartTimeout bounds one restart of the local agent (stop with its kill timeout, then start).
	restartTimeout = 2 * time.Minute
	// transferTimeout bounds a leadership transfer: an election on a healthy cluster takes well under a
	// few seconds; after this the leader is restarted anyway, costing one election.
	transferTimeout = 30 * time.Second
	// releaseTimeout bounds giving the lock back.
	releaseTimeout = 30 * time.Second
)

// stage fetches, verifies and places the release next to the live binary; it is cached per version.
func (a *Agent) stage(ctx context.Context, version string) (string, error) {
	if p, ok := a.staged[version]; ok && fileExists(p) {
		return p, nil
	}
	if a.status.State != rollout.StateStaging {
		a.report(ctx, rollout.StateStaging, "fetching and verifying "+version, nil)
	}
	art, err := a.o.Fetcher.Fetch(ctx, a.o.Product, version, a.o.GOOS, a.o.GOARCH)
	if err != nil {
		return "", fmt.Errorf("failed to fetch %s %s: %w", a.o.Product, version, err)
	}
	p, err := a.o.Installer.Stage(art.BinaryPath, version)
	if err != nil {
		return "", fmt.Errorf("failed to stage %s %s: %w", a.o.Product, version, err)
	}
	a.staged[version] = p
	a.log.Info("staged", "version", version, "path", p, "sha256", art.ZipSHA256, "signed_by", art.SignedByKeyID)
	return p, nil
}

// upgrade runs this node's turn; it returns how soon the loop should look again.
func (a *Agent) upgrade(ctx context.Context, t rollout.Target, targetIndex uint64) time.Duration {
	staged, err := a.stage(ctx, t.Version)
	if err != nil {
		a.report(ctx, rollout.StateFailed, "staging failed: nothing was changed", err)
		return stagingRetry
	}

	// Pre-flight outside the lock: wait, don't fail, while the cluster cannot afford this node.
	obs, err := a.o.Observe(ctx)
	if err != nil {
		a.report(ctx, rollout.StateWaiting, "local agent not answering", err)
		return a.o.Recheck
	}
	if v := a.preflight(obs); !v.Pass {
		a.report(ctx, rollout.StateWaiting, "pre-flight: "+joinReasons(v.Reasons), nil)
		return a.o.Recheck
	}

	prefix, limit := a.lockSpec(t)
	lk, err := a.o.Locks(prefix, limit, "")
	if err != nil {
		a.report(ctx, rollout.StateWaiting, "lock", err)
		return a.o.Recheck
	}
	a.report(ctx, rollout.StateWaiting, "waiting for the lock", nil)
	actx, cancel := context.WithTimeout(ctx, a.o.AcquireTimeout)
	lost, err := lk.Acquire(actx)
	cancel()
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrNotAcquired) {
			a.report(ctx, rollout.StateWaiting, "lock not acquired", err)
		}
		return a.o.Recheck
	}
	a.status.Session = lk.SessionID()

	// Under the lock, everything is decided again from fresh reads (FAULTS F2): the target, the
	// control, the leader and the cluster's health may all have changed while we waited.
	base, proceed := a.recheckUnderLock(ctx, t)
	if !proceed {
		a.release(ctx, lk)
		return a.o.Recheck
	}

	ro, err := a.o.Store.StartRollout(ctx, t, targetIndex)
	if err != nil {
		a.log.Warn("failed to record the rollout", "error", err)
	}
	if a.o.Server {
		a.snapshotOnce(ctx, ro)
		if base.leader {
			a.transferLeadership(ctx)
		}
	}

	j := &Journal{
		Target: t.Version, From: base.from, Server: a.o.Server, Step: StepLocked,
		StagedPath: staged, SessionID: lk.SessionID(), LockPrefix: prefix, LockLimit: limit,
		Baseline: base.health, StartedAt: a.clock.Now(),
	}
	if err := saveJournal(a.o.StateDir, j, a.clock.Now()); err != nil {
		a.report(ctx, rollout.StateWaiting, "journal", err)
		a.release(ctx, lk)
		return a.o.Recheck
	}
	select {
	case <-lost:
		// The lock was lost before anything was touched: stop here, safely.
		a.report(ctx, rollout.StateWaiting, "lock lost before the swap; nothing was changed", errLockLost)
		_ = clearJournal(a.o.StateDir)
		a.release(ctx, lk)
		return a.o.Recheck
	default:
	}
	a.report(ctx, rollout.StateLocked, "swapping the binary", nil)
	a.finish(ctx, lk, lost, j, ro.ID)
	return a.o.Recheck
}

// finish swaps, restarts and confirms, or rolls back; it always ends with the lock released and the
// journal cleared. It is also the path a restarted upgrader resumes on.
func (a *Agent) finish(ctx context.Context, lk Lock, lost <-chan struct{}, j *Journal, rolloutID string) {
	if j.Step == StepLocked {
		j.Step = StepSwapped // recorded before the swap: after a crash, the live binary may be either
		if err := saveJournal(a.o.StateDir, j, a.clock.Now()); err != nil {
			a.report(ctx, rollout.StateFailed, "journal", err)
			a.release(ctx, lk)
			return
		}
		rb, err := a.o.Installer.Swap(j.StagedPath, j.From)
		if err != nil {
			// Swap is a rename: on error the live binary is still the old one.
			a.report(ctx, rollout.StateFailed, "swap failed: nothing was changed", err)
			_ = clearJournal(a.o.StateDir)
			a.release(ctx, lk)
			return
		}
		delete(a.staged, j.Target)
		j.RollbackPath = rb
		a.status.RollbackVersion = j.From
		_ = saveJournal(a.o.StateDir, j, a.clock.Now())
	}

	var cause error
	if j.Step == StepSwapped {
		a.report(ctx, rollout.StateRestarting, "restarting on "+j.Target, nil)
		rctx, cancel := context.WithTimeout(ctx, restartTimeout)
		cause = a.o.Restarter.Restart(rctx)
		cancel()
		if cause != nil {
			cause = fmt.Errorf("failed to restart the agent on %s: %w", j.Target, cause)
		} else {
			j.Step = StepConfirming
			_ = saveJournal(a.o.StateDir, j, a.clock.Now())
		}
	}
	if cause == nil && j.Step == StepConfirming {
		a.report(ctx, rollout.StateConfirming, fmt.Sprintf("holding the health gates for %s", a.o.Stabilization), nil)
		cause = a.confirm(ctx, j.Baseline)
	}
	if ctx.Err() != nil {
		// Shutting down mid-upgrade: leave the journal and the lock's session for the next start.
		return
	}
	if cause == nil && j.Step == StepConfirming {
		a.status.Version = j.Target
		a.report(ctx, rollout.StateDone, fmt.Sprintf("upgraded %s -> %s", j.From, j.Target), nil)
		a.recordOutcome(ctx, rolloutID, rollout.Outcome{State: rollout.StateDone, From: j.From, To: j.Target})
		_ = clearJournal(a.o.StateDir)
		if lostBefore(lost) {
			a.log.Warn("the lock was lost during confirmation; the node confirmed healthy anyway")
		}
		a.release(ctx, lk)
		return
	}
	if cause == nil {
		cause = fmt.Errorf("interrupted at step %s", j.Step)
	}
	a.rollback(ctx, lk, j, rolloutID, cause)
}

// rollback puts the previous binary back, restarts, waits for health on the old version, marks the node
// failed and halts the rollout, and only then releases the lock (FAULTS F3).
func (a *Agent) rollback(ctx context.Context, lk Lock, j *Journal, rolloutID string, cause error) {
	a.log.Error("upgrade failed; rolling back", "from", j.From, "to", j.Target, "error", cause)
	j.Step, j.Error = StepRollingBack, cause.Error()
	_ = saveJournal(a.o.StateDir, j, a.clock.Now())
	a.report(ctx, rollout.StateRollingBack, "restoring "+j.From, cause)

	// Halt first: nobody else may start while this node is unwell, whatever happens next.
	reason := fmt.Sprintf("%s failed to upgrade %s -> %s: %v", a.o.Node, j.From, j.Target, cause)
	if _, _, err := a.o.Store.Halt(ctx, a.o.Node, reason); err != nil {
		a.log.Error("failed to halt the rollout", "error", err)
	}

	var rbErr error
	if j.RollbackPath != "" {
		rbErr = a.o.Installer.Rollback(j.RollbackPath)
	}
	if rbErr == nil {
		rctx, cancel := context.WithTimeout(ctx, restartTimeout)
		rbErr = a.o.Restarter.Restart(rctx)
		cancel()
	}
	if rbErr == nil {
		base := j.Baseline
		base.TargetVersion = j.From
		rbErr = a.confirm(ctx, base)
	}
	failure := cause
	if rbErr != nil {
		failure = fmt.Errorf("%w; rollback to %s also failed: %w", cause, j.From, rbErr)
	}
	a.status.Version = j.From
	a.report(ctx, rollout.StateFailed, "rolled back to "+j.From+"; rollout halted", failure)
	a.recordOutcome(ctx, rolloutID, rollout.Outcome{State: rollout.StateFailed, From: j.From, To: j.Target, Error: failure.Error()})
	if ctx.Err() != nil {
		return
	}
	_ = clearJournal(a.o.StateDir)
	a.release(ctx, lk)
}

// baseline is what recheckUnderLock learned for the rest of the upgrade.
type baseline struct {
	health health.Baseline
	from   string
	leader bool
}

// recheckUnderLock re-reads the target, the control and the cluster under the lock.
func (a *Agent) recheckUnderLock(ctx context.Context, t rollout.Target) (baseline, bool) {
	cur, _, _, err := a.o.Store.ReadTarget(ctx)
	if err != nil || !cur.Equal(t) {
		a.report(ctx, rollout.StateWaiting, "target changed while waiting for the lock", err)
		return baseline{}, false
	}
	in, obs, err := a.gather(ctx, cur)
	if err != nil {
		a.report(ctx, rollout.StateWaiting, "re-check under the lock", err)
		return baseline{}, false
	}
	if plan := Decide(in); plan.Action != ActionUpgrade {
		a.report(ctx, rollout.StateWaiting, "under the lock: "+plan.Reason, nil)
		return baseline{}, false
	}
	if v := a.preflight(obs); !v.Pass {
		a.report(ctx, rollout.StateWaiting, "pre-flight under the lock: "+joinReasons(v.Reasons), nil)
		return baseline{}, false
	}
	b := baseline{from: in.LocalVersion, leader: in.IsLeader, health: health.Baseline{
		TargetVersion: t.Version, Node: a.o.Node, Servers: countServers(obs),
	}}
	if obs.Autopilot != nil {
		b.health.FailureTolerance = obs.Autopilot.FailureTolerance
	}
	return b, true
}

func (a *Agent) preflight(obs health.Observation) health.Verdict {
	return health.Preflight(obs, health.Policy{AllowSingleServer: a.o.AllowSingleServer})
}

// confirm holds the confirm gate for the stabilization window, under the confirm deadline.
func (a *Agent) confirm(ctx context.Context, base health.Baseline) error {
	gate := health.ClientConfirmGate(base)
	if a.o.Server {
		gate = health.ServerConfirmGate(base)
	}
	cctx, cancel := context.WithTimeout(ctx, a.o.ConfirmTimeout)
	defer cancel()
	rep, err := health.Confirm(cctx, health.ObserveFunc(a.o.ObserveConfirm), gate, a.o.Stabilization, a.o.Interval, a.clock,
		health.WithName("confirm "+base.TargetVersion), health.WithLogger(a.log))
	a.log.Info("confirmation", "version", base.TargetVersion, "passed", err == nil, "elapsed", rep.Elapsed,
		"samples", rep.Samples, "failed_samples", rep.Failed, "seen", rep.SeenReasons())
	return err
}

// transferLeadership moves raft leadership off this server before it stops; on failure the restart
// goes ahead anyway (the cluster is healthy with a failure tolerance >= 1) and costs one election.
func (a *Agent) transferLeadership(ctx context.Context) {
	a.report(ctx, rollout.StateLocked, "transferring leadership before the restart", nil)
	tctx, cancel := context.WithTimeout(ctx, transferTimeout)
	defer cancel()
	if err := a.o.Cluster.TransferLeader(tctx); err != nil {
		a.log.Warn("leadership transfer failed; restarting the leader anyway", "error", err)
		return
	}
	// Wait until every server agrees on a new leader that is not us.
	_, _, err := health.WaitUntil(tctx, health.ObserveFunc(a.o.Observe), func(obs health.Observation, _ time.Time) health.Verdict {
		return leaderMovedOff(obs, a.o.Node, health.Policy{AllowSingleServer: a.o.AllowSingleServer})
	}, a.o.Interval, health.WithName("leader transfer"), health.WithLogger(a.log), health.WithClock(a.clock))
	if err != nil {
		a.log.Warn("no new leader confirmed after the transfer; restarting anyway", "error", err)
	}
}

// leaderMovedOff passes once this server is no longer the leader in its own raft state nor in any
// server's answer, and the pre-flight gate holds for the new leader. Servers briefly keep naming the
// old leader after a transfer, so agreeing on "a leader" is not enough: it must not be us.
func leaderMovedOff(obs health.Observation, node string, policy health.Policy) health.Verdict {
	if obs.Local.Raft != nil && obs.Local.Raft.State == "Leader" {
		return health.Verdict{Reasons: []string{"this server is still the leader"}}
	}
	self := ""
	if obs.Raft != nil {
		for _, s := range obs.Raft.Servers {
			if s.Node == node {
				self = s.Address
			}
			if s.Leader && s.Node == node {
				return health.Verdict{Reasons: []string{"the raft configuration still names this server leader"}}
			}
		}
	}
	for _, sl := range obs.ServerLeaders {
		if self != "" && sl.Leader == self {
			return health.Verdict{Reasons: []string{sl.Node + " still names this server leader"}}
		}
	}
	if self != "" && obs.LocalLeader == self {
		return health.Verdict{Reasons: []string{"the local agent still names this server leader"}}
	}
	return health.Preflight(obs, policy)
}

// snapshotOnce saves a Consul snapshot before the first server of a rollout restarts (FAULTS F4).
func (a *Agent) snapshotOnce(ctx context.Context, ro rollout.Rollout) {
	if ro.ID == "" || ro.Snapshot != nil {
		return
	}
	path := filepath.Join(a.o.StateDir, "snapshots", ro.ID+".snap")
	if err := a.o.Cluster.Snapshot(ctx, path); err != nil {
		a.log.Warn("failed to save the pre-upgrade snapshot", "error", err)
		return
	}
	if _, err := a.o.Store.RecordSnapshot(ctx, ro.ID, rollout.Snapshot{Path: path, Node: a.o.Node}); err != nil {
		a.log.Warn("failed to record the snapshot", "error", err)
	}
	a.log.Info("saved pre-upgrade snapshot", "path", path)
}

func (a *Agent) recordOutcome(ctx context.Context, id string, o rollout.Outcome) {
	if id == "" {
		return
	}
	if _, err := a.o.Store.RecordOutcome(ctx, id, a.o.Node, o); err != nil {
		a.log.Warn("failed to record the outcome", "error", err)
	}
}

// release gives the lock back with its own deadline, so shutting down still releases it.
func (a *Agent) release(ctx context.Context, lk Lock) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), releaseTimeout)
	defer cancel()
	if err := lk.Release(rctx); err != nil {
		a.log.Warn("failed to release the lock; it frees itself when the session's TTL runs out", "error", err)
	}
}

// lockSpec is the semaphore for this node's role: one server at a time; clients as the target says.
func (a *Agent) lockSpec(t rollout.Target) (string, int) {
	if a.o.Server {
		return rollout.ServerLockPrefix(a.o.KVPrefix, a.o.Product), 1
	}
	limit := a.o.ClientLimit
	if t.ClientConcurrency > 0 {
		limit = t.ClientConcurrency
	}
	return rollout.ClientLockPrefix(a.o.KVPrefix, a.o.Product), limit
}

var errLockLost = errors.New("agent: the lock was lost")

func lostBefore(lost <-chan struct{}) bool {
	select {
	case <-lost:
		return true
	default:
		return false
	}
}

func countServers(obs health.Observation) int {
	if obs.Raft != nil {
		return len(obs.Raft.Servers)
	}
	n := 0
	for _, m := range obs.Members {
		if m.Role == "server" && m.Status == health.MemberAlive {
			n++
		}
	}
	return n
}

func joinReasons(r []string) string {
	if len(r) == 0 {
		return "not ready"
	}
	out := r[0]
	for _, s := range r[1:] {
		out += "; " + s
	}
	return out
}

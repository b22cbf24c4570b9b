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
	// snapshotTimeout bounds the pre-upgrade snapshot, taken while the lock is held: a stalled server
	// must not hold the whole rollout. Consul snapshots of ordinary clusters take seconds.
	snapshotTimeout = 5 * time.Minute
	// releaseTimeout bounds giving the lock back.
	releaseTimeout = 30 * time.Second
	// stillHeldTimeout bounds the consistent read that confirms the lock right before the swap.
	stillHeldTimeout = 30 * time.Second
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
	lost, err := a.acquire(ctx, lk)
	if err != nil {
		switch {
		case errors.Is(err, errStopped):
			a.report(ctx, rollout.StateBlocked, "stopped waiting for the lock", err)
		case ctx.Err() == nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, ErrNotAcquired):
			a.report(ctx, rollout.StateWaiting, "lock not acquired", err)
		}
		return a.o.Recheck
	}
	a.status.Session = lk.SessionID()

	// Journal the session at once: an upgrader that dies from here on finds it when it starts again and
	// gives the slot back at once, instead of blocking the rollout until the session's TTL runs out.
	j := &Journal{
		Target: t.Version, Server: a.o.Server, Step: StepLocked, StagedPath: staged,
		SessionID: lk.SessionID(), LockPrefix: prefix, LockLimit: limit, StartedAt: a.clock.Now(),
	}
	if err := saveJournal(a.o.StateDir, j, a.clock.Now()); err != nil {
		a.report(ctx, rollout.StateWaiting, "journal", err)
		a.release(ctx, lk)
		return a.o.Recheck
	}

	// Under the lock, everything is decided again from fresh reads (FAULTS F2): the target, the
	// control, the leader and the cluster's health may all have changed while we waited.
	base, proceed := a.recheckUnderLock(ctx, t)
	if !proceed {
		a.abandon(ctx, lk)
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

	j.From, j.Baseline = base.from, base.health
	if err := saveJournal(a.o.StateDir, j, a.clock.Now()); err != nil {
		a.report(ctx, rollout.StateWaiting, "journal", err)
		a.abandon(ctx, lk)
		return a.o.Recheck
	}
	a.report(ctx, rollout.StateLocked, "swapping the binary", nil)
	if a.pauseAt(ctx, StepLocked) != nil {
		return a.o.Recheck // shutting down: the journal says locked, so the next start gives the slot back
	}
	a.finish(ctx, lk, lost, j, ro.ID)
	return a.o.Recheck
}

// abandon ends an upgrade that never touched the binary: the journal goes, the lock is given back.
func (a *Agent) abandon(ctx context.Context, lk Lock) {
	if err := clearJournal(a.o.StateDir); err != nil {
		a.log.Warn("failed to clear the journal", "error", err)
	}
	a.release(ctx, lk)
}

// finish swaps, restarts and confirms, or rolls back; it ends with the lock released and the journal
// cleared, except when ctx ends first: then both are left for the next start (resume.go). It is also
// the path a restarted upgrader resumes on.
func (a *Agent) finish(ctx context.Context, lk Lock, lost <-chan struct{}, j *Journal, rolloutID string) {
	if j.Step == StepLocked {
		if !a.swap(ctx, lk, lost, j) {
			return
		}
		if a.pauseAt(ctx, StepSwapped) != nil {
			return
		}
	}

	var cause error
	if j.Step == StepSwapped {
		a.report(ctx, rollout.StateRestarting, "restarting on "+j.Target, nil)
		if lostBefore(lost) {
			// The lock went between the swap and now: the running agent is still the old one, so
			// putting the old binary back at the live path undoes everything without a restart.
			a.unswap(ctx, lk, j)
			return
		}
		rctx, cancel := context.WithTimeout(ctx, restartTimeout)
		cause = a.o.Restarter.Restart(rctx)
		cancel()
		if cause != nil {
			cause = fmt.Errorf("failed to restart the agent on %s: %w", j.Target, cause)
		} else {
			j.Step = StepConfirming
			a.saveJournalOrLog(j)
		}
	}
	if cause == nil && j.Step == StepConfirming {
		a.report(ctx, rollout.StateConfirming, fmt.Sprintf("holding the health gates for %s", a.o.Stabilization), nil)
		if a.pauseAt(ctx, StepConfirming) != nil {
			return
		}
		if lostBefore(lost) {
			// Too late to stop: this node has restarted. Confirming it is the safe way on; the next node
			// re-checks the cluster's health under the lock before it acts.
			a.log.Warn("the lock was lost after the restart; confirming this node anyway")
		}
		cause = a.confirm(ctx, j.Baseline)
	}
	if ctx.Err() != nil {
		// Shutting down mid-upgrade: leave the journal and the lock's session for the next start.
		a.log.Warn("shutting down mid-upgrade; the next start resumes from the journal", "step", j.Step)
		return
	}
	if cause == nil && j.Step == StepConfirming {
		a.status.Version, a.status.RollbackVersion = j.Target, ""
		a.report(ctx, rollout.StateDone, fmt.Sprintf("upgraded %s -> %s", j.From, j.Target), nil)
		a.recordOutcome(ctx, rolloutID, rollout.Outcome{State: rollout.StateDone, From: j.From, To: j.Target})
		if err := clearJournal(a.o.StateDir); err != nil {
			a.log.Warn("failed to clear the journal", "error", err)
		}
		a.release(ctx, lk)
		return
	}
	if cause == nil {
		cause = fmt.Errorf("interrupted at step %s", j.Step)
	}
	a.rollback(ctx, lk, lost, j, rolloutID, cause)
}

// swap checks, with a consistent read, that the lock is still ours, journals the swap and renames the
// staged binary over the live one. It returns false when the upgrade stops here (nothing was changed).
func (a *Agent) swap(ctx context.Context, lk Lock, lost <-chan struct{}, j *Journal) bool {
	if err := a.readyToGoDown(ctx); err != nil {
		if ctx.Err() != nil {
			return false // shutting down: the journal says locked, so the next start gives the slot back
		}
		a.report(ctx, rollout.StateWaiting, "not swapping: "+err.Error(), nil)
		a.abandon(ctx, lk)
		return false
	}
	if err := a.stillHeld(ctx, lk, lost); err != nil {
		if ctx.Err() != nil {
			return false // shutting down: the journal says locked, so the next start gives the slot back
		}
		// The lock was lost before anything was touched: stop here, safely (FAULTS F8).
		a.report(ctx, rollout.StateWaiting, "lock lost before the swap; nothing was changed", err)
		a.abandon(ctx, lk)
		return false
	}
	j.Step = StepSwapped // recorded before the swap: after a crash, the live binary may be either
	if err := saveJournal(a.o.StateDir, j, a.clock.Now()); err != nil {
		a.report(ctx, rollout.StateFailed, "journal", err)
		a.abandon(ctx, lk)
		return false
	}
	rb, err := a.o.Installer.Swap(j.StagedPath, j.From)
	if err != nil {
		// Swap checks before it renames, and the rename is atomic: the live binary is still the old one.
		a.report(ctx, rollout.StateFailed, "swap failed: nothing was changed", err)
		a.abandon(ctx, lk)
		return false
	}
	delete(a.staged, j.Target)
	j.RollbackPath = rb
	a.status.RollbackVersion = j.From
	a.saveJournalOrLog(j)
	return true
}

// readyToGoDown takes a fresh look just before the swap: the snapshot and a leadership transfer may
// have taken long, and the decision under the lock is stale by then. A server that is (again) the
// leader hands leadership over first; the pre-flight gate must pass on the sample taken afterwards.
func (a *Agent) readyToGoDown(ctx context.Context) error {
	obs, err := a.o.Observe(ctx)
	if err != nil {
		return fmt.Errorf("the local agent did not answer: %w", err)
	}
	if a.o.Server && obs.Local.Raft != nil && obs.Local.Raft.State == "Leader" {
		a.transferLeadership(ctx)
		if obs, err = a.o.Observe(ctx); err != nil {
			return fmt.Errorf("the local agent did not answer: %w", err)
		}
	}
	if v := a.preflight(obs); !v.Pass {
		return fmt.Errorf("pre-flight gate no longer passes: %s", joinReasons(v.Reasons))
	}
	return nil
}

// unswap undoes a swap whose restart never happened (the lock was lost in between): the rollback copy
// goes back to the live path, the journal is cleared and the lock given back.
func (a *Agent) unswap(ctx context.Context, lk Lock, j *Journal) {
	if err := a.o.Installer.Rollback(j.RollbackPath); err != nil {
		// The journal stays at "swapped": the next start resumes it under a re-taken lock.
		a.report(ctx, rollout.StateFailed, "lock lost after the swap and the old binary could not be put back", err)
		return
	}
	a.status.RollbackVersion = ""
	a.report(ctx, rollout.StateWaiting, "lock lost after the swap: old binary put back, nothing restarted", errLockLost)
	a.abandon(ctx, lk)
}

// stillHeld returns nil when the lock is ours: its lost channel is open and a consistent read names our
// session. An unknown answer counts as lost.
func (a *Agent) stillHeld(ctx context.Context, lk Lock, lost <-chan struct{}) error {
	if lostBefore(lost) {
		return errLockLost
	}
	hctx, cancel := context.WithTimeout(ctx, stillHeldTimeout)
	defer cancel()
	held, err := lk.StillHeld(hctx)
	switch {
	case err != nil:
		return fmt.Errorf("%w: failed to confirm the lock: %w", errLockLost, err)
	case !held:
		return fmt.Errorf("%w: the semaphore no longer names session %s", errLockLost, lk.SessionID())
	}
	return nil
}

// saveJournalOrLog saves the journal after a step that has already happened; a failure is logged (the
// previous journal entry still describes a state the resume path handles).
func (a *Agent) saveJournalOrLog(j *Journal) {
	if err := saveJournal(a.o.StateDir, j, a.clock.Now()); err != nil {
		a.log.Error("failed to update the journal", "step", j.Step, "error", err)
	}
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

// snapshotOnce saves a Consul snapshot before the first server of a rollout restarts (FAULTS F4).
func (a *Agent) snapshotOnce(ctx context.Context, ro rollout.Rollout) {
	if ro.ID == "" || ro.Snapshot != nil {
		return
	}
	path := filepath.Join(a.o.StateDir, "snapshots", ro.ID+".snap")
	sctx, cancel := context.WithTimeout(ctx, snapshotTimeout)
	defer cancel()
	if err := a.o.Cluster.Snapshot(sctx, path); err != nil {
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

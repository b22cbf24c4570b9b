package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/upgrader-dev/upgrader/internal/rollout"
)

const (
	// haltAttemptTimeout bounds the first attempt to halt the rollout, made before the rollback: a cluster
	// that cannot take the write now must not delay putting the old binary back.
	haltAttemptTimeout = 10 * time.Second
	// haltRetryMax caps the backoff between later attempts; the lock is kept until one succeeds.
	haltRetryMax = 30 * time.Second
	// versionProbeTimeout bounds how long the agent waits for its local agent to say which version it
	// runs before it decides whether a restart is needed (a resumed upgrade, a rollback).
	versionProbeTimeout = 30 * time.Second
)

// rollback puts the previous binary back, restarts the agent if it does not run that version already,
// waits for health on it, marks the node failed and halts the rollout, and only then releases the lock
// (FAULTS F3). The halt is written before the lock is released, however long that takes: a node whose
// upgrade failed keeps the lock (and so keeps every other node waiting) until the halt is on record.
// When ctx ends first the journal (step rolling-back) and the session are left for the next start.
func (a *Agent) rollback(ctx context.Context, lk Lock, lost <-chan struct{}, j *Journal, rolloutID string, cause error) {
	a.log.Error("upgrade failed; rolling back", "from", j.From, "to", j.Target, "error", cause)
	if j.RollbackPath == "" && j.From != "" {
		j.RollbackPath = a.o.Installer.RollbackPath(j.From)
	}
	j.Step, j.Error = StepRollingBack, cause.Error()
	a.saveJournalOrLog(j)
	a.report(ctx, rollout.StateRollingBack, "restoring "+j.From, cause)

	// Halt first: nobody else may start while this node is unwell, whatever happens next.
	reason := fmt.Sprintf("%s failed to upgrade %s -> %s: %v", a.o.Node, j.From, j.Target, cause)
	hctx, cancel := context.WithTimeout(ctx, haltAttemptTimeout)
	halted := a.halt(hctx, reason) == nil
	cancel()
	if a.pauseAt(ctx, StepRollingBack) != nil {
		return
	}

	if lostBefore(lost) {
		// The lock went while this node was unwell; the rollback's restart must not run without it. The
		// halt keeps every other node from taking it, so re-taking it does not wait on anybody healthy.
		a.log.Warn("the lock was lost before the rollback; re-taking it before restarting")
		nlk, nlost, err := a.reacquire(ctx, j)
		if err != nil {
			a.log.Warn("shutting down before the lock was re-taken; the next start resumes the rollback", "error", err)
			return
		}
		lk, lost = nlk, nlost
	}
	rbErr := a.restoreOld(ctx, j)
	if ctx.Err() != nil {
		a.log.Warn("shutting down mid-rollback; the next start resumes it from the journal")
		return
	}
	failure := cause
	if rbErr != nil {
		failure = fmt.Errorf("%w; rollback to %s also failed: %w", cause, j.From, rbErr)
	}
	a.status.Version, a.status.RollbackVersion = j.From, ""
	a.report(ctx, rollout.StateFailed, "rolled back to "+j.From+"; rollout halted", failure)
	a.recordOutcome(ctx, rolloutID, rollout.Outcome{State: rollout.StateFailed, From: j.From, To: j.Target, Error: failure.Error()})
	if !halted {
		if err := a.haltUntilWritten(ctx, reason); err != nil {
			a.log.Warn("shutting down before the halt was written; keeping the journal", "error", err)
			return
		}
	}
	if err := clearJournal(a.o.StateDir); err != nil {
		a.log.Warn("failed to clear the journal", "error", err)
	}
	a.release(ctx, lk)
}

// restoreOld puts the rollback copy back at the live path, restarts the agent unless it already runs
// the old version (a resumed rollback whose restart had happened), and confirms health on the old version.
func (a *Agent) restoreOld(ctx context.Context, j *Journal) error {
	if j.RollbackPath == "" {
		return errors.New("failed to restore the previous binary: no rollback copy is known")
	}
	if err := a.o.Installer.Rollback(j.RollbackPath); err != nil {
		return fmt.Errorf("failed to restore the previous binary: %w", err)
	}
	if v, ok := a.localVersion(ctx, 0); ok && sameVersion(v, j.From) {
		a.log.Info("the agent already runs the previous version; not restarting it", "version", v)
	} else {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		a.report(ctx, rollout.StateRollingBack, "restarting on "+j.From, nil)
		rctx, cancel := context.WithTimeout(ctx, restartTimeout)
		err := a.o.Restarter.Restart(rctx)
		cancel()
		if err != nil {
			return fmt.Errorf("failed to restart the agent on %s: %w", j.From, err)
		}
	}
	a.report(ctx, rollout.StateRollingBack, "confirming health on "+j.From, nil)
	base := j.Baseline
	base.TargetVersion = j.From
	return a.confirm(ctx, base)
}

// halt marks the rollout halted by this node (one attempt; the store retries transient errors within
// ctx).
func (a *Agent) halt(ctx context.Context, reason string) error {
	c, _, err := a.o.Store.Halt(ctx, a.o.Node, reason)
	if err != nil {
		a.log.Error("failed to halt the rollout", "error", err)
		return fmt.Errorf("failed to halt the rollout: %w", err)
	}
	a.log.Warn("rollout halted", "control", c.String())
	return nil
}

// haltUntilWritten retries halt with backoff (from Recheck up to haltRetryMax) until it succeeds or ctx
// ends.
func (a *Agent) haltUntilWritten(ctx context.Context, reason string) error {
	wait := a.o.Recheck
	for {
		hctx, cancel := context.WithTimeout(ctx, haltAttemptTimeout)
		err := a.halt(hctx, reason)
		cancel()
		if err == nil {
			return nil
		}
		a.report(ctx, rollout.StateFailed, "keeping the lock until the halt is written", err)
		if err := a.sleep(ctx, wait); err != nil {
			return err
		}
		wait = min(wait*2, haltRetryMax)
	}
}

// localVersion asks the local agent which version it runs. With wait > 0 it keeps asking until the
// agent answers or wait has passed (a just-started agent); ok is false when it never answered.
func (a *Agent) localVersion(ctx context.Context, wait time.Duration) (string, bool) {
	pctx, cancel := context.WithTimeout(ctx, max(wait, 5*time.Second))
	defer cancel()
	backoff := 250 * time.Millisecond
	for {
		obs, err := a.o.Observe(pctx)
		if err == nil && obs.Local.Version != "" {
			return obs.Local.Version, true
		}
		if wait <= 0 || a.sleep(pctx, backoff) != nil {
			return "", false
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

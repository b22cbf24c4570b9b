package agent

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/upgrader-dev/upgrader/internal/rollout"
)

// giveBackTimeout bounds the attempt to re-enter a journaled session only to release it (a crash before
// the swap). A session that still holds its slot re-enters at once; one that does not is left to expire.
const giveBackTimeout = 5 * time.Second

// resume ends whatever the journal says was in flight when the previous upgrader stopped (FAULTS F10,
// F14). It runs before the loop; the local agent is up by then (the exec restarter has adopted the
// running agent or started one from the live path).
//
//   - Before the swap (step locked, or swapped while the staged file is still there: the rename never
//     happened) nothing was changed: the journaled session is re-entered and released at once, so the
//     slot is free without waiting out the session's TTL, and the loop starts over from fresh reads.
//   - From the swap on, the node may run either binary: the lock is taken again (the journaled session
//     first, which still holds the slot if the crash was shorter than its TTL, else a new one, waiting as
//     long as it takes), then the upgrade is finished through the same code as a live one. The agent is
//     restarted only if it does not run the target yet (a crash after the restart, during it, or during
//     confirmation must not restart it twice), and a rollback restarts it only if it does not run the
//     previous version already.
func (a *Agent) resume(ctx context.Context) error {
	j, err := loadJournal(a.o.StateDir)
	if err != nil || j == nil {
		return err
	}
	a.log.Warn("found an upgrade in flight from a previous run", "step", j.Step, "from", j.From, "to", j.Target, "session", j.SessionID)
	a.status.Target = j.Target
	if j.From != "" {
		a.status.Version = j.From
	}

	if !swapMayHaveHappened(j, fileExists) {
		a.giveBack(ctx, j)
		return clearJournal(a.o.StateDir)
	}
	if j.RollbackPath == "" && j.From != "" {
		// The crash came between the rename and the journal write that records the rollback copy.
		if p := a.o.Installer.RollbackPath(j.From); fileExists(p) {
			j.RollbackPath = p
		}
	}

	lk, lost, err := a.reacquire(ctx, j)
	if err != nil {
		return err
	}
	a.status.Session = lk.SessionID()
	a.status.RollbackVersion = j.From
	ro, _ := a.currentRollout(ctx, j)
	if j.Step == StepRollingBack {
		a.rollback(ctx, lk, lost, j, ro, errors.New(j.Error))
		return nil
	}
	// Swapped or confirming: restart only if the agent does not run the target yet, then confirm.
	if v, ok := a.localVersion(ctx, versionProbeTimeout); ok && sameVersion(v, j.Target) {
		a.log.Info("the agent already runs the target; confirming without a restart", "version", v)
		j.Step = StepConfirming
	} else {
		a.log.Info("the agent does not run the target yet; restarting it", "version", v, "answered", ok)
		j.Step = StepSwapped
	}
	a.saveJournalOrLog(j)
	a.finish(ctx, lk, lost, j, ro)
	return nil
}

// swapMayHaveHappened reports whether the live binary may already be the new one. The journal records
// "swapped" before the rename, and the rename consumes the staged file, so a journal at "swapped" whose
// staged file still exists describes a swap that never happened. Pure apart from exists.
func swapMayHaveHappened(j *Journal, exists func(string) bool) bool {
	switch j.Step {
	case StepLocked, StepStaged:
		return false
	case StepSwapped:
		return j.StagedPath == "" || !exists(j.StagedPath)
	default:
		return true
	}
}

// giveBack releases a journaled session that may still hold its slot, after a crash before the swap.
func (a *Agent) giveBack(ctx context.Context, j *Journal) {
	if j.SessionID == "" || j.LockPrefix == "" {
		return
	}
	lk, err := a.o.Locks(j.LockPrefix, j.LockLimit, j.SessionID)
	if err != nil {
		a.log.Warn("failed to give back the journaled lock session; it expires with its TTL", "error", err)
		return
	}
	actx, cancel := context.WithTimeout(ctx, giveBackTimeout)
	_, err = lk.Acquire(actx)
	cancel()
	if err != nil {
		a.log.Info("the journaled lock session holds no slot any more; nothing to give back", "session", j.SessionID, "error", err)
		return
	}
	if lk.SessionID() == j.SessionID {
		a.log.Info("giving back the lock an interrupted upgrade held; nothing had been changed", "session", j.SessionID)
	} else {
		a.log.Info("the journaled session had expired; giving back the slot taken while looking for it", "session", lk.SessionID(), "journaled", j.SessionID)
	}
	a.release(ctx, lk)
}

// reacquire takes the lock again after a crash: with the journaled session if it still exists, else a
// new one, waiting as long as it takes (bounded by ctx), since this node is mid-upgrade.
func (a *Agent) reacquire(ctx context.Context, j *Journal) (Lock, <-chan struct{}, error) {
	for attempt := 0; ; attempt++ {
		session := j.SessionID
		if attempt > 0 {
			session = ""
		}
		lk, err := a.o.Locks(j.LockPrefix, j.LockLimit, session)
		if err == nil {
			a.report(ctx, rollout.StateWaiting, "re-taking the lock to finish an interrupted upgrade", nil)
			actx, cancel := context.WithTimeout(ctx, a.o.AcquireTimeout)
			var lost <-chan struct{}
			lost, err = lk.Acquire(actx)
			cancel()
			if err == nil {
				if lk.SessionID() != j.SessionID {
					a.log.Warn("the journaled session was gone; finishing the upgrade under a new one", "journaled", j.SessionID, "session", lk.SessionID())
				}
				j.SessionID = lk.SessionID()
				a.saveJournalOrLog(j)
				return lk, lost, nil
			}
		}
		a.log.Info("lock not re-taken yet", "error", err)
		if ctx.Err() != nil {
			return nil, nil, fmt.Errorf("failed to re-take the lock: %w", ctx.Err())
		}
		if err := a.sleep(ctx, a.o.Recheck); err != nil {
			return nil, nil, fmt.Errorf("failed to re-take the lock: %w", err)
		}
	}
}

// currentRollout returns the rollout ID the journal's upgrade belongs to, if it can be read.
func (a *Agent) currentRollout(ctx context.Context, j *Journal) (string, error) {
	t, _, idx, err := a.o.Store.ReadTarget(ctx)
	if err != nil || t.Version != j.Target {
		return "", err
	}
	ro, err := a.o.Store.StartRollout(ctx, t, idx)
	return ro.ID, err
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

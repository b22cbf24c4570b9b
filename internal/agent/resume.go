package agent

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/upgrader-dev/upgrader/internal/rollout"
)

// resume ends whatever the journal says was in flight when the previous upgrader stopped (FAULTS F10,
// F14). Before the swap nothing was changed, so the journal is dropped and the normal loop starts over.
// From the swap on, the node may be running either binary: the lock is taken again (the journaled
// session first, which still holds it if it has not expired) and the upgrade is finished or rolled back
// through the same code as a live one.
func (a *Agent) resume(ctx context.Context) error {
	j, err := loadJournal(a.o.StateDir)
	if err != nil || j == nil {
		return err
	}
	a.log.Warn("found an upgrade in flight from a previous run", "step", j.Step, "from", j.From, "to", j.Target)
	a.status.Target, a.status.Version = j.Target, j.From

	if j.Step == StepStaged || j.Step == StepLocked {
		// The live binary was never touched. Give back a lock the dead run may still hold.
		if j.SessionID != "" {
			if lk, err := a.o.Locks(j.LockPrefix, j.LockLimit, j.SessionID); err == nil {
				a.release(ctx, lk)
			}
		}
		return clearJournal(a.o.StateDir)
	}
	if j.Step == StepSwapped && fileExists(j.StagedPath) {
		// The crash came between recording the swap and doing it: the staged file was never renamed over
		// the live binary, so nothing changed. Drop the journal; the lock session expires or is released.
		if lk, err := a.o.Locks(j.LockPrefix, j.LockLimit, j.SessionID); err == nil {
			a.release(ctx, lk)
		}
		return clearJournal(a.o.StateDir)
	}

	lk, lost, err := a.reacquire(ctx, j)
	if err != nil {
		return err
	}
	a.status.Session = lk.SessionID()
	ro, _ := a.currentRollout(ctx, j)
	switch j.Step {
	case StepRollingBack:
		a.rollback(ctx, lk, j, ro, errors.New(j.Error))
	default:
		// Swapped or confirming: restart if the agent does not run the target yet, then confirm.
		if obs, err := a.o.Observe(ctx); err != nil || !sameVersion(obs.Local.Version, j.Target) {
			j.Step = StepSwapped
		} else {
			j.Step = StepConfirming
		}
		a.finish(ctx, lk, lost, j, ro)
	}
	return nil
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
				j.SessionID = lk.SessionID()
				return lk, lost, saveJournal(a.o.StateDir, j, a.clock.Now())
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

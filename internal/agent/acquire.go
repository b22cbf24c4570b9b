package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
)

// errStopped means the rollout was paused or halted while this node waited for the lock.
var errStopped = errors.New("agent: the rollout stopped")

// acquire takes lk within AcquireTimeout. While it waits it watches the rollout control, and gives up as
// soon as the control no longer allows a start (paused or halted): a node that failed halts the rollout
// before it releases the lock, so the nodes waiting behind it see the halt and stop before they could
// take the lock (FAULTS F3), rather than taking it and giving it back. recheckUnderLock reads the control
// again under the lock for the case where both happen at the same moment.
func (a *Agent) acquire(ctx context.Context, lk Lock) (<-chan struct{}, error) {
	actx, cancel := context.WithTimeout(ctx, a.o.AcquireTimeout)
	defer cancel()
	var (
		wg      sync.WaitGroup
		stopped error
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := a.watchStopped(actx); err != nil {
			stopped = err
			cancel()
		}
	}()
	lost, err := lk.Acquire(actx)
	cancel()
	wg.Wait()
	if err != nil && stopped != nil {
		return nil, fmt.Errorf("%w: %w", stopped, err)
	}
	return lost, err
}

// watchStopped blocks until the control stops allowing a start (returning errStopped naming it) or ctx
// ends (returning nil). An unreadable control is not a stop: the recheck under the lock reads it again.
func (a *Agent) watchStopped(ctx context.Context) error {
	var index uint64
	for {
		c, next, err := a.o.Store.WatchControl(ctx, index)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			a.log.Debug("failed to watch the rollout control while waiting for the lock", "error", err)
			if a.sleep(ctx, a.o.Recheck) != nil {
				return nil
			}
			index = next
			continue
		}
		if !c.AllowsStart() {
			return fmt.Errorf("%w: %s", errStopped, c)
		}
		index = next
	}
}

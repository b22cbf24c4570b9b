package fleet

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/upgrader-dev/upgrader/internal/rollout"
)

// WaitRolledOut waits until every managed node runs version and its status record says done or
// up-to-date; it fails early when a node reports failed. progress (may be nil) gets one line whenever a
// node's state changes.
func (f *Fleet) WaitRolledOut(ctx context.Context, store *rollout.Store, version string, progress func(string, ...any)) error {
	seen := map[string]string{}
	for {
		done := true
		for _, n := range f.Managed() {
			s, found, err := store.GetNodeStatus(ctx, n.Name)
			if err != nil || !found {
				done = false
				continue
			}
			line := fmt.Sprintf("%s %s %s", s.State, s.Version, s.Step)
			if progress != nil && seen[n.Name] != line {
				progress("%-3s %-12s %-8s %s", n.Name, s.State, s.Version, s.Step)
				seen[n.Name] = line
			}
			if s.State == rollout.StateFailed && s.Target == version {
				return fmt.Errorf("fleet: %s failed: %s", n.Name, s.LastError)
			}
			if s.State != rollout.StateDone && s.State != rollout.StateUpToDate {
				done = false
				continue
			}
			v, err := n.Version(ctx)
			if err != nil || strings.TrimSpace(v) != version {
				done = false
			}
		}
		if done {
			return nil
		}
		if err := sleepCtx(ctx, 200*time.Millisecond); err != nil {
			return fmt.Errorf("fleet: rollout to %s not finished: %w", version, err)
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

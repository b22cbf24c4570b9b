package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/upgrader-dev/upgrader/internal/health"
	"github.com/upgrader-dev/upgrader/internal/rollout"
)

// Run watches the target and upgrades this node when it should, until ctx ends. It first finishes or
// rolls back whatever its journal says was in flight when the previous upgrader stopped.
func (a *Agent) Run(ctx context.Context) error {
	a.restoreStatus(ctx)
	if err := a.resume(ctx); err != nil {
		return err
	}
	var (
		index   uint64
		recheck time.Duration // zero: block on the target key until it changes
	)
	for ctx.Err() == nil {
		var (
			t   rollout.Target
			idx uint64
			err error
		)
		t, idx, err = a.nextTarget(ctx, index, recheck)
		if ctx.Err() != nil {
			break
		}
		var terr *rollout.TargetError
		switch {
		case errors.As(err, &terr):
			index = terr.Index
			if errors.Is(err, rollout.ErrNoTarget) {
				a.report(ctx, rollout.StateIdle, "no target set", nil)
			} else {
				a.report(ctx, rollout.StateInvalidTarget, "target ignored", err)
			}
			recheck = 0
			continue
		case errors.Is(err, rollout.ErrPermissionDenied):
			return fmt.Errorf("failed to read the target: %w", err)
		case err != nil:
			a.log.Warn("failed to read the target; retrying", "error", err)
			recheck = a.o.Recheck
			continue
		}
		index = idx
		recheck = a.reconcile(ctx, t, idx)
	}
	return nil
}

// restoreStatus starts from this node's last status record, so a restarted upgrader keeps what it
// reported (a failure above all) instead of starting over as idle. Best effort.
func (a *Agent) restoreStatus(ctx context.Context) {
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	s, found, err := a.o.Store.GetNodeStatus(rctx, a.o.Node)
	if err != nil || !found || s.Node != a.o.Node {
		return
	}
	s.Role = a.status.Role
	a.status = s
}

// nextTarget returns the target once it changes after index, or after wait (zero: only on a change), so
// a waiting node re-evaluates on time and still reacts to a new target at once.
func (a *Agent) nextTarget(ctx context.Context, index uint64, wait time.Duration) (rollout.Target, uint64, error) {
	if wait <= 0 {
		t, _, idx, err := a.o.Store.WatchTarget(ctx, index)
		return t, idx, err
	}
	wctx, cancel := context.WithTimeout(ctx, wait)
	t, _, idx, err := a.o.Store.WatchTarget(wctx, index)
	cancel()
	if wctx.Err() != nil && ctx.Err() == nil {
		// No change within wait: read it once more for the periodic re-evaluation.
		t, _, idx, err = a.o.Store.ReadTarget(ctx)
	}
	return t, idx, err
}

// reconcile does what the plan for target t says and returns how soon to look again (zero: when the
// target changes).
func (a *Agent) reconcile(ctx context.Context, t rollout.Target, targetIndex uint64) time.Duration {
	in, _, err := a.gather(ctx, t)
	if err != nil {
		if a.failedFor(t) {
			a.log.Warn("failed to observe the cluster; keeping this node's failure on record", "error", err)
			return a.o.Recheck
		}
		a.report(ctx, rollout.StateWaiting, "local agent not answering", err)
		return a.o.Recheck
	}
	failed := a.failedFor(t)
	a.status.Version, a.status.Target = in.LocalVersion, t.Version
	plan := Decide(in)
	switch plan.Action {
	case ActionIdle:
		a.report(ctx, rollout.StateIdle, plan.Reason, nil)
		return 0
	case ActionInvalid:
		a.report(ctx, rollout.StateInvalidTarget, plan.Reason, nil)
		return 0
	case ActionUpToDate:
		if a.status.State != rollout.StateDone {
			a.report(ctx, rollout.StateUpToDate, plan.Reason, nil)
		}
		a.finishIfComplete(ctx, t)
		return 0
	case ActionRefuse:
		a.report(ctx, rollout.StateBlocked, plan.Reason, nil)
		return 0
	case ActionBlocked:
		if failed {
			// This node's failure is what the halt is about: keep it on record as failed, not blocked.
			return a.o.Recheck
		}
		a.report(ctx, rollout.StateBlocked, plan.Reason, nil)
		return a.o.Recheck
	case ActionWaitServer, ActionWaitLeader:
		// Stage while waiting, so the node's turn costs only the restart.
		if _, err := a.stage(ctx, t.Version); err != nil {
			a.report(ctx, rollout.StateFailed, "staging failed: nothing was changed", err)
			return stagingRetry
		}
		a.report(ctx, rollout.StateWaiting, plan.Reason, nil)
		return a.o.Recheck
	case ActionUpgrade:
		return a.upgrade(ctx, t, targetIndex)
	}
	return a.o.Recheck
}

// failedFor reports whether this node's record says it failed to upgrade to t. That record stays while
// the halt it caused blocks the rollout, so operators see which node failed and why.
func (a *Agent) failedFor(t rollout.Target) bool {
	return a.status.State == rollout.StateFailed && a.status.Target == t.Version
}

// finishIfComplete closes the current rollout of t (archiving it to history) once every node with a
// status record reports t's version as done or up to date. Any node may do it; FinishRollout is
// idempotent and CAS-guarded.
func (a *Agent) finishIfComplete(ctx context.Context, t rollout.Target) {
	ro, err := a.o.Store.ReadRollout(ctx)
	if err != nil || ro.Finished() || ro.Target.Version != t.Version {
		return
	}
	statuses, err := a.o.Store.ListNodeStatus(ctx)
	if err != nil || !RolloutComplete(t.Version, statuses) {
		return
	}
	if _, err := a.o.Store.FinishRollout(ctx, ro.ID); err != nil {
		a.log.Warn("failed to close the rollout record", "rollout", ro.ID, "error", err)
		return
	}
	a.log.Info("rollout complete: every node runs the target", "rollout", ro.ID, "nodes", len(statuses))
}

// RolloutComplete reports whether every status record says the node runs version, done or up to date.
// Pure.
func RolloutComplete(version string, statuses []rollout.NodeStatus) bool {
	if len(statuses) == 0 {
		return false
	}
	for _, s := range statuses {
		if !sameVersion(s.Version, version) || (s.State != rollout.StateDone && s.State != rollout.StateUpToDate) {
			return false
		}
	}
	return true
}

// stagingRetry is how long a node waits before retrying a release that could not be staged (missing in
// the mirror, bad signature): long enough not to hammer the release site, short enough that a fixed
// mirror is picked up without a restart.
const stagingRetry = 30 * time.Second

// gather reads everything Decide needs: the rollout control and one health observation.
func (a *Agent) gather(ctx context.Context, t rollout.Target) (Inputs, health.Observation, error) {
	obs, err := a.o.Observe(ctx)
	if err != nil {
		return Inputs{}, obs, err
	}
	ctl, _, err := a.o.Store.ReadControl(ctx)
	if err != nil {
		return Inputs{}, obs, fmt.Errorf("failed to read the rollout control: %w", err)
	}
	in := Inputs{
		Target:         t.Version,
		AllowDowngrade: t.AllowDowngrade,
		Control:        string(ctl.State),
		ControlReason:  ctl.Reason,
		Node:           a.o.Node,
		Server:         obs.Local.Server,
		LocalVersion:   obs.Local.Version,
		IsLeader:       obs.Local.Raft != nil && obs.Local.Raft.State == "Leader",
		Members:        obs.Members,
	}
	if !in.Server && in.Target != "" && len(pendingServers(in.Members, in.Target, in.Node)) == 0 {
		busy, err := a.o.Cluster.ServersUpgrading(ctx)
		if err != nil {
			return Inputs{}, obs, fmt.Errorf("failed to read the server lock: %w", err)
		}
		in.ServersBusy = busy
	}
	return in, obs, nil
}

package agent

import (
	"context"
	"sort"
	"time"

	"github.com/upgrader-dev/upgrader/internal/health"
	"github.com/upgrader-dev/upgrader/internal/rollout"
)

const (
	// transferTimeout bounds a leadership transfer: an election on a healthy cluster takes well under a
	// few seconds; after this the leader is restarted anyway, costing one election.
	transferTimeout = 30 * time.Second
	// transferAttemptWait is how long one transfer attempt waits for the leadership to move before it
	// asks again. Raft aborts a transfer whose target does not win in time (seen on 1.16: a target that
	// restarted seconds before is one entry behind, its election fails and the old leader is re-elected),
	// and it does not try another target by itself.
	transferAttemptWait = 8 * time.Second
)

// transferLeadership moves raft leadership off this server before it stops, asking again while the
// leadership has not moved, within transferTimeout. On failure the restart goes ahead anyway (the
// cluster is healthy with a failure tolerance >= 1) and costs one election.
func (a *Agent) transferLeadership(ctx context.Context) {
	a.report(ctx, rollout.StateLocked, "transferring leadership before the restart", nil)
	tctx, cancel := context.WithTimeout(ctx, transferTimeout)
	defer cancel()
	moved := func(obs health.Observation, _ time.Time) health.Verdict {
		return leaderMovedOff(obs, a.o.Node, health.Policy{AllowSingleServer: a.o.AllowSingleServer})
	}
	targets := a.transferTargets(tctx)
	for attempt := 1; ; attempt++ {
		target := ""
		if len(targets) > 0 {
			target = targets[(attempt-1)%len(targets)].id
		}
		if err := a.o.Cluster.TransferLeader(tctx, target); err != nil {
			a.log.Warn("leadership transfer failed", "attempt", attempt, "target", target, "error", err)
		}
		// Wait until every server agrees on a new leader that is not us (also when the call failed:
		// the leadership may have moved anyway).
		wctx, wcancel := context.WithTimeout(tctx, a.transferWait)
		_, _, err := health.WaitUntil(wctx, health.ObserveFunc(a.o.Observe), moved, a.o.Interval,
			health.WithName("leader transfer"), health.WithLogger(a.log), health.WithClock(a.clock))
		wcancel()
		if err == nil {
			a.log.Info("leadership moved off this server", "attempts", attempt)
			return
		}
		if tctx.Err() != nil {
			a.log.Warn("no new leader confirmed after the transfer; restarting anyway", "attempts", attempt, "error", err)
			return
		}
		a.log.Info("leadership has not moved; asking again", "attempt", attempt, "error", err)
	}
}

// transferTarget is a voter leadership may be handed to.
type transferTarget struct {
	id, node string
	since    time.Time // when its upgrade was confirmed (zero: not upgraded in this rollout)
}

// transferTargets lists the other voters in the order to try them: servers upgraded longest ago first.
// Raft's own choice, the most up-to-date follower, is often the server restarted seconds before; seen on
// 1.16, its election then fails and the old leader is re-elected after a leaderless second or two.
func (a *Agent) transferTargets(ctx context.Context) []transferTarget {
	obs, err := a.o.Observe(ctx)
	if err != nil || obs.Raft == nil {
		return nil
	}
	statuses, err := a.o.Store.ListNodeStatus(ctx)
	if err != nil {
		statuses = nil
	}
	return orderTransferTargets(obs.Raft.Servers, statuses, a.o.Node)
}

// orderTransferTargets is transferTargets' pure part: voters other than self, those whose upgrade was
// confirmed earliest first, then the rest by name. Pure.
func orderTransferTargets(servers []health.RaftServer, statuses []rollout.NodeStatus, self string) []transferTarget {
	done := map[string]time.Time{}
	for _, s := range statuses {
		if s.State == rollout.StateDone {
			done[s.Node] = s.Since
		}
	}
	var out []transferTarget
	for _, srv := range servers {
		if !srv.Voter || srv.Node == self || srv.ID == "" {
			continue
		}
		out = append(out, transferTarget{id: srv.ID, node: srv.Node, since: done[srv.Node]})
	}
	sort.SliceStable(out, func(i, j int) bool {
		ti, tj := out[i].since, out[j].since
		switch {
		case ti.IsZero() != tj.IsZero():
			return !ti.IsZero()
		case !ti.Equal(tj):
			return ti.Before(tj)
		}
		return out[i].node < out[j].node
	})
	return out
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

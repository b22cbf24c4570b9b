package agent

import (
	"context"
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
	for attempt := 1; ; attempt++ {
		if err := a.o.Cluster.TransferLeader(tctx); err != nil {
			a.log.Warn("leadership transfer failed", "attempt", attempt, "error", err)
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

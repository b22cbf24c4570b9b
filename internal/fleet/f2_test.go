package fleet

import (
	"context"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"

	"github.com/upgrader-dev/upgrader/internal/rollout"
)

// TestF2_LeaderChangesMidRollout moves raft leadership, in the middle of a rollout, onto a server that
// has not been upgraded yet. "Upgrade the leader last" decided once at the start would now restart the
// leader early; the upgrader decides at every step, so the new leader defers, goes last, and hands
// leadership over before it stops. Measured from outside by the monitor.
func TestF2_LeaderChangesMidRollout(t *testing.T) {
	ctx := e2e(t, 8*time.Minute)
	f, err := Start(ctx, t, Options{Block: 46, Servers: 3, Clients: 1, Unmanaged: []string{"c1"}})
	if err != nil {
		t.Fatal(err)
	}
	mon := NewMonitor(f.Cluster, f.Cluster.Node("c1"), rollout.ServerLockPrefix(rollout.DefaultPrefix, "consul")+".lock")
	mctx, stopMon := context.WithCancel(ctx)
	monDone := make(chan struct{})
	go func() { mon.Run(mctx); close(monDone) }()
	defer func() { stopMon(); <-monDone }()

	store, err := f.Store("c1")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := store.SetTarget(ctx, rollout.Target{Version: "1.16.1"}); err != nil {
		t.Fatal(err)
	}

	// While the first server is in its confirm window (back up on 1.16.1 as a follower in contact with
	// the leader, so the cluster has all three), move leadership onto the follower that is still waiting
	// for the lock on 1.16.0. That server must now defer and go last.
	var moved string
	for moved == "" {
		if err := sleepCtx(ctx, 100*time.Millisecond); err != nil {
			t.Fatal("never found the moment to move leadership:", err)
		}
		leader, err := f.Cluster.Leader(ctx)
		if err != nil {
			continue
		}
		var confirming, waiting string
		for _, n := range f.Cluster.Servers() {
			st, _, _ := store.GetNodeStatus(ctx, n.Name)
			switch {
			case st.State == rollout.StateConfirming:
				confirming = n.Name
			case n.Name != leader.Name && (st.State == rollout.StateWaiting || st.State == rollout.StateStaged):
				waiting = n.Name
			}
		}
		if confirming == "" || waiting == "" {
			continue
		}
		if v, err := f.Cluster.Node(confirming).Version(ctx); err != nil || v != "1.16.1" {
			continue
		}
		stats, err := f.Cluster.Node(confirming).RaftStats(ctx)
		if err != nil || stats["state"] != "Follower" || stats["last_contact"] == "never" {
			continue
		}
		cfg, err := leader.API().Operator().RaftGetConfiguration(nil)
		if err != nil {
			continue
		}
		for _, srv := range cfg.Servers {
			if srv.Node != waiting {
				continue
			}
			if _, err := leader.API().Operator().RaftLeaderTransfer(srv.ID, (&api.QueryOptions{}).WithContext(ctx)); err != nil {
				t.Logf("transfer to %s: %v (retrying)", srv.Node, err)
				break
			}
			// A transfer can end in another election (raft aborts it when the target does not win in
			// time); only a move that sticks sets up the scenario. Otherwise try again.
			if !leaderSettlesOn(ctx, f, srv.Node, 5*time.Second) {
				t.Logf("transfer to %s did not stick; retrying", srv.Node)
				break
			}
			moved = srv.Node
			t.Logf("moved leadership %s -> %s while %s was confirming (%s into the rollout)", leader.Name, srv.Node, confirming, time.Since(start).Round(time.Millisecond))
		}
	}

	if err := f.WaitRolledOut(ctx, store, "1.16.1", t.Logf); err != nil {
		t.Fatal(err)
	}
	t.Logf("rollout wall time: %s", time.Since(start).Round(time.Millisecond))
	stopMon()
	<-monDone
	rep := mon.Report(start, time.Time{})
	t.Logf("monitor: %s", rep)
	if rep.MaxServersImpaired > 1 {
		t.Errorf("two or more servers were down or non-voting at once (max %d)", rep.MaxServersImpaired)
	}
	if len(rep.StopOrder) != 3 {
		t.Errorf("expected exactly one restart per server, saw %v", rep.StopOrder)
	}
	for name, leaders := range rep.LeaderAtStop {
		for _, l := range leaders {
			if l == name {
				t.Errorf("server %s was the leader when it stopped", name)
			}
		}
	}
	if n := len(rep.StopOrder); n > 0 && rep.StopOrder[n-1] != moved {
		t.Errorf("the server made leader mid-rollout (%s) should have gone last; order %v", moved, rep.StopOrder)
	}
}

// leaderSettlesOn waits up to d until every server agrees that node leads.
func leaderSettlesOn(ctx context.Context, f *Fleet, node string, d time.Duration) bool {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for {
		if l, err := f.Cluster.Leader(wctx); err == nil && l.Name == node {
			return true
		}
		if sleepCtx(wctx, 100*time.Millisecond) != nil {
			return false
		}
	}
}

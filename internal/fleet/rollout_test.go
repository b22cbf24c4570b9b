package fleet

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"

	"github.com/upgrader-dev/upgrader/internal/mirror"
	"github.com/upgrader-dev/upgrader/internal/rollout"
	"github.com/upgrader-dev/upgrader/internal/testbin"
	"github.com/upgrader-dev/upgrader/internal/testcluster"
)

// Address blocks of this package's tests: 127.0.30.x and up.

// TestRollout_ServersThenClients is the product's main job on real Consul: 3 servers + 2 managed clients
// upgrade 1.16.0 -> 1.16.1 because a target was written to KV, while a monitor measures from outside that
// no two servers were ever impaired at once, the leader went last (or handed leadership over first), the
// lock stayed held across each holder's restart, and writes through an unrestarted client kept working.
func TestRollout_ServersThenClients(t *testing.T) {
	ctx := e2e(t, 10*time.Minute)

	f, err := Start(ctx, t, Options{Block: 30, Servers: 3, Clients: 3, Unmanaged: []string{"c3"}})
	if err != nil {
		t.Fatal(err)
	}
	mon := NewMonitor(f.Cluster, f.Cluster.Node("c3"), rollout.ServerLockPrefix(rollout.DefaultPrefix, "consul")+".lock")
	mon.WatchClients([]*testcluster.Node{f.Cluster.Node("c1"), f.Cluster.Node("c2")}, rollout.ClientLockPrefix(rollout.DefaultPrefix, "consul")+".lock")
	mctx, stopMon := context.WithCancel(ctx)
	monDone := make(chan struct{})
	go func() { mon.Run(mctx); close(monDone) }()
	defer func() { stopMon(); <-monDone }()

	store, err := f.Store("c3")
	if err != nil {
		t.Fatal(err)
	}
	// A quiet baseline first: what the same writes see on this machine with nothing being upgraded.
	quiet := time.Now()
	if err := sleepCtx(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := store.SetTarget(ctx, rollout.Target{Version: "1.16.1", ClientConcurrency: 1, SetBy: "test"}); err != nil {
		t.Fatal(err)
	}
	if err := f.WaitRolledOut(ctx, store, "1.16.1", t.Logf); err != nil {
		t.Fatal(err)
	}
	wall := time.Since(start)
	// Keep measuring a moment after the last node so a late disturbance is seen too.
	if err := sleepCtx(ctx, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	stopMon()
	<-monDone
	rep := mon.Report(start, time.Time{})
	t.Logf("rollout wall time: %s", wall.Round(time.Millisecond))
	t.Logf("monitor during the rollout: %s", rep)
	t.Logf("monitor baseline (5s, no rollout): %s", mon.Report(quiet, start))

	if rep.MaxServersImpaired > 1 {
		t.Errorf("two or more servers were down or non-voting at once (max %d)", rep.MaxServersImpaired)
	}
	if len(rep.StopOrder) < 3 {
		t.Errorf("expected to see every server restart, saw %v", rep.StopOrder)
	}
	for name, leaders := range rep.LeaderAtStop {
		for _, l := range leaders {
			if l == name {
				t.Errorf("server %s was the leader when it stopped: leadership was not transferred first", name)
			}
		}
	}
	// One election on this tuned cluster takes well under a second; 5s would mean the cluster was
	// leaderless across more than one election.
	if rep.LongestLeaderless > 5*time.Second {
		t.Errorf("cluster had no agreed leader for %s", rep.LongestLeaderless)
	}
	if rep.LockGaps > 0 {
		t.Errorf("the server lock named no holder in %d samples taken while a server was down", rep.LockGaps)
	}
	if rep.ClientDowns == 0 {
		t.Errorf("the monitor never saw a client restart")
	}
	if rep.ClientLockGaps > 0 {
		t.Errorf("the client lock named no holder in %d samples taken while a client was down", rep.ClientLockGaps)
	}
	// The rollout record is closed and archived once every node reports the target.
	var ro rollout.Rollout
	for ro, err = store.ReadRollout(ctx); err != nil || !ro.Finished(); ro, err = store.ReadRollout(ctx) {
		if serr := sleepCtx(ctx, 250*time.Millisecond); serr != nil {
			t.Fatalf("rollout record never finished: %+v %v", ro, err)
		}
	}
	history, err := store.ListHistory(ctx)
	if err != nil || len(history) == 0 || history[len(history)-1].ID != ro.ID {
		t.Errorf("finished rollout %s not in history (%d entries, %v)", ro.ID, len(history), err)
	}
	if ro.Snapshot == nil || ro.Snapshot.Path == "" {
		t.Errorf("rollout record names no pre-upgrade snapshot: %+v", ro)
	}
	t.Logf("rollout record %s: started %s, finished %s, snapshot %v, outcomes %d", ro.ID, ro.StartedAt.Format(time.TimeOnly),
		ro.FinishedAt.Format(time.TimeOnly), ro.Snapshot, len(ro.Outcomes))
	statuses, err := store.ListNodeStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var tbl strings.Builder
	_ = rollout.FormatStatusTable(&tbl, statuses, rollout.Control{}, rollout.Target{Version: "1.16.1"}, time.Now())
	t.Logf("final status:\n%s", tbl.String())
}

// TestRollout_BadReleaseChangesNothing: a target missing from the mirror, then a release signed by a key
// nobody pinned, change nothing on any node, take no lock, and say why in every node's status record.
func TestRollout_BadReleaseChangesNothing(t *testing.T) {
	ctx := e2e(t, 6*time.Minute)
	f, err := Start(ctx, t, Options{Block: 31, Servers: 3})
	if err != nil {
		t.Fatal(err)
	}
	store, err := f.Store("s1")
	if err != nil {
		t.Fatal(err)
	}

	// 1. A version the mirror does not have.
	if _, err := store.SetTarget(ctx, rollout.Target{Version: "1.16.9"}); err != nil {
		t.Fatal(err)
	}
	f.waitAllStatus(ctx, t, func(s rollout.NodeStatus) bool {
		return s.Target == "1.16.9" && s.State == rollout.StateFailed && strings.Contains(s.LastError, "not found")
	})

	// 2. 1.16.1 re-signed by a key that is not pinned.
	rogue, err := mirror.GenerateKey("rogue", time.Now(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	bin, _ := testbin.Path("1.16.1")
	if err := mirror.Build(f.MirrorRoot, f.Mirror.URL(), "consul", map[string]string{"1.16.1": bin}, []*openpgp.Entity{rogue}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.SetTarget(ctx, rollout.Target{Version: "1.16.1"}); err != nil {
		t.Fatal(err)
	}
	f.waitAllStatus(ctx, t, func(s rollout.NodeStatus) bool {
		return s.Target == "1.16.1" && s.State == rollout.StateFailed && strings.Contains(strings.ToLower(s.LastError), "key")
	})

	for _, n := range f.Managed() {
		v, err := n.Version(ctx)
		if err != nil || v != "1.16.0" {
			t.Errorf("%s runs %q (%v); a bad release must change nothing", n.Name, v, err)
		}
		s, _, _ := store.GetNodeStatus(ctx, n.Name)
		t.Logf("%s: state=%s error=%s", n.Name, s.State, s.LastError)
	}
	pairs, _, err := f.Cluster.Node("s1").API().KV().List(rollout.ServerLockPrefix(rollout.DefaultPrefix, "consul"), nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pairs {
		if p.Session != "" {
			t.Errorf("lock key %s is held by session %s although nothing may start", p.Key, p.Session)
		}
	}
}

// waitAllStatus waits until every managed node's status record satisfies ok.
func (f *Fleet) waitAllStatus(ctx context.Context, t *testing.T, ok func(rollout.NodeStatus) bool) {
	t.Helper()
	store, err := f.Store(f.Managed()[0].Name)
	if err != nil {
		t.Fatal(err)
	}
	for {
		all := true
		for _, n := range f.Managed() {
			s, found, err := store.GetNodeStatus(ctx, n.Name)
			if err != nil || !found || !ok(s) {
				all = false
				break
			}
		}
		if all {
			return
		}
		if err := sleepCtx(ctx, 250*time.Millisecond); err != nil {
			t.Fatalf("status records never matched: %v", err)
		}
	}
}

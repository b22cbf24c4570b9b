package fleet

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/upgrader-dev/upgrader/internal/rollout"
	"github.com/upgrader-dev/upgrader/internal/testbin"
)

// Address blocks of the F-tests in this file and faults_kill_test.go: 127.0.32.x-127.0.39.x.

// TestF3_NeverHealthyReleaseRollsBackAndHalts publishes, signed like any release, a "1.16.1" that
// answers `version` exactly like the real one but whose agent exits after a moment. The first server to
// take the lock must fail its confirm gate (a timeout is a failure), roll back to the 1.16.0 binary,
// restart, be healthy on 1.16.0, mark itself failed with the cause and halt the rollout, and only then
// release the lock; no other node may be touched. Everything is checked from outside: the lock key's
// holder, every server's own version, the live binaries' bytes, the status records, the upgrader logs.
func TestF3_NeverHealthyReleaseRollsBackAndHalts(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a real Consul cluster")
	}
	t.Parallel()
	old := testbin.Require(t, "1.16.0")
	broken := brokenRelease(t)
	// Below go test's default 10m timeout, so that a hang fails the test with its cleanup and logs.
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()

	f, err := Start(ctx, t, Options{Block: 32, Servers: 3, Clients: 1, Unmanaged: []string{"c1"},
		Binaries: map[string]string{"1.16.1": broken}, ConfirmTimeout: "25s"})
	if err != nil {
		t.Fatal(err)
	}
	mon, stopMon := startMonitor(ctx, f, "c1")
	defer stopMon()
	w := newWatcher(t, f, "c1", map[string]string{old: "1.16.0", broken: "1.16.1-broken"})
	stopWatch := startWatcher(ctx, w)
	defer stopWatch()
	store, err := f.Store("c1")
	if err != nil {
		t.Fatal(err)
	}
	servers := serverNames(f)

	start := time.Now()
	if _, err := store.SetTarget(ctx, rollout.Target{Version: "1.16.1", SetBy: "TestF3"}); err != nil {
		t.Fatal(err)
	}
	failed, err := statusWhere(ctx, store, servers, func(s rollout.NodeStatus) bool {
		return s.State == rollout.StateFailed && s.Target == "1.16.1"
	})
	if err != nil {
		t.Fatal(err)
	}
	x := failed.Node
	t.Logf("%s failed after %s: %s", x, time.Since(start).Round(time.Millisecond), failed.LastError)
	// Keep watching: the lock must come free, and nobody else may move, halted.
	if err := sleepCtx(ctx, 8*time.Second); err != nil {
		t.Fatal(err)
	}
	stopWatch()
	stopMon()

	// The failed node: back on the 1.16.0 bytes, running 1.16.0, failed with the cause, rollout halted.
	u := f.Upgrader(x)
	if v := w.binaryVersion(u.LivePath); v != "1.16.0" {
		t.Errorf("%s: live binary is %s after the rollback, want the 1.16.0 bytes", x, v)
	}
	if v, err := f.Cluster.Node(x).Version(ctx); err != nil || v != "1.16.0" {
		t.Errorf("%s runs %q (%v) after the rollback, want 1.16.0", x, v, err)
	}
	final, _, err := store.GetNodeStatus(ctx, x)
	if err != nil {
		t.Fatal(err)
	}
	if final.State != rollout.StateFailed || !strings.Contains(final.LastError, "confirm 1.16.1 gate did not pass") {
		t.Errorf("%s status = %s %q (error %q), want failed naming the confirm gate timeout", x, final.State, final.Step, final.LastError)
	}
	ctl, _, err := store.ReadControl(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ctl.State != rollout.Halted || ctl.HaltedBy != x {
		t.Errorf("control = %s, want halted by %s", ctl, x)
	}
	t.Logf("control: %s", ctl)
	hctx, hcancel := context.WithTimeout(ctx, time.Minute)
	defer hcancel()
	if err := f.Cluster.WaitHealthy(hctx); err != nil {
		t.Errorf("cluster not healthy after the rollback: %v", err)
	}

	// The lock: held by x from its acquisition until x answered again on 1.16.0 with the cluster healthy.
	samples := w.all()
	tAcq, tDown, tBack, tFree := -1, -1, -1, -1
	tConfirming, tRollingBack := -1, -1
	for i, s := range samples {
		st := s.Status[x].State
		switch {
		case tAcq < 0:
			if slices.Contains(s.Holders, x) {
				tAcq = i
			}
			continue
		case tConfirming < 0 && st == rollout.StateConfirming:
			tConfirming = i
		case tRollingBack < 0 && st == rollout.StateRollingBack:
			tRollingBack = i
		}
		if tDown < 0 && s.Version[x] == "" {
			tDown = i
		}
		if tDown >= 0 && tBack < 0 && s.Version[x] == "1.16.0" && s.APHealthy {
			tBack = i
		}
		if tFree < 0 && s.LockKnown && !slices.Contains(s.Holders, x) {
			tFree = i
		}
	}
	if tAcq < 0 || tDown < 0 || tBack < 0 || tFree < 0 || tRollingBack < 0 {
		t.Fatalf("incomplete history: acquired %d, down %d, back on 1.16.0 %d, lock free %d, rolling back %d (of %d samples)",
			tAcq, tDown, tBack, tFree, tRollingBack, len(samples))
	}
	at := func(i int) time.Time { return samples[i].At }
	if tBack > tFree {
		t.Errorf("lock released at %s, before %s answered on 1.16.0 with the cluster healthy (%s)",
			at(tFree).Format("15:04:05.000"), x, at(tBack).Format("15:04:05.000"))
	}
	if s := samples[tFree]; s.Control != rollout.Halted || s.Status[x].State != rollout.StateFailed {
		t.Errorf("when the lock came free the control was %q and %s's status %q; want halted and failed first", s.Control, x, s.Status[x].State)
	}
	if tConfirming >= 0 {
		t.Logf("confirm gate on the broken release ran %s before the rollback began (confirm_timeout 25s)",
			at(tRollingBack).Sub(at(tConfirming)).Round(time.Millisecond))
	}
	t.Logf("lock held by %s for %s; rollback (rolling-back -> lock released) took %s; %s answered on 1.16.0 with autopilot healthy %s before the release",
		x, at(tFree).Sub(at(tAcq)).Round(time.Millisecond), at(tFree).Sub(at(tRollingBack)).Round(time.Millisecond),
		x, at(tFree).Sub(at(tBack)).Round(time.Millisecond))

	// Nobody else was touched: binaries, lock, status, journal, logs.
	touched := map[rollout.NodeState]bool{rollout.StateLocked: true, rollout.StateRestarting: true,
		rollout.StateConfirming: true, rollout.StateRollingBack: true, rollout.StateDone: true, rollout.StateFailed: true}
	for _, n := range servers {
		if n == x {
			continue
		}
		states := map[rollout.NodeState]int{}
		for _, s := range samples {
			if v := s.Binary[n]; v != "1.16.0" {
				t.Errorf("%s: live binary of %s is %s", s.At.Format("15:04:05.000"), n, v)
			}
			if slices.Contains(s.Holders, n) {
				t.Errorf("%s: %s held the server lock", s.At.Format("15:04:05.000"), n)
			}
			if st, ok := s.Status[n]; ok {
				states[st.State]++
				if touched[st.State] {
					t.Errorf("%s: %s's status was %s (%s)", s.At.Format("15:04:05.000"), n, st.State, st.Step)
				}
			}
			if j := s.Journal[n]; j != "" {
				t.Errorf("%s: %s had a journal at step %s", s.At.Format("15:04:05.000"), n, j)
			}
		}
		if f.upgraderLogHas(n, "lock acquired") {
			t.Errorf("%s's upgrader log says it acquired the lock", n)
		}
		st, _, _ := store.GetNodeStatus(ctx, n)
		t.Logf("%s: states seen %v; now %s %q", n, states, st.State, st.Step)
	}
	n, changes := w.checkBinaries(t)
	t.Logf("watcher: %d samples, %d live-binary changes, all complete known binaries", n, changes)

	rep := mon.Report(start, time.Time{})
	t.Logf("monitor: %s", rep)
	if rep.MaxServersImpaired > 1 {
		t.Errorf("two or more servers were down or non-voting at once (max %d)", rep.MaxServersImpaired)
	}
	var xDown time.Time
	for _, d := range rep.Downs {
		if d.Server && d.Node != x {
			t.Errorf("server %s went down (%s) although only %s may restart", d.Node, d, x)
		}
		if d.Node == x && xDown.IsZero() {
			xDown = d.From
		}
	}
	t.Logf("%s's upgrader, the failed upgrade and its rollback:\n%s", x, strings.Join(f.upgraderLogLines(x,
		"saved pre-upgrade snapshot", "exec: st", "confirmation:", "rolling back", "rollout halted", "restarting on",
		"already runs", "state=failed", "lock released"), "\n"))

	// F4 on the same rollout: the failed node was the first server; its snapshot predates its restart.
	t.Run("F4_SnapshotBeforeFirstServer", func(t *testing.T) { checkSnapshot(ctx, t, f, store, x, xDown) })
}
